//! The recipes' one error type.

use std::time::Duration;

/// Result alias for recipes.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error a recipe returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A ZooKeeper operation failed (see [`zkr::Error`]).
    #[error(transparent)]
    Zk(#[from] zkr::Error),

    /// A wait ran past its timeout; nothing is held and nothing was left behind.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The timeout given.
        after: Duration,
    },

    /// A try-acquire found the resource busy.
    #[error("{what} is held by someone else")]
    Busy {
        /// The resource.
        what: String,
    },

    /// The session the recipe relied on was lost (suspended too long or expired) while the
    /// operation was waiting; nothing is held.
    #[error("the ZooKeeper session was lost during {what}; nothing is held")]
    SessionLost {
        /// The operation.
        what: &'static str,
    },

    /// A value could not be encoded or decoded (e.g. malformed JSON in a config node).
    #[error("bad payload at {path}: {reason}")]
    Payload {
        /// The node.
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The recipe was used in a way it does not allow.
    #[error("invalid use: {0}")]
    Invalid(String),

    /// The recipe object was closed.
    #[error("{0} is closed")]
    Closed(&'static str),
}

impl Error {
    /// Whether this wraps a `zkr` error satisfying `f`.
    pub fn is_zk(&self, f: impl Fn(&zkr::Error) -> bool) -> bool {
        matches!(self, Error::Zk(e) if f(e))
    }
}
