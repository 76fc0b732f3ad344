//! Real-ZooKeeper test harness: server processes, process faults and a fault-injecting TCP proxy.
//!
//! The workspace's own crate `zkr-testing` (not published): a dev-dependency of the crates'
//! integration tests, and a dependency of the soak and benchmark programs. Everything here talks to a **real** Apache ZooKeeper
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
//! * [`ZkEnsemble::start_partitionable`] starts a quorum whose member-to-member links run through
//!   harness-owned proxies, so a test can [isolate](ZkEnsemble::isolate) a member,
//!   [partition](ZkEnsemble::partition) the quorum and [heal](ZkEnsemble::heal) it again (see
//!   [below](#member-to-member-faults)). No iptables, network namespaces or root needed.
//!
//! # Member-to-member faults
//!
//! ```no_run
//! use std::time::Duration;
//! use zkr_testing::ZkEnsemble;
//!
//! let zk = ZkEnsemble::start_partitionable(3)?;
//! let old = zk.wait_leader_among(&[0, 1, 2], Duration::from_secs(30))?;
//! zk.isolate(old)?;                       // cut the leader off from the other two
//! let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
//! let new = zk.wait_leader_among(&others, Duration::from_secs(20))?;
//! assert_ne!(new, old);
//! zk.heal()?;                             // the old leader rejoins as a follower
//! zk.wait_leader_among(&[0, 1, 2], Duration::from_secs(20))?;
//! # Ok::<(), zkr_testing::HarnessError>(())
//! ```
//!
//! **What is proxied.** In a partitionable ensemble of `n` members every *directed link*
//! `i → j` has two [`FaultProxy`]s on `127.0.0.1`: one forwarding to member `j`'s peer
//! (quorum) port and one to its election port. Member `i`'s `zoo.cfg` keeps its own
//! `server.i` line with its real ports (a member binds the addresses of its own line) and
//! names, for every other member `j`, the two proxies of `i → j`. Every quorum TCP connection
//! is opened by one member (a follower connects to its leader; an election connection is opened
//! by either side), so it runs through exactly one link proxy. [`ZkEnsemble::quorum_addrs`] and
//! [`ZkEnsemble::link_addrs`] give the real and the proxy addresses.
//!
//! Two details keep every connection on its proxy:
//!
//! * ZooKeeper 3.8's election handshake carries the initiator's own election address, and a
//!   receiver with a higher server id drops the connection and calls the initiator back *at
//!   that address* — straight to the real port. The election-link proxies therefore rewrite the
//!   handshake to the older form without an address (which 3.8 still accepts), and the receiver
//!   calls back at the address in its own configuration: through its own proxy.
//! * The members' configurations differ in the other members' addresses. With dynamic
//!   reconfiguration off (`reconfigEnabled=false`, the default) a follower does not adopt the
//!   leader's configuration ("Dynamic reconfig is disabled, we don't store the last seen
//!   config"), writes no `zoo.cfg.dynamic.*` file, and its `conf` four-letter word keeps listing
//!   its own proxies. The `partition` integration tests check this and that no member holds a
//!   connection to another member's real quorum address.
//!
//! **Faults.**
//!
//! | call | links between | effect |
//! |---|---|---|
//! | [`isolate(i)`](ZkEnsemble::isolate) | `i` and every other member, both directions | blackholed; other links keep their state |
//! | [`partition(&[&[..], ..])`](ZkEnsemble::partition) | members of different groups | blackholed; links within a group forward; replaces earlier faults; unlisted members are alone |
//! | [`heal()`](ZkEnsemble::heal) | all members | forward again |
//!
//! Blackholed means a **silent drop**: the [`FaultProxy::blackhole`] mode. Nothing is closed or
//! reset; bytes (and closes) are held and delivered in order after `heal`, as TCP would after a
//! real partition heals; new connections are accepted by the proxy and then hear nothing. So the
//! members learn about a partition only through ZooKeeper's own timeouts: a follower that hears
//! nothing from its leader for `syncLimit × tickTime` (5 s with the harness's `tickTime=500`,
//! `syncLimit=10`) goes back to LOOKING, and a leader without acks from a quorum for as long
//! steps down. Measured on a 2-core machine: an isolated follower kept serving for about 5.0 s;
//! after isolating the leader, the other two had a new leader about 5.4–5.9 s later; after
//! `heal` the cut-off member served as follower again within 50–350 ms.
//!
//! **Client ports are not affected.** An isolated member keeps accepting client connections
//! and answering four-letter words; it serves requests until it notices the partition, then
//! answers `srvr` with "not currently serving requests" (`ruok` still says `imok`). Use
//! [`ZkEnsemble::wait_leader_among`] with the majority side to wait for a working quorum
//! ([`ZkEnsemble::leader_index`] may still name an isolated old leader until it steps down).
//! Client-side faults remain the job of a [`FaultProxy`] in front of the client ports
//! ([`FaultProxy::for_member`], [`FaultProxy::for_ensemble`]); both kinds combine.
//!
//! Differences from a packet-level partition: a connection opened during a blackhole completes
//! its TCP handshake with the proxy (a real partition would leave it unanswered), and a link
//! proxy whose target port refuses keeps retrying it for up to 2 s before closing the
//! connection (ZooKeeper would have seen the refusal and retried by itself). ZooKeeper hears
//! silence in the first case and a short delay in the second.
//!
//! Ensembles from the other constructors have no link proxies: `isolate`, `partition` and
//! `heal` return a [`HarnessError::Other`] saying so. The proxies are stopped and their
//! threads joined when the ensemble is dropped, after its members are killed.
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
//! Linux only (`PR_SET_PDEATHSIG`, `/proc`, process signals): building this crate for any other
//! target is a compile error. The client and the recipes do not need it.

#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "zkr-testing (the real-ZooKeeper test harness) supports Linux only: it relies on \
     PR_SET_PDEATHSIG, /proc and Unix process signals. The client and the recipes do not need it."
);

pub mod helpers;
mod proxy;
mod server;
mod tls;

pub use proxy::FaultProxy;
pub use server::{shared, shared_ensemble3, ZkEnsemble};
pub use tls::{ClientAuth, TestPki};

/// Expires the session `id` from outside its process, like Curator's KillSession: a second
/// connection with the session's credentials (from
/// [`Client::session_credentials_for_testing`](zkr::Client::session_credentials_for_testing))
/// is opened to a server in `direct` and closed. Cut the owner off (with a [`FaultProxy`])
/// while this runs, or its instant reconnect keeps taking the session back.
pub async fn expire_session(direct: &str, id: zkr::SessionId, passwd: &[u8]) -> zkr::Result<()> {
    zkr::test_hooks::expire_session_with(direct, id, passwd).await
}

/// A [`FaultProxy`] is what [`Client::expire_session_for_testing`](zkr::Client::expire_session_for_testing)
/// cuts while it expires the client's session.
impl zkr::test_hooks::ConnectionCut for FaultProxy {
    fn cut(&self) {
        FaultProxy::cut(self);
    }

    fn heal(&self) {
        FaultProxy::heal(self);
    }
}

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
