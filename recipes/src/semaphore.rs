//! A counting semaphore with N leases, compatible with Apache Curator's
//! `InterProcessSemaphoreV2`.
//!
//! # Znode layout
//! ```text
//! <path>/locks/_c_<uuid>-lock-0000000003     internal mutex serialising lease checks
//! <path>/leases/_c_<uuid>-lease-0000000012   one ephemeral-sequential node per lease
//! ```
//!
//! # Protocol (Curator's)
//! 1. Take the internal mutex on `<path>/locks`.
//! 2. Create our lease node and list `<path>/leases` in one round trip.
//! 3. If there are at most N lease nodes, the lease is ours; otherwise watch the leases'
//!    children and look again when one goes.
//! 4. Release the internal mutex.
//!
//! Only the holder of the internal mutex can add a lease it does not hold yet, so at most N
//! leases are ever held, also for [`Semaphore::try_acquire`] under concurrency.
//! Lease nodes are ephemeral and cancel-safe (removed when an acquire is dropped), so leases of
//! dead sessions and cancelled acquires never linger and never exhaust the semaphore.
//!
//! On `Suspended` / `Lost` a held [`Lease`] behaves like a [`MutexGuard`]:
//! `is_lost()` turns true and `lost()` completes.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tracing::Instrument;
use zkr::Client;

use crate::error::{Error, Result};
use crate::lock_internals::{within, HoldMonitor, LossPolicy};
use crate::mutex::{Mutex, MutexGuard};
use crate::sequence::create_protected;

/// A semaphore with `max_leases` leases on a ZooKeeper path.
#[derive(Clone, Debug)]
pub struct Semaphore {
    client: Client,
    leases: String,
    mutex: Mutex,
    max_leases: usize,
    policy: LossPolicy,
}

/// A held lease. Returned on drop (in the background) or with [`release`](Self::release).
pub type Lease = MutexGuard;

impl Semaphore {
    /// A semaphore with `max_leases` (at least 1) leases on `path`.
    pub fn new(client: &Client, path: &str, max_leases: usize) -> Result<Semaphore> {
        zkr::path::validate_path(path, false)?;
        if max_leases == 0 {
            return Err(Error::Invalid(
                "a semaphore needs at least one lease".into(),
            ));
        }
        Ok(Semaphore {
            client: client.clone(),
            leases: zkr::path::join(path, "leases"),
            mutex: Mutex::new(client, &zkr::path::join(path, "locks"))?,
            max_leases,
            policy: LossPolicy::default(),
        })
    }

    /// When a held lease counts as lost (default: on `Suspended`).
    pub fn with_loss_policy(mut self, policy: LossPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Waits for a lease.
    ///
    /// # Errors
    /// [`Error::SessionLost`] if the session ends while waiting (nothing is left behind);
    /// [`Error::Zk`] for a ZooKeeper error that retrying cannot fix (e.g. `NoAuth`).
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future removes our lease node and the internal lock node.
    pub async fn acquire(&self) -> Result<Lease> {
        self.acquire_inner(None, false)
            .await?
            .ok_or(Error::Invalid("blocking acquire returned nothing".into()))
    }

    /// Waits at most `timeout` for a lease.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout` (`Duration::MAX` waits forever); otherwise as
    /// [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`acquire`](Self::acquire).
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Lease> {
        self.acquire_inner(crate::wait::deadline_in(timeout), false)
            .await?
            .ok_or(Error::Invalid("blocking acquire returned nothing".into()))
    }

    /// Takes a lease only if one is free right now.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire); `Ok(None)` when all leases are taken.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future leaves no node behind.
    pub async fn try_acquire(&self) -> Result<Option<Lease>> {
        self.acquire_inner(None, true).await
    }

    /// Number of lease nodes now.
    ///
    /// # Errors
    /// [`Error::Zk`] when the read fails.
    ///
    /// # Cancel safety
    /// Cancel-safe: a read.
    pub async fn lease_count(&self) -> Result<usize> {
        match self.client.get_children(&self.leases).await {
            Ok(c) => Ok(c.len()),
            Err(e) if e.is_no_node() => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    async fn acquire_inner(
        &self,
        deadline: Option<Instant>,
        try_only: bool,
    ) -> Result<Option<Lease>> {
        let span = tracing::debug_span!(
            "zkr.semaphore.acquire",
            path = %self.leases,
            max = self.max_leases,
            try_only
        );
        async {
            // Only the holder of the internal mutex adds a lease it does not hold yet.
            let lock = match (deadline, try_only) {
                (_, true) => match self.mutex.try_acquire().await? {
                    Some(g) => g,
                    None => return Ok(None),
                },
                (Some(d), false) => {
                    let left = d.saturating_duration_since(Instant::now());
                    self.mutex.acquire_timeout(left).await?
                }
                (None, false) => self.mutex.acquire().await?,
            };
            let r = self.take_lease(deadline, try_only).await;
            let _ = lock.release().await;
            r
        }
        .instrument(span)
        .await
    }

    /// Steps 2 and 3 of the protocol, under the internal mutex.
    async fn take_lease(&self, deadline: Option<Instant>, try_only: bool) -> Result<Option<Lease>> {
        const WHAT: &str = "semaphore acquire";
        let pinned = self.client.pinned().await?;
        let states = pinned.states();
        let create = create_protected(&pinned, &self.leases, "lease-", &[]);
        let (node, stat, mut children) = within(deadline, WHAT, create).await??;
        loop {
            if children.len() <= self.max_leases {
                let epoch = pinned.epoch();
                let path = node.disarm();
                let monitor =
                    HoldMonitor::new(states, self.policy, epoch).watching_node(&pinned, &path);
                let lease = MutexGuard::from_parts(pinned.clone(), path, stat.czxid, monitor);
                return Ok(Some(lease));
            }
            if try_only {
                node.remove().await?;
                return Ok(None);
            }
            let wait = self.leases_change(&pinned, children.len());
            children = within(deadline, WHAT, wait).await??;
        }
    }

    /// Waits until the leases' children shrink below `before` or fit in `max_leases`; returns
    /// them then.
    async fn leases_change(&self, pinned: &Client, before: usize) -> Result<Vec<String>> {
        let mut w = pinned.watch_children(&self.leases)?;
        loop {
            tokio::select! {
                ev = w.next() => match ev {
                    Some(Ok(ev)) => {
                        let now = ev.children().map(|c| c.to_vec()).unwrap_or_default();
                        if now.len() < before || now.len() <= self.max_leases {
                            return Ok(now);
                        }
                    }
                    Some(Err(e)) => return Err(Error::from(e)),
                    None => return Err(zkr::Error::Closed.into()),
                },
                _ = pinned.pin_lost() => {
                    return Err(Error::SessionLost { what: "semaphore acquire" });
                }
            }
        }
    }
}
