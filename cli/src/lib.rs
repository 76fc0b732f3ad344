//! The library of the `zkr` command-line client for ZooKeeper, built on [`zkr::Client`].
//! Every subcommand group lives in its own module under [`cmd`]; errors are one
//! [`cmd::CliError`] that maps to the documented exit codes.
//!
//! The benchmark program `zkr-bench` (package `zkr-bench` in `bench/zkr-bench/`, not
//! published) uses [`init_logging`] and [`install_panic_hook`] from here; it is a package of its
//! own because it links the real-ZooKeeper test harness (`zkr_testing`), which `zkr` does not.

#![warn(missing_docs)]

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
