//! The participant processes: `zkr lock` holders and `zkr elect` candidates (`HolderCtx`),
//! library workers (`WorkerCtx`), and the `hold` command that writes to a fenced resource.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustix::process::{kill_process, kill_process_group, Pid, Signal};

use crate::faults::{self, Group, Participant};
use crate::worker::Role;
use crate::{check, now_ms, HoldArgs, SESSION_TIMEOUT_MS};

/// The `hold` subcommand: a few writes with the lock's fencing token.
pub fn hold(args: &HoldArgs) -> Result<(), String> {
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
    let mut send = |kind: &str| -> Result<(), String> {
        writeln!(out, "{kind} {} {node} {token}", args.holder).map_err(|e| e.to_string())?;
        line.clear();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        Ok(())
    };
    if !args.detached {
        send("A")?;
    }
    for _ in 0..writes {
        send("W")?;
        let pause = if args.detached {
            50
        } else {
            rng.gen_range(10..=50)
        };
        thread::sleep(Duration::from_millis(pause));
    }
    if !args.detached {
        send("R")?;
    }
    Ok(())
}

/// Per-participant results.
#[derive(Default)]
pub struct HolderStats {
    pub runs: u64,
    pub exit_codes: BTreeMap<String, u64>,
    /// When `zkr` exited saying the lock or leadership was lost (exit 8), ms.
    pub losses: Vec<f64>,
}

/// A participant's stderr log, or `None` (discarded).
pub fn dir_log(dir: &Path, name: &str, keep: bool) -> Option<PathBuf> {
    keep.then(|| dir.join(format!("{name}.log")))
}

/// SIGCONT + SIGKILL to a participant's running process (by pid).
pub fn stop_participant(p: &Participant) {
    p.stopped.store(true, Ordering::SeqCst);
    if let Some(pid) = p.pid().and_then(|pid| Pid::from_raw(pid as i32)) {
        let _ = kill_process(pid, Signal::CONT);
        let _ = kill_process(pid, Signal::KILL);
    }
}

pub struct HolderCtx {
    pub index: usize,
    pub zkr_bin: PathBuf,
    pub soak_exe: PathBuf,
    pub resource: String,
    pub unsafe_detach: bool,
    pub log: Option<PathBuf>,
    pub participant: Arc<Participant>,
    pub stats: Arc<Mutex<HolderStats>>,
    pub stop: Arc<AtomicBool>,
}

impl HolderCtx {
    pub fn run(self) {
        let mut rng = StdRng::seed_from_u64(self.index as u64);
        let proxy = self.participant.proxy.connect_string();
        while !self.stop.load(Ordering::SeqCst) {
            let mut cmd = Command::new(&self.zkr_bin);
            cmd.args(["--zk", &proxy])
                .args(["--session-timeout-ms", &SESSION_TIMEOUT_MS.to_string()]);
            match self.participant.group {
                Group::Elect => {
                    // One long-lived candidate: it leads, resigns when the command exits, and
                    // rejoins after 50 ms.
                    cmd.args(["elect", "/soak/election", "--id", &self.participant.name])
                        .args(["--restart-delay", "50ms", "--"]);
                }
                _ => {
                    cmd.args(["--timeout", "20s", "lock", "/soak/lock", "--"]);
                }
            }
            cmd.arg(&self.soak_exe)
                .args(["hold", "--resource", &self.resource])
                .args(["--holder", &self.index.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr_to(self.log.as_deref()));
            if self.unsafe_detach {
                cmd.arg("--unsafe-detach");
            }
            let code = match cmd.spawn() {
                Ok(child) => self.wait(child),
                Err(e) => {
                    eprintln!("zkr-soak: {}: cannot start zkr: {e}", self.participant.name);
                    thread::sleep(Duration::from_secs(1));
                    "spawn-error".to_string()
                }
            };
            {
                let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.runs += 1;
                if code == "8" {
                    s.losses.push(now_ms());
                }
                *s.exit_codes.entry(code).or_default() += 1;
            }
            thread::sleep(Duration::from_millis(rng.gen_range(10..=50)));
        }
    }

    /// Waits for `zkr` to exit; on stop, SIGTERM (zkr passes it on), then SIGKILL by pid.
    fn wait(&self, mut child: std::process::Child) -> String {
        let pid = child.id();
        self.participant.set_pid(Some(pid));
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
        self.participant.set_pid(None);
        exit_code(status)
    }
}

fn exit_code(status: Option<std::process::ExitStatus>) -> String {
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

/// Appends to `path` (created), or discards.
fn stderr_to(path: Option<&Path>) -> Stdio {
    let file = path.and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    file.map_or_else(Stdio::null, Stdio::from)
}

/// Runs one library worker process and restarts it if it exits before the end of the run
/// (which is a violation: workers run until stopped).
pub struct WorkerCtx {
    pub role: Role,
    pub seed: u64,
    pub soak_exe: PathBuf,
    pub log: Option<PathBuf>,
    pub participant: Arc<Participant>,
    pub stats: Arc<Mutex<HolderStats>>,
    pub stop: Arc<AtomicBool>,
}

impl WorkerCtx {
    pub fn run(self) -> Vec<check::Violation> {
        let mut violations = Vec::new();
        let Some(events) = self.participant.events.clone() else {
            return violations;
        };
        let proxy = self.participant.proxy.connect_string();
        let stopping =
            || self.stop.load(Ordering::SeqCst) || self.participant.stopped.load(Ordering::SeqCst);
        while !stopping() {
            let started = now_ms();
            let child = Command::new(&self.soak_exe)
                .args(["worker", "--role", self.role.name()])
                .args(["--zk", &proxy, "--name", &self.participant.name])
                .args(["--session-timeout-ms", &SESSION_TIMEOUT_MS.to_string()])
                .args(["--seed", &self.seed.to_string()])
                .arg("--events")
                .arg(&events)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr_to(self.log.as_deref()))
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("zkr-soak: {}: cannot start: {e}", self.participant.name);
                    thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            self.participant.set_pid(Some(child.id()));
            let status = child.wait().ok();
            self.participant.set_pid(None);
            let code = exit_code(status);
            {
                let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.runs += 1;
                *s.exit_codes.entry(code.clone()).or_default() += 1;
            }
            if stopping() {
                break;
            }
            let tail = self
                .log
                .as_deref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| {
                    let lines: Vec<&str> = t.lines().collect();
                    lines[lines.len().saturating_sub(3)..].join(" | ")
                })
                .unwrap_or_default();
            eprintln!(
                "zkr-soak: {:>8.3}s {} exited ({code}): {tail}",
                now_ms() / 1000.0,
                self.participant.name
            );
            violations.push(check::Violation {
                kind: "worker-exited",
                at_ms: now_ms(),
                detail: format!(
                    "{} (started at {:.3}s) exited with {code}: {tail}",
                    self.participant.name,
                    started / 1000.0
                ),
            });
            thread::sleep(Duration::from_millis(500));
        }
        violations
    }
}
