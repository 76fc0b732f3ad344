//! Code shared by the two programs of this package:
//!
//! * `zkr` — a command-line client for ZooKeeper built on [`zkr::Client`]. Every subcommand
//!   group lives in its own module under [`cmd`]; errors are one [`cmd::CliError`] that maps to
//!   the documented exit codes.
//! * `zkr-bench` — the benchmark program of `BENCHMARKS.md`. The shared plumbing (clients,
//!   root paths, percentiles, the one JSON line) is in [`bench`]; every workload is one module
//!   under it.

pub mod bench;
pub mod cmd;

/// Sets up `tracing` to stderr, filtered by `RUST_LOG` (default `warn`).
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Replaces the default panic output (message + backtrace hint) by one `<program>: internal
/// error: ...` line on stderr. Panics are bugs; users should still see one clear line.
pub fn install_panic_hook(program: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "panic".to_string()
        };
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("{program}: internal error: {msg}{at}");
    }));
}
