//! Sequential IDs: unique, ordered IDs from ZooKeeper's sequential nodes.
//!
//! # Layout
//! `<dir>` is a *persistent* node (never a container: the server would delete an empty
//! container and its sequence counter would restart at 0). Each ID is one
//! `PersistentSequential` node `<dir>/id-NNNNNNNNNN`, created and deleted right away; the
//! server-assigned sequence number (the directory's child-version counter) is the ID.
//!
//! # Guarantees
//! * Unique across all clients of the directory, and ordered: an ID handed out after another
//!   completed is larger (the leader assigns sequence numbers in commit order).
//! * [`SequentialIds::next_batch`] creates many IDs per round trip: `multi` transactions of up to
//!   [`BATCH_CHUNK`] sequential creates each (one transaction on the server, all chunks in flight
//!   at once), then one `multi` deleting each chunk's nodes; it returns once they are deleted.
//!   [`SequentialIds::next`] deletes its node in the background.
//! * **Wrap**: ZooKeeper's counter is a signed 32-bit integer. After 2^31 IDs from one
//!   directory it wraps to `-2147483648`; IDs stay unique for 2^32 creations but are no longer
//!   increasing after the wrap. Use a fresh directory (or [`crate::IdBlocks`], 64-bit) before
//!   that.
//! * Nodes are always deleted after use. A create whose reply was lost to a connection loss
//!   leaves one node behind (its ID is never handed out, so it is just a gap); such leftovers
//!   are removed by [`SequentialIds::cleanup`].
//!
//! # Suspended / Reconnected / Lost
//! Creating an ID needs a live connection: calls wait (within the client's operation timeout)
//! and are retried on connection loss and session loss, each retry yielding a fresh ID. IDs
//! already handed out stay valid; nothing depends on the session.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! let ids = zkr_recipes::SequentialIds::new(&client, "/app/ids/orders")?;
//! let one = ids.next().await?;
//! let many = ids.next_batch(100).await?;
//! assert!(many.iter().all(|&id| id > one));
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use tracing::Instrument;
use zkr::{Client, CreateMode, Op, OpResult};

use crate::config::policy;
use crate::error::{Error, Result};
use crate::sequence::parse_seq;

const PREFIX: &str = "id-";

/// Most sequential creates put in one `multi` transaction by [`SequentialIds::next_batch`].
pub const BATCH_CHUNK: usize = 200;

/// Most IDs one [`SequentialIds::next_batch`] (or [`crate::IdBlocks::next_batch`]) call hands out:
/// beyond it a call is refused with [`Error::Invalid`] before anything is sent, instead of
/// trying to hold (or create) an absurd number.
pub(crate) const MAX_IDS_PER_CALL: usize = 1 << 20;

/// `Err(Invalid)` for more than [`MAX_IDS_PER_CALL`] IDs in one call.
pub(crate) fn check_count(n: usize) -> Result<()> {
    if n > MAX_IDS_PER_CALL {
        return Err(Error::Invalid(format!(
            "{n} IDs in one call; at most {MAX_IDS_PER_CALL}"
        )));
    }
    Ok(())
}

/// Unique ordered IDs from sequential nodes under one directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SequentialIds {
    client: Client,
    dir: String,
    prefix: String,
    dir_ready: Arc<AtomicBool>,
}

impl SequentialIds {
    /// IDs from directory `dir` (validated; nothing is sent).
    pub fn new(client: &Client, dir: &str) -> Result<Self> {
        zkr::path::validate_path(dir, false)?;
        Ok(SequentialIds {
            client: client.clone(),
            dir: dir.to_string(),
            prefix: zkr::path::join(dir, PREFIX),
            dir_ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The directory the ID nodes are created in.
    pub fn path(&self) -> &str {
        &self.dir
    }

    async fn ensure_dir(&self) -> Result<()> {
        if !self.dir_ready.load(Ordering::Relaxed) {
            let pol = policy(self.client.timeout());
            self.client
                .retry(&pol, || self.client.ensure_path(&self.dir))
                .await?;
            self.dir_ready.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One create: `Ok(Some((id, node path)))`, or `Ok(None)` if the directory vanished.
    async fn create_one(&self) -> Result<Option<(i64, String)>> {
        let pol = policy(self.client.timeout());
        let r = self
            .client
            .retry(&pol, || {
                self.client
                    .create(&self.prefix, &[], CreateMode::PersistentSequential)
            })
            .await;
        match r {
            Ok(path) => {
                let name = path.rsplit('/').next().unwrap_or("");
                let seq = parse_seq(name, PREFIX).ok_or_else(|| {
                    Error::Invalid(format!("unexpected sequential node name {path}"))
                })?;
                Ok(Some((seq as i64, path)))
            }
            Err(zkr::Error::NoNode { .. }) => {
                self.dir_ready.store(false, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_node(client: &Client, path: &str) {
        match client.delete(path, None).await {
            Ok(()) | Err(zkr::Error::NoNode { .. }) => {}
            Err(e) => {
                tracing::debug!(error = %e, %path, "id node not deleted now; cleanup() removes it")
            }
        }
    }

    /// The next ID.
    ///
    /// # Errors
    /// [`Error::Zk`] when the create fails after its retries (e.g. `NoAuth`).
    ///
    /// # Cancel safety
    /// If dropped, an ID may have been taken and is never returned: IDs stay unique, with a
    /// gap; a node may be left for [`cleanup`](Self::cleanup).
    pub async fn next(&self) -> Result<i64> {
        let span = tracing::debug_span!("zkr.sequential_ids.next", dir = %self.dir);
        async {
            loop {
                self.ensure_dir().await?;
                if let Some((id, path)) = self.create_one().await? {
                    // The id is ours already: delete the node in the background.
                    let c = self.client.clone();
                    tokio::spawn(async move { Self::delete_node(&c, &path).await });
                    return Ok(id);
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One `multi` of `k` sequential creates (one transaction, `k` IDs), then one `multi` of
    /// their deletes. `Ok(None)` if the directory vanished.
    async fn create_chunk(&self, k: usize) -> Result<Option<Vec<i64>>> {
        let ops: Vec<Op> = (0..k)
            .map(|_| Op::Create {
                path: self.prefix.clone(),
                data: Vec::new(),
                mode: CreateMode::PersistentSequential,
            })
            .collect();
        let pol = policy(self.client.timeout());
        let results = match self.client.retry(&pol, || self.client.multi(&ops)).await {
            Ok(r) => r,
            Err(zkr::Error::MultiFailed { source, .. }) if source.is_no_node() => {
                self.dir_ready.store(false, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let mut ids = Vec::with_capacity(k);
        let mut deletes = Vec::with_capacity(k);
        for r in results {
            if let OpResult::Created { path, .. } = r {
                let name = path.rsplit('/').next().unwrap_or("");
                let seq = parse_seq(name, PREFIX).ok_or_else(|| {
                    Error::Invalid(format!("unexpected sequential node name {path}"))
                })?;
                ids.push(seq as i64);
                deletes.push(Op::Delete {
                    path,
                    version: None,
                });
            }
        }
        if ids.len() != k {
            return Err(Error::Invalid(format!(
                "a multi of {k} creates returned {} nodes",
                ids.len()
            )));
        }
        if let Err(e) = self.client.multi(&deletes).await {
            // E.g. one node already removed by cleanup(): delete one by one.
            tracing::debug!(error = %e, "batch delete failed; deleting one by one");
            let paths: Vec<&str> = deletes.iter().map(|d| d.path()).collect();
            futures::future::join_all(paths.iter().map(|p| Self::delete_node(&self.client, p)))
                .await;
        }
        Ok(Some(ids))
    }

    /// `n` IDs, returned sorted. They are created by `multi` transactions of up to
    /// [`BATCH_CHUNK`] sequential creates each (all chunks in flight at once), each followed by
    /// one `multi` deleting its nodes; returns once the nodes are deleted.
    ///
    /// # Errors
    /// As [`next`](Self::next); [`Error::Invalid`] for more than 1,048,576 IDs in one call
    /// (before anything is sent).
    ///
    /// # Cancel safety
    /// As [`next`](Self::next).
    pub async fn next_batch(&self, n: usize) -> Result<Vec<i64>> {
        check_count(n)?;
        let span = tracing::debug_span!("zkr.sequential_ids.next_batch", dir = %self.dir, n);
        async {
            let mut out = Vec::with_capacity(n.min(4096));
            while out.len() < n {
                self.ensure_dir().await?;
                let missing = n - out.len();
                let mut inflight: FuturesUnordered<_> = (0..missing.div_ceil(BATCH_CHUNK))
                    .map(|i| self.create_chunk(BATCH_CHUNK.min(missing - i * BATCH_CHUNK)))
                    .collect();
                while let Some(r) = inflight.next().await {
                    if let Some(ids) = r? {
                        out.extend(ids);
                    }
                }
            }
            out.sort_unstable();
            Ok(out)
        }
        .instrument(span)
        .await
    }

    /// Deletes leftover ID nodes (from creates whose reply was lost). Only nodes of this recipe
    /// (`id-` prefix) are touched; call it when no other client is creating IDs right now, or
    /// accept that a concurrent client's node may be deleted before it does so itself (harmless:
    /// the ID is already handed out).
    ///
    /// # Errors
    /// [`Error::Zk`] when listing or deleting fails.
    ///
    /// # Cancel safety
    /// Cancel-safe: stopping half-way leaves the rest for the next call.
    pub async fn cleanup(&self) -> Result<usize> {
        let span = tracing::debug_span!("zkr.sequential_ids.cleanup", dir = %self.dir);
        async {
            let names = match self.client.get_children(&self.dir).await {
                Ok(n) => n,
                Err(zkr::Error::NoNode { .. }) => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            let mut removed = 0;
            for n in names.iter().filter(|n| parse_seq(n, PREFIX).is_some()) {
                match self
                    .client
                    .delete(&zkr::path::join(&self.dir, n), None)
                    .await
                {
                    Ok(()) => removed += 1,
                    Err(zkr::Error::NoNode { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(removed)
        }
        .instrument(span)
        .await
    }
}
