//! The invariant checker, run after the soak on the resource's write record and the fault log.
//!
//! * **Mutual exclusion.** A hold is one `zkr lock` acquisition (one lock node). Its interval
//!   runs from its command's "acquired" marker (or its first write) to its "released" marker
//!   (or its last write), all receive times at the resource, on the soak's one monotonic clock.
//!   Holds of different acquisitions must not overlap. The only exception: a hold whose holder was
//!   paused (SIGSTOP of its `zkr` and its command) during the hold; it may go on writing after
//!   it resumes, but every such write made after the next hold began must have been REJECTED by
//!   the fenced resource (counted as `late_writes_rejected`).
//! * **Fencing.** Accepted writes never go back in token order (true by construction of the
//!   resource; asserted anyway); distinct holds have distinct tokens.
//! * **Liveness.** After every full heal (the end of a fault while no other fault runs), the
//!   time until the first accepted write of a hold that began after the heal; the worst of
//!   them must stay under the bound.

use std::collections::HashMap;

use crate::faults::Record;
use crate::resource::{Marker, Write};

#[derive(Debug, Clone)]
pub struct Hold {
    pub id: String,
    pub holder: usize,
    pub token: i64,
    pub first: f64,
    pub last: f64,
    pub accepted: usize,
    pub rejected: usize,
    pub first_accepted: Option<f64>,
    pub paused: bool,
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub kind: &'static str,
    pub at_ms: f64,
    pub detail: String,
}

pub struct Outcome {
    pub holds: Vec<Hold>,
    pub violations: Vec<Violation>,
    pub late_writes_rejected: usize,
    pub paused_holds: usize,
    /// (heal time, gap) per full heal followed by a new hold before the next fault.
    pub gaps: Vec<(f64, f64)>,
    pub censored_heals: usize,
}

/// The holds on one fenced resource; `group` names its writers (`lock` or `elect`): writer N is
/// the participant `{group}-N`.
pub fn holds(writes: &[Write], markers: &[Marker], faults: &[Record], group: &str) -> Vec<Hold> {
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<Hold> = Vec::new();
    for w in writes {
        let i = *by_id.entry(&w.hold).or_insert_with(|| {
            out.push(Hold {
                id: w.hold.clone(),
                holder: w.holder,
                token: w.token,
                first: w.t_ms,
                last: w.t_ms,
                accepted: 0,
                rejected: 0,
                first_accepted: None,
                paused: false,
            });
            out.len() - 1
        });
        let h = &mut out[i];
        h.last = h.last.max(w.t_ms);
        if w.accepted {
            h.accepted += 1;
            h.first_accepted.get_or_insert(w.t_ms);
        } else {
            h.rejected += 1;
        }
    }
    // The command's own start and end marks widen the interval (a hold that never wrote is
    // left out: it has no token to judge by).
    for m in markers {
        if let Some(&i) = by_id.get(m.hold.as_str()) {
            let h = &mut out[i];
            if m.acquired {
                h.first = h.first.min(m.t_ms);
            } else {
                h.last = h.last.max(m.t_ms);
            }
        }
    }
    for h in &mut out {
        let name = format!("{group}-{}", h.holder);
        h.paused = faults.iter().any(|f| {
            f.paused.as_deref() == Some(name.as_str())
                && h.first <= f.end_ms
                && h.last >= f.start_ms
        });
    }
    out.sort_by(|a, b| a.first.total_cmp(&b.first));
    out
}

pub fn check(
    writes: &[Write],
    markers: &[Marker],
    faults: &[Record],
    group: &str,
    bound_ms: f64,
    end_ms: f64,
) -> Outcome {
    let holds = holds(writes, markers, faults, group);
    let mut violations = Vec::new();
    let mut late_writes_rejected = 0;
    // Mutual exclusion. Holds are sorted by first write; of two holds that overlap in time,
    // the older acquisition is the one with the lower token (the lock node's czxid): it should
    // have stopped before the newer one began, unless it was paused.
    let mut late_from: HashMap<usize, (f64, usize)> = HashMap::new();
    for (i, a) in holds.iter().enumerate() {
        for (j, b) in holds.iter().enumerate().skip(i + 1) {
            if b.first > a.last {
                break;
            }
            let (older, newer) = if a.token <= b.token { (i, j) } else { (j, i) };
            if holds[older].paused {
                let from = late_from.entry(older).or_insert((f64::MAX, newer));
                if holds[newer].first < from.0 {
                    *from = (holds[newer].first, newer);
                }
                continue;
            }
            let (o, n) = (&holds[older], &holds[newer]);
            violations.push(Violation {
                kind: "overlap",
                at_ms: b.first,
                detail: format!(
                    "hold {} (holder {}, token {}, {:.3}s..{:.3}s) overlaps the newer hold {} (holder {}, token {}, {:.3}s..{:.3}s)",
                    o.id, o.holder, o.token, o.first / 1000.0, o.last / 1000.0,
                    n.id, n.holder, n.token, n.first / 1000.0, n.last / 1000.0
                ),
            });
        }
    }
    // A paused older hold: its writes after the newer hold began must all have been rejected.
    for (older, (from, newer)) in late_from {
        let (o, n) = (&holds[older], &holds[newer]);
        let late: Vec<&Write> = writes
            .iter()
            .filter(|w| w.hold == o.id && w.t_ms >= from)
            .collect();
        let accepted = late.iter().filter(|w| w.accepted).count();
        late_writes_rejected += late.len() - accepted;
        if accepted > 0 {
            violations.push(Violation {
                kind: "stale-write-accepted",
                at_ms: from,
                detail: format!(
                    "paused hold {} (holder {}, token {}) had {accepted} write(s) ACCEPTED after the newer hold {} (holder {}, token {}) began",
                    o.id, o.holder, o.token, n.id, n.holder, n.token
                ),
            });
        }
    }
    // Fencing.
    let mut highest: Option<&Write> = None;
    for w in writes.iter().filter(|w| w.accepted) {
        if let Some(h) = highest {
            if w.token < h.token {
                violations.push(Violation {
                    kind: "token-order",
                    at_ms: w.t_ms,
                    detail: format!(
                        "write with token {} accepted after token {}",
                        w.token, h.token
                    ),
                });
            }
        }
        if highest.is_none_or(|h| w.token >= h.token) {
            highest = Some(w);
        }
    }
    let mut tokens: HashMap<i64, &Hold> = HashMap::new();
    for h in &holds {
        if let Some(other) = tokens.insert(h.token, h) {
            violations.push(Violation {
                kind: "duplicate-token",
                at_ms: h.first,
                detail: format!("holds {} and {} share token {}", other.id, h.id, h.token),
            });
        }
    }
    // Liveness, from each full heal: the end of a fault while no other fault is active. The
    // measurement runs until the first accepted write of a hold that began after the heal; if
    // the next fault starts (or the run ends) first, it is censored there, and only a censored
    // calm stretch longer than the bound is a violation.
    let mut gaps = Vec::new();
    let mut censored_heals = 0;
    for (heal, calm_until) in full_heals(faults, end_ms) {
        let next = holds
            .iter()
            .filter(|h| h.first > heal)
            .filter_map(|h| h.first_accepted)
            .min_by(f64::total_cmp)
            .filter(|&t| t <= calm_until);
        let (gap, measured) = match next {
            Some(t) => (t - heal, true),
            None => (calm_until - heal, false),
        };
        if measured {
            gaps.push((heal, gap));
        } else {
            censored_heals += 1;
        }
        if gap > bound_ms {
            violations.push(Violation {
                kind: "unavailable",
                at_ms: heal,
                detail: format!(
                    "no new hold wrote for {:.3}s after the full heal at {:.3}s (bound {:.1}s)",
                    gap / 1000.0,
                    heal / 1000.0,
                    bound_ms / 1000.0
                ),
            });
        }
    }
    violations.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    let paused_holds = holds.iter().filter(|h| h.paused).count();
    Outcome {
        holds,
        violations,
        late_writes_rejected,
        paused_holds,
        gaps,
        censored_heals,
    }
}

/// Every full heal (the end of a fault while no other fault is active) with the end of the calm
/// after it (the next fault's start, or the end of the run).
pub fn full_heals(faults: &[Record], end_ms: f64) -> Vec<(f64, f64)> {
    faults
        .iter()
        .map(|f| f.end_ms)
        .filter(|&heal| !faults.iter().any(|g| g.start_ms <= heal && g.end_ms > heal))
        .map(|heal| {
            let calm_until = faults
                .iter()
                .map(|g| g.start_ms)
                .filter(|&t| t > heal)
                .fold(end_ms, f64::min);
            (heal, calm_until)
        })
        .collect()
}

/// The faults, holds and losses (participant, time) within ±5 s of `at_ms`, one line each, in
/// time order.
pub fn timeline(
    at_ms: f64,
    faults: &[Record],
    holds: &[Hold],
    losses: &[(String, f64)],
) -> Vec<String> {
    let (lo, hi) = (at_ms - 5000.0, at_ms + 5000.0);
    let mut lines: Vec<(f64, String)> = Vec::new();
    for (who, t) in losses {
        if (lo..=hi).contains(t) {
            lines.push((
                *t,
                format!(
                    "{:>9.3}s  lost  {who}: zkr ended the hold (lock lost)",
                    t / 1000.0
                ),
            ));
        }
    }
    for f in faults {
        if f.start_ms <= hi && f.end_ms >= lo {
            lines.push((
                f.start_ms,
                format!(
                    "{:>9.3}s  fault start {} {} (ends {:.3}s)",
                    f.start_ms / 1000.0,
                    f.kind.name(),
                    f.target,
                    f.end_ms / 1000.0
                ),
            ));
            lines.push((
                f.end_ms,
                format!(
                    "{:>9.3}s  fault end   {} {}",
                    f.end_ms / 1000.0,
                    f.kind.name(),
                    f.target
                ),
            ));
        }
    }
    for h in holds {
        if h.first <= hi && h.last >= lo {
            lines.push((
                h.first,
                format!(
                    "{:>9.3}s  hold  holder {} token {} {} until {:.3}s: {} accepted, {} rejected{}",
                    h.first / 1000.0,
                    h.holder,
                    h.token,
                    h.id,
                    h.last / 1000.0,
                    h.accepted,
                    h.rejected,
                    if h.paused { ", PAUSED" } else { "" }
                ),
            ));
        }
    }
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    lines.into_iter().map(|(_, l)| l).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Kind;

    fn w(t_ms: f64, holder: usize, hold: &str, token: i64, accepted: bool) -> Write {
        Write {
            t_ms,
            holder,
            hold: hold.to_string(),
            token,
            accepted,
        }
    }

    fn pause(holder: usize, start_ms: f64, end_ms: f64) -> Record {
        Record {
            kind: Kind::HolderPause,
            target: format!("lock-{holder}"),
            start_ms,
            end_ms,
            paused: Some(format!("lock-{holder}")),
        }
    }

    #[test]
    fn sequential_holds_pass() {
        let writes = [
            w(0.0, 0, "a", 1, true),
            w(10.0, 0, "a", 1, true),
            w(20.0, 1, "b", 2, true),
            w(30.0, 1, "b", 2, true),
        ];
        let outcome = check(&writes, &[], &[], "lock", 6000.0, 40.0);
        assert!(outcome.violations.is_empty());
        assert_eq!(outcome.holds.len(), 2);
    }

    #[test]
    fn paused_before_its_first_write() {
        // Holder 0 acquired (token 1) and was paused before writing; holder 1 (token 2) took
        // over; holder 0's writes after it resumed were all rejected.
        let faults = [pause(0, 0.0, 25.0)];
        let writes = [
            w(10.0, 1, "b", 2, true),
            w(20.0, 0, "a", 1, false),
            w(30.0, 1, "b", 2, true),
        ];
        let outcome = check(&writes, &[], &faults, "lock", 60_000.0, 40.0);
        assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
        assert_eq!(outcome.late_writes_rejected, 1);
    }

    fn mark(t_ms: f64, holder: usize, hold: &str, acquired: bool) -> Marker {
        Marker {
            t_ms,
            holder,
            hold: hold.to_string(),
            acquired,
        }
    }

    #[test]
    fn markers_widen_a_hold() {
        // Writes alone do not overlap, but holder 0's command ran until 25 (its release mark)
        // while holder 1 acquired at 15.
        let writes = [w(0.0, 0, "a", 1, true), w(20.0, 1, "b", 2, true)];
        let markers = [mark(25.0, 0, "a", false), mark(15.0, 1, "b", true)];
        let outcome = check(&writes, &[], &[], "lock", 6000.0, 40.0);
        assert!(outcome.violations.is_empty());
        let outcome = check(&writes, &markers, &[], "lock", 6000.0, 40.0);
        assert_eq!(outcome.violations.len(), 1);
        assert_eq!(outcome.violations[0].kind, "overlap");
    }

    #[test]
    fn overlap_is_caught() {
        let writes = [
            w(0.0, 0, "a", 1, true),
            w(20.0, 1, "b", 2, true),
            w(30.0, 0, "a", 1, false),
        ];
        let outcome = check(&writes, &[], &[], "lock", 6000.0, 40.0);
        assert_eq!(outcome.violations.len(), 1);
        assert_eq!(outcome.violations[0].kind, "overlap");
    }

    #[test]
    fn paused_hold_needs_its_late_writes_rejected() {
        let faults = [pause(0, 5.0, 25.0)];
        let rejected = [
            w(0.0, 0, "a", 1, true),
            w(20.0, 1, "b", 2, true),
            w(30.0, 0, "a", 1, false),
        ];
        let outcome = check(&rejected, &[], &faults, "lock", 60_000.0, 40.0);
        assert!(outcome.violations.is_empty());
        assert_eq!(outcome.late_writes_rejected, 1);
        // A stale token accepted after the next hold began (a broken resource) is caught.
        let accepted = [
            w(0.0, 0, "a", 1, true),
            w(20.0, 1, "b", 2, true),
            w(30.0, 0, "a", 1, true),
        ];
        let outcome = check(&accepted, &[], &faults, "lock", 60_000.0, 40.0);
        let kinds: Vec<&str> = outcome.violations.iter().map(|v| v.kind).collect();
        assert!(kinds.contains(&"stale-write-accepted"), "{kinds:?}");
        assert!(kinds.contains(&"token-order"), "{kinds:?}");
    }
}
