//! ID blocks: reserve a block of N IDs with one compare-and-set, hand them out locally.
//!
//! # Layout
//! The same node as [`crate::AtomicCounter`] (Curator `DistributedAtomicLong` layout: 8-byte
//! big-endian `i64`, empty = 0). Reserving a block adds `N` to it: the block is
//! `pre + 1 ..= pre + N`, so IDs from blocks and from plain increments never collide.
//!
//! # Guarantees
//! * Unique across processes and clients (each block comes from one successful
//!   compare-and-set), and strictly increasing within one `IdBlocks` (blocks are reserved one
//!   at a time and the counter only grows).
//! * One ZooKeeper write per `N` IDs; [`IdBlocks::next`] is a local operation otherwise.
//! * IDs of a block not handed out before the process ends are lost (gaps, never duplicates).
//!   A reservation whose outcome is unknown (connection lost during the write) is retried with
//!   a fresh compare-and-set: at worst a block is skipped.
//!
//! # Suspended / Reconnected / Lost
//! IDs of the current block are handed out regardless of the connection (they were reserved
//! already); reserving the next block waits for a connection (bounded by the counter's
//! timeout, see [`crate::AtomicCounter::with_timeout`]).
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! let ids = zkr_recipes::IdBlocks::new(&client, "/app/ids/users", 1000)?;
//! let a = ids.next().await?;
//! let b = ids.next().await?;
//! assert!(b > a);
//! # Ok(()) }
//! ```

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tracing::Instrument;
use zkr::Client;

use crate::atomic_counter::AtomicCounter;
use crate::error::{Error, Result};

#[derive(Debug)]
struct Block {
    next: i64,
    end: i64, // inclusive
    empty: bool,
}

/// Locally handed-out IDs from blocks reserved on a shared counter. Cheap to clone (clones
/// share the current block).
#[derive(Clone, Debug)]
pub struct IdBlocks {
    counter: AtomicCounter,
    size: u32,
    block: Arc<Mutex<Block>>,
    timeout: Duration,
}

impl IdBlocks {
    /// Blocks of `size` IDs (at least 1) from the counter at `path`.
    pub fn new(client: &Client, path: &str, size: u32) -> Result<Self> {
        if size == 0 {
            return Err(Error::Invalid("an ID block holds at least one ID".into()));
        }
        Ok(IdBlocks {
            counter: AtomicCounter::new(client, path)?,
            size,
            block: Arc::new(Mutex::new(Block {
                next: 0,
                end: 0,
                empty: true,
            })),
            timeout: Duration::from_secs(30),
        })
    }

    /// Gives up reserving a block after `d` (then [`Error::Timeout`]).
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self.counter = self.counter.with_timeout(d);
        self
    }

    /// The block size.
    pub fn block_size(&self) -> u32 {
        self.size
    }

    /// Reserves one block (retrying an unknown outcome with a fresh compare-and-set).
    async fn reserve(&self) -> Result<RangeInclusive<i64>> {
        let start = Instant::now();
        let mut backoff = crate::retry::backoff(Duration::from_millis(200));
        loop {
            match self.counter.add(self.size as i64).await {
                Ok(v) => return Ok(v.pre.wrapping_add(1)..=v.post),
                Err(Error::Zk(e)) if e.is_retryable() && start.elapsed() < self.timeout => {
                    tracing::debug!(error = %e, "block reservation outcome unknown; reserving another");
                    backoff.wait().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reserves a fresh block now and returns it whole (the caller hands its IDs out).
    ///
    /// # Errors
    /// As [`AtomicCounter::add`]: [`Error::Busy`] or [`Error::Timeout`] (after
    /// `with_timeout`) when the counter stays contended.
    ///
    /// # Cancel safety
    /// If dropped, a block may have been reserved and is then never handed out: IDs stay
    /// unique, with a gap.
    pub async fn reserve_block(&self) -> Result<RangeInclusive<i64>> {
        let span = tracing::debug_span!("zkr.id_blocks.reserve", path = %self.counter.path(), size = self.size);
        self.reserve().instrument(span).await
    }

    /// The next ID: local while the current block lasts, one compare-and-set per block.
    ///
    /// # Errors
    /// As [`reserve_block`](Self::reserve_block), when a new block is needed.
    ///
    /// # Cancel safety
    /// As [`reserve_block`](Self::reserve_block).
    pub async fn next(&self) -> Result<i64> {
        let mut b = self.block.lock().await;
        if b.empty {
            let span = tracing::debug_span!("zkr.id_blocks.reserve", path = %self.counter.path(), size = self.size);
            let r = self.reserve().instrument(span).await?;
            b.next = *r.start();
            b.end = *r.end();
            b.empty = false;
        }
        let id = b.next;
        if id == b.end {
            b.empty = true;
        } else {
            b.next = id.wrapping_add(1);
        }
        Ok(id)
    }

    /// `n` IDs (increasing), reserving as many blocks as needed.
    ///
    /// # Errors
    /// As [`reserve_block`](Self::reserve_block); [`Error::Invalid`] for more than 1,048,576
    /// IDs in one call (before anything is sent).
    ///
    /// # Cancel safety
    /// As [`reserve_block`](Self::reserve_block).
    pub async fn next_batch(&self, n: usize) -> Result<Vec<i64>> {
        crate::sequential_ids::check_count(n)?;
        let mut out = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            out.push(self.next().await?);
        }
        Ok(out)
    }
}
