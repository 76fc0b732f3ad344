//! Master election: a Curator-compatible **leader latch**. Processes that only want to know who
//! leads use the [leader observer](crate::leader_observer).
//!
//! # Znode layout
//! ```text
//! <path>/                                      container, created on demand
//!     _c_<uuid>-latch-0000000007   data = participant id    (ephemeral sequential)
//!     _c_<uuid>-latch-0000000008   data = participant id
//! ```
//! Exactly Apache Curator's `LeaderLatch` layout (protected names, marker `latch-`, node data =
//! the participant id), so Java and Rust candidates share one election on the same path. The
//! candidate whose node has the lowest sequence number (compared numerically and wrap-aware)
//! leads; every other candidate watches its predecessor (no herd effect) and re-evaluates
//! when it goes, so a resigning leader hands over within one notification. A candidate keeps
//! the names ahead of it from its last listing, and the one third in line also watches the
//! leader (one extra watch per election): when its predecessor goes, a candidate that already
//! knows everyone before it is gone leads at once, without listing the election again.
//!
//! # Guarantees
//! * At most one candidate believes it leads at any moment, provided clocks run at similar
//!   rates: a leader steps down on `Suspended` (by default) within 2/3 of the session timeout of
//!   silence, before the server can expire its session and let the next candidate in.
//! * Leadership is only ever claimed from a node created by the candidate's *current* session
//!   (the node is created and the election listed on a [`Client::pinned`] handle), never from a
//!   node of an older session.
//! * **Fencing**: the leader gets a [`Fence`] whose `token` is the `czxid` of its latch node. Every
//!   later leader's node was created later, so tokens strictly increase across leaders; stamp
//!   writes with it and let the store reject smaller tokens.
//! * [`LeaderLatch::close`] (and dropping the latch) steps down *first*, then deletes the node
//!   explicitly (no wait for the session to end): the next candidate's watch fires at once.
//!
//! # Session events
//! * **Suspended**: the leader steps down at once ([`LossPolicy::Suspended`], the default) or keeps
//!   leading until `Lost` ([`LossPolicy::Lost`]). Nobody claims leadership while suspended.
//! * **Reconnected** (same session): the candidate checks that its node still exists and that its
//!   `ephemeralOwner` is this session, then lists the election again. It never deletes and
//!   re-creates its node on a reconnect, so two quick reconnects cannot delete the node of a
//!   leader. If the node (or the whole election path) was deleted meanwhile, it rejoins with a
//!   new node (re-creating the path).
//! * **Lost**: leadership is dropped; once the client has a new session the candidate deletes
//!   its old node (if the server has not yet) and rejoins with a new node.
//! * A deleted latch node (e.g. by an operator) is noticed through a watch on it: the candidate
//!   steps down and rejoins.
//!
//! # Delivery
//! [`LeaderLatch::changes`] is **coalescing** (a watch channel): it yields the state now, then
//! the latest state after each change; a reader that falls behind skips intermediate states
//! (never two equal ones in a row). It ends after `Closed`.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use std::time::Duration;
//! use zkr_recipes::LeaderLatch;
//!
//! let latch = LeaderLatch::new(&client, "/app/election", "worker-1")?;
//! latch.start().await?;
//! let fence = latch.wait_leader_timeout(Duration::from_secs(30)).await?;
//! println!("leading with fencing token {}", fence.token);
//! latch.close().await?;
//! # Ok(()) }
//! ```

mod candidate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tracing::Instrument;
use zkr::Client;

use crate::changes::{Changes, Step};
use crate::error::{Error, Result};
pub use crate::hold::{Fence, LossPolicy};
use crate::leader_observer::{self, Participant};
use crate::sync::lock;
use crate::wait;

/// The marker of latch nodes (Curator's `LeaderLatch.LOCK_NAME`).
pub const MARKER: &str = "latch-";

/// What a candidate believes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LatchState {
    /// Not leading (not started yet, joining, waiting in the election, or suspended).
    NotLeader,
    /// Leading.
    Leader(Fence),
    /// Closed (resigned); terminal.
    Closed,
}

impl LatchState {
    /// Whether this is `Leader`.
    pub fn is_leader(&self) -> bool {
        matches!(self, LatchState::Leader(_))
    }

    /// The fence, when leading.
    pub fn fence(&self) -> Option<&Fence> {
        match self {
            LatchState::Leader(f) => Some(f),
            _ => None,
        }
    }
}

/// A candidate in a leader election; see the [module docs](self).
///
/// [`new`](Self::new) only validates; [`start`](Self::start) joins the election. Dropping the
/// latch resigns in the background (like [`close`](Self::close) without waiting).
#[must_use = "the candidate leaves the election when the latch is dropped"]
pub struct LeaderLatch {
    shared: Arc<Shared>,
    client: Client,
    loss_policy: LossPolicy,
    started: AtomicBool,
}

impl std::fmt::Debug for LeaderLatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLatch")
            .field("path", &self.shared.path)
            .field("id", &self.shared.id)
            .field("state", &self.state())
            .finish()
    }
}

impl LeaderLatch {
    /// A candidate `id` (stored as our node's data, like Curator's participant id) for the
    /// election at `path`. Validates the path; does no I/O.
    pub fn new(client: &Client, path: &str, id: impl Into<String>) -> Result<LeaderLatch> {
        zkr::path::validate_path(path, false)?;
        let (stop, _) = watch::channel(false);
        let (done, _) = watch::channel(false);
        Ok(LeaderLatch {
            shared: Arc::new(Shared {
                path: path.to_string(),
                id: id.into(),
                state_tx: watch::channel(LatchState::NotLeader).0,
                node: Mutex::new(None),
                closing: AtomicBool::new(false),
                stop,
                done,
            }),
            client: client.clone(),
            loss_policy: LossPolicy::default(),
            started: AtomicBool::new(false),
        })
    }

    /// When to give up leadership on connection trouble (default [`LossPolicy::Suspended`]).
    pub fn with_loss_policy(mut self, policy: LossPolicy) -> Self {
        self.loss_policy = policy;
        self
    }

    /// Joins the election: creates our node (and the path) and finds our place once. Returns
    /// when the node exists; leadership then follows in the background
    /// ([`wait_leader`](Self::wait_leader), [`changes`](Self::changes)).
    ///
    /// # Errors
    /// `Error::Invalid` if already started; `Error::Closed` after [`close`](Self::close); the
    /// ZooKeeper error if the node cannot be created (e.g. `NoAuth`, `Closed`), within the
    /// client's retries. A latch whose start failed may be started again.
    ///
    /// # Cancel safety
    /// Dropping the future before the node exists removes any node it created (in the
    /// background) and leaves the latch unstarted; once the node exists the latch runs.
    pub async fn start(&self) -> Result<()> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Err(Error::Invalid(format!(
                "the leader latch on {} was already started",
                self.shared.path
            )));
        }
        let unstarted = Unstarted(Some(self));
        if *self.shared.stop.borrow() {
            return Err(Error::Closed("leader latch"));
        }
        let span = tracing::info_span!("zkr.leader_latch.start", path = %self.shared.path, id = %self.shared.id);
        let joined =
            candidate::try_join(&self.client, &self.shared.path, &self.shared.id, &mut None)
                .instrument(span.clone())
                .await?;
        unstarted.disarm();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = candidate::Task::new(
            self.shared.clone(),
            self.client.clone(),
            self.loss_policy,
            self.shared.stop.subscribe(),
        );
        let shared = self.shared.clone();
        tokio::spawn(
            async move {
                task.run(joined, ready_tx).await;
                shared.done.send_replace(true);
            }
            .instrument(span),
        );
        let _ = ready_rx.await;
        Ok(())
    }

    /// The election path.
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// Our participant id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Our current latch node, if we have one.
    pub fn node(&self) -> Option<String> {
        lock(&self.shared.node).clone()
    }

    /// What this candidate believes now (`NotLeader` before [`start`](Self::start)).
    pub fn state(&self) -> LatchState {
        self.shared.state_tx.borrow().clone()
    }

    /// Whether this candidate leads now: it won the election, and the lease of the session
    /// that owns its latch node has not run out ([`valid_until`](Self::valid_until)), checked at
    /// the moment of the call: right even on the first call after the process was paused.
    pub fn is_leader(&self) -> bool {
        self.valid_until()
            .is_some_and(|until| std::time::Instant::now() < until)
    }

    /// While leading, until when leadership is certainly ours: the lease of the session that
    /// owns the latch node (see [`zkr::Client::valid_until`]); `None` when not leading.
    pub fn valid_until(&self) -> Option<std::time::Instant> {
        let session = self.shared.state_tx.borrow().fence()?.session;
        self.client.lease_of(session)
    }

    /// Our fence while leading.
    pub fn fence(&self) -> Option<Fence> {
        self.shared.state_tx.borrow().fence().cloned()
    }

    /// Waits until this candidate leads; returns its fence.
    ///
    /// # Errors
    /// `Error::Closed` if the latch is or gets closed first.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes the state.
    pub async fn wait_leader(&self) -> Result<Fence> {
        let mut rx = self.shared.state_tx.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                LatchState::Leader(f) => return Ok(f.clone()),
                LatchState::Closed => return Err(Error::Closed("leader latch")),
                LatchState::NotLeader => {}
            }
            if rx.changed().await.is_err() {
                return Err(Error::Closed("leader latch"));
            }
        }
    }

    /// [`wait_leader`](Self::wait_leader) for at most `timeout` (`Duration::MAX`: forever).
    ///
    /// # Errors
    /// `Error::Timeout` after `timeout`; `Error::Closed` if the latch is or gets closed first.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes the state.
    pub async fn wait_leader_timeout(&self, timeout: Duration) -> Result<Fence> {
        wait::timed(timeout, "wait_leader", self.wait_leader()).await?
    }

    /// What this candidate believes: the state now, then the latest after each change
    /// (coalescing; never two equal states in a row); ends after `Closed`.
    pub fn changes(&self) -> Changes<LatchState> {
        let mut last: Option<LatchState> = None;
        Changes::until(self.shared.state_tx.subscribe(), move |s| {
            if last.as_ref() == Some(s) {
                return Step::Skip;
            }
            last = Some(s.clone());
            match s {
                LatchState::Closed => Step::Last(LatchState::Closed),
                s => Step::Item(s.clone()),
            }
        })
    }

    /// The state channel, for the selector built on the latch.
    pub(crate) fn state_rx(&self) -> watch::Receiver<LatchState> {
        self.shared.state_tx.subscribe()
    }

    /// The current leader of this election (read from ZooKeeper).
    ///
    /// # Errors
    /// The ZooKeeper error if the election cannot be read (after the client's retries).
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn leader(&self) -> Result<Option<Participant>> {
        leader_observer::leader(&self.client, &self.shared.path).await
    }

    /// Everyone in this election, in line order (the first leads).
    ///
    /// # Errors
    /// The ZooKeeper error if the election cannot be read (after the client's retries).
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn participants(&self) -> Result<Vec<Participant>> {
        leader_observer::participants(&self.client, &self.shared.path).await
    }

    /// Resigns at once: steps down, deletes our node (so the next candidate learns within one
    /// notification) and stops. Idempotent; also before [`start`](Self::start) (which then
    /// fails). Waits at most the client's operation timeout.
    ///
    /// # Errors
    /// None today: a node that cannot be deleted goes with the session.
    ///
    /// # Cancel safety
    /// Cancel safe: the resignation was already requested; it completes in the background.
    pub async fn close(&self) -> Result<()> {
        let span = tracing::info_span!("zkr.leader_latch.close", path = %self.shared.path, id = %self.shared.id);
        async {
            if !self.started.load(Ordering::SeqCst) {
                self.shared.stop.send_replace(true);
                self.shared.publish(LatchState::Closed);
                return Ok(());
            }
            let mut done = self.shared.done.subscribe();
            let t = self.client.timeout();
            // Resign here rather than after waking the task: step down, then delete our node
            // (the next candidate waits for exactly this write), then stop the task, which
            // takes the deletion it sees for the resignation. Stopped on every exit, also when
            // this future is dropped half-way (the task then deletes the node if need be).
            self.shared.closing.store(true, Ordering::SeqCst);
            let _stop = StopOnDrop(&self.shared);
            let node = lock(&self.shared.node).clone();
            if let Some(node) = node {
                self.shared.publish(LatchState::Closed);
                let policy = zkr::RetryPolicy::default().max_elapsed(t);
                match self.client.retry(&policy, || self.client.delete(&node, None)).await {
                    Ok(()) => {}
                    Err(e) if e.is_no_node() || e.is_session_lost() => {}
                    Err(e) => tracing::warn!(error = %e, "could not delete our latch node; it goes with the session"),
                }
                let mut held = lock(&self.shared.node);
                if held.as_deref() == Some(node.as_str()) {
                    *held = None;
                }
            }
            drop(_stop);
            let _ = tokio::time::timeout(t, done.wait_for(|d| *d)).await;
            Ok(())
        }
        .instrument(span)
        .await
    }
}

impl Drop for LeaderLatch {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

/// Tells the latch's task to stop when dropped.
struct StopOnDrop<'a>(&'a Shared);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop.send_replace(true);
    }
}

/// Resets a latch to unstarted if its start fails or is cancelled before the node exists.
struct Unstarted<'a>(Option<&'a LeaderLatch>);

impl Unstarted<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Unstarted<'_> {
    fn drop(&mut self) {
        if let Some(latch) = self.0 {
            latch.started.store(false, Ordering::SeqCst);
            // A close that came meanwhile waits for the end of a start that never ran.
            if *latch.shared.stop.borrow() {
                latch.shared.publish(LatchState::Closed);
                latch.shared.done.send_replace(true);
            }
        }
    }
}

/// What the latch and its task share.
struct Shared {
    path: String,
    id: String,
    state_tx: watch::Sender<LatchState>,
    node: Mutex<Option<String>>,
    /// Set by `close` while it deletes our node itself: the deletion the task then sees is
    /// the resignation, not a reason to rejoin.
    closing: AtomicBool,
    /// Set by `close` and drop: the task resigns.
    stop: watch::Sender<bool>,
    /// Set when the task has ended.
    done: watch::Sender<bool>,
}

impl Shared {
    fn publish(&self, s: LatchState) {
        self.state_tx.send_if_modified(|cur| {
            if *cur == s || *cur == LatchState::Closed {
                return false;
            }
            match &s {
                LatchState::Leader(f) => {
                    tracing::info!(token = f.token, node = %f.path, "became leader")
                }
                other => tracing::info!(state = ?other, "not leader"),
            }
            *cur = s;
            true
        });
    }
}
