//! The `zkr` subcommands, one module per command group, and what they share: global options,
//! connecting, the error type with its exit codes, and output helpers.
//!
//! Adding a command group (e.g. `lock`): write `cmd/lock.rs` with a `clap::Args` struct and an
//! `async fn run(ctx: &Ctx, args: &LockArgs) -> Result<(), CliError>`, add a variant to
//! `Command` in `main.rs` and one arm to its dispatch. Long-running commands wait on
//! [`shutdown_signal`] and print one JSON line per event with [`print_json_line`].

pub mod acl;
pub mod child;
pub mod config;
pub mod elect;
pub mod id;
pub mod lock;
pub mod node;
pub mod queue;
pub mod register;
pub mod ui;
pub mod watch;

use std::fmt;
use std::io::{Read, Write};
use std::time::Duration;

use serde::Serialize;

/// Exit codes of `zkr` (besides 0 = success).
pub mod exit {
    /// Any error without a more specific code.
    pub const GENERIC: u8 = 1;
    /// Bad usage: rejected by the argument parser, or an invalid path / connect string.
    pub const USAGE: u8 = 2;
    /// The node does not exist.
    pub const NO_NODE: u8 = 3;
    /// The node already exists.
    pub const NODE_EXISTS: u8 = 4;
    /// The expected version did not match.
    pub const BAD_VERSION: u8 = 5;
    /// Connection, timeout or session trouble.
    pub const CONNECTION: u8 = 6;
    /// `lock` / `elect`: not acquired within `--timeout`.
    pub const LOCK_TIMEOUT: u8 = 7;
    /// `lock` / `elect`: lost while the command ran (the command got SIGTERM).
    pub const LOCK_LOST: u8 = 8;
    /// Not authorized (`NoAuth`: the node's ACL refuses this identity) or the credentials were
    /// rejected (`AuthFailed`), or an ACL was invalid.
    pub const AUTH: u8 = 9;
}

/// Options every subcommand understands.
#[derive(clap::Args, Clone, Debug)]
pub struct GlobalOpts {
    /// ZooKeeper servers: HOST:PORT[,HOST:PORT...][/chroot]
    #[arg(
        long,
        env = "ZK_SERVERS",
        global = true,
        value_name = "HOST:PORT[,...][/chroot]"
    )]
    pub zk: Option<String>,

    /// Session timeout to ask the server for, in milliseconds
    #[arg(long, global = true, default_value_t = 10_000, value_name = "MS")]
    pub session_timeout_ms: u64,

    /// Deadline of each operation and of connecting, e.g. 500ms, 5s, 1m (a bare number is
    /// seconds). Default: the session timeout
    #[arg(long, global = true, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,

    /// Credentials sent in every handshake, e.g. `digest:app:secret` (repeatable;
    /// `sasl:USER:PASSWORD` logs in with SASL DIGEST-MD5); also from ZKR_AUTH (one
    /// SCHEME:CREDENTIALS). Never printed
    #[arg(
        long = "auth",
        global = true,
        env = "ZKR_AUTH",
        hide_env_values = true,
        value_parser = parse_auth,
        value_name = "SCHEME:CREDENTIALS"
    )]
    pub auth: Vec<AuthArg>,

    /// Connect with TLS (to the servers' secureClientPort), trusting the CA certificates of
    /// this PEM file; the server certificates must name the hosts of --zk
    #[arg(long, global = true, env = "ZKR_TLS_CA", value_name = "PEM_FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for mutual TLS; needs --tls-key and --tls-ca
    #[arg(long, global = true, env = "ZKR_TLS_CERT", value_name = "PEM_FILE")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --tls-cert
    #[arg(long, global = true, env = "ZKR_TLS_KEY", value_name = "PEM_FILE")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// One `--auth SCHEME:CREDENTIALS`; `Debug` hides the credentials. Parsing never fails in the
/// argument parser (whose error would echo the value, secret included): a malformed value is
/// reported by [`check_auth`] without it.
#[derive(Clone)]
pub struct AuthArg {
    /// The scheme (`digest`, ...).
    pub scheme: String,
    /// The credentials (`user:password` for `digest`).
    pub credentials: String,
    /// What is wrong with the value, if anything.
    pub invalid: Option<&'static str>,
}

impl fmt::Debug for AuthArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:<redacted>", self.scheme)
    }
}

/// Parses `SCHEME:CREDENTIALS` (the credentials may contain `:`); see [`AuthArg`].
pub fn parse_auth(s: &str) -> Result<AuthArg, std::convert::Infallible> {
    let (scheme, credentials) = s.split_once(':').unwrap_or((s, ""));
    let invalid = if scheme.is_empty() || credentials.is_empty() {
        Some("--auth expects SCHEME:CREDENTIALS, e.g. --auth digest:app:secret")
    } else if scheme == "digest" && !credentials.contains(':') {
        Some("--auth digest:... expects USER:PASSWORD, e.g. --auth digest:app:secret")
    } else if scheme == "sasl" && !credentials.contains(':') {
        Some("--auth sasl:... expects USER:PASSWORD (SASL DIGEST-MD5), e.g. --auth sasl:app:secret")
    } else {
        None
    };
    Ok(AuthArg {
        scheme: scheme.to_string(),
        credentials: credentials.to_string(),
        invalid,
    })
}

/// Rejects malformed `--auth` values (usage error; the value is not repeated) and incomplete
/// TLS options.
pub fn check_auth(opts: &GlobalOpts) -> Result<(), CliError> {
    if let Some(why) = opts.auth.iter().find_map(|a| a.invalid) {
        return Err(CliError::Usage(why.to_string()));
    }
    tls_config(opts).map(|_| ())
}

/// The TLS settings the options ask for (`None`: plaintext).
pub fn tls_config(opts: &GlobalOpts) -> Result<Option<zkr::TlsConfig>, CliError> {
    let usage = |m: &str| Err(CliError::Usage(m.to_string()));
    match (&opts.tls_ca, &opts.tls_cert, &opts.tls_key) {
        (None, None, None) => Ok(None),
        (None, _, _) => usage("--tls-cert and --tls-key need --tls-ca (the CA of the servers)"),
        (Some(_), Some(_), None) => usage("--tls-cert needs --tls-key (its private key)"),
        (Some(_), None, Some(_)) => usage("--tls-key needs --tls-cert"),
        (Some(ca), cert, key) => {
            let mut tls = zkr::TlsConfig::new().ca_pem_file(ca);
            if let (Some(cert), Some(key)) = (cert, key) {
                tls = tls.client_cert_pem_files(cert, key);
            }
            Ok(Some(tls))
        }
    }
}

/// Parses `500ms`, `5s`, `1.5s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 5s, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use ms, s or m)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("{s:?} must be a positive duration"));
    }
    match Duration::try_from_secs_f64(secs) {
        // Positive but below a nanosecond: it would be a zero deadline.
        Ok(d) if d.is_zero() => Err(format!("{s:?} must be at least 1ns")),
        Ok(d) => Ok(d),
        Err(_) => Err(format!("{s:?} is too long a duration")),
    }
}

/// Every way a `zkr` command can fail; [`CliError::exit_code`] gives the process exit code.
#[derive(Debug)]
pub enum CliError {
    /// An error reported by the zkr client.
    Zk(zkr::Error),
    /// Bad usage found after argument parsing (exit code 2).
    Usage(String),
    /// Reading stdin or writing stdout failed.
    Io {
        /// What was being read or written.
        context: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A zkr error re-worded for the command at hand; keeps the error's exit code.
    Reworded {
        /// The original error (it decides the exit code).
        source: zkr::Error,
        /// The message shown instead.
        message: String,
    },
    /// Anything else.
    Other(String),
}

impl CliError {
    /// The exit code this error stands for (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Zk(e) | CliError::Reworded { source: e, .. } => zk_exit_code(e),
            CliError::Usage(_) => exit::USAGE,
            CliError::Io { .. } | CliError::Other(_) => exit::GENERIC,
        }
    }

    /// Whether this is stdout being closed by the reader (`zkr watch ... | head -1`): not worth
    /// a message, and not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(
            self,
            CliError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe
        )
    }
}

fn zk_exit_code(e: &zkr::Error) -> u8 {
    use zkr::Error as E;
    match e {
        E::NoNode { .. } => exit::NO_NODE,
        E::NodeExists { .. } => exit::NODE_EXISTS,
        E::BadVersion { .. } => exit::BAD_VERSION,
        E::ConnectionLoss
        | E::SessionLost { .. }
        | E::Timeout { .. }
        | E::Unreachable { .. }
        | E::Tls { .. }
        | E::Closed
        | E::NotReadOnly => exit::CONNECTION,
        E::NoAuth { .. } | E::AuthFailed | E::InvalidAcl { .. } | E::Sasl(_) => exit::AUTH,
        E::InvalidPath { .. } | E::InvalidConnectString { .. } | E::InvalidArgument(_) => {
            exit::USAGE
        }
        E::MultiFailed { source, .. } => zk_exit_code(source),
        _ => exit::GENERIC,
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Zk(zkr::Error::NotEmpty { path }) => {
                write!(
                    f,
                    "node {path} has children and cannot be deleted (use --recursive)"
                )
            }
            CliError::Zk(e) => write!(f, "{e}"),
            CliError::Usage(m) | CliError::Other(m) | CliError::Reworded { message: m, .. } => {
                f.write_str(m)
            }
            CliError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for CliError {}

impl From<zkr::Error> for CliError {
    fn from(e: zkr::Error) -> Self {
        CliError::Zk(e)
    }
}

/// What a command runs with: a connected client (operation deadline applied).
pub struct Ctx {
    /// The client; dropped/closed by the caller after the command.
    pub client: zkr::Client,
}

/// Checks that `--zk` (or `ZK_SERVERS`) is given and well-formed, without connecting.
pub fn check_connect_string(opts: &GlobalOpts) -> Result<&str, CliError> {
    let Some(zk) = opts.zk.as_deref() else {
        return Err(CliError::Usage(
            "no ZooKeeper servers given: use --zk HOST:PORT[,...][/chroot] or set ZK_SERVERS"
                .into(),
        ));
    };
    zkr::path::ConnectString::parse(zk)?;
    Ok(zk)
}

/// Checks the connect string and connects with the global options.
pub async fn connect(opts: &GlobalOpts) -> Result<Ctx, CliError> {
    let zk = check_connect_string(opts)?;
    let mut builder =
        zkr::Client::builder(zk).session_timeout(Duration::from_millis(opts.session_timeout_ms));
    if let Some(t) = opts.timeout {
        builder = builder.connect_timeout(t).operation_timeout(t);
    }
    for a in &opts.auth {
        builder = match (a.scheme.as_str(), a.credentials.split_once(':')) {
            // SASL DIGEST-MD5 login rather than an AuthPacket.
            ("sasl", Some((user, password))) => builder.sasl_digest(user, password),
            _ => builder.auth(&a.scheme, a.credentials.as_bytes()),
        };
    }
    if let Some(tls) = tls_config(opts)? {
        builder = builder.tls(tls);
    }
    let client = builder.connect().await?;
    Ok(Ctx { client })
}

/// Validates a path before anything is sent (so bad input fails fast, even with no server).
pub fn check_path(path: &str, sequential: bool) -> Result<(), CliError> {
    zkr::path::validate_path(path, sequential).map_err(CliError::Zk)
}

/// The bytes of a DATA argument: `-` reads all of stdin, anything else is taken literally.
pub fn data_arg(data: Option<&str>) -> Result<Vec<u8>, CliError> {
    match data {
        None => Ok(Vec::new()),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .map_err(|source| CliError::Io {
                    context: "reading data from stdin",
                    source,
                })?;
            Ok(buf)
        }
        Some(s) => Ok(s.as_bytes().to_vec()),
    }
}

/// A znode's stat as JSON (zkr's field names).
#[derive(Serialize, Clone, Copy, Debug)]
pub struct StatJson {
    /// zxid of the create.
    pub czxid: i64,
    /// zxid of the last data change.
    pub mzxid: i64,
    /// zxid of the last change of the children.
    pub pzxid: i64,
    /// Creation time, ms since the Unix epoch.
    pub ctime: i64,
    /// Last data change, ms since the Unix epoch.
    pub mtime: i64,
    /// Data version.
    pub version: i32,
    /// Children version.
    pub cversion: i32,
    /// ACL version.
    pub aversion: i32,
    /// Owning session of an ephemeral node, else 0.
    pub ephemeral_owner: i64,
    /// Bytes of data.
    pub data_length: i32,
    /// Number of children.
    pub num_children: i32,
}

impl From<&zkr::Stat> for StatJson {
    fn from(s: &zkr::Stat) -> Self {
        StatJson {
            czxid: s.czxid,
            mzxid: s.mzxid,
            pzxid: s.pzxid,
            ctime: s.ctime,
            mtime: s.mtime,
            version: s.version,
            cversion: s.cversion,
            aversion: s.aversion,
            ephemeral_owner: s.ephemeral_owner,
            data_length: s.data_length,
            num_children: s.num_children,
        }
    }
}

fn to_json_line<T: Serialize>(value: &T) -> Result<String, CliError> {
    serde_json::to_string(value).map_err(|e| CliError::Other(format!("cannot encode JSON: {e}")))
}

/// Writes `value` as one JSON line on stdout and flushes (so pipes see each event at once).
pub fn print_json_line<T: Serialize>(value: &T) -> Result<(), CliError> {
    let line = to_json_line(value)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|source| CliError::Io {
            context: "writing to stdout",
            source,
        })
}

/// Writes `value` as one JSON line on stderr.
pub fn eprint_json_line<T: Serialize>(value: &T) -> Result<(), CliError> {
    let line = to_json_line(value)?;
    let mut err = std::io::stderr().lock();
    writeln!(err, "{line}").map_err(|source| CliError::Io {
        context: "writing to stderr",
        source,
    })
}

/// Writes raw bytes on stdout.
pub fn print_raw(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|_| out.flush())
        .map_err(|source| CliError::Io {
            context: "writing to stdout",
            source,
        })
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() -> Result<(), CliError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|source| CliError::Io {
            context: "installing the SIGTERM handler",
            source,
        })?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(|source| CliError::Io { context: "waiting for Ctrl-C", source }),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map_err(|source| CliError::Io {
                context: "waiting for Ctrl-C",
                source,
            })
    }
}

/// Follows `items` (a recipe's or a watch's stream) until Ctrl-C / SIGTERM (`Ok`), until
/// `count` lines were printed (`Ok`), or until the stream ends (the client closed: an error).
/// `print` prints what an item should show and says whether that counts as a line. Session
/// trouble is logged on stderr meanwhile.
pub async fn follow<S: futures::Stream + Unpin>(
    client: &zkr::Client,
    mut items: S,
    count: Option<u64>,
    mut print: impl FnMut(S::Item) -> Result<bool, CliError>,
) -> Result<(), CliError> {
    if count == Some(0) {
        return Ok(());
    }
    let _states = log_session_states(client);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut printed = 0u64;
    loop {
        let next = tokio::select! {
            r = &mut shutdown => return r,
            n = futures::StreamExt::next(&mut items) => n,
        };
        let Some(item) = next else {
            return Err(zkr::Error::Closed.into());
        };
        if print(item)? {
            printed += 1;
        }
        if count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
    }
}

/// Logs session state changes (suspended/lost at `warn`, recoveries at `info`) until the
/// client closes. For long-running commands, so a user sees why events pause.
pub fn log_session_states(client: &zkr::Client) -> tokio::task::JoinHandle<()> {
    let mut states = client.states();
    tokio::spawn(async move {
        while let Some(s) = states.next_state().await {
            match s {
                zkr::SessionState::Suspended { session, .. } => {
                    tracing::warn!(%session, "connection to ZooKeeper suspended; reconnecting")
                }
                zkr::SessionState::Lost {
                    session, reason, ..
                } => {
                    tracing::warn!(%session, ?reason, "ZooKeeper session lost; opening a new one")
                }
                zkr::SessionState::Closed => break,
                other => tracing::info!(state = ?other, "session state"),
            }
        }
    })
}
