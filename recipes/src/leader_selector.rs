//! Run-while-leader (Curator's `LeaderSelector` style), built on the [leader latch](crate::leader_latch).
//!
//! # Znode layout
//! The same as the leader latch (`<path>/_c_<uuid>-latch-NNNNNNNNNN`, data = participant id):
//! selectors, latches and Curator `LeaderLatch`es on one path take part in one election.
//!
//! # Behaviour
//! [`LeaderSelector::run`] joins the election and, each time this candidate becomes leader,
//! calls the closure with a [`Leadership`] token (the [`Fence`] and a future that completes when
//! leadership ends). Then:
//! * **the closure returns**: we resign (our node is deleted, the next candidate takes over
//!   within one notification) and, unless [`LeaderSelector::with_requeue`] is `false`, join
//!   again at the back of the line;
//! * **leadership is lost** (`Suspended` by default, `Lost`, or our node deleted): the token
//!   fires at once; the closure's future gets [`LeaderSelector::with_grace`] (default zero) to
//!   finish and is then dropped (cancelled). The candidate keeps its place: after `Reconnected`
//!   with its node intact it leads again; after `Lost` it rejoins with a new node;
//! * **[`SelectorHandle::interrupt`]**: the token fires, the closure's future is treated as
//!   after a loss, and we resign and rejoin. Interrupting any number of times (also while not
//!   leading) never stops the candidate from rejoining;
//! * **[`SelectorHandle::stop`]** (or dropping every handle *and* the `run` future): the token
//!   fires, we resign and `run` returns.
//!
//! # ActiveBreadCrumb (opt-in fencing of a previous active)
//! With [`LeaderSelector::with_active_breadcrumb`] the selector works like Hadoop's
//! `ActiveStandbyElector`. The active keeps a *persistent* breadcrumb node (data = its id) at a
//! path of the application's choosing:
//! * a newly elected leader reads it first. If it names another participant, that participant
//!   did not resign cleanly (it crashed, or was cut off and may still be running): the fence
//!   step runs with its id *before* the closure, and only if the fence succeeds does this
//!   candidate take over; otherwise it resigns and tries again later;
//! * taking over writes our id into the breadcrumb, in one `multi` with a check that our latch
//!   node still exists (a leader that already lost its node cannot overwrite it);
//! * a clean resignation (the closure returns, an interrupt, a stop) deletes the breadcrumb, so
//!   the next leader fences nobody; a lost term leaves it for the next leader to fence.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use zkr_recipes::LeaderSelector;
//!
//! let selector = LeaderSelector::new(&client, "/app/election")?.with_id("worker-1");
//! selector
//!     .run(|leadership| async move {
//!         println!("leading with fencing token {}", leadership.fence().token);
//!         // Do leader work until leadership is lost (or return to hand it over).
//!         leadership.lost().await;
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;
use zkr::Client;

use crate::error::Result;
use crate::hold::{Fence, LossPolicy};
use crate::leader_latch::{LatchState, LeaderLatch};

/// The fence step of the ActiveBreadCrumb mode: given the id of the previous active, resolves
/// to whether it has been fenced (made harmless).
type FenceFn = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

#[derive(Clone)]
struct Breadcrumb {
    path: String,
    fence: FenceFn,
}

impl std::fmt::Debug for Breadcrumb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breadcrumb")
            .field("path", &self.path)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Control {
    interrupts: u64,
    stopped: bool,
}

/// Runs a closure while leader; see the [module docs](self).
///
/// [`new`](Self::new) only validates; options are chained `with_*` calls; [`run`](Self::run)
/// takes part in the election.
pub struct LeaderSelector {
    client: Client,
    path: String,
    id: String,
    loss_policy: LossPolicy,
    requeue: bool,
    grace: Duration,
    breadcrumb: Option<Breadcrumb>,
    ctl: Arc<watch::Sender<Control>>,
    leading: Arc<watch::Sender<Option<Fence>>>,
}

impl std::fmt::Debug for LeaderSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderSelector")
            .field("path", &self.path)
            .field("id", &self.id)
            .field("loss_policy", &self.loss_policy)
            .field("requeue", &self.requeue)
            .field("grace", &self.grace)
            .field("breadcrumb", &self.breadcrumb)
            .finish()
    }
}

/// Controls a running [`LeaderSelector`] from elsewhere.
#[derive(Clone, Debug)]
#[must_use = "the selector stops when its handle is dropped"]
pub struct SelectorHandle {
    ctl: Arc<watch::Sender<Control>>,
    state: watch::Receiver<Option<Fence>>,
}

impl SelectorHandle {
    /// Ends the current term (if leading): the token fires, we resign and rejoin.
    pub fn interrupt(&self) {
        self.ctl.send_modify(|c| c.interrupts += 1);
    }

    /// Resigns and makes `run` return.
    pub fn stop(&self) {
        self.ctl.send_modify(|c| c.stopped = true);
    }

    /// The fence of the current term, while the closure runs as leader.
    pub fn leading(&self) -> Option<Fence> {
        self.state.borrow().clone()
    }
}

/// Given to the closure for one term of leadership.
#[derive(Clone, Debug)]
#[must_use = "leadership is given up when this is dropped"]
pub struct Leadership {
    fence: Fence,
    client: Client,
    latch: watch::Receiver<LatchState>,
    ended: watch::Receiver<bool>,
}

impl Leadership {
    /// This term's fence (stamp writes with `fence().token`).
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Whether leadership has ended (lost, interrupted or stopped), or may have: also true
    /// once the lease of the session that owns the latch node ran out
    /// ([`valid_until`](Self::valid_until)), checked at the moment of the call.
    pub fn is_lost(&self) -> bool {
        *self.ended.borrow()
            || self.latch.borrow().fence() != Some(&self.fence)
            || self
                .valid_until()
                .is_none_or(|until| std::time::Instant::now() >= until)
    }

    /// Until when this term is certainly still ours: the lease of the session that owns the
    /// latch node (see [`zkr::Client::valid_until`]); `None` once that session is over.
    pub fn valid_until(&self) -> Option<std::time::Instant> {
        self.client.lease_of(self.fence.session)
    }

    /// Completes when leadership ends (lost, interrupted or stopped).
    ///
    /// # Errors
    /// None: it only completes.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    pub async fn lost(&self) {
        let (mut latch, mut ended) = (self.latch.clone(), self.ended.clone());
        let fence = &self.fence;
        tokio::select! {
            _ = latch.wait_for(|s| s.fence() != Some(fence)) => {}
            _ = ended.wait_for(|e| *e) => {}
        }
    }
}

impl LeaderSelector {
    /// A selector for the election at `path` (participant id empty, like Curator's default).
    /// Validates the path; does no I/O (nothing happens until [`run`](Self::run)).
    pub fn new(client: &Client, path: &str) -> Result<LeaderSelector> {
        zkr::path::validate_path(path, false)?;
        Ok(LeaderSelector {
            client: client.clone(),
            path: path.to_string(),
            id: String::new(),
            loss_policy: LossPolicy::default(),
            requeue: true,
            grace: Duration::ZERO,
            breadcrumb: None,
            ctl: Arc::new(watch::channel(Control::default()).0),
            leading: Arc::new(watch::channel(None).0),
        })
    }

    /// Participant id (node data).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// When to give up leadership on connection trouble (default [`LossPolicy::Suspended`]).
    pub fn with_loss_policy(mut self, policy: LossPolicy) -> Self {
        self.loss_policy = policy;
        self
    }

    /// Whether to join again after the closure returns (default `true`). With `false`, `run`
    /// returns after the first term that ended by the closure returning.
    pub fn with_requeue(mut self, requeue: bool) -> Self {
        self.requeue = requeue;
        self
    }

    /// How long the closure's future may keep running after leadership ended before it is
    /// dropped (default zero: dropped at once).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// ActiveBreadCrumb mode (see the [module docs](self#activebreadcrumb-opt-in-fencing-of-a-previous-active)):
    /// keep a persistent breadcrumb with our id at `path` while leading, and before leading
    /// run `fence(previous id)` if the breadcrumb names another participant; take over only if
    /// it resolves to `true`. The path is validated by [`run`](Self::run).
    pub fn with_active_breadcrumb<F, Fut>(mut self, path: &str, fence: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let fence: FenceFn = Arc::new(move |id| Box::pin(fence(id)));
        self.breadcrumb = Some(Breadcrumb {
            path: path.to_string(),
            fence,
        });
        self
    }

    /// A handle to interrupt or stop the selector while `run` runs.
    pub fn handle(&self) -> SelectorHandle {
        SelectorHandle {
            ctl: self.ctl.clone(),
            state: self.leading.subscribe(),
        }
    }

    /// Takes part in the election until stopped, running `f` during each term of leadership.
    /// Returns `Ok` when stopped (or, with `with_requeue(false)`, after the closure returned
    /// once).
    ///
    /// # Errors
    /// Only if the client was closed, the breadcrumb path is invalid, or the election's ACL
    /// refuses us; other failures to join are retried with backoff.
    ///
    /// # Cancel safety
    /// Dropping the future ends the current term (the closure's future is dropped) and resigns
    /// in the background, like a stop.
    pub async fn run<F, Fut>(self, mut f: F) -> Result<()>
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()>,
    {
        let span = tracing::info_span!("zkr.leader_selector.run", path = %self.path, id = %self.id);
        if let Some(bc) = &self.breadcrumb {
            zkr::path::validate_path(&bc.path, false)?;
        }
        async move {
            let b = &self;
            let mut ctl = self.ctl.subscribe();
            let mut backoff = crate::retry::backoff(Duration::from_secs(2));
            loop {
                if ctl.borrow().stopped {
                    return Ok(());
                }
                let latch = LeaderLatch::new(&b.client, &b.path, b.id.clone())?
                    .with_loss_policy(b.loss_policy);
                let r = tokio::select! {
                    r = latch.start() => r,
                    _ = wait_stopped(&mut ctl) => return Ok(()),
                };
                match r {
                    Ok(()) => {}
                    Err(e)
                        if e.is_zk(|z| {
                            matches!(z, zkr::Error::Closed | zkr::Error::InvalidPath { .. })
                                || z.is_auth_error()
                        }) =>
                    {
                        return Err(e)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not join the election; retrying");
                        tokio::select! {
                            _ = backoff.wait() => {}
                            _ = wait_stopped(&mut ctl) => return Ok(()),
                        }
                        continue;
                    }
                }
                backoff = crate::retry::backoff(Duration::from_secs(2));
                let mut state = latch.state_rx();
                loop {
                    let fence = tokio::select! {
                        r = latch.wait_leader() => match r {
                            Ok(f) => f,
                            Err(_) => break,
                        },
                        _ = wait_stopped(&mut ctl) => {
                            let _ = latch.close().await;
                            return Ok(());
                        }
                    };
                    if let Some(bc) = &b.breadcrumb {
                        if let Err(why) = take_over(&b.client, bc, &b.id, &fence).await {
                            tracing::warn!(%why, "not taking over; resigning");
                            let _ = latch.close().await;
                            tokio::select! {
                                _ = backoff.wait() => {}
                                _ = wait_stopped(&mut ctl) => return Ok(()),
                            }
                            break;
                        }
                    }
                    // Interrupts sent while we were not leading do not count.
                    let seen = ctl.borrow_and_update().interrupts;
                    let (ended_tx, ended_rx) = watch::channel(false);
                    let token = Leadership {
                        fence: fence.clone(),
                        client: self.client.clone(),
                        latch: latch.state_rx(),
                        ended: ended_rx,
                    };
                    self.leading.send_replace(Some(fence.clone()));
                    tracing::info!(token = fence.token, "term started");
                    let fut = f(token);
                    tokio::pin!(fut);
                    let end = tokio::select! {
                        _ = &mut fut => End::Returned,
                        _ = state.wait_for(|s| s.fence() != Some(&fence)) => End::Lost,
                        stopped = wait_interrupt(&mut ctl, seen) => if stopped {
                            End::Stopped
                        } else {
                            End::Interrupted
                        },
                    };
                    ended_tx.send_replace(true);
                    self.leading.send_replace(None);
                    tracing::info!(?end, "term ended");
                    if end != End::Returned && !self.grace.is_zero() {
                        let _ = tokio::time::timeout(self.grace, &mut fut).await;
                    }
                    if end != End::Lost {
                        if let Some(bc) = &b.breadcrumb {
                            // A clean resignation: nobody needs fencing after us.
                            clear_breadcrumb(&b.client, bc, &b.id, &fence).await;
                        }
                    }
                    match end {
                        End::Lost => continue,
                        End::Returned => {
                            let _ = latch.close().await;
                            if !self.requeue {
                                return Ok(());
                            }
                            break;
                        }
                        End::Interrupted => {
                            let _ = latch.close().await;
                            break;
                        }
                        End::Stopped => {
                            let _ = latch.close().await;
                            return Ok(());
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Before leading in ActiveBreadCrumb mode: fences the previous active if the breadcrumb names
/// one, then writes our id into it (while our latch node exists).
async fn take_over(
    client: &Client,
    bc: &Breadcrumb,
    id: &str,
    fence: &Fence,
) -> std::result::Result<(), String> {
    use zkr::{CreateMode, Op};
    let found = match client.get_data(&bc.path).await {
        Ok((data, stat)) => Some((String::from_utf8_lossy(&data).into_owned(), stat)),
        Err(zkr::Error::NoNode { .. }) => None,
        Err(e) => return Err(format!("reading the breadcrumb {}: {e}", bc.path)),
    };
    let write = match found {
        Some((previous, stat)) => {
            if previous != id {
                tracing::warn!(previous = %previous, "the previous active did not resign cleanly; fencing it");
                if !(bc.fence)(previous.clone()).await {
                    return Err(format!("fencing the previous active {previous:?} failed"));
                }
                tracing::info!(previous = %previous, "previous active fenced");
            }
            Op::SetData {
                path: bc.path.clone(),
                data: id.as_bytes().to_vec(),
                version: Some(stat.version),
            }
        }
        None => {
            if let Some(parent) = zkr::path::parent(&bc.path) {
                client
                    .ensure_path(parent)
                    .await
                    .map_err(|e| format!("creating {parent}: {e}"))?;
            }
            Op::Create {
                path: bc.path.clone(),
                data: id.as_bytes().to_vec(),
                mode: CreateMode::Persistent,
            }
        }
    };
    let check = Op::Check {
        path: fence.path.clone(),
        version: None,
    };
    client
        .multi(&[check, write])
        .await
        .map(|_| ())
        .map_err(|e| format!("writing the breadcrumb {}: {e}", bc.path))
}

/// After a clean resignation: deletes the breadcrumb if it is still ours.
async fn clear_breadcrumb(client: &Client, bc: &Breadcrumb, id: &str, fence: &Fence) {
    use zkr::Op;
    if let Ok((data, stat)) = client.get_data(&bc.path).await {
        if data == id.as_bytes() {
            let ops = [
                Op::Check {
                    path: fence.path.clone(),
                    version: None,
                },
                Op::Delete {
                    path: bc.path.clone(),
                    version: Some(stat.version),
                },
            ];
            if let Err(e) = client.multi(&ops).await {
                tracing::warn!(error = %e, "could not delete the breadcrumb");
            }
        }
    }
}

async fn wait_stopped(ctl: &mut watch::Receiver<Control>) {
    let _ = ctl.wait_for(|c| c.stopped).await;
}

/// Waits for a stop or a new interrupt; `true` = stopped.
async fn wait_interrupt(ctl: &mut watch::Receiver<Control>, seen: u64) -> bool {
    match ctl.wait_for(|c| c.stopped || c.interrupts != seen).await {
        Ok(c) => c.stopped,
        Err(_) => true,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Returned,
    Lost,
    Interrupted,
    Stopped,
}
