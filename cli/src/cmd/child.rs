//! Running a command while something is held (`zkr lock`, `zkr elect`): the child gets SIGTERM
//! when the hold is lost or when `zkr` itself is told to stop, and SIGKILL if it ignores that
//! for [`GRACE`]. The child runs in its own process group, and the signals go to that group (by
//! its id), so that a shell's own children (`sh -c 'a; b'`) are stopped too.

use std::process::ExitStatus;
use std::time::Duration;

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

/// Starts `argv` and waits until it exits, `stop` completes, or `zkr` is interrupted.
pub async fn run_while(
    argv: &[String],
    stop: impl std::future::Future<Output = ()>,
) -> Result<Ended, CliError> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(CliError::Usage("no command given (put it after --)".into()));
    };
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CliError::Other(format!("cannot start {prog:?}: {e}")))?;
    let pid = child.id();
    let interrupted = super::shutdown_signal();
    tokio::select! {
        r = child.wait() => r.map(Ended::Finished).map_err(|source| CliError::Io { context: "waiting for the command", source }),
        _ = stop => {
            let status = terminate(&mut child, pid).await?;
            Ok(Ended::Stopped(status))
        }
        _ = interrupted => {
            let status = terminate(&mut child, pid).await?;
            Ok(Ended::Interrupted(status))
        }
    }
}

/// SIGTERM to the child's process group, then SIGKILL to it after the grace period.
async fn terminate(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
) -> Result<ExitStatus, CliError> {
    signal_group(pid, Signal::TERM);
    match tokio::time::timeout(GRACE, child.wait()).await {
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
