//! zkr's one error type.
//!
//! Every failure a caller can see is one [`Error`] variant with an actionable message. Two kinds
//! matter most for recipes:
//!
//! * [`Error::ConnectionLoss`]: the request may or may not have been executed ("outcome unknown").
//!   The session is still alive; retry idempotent operations, re-check non-idempotent ones.
//! * [`Error::SessionLost`]: the ZooKeeper session the operation belonged to is gone (expired, or
//!   the client was cut off long enough that the server may have expired it). Ephemeral nodes of
//!   that session are gone or going; nothing issued for it will run in a later session.

use std::time::Duration;

/// Result alias used across zkr.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error zkr returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // fields are named for what they hold
pub enum Error {
    /// A path failed client-side validation; nothing was sent.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },

    /// Node data larger than ZooKeeper accepts (jute.maxbuffer, 1 MiB by default).
    #[error("data of {len} bytes exceeds the {max}-byte limit of a znode; store large payloads elsewhere")]
    DataTooLarge { len: usize, max: usize },

    /// The connect string could not be parsed.
    #[error(
        "invalid connect string {input:?}: {reason} (expected host:port[,host:port...][/chroot])"
    )]
    InvalidConnectString { input: String, reason: String },

    /// Another argument was rejected before anything was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// No ZooKeeper server answered within the connect timeout.
    #[error("could not reach any ZooKeeper server of {servers:?} within {after:?} (last attempt: {last_error}); is the ensemble up and the address right?")]
    Unreachable {
        servers: String,
        after: Duration,
        /// Why the last attempt failed.
        last_error: String,
    },

    /// The TLS connection could not be set up: the server's certificate is not signed by the
    /// configured CA, has expired or names another host; the server refused the client's
    /// certificate; or the port does not speak TLS. Retrying does not help; fix the setup.
    #[error("TLS connection to {servers} failed: {reason}")]
    Tls { servers: String, reason: String },

    /// The SASL login could not be carried out (the server has no SASL set up, offers nothing
    /// zkr supports, or failed to prove it knows the password). A rejected password is
    /// [`Error::AuthFailed`].
    #[error("SASL login failed: {0}")]
    Sasl(String),

    /// The connection dropped while the request was in flight: it may or may not have run.
    #[error("connection to ZooKeeper lost during the request; its outcome is unknown (the session is still alive)")]
    ConnectionLoss,

    /// The session the operation belonged to ended; nothing of it runs in a later session.
    #[error("ZooKeeper session {session:#x} was lost (epoch {epoch}); ephemeral nodes and watches of it are gone")]
    SessionLost { session: i64, epoch: u64 },

    /// The operation did not complete before its deadline.
    #[error("{op} did not complete within {after:?}; its outcome is unknown")]
    Timeout { op: &'static str, after: Duration },

    /// The node does not exist.
    #[error("node {path} does not exist")]
    NoNode { path: String },

    /// The node already exists.
    #[error("node {path} already exists")]
    NodeExists { path: String },

    /// The expected version did not match (someone else changed the node).
    #[error("version mismatch on {path}: the node was changed concurrently")]
    BadVersion { path: String },

    /// The node has children and cannot be deleted.
    #[error("node {path} has children and cannot be deleted")]
    NotEmpty { path: String },

    /// The ACL of the node denies this session. Final: retrying with the same credentials
    /// cannot succeed.
    #[error("not authorized for {path} (NoAuth): the node's ACL does not grant this session that permission; authenticate as an identity it names (ClientBuilder::digest_auth, Client::add_auth, or the CLI's --auth digest:USER:PASSWORD)")]
    NoAuth { path: String },

    /// The server rejected the credentials (on connect, on a reconnect, or an `add_auth`).
    /// Final: the client stops reconnecting and ends (state `Lost`, then `Closed`).
    #[error("authentication failed: the server rejected the client's credentials (unknown auth scheme, wrong SASL password, or the server's auth provider refused them)")]
    AuthFailed,

    /// Ephemeral nodes cannot have children.
    #[error(
        "cannot create {path}: its parent is ephemeral and ephemeral nodes cannot have children"
    )]
    NoChildrenForEphemerals { path: String },

    /// The ACL given is invalid.
    #[error("invalid ACL for {path}: ZooKeeper rejected it (an `auth` entry such as Acl::creator_all needs credentials on the session; a digest id must be USER:base64(sha1))")]
    InvalidAcl { path: String },

    /// A write was sent to a read-only server.
    #[error("the connected server is read-only (it lost its quorum); writes are refused")]
    NotReadOnly,

    /// The client was closed by the application.
    #[error("the zkr client has been closed")]
    Closed,

    /// The server does not implement this operation.
    #[error("the ZooKeeper server does not implement this operation")]
    Unimplemented,

    /// One operation of a multi failed; none of them were applied.
    #[error("multi operation #{index} failed, nothing was applied: {source}")]
    MultiFailed { index: usize, source: Box<Error> },

    /// No watch of that kind is set on the path (`removeWatches`).
    #[error("no watch to remove on {path}")]
    NoWatcher { path: String },

    /// The write would exceed a quota set on the path (hard quotas, ZooKeeper 3.7+).
    #[error("quota exceeded under {path}: raise the quota or write less")]
    QuotaExceeded { path: String },

    /// The server is overloaded and shed the request; retry with backoff.
    #[error("the ZooKeeper server throttled the request (overloaded); retry later")]
    Throttled,

    /// Any other error code a ZooKeeper 3.8 server can return.
    #[error("ZooKeeper error {code:?} ({}) on {path:?}", code.code())]
    Server { code: ErrorCode, path: String },

    /// The server sent bytes that are not valid ZooKeeper protocol; the connection was reset.
    #[error("malformed reply from ZooKeeper: {0}; the connection was reset")]
    Protocol(String),

    /// Anything else that has no better kind.
    #[error("unexpected ZooKeeper error: {0}")]
    Unexpected(String),
}

/// Every error code of ZooKeeper 3.8 (`KeeperException.Code`). [`Error::code`] gives the code
/// of an error; [`Error::from_code`] the typed error of a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // named as in ZooKeeper
pub enum ErrorCode {
    SystemError,
    RuntimeInconsistency,
    DataInconsistency,
    ConnectionLoss,
    MarshallingError,
    Unimplemented,
    OperationTimeout,
    BadArguments,
    NewConfigNoQuorum,
    ReconfigInProgress,
    UnknownSession,
    ApiError,
    NoNode,
    NoAuth,
    BadVersion,
    NoChildrenForEphemerals,
    NodeExists,
    NotEmpty,
    SessionExpired,
    InvalidCallback,
    InvalidAcl,
    AuthFailed,
    SessionMoved,
    NotReadOnly,
    EphemeralOnLocalSession,
    NoWatcher,
    RequestTimeout,
    ReconfigDisabled,
    SessionClosedRequireSaslAuth,
    QuotaExceeded,
    Throttled,
    /// A code this version does not know.
    Other(i32),
}

const CODES: &[(ErrorCode, i32)] = &[
    (ErrorCode::SystemError, -1),
    (ErrorCode::RuntimeInconsistency, -2),
    (ErrorCode::DataInconsistency, -3),
    (ErrorCode::ConnectionLoss, -4),
    (ErrorCode::MarshallingError, -5),
    (ErrorCode::Unimplemented, -6),
    (ErrorCode::OperationTimeout, -7),
    (ErrorCode::BadArguments, -8),
    (ErrorCode::NewConfigNoQuorum, -13),
    (ErrorCode::ReconfigInProgress, -14),
    (ErrorCode::UnknownSession, -15),
    (ErrorCode::ApiError, -100),
    (ErrorCode::NoNode, -101),
    (ErrorCode::NoAuth, -102),
    (ErrorCode::BadVersion, -103),
    (ErrorCode::NoChildrenForEphemerals, -108),
    (ErrorCode::NodeExists, -110),
    (ErrorCode::NotEmpty, -111),
    (ErrorCode::SessionExpired, -112),
    (ErrorCode::InvalidCallback, -113),
    (ErrorCode::InvalidAcl, -114),
    (ErrorCode::AuthFailed, -115),
    (ErrorCode::SessionMoved, -118),
    (ErrorCode::NotReadOnly, -119),
    (ErrorCode::EphemeralOnLocalSession, -120),
    (ErrorCode::NoWatcher, -121),
    (ErrorCode::RequestTimeout, -122),
    (ErrorCode::ReconfigDisabled, -123),
    (ErrorCode::SessionClosedRequireSaslAuth, -124),
    (ErrorCode::QuotaExceeded, -125),
    (ErrorCode::Throttled, -127),
];

impl ErrorCode {
    /// The code for a number from a reply header.
    pub fn from_i32(n: i32) -> ErrorCode {
        CODES
            .iter()
            .find(|(_, c)| *c == n)
            .map(|(e, _)| *e)
            .unwrap_or(ErrorCode::Other(n))
    }

    /// The number ZooKeeper uses.
    pub fn code(self) -> i32 {
        match self {
            ErrorCode::Other(n) => n,
            known => CODES
                .iter()
                .find(|(e, _)| *e == known)
                .map_or(0, |(_, c)| *c),
        }
    }

    /// Every code ZooKeeper 3.8 defines (except `Ok`).
    pub fn all() -> impl Iterator<Item = ErrorCode> {
        CODES.iter().map(|(e, _)| *e)
    }
}

impl Error {
    /// The typed error for a ZooKeeper error code returned for `path`. Session-level codes
    /// (`SessionExpired`, `SessionMoved`) become [`Error::SessionLost`] without an epoch: the
    /// session layer fills it in.
    pub fn from_code(code: ErrorCode, path: &str) -> Error {
        let path = path.to_string();
        match code {
            ErrorCode::ConnectionLoss => Error::ConnectionLoss,
            ErrorCode::NoNode => Error::NoNode { path },
            ErrorCode::NodeExists => Error::NodeExists { path },
            ErrorCode::BadVersion => Error::BadVersion { path },
            ErrorCode::NotEmpty => Error::NotEmpty { path },
            ErrorCode::NoAuth => Error::NoAuth { path },
            ErrorCode::NoChildrenForEphemerals => Error::NoChildrenForEphemerals { path },
            ErrorCode::InvalidAcl => Error::InvalidAcl { path },
            ErrorCode::AuthFailed => Error::AuthFailed,
            ErrorCode::NotReadOnly => Error::NotReadOnly,
            ErrorCode::Unimplemented => Error::Unimplemented,
            ErrorCode::NoWatcher => Error::NoWatcher { path },
            ErrorCode::QuotaExceeded => Error::QuotaExceeded { path },
            ErrorCode::Throttled => Error::Throttled,
            ErrorCode::BadArguments => Error::InvalidArgument(format!(
                "the server rejected the arguments of a request on {path:?}"
            )),
            ErrorCode::SessionExpired | ErrorCode::SessionMoved => Error::SessionLost {
                session: 0,
                epoch: 0,
            },
            code => Error::Server { code, path },
        }
    }

    /// The ZooKeeper error code this error stands for, if it came from (or maps to) one.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::ConnectionLoss => ErrorCode::ConnectionLoss,
            Error::NoNode { .. } => ErrorCode::NoNode,
            Error::NodeExists { .. } => ErrorCode::NodeExists,
            Error::BadVersion { .. } => ErrorCode::BadVersion,
            Error::NotEmpty { .. } => ErrorCode::NotEmpty,
            Error::NoAuth { .. } => ErrorCode::NoAuth,
            Error::NoChildrenForEphemerals { .. } => ErrorCode::NoChildrenForEphemerals,
            Error::InvalidAcl { .. } => ErrorCode::InvalidAcl,
            Error::AuthFailed => ErrorCode::AuthFailed,
            Error::NotReadOnly => ErrorCode::NotReadOnly,
            Error::Unimplemented => ErrorCode::Unimplemented,
            Error::NoWatcher { .. } => ErrorCode::NoWatcher,
            Error::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            Error::Throttled => ErrorCode::Throttled,
            Error::SessionLost { .. } => ErrorCode::SessionExpired,
            Error::Server { code, .. } => *code,
            Error::MultiFailed { source, .. } => return source.code(),
            _ => return None,
        })
    }

    /// Outcome unknown, session alive: safe to retry idempotent operations.
    pub fn is_connection_loss(&self) -> bool {
        matches!(self, Error::ConnectionLoss | Error::Timeout { .. })
    }

    /// The session this operation belonged to is gone.
    pub fn is_session_lost(&self) -> bool {
        matches!(self, Error::SessionLost { .. })
    }

    /// Worth retrying for an idempotent operation (with a fresh session if need be).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLoss
                | Error::Timeout { .. }
                | Error::SessionLost { .. }
                | Error::NotReadOnly
                | Error::Throttled
                | Error::Server {
                    code: ErrorCode::RequestTimeout | ErrorCode::OperationTimeout,
                    ..
                }
        )
    }

    /// The server refused this session for who it is ([`Error::NoAuth`],
    /// [`Error::AuthFailed`], [`Error::InvalidAcl`], [`Error::Sasl`]): retrying cannot help;
    /// change the credentials or the ACL.
    pub fn is_auth_error(&self) -> bool {
        match self {
            Error::NoAuth { .. }
            | Error::AuthFailed
            | Error::InvalidAcl { .. }
            | Error::Sasl(_) => true,
            Error::MultiFailed { source, .. } => source.is_auth_error(),
            _ => false,
        }
    }

    /// The error is about a node not existing.
    pub fn is_no_node(&self) -> bool {
        matches!(self, Error::NoNode { .. })
    }

    /// The error is about a node already existing.
    pub fn is_node_exists(&self) -> bool {
        matches!(self, Error::NodeExists { .. })
    }
}
