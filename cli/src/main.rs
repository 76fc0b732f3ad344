//! `zkr`: a command-line client for ZooKeeper built on the session-managed `zkr::Client`.
//!
//! Exit codes: 0 ok; 1 generic error; 2 usage (bad arguments, invalid path or connect
//! string); 3 node does not exist; 4 node exists; 5 bad version; 6 connection, timeout or
//! session trouble; 9 not authorized (NoAuth, rejected credentials, invalid ACL). Errors are one `zkr: <message>` line on stderr. Logs go to stderr,
//! filtered by `RUST_LOG` (default `warn`).

#![warn(missing_docs)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use zkr_cli::cmd::{
    self, acl, config, elect, id, lock, node, queue, register, ui, watch, CliError, GlobalOpts,
};

/// Command-line client for ZooKeeper (zkr SDK).
#[derive(Parser, Debug)]
#[command(name = "zkr", version)]
#[command(
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 no such node, 4 node exists, \
                        5 bad version, 6 connection/timeout/session trouble, 9 not authorized \
                        (NoAuth, AuthFailed, invalid ACL)."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the children of a node, sorted, one per line
    Ls(node::LsArgs),
    /// Print a node's data (raw) on stdout
    Get(node::GetArgs),
    /// Set a node's data
    Set(node::SetArgs),
    /// Create a node and print its path
    Create(node::CreateArgs),
    /// Delete a node
    Delete(node::DeleteArgs),
    /// Print a node's stat as one JSON line
    Stat(node::StatArgs),
    /// Print one JSON line per change of a node's data (or children) until Ctrl-C
    Watch(watch::WatchArgs),
    /// Run a command while holding a lock (the global --timeout bounds the wait); exits with
    /// the command's status, 7 if not acquired in time, 8 if the lock was lost
    Lock(lock::LockArgs),
    /// Run a command while leader of an election (Curator LeaderLatch compatible); SIGTERM on
    /// loss, then rejoin
    Elect(elect::ElectArgs),
    /// Print the current leader of an election (--watch: one JSON line per change)
    Leader(elect::LeaderArgs),
    /// A JSON config value: get (fresh), set (optionally compare-and-set), watch
    Config(config::ConfigArgs),
    /// Cluster-wide unique IDs (sequential nodes, atomic counter or ID blocks)
    Id(id::IdArgs),
    /// Register a service instance (Curator ServiceDiscovery layout) until Ctrl-C / SIGTERM
    Register(register::RegisterArgs),
    /// Print the live instances of a service (--watch: one JSON line per change)
    Services(register::ServicesArgs),
    /// Work queue with progress: put a task, work tasks, or show every task's status
    Queue(queue::QueueArgs),
    /// A node's ACL: get, set (SCHEME:ID:PERMS entries), or the digest of USER:PASSWORD
    Acl(acl::AclArgs),
    /// Serve a live, read-only web view of locks, elections, config, services, work queues and
    /// the tree (page embedded; loopback by default) until Ctrl-C
    Ui(ui::UiArgs),
}

/// Input a command needs that is read before connecting (so that e.g. stdin is consumed and
/// paths are checked even when no server is reachable).
enum Input {
    None,
    Data(Vec<u8>),
}

impl Command {
    /// Validates paths and reads data arguments; nothing is sent yet.
    fn prepare(&self) -> Result<Input, CliError> {
        match self {
            Command::Ls(a) => cmd::check_path(&a.path, false).map(|_| Input::None),
            Command::Get(a) => cmd::check_path(&a.path, false).map(|_| Input::None),
            Command::Stat(a) => cmd::check_path(&a.path, false).map(|_| Input::None),
            Command::Delete(a) => cmd::check_path(&a.path, false).map(|_| Input::None),
            Command::Watch(a) => cmd::check_path(&a.path, false).map(|_| Input::None),
            Command::Lock(a) => cmd::check_path(&a.path, false).map(|_| Input::None),
            Command::Elect(a) => cmd::check_path(&a.path, false).map(|_| Input::None),
            Command::Leader(a) => cmd::check_path(&a.path, false).map(|_| Input::None),
            Command::Id(a) => cmd::check_path(a.op.path(), false).map(|_| Input::None),
            Command::Services(a) => cmd::check_path(&a.base, false).map(|_| Input::None),
            Command::Acl(a) => cmd::check_path(a.op.path(), false).map(|_| Input::None),
            Command::Ui(a) => cmd::check_path(&a.root, false).map(|_| Input::None),
            Command::Register(a) => {
                cmd::check_path(&a.base, false)?;
                let data = cmd::data_arg(a.data.as_deref())?;
                register::parse_payload(&data)?;
                Ok(Input::Data(data))
            }
            Command::Queue(a) => {
                cmd::check_path(a.op.path(), false)?;
                match &a.op {
                    queue::QueueOp::Put { json, .. } => {
                        let data = cmd::data_arg(Some(json))?;
                        register::parse_payload(&data)?;
                        Ok(Input::Data(data))
                    }
                    _ => Ok(Input::None),
                }
            }
            Command::Config(a) => {
                cmd::check_path(a.op.path(), false)?;
                match &a.op {
                    config::ConfigOp::Set { json, .. } => {
                        let data = cmd::data_arg(Some(json))?;
                        config::parse_json(&data)?;
                        Ok(Input::Data(data))
                    }
                    _ => Ok(Input::None),
                }
            }
            Command::Set(a) => {
                cmd::check_path(&a.path, false)?;
                cmd::data_arg(Some(&a.data)).map(Input::Data)
            }
            Command::Create(a) => {
                cmd::check_path(&a.path, a.sequential)?;
                if a.path == "/" {
                    return Err(CliError::Usage("cannot create the root node".into()));
                }
                cmd::data_arg(a.data.as_deref()).map(Input::Data)
            }
        }
    }

    /// Runs the command; `Ok(code)` is the process exit code (non-zero only for commands that
    /// run a child, like `lock`).
    async fn run(&self, ctx: &cmd::Ctx, input: Input, global: &GlobalOpts) -> Result<u8, CliError> {
        if let Command::Elect(a) = self {
            return elect::elect(ctx, a).await;
        }
        if let Command::Lock(a) = self {
            return lock::run(ctx, a, global.timeout).await.map(|e| e.0);
        }
        self.run_node(ctx, input).await.map(|()| 0)
    }

    async fn run_node(&self, ctx: &cmd::Ctx, input: Input) -> Result<(), CliError> {
        let data = match &input {
            Input::Data(d) => d.as_slice(),
            Input::None => &[],
        };
        match self {
            Command::Ls(a) => node::ls(ctx, a).await,
            Command::Get(a) => node::get(ctx, a).await,
            Command::Set(a) => node::set(ctx, a, data).await,
            Command::Create(a) => node::create(ctx, a, data).await,
            Command::Delete(a) => node::delete(ctx, a).await,
            Command::Stat(a) => node::stat(ctx, a).await,
            Command::Watch(a) => watch::run(ctx, a).await,
            Command::Lock(_) => Ok(()),
            Command::Elect(_) => Ok(()),
            Command::Leader(a) => elect::leader(ctx, a).await,
            Command::Config(a) => config::run(ctx, a, data).await,
            Command::Id(a) => id::run(ctx, a).await,
            Command::Register(a) => {
                register::register(ctx, a, register::parse_payload(data)?).await
            }
            Command::Services(a) => register::services(ctx, a).await,
            Command::Queue(a) => queue::run(ctx, a, data).await,
            Command::Acl(a) => acl::run(ctx, a).await,
            Command::Ui(a) => ui::run(ctx, a).await,
        }
    }
}

async fn run(cli: Cli) -> Result<u8, CliError> {
    if let Command::Acl(acl::AclArgs {
        op: acl::AclOp::Digest { credentials },
    }) = &cli.command
    {
        cmd::print_raw(format!("{}\n", acl::digest(credentials)?).as_bytes())?;
        return Ok(0);
    }
    cmd::check_auth(&cli.global)?;
    cmd::check_connect_string(&cli.global)?;
    let input = cli.command.prepare()?;
    let ctx = cmd::connect(&cli.global).await?;
    let result = cli.command.run(&ctx, input, &cli.global).await;
    ctx.client.close().await;
    result
}

fn main() -> ExitCode {
    zkr_cli::install_panic_hook("zkr");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help / --version print and exit 0; real usage errors exit 2.
        Err(e) => e.exit(),
    };
    zkr_cli::init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zkr: cannot start the async runtime: {e}");
            return ExitCode::from(cmd::exit::GENERIC);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zkr: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_valid() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    /// Extreme durations and counts on the command line are usage errors or accepted, never a
    /// panic.
    #[test]
    fn extreme_arguments_never_panic() {
        use clap::Parser;
        for timeout in [
            "100000000000000000000s",
            "1e400",
            "99999999999999999999999999999m",
            "18446744073709551615s",
            "0.0000000001ms",
            "-1s",
            "NaN",
            "inf",
            "",
        ] {
            let r = std::panic::catch_unwind(|| {
                super::Cli::try_parse_from(["zkr", "--timeout", timeout, "get", "/x"])
            });
            assert!(r.is_ok(), "--timeout {timeout:?} panicked");
        }
        let r =
            super::Cli::try_parse_from(["zkr", "--timeout", "100000000000000000000s", "get", "/x"]);
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("too long"), "{e}");
        for count in ["18446744073709551615", "99999999999999999999999", "-1"] {
            let r = std::panic::catch_unwind(|| {
                super::Cli::try_parse_from(["zkr", "id", "next", "/ids", "--count", count])
            });
            assert!(r.is_ok(), "--count {count:?} panicked");
        }
    }
}

#[cfg(test)]
mod arg_props;
