//! `zkr elect PATH --id ID -- CMD ARGS...`: takes part in a Curator-compatible leader election
//! on PATH and runs CMD while leader; CMD gets `ZKR_LOCK_PATH`, `ZKR_LOCK_NODE` (our latch node)
//! and `ZKR_FENCING_TOKEN` (the leader's fence, increasing across leaders) in its environment.
//! CMD gets SIGTERM when leadership is lost (SIGKILL after a grace period, and never later than
//! the leadership's lease deadline), and `zkr` then rejoins the election. When CMD exits on its own, `zkr`
//! resigns (so another candidate takes over at once) and rejoins after `--restart-delay`, or,
//! with `--once`, exits with CMD's status. On SIGINT/SIGTERM the command is terminated, `zkr`
//! resigns and exits with the command's status (130 if none ran).
//!
//! Events are printed as JSON lines on stderr (stdout belongs to CMD):
//! `{"event":"leader","epoch":...}`, `{"event":"lost"}`, `{"event":"exited","code":...}`.
//!
//! `zkr leader PATH` prints the current leader's id (exit 3 if nobody leads); with `--watch`
//! it prints one JSON line per change of leader until Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use zkr_recipes::{leader_observer, LeaderObserver, LeaderSelector, LossPolicy};

use super::child::{self, Ended};
use super::{CliError, Ctx};

/// Arguments of `zkr elect`.
#[derive(clap::Args, Debug)]
pub struct ElectArgs {
    /// Election path (shared with Curator's LeaderLatch)
    pub path: String,
    /// Participant id stored in our node (default: HOSTNAME-PID)
    #[arg(long)]
    pub id: Option<String>,
    /// Exit with the command's status once it exits on its own, instead of rejoining
    #[arg(long)]
    pub once: bool,
    /// Keep leading while the connection is suspended; give up only when the session is lost
    #[arg(long)]
    pub keep_on_suspend: bool,
    /// ActiveBreadCrumb mode: before leading, if the previous leader did not resign cleanly,
    /// run this shell command with its id in `ZKR_FENCE_ID`; take over only if it exits 0
    #[arg(long, value_name = "SHELL-COMMAND")]
    pub fence_cmd: Option<String>,
    /// Where the breadcrumb (data = the active's id) lives (default: PATH-breadcrumb)
    #[arg(long, requires = "fence_cmd", value_name = "ZNODE")]
    pub breadcrumb: Option<String>,
    /// Pause before rejoining after the command exited on its own
    #[arg(long, value_parser = super::parse_duration, default_value = "1s", value_name = "DURATION")]
    pub restart_delay: Duration,
    /// The command to run while leader
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Arguments of `zkr leader`.
#[derive(clap::Args, Debug)]
pub struct LeaderArgs {
    /// Election path
    pub path: String,
    /// Print one JSON line per change of leader until Ctrl-C
    #[arg(long)]
    pub watch: bool,
}

/// Runs the fence command (`sh -c CMD`) with the previous active's id in `ZKR_FENCE_ID`;
/// `true` if it exits 0.
async fn fence(cmd: String, path: String, previous: String) -> bool {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .env("ZKR_FENCE_ID", &previous)
        .env("ZKR_LOCK_PATH", &path)
        .kill_on_drop(true)
        .status()
        .await;
    match status {
        Ok(s) if s.success() => true,
        Ok(s) => {
            tracing::warn!(previous = %previous, status = %s, "the fence command failed");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot run the fence command");
            false
        }
    }
}

#[derive(Serialize)]
struct Event<'a> {
    event: &'a str,
    path: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u8>,
}

#[derive(Clone, Copy, Debug)]
enum TermEnd {
    /// The command exited by itself.
    Exited(u8),
    /// Leadership lost; the command was terminated.
    Lost,
    /// zkr was told to stop; the command was terminated with this status.
    Interrupted(u8),
    Failed,
}

fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

/// Runs `zkr elect`; returns the exit code.
pub async fn elect(ctx: &Ctx, args: &ElectArgs) -> Result<u8, CliError> {
    let id = args.id.clone().unwrap_or_else(default_id);
    let path = args.path.as_str();
    let ev = |event: &str, epoch: Option<i64>, code: Option<u8>| {
        let _ = super::eprint_json_line(&Event {
            event,
            path,
            id: &id,
            epoch,
            code,
        });
    };
    let _states = super::log_session_states(&ctx.client);
    let error: Arc<Mutex<Option<CliError>>> = Arc::new(Mutex::new(None));
    // Set before the selector is stopped on SIGINT/SIGTERM, so a term ending then is reported
    // as interrupted (with the command's status), not as lost.
    let signalled = Arc::new(AtomicBool::new(false));
    loop {
        let selector = LeaderSelector::new(&ctx.client, path)
            .map_err(recipe_error)?
            .with_id(id.clone())
            .with_loss_policy(if args.keep_on_suspend {
                LossPolicy::Lost
            } else {
                LossPolicy::Suspended
            })
            .with_requeue(false)
            // The command gets SIGTERM, then SIGKILL after child::GRACE: let that finish.
            .with_grace(child::GRACE + Duration::from_secs(2));
        let selector = match &args.fence_cmd {
            Some(cmd) => {
                let crumb = args
                    .breadcrumb
                    .clone()
                    .unwrap_or_else(|| format!("{path}-breadcrumb"));
                let (cmd, path) = (cmd.clone(), path.to_string());
                selector.with_active_breadcrumb(&crumb, move |previous| {
                    fence(cmd.clone(), path.clone(), previous)
                })
            }
            None => selector,
        };
        let handle = selector.handle();
        let last: Arc<Mutex<Option<TermEnd>>> = Arc::new(Mutex::new(None));
        ev("joined", None, None);
        let run = selector.run(|leadership| {
            let (last, handle, error) = (last.clone(), handle.clone(), error.clone());
            let signalled = signalled.clone();
            let ev = &ev;
            let argv = &args.command;
            async move {
                ev("leader", Some(leadership.fence().token), None);
                let lease = || leadership.valid_until();
                let hold = child::Hold {
                    path,
                    node: &leadership.fence().path,
                    token: leadership.fence().token,
                    lease: &lease,
                };
                let end = match child::run_while(argv, hold, leadership.lost()).await {
                    Ok(Ended::Finished(s)) => TermEnd::Exited(child::exit_code(&s)),
                    Ok(Ended::Stopped(s)) if signalled.load(Ordering::Acquire) => {
                        TermEnd::Interrupted(child::exit_code(&s))
                    }
                    Ok(Ended::Stopped(_)) => TermEnd::Lost,
                    Ok(Ended::Interrupted(s)) => {
                        handle.stop();
                        TermEnd::Interrupted(child::exit_code(&s))
                    }
                    Err(e) => {
                        *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        handle.stop();
                        TermEnd::Failed
                    }
                };
                match end {
                    TermEnd::Exited(c) => ev("exited", None, Some(c)),
                    TermEnd::Lost => ev("lost", None, None),
                    TermEnd::Interrupted(c) => ev("interrupted", None, Some(c)),
                    TermEnd::Failed => {}
                }
                // After a loss the selector keeps our place in the election and calls us again.
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
            }
        });
        tokio::pin!(run);
        let r = tokio::select! {
            r = &mut run => r,
            _ = super::shutdown_signal() => {
                signalled.store(true, Ordering::Release);
                handle.stop();
                run.await
            }
        };
        if let Some(e) = error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        r.map_err(recipe_error)?;
        let end = *last.lock().unwrap_or_else(|p| p.into_inner());
        match end {
            Some(TermEnd::Interrupted(c)) => return Ok(c),
            _ if signalled.load(Ordering::Acquire) => return Ok(130),
            Some(TermEnd::Exited(c)) if args.once => return Ok(c),
            Some(TermEnd::Exited(_)) => {
                tokio::select! {
                    _ = tokio::time::sleep(args.restart_delay) => {}
                    _ = super::shutdown_signal() => return Ok(130),
                }
            }
            _ => {}
        }
    }
}

fn recipe_error(e: zkr_recipes::Error) -> CliError {
    match e {
        zkr_recipes::Error::Zk(e) => CliError::Zk(e),
        e => CliError::Other(e.to_string()),
    }
}

#[derive(Serialize)]
struct LeaderLine {
    leader: Option<String>,
    node: Option<String>,
    epoch: Option<i64>,
}

/// Runs `zkr leader`.
pub async fn leader(ctx: &Ctx, args: &LeaderArgs) -> Result<(), CliError> {
    if !args.watch {
        return match leader_observer::leader(&ctx.client, &args.path)
            .await
            .map_err(recipe_error)?
        {
            Some(p) => super::print_raw(format!("{}\n", p.id).as_bytes()),
            None => Err(CliError::Reworded {
                source: zkr::Error::NoNode {
                    path: args.path.clone(),
                },
                message: format!("nobody leads {}", args.path),
            }),
        };
    }
    let _states = super::log_session_states(&ctx.client);
    let observer = LeaderObserver::new(&ctx.client, &args.path).map_err(recipe_error)?;
    observer.start().map_err(recipe_error)?;
    let mut obs = observer.changes();
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            ev = obs.next() => match ev {
                // Ends when the client is closed, or for good when ZooKeeper refuses us.
                None => {
                    return match observer.state() {
                        zkr_recipes::ObserverState::Failed(e) => Err(recipe_error(e)),
                        _ => Ok(()),
                    }
                }
                Some(p) => super::print_json_line(&LeaderLine {
                    leader: p.as_ref().map(|p| p.id.clone()),
                    node: p.as_ref().map(|p| p.path.clone()),
                    epoch: p.as_ref().map(|p| p.token),
                })?,
            },
            r = &mut stop => return r,
        }
    }
}
