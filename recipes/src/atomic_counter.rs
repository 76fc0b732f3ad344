//! Atomic counter: a 64-bit integer on one znode, changed by compare-and-set.
//!
//! # Layout
//! Apache Curator's `DistributedAtomicLong` layout, so Java and Rust services can share one
//! counter: one persistent node whose data is the value as **8 bytes big-endian** (`i64`);
//! a missing node or empty data means 0. The node (and its parents) is created on the first
//! write.
//!
//! # Guarantees
//! * [`AtomicCounter::add`] reads the value and version, then writes `value + delta` only at
//!   that version; on `BadVersion` (someone else won) it backs off (jittered, growing) and
//!   tries again, up to the configured number of tries / time. Each successful add returns a
//!   distinct post-value, so increments hand out unique IDs across processes.
//! * Fast path: a handle remembers the value and version it wrote last and first tries the next
//!   change at that version without reading (one round trip when uncontended); if someone else
//!   wrote meanwhile the version differs, the write fails and the value is read afresh.
//!   (Like every version-based compare-and-set, this assumes the counter node is not deleted
//!   and re-created while in use: a re-created node can reach the same version again.)
//! * Compare-and-set is by data version, which ZooKeeper compares for equality: it keeps working
//!   after the version wraps past 2^31 (it never gets stuck on a wrapped version).
//! * **Outcome unknown**: if the connection drops while the write is in flight, the add may or
//!   may not have been applied. `add` then returns the `ConnectionLoss` error instead of
//!   guessing (a guess could hand the same value to two callers); retrying is safe for IDs (at
//!   worst a gap), not for exact counting.
//!
//! # Suspended / Reconnected / Lost
//! Nothing is held between calls: a call issued while disconnected waits (within the client's
//! operation timeout) for a connection; reads are retried, and the value is always read afresh
//! before a write, so a change made while disconnected is never overwritten.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! let counter = zkr_recipes::AtomicCounter::new(&client, "/app/counters/orders")?;
//! let v = counter.increment().await?;
//! println!("{} -> {} after {} tries", v.pre, v.post, v.tries);
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;
use zkr::{Client, CreateMode, Stat};

use crate::config::policy;
use crate::error::{Error, Result};
use crate::sync::lock;

/// The result of a successful change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtomicValue {
    /// The value before.
    pub pre: i64,
    /// The value after (unique to this change).
    pub post: i64,
    /// Compare-and-set attempts it took (1 = no contention).
    pub tries: u32,
}

/// A Curator-compatible distributed `i64`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AtomicCounter {
    client: Client,
    path: String,
    max_tries: u32,
    max_elapsed: Duration,
    backoff_base: Duration,
    backoff_max: Duration,
    /// Value and version this handle (and its clones) wrote last: the next change first tries
    /// a compare-and-set at that version without reading.
    cache: Arc<std::sync::Mutex<Option<(i64, i32)>>>,
}

/// Decodes Curator's layout: 8 bytes big-endian, empty = 0.
pub fn decode_value(path: &str, data: &[u8]) -> Result<i64> {
    match data.len() {
        0 => Ok(0),
        8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(data);
            Ok(i64::from_be_bytes(b))
        }
        n => Err(Error::Payload {
            path: path.to_string(),
            reason: format!("a counter holds 8 bytes (big-endian i64), found {n}"),
        }),
    }
}

impl AtomicCounter {
    /// A counter on `path` (validated; nothing is sent). Defaults: at most 1,000 tries and
    /// 30 s per change, backoff from 1 ms doubling to 50 ms with jitter.
    pub fn new(client: &Client, path: &str) -> Result<Self> {
        zkr::path::validate_path(path, false)?;
        Ok(AtomicCounter {
            client: client.clone(),
            path: path.to_string(),
            max_tries: 1000,
            max_elapsed: Duration::from_secs(30),
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(50),
            cache: Arc::new(std::sync::Mutex::new(None)),
        })
    }

    /// At most `n` compare-and-set tries per change (then [`Error::Busy`]).
    pub fn with_max_tries(mut self, n: u32) -> Self {
        self.max_tries = n.max(1);
        self
    }

    /// At most `d` per change (then [`Error::Timeout`]).
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.max_elapsed = d;
        self
    }

    /// Backoff after a lost compare-and-set: from `base`, doubling up to `max`, with jitter.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max.max(base);
        self
    }

    /// The node's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Reads value and stat (`None` stat: no node).
    async fn read(&self) -> Result<(i64, Option<Stat>)> {
        let pol = policy(self.client.timeout());
        match self
            .client
            .retry(&pol, || self.client.get_data(&self.path))
            .await
        {
            Ok((data, stat)) => Ok((decode_value(&self.path, &data)?, Some(stat))),
            Err(zkr::Error::NoNode { .. }) => Ok((0, None)),
            Err(e) => Err(e.into()),
        }
    }

    /// The current value (fresh: `sync` + `getData`).
    ///
    /// # Errors
    /// [`Error::Payload`] if the node holds something else than a counter; [`Error::Zk`]
    /// when the read fails after its retries.
    ///
    /// # Cancel safety
    /// Cancel-safe: a read.
    pub async fn get(&self) -> Result<i64> {
        let span = tracing::debug_span!("zkr.atomic_counter.get", path = %self.path);
        async {
            let pol = policy(self.client.timeout());
            match self
                .client
                .retry(&pol, || self.client.get_data_fresh(&self.path))
                .await
            {
                Ok((data, _)) => decode_value(&self.path, &data),
                Err(zkr::Error::NoNode { .. }) => Ok(0),
                Err(e) => Err(e.into()),
            }
        }
        .instrument(span)
        .await
    }

    /// One compare-and-set: writes `new` if the node is at data `version` (or absent when
    /// `None`). `Ok(Some(new version))` on success, `Ok(None)` if someone else changed it first.
    /// Remembers the written value and version for the next change's fast path.
    async fn cas_once(&self, version: Option<i32>, new: i64) -> Result<Option<i32>> {
        let data = new.to_be_bytes();
        self.set_cache(None);
        let r = match version {
            Some(v) => self
                .client
                .set_data(&self.path, &data, Some(v))
                .await
                .map(|s| s.version),
            None => self
                .client
                .create_with_parents(&self.path, &data, CreateMode::Persistent)
                .await
                .map(|_| 0),
        };
        match r {
            Ok(v) => {
                self.set_cache(Some((new, v)));
                Ok(Some(v))
            }
            Err(zkr::Error::BadVersion { .. })
            | Err(zkr::Error::NodeExists { .. })
            | Err(zkr::Error::NoNode { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn set_cache(&self, v: Option<(i64, i32)>) {
        *lock(&self.cache) = v;
    }

    fn take_cache(&self) -> Option<(i64, i32)> {
        lock(&self.cache).take()
    }

    /// Applies `f` to the current value by compare-and-set, retrying with backoff while others
    /// win. `f` returning `None` aborts (then `Ok(None)`).
    async fn update(&self, mut f: impl FnMut(i64) -> Option<i64>) -> Result<Option<AtomicValue>> {
        let start = Instant::now();
        let mut tries = 0u32;
        let mut backoff =
            zkr::RetryPolicy::exponential(self.backoff_base, self.backoff_max).backoff();
        loop {
            tries += 1;
            // Fast path: what this handle wrote last, if nobody changed it since (the version
            // check decides); otherwise a read.
            let cached = self.take_cache();
            let (pre, version) = match cached {
                Some(c) => (c.0, Some(c.1)),
                None => {
                    let (v, stat) = self.read().await?;
                    (v, stat.map(|s| s.version))
                }
            };
            let Some(post) = f(pre) else {
                return Ok(None);
            };
            if self.cas_once(version, post).await?.is_some() {
                tracing::debug!(pre, post, tries, "counter changed");
                return Ok(Some(AtomicValue { pre, post, tries }));
            }
            if cached.is_some() {
                continue; // the cached version was old: read at once
            }
            if tries >= self.max_tries {
                return Err(Error::Busy {
                    what: format!("counter {} ({tries} compare-and-set tries lost)", self.path),
                });
            }
            if start.elapsed() >= self.max_elapsed {
                return Err(Error::Timeout {
                    what: "counter compare-and-set",
                    after: self.max_elapsed,
                });
            }
            backoff.wait().await;
        }
    }

    /// Adds `delta` (wrapping on overflow, like Java's `long`).
    ///
    /// # Errors
    /// [`Error::Busy`] after `with_max_tries` lost compare-and-sets, [`Error::Timeout`]
    /// after `with_timeout`; [`Error::Zk`] for errors retrying cannot fix.
    ///
    /// # Cancel safety
    /// If dropped, the change may or may not have been applied (at most once): the value
    /// tells.
    pub async fn add(&self, delta: i64) -> Result<AtomicValue> {
        let span = tracing::debug_span!("zkr.atomic_counter.add", path = %self.path, delta);
        async {
            self.update(|v| Some(v.wrapping_add(delta)))
                .await?
                .ok_or_else(|| Error::Invalid("counter update aborted".into()))
        }
        .instrument(span)
        .await
    }

    /// Adds 1.
    ///
    /// # Errors
    /// As [`add`](Self::add).
    ///
    /// # Cancel safety
    /// As [`add`](Self::add).
    pub async fn increment(&self) -> Result<AtomicValue> {
        self.add(1).await
    }

    /// Subtracts 1.
    ///
    /// # Errors
    /// As [`add`](Self::add).
    ///
    /// # Cancel safety
    /// As [`add`](Self::add).
    pub async fn decrement(&self) -> Result<AtomicValue> {
        self.add(-1).await
    }

    /// Sets the value to `new` only if it is `expected` now. `Ok(false)` if it is not (one read
    /// and at most one write; no retry).
    ///
    /// # Errors
    /// [`Error::Zk`] when the read or the write fails.
    ///
    /// # Cancel safety
    /// If dropped, the write may or may not have been applied.
    pub async fn compare_and_set(&self, expected: i64, new: i64) -> Result<bool> {
        let span = tracing::debug_span!("zkr.atomic_counter.cas", path = %self.path, expected, new);
        async {
            let (cur, stat) = self.read().await?;
            if cur != expected {
                return Ok(false);
            }
            Ok(self.cas_once(stat.map(|s| s.version), new).await?.is_some())
        }
        .instrument(span)
        .await
    }

    /// Sets the value to `new` unconditionally (retried until it is written).
    ///
    /// # Errors
    /// As [`add`](Self::add).
    ///
    /// # Cancel safety
    /// As [`add`](Self::add).
    pub async fn force_set(&self, new: i64) -> Result<AtomicValue> {
        let span = tracing::debug_span!("zkr.atomic_counter.force_set", path = %self.path, new);
        async {
            self.update(|_| Some(new))
                .await?
                .ok_or_else(|| Error::Invalid("counter update aborted".into()))
        }
        .instrument(span)
        .await
    }
}
