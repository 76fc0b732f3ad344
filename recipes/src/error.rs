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

    /// Whether a wait or an operation ran out of time: a recipe's [`Error::Timeout`], or a
    /// wrapped `zkr::Error::Timeout` (also inside a failed multi).
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Zk(e) => zk_is(e, &|e| matches!(e, zkr::Error::Timeout { .. })),
            _ => false,
        }
    }

    /// Whether the session the operation relied on is gone: a recipe's
    /// [`Error::SessionLost`], or a wrapped `zkr::Error::SessionLost` (also inside a failed
    /// multi). Whatever the operation held is no longer held.
    pub fn is_session_lost(&self) -> bool {
        match self {
            Error::SessionLost { .. } => true,
            Error::Zk(e) => zk_is(e, &|e| e.is_session_lost()),
            _ => false,
        }
    }
}

/// Checks that `s` (a key, a service name, an id) is one valid node name; `what` names it in
/// the error.
pub(crate) fn check_segment(what: &str, s: &str) -> Result<()> {
    zkr::path::validate_segment(s).map_err(|e| match e {
        zkr::Error::InvalidPath { reason, .. } => {
            Error::Invalid(format!("{what} {s:?} is not a valid node name: {reason}"))
        }
        e => Error::Zk(e),
    })
}

/// `f(e)`, looking through `MultiFailed` to the operation that failed.
fn zk_is(e: &zkr::Error, f: &dyn Fn(&zkr::Error) -> bool) -> bool {
    match e {
        zkr::Error::MultiFailed { source, .. } => zk_is(source, f),
        e => f(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_look_inside_wrapped_client_errors() {
        let t = Error::Timeout {
            what: "x",
            after: Duration::ZERO,
        };
        assert!(t.is_timeout() && !t.is_session_lost());
        let zt = Error::Zk(zkr::Error::Timeout {
            op: "get",
            after: Duration::ZERO,
        });
        assert!(zt.is_timeout());
        let lost = Error::Zk(zkr::Error::MultiFailed {
            index: 1,
            source: Box::new(zkr::Error::SessionLost {
                session: 1,
                epoch: 2,
            }),
        });
        assert!(lost.is_session_lost() && !lost.is_timeout());
        assert!(Error::SessionLost { what: "x" }.is_session_lost());
        assert!(!Error::Closed("x").is_timeout());
    }

    #[test]
    fn one_segment_rule_for_keys_names_and_ids() {
        assert!(check_segment("key", "rps").is_ok());
        for bad in ["", ".", "..", "a/b", "nul\0", "\u{1}"] {
            assert!(
                matches!(check_segment("key", bad), Err(Error::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
