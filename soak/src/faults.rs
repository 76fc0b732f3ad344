//! The fault schedule (drawn from the seed) and its execution.
//!
//! The plan — kinds, start times, durations and a random `pick` per fault — depends on the seed
//! alone. Targets that only exist at run time (the current ZooKeeper leader, the holder that
//! holds the lock now) are resolved when the fault starts, using `pick` where a choice remains.
//! At most one member fault (kill / pause) and one quorum-network fault (isolate / partition)
//! run at a time; client-side faults (cut, blackhole, session expiry: one at a time per
//! participant), a holder pause and a worker pause may overlap with them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use zkr_testing::{FaultProxy, ZkEnsemble};

use crate::{now_ms, sleep_until_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    MemberKill,
    MemberPause,
    IsolateLeader,
    IsolateFollower,
    Partition,
    ClientCut,
    ClientBlackhole,
    SessionExpiry,
    HolderPause,
    WorkerPause,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::MemberKill,
        Kind::MemberPause,
        Kind::IsolateLeader,
        Kind::IsolateFollower,
        Kind::Partition,
        Kind::ClientCut,
        Kind::ClientBlackhole,
        Kind::SessionExpiry,
        Kind::HolderPause,
        Kind::WorkerPause,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::MemberKill => "member-kill-restart",
            Kind::MemberPause => "member-pause",
            Kind::IsolateLeader => "isolate-leader",
            Kind::IsolateFollower => "isolate-follower",
            Kind::Partition => "partition",
            Kind::ClientCut => "client-cut",
            Kind::ClientBlackhole => "client-blackhole",
            Kind::SessionExpiry => "session-expiry",
            Kind::HolderPause => "holder-pause",
            Kind::WorkerPause => "worker-pause",
        }
    }

    /// Duration range in ms.
    fn duration(self) -> (u64, u64) {
        match self {
            Kind::MemberKill | Kind::MemberPause => (1000, 3000),
            Kind::IsolateLeader | Kind::IsolateFollower | Kind::Partition => (2000, 7000),
            // Sometimes longer than the 4 s session timeout.
            Kind::ClientCut | Kind::ClientBlackhole => (1000, 6000),
            // The owner stays cut off for a moment after its session was expired.
            Kind::SessionExpiry => (300, 1500),
            // Always longer than the session timeout.
            Kind::HolderPause | Kind::WorkerPause => (5000, 8000),
        }
    }
}

/// Which faults may not overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Member,
    Net,
    Client(usize),
    HolderPause,
    WorkerPause,
}

/// The participants as the plan sees them: how many, and which are library workers (the
/// session-expiry and worker-pause targets).
pub struct Cast {
    pub participants: usize,
    pub workers: Vec<usize>,
}

impl Cast {
    /// The participant a client fault picks.
    pub fn client(&self, kind: Kind, pick: u64) -> usize {
        if kind == Kind::SessionExpiry && !self.workers.is_empty() {
            self.workers[pick as usize % self.workers.len()]
        } else {
            pick as usize % self.participants.max(1)
        }
    }
}

fn slot(kind: Kind, pick: u64, cast: &Cast) -> Slot {
    match kind {
        Kind::MemberKill | Kind::MemberPause => Slot::Member,
        Kind::IsolateLeader | Kind::IsolateFollower | Kind::Partition => Slot::Net,
        Kind::ClientCut | Kind::ClientBlackhole | Kind::SessionExpiry => {
            Slot::Client(cast.client(kind, pick))
        }
        Kind::HolderPause => Slot::HolderPause,
        Kind::WorkerPause => Slot::WorkerPause,
    }
}

/// One planned fault.
#[derive(Debug, Clone)]
pub struct Planned {
    pub kind: Kind,
    pub at_ms: u64,
    pub duration_ms: u64,
    pub pick: u64,
}

/// The schedule: a fault every 1–3 s from 2 s on, starting no later than `budget_ms`.
pub fn plan(rng: &mut StdRng, budget_ms: u64, cast: &Cast) -> Vec<Planned> {
    let mut out = Vec::new();
    let mut busy: HashMap<Slot, u64> = HashMap::new();
    let mut t = 2000;
    while t <= budget_ms {
        let mut kinds = Kind::ALL;
        kinds.shuffle(rng);
        let pick: u64 = rng.gen();
        for kind in kinds {
            let (lo, hi) = kind.duration();
            let duration_ms = rng.gen_range(lo..=hi);
            if kind == Kind::SessionExpiry && cast.workers.is_empty() {
                continue;
            }
            let s = slot(kind, pick, cast);
            if busy.get(&s).is_none_or(|&free| free <= t) {
                // 500 ms of calm on the slot before its next fault.
                busy.insert(s, t + duration_ms + 500);
                out.push(Planned {
                    kind,
                    at_ms: t,
                    duration_ms,
                    pick,
                });
                break;
            }
        }
        t += rng.gen_range(1000..=3000);
    }
    out
}

/// What happened, for the report and the checker.
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: Kind,
    pub target: String,
    pub start_ms: f64,
    pub end_ms: f64,
    /// For process pauses: the participant that was stopped (see [`Participant::name`]).
    pub paused: Option<String>,
}

/// What kind of process a participant runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// `zkr lock` holders.
    Lock,
    /// `zkr elect` candidates.
    Elect,
    /// `zkr-soak worker` processes.
    Worker,
}

/// One client process of the soak, as the fault runner sees it.
pub struct Participant {
    /// `lock-0`, `elect-2`, `ids-1`, `queue-worker-0`, ...
    pub name: String,
    pub group: Group,
    /// Index within its group (the holder number on the fenced resources).
    pub index: usize,
    /// Its own fault proxy: every connection it makes goes through it.
    pub proxy: FaultProxy,
    /// Pid of its running process (`zkr` or `zkr-soak worker`), if any.
    pub pid: Mutex<Option<u32>>,
    /// Where a worker writes its events (the session credentials are there).
    pub events: Option<PathBuf>,
    /// Set when the soak stops it on purpose (its exit is then not a failure).
    pub stopped: AtomicBool,
}

impl Participant {
    pub fn new(
        name: String,
        group: Group,
        index: usize,
        proxy: FaultProxy,
        events: Option<PathBuf>,
    ) -> Participant {
        Participant {
            name,
            group,
            index,
            proxy,
            pid: Mutex::new(None),
            events,
            stopped: AtomicBool::new(false),
        }
    }

    pub fn set_pid(&self, pid: Option<u32>) {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner()) = pid;
    }

    pub fn pid(&self) -> Option<u32> {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How to undo a started fault.
enum Undo {
    Member(usize),
    Start(usize),
    Net,
    Proxy(usize),
    Holder { zkr: Option<Pid>, groups: Vec<Pid> },
    Process(Pid),
    Nothing,
}

pub struct Env<'a> {
    pub zk: &'a ZkEnsemble,
    pub cast: &'a Cast,
    pub participants: &'a [Arc<Participant>],
}

/// Runs the plan (blocking) and returns what was done. Every fault is healed before it returns.
pub fn run(plan: &[Planned], env: &Env<'_>) -> Vec<Record> {
    // Events: (time, is_end, index). Ends sort before starts at the same time.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        events.push((p.at_ms, false, i));
        events.push((p.at_ms + p.duration_ms, true, i));
    }
    events.sort_by_key(|&(t, is_end, i)| (t, !is_end, i));
    let mut records: Vec<Option<Record>> = vec![None; plan.len()];
    let mut undo: Vec<Option<Undo>> = (0..plan.len()).map(|_| None).collect();
    for (t, is_end, i) in events {
        sleep_until_ms(t as f64);
        let p = &plan[i];
        if !is_end {
            let start_ms = now_ms();
            let (target, u, paused) = start(p, env);
            if matches!(u, Undo::Nothing) {
                eprintln!(
                    "zkr-soak: {:>8.3}s fault skipped {}: {target}",
                    start_ms / 1000.0,
                    p.kind.name()
                );
                continue;
            }
            eprintln!(
                "zkr-soak: {:>8.3}s fault start {} {target}",
                start_ms / 1000.0,
                p.kind.name()
            );
            records[i] = Some(Record {
                kind: p.kind,
                target,
                start_ms,
                end_ms: start_ms,
                paused,
            });
            undo[i] = Some(u);
        } else {
            if let Some(u) = undo[i].take() {
                end(u, env);
            }
            let end_ms = now_ms();
            if let Some(r) = records[i].as_mut() {
                r.end_ms = end_ms;
                eprintln!(
                    "zkr-soak: {:>8.3}s fault end   {} {}",
                    end_ms / 1000.0,
                    r.kind.name(),
                    r.target
                );
            }
        }
    }
    records.into_iter().flatten().collect()
}

fn report_err<E: std::fmt::Display>(what: &str, r: Result<(), E>) {
    if let Err(e) = r {
        eprintln!("zkr-soak: {what}: {e}");
    }
}

fn start(p: &Planned, env: &Env<'_>) -> (String, Undo, Option<String>) {
    let n = env.zk.len();
    let pick = p.pick as usize;
    match p.kind {
        Kind::MemberKill => {
            let m = pick % n;
            report_err("kill", env.zk.kill(m));
            (format!("member {m}"), Undo::Start(m), None)
        }
        Kind::MemberPause => {
            let m = pick % n;
            report_err("pause", env.zk.pause(m));
            (format!("member {m}"), Undo::Member(m), None)
        }
        Kind::IsolateLeader => {
            let (m, note) = match env.zk.leader_index() {
                Some(l) => (l, "leader"),
                None => (pick % n, "no leader found; member"),
            };
            report_err("isolate", env.zk.isolate(m));
            (format!("{note} {m}"), Undo::Net, None)
        }
        Kind::IsolateFollower => {
            let leader = env.zk.leader_index();
            let followers: Vec<usize> = (0..n).filter(|&i| Some(i) != leader).collect();
            let m = followers[pick % followers.len()];
            report_err("isolate", env.zk.isolate(m));
            (format!("follower {m}"), Undo::Net, None)
        }
        Kind::Partition => {
            // A minority of (n-1)/2 members from `pick` on (one of 3, two of 5), the rest the
            // majority.
            let minority: Vec<usize> = (0..((n - 1) / 2).max(1)).map(|k| (pick + k) % n).collect();
            let majority: Vec<usize> = (0..n).filter(|i| !minority.contains(i)).collect();
            report_err("partition", env.zk.partition(&[&minority, &majority]));
            (format!("{minority:?} | {majority:?}"), Undo::Net, None)
        }
        Kind::ClientCut | Kind::ClientBlackhole => {
            let h = env.cast.client(p.kind, p.pick);
            let proxy = &env.participants[h].proxy;
            if p.kind == Kind::ClientCut {
                proxy.cut();
            } else {
                proxy.blackhole();
            }
            (env.participants[h].name.clone(), Undo::Proxy(h), None)
        }
        Kind::SessionExpiry => {
            let h = env.cast.client(p.kind, p.pick);
            let who = &env.participants[h];
            let Some((id, passwd)) = who.events.as_deref().and_then(last_session) else {
                return (format!("{}: no session yet", who.name), Undo::Nothing, None);
            };
            who.proxy.cut();
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(zkr_testing::expire_session(
                        &env.zk.connect_string(),
                        zkr::SessionId(id),
                        &passwd,
                    ))
                    .map_err(|e| e.to_string())
                });
            report_err("expire", r);
            (
                format!("{} (session 0x{id:x})", who.name),
                Undo::Proxy(h),
                None,
            )
        }
        Kind::WorkerPause => {
            let n = env.cast.workers.len();
            let target = (0..n)
                .map(|k| env.cast.workers[(pick + k) % n])
                .find_map(|h| {
                    let pid = env.participants[h].pid()?;
                    Some((h, Pid::from_raw(pid as i32)?))
                });
            let Some((h, pid)) = target else {
                return ("no worker running".to_string(), Undo::Nothing, None);
            };
            let _ = kill_process(pid, Signal::STOP);
            let name = env.participants[h].name.clone();
            (
                format!("{name} (pid {})", pid.as_raw_nonzero()),
                Undo::Process(pid),
                Some(name),
            )
        }
        Kind::HolderPause => {
            // The holder whose `zkr lock` runs its command now (waiting up to 2 s for one).
            let Some((h, zkr, groups)) = running_hold(env, pick) else {
                return ("no hold running".to_string(), Undo::Nothing, None);
            };
            // The command first (its own process group), then zkr itself.
            for g in &groups {
                let _ = kill_process_group(*g, Signal::STOP);
            }
            let _ = kill_process(zkr, Signal::STOP);
            (
                format!(
                    "{} (zkr pid {}, command group {})",
                    env.participants[h].name,
                    zkr.as_raw_nonzero(),
                    groups
                        .iter()
                        .map(|g| g.as_raw_nonzero().to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Undo::Holder {
                    zkr: Some(zkr),
                    groups,
                },
                Some(env.participants[h].name.clone()),
            )
        }
    }
}

fn end(u: Undo, env: &Env<'_>) {
    match u {
        Undo::Member(m) => report_err("resume", env.zk.resume(m)),
        Undo::Start(m) => report_err("restart", env.zk.start_member(m)),
        Undo::Net => report_err("heal", env.zk.heal()),
        Undo::Proxy(h) => env.participants[h].proxy.heal(),
        Undo::Process(pid) => {
            let _ = kill_process(pid, Signal::CONT);
        }
        Undo::Holder { zkr, groups } => {
            // The command resumes first and may write with its stale token for a moment before
            // zkr wakes up, sees its lease is over and kills it: those writes must be rejected.
            for g in &groups {
                let _ = kill_process_group(*g, Signal::CONT);
            }
            thread::sleep(Duration::from_millis(200));
            if let Some(zkr) = zkr {
                let _ = kill_process(zkr, Signal::CONT);
            }
        }
        Undo::Nothing => {}
    }
}

/// A lock holder or election candidate whose `zkr` has a child (the command of a hold), from
/// `pick` on: (participant, zkr pid, the child process groups).
fn running_hold(env: &Env<'_>, pick: usize) -> Option<(usize, Pid, Vec<Pid>)> {
    let deadline = now_ms() + 2000.0;
    let holders: Vec<usize> = (0..env.participants.len())
        .filter(|&i| env.participants[i].group != Group::Worker)
        .collect();
    let n = holders.len();
    if n == 0 {
        return None;
    }
    loop {
        for h in (0..n).map(|k| holders[(pick + k) % n]) {
            let Some(pid) = env.participants[h].pid() else {
                continue;
            };
            // Only children that already lead their own process group (zkr's command).
            let groups: Vec<Pid> = children_of(pid)
                .into_iter()
                .filter(|&c| process_group_of(c) == Some(c))
                .filter_map(|c| Pid::from_raw(c as i32))
                .collect();
            if let (false, Some(zkr)) = (groups.is_empty(), Pid::from_raw(pid as i32)) {
                return Some((h, zkr, groups));
            }
        }
        if now_ms() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The latest `session` event of a worker: (session id, password).
fn last_session(events: &Path) -> Option<(i64, Vec<u8>)> {
    let text = fs::read_to_string(events).ok()?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["ev"] != "session" {
            return None;
        }
        let id = v["id"].as_i64()?;
        let hex = v["passwd"].as_str()?;
        let passwd = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some((id, passwd))
    })
}

/// The process group of `pid` (from /proc/PID/stat).
fn process_group_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Pids whose parent is `pid` (from /proc/*/stat).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may contain spaces, so parse after the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}
