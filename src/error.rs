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
    #[error("could not reach any ZooKeeper server of {servers:?} within {after:?}; is the ensemble up and the address right?")]
    Unreachable { servers: String, after: Duration },

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

    /// The ACL of the node denies this session.
    #[error("not authorized for {path}: add the right digest auth to the client builder")]
    NoAuth { path: String },

    /// The server rejected the credentials.
    #[error("authentication failed: the server rejected the client's credentials")]
    AuthFailed,

    /// Ephemeral nodes cannot have children.
    #[error(
        "cannot create {path}: its parent is ephemeral and ephemeral nodes cannot have children"
    )]
    NoChildrenForEphemerals { path: String },

    /// The ACL given is invalid.
    #[error("invalid ACL for {path}")]
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

    /// Anything the wire client reported that has no better kind.
    #[error("unexpected ZooKeeper error: {0}")]
    Unexpected(String),
}

impl Error {
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
        )
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
