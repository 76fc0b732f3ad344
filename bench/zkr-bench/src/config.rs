//! `w5` — W5-config-propagation: 1 publisher and 50 subscribers (each its own session) on one
//! config node (`zkr_recipes::Config`); 200 versions of a ~200-byte JSON value, one every 10 ms.
//!
//! Every value carries its sequence number. A subscriber records when it first sees each
//! sequence number (from its event stream); latency = that moment minus the start of the
//! `publish` call of that version ("set → subscriber"). Intermediate versions may coalesce, so
//! `avg/min_distinct_versions_seen` may be below 200; `missed_final` counts subscribers that did
//! not converge to the last version within 10 s (must be 0, else `ok` is false).
//! `final_seen_after_last_set_ms` is the time from the last `publish` returning until the last
//! subscriber saw it. `ops` = versions published; `ops_per_s` is null.

use futures::StreamExt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zkr_recipes::{Config, ConfigEvent};

use super::{ms, round, Bench, BenchError, Latencies, Report};

/// The `workload` field.
pub const W5: &str = "W5-config-propagation";

const SUBSCRIBERS: usize = 50;
const VERSIONS: usize = 200;
const INTERVAL: Duration = Duration::from_millis(10);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Value {
    seq: u64,
    service: String,
    endpoints: Vec<String>,
    payload: String,
}

fn value(seq: u64) -> Value {
    Value {
        seq,
        service: "orders".into(),
        endpoints: vec!["10.0.0.1:8080".into(), "10.0.0.2:8080".into()],
        payload: "x".repeat(100),
    }
}

/// Params of w5.
pub fn params(b: &Bench) -> serde_json::Map<String, serde_json::Value> {
    let mut p = b.base_params();
    p.insert("subscribers".into(), SUBSCRIBERS.into());
    p.insert("versions".into(), b.scaled(VERSIONS).into());
    p.insert("interval_ms".into(), (INTERVAL.as_millis() as u64).into());
    p.insert(
        "value_bytes".into(),
        serde_json::to_vec(&value(100))
            .map(|v| v.len())
            .unwrap_or(0)
            .into(),
    );
    p
}

fn err(e: zkr_recipes::Error) -> BenchError {
    BenchError(e.to_string())
}

/// What one subscriber saw: (seq, when) for each distinct version, and when it saw the last.
struct Seen {
    firsts: Vec<(u64, Instant)>,
    final_at: Option<Instant>,
}

/// W5.
pub async fn w5(b: &Bench) -> Result<Report, BenchError> {
    let publisher = b.client().await?;
    let subs_clients = b.clients(SUBSCRIBERS).await?;
    let root = b.setup_root(&publisher).await?;
    let path = format!("{root}/config");
    let result = run(b, &publisher, &subs_clients, &path).await;
    b.teardown_root(&publisher, &root).await;
    for c in subs_clients.iter().chain(std::iter::once(&publisher)) {
        c.close().await;
    }
    result
}

async fn run(
    b: &Bench,
    publisher: &zkr::Client,
    subs_clients: &[zkr::Client],
    path: &str,
) -> Result<Report, BenchError> {
    let n = b.scaled(VERSIONS) as u64;
    let cfg: Config<Value> = Config::new(publisher, path).map_err(err)?;
    cfg.publish(&value(0)).await.map_err(err)?;
    let last_seq = n;

    // Subscribe everyone and wait until each holds version 0.
    let mut subs = Vec::with_capacity(subs_clients.len());
    for c in subs_clients {
        let s = Config::<Value>::new(c, path)
            .map_err(err)?
            .subscribe()
            .map_err(err)?;
        subs.push(s);
    }
    for s in &subs {
        s.wait_for_timeout(|v| v.value.seq == 0, CONVERGE_TIMEOUT)
            .await
            .map_err(err)?;
    }
    // One reader task per subscriber, started before the first publish.
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut seen = Seen {
                    firsts: Vec::new(),
                    final_at: None,
                };
                let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT * 4;
                loop {
                    let ev = match tokio::time::timeout_at(deadline, s.next()).await {
                        Ok(Some(ev)) => ev,
                        _ => break,
                    };
                    if let ConfigEvent::Value(v) = ev {
                        let now = Instant::now();
                        if v.value.seq > seen.firsts.last().map(|f| f.0).unwrap_or(0) {
                            seen.firsts.push((v.value.seq, now));
                        }
                        if v.value.seq == last_seq {
                            seen.final_at = Some(now);
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect();

    let mut set_at = vec![Instant::now(); (n + 1) as usize];
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut last_set_done = Instant::now();
    for seq in 1..=n {
        tick.tick().await;
        set_at[seq as usize] = Instant::now();
        cfg.publish(&value(seq)).await.map_err(err)?;
        last_set_done = Instant::now();
    }
    let mut seen = Vec::with_capacity(readers.len());
    for (i, h) in readers.into_iter().enumerate() {
        seen.push(
            h.await
                .map_err(|e| BenchError(format!("subscriber {i} failed: {e}")))?,
        );
    }
    let elapsed = start.elapsed();

    let mut lat = Latencies::with_capacity(seen.len() * n as usize);
    let mut distinct = Vec::with_capacity(seen.len());
    let mut missed_final = 0usize;
    let mut final_after = Duration::ZERO;
    for s in &seen {
        distinct.push(s.firsts.len());
        for (seq, at) in &s.firsts {
            lat.push(at.saturating_duration_since(set_at[*seq as usize]));
        }
        match s.final_at {
            Some(at) => final_after = final_after.max(at.saturating_duration_since(last_set_done)),
            None => missed_final += 1,
        }
    }
    let avg = if distinct.is_empty() {
        0.0
    } else {
        distinct.iter().sum::<usize>() as f64 / distinct.len() as f64
    };
    let min = distinct.iter().copied().min().unwrap_or(0);
    let mut r = Report::new(W5, params(b), n, elapsed, &mut lat, missed_final == 0)
        .field("avg_distinct_versions_seen", round(avg, 1))
        .field("min_distinct_versions_seen", min)
        .field("missed_final", missed_final)
        .field("final_seen_after_last_set_ms", ms(final_after))
        .field("latency_of", "publish start -> subscriber sees the version");
    r.ops_per_s = None;
    Ok(r)
}
