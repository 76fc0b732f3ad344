//! The session layer: one ZooKeeper session at a time, replaced after loss, with a totally
//! ordered stream of states.
//!
//! # State machine
//! ```text
//! Connecting → Connected(epoch) ⇄ Suspended → Reconnected(epoch)        (same session)
//!                                 Suspended → Lost(epoch) → Connecting → Connected(epoch+1)
//! ```
//! * **Only the leader's word counts.** A member cut off from the leader goes on answering its
//!   clients' reads and pings on its own until it notices (syncLimit × tickTime), while the
//!   leader, which hears of the session only through that member, expires it after the
//!   session timeout T. So liveness counts only replies that prove the leader heard the
//!   session: writes, `sync` (the idle heartbeat, sent when nothing confirmed the session for
//!   T/12) and the handshake (a member revalidates a resumed session with the leader).
//! * **Suspended**: the connection dropped, or no leader-confirmed reply arrived for 2/3 T.
//! * **Lost**: the server said the session expired, or the *lease* ran out: the send time of the
//!   newest leader-confirmed request + T − a margin that covers how late a follower's reports
//!   reach the leader (`docs/leases.md` derives it from ZooKeeper 3.8's session tracking).
//!   Before the server can hand the session's ephemeral nodes to anyone else; zkr never waits
//!   for the server to say so. `Epoch::valid_until` is that deadline, read at call time, so a
//!   process that was paused knows on its first call that it may have lost everything.
//! * A member that answers but does not confirm for T/2 is left: the session moves to the next
//!   member while the lease lasts. Un-suspending re-checks the lease.
//! * After `Lost` a new session is opened with backoff (credentials sent again in its
//!   handshake); its epoch is one more.
//! * **Rejected credentials end the client.** When the server rejects the credentials (on a
//!   reconnect, or when a new session is opened) the state goes `Lost` (reason
//!   [`LostReason::AuthFailed`]) and then `Closed`, and every operation fails with
//!   [`Error::AuthFailed`]: retrying the same credentials cannot succeed.
//!
//! # Epoch fencing
//! Every ZooKeeper session this client has is an *epoch* (1, 2, 3, …) with its own wire client.
//! An operation runs on the epoch it started in; if that epoch ends before the reply arrives the
//! operation fails with [`Error::SessionLost`]. Nothing issued for session N runs as N+1.

use crate::retry::RetryPolicy;
use crate::sync::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::error::{Error, Result};
use crate::types::SessionId;
use crate::wire::{Liveness, Wire, WireConfig, WireState, WireStates};

/// Why a session was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// The server reported the session expired.
    Expired,
    /// The client was cut off long enough that the server may have expired it.
    CutOff,
    /// The server rejected the credentials on a reconnect.
    AuthFailed,
}

/// A state of the session-managed connection. Transitions are delivered to every subscriber
/// in the same total order; a new subscriber first receives the current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum SessionState {
    /// No session yet (at start, or after `Lost` while a new session is being opened).
    Connecting,
    /// A new session is established (`epoch` counts this client's sessions from 1).
    Connected { session: SessionId, epoch: u64 },
    /// Connected to a read-only server (it lost its quorum): reads work, writes fail.
    ReadOnly { session: SessionId, epoch: u64 },
    /// The connection is gone or silent; the session may still be alive. Recipes that need
    /// exclusivity treat this as "may have lost it".
    Suspended { session: SessionId, epoch: u64 },
    /// Back on the same session after `Suspended`: ephemeral nodes and watches kept.
    Reconnected { session: SessionId, epoch: u64 },
    /// The session is over; its ephemeral nodes are gone (or about to be).
    Lost {
        session: SessionId,
        epoch: u64,
        reason: LostReason,
    },
    /// The client was closed by the application. Terminal.
    Closed,
}

impl SessionState {
    /// Whether requests can currently be served on a live session.
    pub fn is_connected(&self) -> bool {
        matches!(
            self,
            SessionState::Connected { .. }
                | SessionState::Reconnected { .. }
                | SessionState::ReadOnly { .. }
        )
    }

    /// The epoch this state belongs to (`None` for `Connecting` and `Closed`).
    pub fn epoch(&self) -> Option<u64> {
        match *self {
            SessionState::Connected { epoch, .. }
            | SessionState::ReadOnly { epoch, .. }
            | SessionState::Suspended { epoch, .. }
            | SessionState::Reconnected { epoch, .. }
            | SessionState::Lost { epoch, .. } => Some(epoch),
            SessionState::Connecting | SessionState::Closed => None,
        }
    }

    /// The session id this state belongs to.
    pub fn session(&self) -> Option<SessionId> {
        match *self {
            SessionState::Connected { session, .. }
            | SessionState::ReadOnly { session, .. }
            | SessionState::Suspended { session, .. }
            | SessionState::Reconnected { session, .. }
            | SessionState::Lost { session, .. } => Some(session),
            SessionState::Connecting | SessionState::Closed => None,
        }
    }
}

/// Client-side settings of the session layer.
#[derive(Clone, Debug)]
pub(crate) struct SessionConfig {
    pub wire: WireConfig,
    pub connect_timeout: Duration,
    /// The ensemble's tickTime, if the application stated it; otherwise the worst case allowed
    /// by ZooKeeper's default `minSessionTimeout` (2 × tickTime ≤ session timeout) is assumed.
    pub server_tick: Option<Duration>,
}

/// One ZooKeeper session of this client.
#[derive(Debug)]
pub(crate) struct Epoch {
    pub n: u64,
    /// The wire client of this session; taken out (dropped) when the epoch ends, so that the
    /// session is closed on the server even if handles pinned to this epoch live on.
    wire: Mutex<Option<Wire>>,
    pub session: SessionId,
    pub timeout: Duration,
    /// When the leader last confirmed the session (kept after the wire handle is dropped).
    liveness: Liveness,
    /// How much earlier than `confirmed send + timeout` the lease ends (see [`Timing`]).
    timing: Timing,
    ended: AtomicBool,
    ended_notify: Notify,
}

/// The session layer's clock, derived from the negotiated timeout `T` and a bound on the
/// ensemble's tickTime (see `docs/leases.md` for the reasoning):
/// * `heartbeat`: a `sync` is sent when no leader-confirmed reply arrived for this long (T/12);
/// * `suspend_after`: `Suspended` when no leader-confirmed reply arrived for 2/3 T;
/// * `move_after`: the session moves to another member when the current one has confirmed
///   nothing for T/2 while its connection looks alive (a member cut off from the leader);
/// * `margin`: the lease ends at `send time of the last confirmed request + T − margin`, where
///   `margin = tick/2 + heartbeat + slack` covers how late a follower's touches reach the leader.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub heartbeat: Duration,
    pub suspend_after: Duration,
    pub move_after: Duration,
    pub margin: Duration,
}

impl Timing {
    pub fn new(t: Duration, server_tick: Option<Duration>) -> Timing {
        let tick = server_tick.map_or(t / 2, |k| k.min(t / 2));
        let heartbeat = (t / 12).max(Duration::from_millis(10));
        let slack = (t / 50).max(Duration::from_millis(10));
        Timing {
            heartbeat,
            suspend_after: t * 2 / 3,
            move_after: t / 2,
            margin: tick / 2 + heartbeat + slack,
        }
    }
}

impl Epoch {
    fn new(n: u64, wire: Wire, server_tick: Option<Duration>) -> Epoch {
        let timeout = wire.negotiated_timeout();
        Epoch {
            n,
            session: SessionId(wire.session_id()),
            timeout,
            liveness: wire.liveness(),
            timing: Timing::new(timeout, server_tick),
            wire: Mutex::new(Some(wire)),
            ended: AtomicBool::new(false),
            ended_notify: Notify::new(),
        }
    }

    /// How long ago the newest leader-confirmed reply arrived.
    fn since_confirmed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.liveness.last_confirmed().1)
    }

    /// Until when the session is certainly alive on the leader: the send time of the newest
    /// leader-confirmed request + T − margin. Past it the server may have expired the session
    /// (and handed its ephemeral nodes on); an ended epoch's lease is over.
    pub fn valid_until(&self) -> Instant {
        let (sent, _) = self.liveness.last_confirmed();
        let deadline = sent + self.timeout.saturating_sub(self.timing.margin);
        if self.is_ended() {
            deadline.min(Instant::now())
        } else {
            deadline
        }
    }

    /// The wire client, while the epoch lasts.
    pub fn wire(&self) -> Result<Wire> {
        match &*lock(&self.wire) {
            Some(w) => Ok(w.clone()),
            None => Err(self.lost_error()),
        }
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.ended_notify.notify_waiters();
        // Close the session (even while operations of this epoch still hold handles: they
        // watch `ended` and abort) and drop our handle.
        if let Some(w) = lock(&self.wire).take() {
            w.close();
        }
    }

    /// Completes when this epoch ends.
    pub async fn ended(&self) {
        loop {
            let notified = self.ended_notify.notified();
            if self.is_ended() {
                return;
            }
            notified.await;
        }
    }

    pub fn lost_error(&self) -> Error {
        Error::SessionLost {
            session: self.session.0,
            epoch: self.n,
        }
    }

    /// Runs one request of this epoch: records liveness, and fails with `SessionLost` if the
    /// epoch ends before the reply arrives.
    pub async fn run<T>(&self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        if self.is_ended() {
            return Err(self.lost_error());
        }
        let r = tokio::select! {
            biased;
            r = fut => r,
            _ = self.ended() => return Err(self.lost_error()),
        };
        // Rejected credentials end the epoch too; the rejection is the better answer.
        if matches!(r, Err(Error::AuthFailed)) {
            return r;
        }
        if self.is_ended() {
            return Err(self.lost_error());
        }
        match r {
            Err(Error::SessionLost { .. }) => Err(self.lost_error()),
            r => r,
        }
    }
}

/// Publishes states in one total order to every subscriber.
pub(crate) struct StateHub {
    current: SessionState,
    subscribers: Vec<crate::fanout::Sender<SessionState>>,
}

/// Everything the client handles share.
pub(crate) struct Shared {
    pub cfg: SessionConfig,
    hub: Mutex<StateHub>,
    state_tx: watch::Sender<SessionState>,
    epoch_tx: watch::Sender<Option<Arc<Epoch>>>,
    closed: AtomicBool,
    close_notify: Notify,
    /// Why the client ended on its own (rejected credentials), when it did.
    failure: Mutex<Option<Error>>,
}

impl Shared {
    /// The error for operations on a closed client: why it ended, or [`Error::Closed`].
    pub fn closed_error(&self) -> Error {
        lock(&self.failure).clone().unwrap_or(Error::Closed)
    }

    /// Ends the client because of `e` (terminal, like `close`).
    fn fail(&self, e: Error) {
        tracing::error!(error = %e, "zkr: giving up; the client is closed");
        *lock(&self.failure) = Some(e);
        self.close();
        self.publish(SessionState::Closed);
    }

    pub fn state(&self) -> SessionState {
        *self.state_tx.borrow()
    }

    pub fn state_receiver(&self) -> watch::Receiver<SessionState> {
        self.state_tx.subscribe()
    }

    /// Every transition from now on, starting with the current state.
    pub fn subscribe(&self) -> crate::fanout::Receiver<SessionState> {
        // Bounded: a subscriber that is kept but never read holds at most `CAPACITY` states,
        // the last of them the current one.
        let (tx, rx) = crate::fanout::channel(crate::fanout::CAPACITY);
        let mut hub = lock(&self.hub);
        let _ = tx.send_latest(hub.current);
        // Forget subscribers that went away (recipes subscribe per acquisition).
        hub.subscribers.retain(|t| !t.is_closed());
        hub.subscribers.push(tx);
        rx
    }

    fn publish(&self, state: SessionState) {
        let mut hub = lock(&self.hub);
        if hub.current == state {
            return;
        }
        tracing::info!(?state, "zkr session state");
        hub.current = state;
        hub.subscribers.retain(|tx| tx.send_latest(state).is_ok());
        self.state_tx.send_replace(state);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The live epoch now, if any.
    pub fn current_epoch(&self) -> Option<Arc<Epoch>> {
        self.epoch_tx.borrow().clone()
    }

    /// Waits for a live epoch (until closed).
    pub async fn live_epoch(&self) -> Result<Arc<Epoch>> {
        let mut rx = self.epoch_tx.subscribe();
        loop {
            if self.is_closed() {
                return Err(self.closed_error());
            }
            if let Some(e) = rx.borrow_and_update().clone() {
                if !e.is_ended() {
                    return Ok(e);
                }
            }
            if rx.changed().await.is_err() {
                return Err(self.closed_error());
            }
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.close_notify.notify_waiters();
        self.close_notify.notify_one();
    }

    async fn closed(&self) {
        loop {
            let n = self.close_notify.notified();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }
}

/// Opens the first session, then supervises it (and its successors) in a task.
pub(crate) async fn start(cfg: SessionConfig) -> Result<Arc<Shared>> {
    let first = Wire::connect(&cfg.wire, cfg.connect_timeout).await?;
    let (state_tx, _) = watch::channel(SessionState::Connecting);
    let (epoch_tx, _) = watch::channel(None);
    let shared = Arc::new(Shared {
        cfg,
        hub: Mutex::new(StateHub {
            current: SessionState::Connecting,
            subscribers: Vec::new(),
        }),
        state_tx,
        epoch_tx,
        closed: AtomicBool::new(false),
        close_notify: Notify::new(),
        failure: Mutex::new(None),
    });
    let (wire, mut states) = first;
    let epoch = Arc::new(Epoch::new(1, wire, shared.cfg.server_tick));
    install(&shared, &epoch, &mut states);
    tokio::spawn(supervise(Arc::downgrade(&shared), epoch, states));
    Ok(shared)
}

fn install(shared: &Shared, epoch: &Arc<Epoch>, states: &mut WireStates) {
    shared.epoch_tx.send_replace(Some(epoch.clone()));
    let (session, n) = (epoch.session, epoch.n);
    shared.publish(if states.current() == WireState::ReadOnly {
        SessionState::ReadOnly { session, epoch: n }
    } else {
        SessionState::Connected { session, epoch: n }
    });
}

enum EpochEnd {
    Lost(LostReason),
    Closed,
}

async fn supervise(weak: std::sync::Weak<Shared>, mut epoch: Arc<Epoch>, mut states: WireStates) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let end = monitor(&shared, &epoch, &mut states).await;
        epoch.end();
        shared.epoch_tx.send_replace(None);
        let (session, n) = (epoch.session, epoch.n);
        match end {
            EpochEnd::Closed => {
                // Drop our handle and wait (bounded) until the wire client has sent
                // CloseSession and shut down, so ephemeral nodes are gone when close() returns.
                drop(epoch);
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while !matches!(
                        states.changed().await,
                        WireState::Closed | WireState::Expired
                    ) {}
                })
                .await;
                shared.publish(SessionState::Closed);
                return;
            }
            EpochEnd::Lost(reason) => {
                tracing::warn!(session = %session, epoch = n, ?reason, "zkr session lost");
                shared.publish(SessionState::Lost {
                    session,
                    epoch: n,
                    reason,
                });
                if reason == LostReason::AuthFailed {
                    shared.fail(Error::AuthFailed);
                    return;
                }
                shared.publish(SessionState::Connecting);
            }
        }
        drop(shared);
        // Open the next session with backoff until it works or the client is closed.
        let mut backoff =
            RetryPolicy::exponential(Duration::from_millis(50), Duration::from_secs(5)).backoff();
        let next = loop {
            let Some(shared) = weak.upgrade() else { return };
            if shared.is_closed() {
                shared.publish(SessionState::Closed);
                return;
            }
            let attempt = tokio::select! {
                r = Wire::connect(&shared.cfg.wire, shared.cfg.connect_timeout) => Some(r),
                _ = shared.closed() => None,
            };
            match attempt {
                None => {
                    shared.publish(SessionState::Closed);
                    return;
                }
                Some(Ok(w)) => break w,
                Some(Err(Error::AuthFailed)) => {
                    shared.fail(Error::AuthFailed);
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "zkr: opening a new session failed; retrying")
                }
            }
            drop(shared);
            backoff.wait().await;
        };
        let Some(shared) = weak.upgrade() else { return };
        epoch = Arc::new(Epoch::new(n + 1, next.0, shared.cfg.server_tick));
        states = next.1;
        install(&shared, &epoch, &mut states);
    }
}

/// Watches one epoch until it is lost or the client is closed.
///
/// Liveness counts only replies that prove the leader heard the session (writes, `sync`, the
/// handshake): a member cut off from the leader goes on answering reads and pings on its own
/// while the leader expires the session. See [`Timing`] and `docs/leases.md`.
async fn monitor(shared: &Shared, epoch: &Arc<Epoch>, states: &mut WireStates) -> EpochEnd {
    let t = epoch.timeout;
    let timing = epoch.timing;
    let (session, n) = (epoch.session, epoch.n);
    let tick = (t / 40).clamp(Duration::from_millis(5), Duration::from_millis(50));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut suspended = false;
    let now = states.current();
    let mut wire_connected = matches!(now, WireState::Connected | WireState::ReadOnly);
    // A read-only member has no leader to confirm anything: any reply counts there, and the
    // heartbeat is a read (a `sync` would be refused).
    let mut read_only = now == WireState::ReadOnly;
    if now == WireState::ReadOnly {
        shared.publish(SessionState::ReadOnly { session, epoch: n });
    }
    let mut heartbeat: Option<tokio::task::JoinHandle<()>> = None;
    let mut moving: Option<tokio::task::JoinHandle<()>> = None;
    let suspend = |suspended: &mut bool| {
        if !*suspended {
            *suspended = true;
            shared.publish(SessionState::Suspended { session, epoch: n });
        }
    };
    loop {
        tokio::select! {
            ws = states.changed() => match ws {
                WireState::Disconnected => {
                    wire_connected = false;
                    suspend(&mut suspended);
                }
                WireState::Connected | WireState::ReadOnly => {
                    // A drop and resume too quick to show `Disconnected` here still happened:
                    // recipes hear `Suspended` then `Reconnected`, as after a slower one.
                    if states.resumed() {
                        suspend(&mut suspended);
                    }
                    wire_connected = true;
                    read_only = ws == WireState::ReadOnly;
                    // The handshake resumed the session (the member revalidated it with the
                    // leader): it is alive, unless the lease ran out meanwhile.
                    if suspended && Instant::now() < epoch.valid_until() {
                        suspended = false;
                        shared.publish(SessionState::Reconnected { session, epoch: n });
                    }
                    if ws == WireState::ReadOnly {
                        shared.publish(SessionState::ReadOnly { session, epoch: n });
                    }
                }
                WireState::Expired => {
                    suspend(&mut suspended);
                    return EpochEnd::Lost(LostReason::Expired);
                }
                WireState::AuthFailed => {
                    suspend(&mut suspended);
                    return EpochEnd::Lost(LostReason::AuthFailed);
                }
                WireState::Closed => {
                    if shared.is_closed() {
                        return EpochEnd::Closed;
                    }
                    suspend(&mut suspended);
                    return EpochEnd::Lost(LostReason::CutOff);
                }
            },
            _ = interval.tick() => {
                let now = Instant::now();
                if now >= epoch.valid_until() {
                    tracing::warn!(session = %session, "zkr: no leader-confirmed reply in time; the server may expire the session");
                    suspend(&mut suspended);
                    return EpochEnd::Lost(LostReason::CutOff);
                }
                let silent = epoch.since_confirmed(now);
                if !suspended && silent >= timing.suspend_after {
                    tracing::warn!(session = %session, silent_ms = silent.as_millis() as u64, "zkr: no leader-confirmed reply; suspending");
                    suspend(&mut suspended);
                }
                if suspended && wire_connected && silent < t / 3 {
                    // Confirmed replies flow again on the same connection.
                    suspended = false;
                    shared.publish(SessionState::Reconnected { session, epoch: n });
                }
                let idle = heartbeat.as_ref().is_none_or(|h| h.is_finished());
                if wire_connected && idle && silent >= timing.heartbeat {
                    // `sync` travels to the leader: its reply confirms the session.
                    let e = epoch.clone();
                    heartbeat = Some(tokio::spawn(async move {
                        if let Ok(w) = e.wire() {
                            let t = e.timeout;
                            let _ = if read_only {
                                tokio::time::timeout(t, e.run(w.exists("/"))).await.map(|_| ())
                            } else {
                                tokio::time::timeout(t, e.run(w.sync("/"))).await.map(|_| ())
                            };
                        }
                    }));
                }
                let not_moving = moving.as_ref().is_none_or(|h| h.is_finished());
                if wire_connected && not_moving && silent >= timing.move_after {
                    // The member answers but the leader does not confirm: try another member
                    // while the lease lasts.
                    if let Ok(w) = epoch.wire() {
                        let (i, count) = w.server_index();
                        if count > 1 {
                            let next = (i + 1) % count;
                            tracing::warn!(session = %session, from = i, to = next, "zkr: member does not confirm the session; moving it");
                            moving = Some(tokio::spawn(async move {
                                let _ = w.move_to(next).await;
                            }));
                        }
                    }
                }
            }
            _ = shared.closed() => return EpochEnd::Closed,
        }
    }
}
