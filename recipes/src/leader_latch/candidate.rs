//! The latch's background task: joins the election with a node, then holds that node through
//! an explicit [`Phase`] until the node is gone (join again) or the latch closes.
//!
//! One node's life, as phases, and what moves between them:
//! * `Listing` (a listing in hand, or list the election) -> `Leading` when our node is first,
//!   `Waiting` (watching the node just ahead of ours) otherwise; our node missing from the
//!   listing ends the node's life (rejoin).
//! * `Waiting` -> `Listing` when the watched node goes: with the last listing in hand if,
//!   without that node, it puts us first (we lead without listing again), else to list again.
//! * Any phase -> `Suspended` on our session's `Suspended` / `ReadOnly` (stepping down unless
//!   the loss policy is `Lost`; `ReadOnly` always steps down); any phase -> `Verifying` on
//!   `Reconnected`; `Verifying` -> `Listing` once our node is confirmed ours, else rejoin.
//! * Any phase ends the node's life (an [`Exit`]) on `Lost`, a newer session, our node deleted,
//!   the client closed, an ACL refusal, or the latch closed.
//!
//! Each transition is a small function of (phase, what happened) returning the next phase or
//! the [`Exit`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use zkr::{Client, DataWatch, SessionId, SessionState, SessionStates, Stat};

use super::{LatchState, Shared, MARKER};
use crate::error::{Error, Result};
use crate::hold::{Fence, LossPolicy};
use crate::sequence::{self, Ahead, NodeGuard};
use crate::sync::lock;
use crate::wait::{next_or_never, sleep_or_never};

/// A node just created on the current session, with the listing of its creation.
pub(super) struct Joined {
    pinned: Client,
    guard: NodeGuard,
    stat: Stat,
    children: Vec<String>,
}

/// Creates our node on the current session (deleting `stale`, a node of an older session of
/// ours, first).
pub(super) async fn try_join(
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

/// What comes after one node's life.
enum Next {
    /// Join again with a new node; `Some(old)` = delete this node of an older session first.
    Rejoin(Option<String>),
    /// Stop (closed).
    Stop,
}

/// Why one node's life ends.
enum Exit {
    /// Our node is gone: join again with a new one.
    Rejoin,
    /// Our session ended: join again on the new one, deleting this node first if it survived.
    RejoinStale,
    /// The client was closed: the node went with its session.
    Gone,
    /// The latch was closed: delete the node, then drop the watches.
    Close,
    /// The election's ACL refuses us: stop (the node is deleted in the background).
    Refused,
}

/// Where a candidate stands with its node.
enum Phase {
    /// Learning our place: evaluate the listing in hand, or list the election.
    Listing(Place),
    /// Behind a predecessor, watching it.
    Waiting(Pred),
    /// First in line: leading while our session is connected.
    Leading,
    /// Our session is suspended (or read-only): nothing is decided until it reconnects.
    Suspended(Place),
    /// Reconnected: checking that our node is still there and still ours, then listing.
    Verifying(Place),
}

/// What a candidate keeps while it (re)learns its place.
#[derive(Default)]
struct Place {
    /// A listing that already proves the order: evaluated instead of listing again.
    listing: Option<Vec<String>>,
    /// The predecessor watched so far (the same one keeps its watch).
    pred: Option<Pred>,
}

/// The node ahead of ours that we watch.
struct Pred {
    watch: DataWatch,
    /// What we keep of the listing it was found in, to decide without listing again when it
    /// goes.
    ahead: Ahead,
    /// Third in line, we also watch the leader (name and watch): when it goes, our
    /// predecessor leads, and when that one goes too we know we are next without listing
    /// again. One extra watch per election, on the leader's node, so no herd.
    leader: Option<Box<(String, DataWatch)>>,
}

impl Phase {
    /// What to keep when the phase is interrupted (suspension, reconnect, a watch error).
    fn into_place(self) -> Place {
        match self {
            Phase::Listing(p) | Phase::Suspended(p) | Phase::Verifying(p) => p,
            Phase::Waiting(pred) => Place {
                listing: None,
                pred: Some(pred),
            },
            Phase::Leading => Place::default(),
        }
    }

    fn pred_mut(&mut self) -> Option<&mut Pred> {
        match self {
            Phase::Waiting(pred) => Some(pred),
            Phase::Listing(p) | Phase::Suspended(p) | Phase::Verifying(p) => p.pred.as_mut(),
            Phase::Leading => None,
        }
    }
}

/// The node held, and what is fixed for its life.
struct Node {
    pinned: Client,
    guard: NodeGuard,
    czxid: i64,
    epoch: Option<u64>,
    session: SessionId,
    path: String,
    name: String,
    seq: Option<i32>,
    fence: Fence,
    own: DataWatch,
}

/// What the task does after acting on a phase.
enum Step {
    /// Act on this phase now.
    Go(Phase),
    /// Wait for something to happen (or `retry` to pass) in this phase.
    Wait(Phase, Option<Duration>),
    /// The node's life ends.
    Exit(Exit),
}

enum Wake {
    Stop,
    State(Option<SessionState>),
    Own(Option<zkr::Result<zkr::DataEvent>>),
    Pred(Option<zkr::Result<zkr::DataEvent>>),
    /// An event of the leader's node, watched from third in line.
    Leader(Option<zkr::Result<zkr::DataEvent>>),
    Retry,
}

/// Whether `s` is a live, writable state of epoch `epoch`.
fn connected_in(s: &SessionState, epoch: Option<u64>) -> bool {
    matches!(
        s,
        SessionState::Connected { .. } | SessionState::Reconnected { .. }
    ) && s.epoch() == epoch
}

/// An event of the leader's node, watched from third in line: once it is gone (or its watch
/// fails), it no longer counts ahead of us and its watch is dropped.
fn on_leader_event(mut phase: Phase, ev: Option<zkr::Result<zkr::DataEvent>>) -> Phase {
    let gone = match &ev {
        Some(Ok(ev)) => ev.node.is_none(),
        // An error or the end of the stream: stop relying on it (we list again instead).
        _ => true,
    };
    if let Some(p) = phase.pred_mut() {
        if gone {
            if let Some(leader) = p.leader.take() {
                if matches!(ev, Some(Ok(_))) {
                    p.ahead.forget(&leader.0);
                }
            }
        }
    }
    phase
}

pub(super) struct Task {
    shared: Arc<Shared>,
    client: Client,
    states: SessionStates,
    policy: LossPolicy,
    stop: watch::Receiver<bool>,
}

impl Task {
    pub(super) fn new(
        shared: Arc<Shared>,
        client: Client,
        policy: LossPolicy,
        stop: watch::Receiver<bool>,
    ) -> Task {
        Task {
            shared,
            states: client.states(),
            client,
            policy,
            stop,
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn step_down(&self) {
        self.shared.publish(LatchState::NotLeader);
    }

    /// Holds `first`, then joins again with a new node whenever the held one is gone, until
    /// the latch closes; `ready` is told once the first node's place is known.
    pub(super) async fn run(mut self, first: Joined, ready: oneshot::Sender<()>) {
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
        let mut backoff =
            zkr::RetryPolicy::exponential(Duration::from_millis(20), Duration::from_secs(2))
                .backoff();
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
                        _ = backoff.wait() => {}
                        _ = self.stop.wait_for(|s| *s) => return None,
                    }
                }
            }
        }
    }

    /// Holds one node: acts on the phase, waits, reacts, until the node's life ends.
    async fn hold(&mut self, j: Joined, ready: &mut Option<oneshot::Sender<()>>) -> Next {
        let (mut node, children) = match self.node(j) {
            Ok(n) => n,
            Err(next) => return next,
        };
        *lock(&self.shared.node) = Some(node.path.clone());
        let place = Place {
            listing: Some(children),
            pred: None,
        };
        let mut phase = if connected_in(&self.client.state(), node.epoch) {
            Phase::Listing(place)
        } else {
            Phase::Suspended(place)
        };
        loop {
            let retry = loop {
                match self.act(&node, phase).await {
                    Step::Go(p) => phase = p,
                    Step::Wait(p, retry) => {
                        phase = p;
                        break retry;
                    }
                    Step::Exit(exit) => return self.finish(node, None, exit).await,
                }
            };
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
            let wake = self.wait(&mut node.own, &mut phase, retry).await;
            phase = match self.on_wake(&node, phase, wake) {
                Ok(p) => p,
                Err((exit, phase)) => return self.finish(node, phase, exit).await,
            };
        }
    }

    /// The node's fixed facts and its own watch; the listing of its creation.
    fn node(&self, j: Joined) -> std::result::Result<(Node, Vec<String>), Next> {
        let Joined {
            pinned,
            guard,
            stat,
            children,
        } = j;
        let epoch = pinned.epoch();
        let Some(session) = pinned.session_id() else {
            return Err(Next::Rejoin(None));
        };
        let path = guard.path().to_string();
        let name = guard.name().to_string();
        let own = match self.client.watch_data(&path) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch our own node");
                return Err(Next::Rejoin(Some(guard.disarm())));
            }
        };
        let node = Node {
            seq: sequence::parse_seq(&name, MARKER),
            fence: Fence {
                token: stat.czxid,
                path: path.clone(),
                session,
            },
            czxid: stat.czxid,
            pinned,
            guard,
            epoch,
            session,
            path,
            name,
            own,
        };
        Ok((node, children))
    }

    /// Does the I/O a phase needs (list, check our node); phases that wait do nothing.
    async fn act(&self, node: &Node, phase: Phase) -> Step {
        match phase {
            Phase::Verifying(place) => self.verify(node, place).await,
            Phase::Listing(mut place) => match place.listing.take() {
                Some(kids) => self.evaluate(node, kids, place.pred),
                None => self.list(node, place).await,
            },
            p @ (Phase::Waiting(_) | Phase::Leading | Phase::Suspended(_)) => Step::Wait(p, None),
        }
    }

    /// Reconnected: is our node still there, and still ours?
    async fn verify(&self, node: &Node, place: Place) -> Step {
        match node.pinned.exists(&node.path).await {
            Ok(Some(st)) if st.ephemeral_owner == node.session.0 && st.czxid == node.czxid => {
                Step::Go(Phase::Listing(place))
            }
            Ok(_) => {
                tracing::info!(node = %node.path, "our node is gone after a reconnect; rejoining");
                self.step_down();
                Step::Exit(Exit::Rejoin)
            }
            Err(e) if e.is_session_lost() => {
                self.step_down();
                Step::Exit(Exit::RejoinStale)
            }
            Err(e) if e.is_auth_error() => {
                tracing::error!(error = %e, "the election's ACL refuses us; the latch closes");
                Step::Exit(Exit::Refused)
            }
            Err(e) => {
                tracing::debug!(error = %e, "checking our node failed; retrying");
                Step::Wait(Phase::Verifying(place), Some(Duration::from_millis(50)))
            }
        }
    }

    /// Lists the election and evaluates the listing.
    async fn list(&self, node: &Node, place: Place) -> Step {
        match node.pinned.get_children(&self.shared.path).await {
            Ok(kids) => self.evaluate(node, kids, place.pred),
            Err(e) if e.is_session_lost() => {
                self.step_down();
                Step::Exit(Exit::RejoinStale)
            }
            Err(e) if e.is_no_node() => {
                // The election path is gone, and with it our node.
                self.step_down();
                Step::Exit(Exit::Rejoin)
            }
            Err(zkr::Error::Closed) => Step::Exit(Exit::Gone),
            Err(e) if e.is_auth_error() => {
                tracing::error!(error = %e, "the election's ACL refuses us; the latch closes");
                Step::Exit(Exit::Refused)
            }
            Err(e) => {
                tracing::debug!(error = %e, "listing the election failed; retrying");
                Step::Wait(Phase::Listing(place), Some(Duration::from_millis(50)))
            }
        }
    }

    /// Our place in `kids`: leading, behind a predecessor (watched), or gone.
    fn evaluate(&self, node: &Node, kids: Vec<String>, pred: Option<Pred>) -> Step {
        let order = sequence::contenders(&kids, &[MARKER], node.seq);
        match order.iter().position(|c| c.name == node.name) {
            None => {
                tracing::info!(node = %node.path, "our node is gone; rejoining");
                self.step_down();
                Step::Exit(Exit::Rejoin)
            }
            Some(0) => {
                if connected_in(&self.client.state(), node.epoch) {
                    self.shared.publish(LatchState::Leader(node.fence.clone()));
                } else {
                    // A state change is queued; it drives the next step.
                    self.step_down();
                }
                drop(pred);
                Step::Wait(Phase::Leading, None)
            }
            Some(i) => {
                self.step_down();
                let ahead = Ahead::keep(&order, i, i - 1);
                let p = zkr::path::join(&self.shared.path, &order[i - 1].name);
                let (kept, kept_leader) = match pred {
                    Some(pred) => (Some(pred.watch), pred.leader),
                    None => (None, None),
                };
                let watch = match kept {
                    Some(w) if w.path() == p => w,
                    _ => match self.client.watch_data(&p) {
                        Ok(w) => w,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot watch predecessor");
                            let place = Place::default();
                            return Step::Wait(
                                Phase::Listing(place),
                                Some(Duration::from_millis(100)),
                            );
                        }
                    },
                };
                let leader = (i == 2)
                    .then(|| self.watch_leader(&order[0].name, kept_leader))
                    .flatten();
                Step::Wait(
                    Phase::Waiting(Pred {
                        watch,
                        ahead,
                        leader,
                    }),
                    None,
                )
            }
        }
    }

    /// A watch on the leader `name` (kept from `kept` when it is the same node); `None` when it
    /// cannot be set (we then list again when our predecessor goes, as without it).
    fn watch_leader(
        &self,
        name: &str,
        kept: Option<Box<(String, DataWatch)>>,
    ) -> Option<Box<(String, DataWatch)>> {
        match kept {
            Some(k) if k.0 == name => Some(k),
            _ => {
                let path = zkr::path::join(&self.shared.path, name);
                self.client
                    .watch_data(&path)
                    .ok()
                    .map(|w| Box::new((name.to_string(), w)))
            }
        }
    }

    /// Waits for the next thing that can change the phase.
    async fn wait(
        &mut self,
        own: &mut DataWatch,
        phase: &mut Phase,
        retry: Option<Duration>,
    ) -> Wake {
        let (pred, leader) = match phase.pred_mut() {
            Some(p) => (Some(&mut p.watch), p.leader.as_mut().map(|l| &mut l.1)),
            None => (None, None),
        };
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|s| *s) => Wake::Stop,
            s = self.states.next_state() => Wake::State(s),
            e = own.next_event() => Wake::Own(e),
            // The leader's node before the predecessor's: when both went, knowing the leader is
            // gone first spares a listing.
            e = next_or_never(leader) => Wake::Leader(e),
            e = next_or_never(pred) => Wake::Pred(e),
            _ = sleep_or_never(retry) => Wake::Retry,
        }
    }

    /// The next phase after `wake`, or why the node's life ends (with what to drop after the
    /// node is deleted).
    fn on_wake(
        &self,
        node: &Node,
        phase: Phase,
        wake: Wake,
    ) -> std::result::Result<Phase, (Exit, Option<Phase>)> {
        match wake {
            Wake::Stop => Err((Exit::Close, Some(phase))),
            // The client was closed: its session (and our node) is gone.
            Wake::State(None) | Wake::Own(None) | Wake::Pred(None) => Err((Exit::Gone, None)),
            Wake::State(Some(s)) => self.on_state(node, phase, s).map_err(|e| (e, None)),
            Wake::Own(Some(Ok(ev))) => {
                if ev.stat().is_some_and(|st| st.czxid == node.czxid) {
                    return Ok(phase);
                }
                if self.shared.closing.load(Ordering::SeqCst) {
                    // `close` deleted it: that is the resignation.
                    return Err((Exit::Gone, None));
                }
                tracing::info!(node = %node.path, "our latch node was deleted; rejoining");
                self.step_down();
                Err((Exit::Rejoin, None))
            }
            Wake::Pred(Some(Ok(ev))) if ev.node.is_none() => Ok(self.on_pred_gone(node, phase)),
            Wake::Leader(ev) => Ok(on_leader_event(phase, ev)),
            Wake::Pred(Some(Ok(_))) | Wake::Retry => Ok(phase),
            Wake::Own(Some(Err(e))) | Wake::Pred(Some(Err(e))) if e.is_auth_error() => {
                tracing::error!(error = %e, "the election's ACL refuses us; the latch closes");
                Err((Exit::Refused, None))
            }
            Wake::Own(Some(Err(e))) | Wake::Pred(Some(Err(e))) => {
                tracing::debug!(error = %e, "watch error");
                Ok(match phase {
                    // Look again (keeping the predecessor's watch if it is still the one).
                    p @ (Phase::Waiting(_) | Phase::Leading | Phase::Listing(_)) => {
                        Phase::Listing(p.into_place())
                    }
                    // Listed again once reconnected anyway.
                    p @ (Phase::Suspended(_) | Phase::Verifying(_)) => p,
                })
            }
        }
    }

    /// A session state of ours: suspend, verify after a reconnect, or end the node's life.
    fn on_state(
        &self,
        node: &Node,
        phase: Phase,
        s: SessionState,
    ) -> std::result::Result<Phase, Exit> {
        let ours = s.epoch() == node.epoch;
        match s {
            SessionState::Suspended { .. } | SessionState::ReadOnly { .. } if ours => {
                if self.policy == LossPolicy::Suspended
                    || matches!(s, SessionState::ReadOnly { .. })
                {
                    self.step_down();
                }
                Ok(Phase::Suspended(phase.into_place()))
            }
            SessionState::Reconnected { .. } if ours => Ok(Phase::Verifying(phase.into_place())),
            SessionState::Lost { .. } if ours => {
                self.step_down();
                Err(Exit::RejoinStale)
            }
            SessionState::Connected { epoch: e, .. } if node.epoch.is_some_and(|ep| e > ep) => {
                self.step_down();
                Err(Exit::RejoinStale)
            }
            SessionState::Closed => {
                self.step_down();
                Err(Exit::Gone)
            }
            _ => Ok(phase),
        }
    }

    /// The predecessor we watched is gone. Sequence numbers only grow, so nodes created since
    /// the listing line up behind us, and other deletions only move us forward: if the listing
    /// without it puts us first, we lead without listing again (one read less on every
    /// failover); otherwise we list again.
    fn on_pred_gone(&self, node: &Node, phase: Phase) -> Phase {
        let first = |pred: Pred| {
            pred.ahead.after_gone().filter(|rest| {
                sequence::contenders(rest, &[MARKER], node.seq)
                    .first()
                    .is_some_and(|c| c.name == node.name)
            })
        };
        // A place that kept the predecessor: a listing in hand if it proves we lead (else the
        // place is listed again anyway).
        let resolve = |mut p: Place| {
            if let Some(rest) = p.pred.take().and_then(first) {
                p.listing = Some(rest);
            }
            p
        };
        match phase {
            Phase::Waiting(pred) => Phase::Listing(Place {
                listing: first(pred),
                pred: None,
            }),
            Phase::Listing(p) => Phase::Listing(resolve(p)),
            Phase::Suspended(p) => Phase::Suspended(resolve(p)),
            Phase::Verifying(p) => Phase::Verifying(resolve(p)),
            Phase::Leading => Phase::Leading,
        }
    }

    /// Ends the node's life: deletes it, leaves it to its session, or keeps it for the next
    /// join to delete.
    async fn finish(&self, node: Node, phase: Option<Phase>, exit: Exit) -> Next {
        let Node { guard, own, .. } = node;
        match exit {
            Exit::Rejoin => {
                guard.disarm();
                Next::Rejoin(None)
            }
            Exit::RejoinStale => Next::Rejoin(Some(guard.disarm())),
            Exit::Gone => {
                guard.disarm();
                Next::Stop
            }
            Exit::Close => {
                self.shared.publish(LatchState::Closed);
                // `close` deleted the node itself (and forgot it) unless we were dropped.
                let deleted = lock(&self.shared.node).as_deref() != Some(guard.path());
                if deleted {
                    guard.disarm();
                // Delete first: the next candidate waits for exactly this write. Dropping the
                // watches afterwards costs nothing (the delete fired ours on the server).
                } else if let Err(e) = guard.remove().await {
                    tracing::warn!(error = %e, "could not delete our latch node; it goes with the session");
                }
                drop(phase);
                drop(own);
                Next::Stop
            }
            // Dropped armed: the node is deleted in the background.
            Exit::Refused => Next::Stop,
        }
    }
}
