//! The only module that touches the ZooKeeper wire client (`zookeeper-client` 0.11).
//!
//! It maps the wire client's errors and types to zkr's and hides its quirks:
//! * raw I/O errors of in-flight calls become [`Error::ConnectionLoss`];
//! * only one-shot watches are used (the wire client re-sends those on reconnect; it does not
//!   re-arm persistent ones, and panics if a persistent watcher is polled after a terminal event);
//! * a wire client dies with its session: the session layer replaces it (a new *epoch*).
//!
//! Every request is sent when its method is *called* (not when the future is first polled), so
//! two calls made back to back are pipelined on the connection in call order.

use std::future::Future;
use std::time::Duration;

use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::types::{Acl, CreateMode, Op, OpResult, Stat};

/// Settings of one wire session.
#[derive(Clone, Debug)]
pub(crate) struct WireConfig {
    pub connect: String,
    pub session_timeout: Duration,
    pub auth: Vec<(String, Vec<u8>)>,
    /// Accept read-only sessions from a server that lost its quorum.
    pub read_only: bool,
}

/// The state the wire client reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WireState {
    Connected,
    ReadOnly,
    Disconnected,
    Expired,
    AuthFailed,
    Closed,
}

impl From<zk::SessionState> for WireState {
    fn from(s: zk::SessionState) -> Self {
        match s {
            zk::SessionState::SyncConnected => WireState::Connected,
            zk::SessionState::ConnectedReadOnly => WireState::ReadOnly,
            zk::SessionState::Disconnected => WireState::Disconnected,
            zk::SessionState::Expired => WireState::Expired,
            zk::SessionState::AuthFailed => WireState::AuthFailed,
            zk::SessionState::Closed => WireState::Closed,
        }
    }
}

/// Kinds of watch notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WireEvent {
    Created,
    Deleted,
    DataChanged,
    ChildrenChanged,
    /// The session ended (terminal); the watch will never fire.
    SessionEnded,
}

/// A one-shot server watch. Dropping it removes the watch (server side too, when it was the
/// last watcher of its kind on the path).
#[derive(Debug)]
pub(crate) struct WireWatch(zk::OneshotWatcher);

impl WireWatch {
    pub async fn fired(self) -> WireEvent {
        let ev = self.0.changed().await;
        match ev.event_type {
            zk::EventType::NodeCreated => WireEvent::Created,
            zk::EventType::NodeDeleted => WireEvent::Deleted,
            zk::EventType::NodeDataChanged => WireEvent::DataChanged,
            zk::EventType::NodeChildrenChanged => WireEvent::ChildrenChanged,
            zk::EventType::Session => WireEvent::SessionEnded,
        }
    }
}

/// Session credentials, opaque outside this module (used to expire a session on purpose).
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
#[derive(Clone, Debug)]
pub(crate) struct WireSession(zk::SessionInfo);

/// Watches the wire client's state.
pub(crate) struct WireStates(zk::StateWatcher);

impl WireStates {
    pub fn current(&mut self) -> WireState {
        self.0.state().into()
    }
    pub async fn changed(&mut self) -> WireState {
        self.0.changed().await.into()
    }
}

/// One wire session.
#[derive(Clone, Debug)]
pub(crate) struct Wire {
    client: zk::Client,
}

fn map_err(e: zk::Error, path: &str) -> Error {
    let p = || path.to_string();
    match e {
        zk::Error::NoNode => Error::NoNode { path: p() },
        zk::Error::NodeExists => Error::NodeExists { path: p() },
        zk::Error::BadVersion => Error::BadVersion { path: p() },
        zk::Error::NotEmpty => Error::NotEmpty { path: p() },
        zk::Error::NoAuth => Error::NoAuth { path: p() },
        zk::Error::NoChildrenForEphemerals => Error::NoChildrenForEphemerals { path: p() },
        zk::Error::InvalidAcl => Error::InvalidAcl { path: p() },
        zk::Error::AuthFailed => Error::AuthFailed,
        zk::Error::NotReadOnly => Error::NotReadOnly,
        zk::Error::Unimplemented => Error::Unimplemented,
        zk::Error::ClientClosed => Error::Closed,
        // The session-level kinds: the session layer turns these into `SessionLost` with the
        // epoch attached.
        zk::Error::SessionExpired | zk::Error::SessionMoved => Error::SessionLost {
            session: 0,
            epoch: 0,
        },
        zk::Error::BadArguments(msg) => Error::InvalidArgument(format!("{msg} (path {path})")),
        zk::Error::Timeout => Error::Timeout {
            op: "request",
            after: Duration::ZERO,
        },
        zk::Error::NoHosts => Error::ConnectionLoss,
        // ConnectionLoss, raw I/O errors (`Custom`) and everything that means the connection
        // broke under the request: outcome unknown.
        zk::Error::ConnectionLoss | zk::Error::Custom(_) => Error::ConnectionLoss,
        other => Error::Unexpected(other.to_string()),
    }
}

fn stat(s: zk::Stat) -> Stat {
    Stat {
        czxid: s.czxid,
        mzxid: s.mzxid,
        pzxid: s.pzxid,
        ctime: s.ctime,
        mtime: s.mtime,
        version: s.version,
        cversion: s.cversion,
        aversion: s.aversion,
        ephemeral_owner: s.ephemeral_owner,
        data_length: s.data_length,
        num_children: s.num_children,
    }
}

fn wire_mode(mode: CreateMode) -> (zk::CreateMode, Option<Duration>) {
    match mode {
        CreateMode::Persistent => (zk::CreateMode::Persistent, None),
        CreateMode::PersistentSequential => (zk::CreateMode::PersistentSequential, None),
        CreateMode::Ephemeral => (zk::CreateMode::Ephemeral, None),
        CreateMode::EphemeralSequential => (zk::CreateMode::EphemeralSequential, None),
        CreateMode::Container => (zk::CreateMode::Container, None),
        CreateMode::PersistentWithTtl(ttl) => (zk::CreateMode::Persistent, Some(ttl)),
    }
}

fn permission(bits: i32) -> zk::Permission {
    use crate::types::perms;
    [
        (perms::READ, zk::Permission::READ),
        (perms::WRITE, zk::Permission::WRITE),
        (perms::CREATE, zk::Permission::CREATE),
        (perms::DELETE, zk::Permission::DELETE),
        (perms::ADMIN, zk::Permission::ADMIN),
    ]
    .into_iter()
    .filter(|(b, _)| bits & b != 0)
    .fold(zk::Permission::NONE, |acc, (_, p)| acc | p)
}

/// Owns converted ACLs so that `zk::Acls<'_>` can borrow them.
struct AclBuf(Vec<zk::Acl>);

impl AclBuf {
    fn new(acl: &[Acl]) -> Self {
        AclBuf(
            acl.iter()
                .map(|a| zk::Acl::new(permission(a.perms), zk::AuthId::new(&a.scheme, &a.id)))
                .collect(),
        )
    }
    fn options(&self, mode: CreateMode) -> zk::CreateOptions<'_> {
        let (m, ttl) = wire_mode(mode);
        let opts = m.with_acls(zk::Acls::new(&self.0));
        match ttl {
            Some(ttl) => opts.with_ttl(ttl),
            None => opts,
        }
    }
}

fn seq_path(path: &str, mode: CreateMode, seq: zk::CreateSequence) -> String {
    if mode.is_sequential() {
        format!("{path}{seq}")
    } else {
        path.to_string()
    }
}

impl Wire {
    /// Opens a new session; fails with `Unreachable` if none is established within `connect_timeout`.
    pub async fn connect(
        cfg: &WireConfig,
        connect_timeout: Duration,
    ) -> Result<(Wire, WireStates)> {
        let mut connector = zk::Client::connector()
            .with_session_timeout(cfg.session_timeout)
            .with_readonly(cfg.read_only);
        for (scheme, auth) in &cfg.auth {
            connector = connector.with_auth(scheme, auth);
        }
        let fut = connector.connect(&cfg.connect);
        match tokio::time::timeout(connect_timeout, fut).await {
            Err(_) => Err(Error::Unreachable {
                servers: cfg.connect.clone(),
                after: connect_timeout,
            }),
            Ok(Err(zk::Error::BadArguments(msg))) => Err(Error::InvalidConnectString {
                input: cfg.connect.clone(),
                reason: msg.to_string(),
            }),
            Ok(Err(zk::Error::AuthFailed)) => Err(Error::AuthFailed),
            Ok(Err(_)) => Err(Error::Unreachable {
                servers: cfg.connect.clone(),
                after: connect_timeout,
            }),
            Ok(Ok(client)) => {
                let states = WireStates(client.state_watcher());
                Ok((Wire { client }, states))
            }
        }
    }

    pub fn session_id(&self) -> i64 {
        self.client.session_id().0
    }

    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn session(&self) -> WireSession {
        WireSession(self.client.session().clone())
    }

    pub fn negotiated_timeout(&self) -> Duration {
        self.client.session_timeout()
    }

    /// Sends a create now; the returned future resolves to the actual path and its stat.
    pub fn create<'a>(
        &'a self,
        path: &'a str,
        data: &[u8],
        mode: CreateMode,
        acl: &[Acl],
    ) -> impl Future<Output = Result<(String, Stat)>> + Send + 'a {
        let acls = AclBuf::new(acl);
        let fut = self.client.create(path, data, &acls.options(mode));
        async move {
            let (s, seq) = fut.await.map_err(|e| map_err(e, path))?;
            Ok((seq_path(path, mode, seq), stat(s)))
        }
    }

    pub fn get_data<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<(Vec<u8>, Stat)>> + Send + 'a {
        let fut = self.client.get_data(path);
        async move {
            fut.await
                .map(|(d, s)| (d, stat(s)))
                .map_err(|e| map_err(e, path))
        }
    }

    pub fn get_data_watch<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<(Vec<u8>, Stat, WireWatch)>> + Send + 'a {
        let fut = self.client.get_and_watch_data(path);
        async move {
            fut.await
                .map(|(d, s, w)| (d, stat(s), WireWatch(w)))
                .map_err(|e| map_err(e, path))
        }
    }

    pub fn exists<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<Option<Stat>>> + Send + 'a {
        let fut = self.client.check_stat(path);
        async move { fut.await.map(|s| s.map(stat)).map_err(|e| map_err(e, path)) }
    }

    pub fn exists_watch<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<(Option<Stat>, WireWatch)>> + Send + 'a {
        let fut = self.client.check_and_watch_stat(path);
        async move {
            fut.await
                .map(|(s, w)| (s.map(stat), WireWatch(w)))
                .map_err(|e| map_err(e, path))
        }
    }

    pub fn set_data<'a>(
        &'a self,
        path: &'a str,
        data: &[u8],
        version: Option<i32>,
    ) -> impl Future<Output = Result<Stat>> + Send + 'a {
        let fut = self.client.set_data(path, data, version);
        async move { fut.await.map(stat).map_err(|e| map_err(e, path)) }
    }

    pub fn delete<'a>(
        &'a self,
        path: &'a str,
        version: Option<i32>,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let fut = self.client.delete(path, version);
        async move { fut.await.map_err(|e| map_err(e, path)) }
    }

    pub fn get_children<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<(Vec<String>, Stat)>> + Send + 'a {
        let fut = self.client.get_children(path);
        async move {
            fut.await
                .map(|(c, s)| (c, stat(s)))
                .map_err(|e| map_err(e, path))
        }
    }

    pub fn get_children_watch<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Future<Output = Result<(Vec<String>, Stat, WireWatch)>> + Send + 'a {
        let fut = self.client.get_and_watch_children(path);
        async move {
            fut.await
                .map(|(c, s, w)| (c, stat(s), WireWatch(w)))
                .map_err(|e| map_err(e, path))
        }
    }

    pub fn sync<'a>(&'a self, path: &'a str) -> impl Future<Output = Result<()>> + Send + 'a {
        let fut = self.client.sync(path);
        async move { fut.await.map_err(|e| map_err(e, path)) }
    }

    pub fn add_auth<'a>(
        &'a self,
        scheme: &'a str,
        auth: &'a [u8],
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let fut = self.client.auth(scheme, auth);
        async move { fut.await.map_err(|e| map_err(e, "")) }
    }

    /// Atomic multi-write. All ops are sent now in one request.
    pub fn multi<'a>(
        &'a self,
        ops: &'a [Op],
        acl: &[Acl],
    ) -> impl Future<Output = Result<Vec<OpResult>>> + Send + 'a {
        let acls = AclBuf::new(acl);
        let mut writer = self.client.new_multi_writer();
        let mut build_err = None;
        for (i, op) in ops.iter().enumerate() {
            let r = match op {
                Op::Create { path, data, mode } => {
                    writer.add_create(path, data, &acls.options(*mode))
                }
                Op::SetData {
                    path,
                    data,
                    version,
                } => writer.add_set_data(path, data, *version),
                Op::Delete { path, version } => writer.add_delete(path, *version),
                Op::Check { path, version } => {
                    writer.add_check_version(path, version.unwrap_or(-1))
                }
            };
            if let Err(e) = r {
                build_err = Some(Error::MultiFailed {
                    index: i,
                    source: Box::new(map_err(e, op.path())),
                });
                break;
            }
        }
        let fut = if build_err.is_none() {
            Some(writer.commit())
        } else {
            None
        };
        async move {
            if let Some(e) = build_err {
                return Err(e);
            }
            let Some(fut) = fut else {
                return Err(Error::Unexpected("multi not built".into()));
            };
            match fut.await {
                Ok(results) => Ok(results
                    .into_iter()
                    .map(|r| match r {
                        zk::MultiWriteResult::Create { path, stat: s } => OpResult::Created {
                            path,
                            stat: stat(s),
                        },
                        zk::MultiWriteResult::SetData { stat: s } => {
                            OpResult::DataSet { stat: stat(s) }
                        }
                        zk::MultiWriteResult::Delete => OpResult::Deleted,
                        _ => OpResult::Checked,
                    })
                    .collect()),
                Err(zk::MultiWriteError::RequestFailed { source }) => Err(map_err(source, "")),
                Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                    let path = ops.get(index).map(|o| o.path()).unwrap_or("");
                    Err(Error::MultiFailed {
                        index,
                        source: Box::new(map_err(source, path)),
                    })
                }
            }
        }
    }
}

/// Expires a session on purpose: connects a second client with the same session id and
/// password, then closes it (what Curator's KillSession does).
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) async fn expire_session(
    connect: &str,
    session: &WireSession,
    timeout: Duration,
) -> Result<()> {
    let connector = zk::Client::connector()
        .with_session(session.0.clone())
        .with_session_timeout(timeout);
    match tokio::time::timeout(timeout, connector.connect(connect)).await {
        Err(_) => Err(Error::Timeout {
            op: "expire_session",
            after: timeout,
        }),
        // Already expired: nothing to do.
        Ok(Err(zk::Error::SessionExpired)) => Ok(()),
        Ok(Err(e)) => Err(map_err(e, "")),
        Ok(Ok(client)) => {
            // Dropping the last handle of a non-detached client closes the session.
            drop(client);
            Ok(())
        }
    }
}
