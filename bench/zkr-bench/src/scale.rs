//! `s-handoff`, `s-watches`, `s-configtree`, `s-discovery` — the scale workloads (see
//! `docs/benchmarking.md`, *Scale workloads*). Each runs one curve: the same measurement at
//! growing sizes (the steps, multiplied by `--scale`, duplicates dropped), and prints one JSON
//! line whose `series` array holds one object per step.
//!
//! * S1-lock-handoff: 1, 10, 100, 1,000 waiters queued on one `Mutex` path (spread over
//!   min(N, 20) sessions, each waiter its own `Mutex` and `acquire`), then the lock is handed
//!   down the whole queue, each acquirer releasing at once. Per step: hand-off latency (one
//!   holder's release starting → the next holder acquired), client RSS and the server's watch
//!   count while the queue is full.
//! * S2-watch-streams: 10 … 10,000 `Client::watch_data` streams on one session, all on the same
//!   node (one logical watch shared by every stream), then the same number on as many distinct
//!   nodes (one server watch each). Per step: memory per stream (RSS delta / N), the latency
//!   from one `set_data` to every stream having yielded it (same node) or to the one stream of
//!   the node written (distinct nodes), and the server's watch count.
//! * S3-config-tree: a `ConfigTree` of 10 … 10,000 keys: first-load time of a fresh
//!   subscription on its own session, RSS, and the latency of one change (writer's `set`
//!   starting → the subscriber's map holding it).
//! * S4-discovery: 10, 100, 1,000 instances registered with `Registration` over min(N, 10)
//!   sessions, one `Discovery` watcher: convergence after the mass registration (first
//!   `register` starting → the watcher sees all N) and after closing every registering session
//!   (close starting → the watcher sees 0).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Map, Value};
use zkr::{Client, CreateMode};
use zkr_recipes::{ConfigTree, Discovery, Mutex, ServiceInstance};

use super::registration::register;
use super::{fan_out, ms, round, Bench, BenchError, Latencies, Report};

/// Workload names.
pub const S_HANDOFF: &str = "S1-lock-handoff";
/// Workload names.
pub const S_WATCHES: &str = "S2-watch-streams";
/// Workload names.
pub const S_CONFIGTREE: &str = "S3-config-tree";
/// Workload names.
pub const S_DISCOVERY: &str = "S4-discovery";

const HANDOFF_STEPS: [usize; 4] = [1, 10, 100, 1_000];
const WATCH_STEPS: [usize; 4] = [10, 100, 1_000, 10_000];
const TREE_STEPS: [usize; 4] = [10, 100, 1_000, 10_000];
const DISCOVERY_STEPS: [usize; 3] = [10, 100, 1_000];

/// Sessions the lock waiters are spread over (the throwaway server allows 60 per address).
const HANDOFF_SESSIONS: usize = 20;
/// Registering sessions of `s-discovery`.
const DISCOVERY_SESSIONS: usize = 10;
/// Writes timed per step (the change latencies of `s-watches` and `s-configtree`).
const CHANGES: usize = 5;
/// Creates in flight while populating nodes (untimed).
const IN_FLIGHT: usize = 200;
const WAIT: Duration = Duration::from_secs(300);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
const SERVICE: &str = "bench-svc";

fn err(e: zkr_recipes::Error) -> BenchError {
    BenchError(e.to_string())
}

/// The steps of a curve: each multiplied by `--scale` (at least 1), duplicates dropped.
fn steps(b: &Bench, base: &[usize]) -> Vec<usize> {
    let mut out: Vec<usize> = base.iter().map(|&n| b.scaled(n)).collect();
    out.dedup();
    out
}

fn steps_param(b: &Bench, base: &[usize]) -> Value {
    steps(b, base).into_iter().map(Value::from).collect()
}

/// This process's resident set size in KiB (`VmRSS` of `/proc/self/status`).
pub fn rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kb: Option<u64>) -> Option<f64> {
    kb.map(|k| round(k as f64 / 1024.0, 1))
}

/// What the servers' `wchs` four-letter word reports, summed over every server of the connect
/// string: (total watches, watched paths). `None` if any server did not answer.
pub async fn server_watches(connect: &str) -> Option<(u64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hosts = connect.split('/').next().unwrap_or("");
    let (mut total, mut paths) = (0, 0);
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let text = tokio::time::timeout(Duration::from_secs(5), async {
            let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
            s.write_all(b"wchs").await.ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).await.ok()?;
            Some(out)
        })
        .await
        .ok()
        .flatten()?;
        // "N connections watching P paths\nTotal watches:W\n"
        let w = text
            .lines()
            .find_map(|l| l.strip_prefix("Total watches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())?;
        let p = text
            .lines()
            .find_map(|l| l.split(" watching ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        total += w;
        paths += p;
    }
    Some((total, paths))
}

/// Creates `nodes` (path, data) as persistent nodes, `IN_FLIGHT` at a time.
async fn create_many(client: &Client, nodes: Vec<(String, Vec<u8>)>) -> Result<(), BenchError> {
    let results: Vec<zkr::Result<String>> = futures::stream::iter(nodes)
        .map(|(p, d)| {
            let c = client.clone();
            async move { c.create(&p, &d, CreateMode::Persistent).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

/// The line of a curve: the common fields (ops = the items of every step, seconds = the whole
/// run, percentiles = those of `lat`), `ops_per_s` null, then `series`.
fn curve_report(
    workload: &'static str,
    params: Map<String, Value>,
    ops: usize,
    elapsed: Duration,
    lat: &mut Latencies,
    ok: bool,
    series: Vec<Value>,
) -> Report {
    let mut r = Report::new(workload, params, ops as u64, elapsed, lat, ok);
    r.ops_per_s = None;
    r.field("series", Value::Array(series))
}

// ------------------------------------------------------------------ s-handoff

/// Params of s-handoff.
pub fn handoff_params(b: &Bench) -> Map<String, Value> {
    let mut p = b.base_params();
    p.insert("steps".into(), steps_param(b, &HANDOFF_STEPS));
    p.insert("max_sessions".into(), HANDOFF_SESSIONS.into());
    p
}

/// S1: lock hand-off down queues of growing length.
pub async fn handoff(b: &Bench) -> Result<Report, BenchError> {
    let steps = steps(b, &HANDOFF_STEPS);
    let max = steps.iter().copied().max().unwrap_or(1);
    let pool = b.clients(HANDOFF_SESSIONS.min(max)).await?;
    let pool_ref = &pool;
    let steps_ref = &steps;
    let result = b
        .in_root(
            |admin, root| async move { handoff_steps(b, &admin, pool_ref, &root, steps_ref).await },
        )
        .await;
    for c in &pool {
        c.close().await;
    }
    result
}

async fn handoff_steps(
    b: &Bench,
    admin: &Client,
    pool: &[Client],
    root: &str,
    steps: &[usize],
) -> Result<Report, BenchError> {
    let start = Instant::now();
    let mut series = Vec::new();
    let mut last = Latencies::default();
    let mut ops = 0;
    let mut ok = true;
    for &n in steps {
        let (mut lat, step, step_ok) = handoff_step(b, admin, pool, root, n).await?;
        ok &= step_ok;
        ops += lat.len();
        series.push(json!({
            "waiters": n,
            "sessions": pool.len().min(n),
            "handoffs": lat.len(),
            "p50_ms": lat.percentile_ms(50.0),
            "p99_ms": lat.percentile_ms(99.0),
            "max_ms": lat.max_ms(),
        }));
        if let (Some(Value::Object(s)), Value::Object(extra)) = (series.last_mut(), step) {
            s.extend(extra);
        }
        last = lat;
    }
    let mut r = curve_report(
        S_HANDOFF,
        handoff_params(b),
        ops,
        start.elapsed(),
        &mut last,
        ok,
        series,
    );
    r = r.field(
        "latency_of",
        "hand-off: one holder's release starting -> the next holder acquired (top-level percentiles: the largest step)",
    );
    Ok(r)
}

/// One step: returns the hand-off latencies, the step's other figures, and its check.
async fn handoff_step(
    b: &Bench,
    admin: &Client,
    pool: &[Client],
    root: &str,
    n: usize,
) -> Result<(Latencies, Value, bool), BenchError> {
    let path = format!("{root}/lock-{n}");
    let holder_lock = Mutex::new(admin, &path).map_err(err)?;
    let holder = holder_lock.acquire_timeout(WAIT).await.map_err(err)?;
    let base_watches = server_watches(&b.connect).await;
    // (acquired at, release started at) of every waiter, in the order they held the lock.
    let log = Arc::new(std::sync::Mutex::new(
        Vec::<(Instant, Instant)>::with_capacity(n),
    ));
    let inside = Arc::new(AtomicUsize::new(0));
    let violations = Arc::new(AtomicUsize::new(0));
    let queue_start = Instant::now();
    let waiters: Vec<_> = (0..n)
        .map(|i| {
            let (c, path) = (pool[i % pool.len()].clone(), path.clone());
            let (log, inside, violations) = (log.clone(), inside.clone(), violations.clone());
            tokio::spawn(async move {
                let m = Mutex::new(&c, &path).map_err(err)?;
                let g = m.acquire_timeout(WAIT).await.map_err(err)?;
                let got = Instant::now();
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    violations.fetch_add(1, Ordering::SeqCst);
                }
                inside.fetch_sub(1, Ordering::SeqCst);
                let rel = Instant::now();
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((got, rel));
                g.release().await.map_err(err)
            })
        })
        .collect();
    // The queue is full once every waiter's node is listed and its watch is set on the server.
    let deadline = Instant::now() + WAIT;
    loop {
        let queued = holder_lock.participants().await.map_err(err)?.len();
        if queued > n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut watches = server_watches(&b.connect).await;
    if let Some((w0, _)) = base_watches {
        while watches.is_some_and(|(w, _)| w < w0 + n as u64) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            watches = server_watches(&b.connect).await;
        }
    }
    let queued_in = queue_start.elapsed();
    let rss = rss_kb();

    // Hand the lock down the queue.
    let t0 = Instant::now();
    holder.release().await.map_err(err)?;
    let mut failures = 0;
    let mut first_error = None;
    for w in waiters {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failures += 1;
                first_error.get_or_insert(e.0);
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let drained_in = t0.elapsed();
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
    let mut lat = Latencies::with_capacity(n);
    let mut prev = t0;
    for (got, rel) in log {
        lat.push(got.saturating_duration_since(prev));
        prev = rel;
    }
    let violations = violations.load(Ordering::SeqCst);
    let leftover = holder_lock.participants().await.map_err(err)?.len();
    let ok = failures == 0 && violations == 0 && leftover == 0 && lat.len() == n;
    let mut extra = json!({
        "queue_ms": ms(queued_in),
        "drain_ms": ms(drained_in),
        "rss_mb": mib(rss),
        "server_watches": watches.map(|w| w.0),
        "server_watched_paths": watches.map(|w| w.1),
        "server_watches_before": base_watches.map(|w| w.0),
        "violations": violations,
        "failures": failures,
    });
    if let (Some(e), Value::Object(m)) = (first_error, &mut extra) {
        m.insert("error".into(), e.into());
    }
    Ok((lat, extra, ok))
}

// ------------------------------------------------------------------ s-watches

/// Params of s-watches.
pub fn watches_params(b: &Bench) -> Map<String, Value> {
    let mut p = b.base_params();
    p.insert("steps".into(), steps_param(b, &WATCH_STEPS));
    p.insert("sessions".into(), 1.into());
    p.insert("writes_per_step".into(), CHANGES.into());
    p
}

/// S2: watch streams on one session.
pub async fn watches(b: &Bench) -> Result<Report, BenchError> {
    b.in_root(|client, root| async move { watches_steps(b, &client, &root).await })
        .await
}

/// Waits on `w` until it yields a state whose data is `want`.
async fn seen(w: &mut zkr::DataWatch, want: &[u8]) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match w.next_timeout(left).await? {
            Some(Ok(ev)) if ev.data() == Some(want) => return Ok(()),
            Some(_) => {}
            None => return Err(BenchError("a watch stream ended".into())),
        }
    }
}

async fn watches_steps(b: &Bench, client: &Client, root: &str) -> Result<Report, BenchError> {
    let start = Instant::now();
    let steps = steps(b, &WATCH_STEPS);
    let same = format!("{root}/same");
    client.create(&same, b"0", CreateMode::Persistent).await?;
    let dir = format!("{root}/nodes");
    client.create(&dir, b"", CreateMode::Persistent).await?;
    let node = |i: usize| format!("{dir}/n{i:05}");
    let mut created = 0;
    let mut series = Vec::new();
    let mut version = 0usize;
    let mut ops = 0;
    for &n in &steps {
        // --- n streams on the same node
        let base = server_watches(&b.connect).await;
        let rss0 = rss_kb();
        let t = Instant::now();
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            streams.push(client.watch_data(&same)?);
        }
        let cur = version.to_string();
        for w in &mut streams {
            seen(w, cur.as_bytes()).await?;
        }
        let opened_in = t.elapsed();
        let rss1 = rss_kb();
        let watches = server_watches(&b.connect).await;
        let mut lat = Latencies::with_capacity(CHANGES);
        for _ in 0..CHANGES {
            version += 1;
            let want = version.to_string();
            let t = Instant::now();
            let (set, all) = futures::join!(client.set_data(&same, want.as_bytes(), None), async {
                for w in &mut streams {
                    seen(w, want.as_bytes()).await?;
                }
                Ok::<_, BenchError>(Instant::now())
            });
            set?;
            lat.push(all?.saturating_duration_since(t));
        }
        ops += n + CHANGES;
        drop(streams);
        let same_step = json!({
            "open_ms": ms(opened_in),
            "rss_mb": mib(rss1),
            "bytes_per_stream": per_item(rss0, rss1, n),
            "write_to_all_p50_ms": lat.percentile_ms(50.0),
            "write_to_all_max_ms": lat.max_ms(),
            "server_watches": watches.map(|w| w.0),
            "server_watches_before": base.map(|w| w.0),
        });

        // --- n streams on n distinct nodes
        if created < n {
            create_many(
                client,
                (created..n).map(|i| (node(i), b"0".to_vec())).collect(),
            )
            .await?;
            created = n;
        }
        let base = server_watches(&b.connect).await;
        let rss0 = rss_kb();
        let t = Instant::now();
        let mut streams = Vec::with_capacity(n);
        for i in 0..n {
            streams.push(client.watch_data(&node(i))?);
        }
        for w in &mut streams {
            seen(w, b"0").await?;
        }
        let opened_in = t.elapsed();
        let rss1 = rss_kb();
        let watches = server_watches(&b.connect).await;
        let mut lat = Latencies::with_capacity(CHANGES);
        for j in 0..CHANGES {
            let i = (j * 7_919 + 1) % n;
            let want = format!("{}", j + 1);
            let path = node(i);
            let t = Instant::now();
            let w = &mut streams[i];
            let (set, got) = futures::join!(client.set_data(&path, want.as_bytes(), None), async {
                seen(w, want.as_bytes()).await?;
                Ok::<_, BenchError>(Instant::now())
            });
            set?;
            lat.push(got?.saturating_duration_since(t));
            // Back to "0", untimed, so the next step opens every stream on the same data.
            client.set_data(&path, b"0", None).await?;
            seen(w, b"0").await?;
        }
        ops += n + CHANGES;
        drop(streams);
        let mut step = json!({
            "streams": n,
            "same_node": same_step,
            "distinct_nodes": {
                "open_ms": ms(opened_in),
                "rss_mb": mib(rss1),
                "bytes_per_stream": per_item(rss0, rss1, n),
                "write_to_stream_p50_ms": lat.percentile_ms(50.0),
                "write_to_stream_max_ms": lat.max_ms(),
                "server_watches": watches.map(|w| w.0),
                "server_watches_before": base.map(|w| w.0),
            },
        });
        if let Value::Object(m) = &mut step {
            // Flat copies of the headline figures, for tables.
            m.insert("rss_mb".into(), mib(rss1).into());
            m.insert("bytes_per_stream".into(), per_item(rss0, rss1, n).into());
            m.insert(
                "write_to_all_p50_ms".into(),
                step_field(&same_step, "write_to_all_p50_ms"),
            );
        }
        series.push(step);
    }
    Ok(curve_report(
        S_WATCHES,
        watches_params(b),
        ops,
        start.elapsed(),
        &mut Latencies::default(),
        true,
        series,
    )
    .field(
        "latency_of",
        "write_to_all: set_data starting -> every stream on that node yielded it (one consumer reading the streams in turn); write_to_stream: the same for the one stream of the node written",
    ))
}

fn step_field(v: &Value, k: &str) -> Value {
    v.get(k).cloned().unwrap_or(Value::Null)
}

/// RSS growth per item in bytes (`None` when RSS is unknown; 0 when it did not grow).
fn per_item(before: Option<u64>, after: Option<u64>, n: usize) -> Option<u64> {
    match (before, after) {
        (Some(a), Some(b)) if n > 0 => Some(b.saturating_sub(a) * 1024 / n as u64),
        _ => None,
    }
}

// ------------------------------------------------------------------ s-configtree

/// Params of s-configtree.
pub fn configtree_params(b: &Bench) -> Map<String, Value> {
    let mut p = b.base_params();
    p.insert("steps".into(), steps_param(b, &TREE_STEPS));
    p.insert("changes_per_step".into(), CHANGES.into());
    p
}

/// S3: a config tree of growing size.
pub async fn configtree(b: &Bench) -> Result<Report, BenchError> {
    b.in_root(|writer, root| async move { configtree_steps(b, &writer, &root).await })
        .await
}

fn key(i: usize) -> String {
    format!("key-{i:05}")
}

fn key_value(i: usize, v: usize) -> Value {
    json!({"v": v, "name": key(i), "limit": 100 + i % 50, "enabled": i % 2 == 0})
}

async fn configtree_steps(b: &Bench, writer: &Client, root: &str) -> Result<Report, BenchError> {
    let start = Instant::now();
    let mut series = Vec::new();
    let mut ops = 0;
    for n in steps(b, &TREE_STEPS) {
        let dir = format!("{root}/tree-{n}");
        writer.create(&dir, b"", CreateMode::Persistent).await?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let data = serde_json::to_vec(&key_value(i, 0))
                .map_err(|e| BenchError(format!("cannot encode a value: {e}")))?;
            nodes.push((format!("{dir}/{}", key(i)), data));
        }
        create_many(writer, nodes).await?;
        let tree: ConfigTree<Value> = ConfigTree::new(writer, &dir).map_err(err)?;

        // A fresh session for the subscriber: its watches are this step's only.
        let reader = b.client().await?;
        let step = configtree_step(b, &tree, &reader, &dir, n).await;
        reader.close().await;
        let step = step?;
        ops += n;
        series.push(step);
        // Remove the step's tree (untimed) so the next step's server holds only its own.
        writer.delete_recursive(&dir).await?;
    }
    Ok(curve_report(
        S_CONFIGTREE,
        configtree_params(b),
        ops,
        start.elapsed(),
        &mut Latencies::default(),
        true,
        series,
    )
    .field(
        "latency_of",
        "first_load: subscribe() -> the map loaded with every key; change: the writer's set() starting -> the subscriber's map holding the new value",
    ))
}

async fn configtree_step(
    b: &Bench,
    writer_tree: &ConfigTree<Value>,
    reader: &Client,
    dir: &str,
    n: usize,
) -> Result<Value, BenchError> {
    let tree: ConfigTree<Value> = ConfigTree::new(reader, dir).map_err(err)?;
    let rss0 = rss_kb();
    let t = Instant::now();
    let sub = tree.subscribe().map_err(err)?;
    wait_map(&sub, |s| s.loaded).await?;
    let first_load = t.elapsed();
    let keys = sub.current().entries.len();
    let rss1 = rss_kb();
    let watches = server_watches(&b.connect).await;
    let mut lat = Latencies::with_capacity(CHANGES);
    for j in 0..CHANGES {
        let i = (j * 7_919 + 3) % n;
        let k = key(i);
        let v = key_value(i, j + 1);
        let t = Instant::now();
        let (set, seen) = futures::join!(writer_tree.set(&k, &v), async {
            wait_map(&sub, |s| s.entries.get(&k).is_some_and(|e| e.value == v)).await?;
            Ok::<_, BenchError>(Instant::now())
        });
        set.map_err(err)?;
        lat.push(seen?.saturating_duration_since(t));
    }
    drop(sub);
    Ok(json!({
        "keys": n,
        "first_load_ms": ms(first_load),
        "keys_loaded": keys,
        "rss_mb": mib(rss1),
        "bytes_per_key": per_item(rss0, rss1, n),
        "change_p50_ms": lat.percentile_ms(50.0),
        "change_max_ms": lat.max_ms(),
        "server_watches": watches.map(|w| w.0),
    }))
}

/// Waits until the subscriber's map satisfies `pred`.
async fn wait_map(
    sub: &zkr_recipes::TreeSubscription<Value>,
    pred: impl FnMut(&zkr_recipes::TreeSnapshot<Value>) -> bool,
) -> Result<(), BenchError> {
    match sub.wait_for_timeout(pred, CONVERGE_TIMEOUT).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_timeout() => Err(BenchError(format!(
            "config tree did not converge within {CONVERGE_TIMEOUT:?}"
        ))),
        Err(e) => Err(BenchError(format!(
            "the config tree subscription ended: {e}"
        ))),
    }
}

// ------------------------------------------------------------------ s-discovery

/// Params of s-discovery.
pub fn discovery_params(b: &Bench) -> Map<String, Value> {
    let mut p = b.base_params();
    p.insert("steps".into(), steps_param(b, &DISCOVERY_STEPS));
    p.insert("max_sessions".into(), DISCOVERY_SESSIONS.into());
    p
}

/// S4: mass registration and mass departure seen by one `Discovery`.
pub async fn discovery(b: &Bench) -> Result<Report, BenchError> {
    b.in_root(|watcher, root| async move { discovery_steps(b, &watcher, &root).await })
        .await
}

fn inst_id(i: usize) -> String {
    format!("inst-{i:05}")
}

async fn discovery_steps(b: &Bench, watcher: &Client, root: &str) -> Result<Report, BenchError> {
    let start = Instant::now();
    let mut series = Vec::new();
    let mut ops = 0;
    let mut ok = true;
    for n in steps(b, &DISCOVERY_STEPS) {
        let clients = b.clients(DISCOVERY_SESSIONS.min(n)).await?;
        let step = discovery_step(watcher, &clients, root, n).await;
        for c in &clients {
            c.close().await; // already closed by a completed step; harmless
        }
        let (step, step_ok) = step?;
        ok &= step_ok;
        ops += n;
        series.push(step);
    }
    Ok(curve_report(
        S_DISCOVERY,
        discovery_params(b),
        ops,
        start.elapsed(),
        &mut Latencies::default(),
        ok,
        series,
    )
    .field(
        "latency_of",
        "register_converge: the registrations starting -> the watcher sees all N; close_converge: closing every registering session starting -> the watcher sees 0",
    ))
}

async fn discovery_step(
    watcher: &Client,
    clients: &[Client],
    root: &str,
    n: usize,
) -> Result<(Value, bool), BenchError> {
    let base = format!("{root}/services-{n}");
    watcher
        .ensure_containers(&format!("{base}/{SERVICE}"))
        .await?;
    let mut disc = Discovery::new(watcher, &base, SERVICE).map_err(err)?;
    disc.start().map_err(err)?;
    disc.next_timeout(CONVERGE_TIMEOUT).await.map_err(err)?; // the (empty) initial set
    let all: BTreeSet<String> = (0..n).map(inst_id).collect();

    let start = Instant::now();
    let seen_all = {
        let d = Discovery::new(watcher, &base, SERVICE).map_err(err)?;
        d.start().map_err(err)?;
        tokio::spawn(async move {
            d.wait_for_timeout(
                |s| s.len() == all.len() && s.iter().all(|i| all.contains(&i.id)),
                CONVERGE_TIMEOUT,
            )
            .await
            .map(|_| Instant::now())
        })
    };
    let regs = fan_out(n, |i| {
        let c = clients[i % clients.len()].clone();
        let base = base.clone();
        async move {
            let inst = ServiceInstance::new(SERVICE, &inst_id(i))
                .with_address("10.0.0.1")
                .with_port(8000 + (i % 1000) as u16)
                .with_payload(json!({"zone": format!("z{}", i % 3), "weight": i % 10}));
            register(&c, &base, inst).await
        }
    })
    .await?;
    let registered_in = start.elapsed();
    let mut registrations = Vec::with_capacity(n);
    for r in regs {
        registrations.push(r.map_err(err)?);
    }
    let register_converge = match seen_all.await {
        Ok(Ok(at)) => Some(at.saturating_duration_since(start)),
        _ => None,
    };
    let main_ok = disc
        .wait_for_timeout(|s| s.len() == n, CONVERGE_TIMEOUT)
        .await
        .is_ok();
    let rss1 = rss_kb();

    // Every registering session closes at once; their ephemeral nodes go with them.
    let start = Instant::now();
    let closes = futures::future::join_all(clients.iter().map(|c| c.close()));
    let gone = disc.wait_for_timeout(|s| s.is_empty(), CONVERGE_TIMEOUT);
    let (_, gone) = futures::join!(closes, gone);
    let close_converge = gone.ok().map(|_| start.elapsed());
    drop(registrations);
    let ok = main_ok && register_converge.is_some() && close_converge.is_some();
    Ok((
        json!({
            "instances": n,
            "sessions": clients.len(),
            "register_ms": ms(registered_in),
            "register_converge_ms": register_converge.map(ms),
            "close_converge_ms": close_converge.map(ms),
            "rss_mb": mib(rss1),
        }),
        ok,
    ))
}
