//! The façade users and recipes call: [`Client`] and its [`ClientBuilder`].
//!
//! * Every operation has a deadline (default: the session timeout; see
//!   [`Client::with_timeout`]) and a `tracing` span with path, session, epoch and outcome.
//! * Paths and data are validated before anything is sent.
//! * A semaphore bounds requests in flight (backpressure instead of an unbounded queue).
//! * Operations run on the current session's epoch; [`Client::pinned`] binds a handle to one
//!   epoch so that a recipe's follow-up requests never run in a later session by accident.
//! * Security (see `docs/security.md`): credentials ([`ClientBuilder::digest_auth`],
//!   [`Client::add_auth`], [`ClientBuilder::sasl_digest`]) are sent in every handshake, so they
//!   hold across reconnects and new sessions; TLS with [`ClientBuilder::tls`]. A new node's ACL
//!   comes from [`Client::create_with_acl`], else the handle's [`Client::with_acl`], else the
//!   [`ClientBuilder::acl_provider`], else the [`ClientBuilder::default_acl`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::path::{self, ConnectString};
use crate::retry::RetryPolicy;
use crate::session::{self, Epoch, SessionConfig, SessionState, Shared};
use crate::types::{
    Acl, AclProvider, ClientInfo, CreateMode, Op, OpResult, ReadOp, ReadResult, SessionId, Stat,
};
use crate::watch::{ChildrenWatch, DataWatch, PersistentWatch, Registry, WatchKind};
use crate::wire::{Wire, WireConfig};

/// The longest session timeout the handshake can carry (an i32 of milliseconds).
const MAX_SESSION_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);
/// Connect deadlines are capped here.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Builds a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    connect: String,
    session_timeout: Duration,
    connect_timeout: Option<Duration>,
    op_timeout: Option<Duration>,
    auth: crate::types::Credentials,
    default_acl: Vec<Acl>,
    acl_provider: Option<ProviderHandle>,
    max_in_flight: usize,
    read_only: bool,
    server_tick: Option<Duration>,
    tls: Option<crate::proto::tls::TlsConfig>,
    sasl: Option<crate::proto::sasl::SaslDigest>,
}

impl ClientBuilder {
    /// Logs in with SASL DIGEST-MD5 as `user` (ZooKeeper's `digest` SASL login: a JAAS
    /// `Server` section with `DigestLoginModule` and `SASLAuthenticationProvider` on the
    /// server), in every handshake: on every reconnect and in every new session. The session's
    /// identity is then `sasl:USER` (ACL entry `Acl::new(perms, "sasl", user)`). A wrong password
    /// is [`Error::AuthFailed`]. Kerberos (GSSAPI) is not supported.
    pub fn sasl_digest(mut self, user: &str, password: &str) -> Self {
        self.sasl = Some(crate::proto::sasl::SaslDigest {
            user: user.to_string(),
            password: password.to_string(),
        });
        self
    }

    /// Connects with TLS (to the ensemble's `secureClientPort`): the server's certificate must
    /// chain to the CA of `tls` and, by default, name the host of the connect string. With a
    /// client certificate in `tls` it is mutual TLS. See [`TlsConfig`](crate::TlsConfig).
    pub fn tls(mut self, tls: crate::proto::tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The ensemble's `tickTime`, when known. zkr ends a session's lease (and tells lock holders
    /// and leaders they may have lost) a margin before the server can expire it; the margin
    /// covers how late a follower's reports reach the leader, half a tick at most. Without this
    /// setting the largest tick ZooKeeper's default limits allow is assumed (half the session
    /// timeout), which makes leases end at about 0.6 of the timeout instead of about 0.8.
    pub fn server_tick_time(mut self, tick: Duration) -> Self {
        self.server_tick = Some(tick);
        self
    }

    /// Accept a read-only session from a member that lost its quorum (ZooKeeper's
    /// `readonlymode.enabled`), instead of waiting for a member with quorum. Reads work, writes
    /// fail with [`Error::NotReadOnly`], the state is [`SessionState::ReadOnly`]; once a member
    /// with quorum answers, the client moves to a read-write session. Default: off.
    pub fn read_only(mut self, allow: bool) -> Self {
        self.read_only = allow;
        self
    }

    /// The session timeout to ask for (the server clamps it to its min/max). Default 10 s.
    pub fn session_timeout(mut self, d: Duration) -> Self {
        self.session_timeout = d;
        self
    }

    /// How long `connect()` (and each later attempt to open a session) may take. Default: the
    /// session timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// Default deadline of every operation. Default: the session timeout.
    pub fn operation_timeout(mut self, d: Duration) -> Self {
        self.op_timeout = Some(d);
        self
    }

    /// Digest authentication (`user:password`): sent in every handshake, so it holds on every
    /// reconnect and every new session. The session's identity is then
    /// `digest:`[`Acl::digest(user, password)`](Acl::digest).
    pub fn digest_auth(mut self, user: &str, password: &str) -> Self {
        self.auth
            .0
            .push(("digest".into(), format!("{user}:{password}").into_bytes()));
        self
    }

    /// Credentials of any auth scheme (`AuthPacket`), sent in every handshake like
    /// [`digest_auth`](Self::digest_auth). `Debug` of the builder never shows `data`.
    pub fn auth(mut self, scheme: &str, data: &[u8]) -> Self {
        self.auth.0.push((scheme.into(), data.to_vec()));
        self
    }

    /// ACL given to nodes this client creates (recipes' nodes included) unless an
    /// [`acl_provider`](Self::acl_provider), a [`Client::with_acl`] handle or
    /// [`Client::create_with_acl`] says otherwise. Default: [`Acl::open`].
    pub fn default_acl(mut self, acl: Vec<Acl>) -> Self {
        self.default_acl = acl;
        self
    }

    /// Chooses the ACL of every new node by path (Curator's `ACLProvider`); an empty list from
    /// the provider falls back to the [`default_acl`](Self::default_acl).
    pub fn acl_provider(mut self, provider: impl AclProvider) -> Self {
        self.acl_provider = Some(ProviderHandle(Arc::new(provider)));
        self
    }

    /// Bound on requests in flight; further calls wait (within their deadline). Default 1024.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Connects: validates the connect string, then opens the first session within the
    /// connect timeout.
    pub async fn connect(self) -> Result<Client> {
        let cs = ConnectString::parse(&self.connect)?;
        if self.session_timeout < Duration::from_millis(100) {
            return Err(Error::InvalidArgument(format!(
                "session timeout {:?} is too short",
                self.session_timeout
            )));
        }
        // The handshake carries it as an i32 of milliseconds; servers cap it at 20 ticks anyway.
        if self.session_timeout > MAX_SESSION_TIMEOUT {
            return Err(Error::InvalidArgument(format!(
                "session timeout {:?} is too long (at most {:?})",
                self.session_timeout, MAX_SESSION_TIMEOUT
            )));
        }
        if self.default_acl.is_empty() {
            return Err(Error::InvalidArgument(
                "default ACL must not be empty".into(),
            ));
        }
        // A deadline further out than a day is as good as none (and `Duration::MAX` would
        // overflow the clock).
        let connect_timeout = self
            .connect_timeout
            .unwrap_or(self.session_timeout)
            .min(MAX_CONNECT_TIMEOUT);
        let auth = crate::types::AuthStore::new(self.auth);
        let tls = match &self.tls {
            Some(t) => Some(crate::proto::tls::TlsHandle(t.connector()?)),
            None => None,
        };
        let cfg = SessionConfig {
            wire: WireConfig {
                servers: shuffled(cs.servers.clone()),
                chroot: cs.chroot.clone(),
                session_timeout: self.session_timeout,
                auth: auth.clone(),
                read_only: self.read_only,
                max_in_flight: self.max_in_flight,
                tls,
                sasl: self.sasl,
            },
            connect_timeout,
            server_tick: self.server_tick,
        };
        let span = tracing::info_span!("zkr.connect", servers = %cs.servers_string());
        let shared = session::start(cfg).instrument(span).await?;
        let inner = Arc::new(Inner {
            registry: Registry::new(),
            permits: Semaphore::new(self.max_in_flight),
            default_acl: self.default_acl,
            acl_provider: self.acl_provider.map(|p| p.0),
            auth,
            shared,
        });
        Ok(Client {
            inner,
            pin: None,
            op_timeout: self.op_timeout,
            acl: None,
        })
    }
}

/// The servers in a random order, so that clients spread over the ensemble (as the Java client
/// and kazoo do); a session moves on through the list in that order.
fn shuffled(mut servers: Vec<(String, u16)>) -> Vec<(String, u16)> {
    for i in (1..servers.len()).rev() {
        let j = rand::random::<usize>() % (i + 1);
        servers.swap(i, j);
    }
    servers
}

/// An [`AclProvider`] in the builder (which is `Debug`).
#[derive(Clone)]
struct ProviderHandle(Arc<dyn AclProvider>);

impl std::fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AclProvider")
    }
}

pub(crate) struct Inner {
    pub shared: Arc<Shared>,
    pub registry: Registry,
    permits: Semaphore,
    pub default_acl: Vec<Acl>,
    acl_provider: Option<Arc<dyn AclProvider>>,
    /// Credentials sent in every handshake (builder's, plus every `add_auth` that succeeded).
    auth: crate::types::AuthStore,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// A session-managed ZooKeeper client. Cheap to clone; all clones share one session.
/// Dropping the last clone closes the session.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    pin: Option<Arc<Epoch>>,
    op_timeout: Option<Duration>,
    /// The ACL of nodes this handle creates, when set by [`Client::with_acl`].
    acl: Option<Arc<Vec<Acl>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state())
            .field("pinned", &self.pin.as_ref().map(|e| e.n))
            .finish()
    }
}

/// Ordered session states; the first item is the state at subscription time.
pub struct SessionStates {
    rx: crate::fanout::Receiver<SessionState>,
}

impl Stream for SessionStates {
    type Item = SessionState;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl SessionStates {
    /// The next state (`None` after the client is dropped).
    pub async fn next_state(&mut self) -> Option<SessionState> {
        self.rx.recv().await
    }
}

impl Client {
    /// Starts building a client for `connect` (`host:port[,host:port...][/chroot]`).
    pub fn builder(connect: &str) -> ClientBuilder {
        ClientBuilder {
            connect: connect.to_string(),
            session_timeout: Duration::from_secs(10),
            connect_timeout: None,
            op_timeout: None,
            auth: Default::default(),
            default_acl: Acl::open(),
            acl_provider: None,
            max_in_flight: 1024,
            read_only: false,
            server_tick: None,
            tls: None,
            sasl: None,
        }
    }

    /// Connects with default settings.
    pub async fn connect(connect: &str) -> Result<Client> {
        Client::builder(connect).connect().await
    }

    /// The current session state.
    pub fn state(&self) -> SessionState {
        self.inner.shared.state()
    }

    /// Every state transition from now on, in order, starting with the current state.
    pub fn states(&self) -> SessionStates {
        SessionStates {
            rx: self.inner.shared.subscribe(),
        }
    }

    /// A `watch` receiver of the latest state (coalescing; for "what is it now" waits).
    pub fn state_receiver(&self) -> tokio::sync::watch::Receiver<SessionState> {
        self.inner.shared.state_receiver()
    }

    /// Id of the current session (or of the pinned one).
    pub fn session_id(&self) -> Option<SessionId> {
        self.epoch_handle().map(|e| e.session)
    }

    /// The current epoch number (or the pinned one): 1 for the first session, +1 per new one.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch_handle().map(|e| e.n)
    }

    /// The negotiated session timeout of the current session.
    pub fn session_timeout(&self) -> Option<Duration> {
        self.epoch_handle().map(|e| e.timeout)
    }

    fn epoch_handle(&self) -> Option<Arc<Epoch>> {
        match &self.pin {
            Some(e) => Some(e.clone()),
            None => self.inner.shared.current_epoch(),
        }
    }

    /// A handle bound to the current session: its operations fail with
    /// [`Error::SessionLost`] once that session is gone, instead of running in a new one.
    /// Waits (within the operation timeout) for a session if there is none right now.
    pub async fn pinned(&self) -> Result<Client> {
        if let Some(e) = &self.pin {
            return if e.is_ended() {
                Err(e.lost_error())
            } else {
                Ok(self.clone())
            };
        }
        let t = self.timeout();
        let epoch = tokio::time::timeout(t, self.inner.shared.live_epoch())
            .await
            .map_err(|_| Error::Timeout {
                op: "waiting for a session",
                after: t,
            })??;
        Ok(Client {
            inner: self.inner.clone(),
            pin: Some(epoch),
            op_timeout: self.op_timeout,
            acl: self.acl.clone(),
        })
    }

    /// Until when this handle's session (the pinned one, or the current one) is certainly
    /// alive on the server: its *lease*, computed now from the send time of the newest request
    /// the leader confirmed (see `docs/leases.md`). Past it the server may have expired the
    /// session and handed its ephemeral nodes (locks, leadership) to others. `None` when there is
    /// no session; an ended session's lease is in the past. Reading it needs no task to have
    /// run, so it is right even on the first call after the process was paused.
    pub fn valid_until(&self) -> Option<Instant> {
        self.epoch_handle().map(|e| e.valid_until())
    }

    /// The lease of `session` (see [`valid_until`](Self::valid_until)) if it is this client's
    /// current session; `None` once that session is over.
    pub fn lease_of(&self, session: SessionId) -> Option<Instant> {
        let e = self.inner.shared.current_epoch()?;
        (e.session == session && !e.is_ended()).then(|| e.valid_until())
    }

    /// Whether this handle is pinned to a session that has ended.
    pub fn is_pin_lost(&self) -> bool {
        self.pin.as_ref().is_some_and(|e| e.is_ended())
    }

    /// Completes when the pinned session ends (never, for an unpinned handle).
    pub async fn pin_lost(&self) {
        match &self.pin {
            Some(e) => e.ended().await,
            None => std::future::pending().await,
        }
    }

    /// A handle whose operations use deadline `d`.
    pub fn with_timeout(&self, d: Duration) -> Client {
        Client {
            inner: self.inner.clone(),
            pin: self.pin.clone(),
            op_timeout: Some(d),
            acl: self.acl.clone(),
        }
    }

    /// A handle whose creates (its recipes' nodes included) get `acl`, whatever the client's
    /// default ACL or provider says: hand it to a recipe to give that recipe's nodes their own
    /// ACL. Panics never; an empty `acl` is rejected by each create with
    /// [`Error::InvalidArgument`].
    pub fn with_acl(&self, acl: Vec<Acl>) -> Client {
        Client {
            inner: self.inner.clone(),
            pin: self.pin.clone(),
            op_timeout: self.op_timeout,
            acl: Some(Arc::new(acl)),
        }
    }

    /// The ACL a node created at `path` through this handle gets.
    pub fn acl_for(&self, path: &str) -> Vec<Acl> {
        if let Some(acl) = &self.acl {
            return acl.as_ref().clone();
        }
        if let Some(p) = &self.inner.acl_provider {
            let acl = p.acl_for_path(path);
            if !acl.is_empty() {
                return acl;
            }
        }
        self.inner.default_acl.clone()
    }

    /// The deadline operations of this handle use.
    pub fn timeout(&self) -> Duration {
        self.op_timeout
            .or_else(|| self.inner.shared.current_epoch().map(|e| e.timeout))
            .unwrap_or(self.inner.shared.cfg.wire.session_timeout)
    }

    /// Waits until the state is connected, up to `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<SessionState> {
        let mut rx = self.state_receiver();
        let fut = async {
            loop {
                let s = *rx.borrow_and_update();
                if s.is_connected() {
                    return Ok(s);
                }
                if s == SessionState::Closed {
                    return Err(self.inner.shared.closed_error());
                }
                if rx.changed().await.is_err() {
                    return Err(self.inner.shared.closed_error());
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::Timeout {
                op: "wait_connected",
                after: timeout,
            })?
    }

    /// Closes the session (its ephemeral nodes go at once) and ends every watch stream.
    pub async fn close(&self) {
        self.inner.shared.close();
        let mut rx = self.state_receiver();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while *rx.borrow_and_update() != SessionState::Closed {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }

    /// Runs `f` against the epoch of this handle under the deadline and in-flight bound.
    pub(crate) async fn exec<T, F, Fut>(&self, op: &'static str, path: &str, f: F) -> Result<T>
    where
        F: FnOnce(Wire) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let t = self.timeout();
        let started = Instant::now();
        let span = tracing::debug_span!(
            "zk",
            op,
            path,
            session = tracing::field::Empty,
            epoch = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        let fut = async {
            if self.inner.shared.is_closed() {
                return Err(self.inner.shared.closed_error());
            }
            let epoch = match &self.pin {
                Some(e) => e.clone(),
                None => self.inner.shared.live_epoch().await?,
            };
            let span = tracing::Span::current();
            span.record("session", tracing::field::display(epoch.session));
            span.record("epoch", epoch.n);
            let _permit = self
                .inner
                .permits
                .acquire()
                .await
                .map_err(|_| Error::Closed)?;
            let wire = epoch.wire()?;
            epoch.run(f(wire)).await
        };
        let r = match tokio::time::timeout(t, fut.instrument(span.clone())).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { op, after: t }),
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            let outcome = match &r {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            span.record("outcome", outcome.as_str());
            let _g = span.enter();
            tracing::debug!(elapsed_us = started.elapsed().as_micros() as u64, "done");
        }
        r
    }

    /// Creates a node; returns its actual path (with the sequence suffix for sequential modes).
    pub async fn create(&self, path: &str, data: &[u8], mode: CreateMode) -> Result<String> {
        self.create_with_stat(path, data, mode)
            .await
            .map(|(p, _)| p)
    }

    /// Creates a node; returns its path and stat.
    pub async fn create_with_stat(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
    ) -> Result<(String, Stat)> {
        let acl = self.acl_for(path);
        self.create_full(path, data, mode, &acl).await
    }

    /// Creates a node with its own ACL; returns its actual path. Fails with
    /// [`Error::InvalidAcl`] when the server rejects the ACL (e.g. `auth` entries on a session
    /// without credentials).
    pub async fn create_with_acl(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
        acl: &[Acl],
    ) -> Result<String> {
        self.create_full(path, data, mode, acl)
            .await
            .map(|(p, _)| p)
    }

    async fn create_full(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
        acl: &[Acl],
    ) -> Result<(String, Stat)> {
        if acl.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the ACL for {path} must not be empty"
            )));
        }
        path::validate_path(path, mode.is_sequential())?;
        path::validate_data(data)?;
        if path == "/" {
            return Err(Error::InvalidPath {
                path: path.into(),
                reason: "cannot create the root",
            });
        }
        let r = self
            .exec("create", path, |w| async move {
                w.create(path, data, mode, acl).await
            })
            .await;
        match r {
            // The server says NoNode when the *parent* is missing: name it.
            Err(Error::NoNode { .. }) => Err(Error::NoNode {
                path: path::parent(path).unwrap_or("/").to_string(),
            }),
            r => r,
        }
    }

    /// Creates a node, creating missing ancestors as container nodes (the server removes
    /// them once empty), like Curator's `creatingParentContainersIfNeeded`.
    pub async fn create_with_parents(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
    ) -> Result<String> {
        self.create_with_parents_stat(path, data, mode)
            .await
            .map(|(p, _)| p)
    }

    /// [`create_with_parents`](Self::create_with_parents), also returning the created node's
    /// stat (from the create's own reply: no extra round trip).
    pub async fn create_with_parents_stat(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
    ) -> Result<(String, Stat)> {
        match self.create_with_stat(path, data, mode).await {
            Err(Error::NoNode { .. }) => {
                if let Some(parent) = path::parent(path) {
                    self.ensure_parents(parent, CreateMode::Container).await?;
                }
                self.create_with_stat(path, data, mode).await
            }
            r => r,
        }
    }

    /// Makes sure `path` and its ancestors exist (`mkdir -p`), as persistent nodes.
    pub async fn ensure_path(&self, path: &str) -> Result<()> {
        self.ensure_parents(path, CreateMode::Persistent).await
    }

    /// Makes sure `path` and its ancestors exist as container nodes (removed by the server once
    /// empty), as recipes do for their directories (Curator's `creatingParentContainersIfNeeded`).
    pub async fn ensure_containers(&self, path: &str) -> Result<()> {
        self.ensure_parents(path, CreateMode::Container).await
    }

    async fn ensure_parents(&self, path: &str, mode: CreateMode) -> Result<()> {
        path::validate_path(path, false)?;
        if path == "/" {
            return Ok(());
        }
        let mut prefix = String::new();
        for seg in path[1..].split('/') {
            prefix.push('/');
            prefix.push_str(seg);
            match self.create(&prefix, &[], mode).await {
                Ok(_) | Err(Error::NodeExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Data and stat of a node.
    pub async fn get_data(&self, path: &str) -> Result<(Vec<u8>, Stat)> {
        path::validate_path(path, false)?;
        self.exec("get_data", path, |w| async move { w.get_data(path).await })
            .await
    }

    /// Stat of a node, `None` if it does not exist.
    pub async fn exists(&self, path: &str) -> Result<Option<Stat>> {
        path::validate_path(path, false)?;
        self.exec("exists", path, |w| async move { w.exists(path).await })
            .await
    }

    /// Sets data, optionally only if the node is at `version` (compare-and-set).
    pub async fn set_data(&self, path: &str, data: &[u8], version: Option<i32>) -> Result<Stat> {
        path::validate_path(path, false)?;
        path::validate_data(data)?;
        self.exec("set_data", path, |w| async move {
            w.set_data(path, data, version).await
        })
        .await
    }

    /// Deletes a node, optionally only at `version`.
    pub async fn delete(&self, path: &str, version: Option<i32>) -> Result<()> {
        path::validate_path(path, false)?;
        if path == "/" {
            return Err(Error::InvalidPath {
                path: path.into(),
                reason: "cannot delete the root",
            });
        }
        self.exec(
            "delete",
            path,
            |w| async move { w.delete(path, version).await },
        )
        .await
    }

    /// Deletes a node and everything below it (not atomic).
    pub async fn delete_recursive(&self, path: &str) -> Result<()> {
        path::validate_path(path, false)?;
        let children = match self.get_children(path).await {
            Ok(c) => c,
            Err(Error::NoNode { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        for c in children {
            Box::pin(self.delete_recursive(&path::join(path, &c))).await?;
        }
        match self.delete(path, None).await {
            Ok(()) | Err(Error::NoNode { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Children names (unordered, as the server lists them).
    pub async fn get_children(&self, path: &str) -> Result<Vec<String>> {
        self.get_children_with_stat(path).await.map(|(c, _)| c)
    }

    /// Children names and the parent's stat.
    pub async fn get_children_with_stat(&self, path: &str) -> Result<(Vec<String>, Stat)> {
        path::validate_path(path, false)?;
        self.exec("get_children", path, |w| async move {
            w.get_children(path).await
        })
        .await
    }

    /// Creates a node and lists `list_path`'s children in ONE round trip: both requests are
    /// sent back to back on the same session, and the server executes them in order, so the
    /// listing includes the created node.
    pub async fn create_and_list(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
        list_path: &str,
    ) -> Result<((String, Stat), Result<Vec<String>>)> {
        path::validate_path(path, mode.is_sequential())?;
        path::validate_path(list_path, false)?;
        path::validate_data(data)?;
        let acl = &self.acl_for(path);
        self.exec("create_and_list", path, |w| async move {
            let created = w.create(path, data, mode, acl);
            let listed = w.get_children(list_path);
            let created = created.await?;
            let listed = listed.await.map(|(c, _)| c);
            Ok((created, listed))
        })
        .await
    }

    /// Brings this server up to date with the leader (so a following read is fresh).
    pub async fn sync(&self, path: &str) -> Result<()> {
        path::validate_path(path, false)?;
        self.exec("sync", path, |w| async move { w.sync(path).await })
            .await
    }

    /// `sync` then `get_data`, pipelined: a linearizable-enough fresh read in one round trip.
    pub async fn get_data_fresh(&self, path: &str) -> Result<(Vec<u8>, Stat)> {
        path::validate_path(path, false)?;
        self.exec("get_data_fresh", path, |w| async move {
            let s = w.sync(path);
            let g = w.get_data(path);
            s.await?;
            g.await
        })
        .await
    }

    /// Runs all operations atomically: all succeed or none is applied.
    pub async fn multi(&self, ops: &[Op]) -> Result<Vec<OpResult>> {
        for op in ops {
            match op {
                Op::Create { path, data, mode } => {
                    path::validate_path(path, mode.is_sequential())?;
                    path::validate_data(data)?;
                }
                Op::CreateWithAcl {
                    path,
                    data,
                    mode,
                    acl,
                } => {
                    path::validate_path(path, mode.is_sequential())?;
                    path::validate_data(data)?;
                    if acl.is_empty() {
                        return Err(Error::InvalidArgument(format!(
                            "the ACL for {path} must not be empty"
                        )));
                    }
                }
                Op::SetData { path, data, .. } => {
                    path::validate_path(path, false)?;
                    path::validate_data(data)?;
                }
                Op::Delete { path, .. } | Op::Check { path, .. } => {
                    path::validate_path(path, false)?
                }
            }
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let acls: Vec<Vec<Acl>> = ops
            .iter()
            .map(|o| match o {
                Op::Create { path, .. } => self.acl_for(path),
                Op::CreateWithAcl { acl, .. } => acl.clone(),
                _ => Vec::new(),
            })
            .collect();
        let acls = &acls;
        self.exec("multi", ops[0].path(), |w| async move {
            w.multi(ops, acls).await
        })
        .await
    }

    /// Several reads in ONE request (ZooKeeper 3.6+ `multiRead`), each with its own outcome: a
    /// missing node fails only its own read. Not atomic, but all are answered by one server at
    /// one point of its history.
    pub async fn multi_read(&self, ops: &[ReadOp]) -> Result<Vec<Result<ReadResult>>> {
        for op in ops {
            path::validate_path(op.path(), false)?;
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.exec("multi_read", ops[0].path(), |w| async move {
            w.multi_read(ops).await
        })
        .await
    }

    /// The ACL of a node and its stat.
    pub async fn get_acl(&self, path: &str) -> Result<(Vec<Acl>, Stat)> {
        path::validate_path(path, false)?;
        self.exec("get_acl", path, |w| async move { w.get_acl(path).await })
            .await
    }

    /// Sets the ACL of a node, optionally only at ACL version `version` (`Stat::aversion`).
    pub async fn set_acl(&self, path: &str, acl: &[Acl], version: Option<i32>) -> Result<Stat> {
        path::validate_path(path, false)?;
        if acl.is_empty() {
            return Err(Error::InvalidArgument("an ACL must not be empty".into()));
        }
        self.exec("set_acl", path, |w| async move {
            w.set_acl(path, acl, version).await
        })
        .await
    }

    /// Paths of this session's ephemeral nodes whose path starts with `prefix` (`/` for all).
    pub async fn get_ephemerals(&self, prefix: &str) -> Result<Vec<String>> {
        path::validate_path(prefix, false)?;
        self.exec("get_ephemerals", prefix, |w| async move {
            w.get_ephemerals(prefix).await
        })
        .await
    }

    /// The number of nodes below `path`, all levels down (`getAllChildrenNumber`).
    pub async fn count_descendants(&self, path: &str) -> Result<i32> {
        path::validate_path(path, false)?;
        self.exec("count_descendants", path, |w| async move {
            w.get_all_children_number(path).await
        })
        .await
    }

    /// The identities the server associates with this session (`whoAmI`, ZooKeeper 3.7+).
    pub async fn who_am_i(&self) -> Result<Vec<ClientInfo>> {
        self.exec("who_am_i", "", |w| async move { w.who_am_i().await })
            .await
    }

    /// A persistent watch on `path` (ZooKeeper 3.6+ `addWatch`), of the whole subtree when
    /// `recursive`: a low-level stream of every event the server sends for it, for building
    /// caches. It does not re-read anything: after a reconnect it yields
    /// [`WatchedEventKind::Resync`](crate::WatchedEventKind::Resync) and ends (the state may have changed unseen; read again and
    /// add a new watch), and
    /// [`WatchedEventKind::SessionEnded`](crate::WatchedEventKind::SessionEnded) when the session ends. Its
    /// queue is bounded: a stream read too slowly to keep up gets
    /// [`WatchedEventKind::Lagged`](crate::WatchedEventKind::Lagged) in place of the events
    /// that did not fit, and goes on (read again). For
    /// "the current state, then every change" use [`watch_data`](Self::watch_data) and
    /// [`watch_children`](Self::watch_children). Dropping the stream removes the watch.
    pub async fn add_watch(&self, path: &str, recursive: bool) -> Result<PersistentWatch> {
        path::validate_path(path, false)?;
        self.exec("add_watch", path, |w| async move {
            w.add_watch(path, recursive).await
        })
        .await
        .map(PersistentWatch::new)
    }

    /// The ensemble member (`host:port`, as given in the connect string) the current session
    /// is connected to, or was last connected to.
    pub fn connected_server(&self) -> Option<String> {
        let e = self.epoch_handle()?;
        let (host, port) = e.wire().ok()?.server();
        Some(format!("{host}:{port}"))
    }

    /// Moves the live session to another member of the ensemble now (`host:port`, as given in
    /// the connect string), keeping the session: its ephemeral nodes and watches stay, and the
    /// state goes `Suspended` → `Reconnected`. Requests in flight at that moment fail with
    /// [`Error::ConnectionLoss`]. Fails if that member does not take the session; the client
    /// then goes on with any member, as after a connection loss.
    pub async fn move_session(&self, server: &str) -> Result<()> {
        let epoch = match &self.pin {
            Some(e) => e.clone(),
            None => self.inner.shared.live_epoch().await?,
        };
        let wire = epoch.wire()?;
        let want = ConnectString::parse(server)?;
        let Some(target) = want.servers.first() else {
            return Err(Error::InvalidArgument(format!("no server in {server:?}")));
        };
        let index = self
            .inner
            .shared
            .cfg
            .wire
            .servers
            .iter()
            .position(|s| s == target)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{server} is not in the connect string"))
            })?;
        let t = self.timeout();
        tokio::time::timeout(t, wire.move_to(index))
            .await
            .map_err(|_| Error::Timeout {
                op: "move_session",
                after: t,
            })?
    }

    /// Adds credentials to the session (`addAuth`). Once the server accepted them they are
    /// kept and sent again in every handshake: on every reconnect and in every new session
    /// after an expiry, like the builder's [`digest_auth`](ClientBuilder::digest_auth). A
    /// rejection is [`Error::AuthFailed`]; ZooKeeper then closes the connection, and the
    /// credentials are not kept.
    pub async fn add_auth(&self, scheme: &str, data: &[u8]) -> Result<()> {
        self.exec(
            "add_auth",
            "",
            |w| async move { w.add_auth(scheme, data).await },
        )
        .await?;
        self.inner.auth.add(scheme, data);
        Ok(())
    }

    /// Retries an idempotent operation under `policy` on connection loss, timeouts and
    /// session loss. On a [pinned](Self::pinned) handle session loss is final (the operation
    /// belongs to that session), so it is not retried.
    pub async fn retry<T, F, Fut>(&self, policy: &RetryPolicy, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if self.pin.is_some() {
            policy
                .run_if(|e| e.is_retryable() && !e.is_session_lost(), f)
                .await
        } else {
            policy.run(f).await
        }
    }

    /// Completes once `path` does not exist: checked at once, then on every notification, across
    /// reconnects (and, for an unpinned handle, new sessions). A lighter sibling of
    /// [`watch_data`](Self::watch_data) for "wait for my predecessor to go" (one exists watch,
    /// no re-reads, removed if the wait is dropped). Has no deadline of its own: wrap it in a
    /// timeout. On a pinned handle it fails with [`Error::SessionLost`] when the session ends.
    pub async fn wait_gone(&self, path: &str) -> Result<()> {
        path::validate_path(path, false)?;
        loop {
            let epoch = match &self.pin {
                Some(e) => e.clone(),
                None => self.inner.shared.live_epoch().await?,
            };
            let r = match epoch.wire() {
                Ok(w) => epoch.run(w.exists_watch(path)).await,
                Err(e) => Err(e),
            };
            match r {
                Ok((None, _)) => return Ok(()),
                Ok((Some(_), watch)) => {
                    tokio::select! {
                        ev = watch.fired() => {
                            if ev == crate::wire::WireEvent::Deleted {
                                return Ok(());
                            }
                        }
                        _ = epoch.ended() => {
                            if self.pin.is_some() {
                                return Err(epoch.lost_error());
                            }
                        }
                    }
                }
                Err(Error::SessionLost { .. }) if self.pin.is_none() => {}
                Err(e) if e.is_connection_loss() => {
                    // Wait for the connection to come back (or the session to end).
                    let mut rx = self.state_receiver();
                    let _ = tokio::time::timeout(self.timeout(), async {
                        while !rx.borrow_and_update().is_connected() {
                            if rx.changed().await.is_err() {
                                break;
                            }
                        }
                    })
                    .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A stream of a node's data: the current state first, then every change, across
    /// reconnects and new sessions. See [`crate::watch`].
    pub fn watch_data(&self, path: &str) -> Result<DataWatch> {
        path::validate_path(path, false)?;
        Ok(DataWatch::new(self.inner.registry.subscribe(
            &self.inner,
            path,
            WatchKind::Data,
        )))
    }

    /// A stream of a node's children: the current list first, then every change.
    pub fn watch_children(&self, path: &str) -> Result<ChildrenWatch> {
        path::validate_path(path, false)?;
        Ok(ChildrenWatch::new(self.inner.registry.subscribe(
            &self.inner,
            path,
            WatchKind::Children,
        )))
    }

    /// Number of logical watches the client keeps (for leak checks).
    pub fn watch_registry_len(&self) -> usize {
        self.inner.registry.len()
    }

    /// Expires this client's current session on purpose, like Curator's KillSession: a second
    /// connection with the same session credentials is opened straight to the ensemble
    /// (`direct`) and closed. The client must be connected through `proxy` (the test harness's
    /// fault proxy, crate `zkr-testing`), which is cut meanwhile: otherwise the client's instant
    /// reconnect and the killer keep taking the session from each other.
    #[cfg(feature = "testing")]
    pub async fn expire_session_for_testing(
        &self,
        direct: &str,
        proxy: &impl crate::test_hooks::ConnectionCut,
    ) -> Result<()> {
        let servers = ConnectString::parse(direct)?.servers;
        let e = self.inner.shared.live_epoch().await?;
        let session = e.wire()?.session();
        proxy.cut();
        let tls = self.inner.shared.cfg.wire.tls.as_ref();
        let r = crate::wire::expire_session(&servers, &session, tls, Duration::from_secs(10)).await;
        proxy.heal();
        r
    }

    /// The current session's id and password, so that another process can expire it with
    /// [`crate::test_hooks::expire_session_with`] (the soak's session-expiry fault does this to its
    /// workload processes). Test-only: the password is the session's secret.
    #[cfg(feature = "testing")]
    pub async fn session_credentials_for_testing(&self) -> Result<(SessionId, Vec<u8>)> {
        let e = self.inner.shared.live_epoch().await?;
        let session = e.wire()?.session();
        Ok((SessionId(session.id), session.passwd.clone()))
    }
}
