//! The checker of the library workloads (IDs, config, discovery, work queue), run after the
//! soak on the workers' event files and the final state read by `worker --role inspect`.
//!
//! * **IDs.** No value is handed out twice within a namespace: `seq` (SequentialIds) and
//!   `counter` (AtomicCounter increments and IdBlocks blocks share one counter node, so their
//!   IDs must not collide either).
//! * **Config.** No acknowledged publish is lost: the final value is at least the highest
//!   acknowledged one, and no value was acknowledged twice (compare-and-set). No subscriber
//!   ever goes backward (its values and their mzxids never decrease), and each one ends on the
//!   final value.
//! * **Work queue.** Every task whose put was acknowledged ends completed, exactly once: no two
//!   completions were acknowledged for one task, and the worker recorded in the done node is the
//!   one whose completion was acknowledged. No payload ends up in two tasks (a put is never
//!   repeated behind the producer's back).
//! * **Discovery.** After every full heal the watched set converges to the live set (every
//!   registrant); the time it takes is measured like the lock's liveness (censored when the
//!   next fault starts first). At the end it shows every registrant.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{json, Value};

use crate::check::Violation;
use crate::faults::Record;

/// One worker's events, times converted to ms since the soak started.
pub struct WorkerLog {
    pub name: String,
    pub role: &'static str,
    pub events: Vec<Value>,
}

impl WorkerLog {
    pub fn read(name: &str, role: &'static str, path: &Path, start_mono_ms: f64) -> WorkerLog {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let events = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|mut v| {
                let t = v["t"].as_f64().unwrap_or(0.0) - start_mono_ms;
                v["t"] = json!(t);
                v
            })
            .collect();
        WorkerLog {
            name: name.to_string(),
            role,
            events,
        }
    }

    fn of<'a>(&'a self, ev: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |v| v["ev"] == ev)
    }
}

fn t(v: &Value) -> f64 {
    v["t"].as_f64().unwrap_or(0.0)
}

pub struct Outcome {
    pub violations: Vec<Violation>,
    /// Operations and figures per workload, for the report.
    pub stats: Value,
}

/// The final state, as `worker --role inspect` read it.
pub struct Final {
    pub config: Option<i64>,
    pub tasks: Vec<Value>,
    pub instances: Vec<String>,
}

pub fn check(
    logs: &[WorkerLog],
    final_state: &Final,
    faults: &[Record],
    registrants: &[String],
    bound_ms: f64,
    end_ms: f64,
) -> Outcome {
    let mut violations = Vec::new();
    let by_role = |role: &'static str| logs.iter().filter(move |l| l.role == role);

    // IDs.
    let mut seen: HashMap<(String, i64), (String, f64)> = HashMap::new();
    let mut ids_by_via: BTreeMap<String, u64> = BTreeMap::new();
    let mut id_errors = 0u64;
    for log in by_role("ids") {
        id_errors += log.of("err").count() as u64;
        for e in log.of("id") {
            let ns = e["ns"].as_str().unwrap_or("?").to_string();
            let via = e["via"].as_str().unwrap_or("?").to_string();
            *ids_by_via.entry(via).or_default() += 1;
            let Some(v) = e["v"].as_i64() else { continue };
            if let Some((other, at)) = seen.insert((ns.clone(), v), (log.name.clone(), t(e))) {
                violations.push(Violation {
                    kind: "duplicate-id",
                    at_ms: t(e),
                    detail: format!(
                        "{ns} id {v} handed out twice: by {other} at {:.3}s and by {} at {:.3}s",
                        at / 1000.0,
                        log.name,
                        t(e) / 1000.0
                    ),
                });
            }
        }
    }

    // Config.
    let mut acked: HashMap<i64, f64> = HashMap::new();
    let (mut acks, mut nacks) = (0u64, 0u64);
    for log in by_role("config-pub") {
        nacks += log.of("nack").count() as u64;
        for e in log.of("ack") {
            acks += 1;
            let Some(v) = e["v"].as_i64() else { continue };
            if acked.insert(v, t(e)).is_some() {
                violations.push(Violation {
                    kind: "config-double-ack",
                    at_ms: t(e),
                    detail: format!("value {v} was acknowledged twice (compare-and-set broken)"),
                });
            }
        }
    }
    let max_acked = acked.keys().copied().max();
    let final_value = final_state.config;
    if let Some(m) = max_acked {
        if final_value.is_none_or(|f| f < m) {
            violations.push(Violation {
                kind: "config-lost-ack",
                at_ms: acked.get(&m).copied().unwrap_or(0.0),
                detail: format!("value {m} was acknowledged but the node ends at {final_value:?}"),
            });
        }
    }
    let mut subscriber_stats = Vec::new();
    for log in by_role("config-sub") {
        let mut last: Option<(i64, i64, f64)> = None;
        let mut count = 0u64;
        for e in log.of("seen") {
            count += 1;
            let (Some(v), Some(z)) = (e["v"].as_i64(), e["mzxid"].as_i64()) else {
                continue;
            };
            if let Some((lv, lz, lt)) = last {
                if v < lv || z < lz {
                    violations.push(Violation {
                        kind: "config-backward",
                        at_ms: t(e),
                        detail: format!(
                            "{} saw value {v} (mzxid 0x{z:x}) at {:.3}s after value {lv} (mzxid 0x{lz:x}) at {:.3}s",
                            log.name,
                            t(e) / 1000.0,
                            lt / 1000.0
                        ),
                    });
                }
            }
            last = Some((v, z, t(e)));
        }
        let ends_on = last.map(|l| l.0);
        if ends_on != final_value {
            violations.push(Violation {
                kind: "config-subscriber-behind",
                at_ms: end_ms,
                detail: format!(
                    "{} ends on {ends_on:?}, the node on {final_value:?}",
                    log.name
                ),
            });
        }
        subscriber_stats
            .push(json!({"subscriber": log.name, "values_seen": count, "ends_on": ends_on}));
    }

    // Work queue.
    let mut put_tasks: HashMap<String, i64> = HashMap::new();
    let mut put_errors = 0u64;
    for log in by_role("producer") {
        put_errors += log.of("put-err").count() as u64;
        for e in log.of("put") {
            if let (Some(task), Some(n)) = (e["task"].as_str(), e["n"].as_i64()) {
                put_tasks.insert(task.to_string(), n);
            }
        }
    }
    let mut completions: HashMap<String, Vec<(String, f64)>> = HashMap::new();
    let (mut claims, mut lost_claims, mut complete_errors) = (0u64, 0u64, 0u64);
    for log in by_role("queue-worker") {
        claims += log.of("claimed").count() as u64;
        lost_claims += log.of("lost").count() as u64;
        complete_errors += log.of("complete-err").count() as u64;
        for e in log.of("completed") {
            if let Some(task) = e["task"].as_str() {
                completions
                    .entry(task.to_string())
                    .or_default()
                    .push((log.name.clone(), t(e)));
            }
        }
    }
    for (task, acks) in &completions {
        if acks.len() > 1 {
            violations.push(Violation {
                kind: "task-completed-twice",
                at_ms: acks[1].1,
                detail: format!("{task} completed by {acks:?}"),
            });
        }
    }
    let final_tasks: HashMap<&str, &Value> = final_state
        .tasks
        .iter()
        .filter_map(|v| Some((v["task"].as_str()?, v)))
        .collect();
    let mut completed_tasks = 0u64;
    for (task, n) in &put_tasks {
        let state = final_tasks.get(task.as_str()).map(|v| &v["state"]);
        if state.and_then(|s| s.as_str()) != Some("completed") {
            violations.push(Violation {
                kind: "task-not-completed",
                at_ms: end_ms,
                detail: format!("{task} (n {n}) ends {state:?}"),
            });
            continue;
        }
        completed_tasks += 1;
        let owner = final_tasks
            .get(task.as_str())
            .and_then(|v| v["owner"].as_str());
        if let Some(acks) = completions.get(task) {
            if acks.iter().any(|(w, _)| Some(w.as_str()) != owner) {
                violations.push(Violation {
                    kind: "task-owner-mismatch",
                    at_ms: acks[0].1,
                    detail: format!(
                        "{task}: completion acknowledged to {acks:?}, done node names {owner:?}"
                    ),
                });
            }
        }
    }
    let unacked_completions = put_tasks
        .keys()
        .filter(|task| !completions.contains_key(*task))
        .count();
    // Puts whose outcome was unknown (connection lost) may have created their task: it must be
    // completed like any other, and no payload may show up in two tasks.
    let mut by_n: HashMap<i64, &str> = HashMap::new();
    for v in &final_state.tasks {
        let (Some(task), Some(n)) = (v["task"].as_str(), v["n"].as_i64()) else {
            continue;
        };
        if let Some(other) = by_n.insert(n, task) {
            violations.push(Violation {
                kind: "task-duplicated",
                at_ms: end_ms,
                detail: format!("payload n {n} is in two tasks: {other} and {task}"),
            });
        }
    }
    let unknown_puts_completed = completions
        .keys()
        .filter(|task| !put_tasks.contains_key(*task))
        .count();

    // Discovery.
    let mut want: Vec<String> = registrants.to_vec();
    want.sort();
    let sets: Vec<(f64, Vec<String>)> = by_role("discover")
        .flat_map(|log| log.of("set"))
        .map(|e| {
            let mut ids: Vec<String> = e["ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            ids.sort();
            (t(e), ids)
        })
        .collect();
    let mut discovery_gaps = Vec::new();
    let mut censored = 0u64;
    if !sets.is_empty() {
        for (heal, calm_until) in crate::check::full_heals(faults, end_ms) {
            let at_heal = sets.iter().rev().find(|(x, _)| *x <= heal);
            let converged = if at_heal.is_some_and(|(_, s)| *s == want) {
                Some(heal)
            } else {
                sets.iter()
                    .find(|(x, s)| *x > heal && *s == want)
                    .map(|(x, _)| *x)
                    .filter(|&x| x <= calm_until)
            };
            let gap = match converged {
                Some(x) => {
                    discovery_gaps.push((heal, x - heal));
                    x - heal
                }
                None => {
                    censored += 1;
                    calm_until - heal
                }
            };
            if gap > bound_ms {
                violations.push(Violation {
                    kind: "discovery-not-converged",
                    at_ms: heal,
                    detail: format!(
                        "discovery did not show all {} registrants for {:.3}s after the full heal at {:.3}s (bound {:.1}s)",
                        want.len(),
                        gap / 1000.0,
                        heal / 1000.0,
                        bound_ms / 1000.0
                    ),
                });
            }
        }
    }
    let last_set = sets.last().map(|(_, s)| s.clone());
    if last_set.as_ref() != Some(&want) {
        violations.push(Violation {
            kind: "discovery-final",
            at_ms: end_ms,
            detail: format!("discovery ends on {last_set:?}, the live set is {want:?}"),
        });
    }
    let mut instances = final_state.instances.clone();
    instances.sort();
    if instances != want {
        violations.push(Violation {
            kind: "registration-final",
            at_ms: end_ms,
            detail: format!("the registry ends with {instances:?}, the live set is {want:?}"),
        });
    }
    let registration_statuses: u64 = by_role("register")
        .map(|l| l.of("status").count() as u64)
        .sum();
    let sessions: BTreeMap<&str, usize> = logs
        .iter()
        .map(|l| (l.name.as_str(), l.of("session").count()))
        .collect();

    let worst_discovery = discovery_gaps
        .iter()
        .map(|g| g.1)
        .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g))));
    let stats = json!({
        "ids": {"handed_out": seen.len(), "by_recipe": ids_by_via, "errors": id_errors},
        "config": {
            "acknowledged": acks, "not_acknowledged": nacks,
            "highest_acknowledged": max_acked, "final": final_value,
            "subscribers": subscriber_stats,
        },
        "queue": {
            "puts_acknowledged": put_tasks.len(), "put_errors": put_errors,
            "claims": claims, "claims_lost": lost_claims,
            "completions_acknowledged": completions.values().map(Vec::len).sum::<usize>(),
            "completion_errors": complete_errors,
            "completed_in_the_end": completed_tasks,
            "completed_without_acknowledgement": unacked_completions,
            "completed_tasks_of_unacknowledged_puts": unknown_puts_completed,
        },
        "discovery": {
            "registrants": want.len(), "set_changes": sets.len(),
            "registration_status_changes": registration_statuses,
            "heals_measured": discovery_gaps.len(), "heals_censored": censored,
            "worst_convergence_ms": worst_discovery.map(|g| (g * 10.0).round() / 10.0),
        },
        "sessions_per_worker": sessions,
    });
    Outcome { violations, stats }
}
