//! Real ZooKeeper server processes: [`ZkEnsemble`], the shared servers, and the process spawner.
//!
//! A member is one `java ... QuorumPeerMain zoo.cfg` process with its own temporary directory
//! (`zoo.cfg`, `data/` with `myid`, and `zookeeper.log` receiving the JVM's stdout and stderr).
//! Its client port, peer port and election port are picked by binding `127.0.0.1:0` and releasing
//! the port again right before the JVM starts; should another process grab one in between, the
//! whole start is retried with fresh ports.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{FaultProxy, HarnessError};

/// How long a start or restart may take until every member serves.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect and answer timeout of [`ZkEnsemble::four_letter`].
const FOUR_LETTER_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest single probe while waiting for a member to serve.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How often a start is retried when a picked port was taken by someone else meanwhile.
const START_ATTEMPTS: usize = 3;
/// Lines of server log quoted in errors.
const LOG_TAIL_LINES: usize = 40;

const DEFAULT_JAR_DIR: &str = "/usr/share/java";
/// Jars of Debian's `zookeeper` package that ZooKeeper 3.8 needs at run time.
const REQUIRED_JARS: &[&str] = &[
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "netty-handler.jar",
    "netty-common.jar",
    "netty-buffer.jar",
    "netty-transport.jar",
    "netty-codec.jar",
    "netty-resolver.jar",
    "netty-transport-native-epoll.jar",
    "netty-transport-native-unix-common.jar",
    "slf4j-api.jar",
    "metrics-core.jar",
    "snappy-java.jar",
    "commons-cli.jar",
];
/// SLF4J bindings in order of preference: `slf4j-simple` writes the server log to stderr (and so
/// into the member's log file, which errors quote); `slf4j-nop` silences it.
const LOG_BINDINGS: &[&str] = &["slf4j-simple.jar", "slf4j-nop.jar"];
const INSTALL_HINT: &str = "install ZooKeeper 3.8 and a Java runtime with \
     `apt-get update && apt-get install -y zookeeper`";
const MAIN_CLASS: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";
/// Most members a partitionable ensemble may have (it runs `2 × n × (n − 1)` proxies).
const MAX_PARTITIONABLE_MEMBERS: usize = 15;
/// Pause between two polls of [`ZkEnsemble::wait_leader_among`].
const LEADER_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A set of real ZooKeeper server processes: one standalone server or an N-member quorum.
///
/// Members are numbered `0..len()`; member `i` has `myid` `i + 1`. All methods take `&self`
/// (state is behind locks), so an ensemble can be shared between threads, e.g. in an `Arc` or a
/// `static`.
///
/// Dropping the ensemble kills every member with `SIGKILL` (by pid), reaps it, removes the
/// temporary directories and then stops the quorum-link proxies of a
/// [partitionable](ZkEnsemble::start_partitionable) ensemble, joining their threads. See the
/// [module docs](crate) for the death-signal safety net.
///
/// ```no_run
/// use zkr_testing::ZkEnsemble;
///
/// let zk = ZkEnsemble::start(3)?;
/// let leader = zk.leader_index().expect("a quorum has a leader");
/// zk.kill(leader)?;                 // crash the leader
/// zk.restart(leader)?;              // it comes back with its data and serves again
/// println!("connect to {}", zk.connect_string());
/// # Ok::<(), zkr_testing::HarnessError>(())
/// ```
#[derive(Debug)]
pub struct ZkEnsemble {
    launch: Launch,
    members: Vec<Member>,
    /// The quorum-link proxies of an ensemble from [`ZkEnsemble::start_partitionable`].
    /// Declared after `members`: `Drop` kills the members first, then the proxies are joined.
    net: Option<QuorumNet>,
    /// Files the members read (a JAAS configuration), removed after the members are gone.
    aux: Option<TempDir>,
}

/// The quorum network of a partitionable ensemble: in member `i`'s `zoo.cfg` every other
/// member `j` is the pair of proxies of the directed link `i → j` (see the
/// [module docs](crate#member-to-member-faults)).
#[derive(Debug)]
struct QuorumNet {
    /// One entry per directed link `from → to` (`from != to`).
    links: Vec<QuorumLink>,
}

/// The two proxies of the directed link `from → to`: connections that member `from` opens to
/// member `to`'s peer port and election port.
#[derive(Debug)]
struct QuorumLink {
    from: usize,
    to: usize,
    peer: FaultProxy,
    election: FaultProxy,
}

/// How to start a JVM running ZooKeeper.
#[derive(Debug, Clone)]
struct Launch {
    java: PathBuf,
    classpath: String,
    extra_opts: Vec<String>,
    /// Lines added to every member's zoo.cfg.
    extra_config: Vec<String>,
    /// Every member also serves TLS on a `secureClientPort` of its own.
    secure: bool,
}

/// One member: its files, its ports and (while it runs) its process.
#[derive(Debug)]
struct Member {
    index: usize,
    dir: TempDir,
    config: PathBuf,
    log: PathBuf,
    client_port: u16,
    /// The TLS client port (`secureClientPort`), in ensembles started with TLS.
    secure_port: Option<u16>,
    /// The peer (quorum) and election addresses this member binds (`None` when standalone).
    quorum: Option<(SocketAddr, SocketAddr)>,
    process: Mutex<Option<Child>>,
    /// Exit status of a process that ended on its own (seen by a status check).
    exited: Mutex<Option<ExitStatus>>,
    paused: AtomicBool,
}

/// Ports of one member.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    peer: u16,
    election: u16,
    secure: Option<u16>,
}

impl ZkEnsemble {
    /// Starts one standalone server (`Mode: standalone`) and waits until it serves.
    ///
    /// Same as [`ZkEnsemble::start(1)`](ZkEnsemble::start).
    pub fn standalone() -> Result<ZkEnsemble, HarnessError> {
        ZkEnsemble::start(1)
    }

    /// Starts `members` servers and waits (at most 30 s) until every one of them serves, i.e.
    /// `srvr` reports a `Mode:`. `1` gives a standalone server, more give a quorum (use an odd
    /// number, normally 3).
    ///
    /// Errors: [`HarnessError::Missing`] when Java or the ZooKeeper jars are not installed,
    /// [`HarnessError::Timeout`] (with the tail of the server log) when a member does not serve
    /// in time, [`HarnessError::Other`] when a member process exits during the start.
    pub fn start(members: usize) -> Result<ZkEnsemble, HarnessError> {
        ZkEnsemble::start_with_jvm_options(members, &[])
    }

    /// Like [`start`](ZkEnsemble::start), with extra JVM options for every member, e.g.
    /// `-Dreadonlymode.enabled=true` (a member that loses its quorum keeps serving reads).
    pub fn start_with_jvm_options(
        members: usize,
        options: &[&str],
    ) -> Result<ZkEnsemble, HarnessError> {
        ZkEnsemble::start_with(members, options, &[])
    }

    /// An ensemble whose members serve reads after losing their quorum
    /// (`readonlymode.enabled`). ZooKeeper 3.8 grants new read-only sessions only as *local*
    /// sessions: without `localSessionsEnabled` a read-only member answers a new client's
    /// handshake with `NotReadOnly` instead of a session, so both are set.
    pub fn start_read_only_capable(members: usize) -> Result<ZkEnsemble, HarnessError> {
        ZkEnsemble::start_with(
            members,
            &["-Dreadonlymode.enabled=true"],
            &[
                "localSessionsEnabled=true",
                "localSessionsUpgradingEnabled=true",
            ],
        )
    }

    /// Like [`start`](ZkEnsemble::start), with extra JVM options and extra `zoo.cfg` lines for
    /// every member.
    pub fn start_with(
        members: usize,
        options: &[&str],
        config_lines: &[&str],
    ) -> Result<ZkEnsemble, HarnessError> {
        ZkEnsemble::start_impl(members, options, config_lines, false, false)
    }

    /// Starts `members` servers that also serve TLS: each member gets a `secureClientPort`
    /// (Netty connection factory) next to its plaintext client port, with the key store,
    /// trust store and client-certificate policy of `tls` (see
    /// [`TestPki::server_config`](crate::TestPki::server_config)). The plaintext port
    /// keeps serving (the harness's four-letter words use it); clients reach the TLS ports
    /// through [`secure_connect_string`](ZkEnsemble::secure_connect_string).
    pub fn start_tls(
        members: usize,
        tls: &[String],
        options: &[&str],
        config_lines: &[&str],
    ) -> Result<ZkEnsemble, HarnessError> {
        let mut lines: Vec<&str> =
            vec!["serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory"];
        lines.extend(tls.iter().map(String::as_str));
        lines.extend_from_slice(config_lines);
        ZkEnsemble::start_impl(members, options, &lines, false, true)
    }

    /// Starts `members` servers that accept SASL DIGEST-MD5 logins (`digest` SASL: a JAAS
    /// `Server` section with `DigestLoginModule` listing `users` as `(name, password)`, and
    /// `SASLAuthenticationProvider`), plus `config_lines`. A client logs in with
    /// `ClientBuilder::sasl_digest(name, password)`; its identity is `sasl:name`.
    pub fn start_sasl(
        members: usize,
        users: &[(&str, &str)],
        config_lines: &[&str],
    ) -> Result<ZkEnsemble, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("zkr-jaas-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temporary directory", e))?;
        let jaas = dir.path().join("jaas.conf");
        let mut text = String::from(
            "Server {\n    org.apache.zookeeper.server.auth.DigestLoginModule required",
        );
        for (user, password) in users {
            text.push_str(&format!("\n    user_{user}=\"{password}\""));
        }
        text.push_str(";\n};\n");
        fs::write(&jaas, text)
            .map_err(|e| HarnessError::io(format!("writing {}", jaas.display()), e))?;
        let opt = format!("-Djava.security.auth.login.config={}", jaas.display());
        let mut lines =
            vec!["authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider"];
        lines.extend_from_slice(config_lines);
        let mut ens = ZkEnsemble::start_impl(members, &[opt.as_str()], &lines, false, false)?;
        ens.aux = Some(dir);
        Ok(ens)
    }

    /// Connect string of the members' TLS ports (`"127.0.0.1:s1,..."`), for an ensemble from
    /// [`start_tls`](ZkEnsemble::start_tls); `None` otherwise.
    pub fn secure_connect_string(&self) -> Option<String> {
        self.members
            .iter()
            .map(|m| m.secure_port.map(|p| format!("127.0.0.1:{p}")))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(","))
    }

    /// Starts a quorum of `members` (2 to 15; normally 3 or 5) whose member-to-member links can
    /// be cut: every peer and election connection goes through a harness-owned [`FaultProxy`]
    /// for its directed link, so [`isolate`](ZkEnsemble::isolate),
    /// [`partition`](ZkEnsemble::partition) and [`heal`](ZkEnsemble::heal) work. Client ports
    /// are not proxied. See the [module docs](crate#member-to-member-faults) for how.
    ///
    /// Errors as for [`start`](ZkEnsemble::start).
    pub fn start_partitionable(members: usize) -> Result<ZkEnsemble, HarnessError> {
        ZkEnsemble::start_partitionable_with(members, &[], &[])
    }

    /// Like [`start_partitionable`](ZkEnsemble::start_partitionable), with extra JVM options
    /// and extra `zoo.cfg` lines for every member (as [`start_with`](ZkEnsemble::start_with)).
    pub fn start_partitionable_with(
        members: usize,
        options: &[&str],
        config_lines: &[&str],
    ) -> Result<ZkEnsemble, HarnessError> {
        if !(2..=MAX_PARTITIONABLE_MEMBERS).contains(&members) {
            return Err(HarnessError::Other(format!(
                "a partitionable ensemble needs 2 to {MAX_PARTITIONABLE_MEMBERS} members \
                 (asked for {members}); a standalone server has no quorum links"
            )));
        }
        ZkEnsemble::start_impl(members, options, config_lines, true, false)
    }

    fn start_impl(
        members: usize,
        options: &[&str],
        config_lines: &[&str],
        partitionable: bool,
        secure: bool,
    ) -> Result<ZkEnsemble, HarnessError> {
        if members == 0 {
            return Err(HarnessError::Other(
                "an ensemble needs at least one member".to_string(),
            ));
        }
        let mut launch = Launch::locate()?;
        launch
            .extra_opts
            .extend(options.iter().map(|o| o.to_string()));
        launch
            .extra_config
            .extend(config_lines.iter().map(|o| o.to_string()));
        launch.secure = secure;
        let mut attempt = 1;
        loop {
            match ZkEnsemble::try_start(&launch, members, partitionable) {
                Ok(ensemble) => return Ok(ensemble),
                Err((error, port_clash)) if port_clash && attempt < START_ATTEMPTS => {
                    tracing::warn!(attempt, %error, "ZooKeeper port clash; retrying with new ports");
                    attempt += 1;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// One start attempt. On failure also tells whether a server log mentions a port clash
    /// (the partially started ensemble is dropped, i.e. killed, before returning).
    fn try_start(
        launch: &Launch,
        count: usize,
        partitionable: bool,
    ) -> Result<ZkEnsemble, (HarnessError, bool)> {
        let (ports, reserved) = reserve_ports(count, launch.secure).map_err(|e| (e, false))?;
        // The proxies bind their (ephemeral) ports while the members' ports are still held, so
        // that none of them can get a member's port.
        let net = if partitionable {
            Some(QuorumNet::start(&ports).map_err(|e| (e, false))?)
        } else {
            None
        };
        drop(reserved);
        let mut members = Vec::with_capacity(count);
        for index in 0..count {
            members.push(
                Member::create(index, &ports, &launch.extra_config, net.as_ref())
                    .map_err(|e| (e, false))?,
            );
        }
        let ensemble = ZkEnsemble {
            launch: launch.clone(),
            members,
            net,
            aux: None,
        };
        let started = ensemble
            .members
            .iter()
            .try_for_each(|member| ensemble.spawn_member(member))
            .and_then(|()| ensemble.wait_all_serving(START_TIMEOUT));
        match started {
            Ok(()) => Ok(ensemble),
            Err(error) => {
                let clash = ensemble
                    .members
                    .iter()
                    .any(|member| member.log_mentions_port_clash());
                Err((error, clash))
            }
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always `false`: an ensemble has at least one member. (Here for API symmetry with `len`.)
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Connect string of the whole ensemble: `"127.0.0.1:p1,127.0.0.1:p2,..."` (client ports).
    pub fn connect_string(&self) -> String {
        self.members
            .iter()
            .map(|member| member.addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Connect string of member `i` alone: `"127.0.0.1:port"`.
    ///
    /// # Panics
    /// If `i >= len()`, like slice indexing.
    pub fn member_connect_string(&self, i: usize) -> String {
        self.member_addr(i).to_string()
    }

    /// Client address of member `i` (`127.0.0.1:client_port`).
    ///
    /// # Panics
    /// If `i >= len()`, like slice indexing.
    pub fn member_addr(&self, i: usize) -> SocketAddr {
        self.members[i].addr()
    }

    /// Client addresses of all members, in member order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(Member::addr).collect()
    }

    /// Path of member `i`'s log file (JVM stdout and stderr, appended across restarts).
    ///
    /// # Panics
    /// If `i >= len()`, like slice indexing.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// The last `lines` lines of member `i`'s log (empty if it cannot be read).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        self.members
            .get(i)
            .map(|member| read_log_tail(&member.log, lines))
            .unwrap_or_default()
    }

    /// Crashes member `i`: `SIGKILL` to its pid, then waits until the process is reaped.
    /// A paused member is killed as well. Does nothing if the member is not running.
    pub fn kill(&self, i: usize) -> Result<(), HarnessError> {
        let member = self.member(i)?;
        let mut process = lock(&member.process);
        if let Some(mut child) = process.take() {
            kill_and_reap(&mut child)
                .map_err(|e| HarnessError::io(format!("killing {}", member.describe()), e))?;
        }
        member.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Restarts member `i` with the same configuration and data (kills it first if it still
    /// runs, like a crash followed by a restart) and waits (at most 30 s) until it serves again.
    ///
    /// A quorum member can only serve while a quorum of members runs; to bring back a member of
    /// an ensemble that has lost its quorum, use [`ZkEnsemble::start_member`] on enough members
    /// and then [`ZkEnsemble::wait_serving`].
    pub fn restart(&self, i: usize) -> Result<(), HarnessError> {
        self.kill(i)?;
        self.start_member(i)?;
        self.wait_serving(i, START_TIMEOUT)
    }

    /// Starts member `i` again (same configuration and data) without waiting until it serves.
    /// Does nothing if it is running.
    pub fn start_member(&self, i: usize) -> Result<(), HarnessError> {
        let member = self.member(i)?;
        if self.is_running(i) {
            return Ok(());
        }
        self.spawn_member(member)
    }

    /// Freezes member `i` with `SIGSTOP` (like a long GC pause or a hung machine): its TCP
    /// connections stay open but it answers nothing, and its sessions' timeouts keep running on
    /// the other members. Returns once the process is stopped.
    pub fn pause(&self, i: usize) -> Result<(), HarnessError> {
        let member = self.member(i)?;
        let process = lock(&member.process);
        let child = process.as_ref().ok_or_else(|| {
            HarnessError::Other(format!("cannot pause {}: not running", member.describe()))
        })?;
        signal(child, libc::SIGSTOP)
            .map_err(|e| HarnessError::io(format!("pausing {}", member.describe()), e))?;
        member.paused.store(true, Ordering::SeqCst);
        wait_until_stopped(child.id());
        Ok(())
    }

    /// Thaws member `i` after [`ZkEnsemble::pause`] with `SIGCONT`. Does nothing if it is not
    /// running.
    pub fn resume(&self, i: usize) -> Result<(), HarnessError> {
        let member = self.member(i)?;
        let process = lock(&member.process);
        if let Some(child) = process.as_ref() {
            signal(child, libc::SIGCONT)
                .map_err(|e| HarnessError::io(format!("resuming {}", member.describe()), e))?;
        }
        member.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Whether member `i`'s process is alive (a paused member is alive). `false` for an index
    /// out of range.
    pub fn is_running(&self, i: usize) -> bool {
        self.members.get(i).is_some_and(Member::is_running)
    }

    /// Pid of member `i`'s process while it runs (`None` once killed or exited).
    pub fn pid(&self, i: usize) -> Option<u32> {
        let member = self.members.get(i)?;
        if !member.is_running() {
            return None;
        }
        lock(&member.process).as_ref().map(Child::id)
    }

    /// Whether member `i` is paused by [`ZkEnsemble::pause`].
    pub fn is_paused(&self, i: usize) -> bool {
        self.members
            .get(i)
            .is_some_and(|member| member.paused.load(Ordering::SeqCst))
    }

    /// Sends the four-letter word `word` (e.g. `"srvr"`, `"wchs"`, `"cons"`, `"mntr"`) to member
    /// `i` and returns its answer. Connect and answer each time out after 2 s, so this fails
    /// with an [`HarnessError::Io`] of kind `TimedOut`/`WouldBlock` on a paused member and with
    /// `ConnectionRefused` on a killed one.
    pub fn four_letter(&self, i: usize, word: &str) -> Result<String, HarnessError> {
        let member = self.member(i)?;
        four_letter_at(member.addr(), word, FOUR_LETTER_TIMEOUT).map_err(|e| {
            HarnessError::io(
                format!("four-letter word {word:?} to {}", member.describe()),
                e,
            )
        })
    }

    /// The mode member `i` serves in: `"standalone"`, `"leader"`, `"follower"` or `"observer"`.
    /// An error if it does not answer or does not serve (e.g. a quorum member without quorum).
    pub fn mode(&self, i: usize) -> Result<String, HarnessError> {
        let answer = self.four_letter(i, "srvr")?;
        parse_mode(&answer).ok_or_else(|| {
            HarnessError::Other(format!(
                "{} is not serving; srvr answered: {}",
                self.members[i].describe(),
                answer.trim()
            ))
        })
    }

    /// Waits until member `i` serves (`srvr` shows a `Mode:`), for at most `timeout`.
    /// Fails early if the process exits; on timeout the error carries the tail of its log.
    pub fn wait_serving(&self, i: usize, timeout: Duration) -> Result<(), HarnessError> {
        let member = self.member(i)?;
        let deadline = Instant::now() + timeout;
        let mut last_answer = String::from("no answer yet");
        loop {
            if !member.is_running() {
                let status = lock(&member.exited)
                    .map(|status| status.to_string())
                    .unwrap_or_else(|| "killed by the harness".to_string());
                return Err(HarnessError::Other(format!(
                    "{} is not running ({status}); tail of {}:\n{}",
                    member.describe(),
                    member.log.display(),
                    member.log_tail()
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "{} did not serve within {timeout:?} (last srvr: {}); log: {}",
                        member.describe(),
                        last_answer.trim(),
                        member.log.display()
                    ),
                    log_tail: member.log_tail(),
                });
            }
            match four_letter_at(member.addr(), "srvr", PROBE_TIMEOUT.min(deadline - now)) {
                Ok(answer) if parse_mode(&answer).is_some() => return Ok(()),
                Ok(answer) => last_answer = answer,
                Err(error) => last_answer = error.to_string(),
            }
            thread::sleep(PROBE_INTERVAL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// Total number of server-side watches, summed over every running, not paused member
    /// (`zk_watch_count` of `mntr`: data, exists and child watches; `wchs` leaves child watches out). A watch set through one member counts once.
    pub fn watch_count(&self) -> Result<u64, HarnessError> {
        let mut total = 0;
        for member in &self.members {
            if !member.is_running() || member.paused.load(Ordering::SeqCst) {
                continue;
            }
            let answer = self.four_letter(member.index, "mntr")?;
            total += parse_total_watches(&answer).ok_or_else(|| {
                HarnessError::Other(format!(
                    "unexpected mntr answer from {}: {}",
                    member.describe(),
                    answer.trim()
                ))
            })?;
        }
        Ok(total)
    }

    /// Index of the member whose mode is `leader`, among running, not paused members.
    /// `None` for a standalone server and for a quorum that currently has no leader.
    pub fn leader_index(&self) -> Option<usize> {
        self.members
            .iter()
            .filter(|member| member.is_running() && !member.paused.load(Ordering::SeqCst))
            .find(|member| self.mode(member.index).is_ok_and(|mode| mode == "leader"))
            .map(|member| member.index)
    }

    /// The peer (quorum) address and the election address member `i` binds; `None` for a
    /// standalone server or an index out of range. In a partitionable ensemble these are the
    /// members' real addresses, which only the link proxies connect to.
    pub fn quorum_addrs(&self, i: usize) -> Option<(SocketAddr, SocketAddr)> {
        self.members.get(i).and_then(|member| member.quorum)
    }

    /// The proxy addresses of the directed link `from → to` in a partitionable ensemble: where
    /// member `from` connects to reach member `to`'s peer port and election port (they are
    /// `to`'s addresses in `from`'s `zoo.cfg`). `None` for other ensembles, `from == to` or an
    /// index out of range.
    pub fn link_addrs(&self, from: usize, to: usize) -> Option<(SocketAddr, SocketAddr)> {
        let link = self.net.as_ref()?.link(from, to)?;
        Some((link.peer.addr(), link.election.addr()))
    }

    /// Whether this ensemble was started by [`start_partitionable`](Self::start_partitionable),
    /// i.e. supports [`isolate`](Self::isolate), [`partition`](Self::partition) and
    /// [`heal`](Self::heal).
    pub fn is_partitionable(&self) -> bool {
        self.net.is_some()
    }

    /// Cuts member `i` off from every other member: each quorum and election link to and from
    /// it is blackholed (silence: nothing is closed or reset, bytes are held until
    /// [`heal`](Self::heal)). Other links keep their state, so isolating two members one after
    /// the other isolates both. The member's process and its client port are untouched: it
    /// keeps accepting clients and answering four-letter words, and notices the isolation only
    /// through ZooKeeper's own timeouts (`syncLimit × tickTime`).
    ///
    /// Errors if the ensemble is not partitionable or `i` is out of range.
    pub fn isolate(&self, i: usize) -> Result<(), HarnessError> {
        let net = self.net("isolate a member")?;
        self.member(i)?;
        for link in net
            .links
            .iter()
            .filter(|link| link.from == i || link.to == i)
        {
            link.blackhole();
        }
        tracing::debug!(member = i, "isolated ZooKeeper member");
        Ok(())
    }

    /// Splits the ensemble into `groups`: links between members of different groups are
    /// blackholed (as by [`isolate`](Self::isolate)), links within a group forward. This
    /// replaces any earlier `isolate` or `partition`. A member listed in no group forms a group
    /// of its own, so `partition(&[&[1, 2]])` on three members is `isolate(0)`.
    ///
    /// Errors if the ensemble is not partitionable, or a member is out of range or listed twice.
    pub fn partition(&self, groups: &[&[usize]]) -> Result<(), HarnessError> {
        let net = self.net("partition the ensemble")?;
        let group_of = group_assignment(self.members.len(), groups)?;
        let (cut, keep): (Vec<&QuorumLink>, Vec<&QuorumLink>) = net
            .links
            .iter()
            .partition(|link| group_of[link.from] != group_of[link.to]);
        // Silence first, then let the rest flow: no moment where a cut link still forwards.
        cut.iter().for_each(|link| link.blackhole());
        keep.iter().for_each(|link| link.heal());
        tracing::debug!(?groups, "partitioned ZooKeeper ensemble");
        Ok(())
    }

    /// Lets every quorum and election link flow again (after [`isolate`](Self::isolate) or
    /// [`partition`](Self::partition)). Held bytes are delivered in order; connections that
    /// a member gave up on meanwhile are then reset by it, as after a real partition heals.
    ///
    /// Errors if the ensemble is not partitionable.
    pub fn heal(&self) -> Result<(), HarnessError> {
        let net = self.net("heal the quorum links")?;
        net.links.iter().for_each(QuorumLink::heal);
        tracing::debug!("healed ZooKeeper ensemble");
        Ok(())
    }

    /// Waits until `members` work as a quorum again: one of them serves as leader and every
    /// other one serves as follower (or observer), per `srvr`. Returns the leader's index.
    ///
    /// Use it after [`isolate`](Self::isolate) or [`partition`](Self::partition) with the
    /// majority side (an isolated old leader may report `leader` for up to
    /// `syncLimit × tickTime` after losing its quorum, so [`leader_index`](Self::leader_index)
    /// over all members can name it meanwhile), and after [`heal`](Self::heal) with all
    /// members. A killed or paused member in `members` never serves, so the wait times out.
    ///
    /// Errors: [`HarnessError::Timeout`] (naming each member's last mode) if that does not
    /// happen within `timeout`; [`HarnessError::Other`] for an empty set or an index out of
    /// range.
    pub fn wait_leader_among(
        &self,
        members: &[usize],
        timeout: Duration,
    ) -> Result<usize, HarnessError> {
        if members.is_empty() {
            return Err(HarnessError::Other(
                "wait_leader_among needs at least one member".to_string(),
            ));
        }
        for &i in members {
            self.member(i)?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let modes: Vec<(usize, Result<String, String>)> = members
                .iter()
                .map(|&i| {
                    let mode = if self.is_paused(i) {
                        Err("paused".to_string())
                    } else {
                        self.mode(i).map_err(|e| e.to_string())
                    };
                    (i, mode)
                })
                .collect();
            let leaders: Vec<usize> = modes
                .iter()
                .filter(|(_, mode)| mode.as_deref() == Ok("leader"))
                .map(|&(i, _)| i)
                .collect();
            let others_follow = modes
                .iter()
                .all(|(_, mode)| matches!(mode.as_deref(), Ok("leader" | "follower" | "observer")));
            if let ([leader], true) = (leaders.as_slice(), others_follow) {
                return Ok(*leader);
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = modes
                    .iter()
                    .map(|(i, mode)| match mode {
                        Ok(mode) => format!("member {i}: {mode}"),
                        Err(error) => format!("member {i}: not serving ({})", error.trim()),
                    })
                    .collect();
                return Err(HarnessError::Timeout {
                    what: format!(
                        "members {members:?} did not have one leader and only followers within \
                         {timeout:?}; last seen: {}",
                        seen.join("; ")
                    ),
                    log_tail: String::new(),
                });
            }
            thread::sleep(
                LEADER_POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    /// The quorum network, or an error naming what could not be done without one.
    fn net(&self, what: &str) -> Result<&QuorumNet, HarnessError> {
        self.net.as_ref().ok_or_else(|| {
            HarnessError::Other(format!(
                "cannot {what}: this ensemble's quorum links are not proxied; start it with \
                 ZkEnsemble::start_partitionable to use isolate/partition/heal (client-side \
                 faults: put a FaultProxy in front of the client ports)"
            ))
        })
    }

    fn member(&self, i: usize) -> Result<&Member, HarnessError> {
        self.members.get(i).ok_or_else(|| {
            HarnessError::Other(format!(
                "no member {i}: the ensemble has {} member(s)",
                self.members.len()
            ))
        })
    }

    fn wait_all_serving(&self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        for member in &self.members {
            let remaining = deadline.saturating_duration_since(Instant::now());
            self.wait_serving(member.index, remaining)?;
        }
        Ok(())
    }

    /// Starts the JVM of `member` through the spawner thread and records the child.
    fn spawn_member(&self, member: &Member) -> Result<(), HarnessError> {
        let mut process = lock(&member.process);
        if process.is_some() {
            return Ok(());
        }
        let command = self.launch.command(member)?;
        let child = spawn_via_spawner(command)
            .map_err(|e| HarnessError::io(format!("starting {}", member.describe()), e))?;
        tracing::debug!(
            member = member.index,
            pid = child.id(),
            port = member.client_port,
            "started ZooKeeper"
        );
        *process = Some(child);
        *lock(&member.exited) = None;
        member.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Kills every member (used by `Drop` and the exit hook). With `blocking == false` a member
    /// whose lock is held elsewhere is skipped (the death signal covers it at exit).
    fn kill_all(&self, blocking: bool) {
        for member in &self.members {
            let guard = if blocking {
                Some(lock(&member.process))
            } else {
                member.process.try_lock().ok()
            };
            if let Some(mut process) = guard {
                if let Some(mut child) = process.take() {
                    if let Err(error) = kill_and_reap(&mut child) {
                        tracing::warn!(%error, member = member.index, "could not kill ZooKeeper");
                    }
                }
            }
        }
    }
}

impl QuorumNet {
    /// Starts the two proxies of every directed link `from → to` on `127.0.0.1:<ephemeral>`,
    /// forwarding to member `to`'s real peer and election port.
    fn start(ports: &[Ports]) -> Result<QuorumNet, HarnessError> {
        let mut links = Vec::with_capacity(ports.len() * ports.len().saturating_sub(1));
        for (from, to) in (0..ports.len())
            .flat_map(|from| (0..ports.len()).map(move |to| (from, to)))
            .filter(|(from, to)| from != to)
        {
            let target = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            links.push(QuorumLink {
                from,
                to,
                peer: FaultProxy::start_quorum_link(target(ports[to].peer), false)?,
                election: FaultProxy::start_quorum_link(target(ports[to].election), true)?,
            });
        }
        Ok(QuorumNet { links })
    }

    fn link(&self, from: usize, to: usize) -> Option<&QuorumLink> {
        self.links
            .iter()
            .find(|link| link.from == from && link.to == to)
    }
}

impl QuorumLink {
    fn blackhole(&self) {
        self.peer.blackhole();
        self.election.blackhole();
    }

    fn heal(&self) {
        self.peer.heal();
        self.election.heal();
    }
}

/// For each of `count` members the number of its group in `groups` (members listed in no group
/// get a group of their own).
fn group_assignment(count: usize, groups: &[&[usize]]) -> Result<Vec<usize>, HarnessError> {
    let mut group_of: Vec<Option<usize>> = vec![None; count];
    for (group, members) in groups.iter().enumerate() {
        for &i in *members {
            let slot = group_of.get_mut(i).ok_or_else(|| {
                HarnessError::Other(format!(
                    "partition {groups:?}: no member {i}, the ensemble has {count} member(s)"
                ))
            })?;
            if slot.is_some() {
                return Err(HarnessError::Other(format!(
                    "partition {groups:?}: member {i} is listed more than once"
                )));
            }
            *slot = Some(group);
        }
    }
    Ok(group_of
        .into_iter()
        .enumerate()
        .map(|(i, group)| group.unwrap_or(groups.len() + i))
        .collect())
}

impl Drop for ZkEnsemble {
    fn drop(&mut self) {
        self.kill_all(true);
    }
}

impl Member {
    /// Creates the member's directory, `zoo.cfg` and `data/myid`. In a partitionable
    /// ensemble (`net`) the other members' lines name this member's link proxies.
    fn create(
        index: usize,
        all: &[Ports],
        extra: &[String],
        net: Option<&QuorumNet>,
    ) -> Result<Member, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("zkr-zk{}-", index + 1))
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temporary directory", e))?;
        let data = dir.path().join("data");
        fs::create_dir_all(&data)
            .map_err(|e| HarnessError::io(format!("creating {}", data.display()), e))?;
        let config = dir.path().join("zoo.cfg");
        let log = dir.path().join("zookeeper.log");
        let client_port = all[index].client;
        let mut text = format!(
            "tickTime=500\n\
             initLimit=20\n\
             syncLimit=10\n\
             dataDir={}\n\
             clientPort={client_port}\n\
             clientPortAddress=127.0.0.1\n\
             minSessionTimeout=1000\n\
             maxSessionTimeout=60000\n\
             4lw.commands.whitelist=*\n\
             extendedTypesEnabled=true\n\
             admin.enableServer=false\n",
            data.display()
        );
        let mut quorum = None;
        if all.len() > 1 {
            for (k, ports) in all.iter().enumerate() {
                // A member binds the addresses of its own line; it reaches every other member
                // at the addresses of that member's line, i.e. through the link's proxies.
                let (peer, election) = match net.and_then(|net| net.link(index, k)) {
                    Some(link) => (link.peer.addr().port(), link.election.addr().port()),
                    None => (ports.peer, ports.election),
                };
                text.push_str(&format!("server.{}=127.0.0.1:{peer}:{election}\n", k + 1));
            }
            quorum = Some((
                SocketAddr::from((Ipv4Addr::LOCALHOST, all[index].peer)),
                SocketAddr::from((Ipv4Addr::LOCALHOST, all[index].election)),
            ));
            let myid = data.join("myid");
            fs::write(&myid, format!("{}\n", index + 1))
                .map_err(|e| HarnessError::io(format!("writing {}", myid.display()), e))?;
        }
        if let Some(secure) = all[index].secure {
            text.push_str(&format!(
                "secureClientPort={secure}\nsecureClientPortAddress=127.0.0.1\n"
            ));
        }
        for line in extra {
            text.push_str(line);
            text.push('\n');
        }
        fs::write(&config, text)
            .map_err(|e| HarnessError::io(format!("writing {}", config.display()), e))?;
        Ok(Member {
            index,
            dir,
            config,
            log,
            client_port,
            secure_port: all[index].secure,
            quorum,
            process: Mutex::new(None),
            exited: Mutex::new(None),
            paused: AtomicBool::new(false),
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.client_port))
    }

    fn describe(&self) -> String {
        format!(
            "ZooKeeper member {} (myid {}, 127.0.0.1:{})",
            self.index,
            self.index + 1,
            self.client_port
        )
    }

    /// Whether the process is alive; records the exit status of a process that ended by itself.
    fn is_running(&self) -> bool {
        let mut process = lock(&self.process);
        let Some(child) = process.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                *lock(&self.exited) = Some(status);
                *process = None;
                false
            }
            // Cannot tell; the child is still ours, so treat it as alive.
            Err(_) => true,
        }
    }

    fn log_tail(&self) -> String {
        read_log_tail(&self.log, LOG_TAIL_LINES)
    }

    fn log_mentions_port_clash(&self) -> bool {
        let tail = read_log_tail(&self.log, 400);
        tail.contains("Address already in use") || tail.contains("BindException")
    }
}

impl Launch {
    /// Finds Java and the ZooKeeper class path (see the module docs for the environment
    /// variables that override them).
    fn locate() -> Result<Launch, HarnessError> {
        let extra_opts = std::env::var("ZKR_ZOOKEEPER_JAVA_OPTS")
            .map(|opts| opts.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        Ok(Launch {
            java: locate_java()?,
            classpath: locate_classpath()?,
            extra_opts,
            extra_config: Vec::new(),
            secure: false,
        })
    }

    fn command(&self, member: &Member) -> Result<Command, HarnessError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(|e| HarnessError::io(format!("opening {}", member.log.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| HarnessError::io(format!("opening {}", member.log.display()), e))?;
        let mut command = Command::new(&self.java);
        command
            .args([
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Xshare:auto",
                "-XX:-UsePerfData",
                "-Djava.net.preferIPv4Stack=true",
                "-Dzookeeper.admin.enableServer=false",
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
            ])
            .args(&self.extra_opts)
            .arg("-cp")
            .arg(&self.classpath)
            .arg(MAIN_CLASS)
            .arg(&member.config)
            .current_dir(member.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        set_parent_death_signal(&mut command);
        Ok(command)
    }
}

fn locate_java() -> Result<PathBuf, HarnessError> {
    if let Some(java) = std::env::var_os("JAVA").filter(|v| !v.is_empty()) {
        let java = PathBuf::from(java);
        return resolve_executable(&java).ok_or_else(|| HarnessError::Missing {
            what: format!("Java (JAVA={})", java.display()),
            hint: "point JAVA at a java binary, or unset it to use /usr/bin/java".to_string(),
        });
    }
    let from_home = std::env::var_os("JAVA_HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join("bin").join("java"));
    from_home
        .into_iter()
        .chain([PathBuf::from("/usr/bin/java")])
        .find(|candidate| candidate.is_file())
        .or_else(|| resolve_executable(Path::new("java")))
        .ok_or_else(|| HarnessError::Missing {
            what: "Java (no /usr/bin/java and no `java` on PATH)".to_string(),
            hint: format!("{INSTALL_HINT}, or set JAVA to a java binary"),
        })
}

/// `path` itself if it names a file (has a directory part), otherwise looked up on `PATH`.
fn resolve_executable(path: &Path) -> Option<PathBuf> {
    if path.components().count() > 1 || path.is_absolute() {
        return path.is_file().then(|| path.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(path))
            .find(|candidate| candidate.is_file())
    })
}

fn locate_classpath() -> Result<String, HarnessError> {
    if let Ok(classpath) = std::env::var("ZKR_ZOOKEEPER_CLASSPATH") {
        if !classpath.trim().is_empty() {
            return Ok(classpath);
        }
    }
    let dir = Path::new(DEFAULT_JAR_DIR);
    let missing: Vec<&str> = REQUIRED_JARS
        .iter()
        .copied()
        .filter(|jar| !dir.join(jar).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(HarnessError::Missing {
            what: format!(
                "ZooKeeper jar(s) {} in {DEFAULT_JAR_DIR}",
                missing.join(", ")
            ),
            hint: format!(
                "{INSTALL_HINT}, or set ZKR_ZOOKEEPER_CLASSPATH to a class path holding \
                 ZooKeeper 3.8 and its dependencies"
            ),
        });
    }
    let binding = LOG_BINDINGS.iter().find(|jar| dir.join(jar).is_file());
    let jars: Vec<String> = REQUIRED_JARS
        .iter()
        .chain(binding)
        .map(|jar| dir.join(jar).display().to_string())
        .collect();
    Ok(jars.join(":"))
}

/// Picks a client, peer and election port for each of `count` members. All ports are held at
/// once (so they are distinct) and released on return.
#[cfg(test)]
fn pick_ports(count: usize) -> Result<Vec<Ports>, HarnessError> {
    reserve_ports(count, false).map(|(ports, _released)| ports)
}

/// Like `pick_ports` (plus a TLS client port per member when `secure`), but the ports stay
/// bound until the returned listeners are dropped.
fn reserve_ports(
    count: usize,
    secure: bool,
) -> Result<(Vec<Ports>, Vec<TcpListener>), HarnessError> {
    let per = if secure { 4 } else { 3 };
    let mut held = Vec::with_capacity(count * per);
    for _ in 0..count * per {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| HarnessError::io("binding 127.0.0.1:0 to pick a free port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading a picked port", e))?
            .port();
        held.push((listener, port));
    }
    let ports = held
        .chunks(per)
        .map(|chunk| Ports {
            client: chunk[0].1,
            peer: chunk[1].1,
            election: chunk[2].1,
            secure: chunk.get(3).map(|c| c.1),
        })
        .collect();
    Ok((
        ports,
        held.into_iter().map(|(listener, _)| listener).collect(),
    ))
}

/// Sends a four-letter word to `addr` and reads the answer until the server closes.
/// `timeout` bounds the connect and the whole answer.
fn four_letter_at(addr: SocketAddr, word: &str, timeout: Duration) -> io::Result<String> {
    let timeout = timeout.max(Duration::from_millis(10));
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(word.as_bytes())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete answer to {word:?} from {addr} within {timeout:?}"),
            ));
        }
        stream.set_read_timeout(Some(remaining))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to {word:?} from {addr} within {timeout:?}"),
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// The value of the `Mode: X` line of a `srvr`/`stat` answer.
fn parse_mode(answer: &str) -> Option<String> {
    answer
        .lines()
        .find_map(|line| line.trim().strip_prefix("Mode:"))
        .map(|mode| mode.trim().to_string())
        .filter(|mode| !mode.is_empty())
}

/// `K` of the `zk_watch_count K` line of a `mntr` answer (data, exists and child watches;
/// `wchs` counts data and exists watches only).
fn parse_total_watches(answer: &str) -> Option<u64> {
    answer
        .lines()
        .find_map(|line| line.trim().strip_prefix("zk_watch_count"))
        .and_then(|count| count.trim().parse().ok())
}

/// The last `lines` lines of a log file (at most its last 64 KiB are read).
fn read_log_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends `signal` to the child's pid. The child is not reaped yet (we own its `Child`), so the
/// pid cannot have been reused by another process.
fn signal(child: &Child, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SIGKILL` by pid, then wait until the process is reaped.
fn kill_and_reap(child: &mut Child) -> io::Result<()> {
    if let Err(error) = signal(child, libc::SIGKILL) {
        // Already reaped elsewhere? Then there is nothing to kill.
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        return Err(error);
    }
    child.wait().map(drop)
}

/// Waits (at most 1 s) until `/proc/PID/stat` shows the process as stopped.
fn wait_until_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let stat = format!("/proc/{pid}/stat");
    while Instant::now() < deadline {
        let Ok(text) = fs::read_to_string(&stat) else {
            return;
        };
        // The state is the first field after the parenthesised command name.
        let state = text
            .rfind(')')
            .and_then(|end| text[end + 1..].split_whitespace().next());
        if matches!(state, Some("T") | Some("t")) {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Makes the child get `SIGKILL` when the thread that forked it dies. Together with the spawner
/// thread (which lives as long as the process) this means: when the test process dies.
fn set_parent_death_signal(command: &mut Command) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure only calls the async-signal-safe functions prctl(2) and getppid(2)
    // and builds an io::Error from an errno value without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// A request to the spawner thread.
struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// Spawns `command` on the process-lifetime spawner thread (see [`set_parent_death_signal`]).
fn spawn_via_spawner(command: Command) -> io::Result<Child> {
    let (reply, answer) = mpsc::channel();
    spawner()?
        .send(SpawnRequest { command, reply })
        .map_err(|_| io::Error::other("the ZooKeeper spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the ZooKeeper spawner thread dropped a request"))?
}

/// The channel to the spawner thread, starting the thread on first use. The thread loops for
/// the rest of the process (the sender lives in a static), which keeps the death signal of its
/// children from firing before the process exits.
fn spawner() -> io::Result<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);
    let mut spawner = lock(&SPAWNER);
    if let Some(sender) = spawner.as_ref() {
        return Ok(sender.clone());
    }
    let (sender, requests) = mpsc::channel::<SpawnRequest>();
    thread::Builder::new()
        .name("zkr-zookeeper-spawner".to_string())
        .spawn(move || {
            for SpawnRequest { mut command, reply } in requests {
                // If nobody waits for the child any more, do not leave it running.
                if let Err(mpsc::SendError(Ok(mut child))) = reply.send(command.spawn()) {
                    let _ = kill_and_reap(&mut child);
                }
            }
        })?;
    *spawner = Some(sender.clone());
    Ok(sender)
}

static SHARED_STANDALONE: OnceLock<Result<ZkEnsemble, HarnessError>> = OnceLock::new();
static SHARED_ENSEMBLE3: OnceLock<Result<ZkEnsemble, HarnessError>> = OnceLock::new();

/// A process-wide standalone server, started on first use and shared by every caller in the
/// test binary. Tests sharing it must use distinct root paths (e.g. one per test name) and must
/// not kill, pause or restart it — create an own [`ZkEnsemble`] for that.
///
/// It is never dropped: when the test binary exits normally an `atexit` hook kills it (by pid)
/// and removes its directory; if the binary dies otherwise, the parent-death signal kills it.
/// A failed start is remembered and returned to every later caller without a new attempt.
pub fn shared() -> Result<&'static ZkEnsemble, HarnessError> {
    shared_in(&SHARED_STANDALONE, 1)
}

/// Like [`shared`], but a process-wide 3-member quorum.
pub fn shared_ensemble3() -> Result<&'static ZkEnsemble, HarnessError> {
    shared_in(&SHARED_ENSEMBLE3, 3)
}

fn shared_in(
    cell: &'static OnceLock<Result<ZkEnsemble, HarnessError>>,
    members: usize,
) -> Result<&'static ZkEnsemble, HarnessError> {
    let result = cell.get_or_init(|| {
        register_exit_hook();
        ZkEnsemble::start(members)
    });
    result.as_ref().map_err(HarnessError::duplicate)
}

fn register_exit_hook() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: atexit(3) with a function that never unwinds.
        if unsafe { libc::atexit(stop_shared_at_exit) } != 0 {
            tracing::warn!("atexit failed; shared ZooKeeper servers rely on the death signal");
        }
    });
}

extern "C" fn stop_shared_at_exit() {
    for cell in [&SHARED_STANDALONE, &SHARED_ENSEMBLE3] {
        if let Some(Ok(ensemble)) = cell.get() {
            ensemble.kill_all(false);
            for member in &ensemble.members {
                if !member.is_running_unlocked() {
                    let _ = fs::remove_dir_all(member.dir.path());
                }
            }
        }
    }
}

impl Member {
    /// Like `is_running` but never blocks on the lock: `true` if the lock is busy.
    fn is_running_unlocked(&self) -> bool {
        match self.process.try_lock() {
            Ok(process) => process.is_some(),
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mode() {
        let srvr = "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.0/0\nMode: follower\nNode count: 5\n";
        assert_eq!(parse_mode(srvr).as_deref(), Some("follower"));
        assert_eq!(
            parse_mode("This ZooKeeper instance is not currently serving requests\n"),
            None
        );
    }

    #[test]
    fn parses_total_watches() {
        assert_eq!(
            parse_total_watches("zk_version\t3.8.0\nzk_watch_count\t4\nzk_ephemerals_count\t0\n"),
            Some(4)
        );
        assert_eq!(parse_total_watches("garbage"), None);
    }

    #[test]
    fn assigns_partition_groups() {
        assert_eq!(group_assignment(3, &[&[0], &[1, 2]]).unwrap(), [0, 1, 1]);
        // Unlisted members are alone.
        assert_eq!(group_assignment(3, &[&[1, 2]]).unwrap(), [1, 0, 0]);
        assert_eq!(group_assignment(3, &[]).unwrap(), [0, 1, 2]);
        assert!(group_assignment(3, &[&[0, 3]]).is_err());
        assert!(group_assignment(3, &[&[0], &[0, 1]]).is_err());
    }

    #[test]
    fn picks_distinct_ports() {
        let ports = pick_ports(3).unwrap();
        let mut all: Vec<u16> = ports
            .iter()
            .flat_map(|p| [p.client, p.peer, p.election])
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 9);
    }
}
