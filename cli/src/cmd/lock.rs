//! `zkr lock PATH [--read|--write] [--timeout DUR] -- CMD ARGS...`: runs CMD while holding a
//! Curator-compatible lock on PATH (like `etcdctl lock`).
//!
//! * Exits with CMD's status (128 + signal if it was killed by one).
//! * CMD gets `ZKR_LOCK_PATH`, `ZKR_LOCK_NODE` and `ZKR_FENCING_TOKEN` (the lock node's czxid,
//!   increasing across holders) in its environment, to fence its writes.
//! * If the lock is lost while CMD runs (the session is suspended or lost), CMD gets SIGTERM
//!   and `zkr` exits with [`LOCK_LOST`] and a clear message; its process group gets SIGKILL no
//!   later than the lock's lease deadline, before the server can hand the lock on.
//! * If the lock is not acquired within `--timeout`, `zkr` exits with [`LOCK_TIMEOUT`] and CMD
//!   is not started.

use std::time::Duration;

use zkr_recipes::{Mutex, RwLock};

use super::child::{self, Ended};
use super::{CliError, Ctx};

use super::exit::{LOCK_LOST, LOCK_TIMEOUT};

/// Arguments of `zkr lock`.
#[derive(clap::Args, Debug)]
pub struct LockArgs {
    /// Lock path (shared with Curator's InterProcessMutex / InterProcessReadWriteLock)
    pub path: String,
    /// Take a shared read lock (Curator's InterProcessReadWriteLock)
    #[arg(long, conflicts_with = "write")]
    pub read: bool,
    /// Take the exclusive write lock of a read/write lock
    #[arg(long)]
    pub write: bool,
    /// The command to run while holding the lock
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What `zkr lock` ended with.
pub struct LockExit(pub u8);

/// Acquires (within `wait`, if given), runs the command, releases.
pub async fn run(ctx: &Ctx, args: &LockArgs, wait: Option<Duration>) -> Result<LockExit, CliError> {
    let client = &ctx.client;
    let acquired = async {
        if args.read || args.write {
            let l = RwLock::new(client, &args.path)?;
            match (args.write, wait) {
                (true, Some(d)) => l.write_timeout(d).await,
                (true, None) => l.write().await,
                (false, Some(d)) => l.read_timeout(d).await,
                (false, None) => l.read().await,
            }
        } else {
            let m = Mutex::new(client, &args.path)?;
            match wait {
                Some(d) => m.acquire_timeout(d).await,
                None => m.acquire().await,
            }
        }
    };
    let guard = tokio::select! {
        g = acquired => match g {
            Ok(g) => g,
            Err(zkr_recipes::Error::Timeout { after, .. }) => {
                eprintln!("zkr: lock {} not acquired within {after:?}", args.path);
                return Ok(LockExit(LOCK_TIMEOUT));
            }
            Err(zkr_recipes::Error::Zk(e)) => return Err(e.into()),
            Err(e) => return Err(CliError::Other(e.to_string())),
        },
        _ = super::shutdown_signal() => return Ok(LockExit(130)),
    };
    tracing::info!(
        node = guard.fence().path.as_str(),
        token = guard.fence().token,
        "lock acquired"
    );
    let lease = || Some(guard.valid_until());
    let hold = child::Hold {
        path: &args.path,
        node: guard.fence().path.as_str(),
        token: guard.fence().token,
        lease: &lease,
    };
    let ended = child::run_while(&args.command, hold, guard.lost()).await;
    let code = match ended {
        Ok(Ended::Finished(s)) | Ok(Ended::Interrupted(s)) => LockExit(child::exit_code(&s)),
        Ok(Ended::Stopped(_)) => {
            eprintln!("zkr: lock {} lost (ZooKeeper session suspended or expired); the command was terminated", args.path);
            LockExit(LOCK_LOST)
        }
        Err(e) => {
            let _ = guard.release().await;
            return Err(e);
        }
    };
    match guard.release().await {
        Ok(()) => {}
        Err(e) if code.0 == LOCK_LOST => tracing::debug!(error = %e, "release after loss"),
        Err(e) => tracing::warn!(error = %e, "releasing the lock failed; it goes with the session"),
    }
    Ok(code)
}
