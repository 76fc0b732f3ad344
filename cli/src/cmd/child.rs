//! Running a command while something is held (`zkr lock`, `zkr elect`).
//!
//! * The child gets what it needs to fence its writes in its environment: `ZKR_LOCK_PATH`,
//!   `ZKR_LOCK_NODE` and `ZKR_FENCING_TOKEN` (like etcdctl's `ETCD_LOCK_KEY`/`ETCD_LOCK_REV`).
//! * It gets SIGTERM when the hold is lost or when `zkr` itself is told to stop, and SIGKILL if
//!   it ignores that for [`GRACE`] — but never later than the hold's *lease* deadline: past it
//!   the server may hand the lock (or leadership) to someone else, and the old child must be
//!   gone by then. If the lease runs out while nothing else happened (a process paused, say),
//!   the child is killed at once.
//! * The child runs in its own process group, and the signals go to that group (by its id), so
//!   that a shell's own children (`sh -c 'a; b'`) are stopped too.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

use super::CliError;

/// How long a child may take to exit after SIGTERM before it gets SIGKILL.
pub const GRACE: Duration = Duration::from_secs(10);

/// How a child run ended.
#[derive(Debug)]
pub enum Ended {
    /// The child exited on its own.
    Finished(ExitStatus),
    /// `stop` fired first; the child was terminated.
    Stopped(ExitStatus),
    /// `zkr` got SIGINT/SIGTERM; it was passed on to the child.
    Interrupted(ExitStatus),
}

/// The shell-style exit code of a status: the code, or 128 + the signal.
pub fn exit_code(status: &ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        _ => 1,
    }
}

/// What the child is told about its hold, and until when it may act on it.
pub struct Hold<'a> {
    /// `ZKR_LOCK_PATH`: the lock or election path.
    pub path: &'a str,
    /// `ZKR_LOCK_NODE`: our lock or latch node.
    pub node: &'a str,
    /// `ZKR_FENCING_TOKEN`: the lock's fencing token, or the leader's fence.
    pub token: i64,
    /// The hold's lease deadline, read afresh each time (it moves on while the session is
    /// confirmed); `None` once the session is over.
    pub lease: &'a (dyn Fn() -> Option<Instant> + Sync),
}

/// Completes once the hold's lease has run out.
async fn lease_end(lease: &(dyn Fn() -> Option<Instant> + Sync)) {
    loop {
        let Some(until) = lease() else { return };
        if Instant::now() >= until {
            return;
        }
        tokio::time::sleep_until(until.into()).await;
    }
}

/// Starts `argv` and waits until it exits, `stop` completes, the lease runs out, or `zkr` is
/// interrupted.
pub async fn run_while(
    argv: &[String],
    hold: Hold<'_>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Ended, CliError> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(CliError::Usage("no command given (put it after --)".into()));
    };
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .env("ZKR_LOCK_PATH", hold.path)
        .env("ZKR_LOCK_NODE", hold.node)
        .env("ZKR_FENCING_TOKEN", hold.token.to_string())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CliError::Other(format!("cannot start {prog:?}: {e}")))?;
    let pid = child.id();
    let interrupted = super::shutdown_signal();
    let kill_by = || (hold.lease)().unwrap_or_else(Instant::now);
    tokio::select! {
        r = child.wait() => r.map(Ended::Finished).map_err(|source| CliError::Io { context: "waiting for the command", source }),
        _ = stop => {
            let status = terminate(&mut child, pid, kill_by()).await?;
            Ok(Ended::Stopped(status))
        }
        _ = lease_end(hold.lease) => {
            tracing::warn!("the lease ran out while the command ran; killing it");
            let status = terminate(&mut child, pid, Instant::now()).await?;
            Ok(Ended::Stopped(status))
        }
        _ = interrupted => {
            let status = terminate(&mut child, pid, kill_by()).await?;
            Ok(Ended::Interrupted(status))
        }
    }
}

/// SIGTERM to the child's process group, then SIGKILL to it after the grace period or at
/// `kill_by`, whichever comes first.
async fn terminate(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
    kill_by: Instant,
) -> Result<ExitStatus, CliError> {
    signal_group(pid, Signal::TERM);
    let grace = GRACE.min(kill_by.saturating_duration_since(Instant::now()));
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(r) => r.map_err(|source| CliError::Io {
            context: "waiting for the command",
            source,
        }),
        Err(_) => {
            signal_group(pid, Signal::KILL);
            let _ = child.start_kill();
            child.wait().await.map_err(|source| CliError::Io {
                context: "waiting for the command",
                source,
            })
        }
    }
}

/// Sends `sig` to the process group we created for our child (its pid is the group id; the
/// child is not reaped yet, so the id is still ours). Errors (the group is already gone) are
/// ignored, as before.
fn signal_group(pid: Option<u32>, sig: Signal) {
    if let Some(group) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(Pid::from_raw)
    {
        let _ = kill_process_group(group, sig);
    }
}
