//! `zkr-soak`: a seeded fault soak with an invariant checker (Jepsen-style) for zkr's recipes.
//!
//! It starts its own partitionable ZooKeeper ensemble, two fenced resources (TCP servers that
//! accept a write only with a token at least as high as any accepted before) and these
//! workloads, every participant an OS process behind its own fault proxy:
//!
//! * **locks**: N holders loop on `zkr lock /soak/lock -- zkr-soak hold ...`; the `hold`
//!   command writes to the lock resource with `ZKR_FENCING_TOKEN`;
//! * **election**: candidates run `zkr elect /soak/election -- zkr-soak hold ...`, the leader
//!   writing its fence to the election resource;
//! * **library workers** (`zkr-soak worker`, see `worker.rs`): IDs, config publish/subscribe,
//!   registration and discovery, a work queue with progress reporting.
//!
//! Meanwhile faults drawn from the seed hit the members, the quorum links, the participants'
//! connections and sessions, and their processes (`faults.rs`). Afterwards the checkers
//! (`check.rs` for the fenced resources, `workloads.rs` for the rest) look for overlapping
//! holds, stale accepted writes, duplicate IDs, lost or backward config values, tasks not
//! completed exactly once, discovery that does not converge, and unavailability. Exit codes:
//! 0 no violation, 1 violation, 2 error.

#![warn(missing_docs)]

mod check;
mod faults;
mod procs;
mod report;
mod resource;
mod worker;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use rand::rngs::StdRng;
use rand::SeedableRng;
use zkr_testing::{FaultProxy, ZkEnsemble};

use faults::{Group, Participant};
use procs::{dir_log, stop_participant, HolderCtx, HolderStats, WorkerCtx};
use worker::Role;

/// The holders' session timeout.
const SESSION_TIMEOUT_MS: u64 = 4000;
/// Liveness bound: the worst time from a full heal to the first accepted write of a new hold
/// (session timeout + 2 s). See `LIVENESS_EXPLANATION`.
const LIVENESS_BOUND_MS: f64 = 6_000.0;
const LIVENESS_EXPLANATION: &str = "measured from each full heal (the end of a fault while no \
other fault runs) to the first accepted write of a hold that began after it; cut short (censored) \
when the next fault starts first, and then only a calm stretch longer than the bound without such \
a write is a violation. Heals during other faults are not measured: overlapping faults can keep \
the lock unavailable far longer, by design (a paused or cut-off holder, or a cut-off waiter ahead \
in the queue, keeps the lock until its session expires; an isolated leader takes the others about \
5-6 s to replace; two member faults at once take the quorum away). Bound: the session timeout \
(4 s) + 2 s, i.e. one session that was about to expire when the fault ended, plus an election or \
reconnect. The safe implementation measured 2.3 s at worst (150 s run, seed 20261128), 0.6 s \
(180 s, seed 42) and 0.2 s (40 s, seed 7).";

/// CLOCK_MONOTONIC (ms) when the soak started.
static START_MONO: OnceLock<f64> = OnceLock::new();

/// Milliseconds since the soak started, on CLOCK_MONOTONIC: the clock of the resources, the
/// faults and (converted) the workers' events.
pub fn now_ms() -> f64 {
    worker::mono_ms() - *START_MONO.get_or_init(worker::mono_ms)
}

/// Sleeps until `t` (ms since the soak started).
pub fn sleep_until_ms(t: f64) {
    let now = now_ms();
    if t > now {
        thread::sleep(Duration::from_secs_f64((t - now) / 1000.0));
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "zkr-soak",
    about = "Seeded fault soak with an invariant checker for zkr's recipes",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// (internal) the command `zkr lock` runs: writes to the fenced resource
    #[command(hide = true)]
    Hold(HoldArgs),
    /// (internal) a library workload process
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Seed of the fault schedule (default: from the clock; printed)
    #[arg(long)]
    seed: Option<u64>,
    /// Run length in seconds (default 60)
    #[arg(long, conflicts_with = "minutes")]
    seconds: Option<u64>,
    /// Run length in minutes
    #[arg(long)]
    minutes: Option<u64>,
    /// Ensemble size
    #[arg(long, default_value_t = 3, value_parser = parse_members)]
    members: usize,
    /// Number of lock holder processes
    #[arg(long, default_value_t = 5)]
    holders: usize,
    /// Number of election candidates
    #[arg(long, default_value_t = 3)]
    candidates: usize,
    /// Run the lock workload only (no election, no library workers)
    #[arg(long)]
    locks_only: bool,
    /// Write the JSON report here
    #[arg(long)]
    report: Option<PathBuf>,
    /// Holder 0 runs its writer outside zkr's control (detached, stale token): the checker
    /// must report a violation
    #[arg(long)]
    unsafe_holder: bool,
    /// The `zkr` binary (default: next to this executable)
    #[arg(long)]
    zkr_bin: Option<PathBuf>,
    /// Append each lock holder's and candidate's `zkr` stderr to DIR/NAME.log (default:
    /// discarded; the workers' logs and events go to a temporary directory, kept on a violation)
    #[arg(long, value_name = "DIR")]
    holder_logs: Option<PathBuf>,
}

/// Arguments of the `hold` subcommand.
#[derive(Args, Debug)]
pub struct HoldArgs {
    /// The fenced resource (HOST:PORT)
    #[arg(long)]
    pub resource: String,
    /// This holder's number
    #[arg(long)]
    pub holder: usize,
    /// Start a detached writer (own process group) that keeps writing after we exit
    #[arg(long)]
    pub unsafe_detach: bool,
    /// Be that detached writer
    #[arg(long)]
    pub detached: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::Hold(args)) => procs::hold(&args).map(|()| ExitCode::SUCCESS),
        Some(Sub::Worker(args)) => worker::run(&args).map(|()| ExitCode::SUCCESS),
        None => soak(&cli.run),
    };
    result.unwrap_or_else(|e| {
        eprintln!("zkr-soak: {e}");
        ExitCode::from(2)
    })
}

fn locate_zkr(arg: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = arg {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe.parent().ok_or("current_exe has no directory")?;
    // Test binaries live in target/<profile>/deps; binaries in target/<profile>.
    for candidate in [dir.join("zkr"), dir.join("../zkr")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "no `zkr` binary next to {} (build it: cargo build -p zkr-cli --bin zkr, same profile) \
         or pass --zkr-bin",
        exe.display()
    ))
}

/// The library workers: (role, how many).
const WORKERS: [(Role, usize); 7] = [
    (Role::Ids, 2),
    (Role::ConfigPub, 1),
    (Role::ConfigSub, 2),
    (Role::Register, 3),
    (Role::Discover, 1),
    (Role::Producer, 1),
    (Role::QueueWorker, 3),
];

fn soak(args: &RunArgs) -> Result<ExitCode, String> {
    now_ms();
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let seconds = match (args.seconds, args.minutes) {
        (Some(s), _) => s,
        (None, Some(m)) => m * 60,
        (None, None) => 60,
    };
    if args.holders == 0 {
        return Err("--holders must be at least 1".into());
    }
    let zkr_bin = locate_zkr(args.zkr_bin.as_deref())?;
    let soak_exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let workers: Vec<(Role, usize)> = if args.locks_only {
        Vec::new()
    } else {
        WORKERS
            .iter()
            .flat_map(|&(role, n)| (0..n).map(move |i| (role, i)))
            .collect()
    };
    let candidates = if args.locks_only { 0 } else { args.candidates };
    eprintln!(
        "zkr-soak: seed {seed}, {seconds} s, {} members, {} lock holders{}, {candidates} election candidates, {} library workers, zkr at {}",
        args.members,
        args.holders,
        if args.unsafe_holder {
            " (holder 0 UNSAFE)"
        } else {
            ""
        },
        workers.len(),
        zkr_bin.display()
    );
    let dir = std::env::temp_dir().join(format!("zkr-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let logs_dir = args.holder_logs.clone().unwrap_or_else(|| dir.clone());

    // Participants, in a fixed order (the fault plan picks them by index).
    let mut names: Vec<(String, Group, usize, Option<Role>)> = Vec::new();
    for i in 0..args.holders {
        names.push((format!("lock-{i}"), Group::Lock, i, None));
    }
    for i in 0..candidates {
        names.push((format!("elect-{i}"), Group::Elect, i, None));
    }
    for &(role, i) in &workers {
        names.push((format!("{}-{i}", role.name()), Group::Worker, i, Some(role)));
    }
    let cast = faults::Cast {
        participants: names.len(),
        workers: (0..names.len())
            .filter(|&i| names[i].1 == Group::Worker)
            .collect(),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let budget_ms = seconds.saturating_sub(8) * 1000;
    let plan = faults::plan(&mut rng, budget_ms, &cast);

    eprintln!(
        "zkr-soak: starting a partitionable {}-member ensemble",
        args.members
    );
    let zk = ZkEnsemble::start_partitionable(args.members).map_err(|e| e.to_string())?;
    zk.wait_leader_among(
        &(0..args.members).collect::<Vec<_>>(),
        Duration::from_secs(60),
    )
    .map_err(|e| e.to_string())?;
    let lock_resource = resource::Resource::start().map_err(|e| format!("resource: {e}"))?;
    let elect_resource = resource::Resource::start().map_err(|e| format!("resource: {e}"))?;
    let participants: Vec<Arc<Participant>> = names
        .iter()
        .map(|(name, group, index, _)| {
            let events = (*group == Group::Worker).then(|| dir.join(format!("{name}.jsonl")));
            FaultProxy::for_ensemble(&zk).map(|proxy| {
                Arc::new(Participant::new(
                    name.clone(),
                    *group,
                    *index,
                    proxy,
                    events,
                ))
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    // The soak's clock starts now: the fault plan is relative to this.
    let t0 = now_ms();
    let stop = Arc::new(AtomicBool::new(false));
    let stats: Vec<Arc<Mutex<HolderStats>>> = (0..participants.len())
        .map(|_| Arc::new(Mutex::new(HolderStats::default())))
        .collect();
    let mut threads = Vec::new();
    let mut worker_threads = Vec::new();
    let stop_workers = Arc::new(AtomicBool::new(false));
    for (i, p) in participants.iter().enumerate() {
        let log = dir_log(
            &logs_dir,
            &p.name,
            args.holder_logs.is_some() || p.group == Group::Worker,
        );
        match p.group {
            Group::Lock | Group::Elect => {
                let resource = if p.group == Group::Lock {
                    lock_resource.addr()
                } else {
                    elect_resource.addr()
                };
                let holder = HolderCtx {
                    index: p.index,
                    zkr_bin: zkr_bin.clone(),
                    soak_exe: soak_exe.clone(),
                    resource: resource.to_string(),
                    unsafe_detach: args.unsafe_holder && p.group == Group::Lock && p.index == 0,
                    log,
                    participant: Arc::clone(p),
                    stats: Arc::clone(&stats[i]),
                    stop: Arc::clone(&stop),
                };
                threads.push(
                    thread::Builder::new()
                        .name(p.name.clone())
                        .spawn(move || holder.run())
                        .map_err(|e| format!("holder thread: {e}"))?,
                );
            }
            Group::Worker => {
                let role = names[i].3.unwrap_or(Role::Ids);
                let worker = WorkerCtx {
                    role,
                    seed: seed ^ (i as u64) << 32,
                    soak_exe: soak_exe.clone(),
                    log,
                    participant: Arc::clone(p),
                    stats: Arc::clone(&stats[i]),
                    stop: Arc::clone(&stop_workers),
                };
                worker_threads.push((
                    role,
                    thread::Builder::new()
                        .name(p.name.clone())
                        .spawn(move || worker.run())
                        .map_err(|e| format!("worker thread: {e}"))?,
                ));
            }
        }
    }
    let plan: Vec<faults::Planned> = plan
        .into_iter()
        .map(|mut p| {
            p.at_ms += t0 as u64;
            p
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let records = thread::scope(|s| {
        let runner = s.spawn(|| {
            let env = faults::Env {
                zk: &zk,
                cast: &cast,
                participants: &participants,
            };
            let r = faults::run(&plan, &env);
            done.store(true, Ordering::SeqCst);
            r
        });
        let mut next_progress = t0 + 10_000.0;
        while !done.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(100));
            if now_ms() >= next_progress {
                let (a, r) = lock_resource.counts();
                let (ea, er) = elect_resource.counts();
                eprintln!(
                    "zkr-soak: {:>8.3}s progress: lock writes accepted {a}, rejected {r}; leader writes accepted {ea}, rejected {er}",
                    now_ms() / 1000.0
                );
                next_progress += 10_000.0;
            }
        }
        runner.join().unwrap_or_default()
    });
    let last_heal = records.iter().map(|r| r.end_ms).fold(t0, f64::max);
    // Let everything run on after the last heal, so liveness after it is measured.
    sleep_until_ms((t0 + seconds as f64 * 1000.0).max(last_heal + 6000.0));
    let end_ms = now_ms();
    eprintln!(
        "zkr-soak: {:>8.3}s stopping the holders and candidates",
        end_ms / 1000.0
    );
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    if args.unsafe_holder {
        // The detached writers finish their 3 s on their own.
        thread::sleep(Duration::from_millis(3500));
    }
    // The producer and the publisher stop first; then the queue drains and the subscribers
    // catch up before the final state is read.
    let final_state = if workers.is_empty() {
        None
    } else {
        for p in participants.iter().filter(|p| {
            p.name.starts_with(Role::Producer.name()) || p.name.starts_with(Role::ConfigPub.name())
        }) {
            stop_participant(p);
        }
        Some(settle(
            &soak_exe,
            &zk.connect_string(),
            &dir,
            &participants,
            30,
        )?)
    };
    stop_workers.store(true, Ordering::SeqCst);
    for p in participants.iter().filter(|p| p.group == Group::Worker) {
        stop_participant(p);
    }
    let mut worker_exits: Vec<check::Violation> = Vec::new();
    for (_, t) in worker_threads {
        if let Ok(v) = t.join() {
            worker_exits.extend(v);
        }
    }
    let lock_writes = lock_resource.writes();
    let elect_writes = elect_resource.writes();
    let lock_markers = lock_resource.markers();
    let elect_markers = elect_resource.markers();
    let lock = check::check(
        &lock_writes,
        &lock_markers,
        &records,
        "lock",
        LIVENESS_BOUND_MS,
        end_ms,
    );
    let elect = check::check(
        &elect_writes,
        &elect_markers,
        &records,
        "elect",
        LIVENESS_BOUND_MS,
        end_ms,
    );
    let start_mono = START_MONO.get().copied().unwrap_or(0.0);
    let logs: Vec<workloads::WorkerLog> = participants
        .iter()
        .zip(&names)
        .filter_map(|(p, n)| {
            let role = n.3?;
            Some(workloads::WorkerLog::read(
                &p.name,
                role.name(),
                p.events.as_deref()?,
                start_mono,
            ))
        })
        .collect();
    let registrants: Vec<String> = names
        .iter()
        .filter(|n| n.3 == Some(Role::Register))
        .map(|n| n.0.clone())
        .collect();
    let libs = final_state
        .as_ref()
        .map(|f| workloads::check(&logs, f, &records, &registrants, LIVENESS_BOUND_MS, end_ms));
    drop(participants);
    drop(zk);

    report::finish(&report::Results {
        seed,
        seconds,
        members: args.members,
        holders: args.holders,
        candidates,
        workers: workers.len(),
        unsafe_holder: args.unsafe_holder,
        report: args.report.as_deref(),
        dir: &dir,
        t0,
        records: &records,
        names: &names,
        stats: &stats,
        lock: &lock,
        elect: &elect,
        lock_writes: &lock_writes,
        elect_writes: &elect_writes,
        lock_markers: &lock_markers,
        elect_markers: &elect_markers,
        libs: libs.as_ref(),
        worker_exits,
    })
}

/// Waits (up to `secs`) until the queue has no pending or running task, every config
/// subscriber shows the final value and discovery shows every registrant; returns the final
/// state (read directly from the ensemble, not through a proxy).
fn settle(
    soak_exe: &Path,
    direct: &str,
    dir: &Path,
    participants: &[Arc<Participant>],
    secs: u64,
) -> Result<workloads::Final, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let registrants: Vec<&str> = participants
        .iter()
        .filter(|p| p.name.starts_with(Role::Register.name()))
        .map(|p| p.name.as_str())
        .collect();
    let mut round = 0;
    loop {
        round += 1;
        let events = dir.join(format!("inspect-{round}.jsonl"));
        let status = Command::new(soak_exe)
            .args(["worker", "--role", "inspect", "--name", "inspect"])
            .args(["--zk", direct])
            .arg("--events")
            .arg(&events)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("inspect: {e}"))?;
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        let last = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .rfind(|v| v["ev"] == "final");
        if let (true, Some(v)) = (status.success(), last) {
            let state = workloads::Final {
                config: v["config"].as_i64(),
                tasks: v["tasks"].as_array().cloned().unwrap_or_default(),
                instances: v["instances"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            let queue_done = state
                .tasks
                .iter()
                .all(|t| t["state"] != "pending" && t["state"] != "running");
            let subscribers_done = participants
                .iter()
                .filter(|p| p.name.starts_with(Role::ConfigSub.name()))
                .all(|p| last_value(p, "seen", "v") == state.config.map(serde_json::Value::from));
            let discovery_done = participants
                .iter()
                .filter(|p| p.name.starts_with(Role::Discover.name()))
                .all(|p| {
                    let mut ids: Vec<String> = last_value(p, "set", "ids")
                        .and_then(|v| v.as_array().cloned())
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect();
                    ids.sort();
                    ids == registrants
                });
            if (queue_done && subscribers_done && discovery_done) || Instant::now() > deadline {
                eprintln!(
                    "zkr-soak: {:>8.3}s final state read (queue drained: {queue_done}, subscribers current: {subscribers_done}, discovery complete: {discovery_done})",
                    now_ms() / 1000.0
                );
                return Ok(state);
            }
        } else if Instant::now() > deadline {
            return Err("could not read the final state (inspect failed)".into());
        }
        thread::sleep(Duration::from_millis(1000));
    }
}

/// The field `field` of the participant's last `ev` event.
fn last_value(p: &Participant, ev: &str, field: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(p.events.as_deref()?).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["ev"] == ev)
        .map(|v| v[field].clone())
}

fn parse_members(s: &str) -> Result<usize, String> {
    match s {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("{s:?}: the soak runs 3 or 5 members")),
    }
}

/// `ms` rounded to 0.1.
pub fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}
