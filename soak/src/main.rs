//! `zkr-soak`: a seeded fault soak with an invariant checker (Jepsen-style) for zkr's locks.
//!
//! It starts its own partitionable ZooKeeper ensemble, a fenced resource (a TCP server that
//! accepts a write only with a token at least as high as any accepted before) and N holder
//! threads. Each holder loops on `zkr --zk <its own FaultProxy> lock /soak/lock -- zkr-soak
//! hold ...`, and the `hold` command writes to the resource with `ZKR_FENCING_TOKEN`. Meanwhile
//! faults drawn from the seed hit the members, the quorum links, the holders' connections and
//! the holders' processes. Afterwards the checker (`check.rs`) looks for overlapping holds,
//! stale accepted writes and unavailability. Exit codes: 0 no violation, 1 violation, 2 error.

mod check;
mod faults;
mod resource;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use serde_json::json;
use zkr::testing::{FaultProxy, ZkEnsemble};

use faults::HolderHandle;

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

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the soak started (one monotonic clock for resource and faults).
pub fn now_ms() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0
}

pub fn sleep_until_ms(t: f64) {
    let now = now_ms();
    if t > now {
        thread::sleep(Duration::from_secs_f64((t - now) / 1000.0));
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "zkr-soak",
    about = "Seeded fault soak with an invariant checker for zkr locks",
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
    /// Number of holder threads
    #[arg(long, default_value_t = 5)]
    holders: usize,
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
    /// Append each holder's `zkr` stderr to DIR/holder-N.log (default: discarded)
    #[arg(long, value_name = "DIR")]
    holder_logs: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct HoldArgs {
    #[arg(long)]
    resource: String,
    #[arg(long)]
    holder: usize,
    /// Start a detached writer (own process group) that keeps writing after we exit
    #[arg(long)]
    unsafe_detach: bool,
    /// Be that detached writer
    #[arg(long)]
    detached: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::Hold(args)) => hold(&args).map(|()| ExitCode::SUCCESS),
        None => soak(&cli.run),
    };
    result.unwrap_or_else(|e| {
        eprintln!("zkr-soak: {e}");
        ExitCode::from(2)
    })
}

/// The `hold` subcommand: a few writes with the lock's fencing token.
fn hold(args: &HoldArgs) -> Result<(), String> {
    let token: i64 = std::env::var("ZKR_FENCING_TOKEN")
        .map_err(|_| "ZKR_FENCING_TOKEN is not set (run under `zkr lock`)".to_string())?
        .parse()
        .map_err(|e| format!("ZKR_FENCING_TOKEN: {e}"))?;
    let node = std::env::var("ZKR_LOCK_NODE").unwrap_or_else(|_| format!("token-{token}"));
    if args.unsafe_detach {
        // Outside zkr's control: its own process group, so the lock's signals miss it.
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        std::os::unix::process::CommandExt::process_group(
            Command::new(exe)
                .args(["hold", "--detached", "--resource", &args.resource])
                .args(["--holder", &args.holder.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            0,
        )
        .spawn()
        .map_err(|e| format!("starting the detached writer: {e}"))?;
    }
    let stream = TcpStream::connect(&args.resource)
        .map_err(|e| format!("connecting to {}: {e}", args.resource))?;
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut out = stream;
    let mut rng = StdRng::seed_from_u64(token as u64 ^ (args.holder as u64) << 48);
    // The detached writer keeps writing for 3 s (every 50 ms) with its stale token; a normal
    // hold writes 5-20 times, 10-50 ms apart.
    let writes = if args.detached {
        60
    } else {
        rng.gen_range(5..=20)
    };
    let mut line = String::new();
    for _ in 0..writes {
        writeln!(out, "W {} {node} {token}", args.holder).map_err(|e| e.to_string())?;
        line.clear();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let pause = if args.detached {
            50
        } else {
            rng.gen_range(10..=50)
        };
        thread::sleep(Duration::from_millis(pause));
    }
    Ok(())
}

/// Per-holder results.
#[derive(Default)]
struct HolderStats {
    runs: u64,
    exit_codes: BTreeMap<String, u64>,
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
    eprintln!(
        "zkr-soak: seed {seed}, {seconds} s, {} members, {} holders{}, zkr at {}",
        args.members,
        args.holders,
        if args.unsafe_holder {
            " (holder 0 UNSAFE)"
        } else {
            ""
        },
        zkr_bin.display()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let budget_ms = seconds.saturating_sub(8) * 1000;
    let plan = faults::plan(&mut rng, budget_ms, args.holders);

    eprintln!(
        "zkr-soak: starting a partitionable {}-member ensemble",
        args.members
    );
    let zk = ZkEnsemble::start_partitionable(args.members).map_err(|e| e.to_string())?;
    zk.wait_leader_among(
        &(0..args.members).collect::<Vec<_>>(),
        Duration::from_secs(30),
    )
    .map_err(|e| e.to_string())?;
    let resource = resource::Resource::start().map_err(|e| format!("resource: {e}"))?;
    let handles: Vec<Arc<HolderHandle>> = (0..args.holders)
        .map(|_| {
            FaultProxy::for_ensemble(&zk).map(|proxy| {
                Arc::new(HolderHandle {
                    proxy,
                    zkr_pid: Mutex::new(None),
                })
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    // The soak's clock starts now: the fault plan is relative to this.
    let t0 = now_ms();
    let stop = Arc::new(AtomicBool::new(false));
    let stats: Vec<Arc<Mutex<HolderStats>>> = (0..args.holders)
        .map(|_| Arc::new(Mutex::new(HolderStats::default())))
        .collect();
    let mut threads = Vec::new();
    for (i, handle) in handles.iter().enumerate() {
        let holder = HolderCtx {
            index: i,
            zkr_bin: zkr_bin.clone(),
            soak_exe: soak_exe.clone(),
            proxy: handle.proxy.connect_string(),
            resource: resource.addr().to_string(),
            unsafe_detach: args.unsafe_holder && i == 0,
            log: args
                .holder_logs
                .as_ref()
                .map(|dir| dir.join(format!("holder-{i}.log"))),
            handle: Arc::clone(handle),
            stats: Arc::clone(&stats[i]),
            stop: Arc::clone(&stop),
        };
        threads.push(
            thread::Builder::new()
                .name(format!("holder-{i}"))
                .spawn(move || holder.run())
                .map_err(|e| format!("holder thread: {e}"))?,
        );
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
                holders: &handles,
            };
            let r = faults::run(&plan, &env);
            done.store(true, Ordering::SeqCst);
            r
        });
        let mut next_progress = t0 + 10_000.0;
        while !done.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(100));
            if now_ms() >= next_progress {
                let (a, r) = resource.counts();
                eprintln!(
                    "zkr-soak: {:>8.3}s progress: writes accepted {a}, rejected {r}",
                    now_ms() / 1000.0
                );
                next_progress += 10_000.0;
            }
        }
        runner.join().unwrap_or_default()
    });
    let last_heal = records.iter().map(|r| r.end_ms).fold(t0, f64::max);
    // Let the holders run on after the last heal, so liveness after it is measured.
    sleep_until_ms((t0 + seconds as f64 * 1000.0).max(last_heal + 6000.0));
    let end_ms = now_ms();
    eprintln!("zkr-soak: {:>8.3}s stopping the holders", end_ms / 1000.0);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    if args.unsafe_holder {
        // The detached writers finish their 3 s on their own.
        thread::sleep(Duration::from_millis(3500));
    }
    let writes = resource.writes();
    let outcome = check::check(&writes, &records, LIVENESS_BOUND_MS, end_ms);
    drop(handles);
    drop(zk);

    // Summary.
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        *by_kind.entry(r.kind.name()).or_default() += 1;
    }
    let accepted = writes.iter().filter(|w| w.accepted).count();
    let rejected = writes.len() - accepted;
    let worst = outcome
        .gaps
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let holder_json: Vec<_> = stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            let holds = outcome.holds.iter().filter(|h| h.holder == i).count();
            json!({"holder": i, "zkr_runs": s.runs, "holds": holds, "exit_codes": s.exit_codes})
        })
        .collect();
    let report = json!({
        "times": "ms since the soak process started (the ensemble starts first; the holders start at workload_start_ms, the faults 2 s later)",
        "workload_start_ms": round(t0),
        "seed": seed,
        "seconds": seconds,
        "members": args.members,
        "holders": args.holders,
        "unsafe_holder": args.unsafe_holder,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "faults": records.iter().map(|r| json!({
            "kind": r.kind.name(), "target": r.target,
            "start_ms": round(r.start_ms), "end_ms": round(r.end_ms),
        })).collect::<Vec<_>>(),
        "faults_total": records.len(),
        "faults_by_kind": by_kind,
        "fault_kinds": by_kind.len(),
        "holds": outcome.holds.len(),
        "paused_holds": outcome.paused_holds,
        "writes_accepted": accepted,
        "writes_rejected": rejected,
        "late_writes_rejected": outcome.late_writes_rejected,
        "holder_runs": holder_json,
        "holder_exit_codes": "zkr lock's exit: 0 the hold ran, 1 the session was lost while acquiring (nothing held), 8 lock lost (command terminated), 7 not acquired in 20 s, 130/143 stopped at the end of the run",
        "liveness": {
            "bound_ms": LIVENESS_BOUND_MS,
            "worst_ms": worst.map(|w| round(w.1)),
            "worst_after_heal_at_ms": worst.map(|w| round(w.0)),
            "heals_measured": outcome.gaps.len(),
            "heals_censored_by_end": outcome.censored_heals,
            "explanation": LIVENESS_EXPLANATION,
        },
        "violations": outcome.violations.iter().map(|v| json!({
            "kind": v.kind, "at_ms": round(v.at_ms), "detail": v.detail,
        })).collect::<Vec<_>>(),
        "ok": outcome.violations.is_empty(),
    });
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    println!(
        "zkr-soak: seed {seed}, {seconds} s, {} members, {} holders",
        args.members, args.holders
    );
    println!(
        "  faults: {} ({})",
        records.len(),
        by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  holds: {} ({} paused), writes accepted {accepted}, rejected {rejected} ({} late writes of paused holds rejected)",
        outcome.holds.len(),
        outcome.paused_holds,
        outcome.late_writes_rejected
    );
    match worst {
        Some((heal, gap)) => println!(
            "  worst unavailability: {:.3} s after the heal at {:.3} s (bound {:.1} s, {} heals measured)",
            gap / 1000.0,
            heal / 1000.0,
            LIVENESS_BOUND_MS / 1000.0,
            outcome.gaps.len()
        ),
        None => println!("  worst unavailability: no heal measured"),
    }
    if outcome.violations.is_empty() {
        println!("  violations: 0");
        return Ok(ExitCode::SUCCESS);
    }
    println!("  VIOLATIONS: {}", outcome.violations.len());
    for v in outcome.violations.iter().take(10) {
        println!("    {:>9.3}s {}: {}", (v.at_ms) / 1000.0, v.kind, v.detail);
    }
    if outcome.violations.len() > 10 {
        println!("    ... (all of them in the JSON report)");
    }
    let first = &outcome.violations[0];
    println!(
        "  timeline around the first violation ({}, at {:.3} s; faults and holds within 5 s):",
        first.kind,
        first.at_ms / 1000.0
    );
    for line in check::timeline(first.at_ms, &records, &outcome.holds) {
        println!("    {line}");
    }
    Ok(ExitCode::from(1))
}

fn parse_members(s: &str) -> Result<usize, String> {
    match s {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("{s:?}: the soak runs 3 or 5 members")),
    }
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

struct HolderCtx {
    index: usize,
    zkr_bin: PathBuf,
    soak_exe: PathBuf,
    proxy: String,
    resource: String,
    unsafe_detach: bool,
    log: Option<PathBuf>,
    handle: Arc<HolderHandle>,
    stats: Arc<Mutex<HolderStats>>,
    stop: Arc<AtomicBool>,
}

impl HolderCtx {
    fn run(self) {
        let mut rng = StdRng::seed_from_u64(self.index as u64);
        while !self.stop.load(Ordering::SeqCst) {
            let mut cmd = Command::new(&self.zkr_bin);
            cmd.args(["--zk", &self.proxy])
                .args(["--session-timeout-ms", &SESSION_TIMEOUT_MS.to_string()])
                .args(["--timeout", "20s", "lock", "/soak/lock", "--"])
                .arg(&self.soak_exe)
                .args(["hold", "--resource", &self.resource])
                .args(["--holder", &self.index.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(self.stderr());
            if self.unsafe_detach {
                cmd.arg("--unsafe-detach");
            }
            let code = match cmd.spawn() {
                Ok(child) => self.wait(child),
                Err(e) => {
                    eprintln!("zkr-soak: holder {}: cannot start zkr: {e}", self.index);
                    thread::sleep(Duration::from_secs(1));
                    "spawn-error".to_string()
                }
            };
            {
                let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.runs += 1;
                *s.exit_codes.entry(code).or_default() += 1;
            }
            thread::sleep(Duration::from_millis(rng.gen_range(10..=50)));
        }
    }

    fn stderr(&self) -> Stdio {
        let file = self.log.as_ref().and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        file.map_or_else(Stdio::null, Stdio::from)
    }

    /// Waits for `zkr` to exit; on stop, SIGTERM (zkr passes it on), then SIGKILL by pid.
    fn wait(&self, mut child: std::process::Child) -> String {
        let pid = child.id();
        *self
            .handle
            .zkr_pid
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(pid);
        let mut stop_sent: Option<Instant> = None;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(_) => break None,
            }
            if self.stop.load(Ordering::SeqCst) {
                let zkr = Pid::from_raw(pid as i32);
                match stop_sent {
                    None => {
                        // A paused process would never act on SIGTERM.
                        for c in faults::children_of(pid) {
                            if let Some(g) = Pid::from_raw(c as i32) {
                                let _ = kill_process_group(g, Signal::CONT);
                            }
                        }
                        if let Some(zkr) = zkr {
                            let _ = kill_process(zkr, Signal::CONT);
                            let _ = kill_process(zkr, Signal::TERM);
                        }
                        stop_sent = Some(Instant::now());
                    }
                    Some(at) if at.elapsed() > Duration::from_secs(3) => {
                        for c in faults::children_of(pid) {
                            if let Some(g) = Pid::from_raw(c as i32) {
                                let _ = kill_process_group(g, Signal::KILL);
                            }
                        }
                        let _ = child.kill();
                        break child.wait().ok();
                    }
                    Some(_) => {}
                }
            }
            thread::sleep(Duration::from_millis(20));
        };
        *self
            .handle
            .zkr_pid
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        match status {
            Some(s) => match s.code() {
                Some(c) => c.to_string(),
                None => {
                    use std::os::unix::process::ExitStatusExt;
                    format!("signal {}", s.signal().unwrap_or(0))
                }
            },
            None => "unknown".to_string(),
        }
    }
}
