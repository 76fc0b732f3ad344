//! `w8` — W8-progress: 20 workers (each its own session) each claim one task of a
//! `zkr_recipes::WorkQueue` — so each owns an ephemeral progress node — and report progress on
//! it 100 times; a coordinator (`zkr_recipes::Coordinator`, its own session) watches.
//!
//! `ops` = progress updates written; `ops_per_s` = updates/s over the update phase (all workers
//! concurrently; each worker keeps up to 8 reports in flight, pipelined in order on its
//! session, so its node ends with its last report); percentiles: latency of one update.
//! `coordinator_view_equals_truth`: the coordinator's view converged (within 10 s) to what was
//! written last (every task running, owned by its worker, at 100 % with the last message);
//! `converge_after_last_write_ms`: from the last update returning until then.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use zkr_recipes::{TaskState, WorkQueue};

use super::{fan_out, ms, Bench, BenchError, Latencies, Report};

/// The `workload` field.
pub const W8: &str = "W8-progress";

const WORKERS: usize = 20;
const UPDATES: usize = 100;
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Progress reports each worker keeps in flight (they are sent in order on its session).
const IN_FLIGHT: usize = 8;

/// Params of w8.
pub fn params(b: &Bench) -> serde_json::Map<String, serde_json::Value> {
    let mut p = b.base_params();
    p.insert("workers".into(), WORKERS.into());
    p.insert("updates_per_worker".into(), b.scaled(UPDATES).into());
    p.insert("in_flight_per_worker".into(), IN_FLIGHT.into());
    p
}

fn err(e: zkr_recipes::Error) -> BenchError {
    BenchError(e.to_string())
}

/// W8.
pub async fn w8(b: &Bench) -> Result<Report, BenchError> {
    let admin = b.client().await?;
    let clients = b.clients(WORKERS).await?;
    let root = b.setup_root(&admin).await?;
    let result = run(b, &admin, &clients, &root).await;
    b.teardown_root(&admin, &root).await;
    for c in clients.iter().chain(std::iter::once(&admin)) {
        c.close().await;
    }
    result
}

async fn run(
    b: &Bench,
    admin: &zkr::Client,
    clients: &[zkr::Client],
    root: &str,
) -> Result<Report, BenchError> {
    let updates = b.scaled(UPDATES);
    let queue_root = format!("{root}/queue");
    let q = WorkQueue::new(admin, &queue_root).map_err(err)?;
    for i in 0..clients.len() {
        q.put(&json!({ "job": i })).await.map_err(err)?;
    }
    let coord = q.coordinator().map_err(err)?;
    // Each worker claims one task (not timed).
    let mut tasks = Vec::with_capacity(clients.len());
    for (i, c) in clients.iter().enumerate() {
        let wq = WorkQueue::new(c, &queue_root).map_err(err)?;
        let mut w = wq.worker(&format!("w{i:02}")).map_err(err)?;
        let t = w.claim_timeout(CONVERGE_TIMEOUT).await.map_err(err)?;
        tasks.push(tokio::sync::Mutex::new(Some((t, w))));
    }
    let tasks = std::sync::Arc::new(tasks);
    coord
        .wait_for_timeout(
            |s| s.count(TaskState::Running) == clients.len(),
            CONVERGE_TIMEOUT,
        )
        .await
        .map_err(err)?;

    let start = Instant::now();
    let results = fan_out(clients.len(), |i| {
        let tasks = tasks.clone();
        async move {
            let slot = tasks[i].lock().await;
            let mut lat = Vec::with_capacity(updates);
            let mut failed = None;
            if let Some((t, _)) = slot.as_ref() {
                let mut reports = futures::stream::iter(1..=updates)
                    .map(|u| async move {
                        let pct = 100.0 * u as f64 / updates as f64;
                        let t0 = Instant::now();
                        t.progress(pct, &format!("step {u}"))
                            .await
                            .map(|()| t0.elapsed())
                    })
                    .buffered(IN_FLIGHT);
                while let Some(r) = reports.next().await {
                    match r {
                        Ok(d) => lat.push(d),
                        Err(e) => failed = Some(e.to_string()),
                    }
                }
            }
            (lat, failed, Instant::now())
        }
    })
    .await?;
    let elapsed = start.elapsed();
    let mut lat = Latencies::with_capacity(clients.len() * updates);
    let mut last_write = start;
    let mut errors = Vec::new();
    for (l, f, done) in results {
        for d in l {
            lat.push(d);
        }
        errors.extend(f);
        last_write = last_write.max(done);
    }
    let last_msg = format!("step {updates}");
    let truth = coord
        .wait_for_timeout(
            |s| {
                s.tasks.len() == clients.len()
                    && s.tasks.iter().all(|t| {
                        t.state == TaskState::Running
                            && t.percent == Some(100.0)
                            && t.message.as_deref() == Some(last_msg.as_str())
                    })
            },
            CONVERGE_TIMEOUT,
        )
        .await;
    let converge = truth.as_ref().ok().map(|_| last_write.elapsed());
    // Owners must be the workers that claimed them (one task each).
    let owners_ok = truth.as_ref().is_ok_and(|s| {
        let mut o: Vec<_> = s.tasks.iter().filter_map(|t| t.owner.clone()).collect();
        o.sort();
        o.dedup();
        o.len() == clients.len()
    });
    // Complete the tasks (not timed).
    for slot in tasks.iter() {
        if let Some((t, _w)) = slot.lock().await.take() {
            let _ = t.complete(json!("ok")).await;
        }
    }
    let equals = converge.is_some() && owners_ok;
    let n = (clients.len() * updates) as u64;
    let mut r = Report::new(
        W8,
        params(b),
        n,
        elapsed,
        &mut lat,
        equals && errors.is_empty(),
    )
    .field("coordinator_view_equals_truth", equals)
    .field("converge_after_last_write_ms", converge.map(ms))
    .field("latency_of", "one ClaimedTask::progress call");
    if !errors.is_empty() {
        r = r.field("errors", errors.len());
    }
    Ok(r)
}
