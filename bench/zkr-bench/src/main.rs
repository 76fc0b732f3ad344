//! `zkr-bench`: the benchmark program (see `docs/benchmarking.md`). Each subcommand runs one
//! workload and prints exactly one JSON line on stdout; logs go to stderr (`RUST_LOG`, default
//! `warn`).
//!
//! Exit code 0 if the run completed and its own check passed (`ok: true`), 1 otherwise (the
//! JSON line is printed either way once the workload started), 2 for bad usage.
//!
//! Its own package (`bench/zkr-bench`, not published) because it starts a throwaway local
//! ZooKeeper through `zkr_testing`: the `zkr` CLI (package `zkr-cli`) is built without that
//! harness. Logging setup and the panic hook come from `zkr-cli`'s library.

#![warn(missing_docs)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use zkr_bench::{self as bench, Bench, BenchError, CommonArgs, Report};

/// Benchmarks zkr against a real ZooKeeper; one JSON line per run on stdout.
#[derive(Parser, Debug)]
#[command(name = "zkr-bench", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum Workload {
    /// W0-raw-floor: serial getData, 64-in-flight getData, 64-in-flight create+delete pairs
    Raw,
    /// W1-lock-uncontended: 2,000 acquire+release of one exclusive lock by one client
    W1,
    /// W1-floor: W1 as bare create+delete of the lock node (no lock logic): W1's ceiling
    W1floor,
    /// W2-lock-contended: 8 clients × 250 acquire+release on one lock
    W2,
    /// W3-rwlock: 8 clients × 250 read/write lock ops, 20 % writes
    W3,
    /// W4-election-failover-close: 3 candidates, 10 rounds: the leader closes, time to the next
    W4,
    /// W4b-election-failover-pause: a leader's ZooKeeper member is frozen (SIGSTOP); 2 s sessions
    W4pause,
    /// W5-config-propagation: 1 publisher, 50 subscribers, 200 versions every 10 ms
    W5,
    /// W6a-ids-sequential: 4 clients, 5,000 IDs from sequential nodes
    W6seq,
    /// W6b-ids-counter: 4 clients, 2,000 atomic-counter increments (plus ID-blocks figures)
    W6counter,
    /// W6c-ids-blocks: 4 clients, 100,000 IDs from blocks of 1,000
    W6blocks,
    /// W7-registration: 10 sessions register 500 instances; a watcher sees them; 5 sessions close
    W7,
    /// W8-progress: 20 workers update their ephemeral progress nodes 100 times; a coordinator watches
    W8,
    /// S1-lock-handoff: 1, 10, 100, 1,000 waiters on one Mutex; hand-off latency, RSS, server watches
    #[command(name = "s-handoff")]
    SHandoff,
    /// S2-watch-streams: 10 .. 10,000 data-watch streams on one session; memory per stream, write-to-all latency
    #[command(name = "s-watches")]
    SWatches,
    /// S3-config-tree: a ConfigTree of 10 .. 10,000 keys; first load, RSS, latency of one change
    #[command(name = "s-configtree")]
    SConfigtree,
    /// S4-discovery: 10, 100, 1,000 instances; convergence after mass registration and mass close
    #[command(name = "s-discovery")]
    SDiscovery,
    /// W9-tree-cache: a tree cache of 10,000 nodes: first load, then 200 changes' latency
    W9,
}

impl Workload {
    fn cmd(self) -> &'static str {
        match self {
            Workload::Raw => "raw",
            Workload::W1 => "w1",
            Workload::W1floor => "w1floor",
            Workload::W2 => "w2",
            Workload::W3 => "w3",
            Workload::W4 => "w4",
            Workload::W4pause => "w4pause",
            Workload::W5 => "w5",
            Workload::W6seq => "w6seq",
            Workload::W6counter => "w6counter",
            Workload::W6blocks => "w6blocks",
            Workload::W7 => "w7",
            Workload::W8 => "w8",
            Workload::SHandoff => "s-handoff",
            Workload::SWatches => "s-watches",
            Workload::SConfigtree => "s-configtree",
            Workload::SDiscovery => "s-discovery",
            Workload::W9 => "w9",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Raw => bench::raw::WORKLOAD,
            Workload::W1 => bench::locks::W1,
            Workload::W1floor => bench::locks::W1_FLOOR,
            Workload::W2 => bench::locks::W2,
            Workload::W3 => bench::locks::W3,
            Workload::W4 => bench::election::W4,
            Workload::W4pause => bench::election::W4B,
            Workload::W5 => bench::config::W5,
            Workload::W6seq => bench::ids::W6A,
            Workload::W6counter => bench::ids::W6B,
            Workload::W6blocks => bench::ids::W6C,
            Workload::W7 => bench::registration::W7,
            Workload::W8 => bench::progress::W8,
            Workload::SHandoff => bench::scale::S_HANDOFF,
            Workload::SWatches => bench::scale::S_WATCHES,
            Workload::SConfigtree => bench::scale::S_CONFIGTREE,
            Workload::SDiscovery => bench::scale::S_DISCOVERY,
            Workload::W9 => bench::tree_cache::W9,
        }
    }

    fn params(self, b: &Bench) -> serde_json::Map<String, serde_json::Value> {
        match self {
            Workload::Raw => bench::raw::params(b),
            Workload::W1 | Workload::W1floor => bench::locks::w1_params(b),
            Workload::W2 | Workload::W3 => bench::locks::contended_params(b),
            Workload::W4 => bench::election::w4_params(b),
            Workload::W4pause => bench::election::w4pause_params(b),
            Workload::W5 => bench::config::params(b),
            Workload::W6seq => bench::ids::seq_params(b),
            Workload::W6counter => bench::ids::counter_params(b),
            Workload::W6blocks => bench::ids::blocks_params(b),
            Workload::W7 => bench::registration::params(b),
            Workload::W8 => bench::progress::params(b),
            Workload::SHandoff => bench::scale::handoff_params(b),
            Workload::SWatches => bench::scale::watches_params(b),
            Workload::SConfigtree => bench::scale::configtree_params(b),
            Workload::SDiscovery => bench::scale::discovery_params(b),
            Workload::W9 => bench::tree_cache::params(b),
        }
    }

    async fn run(self, b: &Bench) -> Result<Report, BenchError> {
        match self {
            Workload::Raw => bench::raw::run(b).await,
            Workload::W1 => bench::locks::w1(b).await,
            Workload::W1floor => bench::locks::w1floor(b).await,
            Workload::W2 => bench::locks::w2(b).await,
            Workload::W3 => bench::locks::w3(b).await,
            Workload::W4 => bench::election::run_w4(b).await,
            Workload::W4pause => bench::election::run_w4pause(b).await,
            Workload::W5 => bench::config::w5(b).await,
            Workload::W6seq => bench::ids::w6seq(b).await,
            Workload::W6counter => bench::ids::w6counter(b).await,
            Workload::W6blocks => bench::ids::w6blocks(b).await,
            Workload::W7 => bench::registration::w7(b).await,
            Workload::W8 => bench::progress::w8(b).await,
            Workload::SHandoff => bench::scale::handoff(b).await,
            Workload::SWatches => bench::scale::watches(b).await,
            Workload::SConfigtree => bench::scale::configtree(b).await,
            Workload::SDiscovery => bench::scale::discovery(b).await,
            Workload::W9 => bench::tree_cache::w9(b).await,
        }
    }
}

fn main() -> ExitCode {
    zkr_cli::install_panic_hook("zkr-bench");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    zkr_cli::init_logging();
    let workload = cli.workload;

    // The throwaway server (if any) lives in `b` and is killed when `b` is dropped below.
    let b = match Bench::prepare(workload.cmd(), &cli.common) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("zkr-bench: {e}");
            let mut params = serde_json::Map::new();
            params.insert("scale".into(), cli.common.scale.into());
            params.insert("session_ms".into(), cli.common.session_ms.into());
            if let Err(e) = Report::failed(workload.name(), params, &e).emit() {
                eprintln!("zkr-bench: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zkr-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The workload runs as a task on the runtime's workers, as application code does, not on
    // the main thread through `block_on` (which would add a thread hop to every reply).
    let b = std::sync::Arc::new(b);
    let run = {
        let b = b.clone();
        runtime.spawn(async move { workload.run(&b).await })
    };
    let report = runtime
        .block_on(run)
        .unwrap_or_else(|e| Err(BenchError(format!("the workload task failed: {e}"))))
        .unwrap_or_else(|e| {
            eprintln!("zkr-bench: {} failed: {e}", workload.cmd());
            Report::failed(workload.name(), workload.params(&b), &e)
        });
    drop(runtime);
    drop(b);
    let ok = report.ok;
    if let Err(e) = report.emit() {
        eprintln!("zkr-bench: {e}");
        return ExitCode::FAILURE;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_valid() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
