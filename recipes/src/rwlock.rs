//! A read/write lock, compatible with Apache Curator's `InterProcessReadWriteLock`.
//!
//! # Znode layout
//! ```text
//! <path>/_c_<uuid>-__READ__0000000007      a reader's node (ephemeral sequential)
//! <path>/_c_<uuid>-__WRIT__0000000008      a writer's node
//! ```
//! One queue, ordered by sequence number (numerically, wrap-aware) across both kinds.
//!
//! # Rules
//! * A **writer** holds the lock when its node is first in the queue; it watches the node just
//!   before it.
//! * A **reader** holds the lock when no writer's node is before it; otherwise it watches the
//!   nearest writer before it. Readers share. A reader never waits for a writer queued *after*
//!   it (kazoo 2.8 deadlocks there), and writers queued before a reader keep it waiting, so
//!   writers are not starved.
//!
//! Cancellation, release, fencing and the behaviour on `Suspended` / `Lost` are those of
//! [`Mutex`](crate::Mutex): the guards are [`MutexGuard`]s.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! let lock = zkr_recipes::RwLock::new(&client, "/locks/table")?;
//! let read = lock.read().await?;   // shared with other readers
//! read.release().await?;
//! let write = lock.write().await?; // exclusive
//! write.release().await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;
use zkr::Client;

use crate::error::{Error, Result};
use crate::lock_internals::{self, Decision, LossPolicy, Queue};
use crate::mutex::MutexGuard;
use crate::sequence::Contender;

const READ: &str = "__READ__";
const WRITE: &str = "__WRIT__";
const MARKERS: &[&str] = &[READ, WRITE];

/// A read/write lock on a ZooKeeper path.
#[derive(Clone, Debug)]
pub struct RwLock {
    client: Client,
    path: String,
    policy: LossPolicy,
}

fn is_write(c: &Contender) -> bool {
    c.name.contains(WRITE)
}

impl RwLock {
    /// A read/write lock on `path`.
    pub fn new(client: &Client, path: &str) -> Result<RwLock> {
        zkr::path::validate_path(path, false)?;
        Ok(RwLock {
            client: client.clone(),
            path: path.to_string(),
            policy: LossPolicy::default(),
        })
    }

    /// When a held lock counts as lost (default: on `Suspended`).
    pub fn with_loss_policy(mut self, policy: LossPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Waits for a shared (read) lock.
    ///
    /// # Errors
    /// [`Error::SessionLost`] if the session ends while waiting (nothing is left behind);
    /// [`Error::Zk`] for a ZooKeeper error that retrying cannot fix (e.g. `NoAuth`).
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future removes our queue node (in the background).
    pub async fn read(&self) -> Result<MutexGuard> {
        self.lock(false, None).await
    }

    /// Waits at most `timeout` for a read lock.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout` (`Duration::MAX` waits forever); otherwise as
    /// [`read`](Self::read).
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`read`](Self::read).
    pub async fn read_timeout(&self, timeout: Duration) -> Result<MutexGuard> {
        self.lock(false, crate::wait::deadline_in(timeout)).await
    }

    /// Waits for the exclusive (write) lock.
    ///
    /// # Errors
    /// [`Error::SessionLost`] if the session ends while waiting (nothing is left behind);
    /// [`Error::Zk`] for a ZooKeeper error that retrying cannot fix (e.g. `NoAuth`).
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future removes our queue node (in the background).
    pub async fn write(&self) -> Result<MutexGuard> {
        self.lock(true, None).await
    }

    /// Waits at most `timeout` for the write lock.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout` (`Duration::MAX` waits forever); otherwise as
    /// [`write`](Self::write).
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`write`](Self::write).
    pub async fn write_timeout(&self, timeout: Duration) -> Result<MutexGuard> {
        self.lock(true, crate::wait::deadline_in(timeout)).await
    }

    /// Takes a read lock only if it is available right now (no writer queued ahead).
    ///
    /// # Errors
    /// As [`read`](Self::read); `Ok(None)` when a writer holds or waits for the lock.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future leaves no node behind.
    pub async fn try_read(&self) -> Result<Option<MutexGuard>> {
        self.lock_inner(false, None, true).await
    }

    /// Takes the write lock only if it is free right now.
    ///
    /// # Errors
    /// As [`write`](Self::write); `Ok(None)` when anyone holds or waits for the lock.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future leaves no node behind.
    pub async fn try_write(&self) -> Result<Option<MutexGuard>> {
        self.lock_inner(true, None, true).await
    }

    async fn lock(&self, write: bool, deadline: Option<Instant>) -> Result<MutexGuard> {
        self.lock_inner(write, deadline, false)
            .await?
            .ok_or(Error::Invalid("blocking acquire returned nothing".into()))
    }

    async fn lock_inner(
        &self,
        write: bool,
        deadline: Option<Instant>,
        try_only: bool,
    ) -> Result<Option<MutexGuard>> {
        let span = tracing::debug_span!("zkr.rwlock.acquire", path = %self.path, write, try_only);
        let queue = Queue {
            dir: &self.path,
            marker: if write { WRITE } else { READ },
            markers: MARKERS,
            data: &[],
        };
        let got = lock_internals::acquire(&self.client, &queue, deadline, try_only, |cs, ours| {
            if write {
                if ours == 0 {
                    Decision::Acquired
                } else {
                    Decision::WaitFor(ours - 1)
                }
            } else {
                match cs[..ours].iter().rposition(is_write) {
                    None => Decision::Acquired,
                    Some(w) => Decision::WaitFor(w),
                }
            }
        })
        .instrument(span)
        .await?;
        Ok(got.map(|a| MutexGuard::new(a, self.policy)))
    }
}
