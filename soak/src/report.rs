//! The soak's results: the JSON report (`--report`) and the summary printed on stdout, with
//! the first violations and a timeline around the first one.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::check::{self, Outcome, Violation};
use crate::faults::{Group, Record};
use crate::procs::HolderStats;
use crate::resource::{Marker, Write};
use crate::worker::Role;
use crate::{round, workloads, LIVENESS_BOUND_MS, LIVENESS_EXPLANATION, SESSION_TIMEOUT_MS};

/// Everything the soak measured.
pub struct Results<'a> {
    pub seed: u64,
    pub seconds: u64,
    pub members: usize,
    pub holders: usize,
    pub candidates: usize,
    pub workers: usize,
    pub unsafe_holder: bool,
    pub report: Option<&'a Path>,
    /// The workers' events and logs (removed when there is no violation).
    pub dir: &'a Path,
    pub t0: f64,
    pub records: &'a [Record],
    /// The participants: (name, group, index in the group, worker role).
    pub names: &'a [(String, Group, usize, Option<Role>)],
    pub stats: &'a [Arc<Mutex<HolderStats>>],
    pub lock: &'a Outcome,
    pub elect: &'a Outcome,
    pub lock_writes: &'a [Write],
    pub elect_writes: &'a [Write],
    pub lock_markers: &'a [Marker],
    pub elect_markers: &'a [Marker],
    pub libs: Option<&'a workloads::Outcome>,
    pub worker_exits: Vec<Violation>,
}

/// Writes the report, prints the summary; exit 0 without violations, 1 with.
pub fn finish(res: &Results<'_>) -> Result<ExitCode, String> {
    let mut violations: Vec<(&str, check::Violation)> = Vec::new();
    violations.extend(res.lock.violations.iter().cloned().map(|v| ("locks", v)));
    violations.extend(
        res.elect
            .violations
            .iter()
            .cloned()
            .map(|v| ("election", v)),
    );
    if let Some(l) = &res.libs {
        violations.extend(l.violations.iter().cloned().map(|v| ("workloads", v)));
    }
    violations.extend(res.worker_exits.iter().cloned().map(|v| ("workers", v)));
    violations.sort_by(|a, b| a.1.at_ms.total_cmp(&b.1.at_ms));
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for r in res.records {
        *by_kind.entry(r.kind.name()).or_default() += 1;
    }
    let participant_json: Vec<_> = res
        .names
        .iter()
        .zip(res.stats)
        .map(|(n, s)| {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            let holds = match n.1 {
                Group::Lock => res.lock.holds.iter().filter(|h| h.holder == n.2).count(),
                Group::Elect => res.elect.holds.iter().filter(|h| h.holder == n.2).count(),
                Group::Worker => 0,
            };
            let markers = match n.1 {
                Group::Lock => res.lock_markers,
                Group::Elect => res.elect_markers,
                Group::Worker => &Vec::new(),
            };
            let count = |acquired: bool| {
                markers
                    .iter()
                    .filter(|m| m.holder == n.2 && m.acquired == acquired)
                    .count()
            };
            let mut p = json!({"name": n.0, "process_runs": s.runs, "exit_codes": s.exit_codes});
            if n.1 != Group::Worker {
                p["holds"] = json!(holds);
                p["acquired"] = json!(count(true));
                p["released"] = json!(count(false));
                p["lost"] = json!(s.losses.iter().map(|&t| round(t)).collect::<Vec<_>>());
            }
            p
        })
        .collect();
    let fenced = |o: &check::Outcome, writes: &[Write]| {
        let accepted = writes.iter().filter(|w| w.accepted).count();
        let worst = o.gaps.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
        json!({
            "holds": o.holds.len(),
            "paused_holds": o.paused_holds,
            "writes_accepted": accepted,
            "writes_rejected": writes.len() - accepted,
            "late_writes_rejected": o.late_writes_rejected,
            "liveness": {
                "bound_ms": LIVENESS_BOUND_MS,
                "worst_ms": worst.map(|w| round(w.1)),
                "worst_after_heal_at_ms": worst.map(|w| round(w.0)),
                "heals_measured": o.gaps.len(),
                "heals_censored_by_end": o.censored_heals,
            },
        })
    };
    let report = json!({
        "times": "ms since the soak process started (the ensemble starts first; the workloads start at workload_start_ms, the faults 2 s later)",
        "workload_start_ms": round(res.t0),
        "seed": res.seed,
        "seconds": res.seconds,
        "members": res.members,
        "holders": res.holders,
        "candidates": res.candidates,
        "workers": res.workers,
        "unsafe_holder": res.unsafe_holder,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "faults": res.records.iter().map(|r| json!({
            "kind": r.kind.name(), "target": r.target,
            "start_ms": round(r.start_ms), "end_ms": round(r.end_ms),
        })).collect::<Vec<_>>(),
        "faults_total": res.records.len(),
        "faults_by_kind": by_kind,
        "fault_kinds": by_kind.len(),
        "locks": fenced(res.lock, res.lock_writes),
        "election": fenced(res.elect, res.elect_writes),
        "workloads": res.libs.as_ref().map(|l| l.stats.clone()),
        // Kept at the top level for scripts that read the first report format.
        "holds": res.lock.holds.len(),
        "participants": participant_json,
        "exit_codes": "zkr lock / zkr elect exit: 0 the hold ran, 1 the session was lost while acquiring (nothing held), 8 lock lost (command terminated), 7 not acquired in 20 s, 130/143 stopped at the end of the run; workers run until stopped",
        "liveness_explanation": LIVENESS_EXPLANATION,
        "violations": violations.iter().map(|(w, v)| json!({
            "workload": w, "kind": v.kind, "at_ms": round(v.at_ms), "detail": v.detail,
        })).collect::<Vec<_>>(),
        "ok": violations.is_empty(),
    });
    if let Some(path) = &res.report {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    println!(
        "zkr-soak: seed {}, {} s, {} members, {} lock holders, {} candidates, {} workers",
        res.seed, res.seconds, res.members, res.holders, res.candidates, res.workers
    );
    println!(
        "  faults: {} ({})",
        res.records.len(),
        by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (what, o, writes) in [
        ("locks", res.lock, res.lock_writes),
        ("election", res.elect, res.elect_writes),
    ] {
        if writes.is_empty() && what == "election" && res.candidates == 0 {
            continue;
        }
        let accepted = writes.iter().filter(|w| w.accepted).count();
        let worst = o.gaps.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
        println!(
            "  {what}: {} holds ({} paused), writes accepted {accepted}, rejected {} ({} late writes of paused holds rejected); worst unavailability {}",
            o.holds.len(),
            o.paused_holds,
            writes.len() - accepted,
            o.late_writes_rejected,
            match worst {
                Some((heal, gap)) => format!(
                    "{:.3} s after the heal at {:.3} s (bound {:.1} s, {} heals measured)",
                    gap / 1000.0,
                    heal / 1000.0,
                    LIVENESS_BOUND_MS / 1000.0,
                    o.gaps.len()
                ),
                None => "not measured (no full heal)".to_string(),
            }
        );
    }
    if let Some(l) = &res.libs {
        let s = &l.stats;
        println!(
            "  ids: {} handed out {}; config: {} publishes acknowledged, final {}; queue: {} tasks put, {} completed, {} claims lost; discovery: worst convergence {} ms",
            s["ids"]["handed_out"],
            s["ids"]["by_recipe"],
            s["config"]["acknowledged"],
            s["config"]["final"],
            s["queue"]["puts_acknowledged"],
            s["queue"]["completed_in_the_end"],
            s["queue"]["claims_lost"],
            s["discovery"]["worst_convergence_ms"],
        );
    }
    if violations.is_empty() {
        println!("  violations: 0");
        let _ = std::fs::remove_dir_all(res.dir);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "  VIOLATIONS: {} (logs kept in {})",
        violations.len(),
        res.dir.display()
    );
    for (w, v) in violations.iter().take(10) {
        println!(
            "    {:>9.3}s {w} {}: {}",
            v.at_ms / 1000.0,
            v.kind,
            v.detail
        );
    }
    if violations.len() > 10 {
        println!("    ... (all of them in the JSON report)");
    }
    let (w, first) = &violations[0];
    let holds: Vec<check::Hold> = match *w {
        "election" => res.elect.holds.clone(),
        _ => res.lock.holds.clone(),
    };
    println!(
        "  timeline around the first violation ({w} {}, at {:.3} s; faults and {} holds within 5 s):",
        first.kind,
        first.at_ms / 1000.0,
        if *w == "election" { "leader" } else { "lock" }
    );
    let losses: Vec<(String, f64)> = res
        .names
        .iter()
        .zip(res.stats)
        .flat_map(|(n, s)| {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            s.losses
                .iter()
                .map(|&t| (n.0.clone(), t))
                .collect::<Vec<_>>()
        })
        .collect();
    for line in check::timeline(first.at_ms, res.records, &holds, &losses) {
        println!("    {line}");
    }
    Ok(ExitCode::from(1))
}
