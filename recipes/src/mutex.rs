//! An exclusive lock, compatible with Apache Curator's `InterProcessMutex`.
//!
//! # Znode layout
//! ```text
//! <path>/                                   container, created on first use
//! <path>/_c_<uuid>-lock-0000000042          one ephemeral-sequential node per acquirer
//! <path>/<hex>__lock__0000000043            kazoo's contenders, recognised as such
//! ```
//! The node data is empty (or what [`Mutex::with_data`] sets). Curator uses the same names, so a
//! Java service and a Rust service exclude each other on the same path; kazoo's `Lock`
//! contenders are counted too, so a kazoo holder also excludes zkr.
//!
//! # Protocol
//! 1. Create our node and list the children in **one round trip** (both requests are pipelined
//!    on the session; the server runs them in order).
//! 2. Order the contenders by sequence number, numerically and wrap-aware (the 32-bit counter
//!    wraps from `2147483647` to `-2147483648`).
//! 3. First in line holds the lock. Everyone else watches only its predecessor (no herd
//!    effect) and looks again when it goes.
//!
//! # Guarantees
//! * At most one holder at a time among clients that follow this protocol.
//! * After a connection loss during the create, our node is found by its uuid **and** an
//!   `ephemeralOwner` equal to our session; a node of another (or an expired) session is
//!   never adopted. Exactly one node per acquirer.
//! * Cancel-safe: dropping an `acquire` future at any point removes its node (in the
//!   background); a [`MutexGuard`] releases on drop, or explicitly with
//!   [`MutexGuard::release`], which reports the outcome.
//! * Fencing: [`MutexGuard::fence`]'s token is the lock node's `czxid`, strictly increasing
//!   across successive holders; [`MutexGuard::fenced_multi`] runs ZooKeeper writes that only
//!   apply while our lock node exists.
//!
//! # Suspend, reconnect, loss
//! The whole acquisition runs on one session ([`zkr::Client::pinned`]). If it ends while
//! waiting, the acquire fails with [`Error::SessionLost`] and leaves
//! nothing behind. While held, [`MutexGuard::is_lost`] turns true and [`MutexGuard::lost`]
//! completes as soon as the session is `Suspended` (default, Curator's policy) or only when it
//! is `Lost` ([`LossPolicy::Lost`]). Both come before the server can expire the session, so
//! the holder is told before anyone else can acquire. A lost hold stays lost: release and
//! acquire again. Besides, [`MutexGuard::is_lost`] is true once the session's lease
//! ([`MutexGuard::valid_until`]) has run out, computed at the moment of the call: a process that
//! was paused for longer learns it on its first call, before any task has run (see
//! `docs/leases.md` in the repository). While someone waits on [`MutexGuard::lost`], the guard
//! also watches its own node: a node deleted by an operator ends the hold.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! let mutex = zkr_recipes::Mutex::new(&client, "/locks/printer")?;
//! let guard = mutex.acquire_timeout(std::time::Duration::from_secs(5)).await?;
//! // ... exclusive work; check !guard.is_lost() before acting on shared state ...
//! guard.release().await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;
use zkr::{Client, Op, OpResult, SessionId};

use crate::error::{Error, Result};
use crate::hold::Fence;
use crate::lock_internals::{
    self, Acquired, Decision, HoldMonitor, LossPolicy, Queue, LOCK_MARKERS,
};

/// An exclusive lock on a ZooKeeper path.
#[derive(Clone, Debug)]
pub struct Mutex {
    client: Client,
    path: String,
    policy: LossPolicy,
    data: Vec<u8>,
}

impl Mutex {
    /// A lock on `path` (validated now; created on first acquire).
    pub fn new(client: &Client, path: &str) -> Result<Mutex> {
        zkr::path::validate_path(path, false)?;
        Ok(Mutex {
            client: client.clone(),
            path: path.to_string(),
            policy: LossPolicy::default(),
            data: Vec::new(),
        })
    }

    /// When a held lock counts as lost (default: on `Suspended`).
    pub fn with_loss_policy(mut self, policy: LossPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Data stored in our lock node (e.g. the holder's identity; Curator stores the IP).
    pub fn with_data(mut self, data: &[u8]) -> Self {
        self.data = data.to_vec();
        self
    }

    /// The lock path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Waits until the lock is ours.
    ///
    /// # Errors
    /// [`Error::SessionLost`] if the session ends while waiting (nothing is left behind);
    /// [`Error::Zk`] for a ZooKeeper error that retrying cannot fix (e.g. `NoAuth`).
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future removes our queue node (in the background).
    pub async fn acquire(&self) -> Result<MutexGuard> {
        self.acquire_inner(None, false)
            .await?
            .ok_or(Error::Invalid("blocking acquire returned nothing".into()))
    }

    /// Waits at most `timeout`; on timeout nothing is held and nothing is left behind.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout` (`Duration::MAX` waits forever); otherwise as
    /// [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`acquire`](Self::acquire).
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<MutexGuard> {
        self.acquire_inner(crate::wait::deadline_in(timeout), false)
            .await?
            .ok_or(Error::Invalid("blocking acquire returned nothing".into()))
    }

    /// Takes the lock only if it is free right now.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire); `Ok(None)` when someone else holds or waits for it.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future leaves no node behind.
    pub async fn try_acquire(&self) -> Result<Option<MutexGuard>> {
        self.acquire_inner(None, true).await
    }

    async fn acquire_inner(
        &self,
        deadline: Option<Instant>,
        try_only: bool,
    ) -> Result<Option<MutexGuard>> {
        let span = tracing::debug_span!("zkr.mutex.acquire", path = %self.path, try_only);
        let queue = Queue {
            dir: &self.path,
            marker: "lock-",
            markers: LOCK_MARKERS,
            data: &self.data,
        };
        let got = lock_internals::acquire(&self.client, &queue, deadline, try_only, |_, ours| {
            if ours == 0 {
                Decision::Acquired
            } else {
                Decision::WaitFor(ours - 1)
            }
        })
        .instrument(span)
        .await?;
        Ok(got.map(|a| MutexGuard::new(a, self.policy)))
    }

    /// The contenders' node names in queue order (the first holds the lock).
    ///
    /// # Errors
    /// [`Error::Zk`] when the listing fails.
    ///
    /// # Cancel safety
    /// Cancel-safe: a read.
    pub async fn participants(&self) -> Result<Vec<String>> {
        let children = match self.client.get_children(&self.path).await {
            Ok(c) => c,
            Err(e) if e.is_no_node() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(crate::sequence::contenders(&children, LOCK_MARKERS, None)
            .into_iter()
            .map(|c| c.name)
            .collect())
    }
}

/// A held lock. Releases on drop (in the background) or with [`release`](Self::release).
#[must_use = "the lock is released when the guard is dropped; bind it (`let guard = ...`) to hold the lock"]
pub struct MutexGuard {
    client: Client,
    fence: Fence,
    monitor: HoldMonitor,
    released: bool,
}

impl std::fmt::Debug for MutexGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutexGuard")
            .field("node", &self.fence.path)
            .field("token", &self.fence.token)
            .finish()
    }
}

impl MutexGuard {
    pub(crate) fn new(a: Acquired, policy: LossPolicy) -> Self {
        let epoch = a.client.epoch();
        MutexGuard {
            monitor: HoldMonitor::new(a.states, policy, epoch).watching_node(&a.client, &a.path),
            fence: Fence {
                token: a.stat.czxid,
                path: a.path,
                session: a.client.session_id().unwrap_or(SessionId(0)),
            },
            client: a.client,
            released: false,
        }
    }

    pub(crate) fn from_parts(
        client: Client,
        path: String,
        token: i64,
        monitor: HoldMonitor,
    ) -> Self {
        MutexGuard {
            fence: Fence {
                token,
                path,
                session: client.session_id().unwrap_or(SessionId(0)),
            },
            client,
            monitor,
            released: false,
        }
    }

    /// Whether the lock may no longer be held: true once the session was suspended (or lost,
    /// by policy) since the acquisition, and true once the session's lease ran out
    /// ([`valid_until`](Self::valid_until)), checked at the moment of the call: a process that
    /// was paused longer than the lease gets `true` on its first call, before any background
    /// task has run.
    pub fn is_lost(&self) -> bool {
        self.released
            || self.client.is_pin_lost()
            || std::time::Instant::now() >= self.valid_until()
            || self.monitor.is_lost()
    }

    /// Until when the lock is certainly still ours: the lease of the session that holds it
    /// (see [`zkr::Client::valid_until`]). Act on the lock only before this instant, and stamp
    /// writes with the [fence](Self::fence)'s token for what may arrive after it.
    pub fn valid_until(&self) -> std::time::Instant {
        self.client
            .valid_until()
            .unwrap_or_else(std::time::Instant::now)
    }

    /// Completes when the lock may no longer be held.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn lost(&self) {
        tokio::select! {
            _ = self.monitor.lost() => {},
            _ = self.client.pin_lost() => {},
        }
    }

    /// The proof of holding: a token that strictly increases across successive holders (the
    /// lock node's `czxid`), our lock node's path and the session that owns it.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Runs `ops` atomically, only if our lock node still exists (a check is prepended).
    /// Returns the results of `ops` (without the check's).
    ///
    /// # Errors
    /// [`Error::SessionLost`] when our lock node is gone (the lock was lost);
    /// `zkr::Error::MultiFailed` naming the failing op of `ops` otherwise.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have applied the transaction (all or nothing).
    pub async fn fenced_multi(&self, ops: &[Op]) -> Result<Vec<OpResult>> {
        let mut all = Vec::with_capacity(ops.len() + 1);
        all.push(Op::Check {
            path: self.fence.path.clone(),
            version: None,
        });
        all.extend_from_slice(ops);
        match self.client.multi(&all).await {
            Ok(mut r) => {
                r.remove(0);
                Ok(r)
            }
            Err(zkr::Error::MultiFailed { index: 0, .. }) => Err(Error::SessionLost {
                what: "fenced write",
            }),
            Err(zkr::Error::MultiFailed { index, source }) => Err(zkr::Error::MultiFailed {
                index: index - 1,
                source,
            }
            .into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Releases the lock.
    ///
    /// # Errors
    /// [`Error::SessionLost`] if it had already been lost with the session.
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped before the delete finished, dropping the guard
    /// deletes the node in the background, as if `release` had never been called.
    pub async fn release(mut self) -> Result<()> {
        let span = tracing::debug_span!("zkr.mutex.release", node = %self.fence.path);
        // `released` is set only once the delete has finished: if this future is dropped
        // before (under a timeout, say), or the delete failed, dropping the guard deletes the
        // node in the background instead of leaving it until the session ends.
        let deleted = lock_internals::release_node(&self.client, &self.fence.path)
            .instrument(span)
            .await?;
        self.released = true;
        if deleted {
            Ok(())
        } else {
            Err(Error::SessionLost { what: "release" })
        }
    }
}

impl Drop for MutexGuard {
    fn drop(&mut self) {
        if !self.released {
            lock_internals::release_in_background(
                self.client.clone(),
                std::mem::take(&mut self.fence.path),
            );
        }
    }
}
