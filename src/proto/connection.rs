//! The connection task: the one owner of the socket of one ZooKeeper session.
//!
//! Handles ([`crate::wire::Wire`]) send [`Packet`]s over a channel, each with a oneshot for
//! its reply. The task
//! * assigns xids in send order and writes frames (batched: every packet waiting is written in
//!   one go, so back-to-back calls are pipelined);
//! * matches replies to requests: ZooKeeper answers one session's requests in the order they
//!   were sent, so the pending requests are a FIFO queue and a reply out of order is a protocol
//!   error;
//! * keeps at most `max_in_flight` requests unanswered on the socket; further packets wait in
//!   the channel;
//! * registers a one-shot watch when the reply that sets it arrives, dispatches notifications,
//!   and asks the server to remove a watch once its last local watcher is dropped;
//! * pings when the connection is idle, and declares the connection dead when nothing arrived
//!   for 2/3 of the negotiated timeout;
//! * after a broken connection fails the requests in flight (`ConnectionLoss`: outcome
//!   unknown), then resumes the *same* session on the next member, with the last zxid it has
//!   seen so that it never goes back in time. Every watch is then fired with
//!   [`WireEvent::Resync`]: the owner re-reads (and re-arms) it, so nothing changed while
//!   disconnected goes unseen;
//! * ends on expiry, on rejected credentials, or on close (sending `closeSession` first).
//!
//! Dropping a caller's future never desynchronises anything: the request stays in the FIFO and
//! its reply is discarded.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{FrameReader, MAX_FRAME};
use super::connect::{handshake, Established, HandshakeError, Security};
use super::jute::{DecodeError, JuteWrite};
use super::records::{self, code, event, op, watcher_type, xid, ConnectRequest};
use super::tls::{StreamRead, StreamWrite, TlsHandle};
use crate::fanout;

/// The connection's state, as the session layer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WireState {
    Connected,
    ReadOnly,
    Disconnected,
    Expired,
    AuthFailed,
    Closed,
}

impl WireState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            WireState::Expired | WireState::AuthFailed | WireState::Closed
        )
    }
}

/// What a watch reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WireEvent {
    Created,
    Deleted,
    DataChanged,
    ChildrenChanged,
    /// The connection was replaced: the watched state may have changed unseen; read again.
    Resync,
    /// The session ended (terminal); the watch will never fire.
    SessionEnded,
    /// Persistent watches only: the subscriber fell a queue's worth of events behind and the
    /// newest ones were dropped in its place; the watch goes on. Read again.
    Lagged,
}

impl WireEvent {
    /// Whether nothing follows this event (the watch is gone).
    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, WireEvent::Resync | WireEvent::SessionEnded)
    }
}

/// Which server-side watch table a one-shot watch lives in: `getData` and `exists` set data
/// watches, `getChildren` child watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum WatchClass {
    Data,
    Child,
}

/// An event of a persistent watch: what happened and where (client path, chroot removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PathEvent {
    pub event: WireEvent,
    pub path: String,
}

/// A watch to register when the request's reply arrives.
pub(crate) enum WatchReg {
    OneShot {
        path: String,
        class: WatchClass,
        id: u64,
        tx: oneshot::Sender<WireEvent>,
        /// `exists` on a missing node sets a watch too.
        on_no_node: bool,
    },
    Persistent {
        path: String,
        recursive: bool,
        id: u64,
        tx: fanout::Sender<PathEvent>,
    },
}

/// One request.
pub(crate) struct Packet {
    /// A frame from [`records::request`] (xid filled in here).
    pub frame: Vec<u8>,
    pub reply: Option<oneshot::Sender<Reply>>,
    pub watch: Option<WatchReg>,
}

/// A reply: error code and the body after the header. (When requests were sent is kept by
/// the task: [`ConnShared::last_confirmed`].)
#[derive(Debug)]
pub(crate) struct Reply {
    pub err: i32,
    pub body: Vec<u8>,
}

/// Requests that are not packets.
pub(crate) enum Control {
    /// A one-shot watcher was dropped before it fired.
    Unwatch {
        path: String,
        class: WatchClass,
        id: u64,
    },
    /// A persistent watcher was dropped.
    UnwatchPersistent { path: String, id: u64 },
    /// Move the session to `servers[server]` now.
    MoveTo {
        server: usize,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Close the session.
    Close,
}

/// Settings of one connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnConfig {
    pub servers: Vec<(String, u16)>,
    pub session_timeout: Duration,
    pub read_only: bool,
    pub auth: crate::types::AuthStore,
    pub max_in_flight: usize,
    pub chroot: Option<String>,
    pub tls: Option<TlsHandle>,
    pub sasl: Option<super::sasl::SaslDigest>,
}

/// The session as established.
#[derive(Clone, Debug)]
pub(crate) struct SessionInfo {
    pub id: i64,
    pub passwd: Vec<u8>,
    pub timeout: Duration,
    pub server: usize,
}

/// What the task and its handles share.
pub(crate) struct ConnShared {
    pub state: watch::Sender<WireState>,
    /// Connections this session resumed on (one more after every successful reconnect,
    /// counted before the state turns `Connected` again). The state channel keeps only the
    /// latest state, so a quick drop and resume can show as `Connected` → `Connected`; this
    /// counter tells the session layer that a disconnection happened in between.
    pub resumes: AtomicU64,
    pub session: Mutex<SessionInfo>,
    pub last_zxid: AtomicI64,
    pub next_watch_id: AtomicU64,
    /// µs since `base`: send time of the newest request whose reply proves that the *leader*
    /// heard the session (a write or `sync`, or the handshake, which a follower revalidates
    /// with the leader), and when that reply arrived.
    confirmed_sent: AtomicU64,
    confirmed_recv: AtomicU64,
    base: Instant,
}

impl ConnShared {
    fn new(state: WireState, session: SessionInfo) -> ConnShared {
        ConnShared {
            state: watch::channel(state).0,
            resumes: AtomicU64::new(0),
            session: Mutex::new(session),
            last_zxid: AtomicI64::new(0),
            next_watch_id: AtomicU64::new(1),
            confirmed_sent: AtomicU64::new(0),
            confirmed_recv: AtomicU64::new(0),
            base: Instant::now() - Duration::from_secs(1),
        }
    }

    pub fn session(&self) -> SessionInfo {
        crate::sync::lock(&self.session).clone()
    }

    pub fn state(&self) -> WireState {
        *self.state.borrow()
    }

    fn micros(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }

    /// Records a leader-confirmed reply to a request sent at `sent`.
    fn confirmed(&self, sent: Instant) {
        self.confirmed_sent
            .fetch_max(self.micros(sent), Ordering::AcqRel);
        self.confirmed_recv
            .fetch_max(self.micros(Instant::now()), Ordering::AcqRel);
    }

    /// Send and receive instants of the newest leader-confirmed reply (see `confirmed_sent`).
    pub fn last_confirmed(&self) -> (Instant, Instant) {
        let at = |a: &AtomicU64| self.base + Duration::from_micros(a.load(Ordering::Acquire));
        (at(&self.confirmed_sent), at(&self.confirmed_recv))
    }
}

/// Opens a new session (trying each server in turn until `timeout`), then spawns its task.
pub(crate) async fn open(
    cfg: ConnConfig,
    timeout: Duration,
) -> Result<
    (
        Arc<ConnShared>,
        mpsc::UnboundedSender<Packet>,
        mpsc::UnboundedSender<Control>,
    ),
    HandshakeError,
> {
    let deadline = Instant::now() + timeout;
    let n = cfg.servers.len().max(1);
    let per_host = (timeout / n as u32).max(Duration::from_millis(200));
    let req = ConnectRequest {
        last_zxid_seen: 0,
        timeout: cfg.session_timeout,
        session_id: 0,
        passwd: vec![0; 16],
        read_only: cfg.read_only,
    };
    let mut last_err = HandshakeError::Timeout;
    let mut i = 0usize;
    let est = loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(last_err);
        }
        let (host, port) = &cfg.servers[i % n];
        let t = per_host.min(deadline - now);
        let auth = cfg.auth.snapshot();
        let sec = Security {
            auth: &auth,
            tls: cfg.tls.as_ref().map(|t| &*t.0),
            sasl: cfg.sasl.as_ref(),
        };
        match handshake(host, *port, &req, sec, MAX_FRAME, t).await {
            Ok(est) => break est,
            Err(HandshakeError::AuthFailed) => return Err(HandshakeError::AuthFailed),
            // The certificates will not be any better on the next try or member.
            Err(e) if e.is_final() => return Err(e),
            Err(e) => {
                tracing::debug!(server = %format!("{host}:{port}"), error = %e, "zkr: connect attempt failed");
                last_err = e;
            }
        }
        i += 1;
        if i % n == 0 {
            let pause = round_pause((i / n) as u32);
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    };
    let server = i % n;
    let state = if est.response.read_only {
        WireState::ReadOnly
    } else {
        WireState::Connected
    };
    let shared = Arc::new(ConnShared::new(
        state,
        SessionInfo {
            id: est.response.session_id,
            passwd: est.response.passwd.clone(),
            timeout: Duration::from_millis(u64::try_from(est.response.timeout_ms).unwrap_or(0)),
            server,
        },
    ));
    // Creating a session is a transaction of the leader's.
    shared.confirmed(est.sent);
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let task = Task::new(cfg, shared.clone(), req_rx, ctl_rx, !est.response.read_only);
    tokio::spawn(task.run(est));
    Ok((shared, req_tx, ctl_tx))
}

/// Whether a successful reply to `opcode` proves that the leader processed the request: writes
/// are the leader's transactions, and `sync` is answered only after the leader's reply.
fn is_leader_confirmed(opcode: i32) -> bool {
    matches!(
        opcode,
        op::CREATE2
            | op::CREATE_CONTAINER
            | op::CREATE_TTL
            | op::DELETE
            | op::SET_DATA
            | op::SET_ACL
            | op::MULTI
            | op::SYNC
    )
}

/// The pause after the `round`-th (from 1) round in which no member took the session: 25 ms
/// doubling to 1 s, with ±50 % jitter, so that a dead ensemble is not hammered (a member also
/// limits connections per client address).
fn round_pause(round: u32) -> Duration {
    let base = 25u64 << round.saturating_sub(1).min(6);
    let ms = base.min(1000);
    Duration::from_millis(ms / 2 + rand::random::<u64>() % (ms + 1))
}

struct Pending {
    xid: i32,
    opcode: i32,
    reply: Option<oneshot::Sender<Reply>>,
    watch: Option<WatchReg>,
    sent: Instant,
}

type OneShots = Vec<(u64, oneshot::Sender<WireEvent>)>;
type Persistents = Vec<(u64, bool, fanout::Sender<PathEvent>)>;

/// How many events a persistent watch's subscriber may fall behind before newer ones are
/// dropped for a [`WireEvent::Lagged`] marker (see [`merge_path_events`]).
pub(crate) const PERSISTENT_QUEUE: usize = fanout::CAPACITY;

/// Two queued events of a persistent watch as one, for a subscriber whose queue is full: an
/// end of the watch (`Resync`, `SessionEnded`) wins, since the subscriber re-reads (or stops)
/// after it anyway; any other pair becomes a `Lagged` marker at the watched path, so the
/// subscriber is told that events were dropped instead of losing them silently. Memory stays
/// bounded however slowly the subscriber reads.
pub(crate) fn merge_path_events(last: PathEvent, new: PathEvent, watch_path: &str) -> PathEvent {
    if last.event.is_terminal() {
        last
    } else if new.event.is_terminal() {
        new
    } else if last.event == WireEvent::Lagged {
        last
    } else {
        PathEvent {
            event: WireEvent::Lagged,
            path: watch_path.to_string(),
        }
    }
}

struct Task {
    cfg: ConnConfig,
    shared: Arc<ConnShared>,
    requests: mpsc::UnboundedReceiver<Packet>,
    control: mpsc::UnboundedReceiver<Control>,
    pending: VecDeque<Pending>,
    auth_pending: VecDeque<oneshot::Sender<Reply>>,
    next_xid: i32,
    watches: HashMap<(String, WatchClass), OneShots>,
    /// Requests in flight that will register a one-shot watch, per key.
    pending_regs: HashMap<(String, WatchClass), usize>,
    persistent: HashMap<String, Persistents>,
    /// Paths whose watches were all removed (`removeWatches` of kind Any), with that request's
    /// xid: a one-shot watch set by a request sent before it is gone on the server.
    removed_all: HashMap<String, i32>,
    wbuf: Vec<u8>,
    wpos: usize,
    seen_rw: bool,
}

/// Why serving one connection stopped.
enum Exit {
    Broken(String),
    MoveTo {
        server: usize,
        done: oneshot::Sender<Result<(), String>>,
    },
    Close,
    Expired,
    AuthFailed,
}

/// How the task ends.
enum End {
    Expired,
    AuthFailed,
    Closed,
}

impl Task {
    fn new(
        cfg: ConnConfig,
        shared: Arc<ConnShared>,
        requests: mpsc::UnboundedReceiver<Packet>,
        control: mpsc::UnboundedReceiver<Control>,
        seen_rw: bool,
    ) -> Task {
        Task {
            cfg,
            shared,
            requests,
            control,
            pending: VecDeque::new(),
            auth_pending: VecDeque::new(),
            next_xid: 1,
            watches: HashMap::new(),
            pending_regs: HashMap::new(),
            persistent: HashMap::new(),
            removed_all: HashMap::new(),
            wbuf: Vec::with_capacity(64 * 1024),
            wpos: 0,
            seen_rw,
        }
    }

    async fn run(mut self, first: Established) {
        let mut est = first;
        let end = loop {
            let exit = self.serve(est).await;
            let (first, done) = match exit {
                Exit::Close => break End::Closed,
                Exit::Expired => break End::Expired,
                Exit::AuthFailed => break End::AuthFailed,
                Exit::Broken(why) => {
                    tracing::info!(reason = %why, "zkr: connection to ZooKeeper broken; resuming the session");
                    (None, None)
                }
                Exit::MoveTo { server, done } => (Some(server), Some(done)),
            };
            self.disconnected();
            match self.reconnect(first, done).await {
                Ok(e) => est = e,
                Err(end) => break end,
            }
        };
        self.finish(end);
    }

    fn timeout(&self) -> Duration {
        self.shared.session().timeout
    }

    fn xid(&mut self) -> i32 {
        let x = self.next_xid;
        self.next_xid = if x == i32::MAX { 1 } else { x + 1 };
        x
    }

    /// Appends a packet to the write buffer and queues it as pending.
    fn enqueue(&mut self, mut p: Packet) {
        let opcode = records::opcode_of(&p.frame);
        if opcode == op::AUTH {
            records::set_xid(&mut p.frame, xid::AUTH);
            self.wbuf.extend_from_slice(&p.frame);
            if let Some(tx) = p.reply {
                self.auth_pending.push_back(tx);
            }
            return;
        }
        let x = self.xid();
        records::set_xid(&mut p.frame, x);
        self.wbuf.extend_from_slice(&p.frame);
        if let Some(WatchReg::OneShot { path, class, .. }) = &p.watch {
            *self.pending_regs.entry((path.clone(), *class)).or_insert(0) += 1;
        }
        self.pending.push_back(Pending {
            xid: x,
            opcode,
            reply: p.reply,
            watch: p.watch,
            sent: Instant::now(),
        });
    }

    fn enqueue_frame(&mut self, frame: Vec<u8>) {
        self.enqueue(Packet {
            frame,
            reply: None,
            watch: None,
        });
    }

    async fn serve(&mut self, est: Established) -> Exit {
        let Established {
            stream,
            mut frames,
            response,
            ..
        } = est;
        let (mut rd, mut wr) = stream.into_split();
        let tls = wr.needs_flush();
        // TLS may keep encrypted bytes of a completed write buffered: flush once drained.
        let mut unflushed = false;
        let t = self.timeout();
        let read_timeout = t * 2 / 3;
        let ping_every = t / 3;
        let mut last_recv = Instant::now();
        let mut last_send = Instant::now();
        let _ = response;
        // One timer for both pings and the dead-connection check (not two per loop turn).
        let mut tick = tokio::time::interval((t / 12).max(Duration::from_millis(5)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            loop {
                let frame = match frames.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return Exit::Broken(format!("malformed frame: {e}")),
                };
                if let Some(exit) = self.on_frame(frame) {
                    return exit;
                }
            }
            let can_send = self.pending.len() < self.cfg.max_in_flight;
            let writing = self.wpos < self.wbuf.len();
            let out = &self.wbuf[self.wpos..];
            let wr_ref = &mut wr;
            // Write what is buffered; once all is written, flush (TLS may hold some back).
            let io = async move {
                if out.is_empty() {
                    wr_ref.flush().await.map(|()| None)
                } else {
                    wr_ref.write(out).await.map(Some)
                }
            };
            tokio::select! {
                biased;
                r = rd.read_buf(frames.space(64 * 1024)) => match r {
                    Ok(0) => return Exit::Broken("the server closed the connection".into()),
                    Ok(_) => last_recv = Instant::now(),
                    Err(e) => return Exit::Broken(e.to_string()),
                },
                r = io, if writing || unflushed => match r {
                    Ok(Some(n)) => {
                        self.wpos += n;
                        unflushed = tls;
                        if self.wpos == self.wbuf.len() {
                            self.wbuf.clear();
                            self.wpos = 0;
                        }
                    }
                    Ok(None) => unflushed = false,
                    Err(e) => return Exit::Broken(e.to_string()),
                },
                c = self.control.recv() => match c {
                    Some(Control::Unwatch { path, class, id }) => self.unwatch(path, class, id),
                    Some(Control::UnwatchPersistent { path, id }) => {
                        self.unwatch_persistent(path, id)
                    }
                    Some(Control::MoveTo { server, done }) => return Exit::MoveTo { server, done },
                    Some(Control::Close) | None => {
                        self.close_session(&mut rd, &mut wr, &mut frames).await;
                        return Exit::Close;
                    }
                },
                p = self.requests.recv(), if can_send => match p {
                    Some(p) => {
                        self.enqueue(p);
                        while self.pending.len() < self.cfg.max_in_flight
                            && self.wbuf.len() < 1 << 20
                        {
                            match self.requests.try_recv() {
                                Ok(p) => self.enqueue(p),
                                Err(_) => break,
                            }
                        }
                        last_send = Instant::now();
                        // Most writes complete at once: spare a turn of the loop.
                        if let Some(n) = wr.try_write_now(&self.wbuf[self.wpos..]) {
                            self.wpos += n;
                            unflushed = tls;
                            if self.wpos == self.wbuf.len() {
                                self.wbuf.clear();
                                self.wpos = 0;
                            }
                        }
                    }
                    None => {
                        self.close_session(&mut rd, &mut wr, &mut frames).await;
                        return Exit::Close;
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.duration_since(last_recv) >= read_timeout {
                        return Exit::Broken(format!("no reply from the server for {read_timeout:?}"));
                    }
                    if now.duration_since(last_send) >= ping_every {
                        let mut f = records::request(op::PING, |_| {});
                        records::set_xid(&mut f, xid::PING);
                        self.wbuf.extend_from_slice(&f);
                        last_send = now;
                    }
                }
            }
        }
    }

    /// Sends `closeSession` and waits (bounded) for its reply or the server closing.
    async fn close_session(
        &mut self,
        rd: &mut StreamRead,
        wr: &mut StreamWrite,
        frames: &mut FrameReader,
    ) {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Packet {
            frame: records::request(op::CLOSE_SESSION, |_| {}),
            reply: Some(tx),
            watch: None,
        });
        let wait = async {
            if wr.write_all(&self.wbuf[self.wpos..]).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            self.wbuf.clear();
            self.wpos = 0;
            loop {
                loop {
                    match frames.next_frame() {
                        Ok(Some(f)) => {
                            let _ = self.on_frame(f);
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
                if !self.pending.iter().any(|p| p.opcode == op::CLOSE_SESSION) {
                    return;
                }
                match rd.read_buf(frames.space(4096)).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
        drop(rx);
    }

    /// Handles one frame; `Some` ends serving this connection.
    fn on_frame(&mut self, frame: &[u8]) -> Option<Exit> {
        let h = match records::reply_header(frame) {
            Ok(h) => h,
            Err(e) => return Some(Exit::Broken(format!("malformed reply header: {e}"))),
        };
        let body = &frame[records::REPLY_HEADER..];
        match h.xid {
            xid::NOTIFICATION => match records::watcher_event(body) {
                Ok(ev) => self.dispatch(ev.kind, &ev.path),
                Err(e) => return Some(Exit::Broken(format!("malformed notification: {e}"))),
            },
            xid::PING => {}
            xid::AUTH => {
                if let Some(tx) = self.auth_pending.pop_front() {
                    let _ = tx.send(Reply {
                        err: h.err,
                        body: Vec::new(),
                    });
                }
                if h.err == code::AUTH_FAILED {
                    return Some(Exit::AuthFailed);
                }
            }
            x => {
                let Some(p) = self.pending.pop_front() else {
                    return Some(Exit::Broken(format!("reply to xid {x}, nothing pending")));
                };
                if p.xid != x {
                    return Some(Exit::Broken(format!(
                        "reply to xid {x}, expected {}",
                        p.xid
                    )));
                }
                if h.zxid > 0 {
                    self.shared.last_zxid.fetch_max(h.zxid, Ordering::AcqRel);
                }
                if h.err == code::OK
                    && (is_leader_confirmed(p.opcode) || self.shared.state() == WireState::ReadOnly)
                {
                    // (A read-only member has no leader: any answer is all there is to have.)
                    self.shared.confirmed(p.sent);
                }
                if let Some(w) = p.watch {
                    self.register(w, h.err, p.xid);
                }
                match p.reply {
                    Some(tx) => {
                        let _ = tx.send(Reply {
                            err: h.err,
                            body: body.to_vec(),
                        });
                    }
                    None if h.err != code::OK => {
                        tracing::debug!(
                            opcode = p.opcode,
                            err = h.err,
                            "zkr: error reply to an internal request"
                        );
                    }
                    None => {}
                }
                if h.err == code::SESSION_EXPIRED {
                    return Some(Exit::Expired);
                }
            }
        }
        None
    }

    fn register(&mut self, w: WatchReg, err: i32, request_xid: i32) {
        match w {
            WatchReg::OneShot {
                path,
                class,
                id,
                tx,
                on_no_node,
            } => {
                let key = (path, class);
                if let Some(n) = self.pending_regs.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.pending_regs.remove(&key);
                    }
                }
                let set = err == code::OK || (on_no_node && err == code::NO_NODE);
                if !set {
                    return;
                }
                let removed = self
                    .removed_all
                    .get(&key.0)
                    .is_some_and(|x| *x > request_xid);
                if removed && !self.pending_regs.keys().any(|(p, _)| *p == key.0) {
                    self.removed_all.remove(&key.0);
                }
                if removed {
                    // Set, then removed on the server by a later removeWatches: re-read.
                    let _ = tx.send(WireEvent::Resync);
                } else if tx.is_closed() {
                    // Dropped while in flight: the server has the watch, nobody wants it.
                    self.maybe_remove(key);
                } else {
                    self.watches.entry(key).or_default().push((id, tx));
                }
            }
            WatchReg::Persistent {
                path,
                recursive,
                id,
                tx,
            } => {
                if err == code::OK {
                    self.persistent
                        .entry(path)
                        .or_default()
                        .push((id, recursive, tx));
                }
            }
        }
    }

    fn unwatch(&mut self, path: String, class: WatchClass, id: u64) {
        let key = (path, class);
        // No entry: the watch already fired (or was never set), so the server holds nothing
        // to remove; a removeWatches would only earn a NoWatcher reply, ahead of the next
        // request (a resigning leader's delete, say).
        let Some(v) = self.watches.get_mut(&key) else {
            return;
        };
        v.retain(|(i, tx)| *i != id && !tx.is_closed());
        self.maybe_remove(key);
    }

    /// Asks the server to drop the watch of `key` (which it holds) once no local watcher and
    /// no request in flight needs it.
    fn maybe_remove(&mut self, key: (String, WatchClass)) {
        if self.watches.get(&key).is_some_and(|v| !v.is_empty()) {
            return;
        }
        self.watches.remove(&key);
        if self.pending_regs.contains_key(&key) {
            return;
        }
        let (path, class) = key;
        let kind = match class {
            WatchClass::Data => watcher_type::DATA,
            WatchClass::Child => watcher_type::CHILDREN,
        };
        self.enqueue_frame(records::request(op::REMOVE_WATCHES, |b| {
            b.put_str(&path);
            b.put_i32(kind);
        }));
    }

    fn unwatch_persistent(&mut self, path: String, id: u64) {
        let Some(v) = self.persistent.get_mut(&path) else {
            return;
        };
        let Some(pos) = v.iter().position(|(i, _, _)| *i == id) else {
            return;
        };
        v.remove(pos);
        if !v.is_empty() {
            return;
        }
        self.persistent.remove(&path);
        // ZooKeeper 3.8 cannot remove a persistent watch by itself (its removeWatches knows
        // only data, child and "any" watches), so every watch of this session on the path goes;
        // the one-shot watchers there are told to re-read, which sets them again.
        let x = self.next_xid;
        self.enqueue_frame(records::request(op::REMOVE_WATCHES, |b| {
            b.put_str(&path);
            b.put_i32(watcher_type::ANY);
        }));
        self.removed_all.insert(path.clone(), x);
        for class in [WatchClass::Data, WatchClass::Child] {
            for (_, tx) in self
                .watches
                .remove(&(path.clone(), class))
                .unwrap_or_default()
            {
                let _ = tx.send(WireEvent::Resync);
            }
        }
    }

    fn client_path(&self, server_path: &str) -> String {
        match &self.cfg.chroot {
            Some(c) => match server_path.strip_prefix(c.as_str()) {
                Some("") => "/".to_string(),
                Some(rest) if rest.starts_with('/') => rest.to_string(),
                _ => server_path.to_string(),
            },
            None => server_path.to_string(),
        }
    }

    /// Delivers a notification to the one-shot and persistent watchers it concerns.
    fn dispatch(&mut self, kind: i32, path: &str) {
        let (ev, classes): (WireEvent, &[WatchClass]) = match kind {
            event::CREATED => (WireEvent::Created, &[WatchClass::Data]),
            event::DATA_CHANGED => (WireEvent::DataChanged, &[WatchClass::Data]),
            event::DELETED => (WireEvent::Deleted, &[WatchClass::Data, WatchClass::Child]),
            event::CHILDREN_CHANGED => (WireEvent::ChildrenChanged, &[WatchClass::Child]),
            // State notifications (kind None) and watch-removed events carry nothing to do.
            _ => return,
        };
        for class in classes {
            if let Some(v) = self.watches.remove(&(path.to_string(), *class)) {
                for (_, tx) in v {
                    let _ = tx.send(ev);
                }
            }
        }
        if self.persistent.is_empty() {
            return;
        }
        let client_path = self.client_path(path);
        let mut prefix = path;
        let mut exact = true;
        loop {
            if self.persistent.contains_key(prefix) {
                let watch_path = self.client_path(prefix);
                if let Some(v) = self.persistent.get_mut(prefix) {
                    v.retain(|(_, recursive, tx)| {
                        let wanted = if *recursive {
                            ev != WireEvent::ChildrenChanged
                        } else {
                            exact
                        };
                        !wanted
                            || tx
                                .send_or_merge(
                                    PathEvent {
                                        event: ev,
                                        path: client_path.clone(),
                                    },
                                    |last, new| merge_path_events(last, new, &watch_path),
                                )
                                .is_ok()
                    });
                }
            }
            if prefix == "/" {
                break;
            }
            prefix = match prefix.rfind('/') {
                Some(0) => "/",
                Some(i) => &prefix[..i],
                None => break,
            };
            exact = false;
        }
    }

    /// The connection broke: fail what was in flight, tell the watchers to resync later.
    fn disconnected(&mut self) {
        let _ = self.shared.state.send_replace(WireState::Disconnected);
        self.wbuf.clear();
        self.wpos = 0;
        for p in self.pending.drain(..) {
            if let Some(tx) = p.reply {
                let _ = tx.send(Reply {
                    err: code::CONNECTION_LOSS,
                    body: Vec::new(),
                });
            }
        }
        self.auth_pending.clear();
        self.pending_regs.clear();
        self.removed_all.clear();
    }

    fn fire_all(&mut self, ev: WireEvent) {
        for (_, v) in self.watches.drain() {
            for (_, tx) in v {
                let _ = tx.send(ev);
            }
        }
        for (path, v) in self.persistent.drain() {
            for (_, _, tx) in v {
                // The end of the watch: it replaces the newest queued event if the queue is full.
                let _ = tx.send_latest(PathEvent {
                    event: ev,
                    path: path.clone(),
                });
            }
        }
    }

    /// Resumes the session, on `first` first if given; gives up on expiry, rejected
    /// credentials or close.
    async fn reconnect(
        &mut self,
        first: Option<usize>,
        mut done: Option<oneshot::Sender<Result<(), String>>>,
    ) -> Result<Established, End> {
        let n = self.cfg.servers.len().max(1);
        let info = self.shared.session();
        let mut next = first.unwrap_or(info.server + 1) % n;
        let per_host = (info.timeout / n as u32).max(Duration::from_millis(100));
        let mut attempt = 0u32;
        loop {
            let (host, port) = self.cfg.servers[next].clone();
            let req = ConnectRequest {
                last_zxid_seen: self.shared.last_zxid.load(Ordering::Acquire),
                timeout: self.cfg.session_timeout,
                session_id: info.id,
                passwd: info.passwd.clone(),
                read_only: self.cfg.read_only,
            };
            let auth = self.cfg.auth.snapshot();
            let sec = Security {
                auth: &auth,
                tls: self.cfg.tls.as_ref().map(|t| &*t.0),
                sasl: self.cfg.sasl.as_ref(),
            };
            let hs = handshake(&host, port, &req, sec, MAX_FRAME, per_host);
            let r = tokio::select! {
                r = hs => Some(r),
                c = self.control.recv() => match c {
                    Some(Control::Close) | None => return Err(End::Closed),
                    Some(Control::MoveTo { server, done: d }) => {
                        next = server % n;
                        if let Some(old) = done.replace(d) {
                            let _ = old.send(Err("superseded by another move".into()));
                        }
                        None
                    }
                    Some(Control::Unwatch { path, class, id }) => {
                        if let Some(v) = self.watches.get_mut(&(path, class)) {
                            v.retain(|(i, _)| *i != id);
                        }
                        None
                    }
                    Some(Control::UnwatchPersistent { path, id }) => {
                        if let Some(v) = self.persistent.get_mut(&path) {
                            v.retain(|(i, _, _)| *i != id);
                        }
                        None
                    }
                },
            };
            let Some(r) = r else { continue };
            match r {
                Ok(est) => {
                    let ro = est.response.read_only;
                    self.seen_rw |= !ro;
                    {
                        let mut s = crate::sync::lock(&self.shared.session);
                        s.server = next;
                        s.timeout = Duration::from_millis(
                            u64::try_from(est.response.timeout_ms).unwrap_or(0),
                        );
                    }
                    // A member revalidates a resumed session with the leader (which touches it)
                    // before it answers the handshake.
                    self.shared.confirmed(est.sent);
                    if let Some(d) = done.take() {
                        let _ = d.send(Ok(()));
                    }
                    self.fire_all(WireEvent::Resync);
                    self.shared.resumes.fetch_add(1, Ordering::AcqRel);
                    let _ = self.shared.state.send_replace(if ro {
                        WireState::ReadOnly
                    } else {
                        WireState::Connected
                    });
                    tracing::info!(server = %format!("{host}:{port}"), read_only = ro, "zkr: session resumed");
                    return Ok(est);
                }
                Err(HandshakeError::Expired) => return Err(End::Expired),
                Err(HandshakeError::AuthFailed) => return Err(End::AuthFailed),
                Err(e) => {
                    tracing::debug!(server = %format!("{host}:{port}"), error = %e, "zkr: reconnect attempt failed");
                    if let Some(d) = done.take() {
                        let _ = d.send(Err(format!("{host}:{port}: {e}")));
                    }
                }
            }
            next = (next + 1) % n;
            attempt += 1;
            if attempt % n as u32 == 0 {
                tokio::time::sleep(round_pause(attempt / n as u32)).await;
            }
        }
    }

    fn finish(mut self, end: End) {
        let state = match end {
            End::Expired => WireState::Expired,
            End::AuthFailed => WireState::AuthFailed,
            End::Closed => WireState::Closed,
        };
        let err = match end {
            End::Expired => code::SESSION_EXPIRED,
            End::AuthFailed => code::AUTH_FAILED,
            End::Closed => code::CONNECTION_LOSS,
        };
        // Publish first: callers that see their reply dropped read the reason from the state.
        let _ = self.shared.state.send_replace(state);
        for p in self.pending.drain(..) {
            if let Some(tx) = p.reply {
                let _ = tx.send(Reply {
                    err,
                    body: Vec::new(),
                });
            }
        }
        self.fire_all(WireEvent::SessionEnded);
        self.requests.close();
        self.control.close();
        tracing::debug!(?state, "zkr: connection task ended");
    }
}

/// Decode errors surface as protocol errors to callers.
impl From<DecodeError> for crate::error::Error {
    fn from(e: DecodeError) -> Self {
        crate::error::Error::Protocol(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    //! Hostile input: random, truncated and corrupted frames go through the same code as the
    //! socket's bytes. Nothing may panic, and a length prefix may never make anything allocate
    //! beyond what arrived.
    use super::*;
    use crate::proto::codec::FrameReader;
    use crate::proto::jute::Reader;
    use rand::{Rng, SeedableRng};

    fn task() -> Task {
        let (_req_tx, requests) = mpsc::unbounded_channel();
        let (_ctl_tx, control) = mpsc::unbounded_channel();
        let cfg = ConnConfig {
            servers: vec![("127.0.0.1".into(), 1)],
            session_timeout: Duration::from_secs(1),
            read_only: false,
            auth: Default::default(),
            max_in_flight: 16,
            chroot: Some("/chroot".into()),
            tls: None,
            sasl: None,
        };
        let session = SessionInfo {
            id: 1,
            passwd: vec![0; 16],
            timeout: Duration::from_secs(1),
            server: 0,
        };
        let shared = Arc::new(ConnShared::new(WireState::Connected, session));
        Task::new(cfg, shared, requests, control, true)
    }

    /// A plausible reply frame: a real header (xid among the special ones and 1..4) followed by
    /// random bytes, sometimes shaped like a notification.
    fn frame(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
        let mut f = Vec::new();
        let xid = [-1, -2, -4, 1, 2, 3, rng.gen()][rng.gen_range(0..7)];
        f.put_i32(xid);
        f.put_i64(rng.gen());
        f.put_i32([0, -101, -112, -4, rng.gen()][rng.gen_range(0..5)]);
        if xid == -1 && rng.gen_bool(0.5) {
            f.put_i32(rng.gen_range(-2..8));
            f.put_i32(3);
            let path = ["/chroot/a", "/", "/chroot", "", "/x/y/z"][rng.gen_range(0..5)];
            f.put_str(path);
        }
        let extra = rng.gen_range(0..64);
        f.extend((0..extra).map(|_| rng.gen::<u8>()));
        if rng.gen_bool(0.3) && !f.is_empty() {
            let cut = rng.gen_range(0..f.len());
            f.truncate(cut);
        }
        f
    }

    #[test]
    fn random_frames_never_panic_the_connection_task() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for round in 0..2_000 {
            let mut t = task();
            for _ in 0..rng.gen_range(0..4) {
                let (tx, _rx) = oneshot::channel();
                let (wtx, _wrx) = oneshot::channel();
                t.enqueue(Packet {
                    frame: records::request(op::GET_DATA, |b| {
                        records::put_path_watch(b, "/chroot/a", true)
                    }),
                    reply: Some(tx),
                    watch: Some(WatchReg::OneShot {
                        path: "/chroot/a".into(),
                        class: WatchClass::Data,
                        id: round,
                        tx: wtx,
                        on_no_node: rng.gen(),
                    }),
                });
            }
            let (ptx, _prx) = fanout::channel(PERSISTENT_QUEUE);
            t.persistent
                .entry("/chroot".into())
                .or_default()
                .push((1, rng.gen(), ptx));
            for _ in 0..8 {
                let f = frame(&mut rng);
                if t.on_frame(&f).is_some() {
                    break;
                }
            }
        }
    }

    /// A reply frame: header only (the task passes bodies on without reading them).
    fn reply(xid: i32, err: i32) -> Vec<u8> {
        let mut f = Vec::new();
        f.put_i32(xid);
        f.put_i64(7);
        f.put_i32(err);
        f
    }

    /// Enqueues a getData that sets a data watch on `path` (watcher `id`); returns the watch's
    /// receiver (keep it, or the watch counts as dropped).
    fn get_data_watch(t: &mut Task, path: &str, id: u64) -> oneshot::Receiver<WireEvent> {
        let (tx, _rx) = oneshot::channel();
        let (wtx, wrx) = oneshot::channel();
        t.enqueue(Packet {
            frame: records::request(op::GET_DATA, |b| records::put_path_watch(b, path, true)),
            reply: Some(tx),
            watch: Some(WatchReg::OneShot {
                path: path.into(),
                class: WatchClass::Data,
                id,
                tx: wtx,
                on_no_node: false,
            }),
        });
        wrx
    }

    #[test]
    fn remove_watches_only_for_watches_the_server_holds() {
        let mut t = task();
        // A watch set and then dropped: the server holds it, so it is removed.
        let _w = get_data_watch(&mut t, "/chroot/a", 1);
        assert!(t.on_frame(&reply(1, code::OK)).is_none());
        let before = t.wbuf.len();
        t.unwatch("/chroot/a".into(), WatchClass::Data, 1);
        assert!(t.wbuf.len() > before, "no removeWatches sent");
        assert_eq!(records::opcode_of(&t.wbuf[before..]), op::REMOVE_WATCHES);
        assert!(t.on_frame(&reply(2, code::OK)).is_none());
        // A watch that fired before it was dropped: the server holds nothing, nothing is sent.
        let _w = get_data_watch(&mut t, "/chroot/b", 2);
        assert!(t.on_frame(&reply(3, code::OK)).is_none());
        let mut ev = reply(-1, code::OK);
        ev.put_i32(event::DELETED);
        ev.put_i32(3);
        ev.put_str("/chroot/b");
        assert!(t.on_frame(&ev).is_none());
        let before = t.wbuf.len();
        t.unwatch("/chroot/b".into(), WatchClass::Data, 2);
        assert_eq!(
            t.wbuf.len(),
            before,
            "a removeWatches for a watch that already fired"
        );
    }

    #[tokio::test]
    async fn a_resume_too_quick_to_see_still_shows() {
        let t = task();
        let mut states = crate::wire::WireStates::new(t.shared.clone());
        assert!(!states.resumed());
        // Dropped and resumed before the session layer looked: it sees Connected only...
        let _ = t.shared.state.send_replace(WireState::Disconnected);
        t.shared.resumes.fetch_add(1, Ordering::AcqRel);
        let _ = t.shared.state.send_replace(WireState::Connected);
        assert_eq!(states.changed().await, WireState::Connected);
        // ...and learns from the counter that the connection had dropped in between.
        assert!(states.resumed());
        assert!(!states.resumed());
    }

    #[test]
    fn random_bytes_never_panic_the_decoders() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..96);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = records::reply_header(&bytes);
            let _ = records::watcher_event(&bytes);
            let _ = records::multi_results(&bytes);
            let _ = records::connect_response(&bytes);
            let mut r = Reader::new(&bytes);
            let _ = (r.stat(), r.acls(), r.strs(), r.buf(), r.str());
            let mut fr = FrameReader::new(1 << 20);
            fr.push(&bytes);
            while let Ok(Some(_)) = fr.next_frame() {}
        }
    }

    #[test]
    fn hostile_length_prefixes_allocate_nothing_beyond_the_frame() {
        // A vector claiming 2^31-1 strings, a buffer claiming 1 GiB, a multi reply that never
        // says "done": each fails fast with a typed error.
        for claimed in [i32::MAX, 1 << 30, 1 << 20, 70_000] {
            let mut b = Vec::new();
            b.put_i32(claimed);
            b.extend_from_slice(&[0; 16]);
            assert!(Reader::new(&b).strs().is_err());
            assert!(Reader::new(&b).buf().is_err());
            assert!(Reader::new(&b).acls().is_err());
            let mut fr = FrameReader::new(crate::proto::codec::MAX_FRAME);
            fr.push(&b);
            // Either too large at once, or waiting for bytes that never came: never a frame.
            assert!(!matches!(fr.next_frame(), Ok(Some(_))));
        }
        let mut never_done = Vec::new();
        for _ in 0..1_000 {
            records::put_multi_header(&mut never_done, op::DELETE, false);
        }
        assert!(records::multi_results(&never_done).is_err());
    }

    /// A persistent watch's subscriber that never reads holds at most a queue's worth of
    /// events: the first ones in order, then one `Lagged` marker at the watched path; an end of
    /// the watch still gets through.
    #[test]
    fn a_persistent_watch_queue_is_bounded_and_marks_what_it_dropped() {
        let (tx, mut rx) = fanout::channel(PERSISTENT_QUEUE);
        let ev = |event, path: &str| PathEvent {
            event,
            path: path.to_string(),
        };
        for i in 0..100_000 {
            tx.send_or_merge(ev(WireEvent::DataChanged, &format!("/w/{i}")), |a, b| {
                merge_path_events(a, b, "/w")
            })
            .unwrap();
        }
        assert_eq!(rx.len(), PERSISTENT_QUEUE);
        tx.send_latest(ev(WireEvent::Resync, "/w")).unwrap();
        drop(tx);
        let mut got = Vec::new();
        while let Some(e) = futures::executor::block_on(rx.recv()) {
            got.push(e);
        }
        assert_eq!(got.len(), PERSISTENT_QUEUE);
        for (i, e) in got[..PERSISTENT_QUEUE - 1].iter().enumerate() {
            assert_eq!(*e, ev(WireEvent::DataChanged, &format!("/w/{i}")));
        }
        // The marker was replaced by the end of the watch, which says "read again" too.
        assert_eq!(got[PERSISTENT_QUEUE - 1], ev(WireEvent::Resync, "/w"));

        let lagged = merge_path_events(
            ev(WireEvent::Created, "/w/a"),
            ev(WireEvent::Deleted, "/w/b"),
            "/w",
        );
        assert_eq!(lagged, ev(WireEvent::Lagged, "/w"));
        assert_eq!(
            merge_path_events(lagged.clone(), ev(WireEvent::Created, "/w/c"), "/w"),
            lagged
        );
        let ended = ev(WireEvent::SessionEnded, "/w");
        assert_eq!(
            merge_path_events(ended.clone(), ev(WireEvent::Created, "/w/c"), "/w"),
            ended
        );
    }
}
