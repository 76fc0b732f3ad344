//! Plumbing shared by the `zkr-bench` workloads (see `docs/benchmarking.md`): the common flags, the
//! server to run against, clients, the per-run root path, latency percentiles, fan-out of N
//! clients, and the one JSON line each run prints.
//!
//! A workload is one module with `pub async fn run(b: &Bench) -> Result<Report, BenchError>`;
//! it creates its clients with [`Bench::client`] / [`Bench::clients`], works under
//! [`Bench::setup_root`] and removes it with [`Bench::teardown_root`], and builds its
//! [`Report`] (the common fields plus workload-specific ones via [`Report::field`]).
//!
//! The program itself is `src/main.rs` (binary `zkr-bench`).

#![warn(missing_docs)]

pub mod config;
pub mod election;
pub mod ids;
pub mod locks;
pub mod progress;
pub mod raw;
pub mod registration;
pub mod scale;
pub mod tree_cache;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};
use zkr::Client;
use zkr_testing::ZkEnsemble;

/// Flags every workload understands.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// ZooKeeper servers (HOST:PORT[,...]); without it a throwaway standalone server is started
    #[arg(long, global = true, value_name = "HOST:PORT[,...]")]
    pub zk: Option<String>,

    /// Multiplies every op count of the workload
    #[arg(long, global = true, default_value_t = 1.0, value_name = "F")]
    pub scale: f64,

    /// Session timeout of every client, in milliseconds
    #[arg(long, global = true, default_value_t = 10_000, value_name = "N")]
    pub session_ms: u64,

    /// An ensemble started elsewhere whose members a workload may freeze (w4pause): one
    /// subdirectory per member with zoo.cfg and a pid file
    #[arg(long, global = true, value_name = "DIR")]
    pub ens_dir: Option<std::path::PathBuf>,
}

/// Why a run failed (the run still prints its one JSON line, with `ok: false` and `error`).
#[derive(Debug, Clone)]
pub struct BenchError(pub String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

impl From<zkr::Error> for BenchError {
    fn from(e: zkr::Error) -> Self {
        BenchError(e.to_string())
    }
}

impl From<zkr_testing::HarnessError> for BenchError {
    fn from(e: zkr_testing::HarnessError) -> Self {
        BenchError(format!("cannot start a throwaway ZooKeeper: {e}"))
    }
}

/// `zkr-<crate version>`, the `peer` field.
pub fn peer() -> String {
    format!("zkr-{}", env!("CARGO_PKG_VERSION"))
}

/// One benchmark run: where the servers are, the common flags, and the throwaway server (if
/// one was started; it is killed when the `Bench` is dropped).
pub struct Bench {
    /// The subcommand name (`raw`, `w1`, ...), used in the root path.
    pub cmd: &'static str,
    /// Connect string of the servers.
    pub connect: String,
    /// Session timeout of every client.
    pub session: Duration,
    /// Op-count multiplier.
    pub scale: f64,
    /// `--ens-dir`, if given.
    pub ens_dir: Option<std::path::PathBuf>,
    server: Option<ZkEnsemble>,
}

impl Bench {
    /// Resolves the servers: `--zk`, or a throwaway standalone server (announced on stderr).
    /// Blocking (starting a server takes a few seconds); call it outside the async runtime.
    pub fn prepare(cmd: &'static str, args: &CommonArgs) -> Result<Bench, BenchError> {
        if !(args.scale.is_finite() && args.scale > 0.0) {
            return Err(BenchError(format!(
                "--scale must be a positive number, got {}",
                args.scale
            )));
        }
        let session = Duration::from_millis(args.session_ms);
        let (connect, server) = match &args.zk {
            Some(zk) => {
                zkr::path::ConnectString::parse(zk)?;
                (zk.clone(), None)
            }
            None => {
                eprintln!("zkr-bench: no --zk given; starting a throwaway standalone ZooKeeper");
                let server = ZkEnsemble::standalone()?;
                let connect = server.connect_string();
                eprintln!("zkr-bench: throwaway ZooKeeper serving at {connect}");
                (connect, Some(server))
            }
        };
        Ok(Bench {
            cmd,
            connect,
            session,
            scale: args.scale,
            ens_dir: args.ens_dir.clone(),
            server,
        })
    }

    /// Whether the run uses a throwaway server it started itself.
    pub fn throwaway_server(&self) -> bool {
        self.server.is_some()
    }

    /// `n` multiplied by `--scale`, at least 1.
    pub fn scaled(&self, n: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(1)
    }

    /// The `params` every workload reports, to which it adds its own.
    pub fn base_params(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("scale".into(), self.scale.into());
        m.insert(
            "session_ms".into(),
            (self.session.as_millis() as u64).into(),
        );
        m.insert("throwaway_server".into(), self.throwaway_server().into());
        m
    }

    /// A new client: its own ZooKeeper session.
    pub async fn client(&self) -> Result<Client, BenchError> {
        Ok(Client::builder(&self.connect)
            .session_timeout(self.session)
            .connect()
            .await?)
    }

    /// `n` clients, connected concurrently.
    pub async fn clients(&self, n: usize) -> Result<Vec<Client>, BenchError> {
        futures::future::try_join_all((0..n).map(|_| self.client())).await
    }

    /// Creates this run's fresh root `/zkr-bench/<cmd>-<unix-ms>` (the `/zkr-bench` parent is a
    /// container node, so the server removes it once no run uses it) and returns its path.
    pub async fn setup_root(&self, client: &Client) -> Result<String, BenchError> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let root = format!("/zkr-bench/{}-{ms}", self.cmd);
        client
            .create_with_parents(&root, b"", zkr::CreateMode::Persistent)
            .await?;
        tracing::info!(%root, "run root created");
        Ok(root)
    }

    /// Runs `f(client, root)` in a fresh run root on a client of its own, then removes the root
    /// and closes the client, whatever `f` returned.
    pub async fn in_root<T, F, Fut>(&self, f: F) -> Result<T, BenchError>
    where
        F: FnOnce(Client, String) -> Fut,
        Fut: Future<Output = Result<T, BenchError>>,
    {
        let client = self.client().await?;
        let result = match self.setup_root(&client).await {
            Ok(root) => {
                let r = f(client.clone(), root.clone()).await;
                self.teardown_root(&client, &root).await;
                r
            }
            Err(e) => Err(e),
        };
        client.close().await;
        result
    }

    /// Removes the run's root and everything under it; failures are logged, not fatal.
    pub async fn teardown_root(&self, client: &Client, root: &str) {
        match client.delete_recursive(root).await {
            Ok(()) => tracing::info!(%root, "run root removed"),
            Err(e) => tracing::warn!(%root, error = %e, "could not remove the run root"),
        }
    }
}

/// Runs `f(0..n)` as `n` concurrent tasks on the runtime, released together (after every task
/// has started), and returns their outputs in index order. A panicking task is an error.
pub async fn fan_out<T, F, Fut>(n: usize, f: F) -> Result<Vec<T>, BenchError>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let fut = f(i);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for (i, h) in handles.into_iter().enumerate() {
        out.push(
            h.await
                .map_err(|e| BenchError(format!("task {i} failed: {e}")))?,
        );
    }
    Ok(out)
}

/// Times `fut`.
pub async fn timed<T>(fut: impl Future<Output = T>) -> (Duration, T) {
    let t = Instant::now();
    let r = fut.await;
    (t.elapsed(), r)
}

/// Latency samples with nearest-rank percentiles.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
    sorted: bool,
}

impl Latencies {
    /// Room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Latencies {
            samples: Vec::with_capacity(n),
            sorted: true,
        }
    }

    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.samples.push(d);
        self.sorted = false;
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
    }

    /// Nearest-rank percentile `p` (0 < p <= 100): the smallest sample such that at least p %
    /// of the samples are <= it. `None` without samples.
    pub fn percentile(&mut self, p: f64) -> Option<Duration> {
        self.sort();
        nearest_rank(&self.samples, p)
    }

    /// Percentile in milliseconds, rounded to microseconds.
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        self.percentile(p).map(ms)
    }

    /// The largest sample in milliseconds.
    pub fn max_ms(&mut self) -> Option<f64> {
        self.percentile(100.0).map(ms)
    }
}

/// Nearest-rank percentile of ascending `sorted` samples.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// A duration in milliseconds, rounded to microseconds.
pub fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 3)
}

/// `x` rounded to `digits` decimals.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// `count / elapsed`, per second (rounded to 0.1).
pub fn per_s(count: usize, elapsed: Duration) -> Option<f64> {
    let s = elapsed.as_secs_f64();
    (s > 0.0).then(|| round(count as f64 / s, 1))
}

/// The one JSON line of a run: the common fields in a fixed order (the one every peer prints),
/// then the workload's own.
#[derive(Serialize, Debug, Clone)]
pub struct Report {
    /// `zkr-<version>`.
    pub peer: String,
    /// The workload's name, e.g. `W1-lock-uncontended`.
    pub workload: &'static str,
    /// The run's parameters.
    pub params: Map<String, Value>,
    /// Operations in the timed phase.
    pub ops: u64,
    /// Length of the timed phase.
    pub seconds: f64,
    /// `ops / seconds`, where throughput is what the workload measures.
    pub ops_per_s: Option<f64>,
    /// Latency percentiles, ms.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
    /// See `p50_ms`.
    pub max_ms: Option<f64>,
    /// The workload's own check passed.
    pub ok: bool,
    /// Workload-specific fields.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Report {
    /// A report for `workload`, with `ops` done in `elapsed` and the percentiles of `lat`.
    pub fn new(
        workload: &'static str,
        params: Map<String, Value>,
        ops: u64,
        elapsed: Duration,
        lat: &mut Latencies,
        ok: bool,
    ) -> Report {
        Report {
            peer: peer(),
            workload,
            params,
            ops,
            seconds: round(elapsed.as_secs_f64(), 3),
            ops_per_s: per_s(ops as usize, elapsed),
            p50_ms: lat.percentile_ms(50.0),
            p99_ms: lat.percentile_ms(99.0),
            max_ms: lat.max_ms(),
            ok,
            extra: Map::new(),
        }
    }

    /// The line of a run that could not complete: `ok: false` and `error`.
    pub fn failed(
        workload: &'static str,
        params: Map<String, Value>,
        error: &BenchError,
    ) -> Report {
        let mut r = Report {
            peer: peer(),
            workload,
            params,
            ops: 0,
            seconds: 0.0,
            ops_per_s: None,
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
            ok: false,
            extra: Map::new(),
        };
        r.extra.insert("error".into(), error.0.clone().into());
        r
    }

    /// Adds a workload-specific field.
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Report {
        self.extra.insert(name.to_string(), value.into());
        self
    }

    /// Prints the one JSON line on stdout.
    pub fn emit(&self) -> Result<(), BenchError> {
        use std::io::Write;
        let line = serde_json::to_string(self)
            .map_err(|e| BenchError(format!("cannot encode the report: {e}")))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|e| BenchError(format!("cannot write the report: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 50.0), Some(50));
        assert_eq!(nearest_rank(&v, 99.0), Some(99));
        assert_eq!(nearest_rank(&v, 100.0), Some(100));
        assert_eq!(nearest_rank(&v, 0.1), Some(1));
        assert_eq!(nearest_rank(&[7u32], 99.0), Some(7));
        assert_eq!(nearest_rank::<u32>(&[], 50.0), None);
        let v = [1u32, 2, 3, 4];
        assert_eq!(nearest_rank(&v, 50.0), Some(2));
        assert_eq!(nearest_rank(&v, 75.0), Some(3));
        assert_eq!(nearest_rank(&v, 76.0), Some(4));
    }

    #[test]
    fn report_field_order() {
        let mut lat = Latencies::default();
        lat.push(Duration::from_millis(2));
        let r = Report::new(
            "W0-raw-floor",
            Map::new(),
            1,
            Duration::from_secs(1),
            &mut lat,
            true,
        )
        .field("zz", 1);
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.starts_with(r#"{"peer":"zkr-"#), "{s}");
        assert!(s.contains(r#""workload":"W0-raw-floor","params":{},"ops":1,"seconds":1.0,"ops_per_s":1.0,"p50_ms":2.0,"p99_ms":2.0,"max_ms":2.0,"ok":true,"zz":1}"#), "{s}");
    }
}
