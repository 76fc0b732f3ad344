//! Real-ZooKeeper test harness: server processes, process faults and a fault-injecting TCP proxy.
//!
//! Enabled by the `testing` cargo feature. Everything here talks to a **real** Apache ZooKeeper
//! (3.8, from Debian's `zookeeper` package: `apt-get install -y zookeeper`) running as Java
//! child processes of the test binary; nothing is mocked.
//!
//! * [`ZkEnsemble`] starts a standalone server or an N-member quorum on free loopback ports,
//!   each member in its own temporary directory, and lets a test crash ([`ZkEnsemble::kill`]),
//!   restart ([`ZkEnsemble::restart`]), freeze ([`ZkEnsemble::pause`]) and thaw
//!   ([`ZkEnsemble::resume`]) members, and inspect them through four-letter words
//!   ([`ZkEnsemble::four_letter`], [`ZkEnsemble::mode`], [`ZkEnsemble::watch_count`]).
//! * [`shared`] / [`shared_ensemble3`] give process-wide servers that many tests can share
//!   (each test using its own root path) so that only one JVM start is paid per test binary.
//! * [`FaultProxy`] sits between a client and the servers and cuts, flaps or freezes the client's
//!   TCP connections for real.
//!
//! # Blocking on purpose
//!
//! The whole API is synchronous and needs no tokio runtime: it can be used from a plain `#[test]`,
//! from inside `#[tokio::test]` (the calls block for at most a few seconds; call them from
//! `tokio::task::spawn_blocking` if the runtime must keep running meanwhile, e.g. on a
//! current-thread runtime where the client under test needs to make progress), or from a
//! `static OnceLock` shared between tests.
//!
//! # Process lifetime guarantees
//!
//! * Every member is stopped with `SIGKILL` *by its pid* (never by name) when its [`ZkEnsemble`]
//!   is dropped — also when a test panics — and the process is reaped before `drop` returns.
//! * As a safety net every Java process is started with `PR_SET_PDEATHSIG = SIGKILL`, so it dies
//!   when the test process dies, even on `SIGKILL` or `abort`. Because Linux delivers that signal
//!   when the *thread* that forked the child exits, all children are forked by one dedicated
//!   spawner thread that lives as long as the process (Rust test threads come and go).
//! * The process-wide servers of [`shared`] are never dropped (they live in statics); they are
//!   killed by an `atexit` hook when the test binary exits normally (which also removes their
//!   temporary directories), and by the death signal otherwise.
//!
//! # Environment
//!
//! * `JAVA` — the `java` binary to use (default: `$JAVA_HOME/bin/java`, `/usr/bin/java`, then
//!   `java` on `PATH`).
//! * `ZKR_ZOOKEEPER_CLASSPATH` — a complete class path for ZooKeeper (default: the jars of
//!   Debian's `zookeeper` package in `/usr/share/java`).
//! * `ZKR_ZOOKEEPER_JAVA_OPTS` — extra JVM options, split on whitespace.
//!
//! # Platform
//!
//! Linux only (`PR_SET_PDEATHSIG`, `/proc`, process signals): enabling the `testing` feature on
//! any other target is a compile error. The client and the recipes do not need it.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "zkr's `testing` feature (the real-ZooKeeper test harness, zkr::testing) supports Linux \
     only: it relies on PR_SET_PDEATHSIG, /proc and Unix process signals. Build without the \
     `testing` feature on this platform."
);

mod proxy;
mod server;

pub use proxy::FaultProxy;
pub use server::{shared, shared_ensemble3, ZkEnsemble};

/// Why the harness could not do what a test asked.
///
/// The messages are meant to be read by a person looking at a failed test: they say what was
/// missing or what timed out and, for server start failures, end with the tail of the server log.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Java or the ZooKeeper jars are not installed (or not where the harness looks).
    #[error("{what} not found; {hint}")]
    Missing {
        /// What is missing, e.g. "ZooKeeper jar /usr/share/java/zookeeper.jar".
        what: String,
        /// How to fix it.
        hint: String,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Something did not happen in time (a server did not start serving, ...).
    #[error("timed out: {what}{}", render_tail(log_tail))]
    Timeout {
        /// What was awaited.
        what: String,
        /// The last lines of the relevant server log (may be empty).
        log_tail: String,
    },
    /// Any other failure, described in words.
    #[error("{0}")]
    Other(String),
}

impl HarnessError {
    /// Wraps an I/O error with what the harness was doing.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }

    /// A copy of this error (`std::io::Error` is not `Clone`; the copy keeps kind and message).
    /// Used to hand out a cached start failure of a shared server to every test that asks.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            HarnessError::Missing { what, hint } => HarnessError::Missing {
                what: what.clone(),
                hint: hint.clone(),
            },
            HarnessError::Io { context, source } => HarnessError::Io {
                context: context.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            HarnessError::Timeout { what, log_tail } => HarnessError::Timeout {
                what: what.clone(),
                log_tail: log_tail.clone(),
            },
            HarnessError::Other(message) => HarnessError::Other(message.clone()),
        }
    }
}

fn render_tail(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- server log tail ---\n{tail}\n--- end of log tail ---")
    }
}
