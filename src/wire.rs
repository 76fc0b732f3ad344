//! The handle to one ZooKeeper session's connection (the session layer's only way to the
//! wire). Cheap to clone; every request is sent when its method is *called* (not when the
//! future is first polled), so two calls made back to back are pipelined in call order.
//!
//! It turns zkr's types into frames ([`crate::proto`]) and replies into zkr's types and
//! [`Error`]s, applies the chroot, and hands out one-shot watches ([`WireWatch`]) and
//! persistent watches ([`WirePersistentWatch`]). The connection task behind it
//! ([`crate::proto::connection`]) owns the socket.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, ErrorCode, Result};
use crate::proto::connection::{
    self, ConnConfig, ConnShared, Control, Packet, PathEvent, Reply, WatchClass, WatchReg,
};
use crate::proto::jute::{JuteWrite, Reader};
use crate::proto::records::{self, op, MultiResult};
use crate::proto::HandshakeError;
use crate::types::{Acl, ClientInfo, CreateMode, Op, OpResult, ReadOp, ReadResult, Stat};

pub(crate) use crate::proto::connection::{WireEvent, WireState};

/// Settings of one wire session.
#[derive(Clone, Debug)]
pub(crate) struct WireConfig {
    pub servers: Vec<(String, u16)>,
    pub chroot: Option<String>,
    pub session_timeout: Duration,
    pub auth: crate::types::AuthStore,
    /// Accept read-only sessions from a server that lost its quorum.
    pub read_only: bool,
    /// Requests unanswered on the socket at most.
    pub max_in_flight: usize,
    /// Encrypt every connection.
    pub tls: Option<crate::proto::tls::TlsHandle>,
    /// Log in with SASL DIGEST-MD5 in every handshake.
    pub sasl: Option<crate::proto::sasl::SaslDigest>,
}

impl WireConfig {
    /// `host:port,...` of the servers.
    pub fn servers_string(&self) -> String {
        self.servers
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Session credentials (used to expire a session on purpose in tests).
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
#[derive(Clone)]
pub(crate) struct WireSession {
    pub id: i64,
    pub passwd: Vec<u8>,
}

/// Watches the connection's state.
pub(crate) struct WireStates {
    rx: watch::Receiver<WireState>,
    shared: Arc<ConnShared>,
    /// Resumes seen so far (see [`WireStates::resumed`]).
    resumes: u64,
}

impl WireStates {
    pub(crate) fn new(shared: Arc<ConnShared>) -> WireStates {
        let rx = shared.state.subscribe();
        let resumes = shared.resumes.load(std::sync::atomic::Ordering::Acquire);
        WireStates {
            rx,
            shared,
            resumes,
        }
    }

    pub fn current(&mut self) -> WireState {
        *self.rx.borrow_and_update()
    }

    /// The next state; `Closed` once the connection task is gone.
    pub async fn changed(&mut self) -> WireState {
        match self.rx.changed().await {
            Ok(()) => *self.rx.borrow_and_update(),
            Err(_) => {
                let s = *self.rx.borrow();
                if s.is_terminal() {
                    s
                } else {
                    WireState::Closed
                }
            }
        }
    }

    /// Whether the connection was resumed (so it had dropped) since the last call: true even
    /// when the drop and the resume came too fast for `changed` to show `Disconnected`.
    pub fn resumed(&mut self) -> bool {
        let now = self
            .shared
            .resumes
            .load(std::sync::atomic::Ordering::Acquire);
        let resumed = now != self.resumes;
        self.resumes = now;
        resumed
    }
}

/// A one-shot server watch. Dropping it unfired removes the watch (server side too, when it
/// was the last watcher of its kind on the path).
pub(crate) struct WireWatch {
    rx: Option<oneshot::Receiver<WireEvent>>,
    path: String,
    class: WatchClass,
    id: u64,
    ctl: mpsc::UnboundedSender<Control>,
    shared: Arc<ConnShared>,
}

impl std::fmt::Debug for WireWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireWatch")
            .field("path", &self.path)
            .field("class", &self.class)
            .finish()
    }
}

impl WireWatch {
    pub async fn fired(mut self) -> WireEvent {
        // Await through `&mut` so that dropping this future unfired still runs `Drop`.
        let Some(rx) = self.rx.as_mut() else {
            return WireEvent::SessionEnded;
        };
        let r = rx.await;
        self.rx = None;
        match r {
            Ok(ev) => ev,
            // Dropped unfired: the connection broke before the watch was set, or ended.
            Err(_) if self.shared.state().is_terminal() => WireEvent::SessionEnded,
            Err(_) => WireEvent::Resync,
        }
    }
}

impl Drop for WireWatch {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            if rx.try_recv().is_err() {
                let _ = self.ctl.send(Control::Unwatch {
                    path: std::mem::take(&mut self.path),
                    class: self.class,
                    id: self.id,
                });
            }
        }
    }
}

/// A persistent (optionally recursive) watch: every change at or under its path, until the
/// connection is replaced ([`WireEvent::Resync`]) or the session ends; dropping it removes it.
/// Its queue is bounded: a subscriber that falls behind gets a [`WireEvent::Lagged`] marker
/// in place of the events that did not fit.
pub(crate) struct WirePersistentWatch {
    rx: crate::fanout::Receiver<PathEvent>,
    path: String,
    id: u64,
    ctl: mpsc::UnboundedSender<Control>,
}

impl WirePersistentWatch {
    pub fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<PathEvent>> {
        self.rx.poll_recv(cx)
    }

    /// Events queued now, not yet taken.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

impl Drop for WirePersistentWatch {
    fn drop(&mut self) {
        let _ = self.ctl.send(Control::UnwatchPersistent {
            path: std::mem::take(&mut self.path),
            id: self.id,
        });
    }
}

/// When the leader last confirmed the session (see [`ConnShared::last_confirmed`]).
#[derive(Clone)]
pub(crate) struct Liveness(Arc<ConnShared>);

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sent, recv) = self.last_confirmed();
        f.debug_struct("Liveness")
            .field("confirmed_sent", &sent)
            .field("confirmed_recv", &recv)
            .finish()
    }
}

impl Liveness {
    /// Send and receive instants of the newest reply that proves the leader heard the session.
    pub fn last_confirmed(&self) -> (Instant, Instant) {
        self.0.last_confirmed()
    }
}

struct WireInner {
    req: mpsc::UnboundedSender<Packet>,
    ctl: mpsc::UnboundedSender<Control>,
    shared: Arc<ConnShared>,
    chroot: Option<String>,
    servers: Vec<(String, u16)>,
}

impl Drop for WireInner {
    fn drop(&mut self) {
        let _ = self.ctl.send(Control::Close);
    }
}

/// One wire session.
#[derive(Clone)]
pub(crate) struct Wire {
    inner: Arc<WireInner>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("session", &format_args!("{:#x}", self.session_id()))
            .field("state", &self.inner.shared.state())
            .finish()
    }
}

/// The error for a reply code.
fn code_error(err: i32, path: &str) -> Error {
    Error::from_code(ErrorCode::from_i32(err), path)
}

impl Wire {
    /// Opens a new session; fails with `Unreachable` if none is established within
    /// `connect_timeout`.
    pub async fn connect(
        cfg: &WireConfig,
        connect_timeout: Duration,
    ) -> Result<(Wire, WireStates)> {
        let conn = ConnConfig {
            servers: cfg.servers.clone(),
            session_timeout: cfg.session_timeout,
            read_only: cfg.read_only,
            auth: cfg.auth.clone(),
            max_in_flight: cfg.max_in_flight,
            chroot: cfg.chroot.clone(),
            tls: cfg.tls.clone(),
            sasl: cfg.sasl.clone(),
        };
        match connection::open(conn, connect_timeout).await {
            Ok((shared, req, ctl)) => {
                let states = WireStates::new(shared.clone());
                let wire = Wire {
                    inner: Arc::new(WireInner {
                        req,
                        ctl,
                        shared,
                        chroot: cfg.chroot.clone(),
                        servers: cfg.servers.clone(),
                    }),
                };
                Ok((wire, states))
            }
            Err(HandshakeError::AuthFailed) => Err(Error::AuthFailed),
            Err(HandshakeError::Protocol(e)) => Err(e.into()),
            Err(HandshakeError::Sasl(e)) => Err(Error::Sasl(e.to_string())),
            Err(HandshakeError::Tls(f)) => Err(Error::Tls {
                servers: cfg.servers_string(),
                reason: f.to_string(),
            }),
            Err(e) => Err(Error::Unreachable {
                servers: cfg.servers_string(),
                after: connect_timeout,
                last_error: e.to_string(),
            }),
        }
    }

    pub fn session_id(&self) -> i64 {
        self.inner.shared.session().id
    }

    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn session(&self) -> WireSession {
        let s = self.inner.shared.session();
        WireSession {
            id: s.id,
            passwd: s.passwd,
        }
    }

    pub fn negotiated_timeout(&self) -> Duration {
        self.inner.shared.session().timeout
    }

    /// The member the session is connected to (or was last), as `(host, port)`.
    pub fn server(&self) -> (String, u16) {
        let i = self.inner.shared.session().server;
        self.inner.servers.get(i).cloned().unwrap_or_default()
    }

    /// The session's liveness record, readable after this handle is gone.
    pub fn liveness(&self) -> Liveness {
        Liveness(self.inner.shared.clone())
    }

    /// Index of the member the session is on, and how many members there are.
    pub fn server_index(&self) -> (usize, usize) {
        (self.inner.shared.session().server, self.inner.servers.len())
    }

    /// Moves the live session to `servers[index]` now (same session id and password).
    pub async fn move_to(&self, index: usize) -> Result<()> {
        if index >= self.inner.servers.len() {
            return Err(Error::InvalidArgument(format!(
                "no server #{index} in the connect string"
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.inner
            .ctl
            .send(Control::MoveTo {
                server: index,
                done: tx,
            })
            .map_err(|_| self.ended_error())?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Error::Unexpected(format!(
                "moving the session failed: {reason}"
            ))),
            Err(_) => Err(self.ended_error()),
        }
    }

    /// Closes the session now (also done when the last handle is dropped).
    pub fn close(&self) {
        let _ = self.inner.ctl.send(Control::Close);
    }

    fn ended_error(&self) -> Error {
        ended(&self.inner)
    }

    /// The server-side path of a client path (chroot prepended).
    fn full(&self, path: &str) -> String {
        match &self.inner.chroot {
            Some(c) if path == "/" => c.clone(),
            Some(c) => format!("{c}{path}"),
            None => path.to_string(),
        }
    }

    /// The client path of a server-side path (chroot removed).
    fn strip(&self, path: String) -> String {
        match &self.inner.chroot {
            Some(c) => match path.strip_prefix(c.as_str()) {
                Some("") => "/".to_string(),
                Some(rest) if rest.starts_with('/') => rest.to_string(),
                _ => path,
            },
            None => path,
        }
    }

    /// Sends a request now; the future resolves to its reply (any error code included).
    fn call(
        &self,
        frame: Vec<u8>,
        watch: Option<WatchReg>,
    ) -> impl Future<Output = Result<Reply>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.inner.req.send(Packet {
            frame,
            reply: Some(tx),
            watch,
        });
        let inner = self.inner.clone();
        async move {
            if sent.is_err() {
                return Err(ended(&inner));
            }
            rx.await.map_err(|_| ended(&inner))
        }
    }

    /// Sends a request and checks its error code.
    fn request(
        &self,
        frame: Vec<u8>,
        path: &str,
    ) -> impl Future<Output = Result<Reply>> + Send + 'static {
        let fut = self.call(frame, None);
        let path = path.to_string();
        async move {
            let r = fut.await?;
            if r.err != 0 {
                return Err(code_error(r.err, &path));
            }
            Ok(r)
        }
    }

    fn one_shot(&self, full: &str, class: WatchClass, on_no_node: bool) -> (WatchReg, WireWatch) {
        let (tx, rx) = oneshot::channel();
        let id = self
            .inner
            .shared
            .next_watch_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reg = WatchReg::OneShot {
            path: full.to_string(),
            class,
            id,
            tx,
            on_no_node,
        };
        let watch = WireWatch {
            rx: Some(rx),
            path: full.to_string(),
            class,
            id,
            ctl: self.inner.ctl.clone(),
            shared: self.inner.shared.clone(),
        };
        (reg, watch)
    }

    /// Sends a create now; the returned future resolves to the actual path and its stat.
    pub fn create<'a>(
        &'a self,
        path: &'a str,
        data: &[u8],
        mode: CreateMode,
        acl: &[Acl],
    ) -> impl Future<Output = Result<(String, Stat)>> + Send + 'a {
        let (opcode, _, _) = records::create_kind(mode);
        let full = self.full(path);
        let fut = self.request(
            records::request(opcode, |b| records::put_create(b, &full, data, acl, mode)),
            path,
        );
        async move {
            let r = fut.await?;
            let mut rd = Reader::new(&r.body);
            let created = rd.str()?;
            let stat = rd.stat()?;
            Ok((self.strip(created), stat))
        }
    }

    pub fn get_data<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<(Vec<u8>, Stat)>> + Send + 'a {
        let fut = self.request(
            records::request(op::GET_DATA, |b| {
                records::put_path_watch(b, &self.full(path), false)
            }),
            path,
        );
        async move {
            let r = fut.await?;
            let mut rd = Reader::new(&r.body);
            Ok((rd.buf()?, rd.stat()?))
        }
    }

    pub fn get_data_watch<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<(Vec<u8>, Stat, WireWatch)>> + Send + 'a {
        let full = self.full(path);
        let (reg, watch) = self.one_shot(&full, WatchClass::Data, false);
        let fut = self.call(
            records::request(op::GET_DATA, |b| records::put_path_watch(b, &full, true)),
            Some(reg),
        );
        async move {
            let r = fut.await?;
            if r.err != 0 {
                return Err(code_error(r.err, path));
            }
            let mut rd = Reader::new(&r.body);
            Ok((rd.buf()?, rd.stat()?, watch))
        }
    }

    pub fn exists<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<Option<Stat>>> + Send + 'a {
        let fut = self.call(
            records::request(op::EXISTS, |b| {
                records::put_path_watch(b, &self.full(path), false)
            }),
            None,
        );
        async move { exists_reply(fut.await?, path) }
    }

    pub fn exists_watch<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<(Option<Stat>, WireWatch)>> + Send + 'a {
        let full = self.full(path);
        let (reg, watch) = self.one_shot(&full, WatchClass::Data, true);
        let fut = self.call(
            records::request(op::EXISTS, |b| records::put_path_watch(b, &full, true)),
            Some(reg),
        );
        async move { Ok((exists_reply(fut.await?, path)?, watch)) }
    }

    pub fn set_data<'a>(
        &'a self,
        path: &'a str,
        data: &[u8],
        version: Option<i32>,
    ) -> impl Future<Output = Result<Stat>> + Send + 'a {
        let fut = self.request(
            records::request(op::SET_DATA, |b| {
                b.put_str(&self.full(path));
                b.put_buf(data);
                b.put_i32(version.unwrap_or(-1));
            }),
            path,
        );
        async move { Ok(Reader::new(&fut.await?.body).stat()?) }
    }

    pub fn delete<'a>(
        &'a self,
        path: &'a str,
        version: Option<i32>,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let fut = self.request(
            records::request(op::DELETE, |b| {
                b.put_str(&self.full(path));
                b.put_i32(version.unwrap_or(-1));
            }),
            path,
        );
        async move { fut.await.map(|_| ()) }
    }

    pub fn get_children<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<(Vec<String>, Stat)>> + Send + 'a {
        let fut = self.request(
            records::request(op::GET_CHILDREN2, |b| {
                records::put_path_watch(b, &self.full(path), false)
            }),
            path,
        );
        async move {
            let r = fut.await?;
            let mut rd = Reader::new(&r.body);
            Ok((rd.strs()?, rd.stat()?))
        }
    }

    pub fn get_children_watch<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<(Vec<String>, Stat, WireWatch)>> + Send + 'a {
        let full = self.full(path);
        let (reg, watch) = self.one_shot(&full, WatchClass::Child, false);
        let fut = self.call(
            records::request(op::GET_CHILDREN2, |b| {
                records::put_path_watch(b, &full, true)
            }),
            Some(reg),
        );
        async move {
            let r = fut.await?;
            if r.err != 0 {
                return Err(code_error(r.err, path));
            }
            let mut rd = Reader::new(&r.body);
            Ok((rd.strs()?, rd.stat()?, watch))
        }
    }

    pub fn sync<'a>(&'a self, path: &'a str) -> impl Future<Output = Result<()>> + Send + 'a {
        let fut = self.request(
            records::request(op::SYNC, |b| b.put_str(&self.full(path))),
            path,
        );
        async move { fut.await.map(|_| ()) }
    }

    pub fn add_auth<'a>(
        &'a self,
        scheme: &'a str,
        auth: &'a [u8],
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let fut = self.request(crate::proto::connect::auth_packet(scheme, auth), "");
        async move { fut.await.map(|_| ()) }
    }

    pub fn get_acl<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<(Vec<Acl>, Stat)>> + Send + 'a {
        let fut = self.request(
            records::request(op::GET_ACL, |b| b.put_str(&self.full(path))),
            path,
        );
        async move {
            let r = fut.await?;
            let mut rd = Reader::new(&r.body);
            Ok((rd.acls()?, rd.stat()?))
        }
    }

    pub fn set_acl<'a>(
        &'a self,
        path: &'a str,
        acl: &[Acl],
        version: Option<i32>,
    ) -> impl Future<Output = Result<Stat>> + Send + 'a {
        let fut = self.request(
            records::request(op::SET_ACL, |b| {
                b.put_str(&self.full(path));
                b.put_acls(acl);
                b.put_i32(version.unwrap_or(-1));
            }),
            path,
        );
        async move { Ok(Reader::new(&fut.await?.body).stat()?) }
    }

    /// Paths of this session's ephemeral nodes under `prefix`.
    pub fn get_ephemerals<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send + 'a {
        let fut = self.request(
            records::request(op::GET_EPHEMERALS, |b| b.put_str(&self.full(prefix))),
            prefix,
        );
        async move {
            let r = fut.await?;
            let paths = Reader::new(&r.body).strs()?;
            Ok(paths.into_iter().map(|p| self.strip(p)).collect())
        }
    }

    /// Number of nodes below `path` (all levels).
    pub fn get_all_children_number<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<i32>> + Send + 'a {
        let fut = self.request(
            records::request(op::GET_ALL_CHILDREN_NUMBER, |b| b.put_str(&self.full(path))),
            path,
        );
        async move { Ok(Reader::new(&fut.await?.body).i32()?) }
    }

    /// The identities the server has for this session.
    pub fn who_am_i(&self) -> impl Future<Output = Result<Vec<ClientInfo>>> + Send + '_ {
        let fut = self.request(records::request(op::WHO_AM_I, |_| {}), "");
        async move {
            let r = fut.await?;
            let mut rd = Reader::new(&r.body);
            let n = rd.i32()?;
            let mut out = Vec::new();
            for _ in 0..n.max(0) {
                out.push(ClientInfo {
                    scheme: rd.str()?,
                    user: rd.str()?,
                });
                if rd.left() == 0 {
                    break;
                }
            }
            Ok(out)
        }
    }

    /// Sets a persistent watch (recursive: on the whole subtree).
    pub fn add_watch<'a>(
        &'a self,
        path: &'a str,
        recursive: bool,
    ) -> impl Future<Output = Result<WirePersistentWatch>> + Send + 'a {
        let full = self.full(path);
        let (tx, rx) = crate::fanout::channel(connection::PERSISTENT_QUEUE);
        let id = self
            .inner
            .shared
            .next_watch_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reg = WatchReg::Persistent {
            path: full.clone(),
            recursive,
            id,
            tx,
        };
        let watch = WirePersistentWatch {
            rx,
            path: full.clone(),
            id,
            ctl: self.inner.ctl.clone(),
        };
        let fut = self.call(
            records::request(op::ADD_WATCH, |b| {
                b.put_str(&full);
                b.put_i32(i32::from(recursive));
            }),
            Some(reg),
        );
        async move {
            let r = fut.await?;
            if r.err != 0 {
                return Err(code_error(r.err, path));
            }
            Ok(watch)
        }
    }

    /// Removes every watch of `kind` (a `RemoveWatches` watcher type) on `path` on the server.
    #[allow(dead_code)]
    pub fn remove_watches<'a>(
        &'a self,
        path: &'a str,
        kind: i32,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let fut = self.request(
            records::request(op::REMOVE_WATCHES, |b| {
                b.put_str(&self.full(path));
                b.put_i32(kind);
            }),
            path,
        );
        async move { fut.await.map(|_| ()) }
    }

    /// Atomic multi-write. All ops are sent now in one request.
    pub fn multi<'a>(
        &'a self,
        ops: &'a [Op],
        acls: &[Vec<Acl>],
    ) -> impl Future<Output = Result<Vec<OpResult>>> + Send + 'a {
        let frame = records::request(op::MULTI, |b| {
            for (i, o) in ops.iter().enumerate() {
                let acl = acls.get(i).map_or(&[][..], |a| a.as_slice());
                match o {
                    Op::Create {
                        path, data, mode, ..
                    }
                    | Op::CreateWithAcl {
                        path, data, mode, ..
                    } => {
                        let (opcode, _, _) = records::create_kind(*mode);
                        records::put_multi_header(b, opcode, false);
                        records::put_create(b, &self.full(path), data, acl, *mode);
                    }
                    Op::SetData {
                        path,
                        data,
                        version,
                    } => {
                        records::put_multi_header(b, op::SET_DATA, false);
                        b.put_str(&self.full(path));
                        b.put_buf(data);
                        b.put_i32(version.unwrap_or(-1));
                    }
                    Op::Delete { path, version } => {
                        records::put_multi_header(b, op::DELETE, false);
                        b.put_str(&self.full(path));
                        b.put_i32(version.unwrap_or(-1));
                    }
                    Op::Check { path, version } => {
                        records::put_multi_header(b, op::CHECK, false);
                        b.put_str(&self.full(path));
                        b.put_i32(version.unwrap_or(-1));
                    }
                }
            }
            records::put_multi_header(b, -1, true);
        });
        let fut = self.call(frame, None);
        async move {
            let r = fut.await?;
            let results = match records::multi_results(&r.body) {
                Ok(res) => res,
                Err(_) if r.err != 0 => {
                    return Err(code_error(r.err, ops.first().map_or("", |o| o.path())))
                }
                Err(e) => return Err(e.into()),
            };
            if let Some((index, e)) = first_failure(&results) {
                let path = ops.get(index).map_or("", |o| o.path());
                return Err(Error::MultiFailed {
                    index,
                    source: Box::new(code_error(e, path)),
                });
            }
            if r.err != 0 {
                return Err(code_error(r.err, ops.first().map_or("", |o| o.path())));
            }
            results
                .into_iter()
                .map(|res| match res {
                    MultiResult::Created { path, stat } => Ok(OpResult::Created {
                        path: self.strip(path),
                        stat,
                    }),
                    MultiResult::DataSet(stat) => Ok(OpResult::DataSet { stat }),
                    MultiResult::Deleted => Ok(OpResult::Deleted),
                    MultiResult::Checked => Ok(OpResult::Checked),
                    other => Err(Error::Protocol(format!(
                        "unexpected multi result {other:?}"
                    ))),
                })
                .collect()
        }
    }

    /// Several reads in one request, each with its own outcome.
    pub fn multi_read<'a>(
        &'a self,
        ops: &'a [ReadOp],
    ) -> impl Future<Output = Result<Vec<Result<ReadResult>>>> + Send + 'a {
        let frame = records::request(op::MULTI_READ, |b| {
            for o in ops {
                let (opcode, path) = match o {
                    ReadOp::GetData { path } => (op::GET_DATA, path),
                    ReadOp::GetChildren { path } => (op::GET_CHILDREN, path),
                };
                records::put_multi_header(b, opcode, false);
                records::put_path_watch(b, &self.full(path), false);
            }
            records::put_multi_header(b, -1, true);
        });
        let fut = self.request(frame, "");
        async move {
            let r = fut.await?;
            let results = records::multi_results(&r.body)?;
            if results.len() != ops.len() {
                return Err(Error::Protocol(format!(
                    "multiRead of {} ops got {} results",
                    ops.len(),
                    results.len()
                )));
            }
            Ok(results
                .into_iter()
                .zip(ops)
                .map(|(res, o)| match res {
                    MultiResult::Data(d, s) => Ok(ReadResult::Data { data: d, stat: s }),
                    MultiResult::Children(c) => Ok(ReadResult::Children { children: c }),
                    MultiResult::Error(e) => Err(code_error(e, o.path())),
                    other => Err(Error::Protocol(format!(
                        "unexpected multiRead result {other:?}"
                    ))),
                })
                .collect())
        }
    }
}

fn ended(inner: &WireInner) -> Error {
    match inner.shared.state() {
        WireState::Expired => Error::SessionLost {
            session: 0,
            epoch: 0,
        },
        WireState::AuthFailed => Error::AuthFailed,
        WireState::Closed => Error::Closed,
        _ => Error::ConnectionLoss,
    }
}

fn exists_reply(r: Reply, path: &str) -> Result<Option<Stat>> {
    match r.err {
        0 => Ok(Some(Reader::new(&r.body).stat()?)),
        e if e == records::code::NO_NODE => Ok(None),
        e => Err(code_error(e, path)),
    }
}

/// The first operation of a failed multi that carries a real error code (the ones before it
/// report `Ok`, the ones after it `RuntimeInconsistency`).
fn first_failure(results: &[MultiResult]) -> Option<(usize, i32)> {
    let errors = || {
        results.iter().enumerate().filter_map(|(i, r)| match r {
            MultiResult::Error(e) if *e != 0 => Some((i, *e)),
            _ => None,
        })
    };
    errors()
        .find(|(_, e)| *e != ErrorCode::RuntimeInconsistency.code())
        .or_else(|| errors().next())
}

/// Expires a session on purpose: opens a second connection with the same session id and
/// password, then closes the session from it (what Curator's KillSession does).
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) async fn expire_session(
    servers: &[(String, u16)],
    session: &WireSession,
    tls: Option<&crate::proto::tls::TlsHandle>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for (host, port) in servers.iter().cycle() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let req = records::ConnectRequest {
            last_zxid_seen: 0,
            timeout,
            session_id: session.id,
            passwd: session.passwd.clone(),
            read_only: false,
        };
        match crate::proto::connect::handshake(
            host,
            *port,
            &req,
            crate::proto::connect::Security {
                auth: &[],
                tls: tls.map(|t| &*t.0),
                sasl: None,
            },
            crate::proto::codec::MAX_FRAME,
            deadline - now,
        )
        .await
        {
            Ok(mut est) => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut close = records::request(op::CLOSE_SESSION, |_| {});
                records::set_xid(&mut close, 1);
                est.stream
                    .write_all(&close)
                    .await
                    .map_err(|_| Error::ConnectionLoss)?;
                est.stream
                    .flush()
                    .await
                    .map_err(|_| Error::ConnectionLoss)?;
                // Wait for the reply or the server closing the connection.
                let mut buf = [0u8; 256];
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), est.stream.read(&mut buf)).await;
                return Ok(());
            }
            // Already expired: nothing to do.
            Err(HandshakeError::Expired) => return Ok(()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Err(Error::Timeout {
        op: "expire_session",
        after: timeout,
    })
}
