//! Master election: a Curator-compatible **leader latch**, plus [`observe`] for processes that
//! only want to know who leads.
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
//! leads; every other candidate watches only its predecessor (no herd effect) and re-evaluates
//! when it goes, so a resigning leader hands over within one notification.
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
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use std::time::Duration;
//! use zkr_recipes::leader_latch::LeaderLatch;
//!
//! let latch = LeaderLatch::builder(&client, "/app/election").id("worker-1").start().await?;
//! let fence = latch.wait_leader(Some(Duration::from_secs(30))).await?;
//! println!("leading with fencing token {}", fence.token);
//! latch.close().await?;
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use zkr::{Client, DataWatch, SessionId, SessionState, SessionStates, Stat};

use crate::error::{Error, Result};
pub use crate::hold::{Fence, LossPolicy};
use crate::sequence::{self, NodeGuard};

/// The marker of latch nodes (Curator's `LeaderLatch.LOCK_NAME`).
pub const MARKER: &str = "latch-";

/// What a candidate believes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LatchState {
    /// Not leading (waiting in the election, joining, or suspended).
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

/// A member of an election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    /// The participant id (the node's data).
    pub id: String,
    /// Full path of its latch node.
    pub path: String,
    /// `czxid` of its node (the fencing token it has or will have as leader).
    pub token: i64,
    /// The session owning the node.
    pub session: SessionId,
    /// Whether it is first in line (the leader).
    pub is_leader: bool,
}

/// Builds and starts a [`LeaderLatch`].
#[derive(Clone, Debug)]
pub struct LeaderLatchBuilder {
    client: Client,
    path: String,
    id: String,
    step_down: LossPolicy,
}

impl LeaderLatchBuilder {
    /// The participant id stored in our node (default: empty, like Curator's).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// When to give up leadership on connection trouble (default [`LossPolicy::Suspended`]).
    pub fn with_loss_policy(mut self, s: LossPolicy) -> Self {
        self.step_down = s;
        self
    }

    /// Joins the election: creates our node (and the path) and evaluates once. Returns when the
    /// node exists (within the client's operation timeout); leadership then follows in the
    /// background ([`LeaderLatch::wait_leader`], [`LeaderLatch::changes`]).
    pub async fn start(self) -> Result<LeaderLatch> {
        zkr::path::validate_path(&self.path, false)?;
        let span = tracing::info_span!("zkr.leader_latch", path = %self.path, id = %self.id);
        let joined = try_join(&self.client, &self.path, &self.id, &mut None)
            .instrument(span.clone())
            .await?;
        let (state_tx, _) = watch::channel(LatchState::NotLeader);
        let shared = Arc::new(Shared {
            path: self.path,
            id: self.id,
            state_tx,
            subs: Mutex::new(Vec::new()),
            node: Mutex::new(None),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = Task {
            shared: shared.clone(),
            states: self.client.states(),
            client: self.client.clone(),
            step_down: self.step_down,
            stop: stop_rx,
        };
        tokio::spawn(
            async move {
                task.run(joined, ready_tx).await;
                let _ = done_tx.send(true);
            }
            .instrument(span),
        );
        let _ = ready_rx.await;
        Ok(LeaderLatch {
            shared,
            client: self.client,
            stop_tx,
            done_rx,
        })
    }
}

/// A candidate in a leader election; see the [module docs](self).
///
/// Dropping it resigns in the background (like [`LeaderLatch::close`] without waiting).
#[must_use = "the candidate leaves the election when the latch is dropped"]
pub struct LeaderLatch {
    shared: Arc<Shared>,
    client: Client,
    stop_tx: watch::Sender<bool>,
    done_rx: watch::Receiver<bool>,
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
    /// A builder for a candidate on `path`.
    pub fn builder(client: &Client, path: &str) -> LeaderLatchBuilder {
        LeaderLatchBuilder {
            client: client.clone(),
            path: path.to_string(),
            id: String::new(),
            step_down: LossPolicy::default(),
        }
    }

    /// Joins the election on `path` as `id` with default settings.
    pub async fn start(client: &Client, path: &str, id: &str) -> Result<LeaderLatch> {
        LeaderLatch::builder(client, path).id(id).start().await
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

    /// What this candidate believes now.
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

    /// Waits until this candidate leads (`None`: no timeout). Errors: `Timeout`, `Closed`.
    pub async fn wait_leader(&self, timeout: Option<Duration>) -> Result<Fence> {
        let mut rx = self.shared.state_tx.subscribe();
        let fut = async {
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
        };
        match timeout {
            None => fut.await,
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| Error::Timeout {
                    what: "wait_leader",
                    after: t,
                })?,
        }
    }

    /// Every change of what this candidate believes, in order, starting with the current state;
    /// ends after `Closed`.
    pub fn changes(&self) -> LeadershipChanges {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = lock(&self.shared.subs);
        let _ = tx.send(self.shared.state_tx.borrow().clone());
        subs.push(tx);
        LeadershipChanges { rx }
    }

    /// A `watch` receiver of the current state (coalescing; for "what is it now" checks).
    pub fn state_receiver(&self) -> watch::Receiver<LatchState> {
        self.shared.state_tx.subscribe()
    }

    /// The current leader of this election (read from ZooKeeper).
    pub async fn leader(&self) -> Result<Option<Participant>> {
        leader(&self.client, &self.shared.path).await
    }

    /// Everyone in this election, in line order (the first leads).
    pub async fn participants(&self) -> Result<Vec<Participant>> {
        participants(&self.client, &self.shared.path).await
    }

    /// Resigns at once: steps down, deletes our node (so the next candidate learns within one
    /// notification) and stops. Idempotent. Waits at most the client's operation timeout.
    pub async fn close(&self) -> Result<()> {
        let _ = self.stop_tx.send(true);
        let mut done = self.done_rx.clone();
        let t = self.client.timeout();
        let _ = tokio::time::timeout(t, done.wait_for(|d| *d)).await;
        Ok(())
    }
}

impl Drop for LeaderLatch {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
    }
}

/// Stream of [`LatchState`] changes; see [`LeaderLatch::changes`].
#[must_use = "a stream does nothing unless polled"]
pub struct LeadershipChanges {
    rx: mpsc::UnboundedReceiver<LatchState>,
}

impl LeadershipChanges {
    /// The next change (`None` after `Closed`).
    pub async fn next_change(&mut self) -> Option<LatchState> {
        self.rx.recv().await
    }

    /// The next change, or `Err(Timeout)` if none arrives within `d`.
    pub async fn next_timeout(&mut self, d: Duration) -> Result<Option<LatchState>> {
        crate::wait::timed(d, "leadership change", self.rx.recv()).await
    }
}

impl Stream for LeadershipChanges {
    type Item = LatchState;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LatchState>> {
        self.rx.poll_recv(cx)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Shared {
    path: String,
    id: String,
    state_tx: watch::Sender<LatchState>,
    subs: Mutex<Vec<mpsc::UnboundedSender<LatchState>>>,
    node: Mutex<Option<String>>,
}

impl Shared {
    fn publish(&self, s: LatchState) {
        let mut subs = lock(&self.subs);
        if *self.state_tx.borrow() == s {
            return;
        }
        match &s {
            LatchState::Leader(f) => {
                tracing::info!(token = f.token, node = %f.path, "became leader")
            }
            other => tracing::info!(state = ?other, "not leader"),
        }
        self.state_tx.send_replace(s.clone());
        subs.retain(|tx| tx.send(s.clone()).is_ok());
        if s == LatchState::Closed {
            subs.clear();
        }
    }
}

struct Joined {
    pinned: Client,
    guard: NodeGuard,
    stat: Stat,
    children: Vec<String>,
}

/// Creates our node on the current session (deleting `stale`, a node of an older session of
/// ours, first).
async fn try_join(
    client: &Client,
    path: &str,
    id: &str,
    stale: &mut Option<String>,
) -> Result<Joined> {
    let pinned = client.pinned().await?;
    if let Some(old) = stale.take() {
        match pinned.delete(&old, None).await {
            Ok(()) => tracing::debug!(node = %old, "deleted our node of an older session"),
            Err(e) if e.is_no_node() => {}
            Err(e) => tracing::debug!(node = %old, error = %e, "could not delete an old node"),
        }
    }
    let (guard, stat, children) =
        sequence::create_protected(&pinned, path, MARKER, id.as_bytes()).await?;
    tracing::debug!(
        node = guard.path(),
        czxid = stat.czxid,
        "joined the election"
    );
    Ok(Joined {
        pinned,
        guard,
        stat,
        children,
    })
}

enum Next {
    /// Join again with a new node; `Some(old)` = delete this node of an older session first.
    Rejoin(Option<String>),
    /// Stop (closed).
    Stop,
}

enum Wake {
    Stop,
    State(Option<SessionState>),
    Own(Option<zkr::Result<zkr::DataEvent>>),
    Pred(Option<zkr::Result<zkr::DataEvent>>),
    Retry,
}

struct Task {
    shared: Arc<Shared>,
    client: Client,
    states: SessionStates,
    step_down: LossPolicy,
    stop: watch::Receiver<bool>,
}

/// Whether `s` is a live, writable state of epoch `epoch`.
fn connected_in(s: &SessionState, epoch: Option<u64>) -> bool {
    matches!(
        s,
        SessionState::Connected { .. } | SessionState::Reconnected { .. }
    ) && s.epoch() == epoch
}

impl Task {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run(mut self, first: Joined, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut joined = Some(first);
        let mut stale = None;
        loop {
            let j = match joined.take() {
                Some(j) => j,
                None => match self.join(&mut stale).await {
                    Some(j) => j,
                    None => break,
                },
            };
            match self.hold(j, &mut ready).await {
                Next::Rejoin(old) => stale = old,
                Next::Stop => break,
            }
        }
        *lock(&self.shared.node) = None;
        self.shared.publish(LatchState::Closed);
    }

    /// Joins with backoff until it works; `None` when stopped or the client is closed.
    async fn join(&mut self, stale: &mut Option<String>) -> Option<Joined> {
        let mut delay = Duration::from_millis(20);
        loop {
            if self.stopped() {
                return None;
            }
            let (client, path, id) = (&self.client, &self.shared.path, &self.shared.id);
            let r = tokio::select! {
                r = try_join(client, path, id, stale) => r,
                _ = self.stop.wait_for(|s| *s) => return None,
            };
            match r {
                Ok(j) => return Some(j),
                Err(Error::Zk(zkr::Error::Closed)) => return None,
                // Not allowed to join (ACL) or credentials rejected: retrying cannot help.
                Err(Error::Zk(e)) if e.is_auth_error() => {
                    tracing::error!(error = %e, "cannot join the election; the latch closes");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not join the election; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.wait_for(|s| *s) => return None,
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Holds one node: evaluates, watches, reacts, until the node is gone or we stop.
    async fn hold(&mut self, j: Joined, ready: &mut Option<oneshot::Sender<()>>) -> Next {
        let Joined {
            pinned,
            guard,
            stat,
            children,
        } = j;
        let epoch = pinned.epoch();
        let Some(session) = pinned.session_id() else {
            return Next::Rejoin(None);
        };
        let node = guard.path().to_string();
        let name = guard.name().to_string();
        let seq = sequence::parse_seq(&name, MARKER);
        let fence = Fence {
            token: stat.czxid,
            path: node.clone(),
            session,
        };
        *lock(&self.shared.node) = Some(node.clone());
        let mut own = match self.client.watch_data(&node) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch our own node");
                return Next::Rejoin(Some(guard.disarm()));
            }
        };
        let mut listing = Some(children);
        // The last listing, and the name of the node we watch: when that node goes, the
        // listing without it may already prove we lead (see `Wake::Pred`).
        let mut known: Vec<String> = Vec::new();
        let mut pred_name: Option<String> = None;
        let mut need_list = false;
        let mut suspended = !connected_in(&self.client.state(), epoch);
        let mut pred: Option<DataWatch> = None;
        let mut retry_in: Option<Duration> = None;
        let mut verify = false;
        loop {
            // Reconnected: is our node still there, and still ours?
            if verify && !suspended {
                match pinned.exists(&node).await {
                    Ok(Some(st)) if st.ephemeral_owner == session.0 && st.czxid == stat.czxid => {
                        verify = false;
                        need_list = true;
                    }
                    Ok(_) => {
                        tracing::info!(node = %node, "our node is gone after a reconnect; rejoining");
                        self.shared.publish(LatchState::NotLeader);
                        guard.disarm();
                        return Next::Rejoin(None);
                    }
                    Err(e) if e.is_session_lost() => {
                        self.shared.publish(LatchState::NotLeader);
                        return Next::Rejoin(Some(guard.disarm()));
                    }
                    Err(e) if e.is_auth_error() => {
                        tracing::error!(error = %e, "the election's ACL refuses us; the latch closes");
                        return Next::Stop;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "checking our node failed; retrying");
                        retry_in = Some(Duration::from_millis(50));
                    }
                }
            }
            if (need_list || listing.is_some()) && !suspended && !verify {
                let kids = match listing.take() {
                    Some(k) => Ok(k),
                    None => pinned.get_children(&self.shared.path).await,
                };
                match kids {
                    Ok(kids) => {
                        need_list = false;
                        let order = sequence::contenders(&kids, &[MARKER], seq);
                        known = kids;
                        match order.iter().position(|c| c.name == name) {
                            None => {
                                tracing::info!(node = %node, "our node is gone; rejoining");
                                self.shared.publish(LatchState::NotLeader);
                                guard.disarm();
                                return Next::Rejoin(None);
                            }
                            Some(0) => {
                                pred = None;
                                pred_name = None;
                                if connected_in(&self.client.state(), epoch) {
                                    self.shared.publish(LatchState::Leader(fence.clone()));
                                } else {
                                    // A state change is queued; it drives the next step.
                                    self.shared.publish(LatchState::NotLeader);
                                }
                            }
                            Some(i) => {
                                self.shared.publish(LatchState::NotLeader);
                                pred_name = Some(order[i - 1].name.clone());
                                let p = zkr::path::join(&self.shared.path, &order[i - 1].name);
                                if pred.as_ref().map(|w| w.path()) != Some(p.as_str()) {
                                    pred = match self.client.watch_data(&p) {
                                        Ok(w) => Some(w),
                                        Err(e) => {
                                            tracing::warn!(error = %e, "cannot watch predecessor");
                                            retry_in = Some(Duration::from_millis(100));
                                            None
                                        }
                                    };
                                }
                            }
                        }
                    }
                    Err(e) if e.is_session_lost() => {
                        self.shared.publish(LatchState::NotLeader);
                        return Next::Rejoin(Some(guard.disarm()));
                    }
                    Err(e) if e.is_no_node() => {
                        // The election path is gone, and with it our node.
                        self.shared.publish(LatchState::NotLeader);
                        guard.disarm();
                        return Next::Rejoin(None);
                    }
                    Err(zkr::Error::Closed) => return Next::Stop,
                    Err(e) if e.is_auth_error() => {
                        tracing::error!(error = %e, "the election's ACL refuses us; the latch closes");
                        return Next::Stop;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "listing the election failed; retrying");
                        need_list = true;
                        retry_in = Some(Duration::from_millis(50));
                    }
                }
            }
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
            let wake = {
                let retry = retry_in.take();
                tokio::select! {
                    biased;
                    _ = self.stop.wait_for(|s| *s) => Wake::Stop,
                    s = self.states.next_state() => Wake::State(s),
                    e = own.next_event() => Wake::Own(e),
                    e = async { match pred.as_mut() { Some(w) => w.next_event().await, None => std::future::pending().await } } => Wake::Pred(e),
                    _ = async { match retry { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => Wake::Retry,
                }
            };
            match wake {
                Wake::Stop => {
                    self.shared.publish(LatchState::Closed);
                    // Delete first: the next candidate waits for exactly this write. Dropping
                    // the watches afterwards costs nothing (the delete fired ours on the server).
                    if let Err(e) = guard.remove().await {
                        tracing::warn!(error = %e, "could not delete our latch node; it goes with the session");
                    }
                    drop(pred);
                    drop(own);
                    return Next::Stop;
                }
                Wake::State(None) | Wake::Own(None) | Wake::Pred(None) => {
                    // The client was closed: its session (and our node) is gone.
                    guard.disarm();
                    return Next::Stop;
                }
                Wake::State(Some(s)) => {
                    let ours = s.epoch() == epoch;
                    match s {
                        SessionState::Suspended { .. } | SessionState::ReadOnly { .. } if ours => {
                            suspended = true;
                            if self.step_down == LossPolicy::Suspended
                                || matches!(s, SessionState::ReadOnly { .. })
                            {
                                self.shared.publish(LatchState::NotLeader);
                            }
                        }
                        SessionState::Reconnected { .. } if ours => {
                            suspended = false;
                            verify = true;
                        }
                        SessionState::Lost { .. } if ours => {
                            self.shared.publish(LatchState::NotLeader);
                            return Next::Rejoin(Some(guard.disarm()));
                        }
                        SessionState::Connected { epoch: e, .. }
                            if epoch.is_some_and(|ep| e > ep) =>
                        {
                            self.shared.publish(LatchState::NotLeader);
                            return Next::Rejoin(Some(guard.disarm()));
                        }
                        SessionState::Closed => {
                            self.shared.publish(LatchState::NotLeader);
                            guard.disarm();
                            return Next::Stop;
                        }
                        _ => {}
                    }
                }
                Wake::Own(Some(Ok(ev))) => {
                    let gone = match ev.stat() {
                        None => true,
                        Some(st) => st.czxid != stat.czxid,
                    };
                    if gone {
                        tracing::info!(node = %node, "our latch node was deleted; rejoining");
                        self.shared.publish(LatchState::NotLeader);
                        guard.disarm();
                        return Next::Rejoin(None);
                    }
                }
                Wake::Pred(Some(Ok(ev))) => {
                    if ev.node.is_none() {
                        pred = None;
                        // Sequence numbers only grow, so nodes created since the listing line up
                        // behind us, and other deletions only move us forward: if the listing
                        // without the node we watched puts us first, we lead, without listing
                        // again (one read less on every failover).
                        let gone = pred_name.take();
                        let rest: Vec<String> = known
                            .iter()
                            .filter(|k| Some(k.as_str()) != gone.as_deref())
                            .cloned()
                            .collect();
                        let first = sequence::contenders(&rest, &[MARKER], seq)
                            .first()
                            .is_some_and(|c| c.name == name);
                        if first {
                            listing = Some(rest);
                        } else {
                            need_list = true;
                        }
                    }
                }
                Wake::Own(Some(Err(e))) | Wake::Pred(Some(Err(e))) if e.is_auth_error() => {
                    tracing::error!(error = %e, "the election's ACL refuses us; the latch closes");
                    return Next::Stop;
                }
                Wake::Own(Some(Err(e))) | Wake::Pred(Some(Err(e))) => {
                    tracing::debug!(error = %e, "watch error");
                    need_list = true;
                    retry_in = Some(Duration::from_millis(100));
                }
                Wake::Retry => {}
            }
        }
    }
}

/// Reads the participants of `path` in line order. `children` is a listing to start from.
async fn read_participants(
    client: &Client,
    path: &str,
    first_only: bool,
) -> zkr::Result<Vec<Participant>> {
    'again: for _ in 0..20 {
        let children = match client.get_children(path).await {
            Ok(c) => c,
            Err(e) if e.is_no_node() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let order = sequence::contenders(&children, &[MARKER], None);
        let mut out = Vec::with_capacity(order.len());
        for c in order {
            let node = zkr::path::join(path, &c.name);
            match client.get_data(&node).await {
                Ok((data, st)) => {
                    out.push(Participant {
                        id: String::from_utf8_lossy(&data).into_owned(),
                        path: node,
                        token: st.czxid,
                        session: SessionId(st.ephemeral_owner),
                        is_leader: out.is_empty(),
                    });
                    if first_only {
                        return Ok(out);
                    }
                }
                // The first one went between listing and reading: list again.
                Err(e) if e.is_no_node() && out.is_empty() => continue 'again,
                Err(e) if e.is_no_node() => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(out);
    }
    Err(zkr::Error::Unexpected(format!(
        "the election at {path} kept changing while being read"
    )))
}

/// The current leader of the election at `path` (`None` when nobody takes part).
pub async fn leader(client: &Client, path: &str) -> Result<Option<Participant>> {
    let span = tracing::debug_span!("zkr.leader_latch.leader", path);
    let policy = zkr::RetryPolicy::default();
    let v = client
        .retry(&policy, || read_participants(client, path, true))
        .instrument(span)
        .await?;
    Ok(v.into_iter().next())
}

/// Everyone in the election at `path`, in line order (the first leads).
pub async fn participants(client: &Client, path: &str) -> Result<Vec<Participant>> {
    let span = tracing::debug_span!("zkr.leader_latch.participants", path);
    let policy = zkr::RetryPolicy::default();
    Ok(client
        .retry(&policy, || read_participants(client, path, false))
        .instrument(span)
        .await?)
}

/// Who leads the election at `path`, for processes that do not take part: a stream yielding the
/// current leader first (`None`: nobody), then one item per change of leader. Survives
/// reconnects and new sessions (it is built on [`Client::watch_children`]). Dropping it stops
/// watching.
pub fn observe(client: &Client, path: &str) -> Result<LeaderWatch> {
    let watch = client.watch_children(path)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let span = tracing::debug_span!("zkr.leader_latch.observe", path);
    let task =
        tokio::spawn(observe_task(client.clone(), path.to_string(), watch, tx).instrument(span));
    Ok(LeaderWatch { rx, task })
}

async fn observe_task(
    client: Client,
    path: String,
    mut watch: zkr::ChildrenWatch,
    tx: mpsc::UnboundedSender<Result<Option<Participant>>>,
) {
    let mut last: Option<Option<String>> = None;
    let policy = zkr::RetryPolicy::default();
    loop {
        let ev = tokio::select! {
            ev = watch.next_event() => ev,
            _ = tx.closed() => return,
        };
        let ev = match ev {
            None => return,
            Some(Err(e)) => {
                if tx.send(Err(e.into())).is_err() {
                    return;
                }
                continue;
            }
            Some(Ok(ev)) => ev,
        };
        // Fast path: the head did not change.
        let head = ev.children().and_then(|c| {
            sequence::contenders(c, &[MARKER], None)
                .into_iter()
                .next()
                .map(|c| c.name)
        });
        if last.is_some() && last.as_ref().map(|l| l.as_deref()) == Some(head.as_deref()) {
            continue;
        }
        let current = match head {
            None => Ok(None),
            Some(_) => client
                .retry(&policy, || read_participants(&client, &path, true))
                .await
                .map(|v| v.into_iter().next()),
        };
        match current {
            Ok(p) => {
                let name = p.as_ref().map(|p| p.path.clone());
                let name = name.map(|n| n.rsplit('/').next().unwrap_or("").to_string());
                if last.as_ref() != Some(&name) {
                    last = Some(name);
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
            }
            Err(zkr::Error::Closed) => return,
            Err(e) => {
                if tx.send(Err(e.into())).is_err() {
                    return;
                }
            }
        }
    }
}

/// Stream of the leader of an election; see [`observe`].
#[must_use = "the watch stops when dropped"]
pub struct LeaderWatch {
    rx: mpsc::UnboundedReceiver<Result<Option<Participant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderWatch {
    /// The next leader (`None` once the client is closed).
    pub async fn next_event(&mut self) -> Option<Result<Option<Participant>>> {
        self.rx.recv().await
    }

    /// The next leader, or `Err(Timeout)` if no change arrives within `d`.
    pub async fn next_timeout(
        &mut self,
        d: Duration,
    ) -> Result<Option<Result<Option<Participant>>>> {
        crate::wait::timed(d, "leader change", self.rx.recv()).await
    }
}

impl Stream for LeaderWatch {
    type Item = Result<Option<Participant>>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for LeaderWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
