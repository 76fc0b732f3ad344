//! `raw` — W0-raw-floor: the same client's bare operations, the floor every recipe is compared
//! to. One client (one session):
//!
//! 1. 2,000 serial `getData` of a 64-byte node;
//! 2. 20,000 `getData` with 64 in flight;
//! 3. 5,000 create+delete pairs (persistent node, then delete at version 0) with 64 in flight.
//!
//! Every count is multiplied by `--scale`. A short untimed warm-up runs first.
//!
//! Reported: `serial_get_per_s`, `concurrent_get_per_s`, `create_delete_pairs_per_s`;
//! `ops` = every request sent in the timed phases (a pair counts 2), `seconds` the sum of the
//! three phases, `ops_per_s` = ops / seconds. `p50_ms`/`p99_ms`/`max_ms` are the latency of one
//! serial `getData` (a bare round trip, `latency_of`); the other phases' latencies are reported as
//! `concurrent_get_*_ms` (one getData among 64 in flight) and `pair_*_ms` (one create+delete).
//! `ok` is false if any request failed, a read returned the wrong data, or a created node was
//! left behind.

use std::time::{Duration, Instant};

use futures::StreamExt;
use zkr::{Client, CreateMode};

use super::{per_s, timed, Bench, BenchError, Latencies, Report};

/// The `workload` field.
pub const WORKLOAD: &str = "W0-raw-floor";

const SERIAL_GETS: usize = 2_000;
const CONCURRENT_GETS: usize = 20_000;
const PAIRS: usize = 5_000;
const IN_FLIGHT: usize = 64;
const DATA_BYTES: usize = 64;
const WARM_UP: usize = 500;

/// The params of this workload at the run's scale.
pub fn params(b: &Bench) -> serde_json::Map<String, serde_json::Value> {
    let mut p = b.base_params();
    p.insert("serial_gets".into(), b.scaled(SERIAL_GETS).into());
    p.insert("concurrent_gets".into(), b.scaled(CONCURRENT_GETS).into());
    p.insert("create_delete_pairs".into(), b.scaled(PAIRS).into());
    p.insert("in_flight".into(), IN_FLIGHT.into());
    p.insert("data_bytes".into(), DATA_BYTES.into());
    p
}

/// Runs the workload.
pub async fn run(b: &Bench) -> Result<Report, BenchError> {
    let client = b.client().await?;
    let root = b.setup_root(&client).await?;
    let result = measure(b, &client, &root).await;
    b.teardown_root(&client, &root).await;
    client.close().await;
    result
}

struct Phase {
    elapsed: Duration,
    lat: Latencies,
    errors: usize,
    first_error: Option<String>,
}

impl Phase {
    fn new(n: usize) -> Phase {
        Phase {
            elapsed: Duration::ZERO,
            lat: Latencies::with_capacity(n),
            errors: 0,
            first_error: None,
        }
    }

    fn record(&mut self, d: Duration, r: Result<(), String>) {
        match r {
            Ok(()) => self.lat.push(d),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

fn check_get(r: zkr::Result<(Vec<u8>, zkr::Stat)>, want: &[u8]) -> Result<(), String> {
    match r {
        Ok((d, _)) if d == want => Ok(()),
        Ok((d, _)) => Err(format!(
            "getData returned {} bytes, not the {} written",
            d.len(),
            want.len()
        )),
        Err(e) => Err(e.to_string()),
    }
}

async fn pair(client: &Client, path: String) -> Result<(), String> {
    let created = client
        .create(&path, b"", CreateMode::Persistent)
        .await
        .map_err(|e| e.to_string())?;
    if created != path {
        return Err(format!("create returned {created}, expected {path}"));
    }
    client
        .delete(&path, Some(0))
        .await
        .map_err(|e| e.to_string())
}

async fn measure(b: &Bench, client: &Client, root: &str) -> Result<Report, BenchError> {
    let (n_serial, n_conc, n_pairs) = (
        b.scaled(SERIAL_GETS),
        b.scaled(CONCURRENT_GETS),
        b.scaled(PAIRS),
    );
    let data = vec![b'x'; DATA_BYTES];
    let node = format!("{root}/node");
    let pairs_dir = format!("{root}/pairs");
    client.create(&node, &data, CreateMode::Persistent).await?;
    client
        .create(&pairs_dir, b"", CreateMode::Persistent)
        .await?;

    // Warm-up (untimed): connection, server JIT, allocator.
    let warm = futures::stream::iter(0..WARM_UP)
        .map(|_| client.get_data(&node))
        .buffer_unordered(IN_FLIGHT);
    let warm_errors = warm
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    if warm_errors > 0 {
        tracing::warn!(warm_errors, "errors during warm-up");
    }

    tracing::info!(n_serial, "phase 1: serial getData");
    let mut serial = Phase::new(n_serial);
    let t = Instant::now();
    for _ in 0..n_serial {
        let (d, r) = timed(client.get_data(&node)).await;
        serial.record(d, check_get(r, &data));
    }
    serial.elapsed = t.elapsed();

    tracing::info!(n_conc, in_flight = IN_FLIGHT, "phase 2: concurrent getData");
    let mut conc = Phase::new(n_conc);
    let t = Instant::now();
    let mut results = futures::stream::iter(0..n_conc)
        .map(|_| timed(client.get_data(&node)))
        .buffer_unordered(IN_FLIGHT);
    while let Some((d, r)) = results.next().await {
        conc.record(d, check_get(r, &data));
    }
    drop(results);
    conc.elapsed = t.elapsed();

    tracing::info!(
        n_pairs,
        in_flight = IN_FLIGHT,
        "phase 3: create+delete pairs"
    );
    let mut pairs = Phase::new(n_pairs);
    let t = Instant::now();
    let mut results = futures::stream::iter(0..n_pairs)
        .map(|i| timed(pair(client, format!("{pairs_dir}/p{i:08}"))))
        .buffer_unordered(IN_FLIGHT);
    while let Some((d, r)) = results.next().await {
        pairs.record(d, r);
    }
    drop(results);
    pairs.elapsed = t.elapsed();

    let leftover = match client.get_children(&pairs_dir).await {
        Ok(c) => c.len(),
        Err(e) => {
            tracing::warn!(error = %e, "could not list the pairs directory");
            usize::MAX
        }
    };

    let errors = serial.errors + conc.errors + pairs.errors;
    let first_error = serial
        .first_error
        .clone()
        .or(conc.first_error.clone())
        .or(pairs.first_error.clone());
    if let Some(e) = &first_error {
        tracing::warn!(errors, first_error = %e, "requests failed");
    }
    let ok = errors == 0 && leftover == 0;
    let ops = (n_serial + n_conc + 2 * n_pairs) as u64;
    let elapsed = serial.elapsed + conc.elapsed + pairs.elapsed;
    let mut report = Report::new(WORKLOAD, params(b), ops, elapsed, &mut serial.lat, ok)
        .field("latency_of", "serial_get")
        .field("serial_get_per_s", per_s(n_serial, serial.elapsed))
        .field("concurrent_get_per_s", per_s(n_conc, conc.elapsed))
        .field("create_delete_pairs_per_s", per_s(n_pairs, pairs.elapsed))
        .field("concurrent_get_p50_ms", conc.lat.percentile_ms(50.0))
        .field("concurrent_get_p99_ms", conc.lat.percentile_ms(99.0))
        .field("pair_p50_ms", pairs.lat.percentile_ms(50.0))
        .field("pair_p99_ms", pairs.lat.percentile_ms(99.0))
        .field("errors", errors)
        .field(
            "leftover_nodes",
            if leftover == usize::MAX {
                None
            } else {
                Some(leftover)
            },
        );
    if let Some(e) = first_error {
        report = report.field("first_error", e);
    }
    Ok(report)
}
