//! `w1`, `w2`, `w3` — the lock workloads (see `docs/benchmarking.md`).
//!
//! * W1-lock-uncontended: 1 client; 100 warm-up then 2,000 timed acquire+release of one
//!   exclusive lock. `p50_ms`/`p99_ms`: one cycle.
//! * W2-lock-contended: 8 clients × 250 acquire+release on one lock, released together. In the
//!   critical section an "inside" counter must be 1 and a non-atomic read–yield–write of a
//!   shared counter must not lose updates. `p50_ms`/`p99_ms`: acquire wait.
//! * W3-rwlock: 8 clients × 250 ops, op j of client i is a write iff (37j+11i) % 5 == 0, else a
//!   read. `p50_ms`/`p99_ms`: acquire wait; `max_concurrent_readers`.
//! * W1-floor (`w1floor`, zkr only, no peer runs it): W1's shape with no lock logic at all —
//!   each cycle is only the two durable writes every Curator-compatible lock cycle must make:
//!   create the ephemeral-sequential lock node, then delete it. No ordering read, no watch, no
//!   recipe code.
//!   Its ops/s bounds what any W1 implementation (zkr's, Curator's) can reach on that server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zkr::CreateMode;
use zkr_recipes::{Mutex, RwLock};

use super::{fan_out, Bench, BenchError, Latencies, Report};

/// Workload names.
pub const W1: &str = "W1-lock-uncontended";
/// Workload names.
pub const W2: &str = "W2-lock-contended";
/// Workload names.
pub const W3: &str = "W3-rwlock";
/// Workload names.
pub const W1_FLOOR: &str = "W1-floor";

const W1_CYCLES: usize = 2_000;
const W1_WARM: usize = 100;
const CLIENTS: usize = 8;
const PER_CLIENT: usize = 250;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);

/// Params of w1.
pub fn w1_params(b: &Bench) -> serde_json::Map<String, serde_json::Value> {
    let mut p = b.base_params();
    p.insert("cycles".into(), b.scaled(W1_CYCLES).into());
    p.insert("warm_up".into(), W1_WARM.into());
    p
}

/// Params of w2 and w3.
pub fn contended_params(b: &Bench) -> serde_json::Map<String, serde_json::Value> {
    let mut p = b.base_params();
    p.insert("clients".into(), CLIENTS.into());
    p.insert("ops_per_client".into(), b.scaled(PER_CLIENT).into());
    p
}

/// W1: uncontended acquire+release.
pub async fn w1(b: &Bench) -> Result<Report, BenchError> {
    let client = b.client().await?;
    let root = b.setup_root(&client).await?;
    let lock = Mutex::new(&client, &format!("{root}/lock")).map_err(err)?;
    let result = serial_cycles(
        b,
        W1,
        || async { lock.acquire().await?.release().await },
        async { Ok(lock.participants().await.map_err(err)?.len()) },
    )
    .await;
    b.teardown_root(&client, &root).await;
    client.close().await;
    result
}

/// W1-floor: W1's cycles as bare create(ephemeral-sequential) + delete, nothing else.
pub async fn w1floor(b: &Bench) -> Result<Report, BenchError> {
    let client = b.client().await?;
    let root = b.setup_root(&client).await?;
    let dir = format!("{root}/lock");
    // The same node name shape and data size as a Curator lock node.
    let prefix = format!("{dir}/_c_{}-lock-", uuid::Uuid::new_v4());
    let result = match client.create(&dir, b"", CreateMode::Persistent).await {
        Ok(_) => {
            serial_cycles(
                b,
                W1_FLOOR,
                || async {
                    let node = client
                        .create(&prefix, b"127.0.0.1", CreateMode::EphemeralSequential)
                        .await?;
                    client.delete(&node, None).await
                },
                async { Ok(client.get_children(&dir).await?.len()) },
            )
            .await
        }
        Err(e) => Err(e.into()),
    };
    b.teardown_root(&client, &root).await;
    client.close().await;
    result
}

/// W1's shape: `W1_WARM` untimed cycles, then the scaled `W1_CYCLES` one after the other;
/// `p50_ms`/`p99_ms` are one cycle. `ok` requires `leftover` (the lock nodes still there
/// afterwards) to be 0.
async fn serial_cycles<F, Fut, E>(
    b: &Bench,
    workload: &'static str,
    mut cycle: F,
    leftover: impl std::future::Future<Output = Result<usize, BenchError>>,
) -> Result<Report, BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let fail = |e: E| BenchError(e.to_string());
    for _ in 0..W1_WARM {
        cycle().await.map_err(fail)?;
    }
    let n = b.scaled(W1_CYCLES);
    let mut lat = Latencies::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        cycle().await.map_err(fail)?;
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let leftover = leftover.await?;
    Ok(Report::new(
        workload,
        w1_params(b),
        n as u64,
        elapsed,
        &mut lat,
        leftover == 0,
    )
    .field("leftover_nodes", leftover))
}

fn err(e: zkr_recipes::Error) -> BenchError {
    BenchError(e.to_string())
}

struct Outcome {
    waits: Vec<Duration>,
    violations: usize,
    timeouts: usize,
}

/// Cleans up after a contended run and merges the clients' outcomes: (acquire waits,
/// violations, acquire timeouts).
async fn finish(
    b: &Bench,
    clients: &[zkr::Client],
    root: &str,
    outs: Result<Vec<Result<Outcome, BenchError>>, BenchError>,
) -> Result<(Latencies, usize, usize), BenchError> {
    b.teardown_root(&clients[0], root).await;
    for c in clients {
        c.close().await;
    }
    let outs: Vec<Outcome> = outs?.into_iter().collect::<Result<_, _>>()?;
    let mut lat = Latencies::with_capacity(outs.iter().map(|o| o.waits.len()).sum());
    let (mut violations, mut timeouts) = (0, 0);
    for o in outs {
        o.waits.into_iter().for_each(|w| lat.push(w));
        violations += o.violations;
        timeouts += o.timeouts;
    }
    Ok((lat, violations, timeouts))
}

/// W2: 8 clients contending for one mutex.
pub async fn w2(b: &Bench) -> Result<Report, BenchError> {
    let clients = b.clients(CLIENTS).await?;
    let root = b.setup_root(&clients[0]).await?;
    let path = format!("{root}/lock");
    let per = b.scaled(PER_CLIENT);
    let inside = Arc::new(AtomicUsize::new(0));
    let counter = Arc::new(std::sync::Mutex::new(0usize));
    let start = Instant::now();
    let outs = fan_out(CLIENTS, |i| {
        let (c, path, inside, counter) = (
            clients[i].clone(),
            path.clone(),
            inside.clone(),
            counter.clone(),
        );
        async move {
            let lock = Mutex::new(&c, &path).map_err(err)?;
            let mut o = Outcome {
                waits: Vec::with_capacity(per),
                violations: 0,
                timeouts: 0,
            };
            for _ in 0..per {
                let t = Instant::now();
                let g = match lock.acquire_timeout(ACQUIRE_TIMEOUT).await {
                    Ok(g) => g,
                    Err(zkr_recipes::Error::Timeout { .. }) => {
                        o.timeouts += 1;
                        continue;
                    }
                    Err(e) => return Err(err(e)),
                };
                o.waits.push(t.elapsed());
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    o.violations += 1;
                }
                let v = *counter.lock().unwrap_or_else(|e| e.into_inner());
                tokio::task::yield_now().await;
                *counter.lock().unwrap_or_else(|e| e.into_inner()) = v + 1;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.map_err(err)?;
            }
            Ok::<_, BenchError>(o)
        }
    })
    .await;
    let elapsed = start.elapsed();
    let (mut lat, violations, timeouts) = finish(b, &clients, &root, outs).await?;
    let done = lat.len();
    let final_count = *counter.lock().unwrap_or_else(|e| e.into_inner());
    let lost = done.saturating_sub(final_count);
    let ok = violations == 0 && lost == 0 && timeouts == 0;
    Ok(
        Report::new(W2, contended_params(b), done as u64, elapsed, &mut lat, ok)
            .field("violations", violations)
            .field("lost_updates", lost)
            .field("acquire_timeouts", timeouts)
            .field("latency_of", "acquire_wait"),
    )
}

/// W3: 8 clients on one read/write lock, 20 % writes.
pub async fn w3(b: &Bench) -> Result<Report, BenchError> {
    let clients = b.clients(CLIENTS).await?;
    let root = b.setup_root(&clients[0]).await?;
    let path = format!("{root}/rwlock");
    let per = b.scaled(PER_CLIENT);
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let max_readers = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let outs = fan_out(CLIENTS, |i| {
        let (c, path) = (clients[i].clone(), path.clone());
        let (readers, writers, max_readers) =
            (readers.clone(), writers.clone(), max_readers.clone());
        async move {
            let lock = RwLock::new(&c, &path).map_err(err)?;
            let mut o = Outcome {
                waits: Vec::with_capacity(per),
                violations: 0,
                timeouts: 0,
            };
            for j in 0..per {
                let write = (37 * j + 11 * i) % 5 == 0;
                let t = Instant::now();
                let r = if write {
                    lock.write_timeout(ACQUIRE_TIMEOUT).await
                } else {
                    lock.read_timeout(ACQUIRE_TIMEOUT).await
                };
                let g = match r {
                    Ok(g) => g,
                    Err(zkr_recipes::Error::Timeout { .. }) => {
                        o.timeouts += 1;
                        continue;
                    }
                    Err(e) => return Err(err(e)),
                };
                o.waits.push(t.elapsed());
                if write {
                    if writers.fetch_add(1, Ordering::SeqCst) != 0
                        || readers.load(Ordering::SeqCst) != 0
                    {
                        o.violations += 1;
                    }
                    tokio::task::yield_now().await;
                    writers.fetch_sub(1, Ordering::SeqCst);
                } else {
                    let now = readers.fetch_add(1, Ordering::SeqCst) + 1;
                    max_readers.fetch_max(now, Ordering::SeqCst);
                    if writers.load(Ordering::SeqCst) != 0 {
                        o.violations += 1;
                    }
                    tokio::task::yield_now().await;
                    readers.fetch_sub(1, Ordering::SeqCst);
                }
                g.release().await.map_err(err)?;
            }
            Ok::<_, BenchError>(o)
        }
    })
    .await;
    let elapsed = start.elapsed();
    let (mut lat, violations, timeouts) = finish(b, &clients, &root, outs).await?;
    let done = lat.len();
    let ok = violations == 0 && timeouts == 0;
    Ok(
        Report::new(W3, contended_params(b), done as u64, elapsed, &mut lat, ok)
            .field("violations", violations)
            .field("max_concurrent_readers", max_readers.load(Ordering::SeqCst))
            .field("acquire_timeouts", timeouts)
            .field("latency_of", "acquire_wait"),
    )
}
