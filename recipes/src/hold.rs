//! What every holder relies on, whether it holds a lock, a semaphore lease or leadership: the
//! [`Fence`] that proves it holds, and the [`LossPolicy`] that says when it stops holding.
//!
//! A [`Fence`] is the same for all of them: the `czxid` of the holder's node as a token that
//! strictly increases across successive holders, the node's path and the session that owns it.
//! Stamp every write to a shared resource with `token` and let the resource reject writes whose
//! token is smaller than the largest it has seen: a paused or partitioned former holder then
//! cannot overwrite the work of its successor. `docs/leases.md` explains how the holder's
//! local view (`valid_until`, `lost`) and the fence complement each other.

use zkr::SessionId;

/// Proof of holding a lock, a lease or leadership.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// Strictly increasing across successive holders: the `czxid` of the holder's node.
    pub token: i64,
    /// Full path of the holder's node.
    pub path: String,
    /// The session that owns the node.
    pub session: SessionId,
}

/// When something held (a lock, a lease, leadership) counts as lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LossPolicy {
    /// As soon as the session is `Suspended` (Curator's standard policy): the connection is
    /// gone or silent, so another client may take over soon. The safe default.
    #[default]
    Suspended,
    /// Only when the session is `Lost` (zkr declares `Lost` before the server can expire the
    /// session, so the holder still learns first): fewer needless hand-overs on a flaky
    /// network, at the price of holding while unreachable.
    Lost,
}
