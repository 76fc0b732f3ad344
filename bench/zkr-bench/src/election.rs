//! `w4` and `w4pause` — leader election failover (see `docs/benchmarking.md`).
//!
//! **W4-election-failover-close** (`w4`): 3 candidates (each its own session) on one election;
//! 10 rounds (× `--scale`): the leader's process shuts down gracefully — `LeaderLatch::close()`
//! (resign: delete our node) then `Client::close()` — and we time until another candidate is
//! *told* it leads (its state turns `Leader`). A fresh candidate joins each round. Reported:
//! `from_close_start_*` (from the close call starting; also `p50_ms`/`p99_ms`/`max_ms`),
//! `from_close_return_p50_ms` (negative when the next leader knew before close returned),
//! `close_call_p50_ms`, and `dual_leader_rounds` (rounds where, when the new leader was told,
//! the old one or another candidate still believed it led; must be 0).
//!
//! **W4b-election-failover-pause** (`w4pause`): sessions of 2,000 ms on a 3-member ensemble.
//! Each round a fresh leader is connected to one *follower* only and two candidates to the
//! other two members; that follower is frozen with SIGSTOP. We time until another candidate
//! leads (`p50_ms`...), until the old leader is told it lost (`old_leader_demoted_p50_ms`), and
//! how long both believed they led (`both_believe_leader_max_ms` = `overlap_max_ms`, must be 0).
//! Then the member is resumed (SIGCONT) and we wait until it serves again.
//!
//! The ensemble of `w4pause`: `--ens-dir DIR` names an ensemble started elsewhere — one
//! subdirectory per member, each with `zoo.cfg` (its `clientPort`, optionally
//! `clientPortAddress`) and a `pid` file (or `zookeeper_server.pid` in its `dataDir`) — whose
//! members are frozen by pid. Without it a throwaway 3-member ensemble is started (and killed
//! at the end). `--zk` is not used by `w4pause`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{Map, Value};
use zkr::Client;
use zkr_recipes::{Changes, LatchState, LeaderLatch};
use zkr_testing::ZkEnsemble;

use super::{ms, round, Bench, BenchError, Latencies, Report};

/// The `workload` field of `w4`.
pub const W4: &str = "W4-election-failover-close";
/// The `workload` field of `w4pause`.
pub const W4B: &str = "W4b-election-failover-pause";

const ROUNDS: usize = 10;
const PAUSE_ROUNDS: usize = 5;
const CANDIDATES: usize = 3;
const PAUSE_SESSION: Duration = Duration::from_millis(2000);
const WAIT: Duration = Duration::from_secs(15);
/// Create+delete pairs of the quorum-write probe.
const QUORUM_PROBES: usize = 50;

/// Params of `w4`.
pub fn w4_params(b: &Bench) -> Map<String, Value> {
    let mut p = b.base_params();
    p.insert("candidates".into(), CANDIDATES.into());
    p.insert("rounds".into(), b.scaled(ROUNDS).into());
    p.insert(
        "close".into(),
        "LeaderLatch::close() then Client::close()".into(),
    );
    p
}

/// Params of `w4pause`.
pub fn w4pause_params(b: &Bench) -> Map<String, Value> {
    let mut p = b.base_params();
    p.insert("candidates".into(), CANDIDATES.into());
    p.insert("rounds".into(), b.scaled(PAUSE_ROUNDS).into());
    p.insert(
        "session_ms".into(),
        (PAUSE_SESSION.as_millis() as u64).into(),
    );
    // The ensemble w4pause uses is its own throwaway one unless --ens-dir names one.
    p.insert("throwaway_server".into(), b.ens_dir.is_none().into());
    p.insert(
        "ens_dir".into(),
        b.ens_dir
            .as_ref()
            .map(|d| Value::from(d.display().to_string()))
            .unwrap_or(Value::Null),
    );
    p
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

struct Cand {
    client: Client,
    latch: Arc<LeaderLatch>,
}

async fn candidate(
    connect: &str,
    session: Duration,
    path: &str,
    id: &str,
) -> Result<Cand, BenchError> {
    let client = Client::builder(connect)
        .session_timeout(session)
        .connect()
        .await?;
    let latch = LeaderLatch::new(&client, path, id).map_err(err)?;
    latch.start().await.map_err(err)?;
    Ok(Cand {
        client,
        latch: Arc::new(latch),
    })
}

/// Waits until one of `changes` is `Leader`; returns its index and when it was seen.
async fn first_leader(changes: Vec<Changes<LatchState>>) -> Option<(usize, Instant)> {
    if changes.is_empty() {
        return None;
    }
    let futs = changes.into_iter().enumerate().map(|(i, mut ch)| {
        Box::pin(async move {
            while let Some(s) = ch.next().await {
                if s.is_leader() {
                    return Some((i, Instant::now()));
                }
            }
            std::future::pending().await
        })
    });
    futures::future::select_all(futs).await.0
}

async fn wait_leader_index(cands: &[Cand], within: Duration) -> Result<usize, BenchError> {
    let changes = cands.iter().map(|c| c.latch.changes()).collect();
    match tokio::time::timeout(within, first_leader(changes)).await {
        Ok(Some((i, _))) => Ok(i),
        _ => Err(BenchError(format!("no leader within {within:?}"))),
    }
}

/// Runs `w4`.
pub async fn run_w4(b: &Bench) -> Result<Report, BenchError> {
    let admin = b.client().await?;
    let root = b.setup_root(&admin).await?;
    let r = w4_measure(b, &format!("{root}/election")).await;
    b.teardown_root(&admin, &root).await;
    admin.close().await;
    r
}

/// One durable write on this server or ensemble, measured in the run itself: the p50 of
/// serial creates and deletes of a persistent node (each is one quorum write), made through
/// each member in turn (a write through a follower takes a hop more than one through the
/// leader, and the candidates are spread over all members). The floor of a failover by
/// resignation: the resigning leader's delete must commit before anyone can learn.
async fn quorum_write_p50(b: &Bench, root: &str) -> Result<Option<f64>, BenchError> {
    let servers = zkr::path::ConnectString::parse(&b.connect)?.servers;
    let mut writes = Latencies::with_capacity(2 * QUORUM_PROBES);
    let per_member = QUORUM_PROBES.div_ceil(servers.len().max(1));
    for (i, (host, port)) in servers.iter().enumerate() {
        let client = Client::builder(&format!("{host}:{port}"))
            .session_timeout(b.session)
            .connect()
            .await?;
        let node = format!("{root}/quorum-write-probe-{i}");
        for k in 0..per_member + 3 {
            let t = Instant::now();
            client
                .create(&node, b"", zkr::CreateMode::Persistent)
                .await?;
            let created = t.elapsed();
            let t = Instant::now();
            client.delete(&node, None).await?;
            // The first few warm the path up.
            if k >= 3 {
                writes.push(created);
                writes.push(t.elapsed());
            }
        }
        client.close().await;
    }
    Ok(writes.percentile_ms(50.0))
}

async fn w4_measure(b: &Bench, path: &str) -> Result<Report, BenchError> {
    let rounds = b.scaled(ROUNDS);
    let root = path.rsplit_once('/').map(|(r, _)| r).unwrap_or(path);
    let quorum_write = quorum_write_p50(b, root).await?;
    let mut cands = Vec::new();
    for i in 0..CANDIDATES {
        cands.push(candidate(&b.connect, b.session, path, &format!("c{i}")).await?);
    }
    let mut from_start = Latencies::with_capacity(rounds);
    let mut close_call = Latencies::with_capacity(rounds);
    let mut from_return = Vec::with_capacity(rounds);
    let mut dual = 0u64;
    let started = Instant::now();
    for next_id in CANDIDATES..CANDIDATES + rounds {
        let li = wait_leader_index(&cands, WAIT).await?;
        let leader = cands.remove(li);
        let changes: Vec<_> = cands.iter().map(|c| c.latch.changes()).collect();
        let all: Vec<_> = cands.iter().map(|c| c.latch.clone()).collect();
        let old = leader.latch.clone();
        let waiter = tokio::spawn(async move {
            let (i, at) = first_leader(changes).await?;
            // At the moment the new leader was told: does anyone else believe it leads?
            let others = all
                .iter()
                .enumerate()
                .filter(|(j, l)| *j != i && l.state().is_leader())
                .count();
            Some((at, others > 0 || old.state().is_leader()))
        });
        let t0 = Instant::now();
        leader.latch.close().await.map_err(err)?;
        leader.client.close().await;
        let t_ret = Instant::now();
        let (at, two) = match tokio::time::timeout(WAIT, waiter).await {
            Ok(Ok(Some(r))) => r,
            _ => return Err(BenchError("no candidate took over within 15 s".into())),
        };
        if two {
            dual += 1;
        }
        from_start.push(at.saturating_duration_since(t0));
        close_call.push(t_ret - t0);
        from_return.push(if at >= t_ret {
            ms(at - t_ret)
        } else {
            -ms(t_ret - at)
        });
        drop(leader);
        cands.push(candidate(&b.connect, b.session, path, &format!("c{next_id}")).await?);
    }
    let elapsed = started.elapsed();
    for c in &cands {
        let _ = c.latch.close().await;
        c.client.close().await;
    }
    from_return.sort_by(|a, b| a.total_cmp(b));
    let ret_p50 = super::nearest_rank(&from_return, 50.0);
    let p50 = from_start.percentile_ms(50.0);
    let max = from_start.max_ms();
    let close_p50 = close_call.percentile_ms(50.0);
    let mut r = Report::new(
        W4,
        w4_params(b),
        rounds as u64,
        elapsed,
        &mut from_start,
        dual == 0,
    );
    r.ops_per_s = None;
    Ok(r.field("from_close_start_p50_ms", p50)
        .field("quorum_write_p50_ms", quorum_write)
        .field(
            "over_quorum_write_ms",
            p50.zip(quorum_write).map(|(f, q)| round(f - q, 3)),
        )
        .field("from_close_start_max_ms", max)
        .field("from_close_return_p50_ms", ret_p50)
        .field("close_call_p50_ms", close_p50)
        .field("dual_leader_rounds", dual))
}

/// The members of the ensemble `w4pause` freezes.
enum Members {
    Own(Arc<ZkEnsemble>),
    Dir(Vec<(SocketAddr, u32)>),
}

impl Members {
    fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Members::Own(e) => e.addrs(),
            Members::Dir(m) => m.iter().map(|(a, _)| *a).collect(),
        }
    }

    fn mode(&self, i: usize) -> Option<String> {
        let addr = self.addrs().get(i).copied()?;
        let answer = four_letter(addr, "srvr").ok()?;
        answer
            .lines()
            .find_map(|l| l.strip_prefix("Mode: ").map(|m| m.trim().to_string()))
    }

    fn signal(&self, i: usize, stop: bool) -> Result<(), BenchError> {
        match self {
            Members::Own(e) => if stop { e.pause(i) } else { e.resume(i) }.map_err(err),
            Members::Dir(m) => {
                let pid = m
                    .get(i)
                    .map(|(_, p)| *p)
                    .ok_or_else(|| err("no such member"))?;
                let sig = if stop { Signal::STOP } else { Signal::CONT };
                let target = i32::try_from(pid)
                    .ok()
                    .and_then(Pid::from_raw)
                    .ok_or_else(|| err(format!("bad member pid {pid}")))?;
                kill_process(target, sig).map_err(|e| {
                    BenchError(format!(
                        "cannot signal member pid {pid}: {}",
                        std::io::Error::from(e)
                    ))
                })
            }
        }
    }

    /// Waits until every member serves and there is a quorum leader; returns its index.
    fn wait_healthy(&self, within: Duration) -> Result<usize, BenchError> {
        let deadline = Instant::now() + within;
        loop {
            let modes: Vec<Option<String>> =
                (0..self.addrs().len()).map(|i| self.mode(i)).collect();
            if modes.iter().all(|m| m.is_some()) {
                if let Some(l) = modes.iter().position(|m| m.as_deref() == Some("leader")) {
                    return Ok(l);
                }
            }
            if Instant::now() > deadline {
                return Err(BenchError(format!("ensemble not healthy: {modes:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn four_letter(addr: SocketAddr, word: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(word.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Reads `--ens-dir`: one subdirectory per member with `zoo.cfg` and a pid file.
fn members_from_dir(dir: &Path) -> Result<Members, BenchError> {
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| BenchError(format!("--ens-dir {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("zoo.cfg").is_file())
        .collect();
    subs.sort();
    let mut members = Vec::new();
    for sub in subs {
        let cfg = std::fs::read_to_string(sub.join("zoo.cfg")).map_err(err)?;
        let get = |k: &str| {
            cfg.lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix(k)
                        .and_then(|r| r.trim().strip_prefix('='))
                })
                .map(|v| v.trim().to_string())
        };
        let port =
            get("clientPort").ok_or_else(|| err(format!("{}: no clientPort", sub.display())))?;
        let host = get("clientPortAddress").unwrap_or_else(|| "127.0.0.1".into());
        let addr = format!("{host}:{port}")
            .to_socket_addrs()
            .map_err(err)?
            .next()
            .ok_or_else(|| err("bad member address"))?;
        let pid_file = [
            Some(sub.join("pid")),
            get("dataDir").map(|d| Path::new(&d).join("zookeeper_server.pid")),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| err(format!("{}: no pid file", sub.display())))?;
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(err)?
            .trim()
            .parse::<u32>()
            .map_err(|e| err(format!("{}: {e}", pid_file.display())))?;
        members.push((addr, pid));
    }
    if members.len() < 3 {
        return Err(BenchError(format!(
            "--ens-dir {}: need 3 members, found {}",
            dir.display(),
            members.len()
        )));
    }
    Ok(Members::Dir(members))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BenchError> {
    tokio::task::spawn_blocking(f).await.map_err(err)
}

/// Runs `w4pause`.
pub async fn run_w4pause(b: &Bench) -> Result<Report, BenchError> {
    let members = Arc::new(match &b.ens_dir {
        Some(d) => members_from_dir(d)?,
        None => {
            eprintln!("zkr-bench: w4pause: no --ens-dir; starting a throwaway 3-member ensemble");
            Members::Own(Arc::new(blocking(|| ZkEnsemble::start(3)).await??))
        }
    });
    let connect: String = members
        .addrs()
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let admin = Client::builder(&connect).connect().await?;
    let root = b.setup_root(&admin).await?;
    let r = w4pause_measure(b, &members, &root).await;
    b.teardown_root(&admin, &root).await;
    admin.close().await;
    r
}

async fn w4pause_measure(
    b: &Bench,
    members: &Arc<Members>,
    root: &str,
) -> Result<Report, BenchError> {
    let rounds = b.scaled(PAUSE_ROUNDS);
    let addrs = members.addrs();
    let mut failover = Latencies::with_capacity(rounds);
    let mut demoted = Latencies::with_capacity(rounds);
    let mut overlap_max = 0.0f64;
    let started = Instant::now();
    for round in 0..rounds {
        let m = members.clone();
        let ql = blocking(move || m.wait_healthy(Duration::from_secs(30))).await??;
        let followers: Vec<usize> = (0..addrs.len()).filter(|&i| i != ql).collect();
        let f = followers[round % followers.len()];
        let others: Vec<String> = (0..addrs.len())
            .filter(|&i| i != f)
            .map(|i| addrs[i].to_string())
            .collect();
        let path = format!("{root}/e{round}");
        let a = candidate(&addrs[f].to_string(), PAUSE_SESSION, &path, "a").await?;
        a.latch.wait_leader_timeout(WAIT).await.map_err(err)?;
        let mut rest = Vec::new();
        for (k, id) in ["b", "c"].iter().enumerate() {
            let mut o = others.clone();
            let n = o.len();
            o.rotate_left(k % n);
            rest.push(candidate(&o.join(","), PAUSE_SESSION, &path, id).await?);
        }
        let mut old = a.latch.changes();
        let changes: Vec<_> = rest.iter().map(|c| c.latch.changes()).collect();
        let m = members.clone();
        blocking(move || m.signal(f, true)).await??;
        let t0 = Instant::now();
        let demote = async {
            while let Some(s) = old.next().await {
                if !s.is_leader() {
                    break;
                }
            }
            Instant::now()
        };
        let (t_dem, new) =
            tokio::time::timeout(WAIT, futures::future::join(demote, first_leader(changes)))
                .await
                .map_err(|_| err("no failover within 15 s"))?;
        let m = members.clone();
        blocking(move || m.signal(f, false)).await??;
        let (_, t_new) = new.ok_or_else(|| err("no new leader"))?;
        failover.push(t_new - t0);
        demoted.push(t_dem.saturating_duration_since(t0));
        if t_dem > t_new {
            overlap_max = overlap_max.max(ms(t_dem - t_new));
        }
        for c in rest.iter().chain(std::iter::once(&a)) {
            let _ = tokio::time::timeout(Duration::from_secs(3), c.latch.close()).await;
        }
        for c in rest.iter().chain(std::iter::once(&a)) {
            c.client.close().await;
        }
    }
    let elapsed = started.elapsed();
    let dem_p50 = demoted.percentile_ms(50.0);
    let dem_max = demoted.max_ms();
    let mut r = Report::new(
        W4B,
        w4pause_params(b),
        rounds as u64,
        elapsed,
        &mut failover,
        overlap_max == 0.0,
    );
    r.ops_per_s = None;
    Ok(r.field("old_leader_demoted_p50_ms", dem_p50)
        .field("old_leader_demoted_max_ms", dem_max)
        .field("both_believe_leader_max_ms", round(overlap_max, 3))
        .field("overlap_max_ms", round(overlap_max, 3)))
}
