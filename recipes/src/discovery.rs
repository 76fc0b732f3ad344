//! Service discovery: the live instances of a service, as a stream.
//!
//! # Znode layout
//! Reads what [`Registration`](crate::registration::Registration) (or Curator's
//! `ServiceDiscovery`) writes: `{base}/{name}/{id}`, each node's data being the JSON of a
//! Curator `ServiceInstance`.
//!
//! # Guarantees
//! * The first instance set is yielded once every instance listed at start has been read; an
//!   instance whose node vanished between the listing and the read counts as gone, it never
//!   stalls or fails the load. Nodes whose data is not a `ServiceInstance` are
//!   skipped.
//! * Afterwards a set is yielded after every change (instances added, removed, payload
//!   updated).
//! * Built on zkr's watches, so a change made while disconnected or during a new session is
//!   still delivered once the client is back.
//!
//! # Delivery
//! [`Discovery`] is a `Stream` of instance sets (sorted by id), **coalescing**: it holds only
//! the latest set, so a slow consumer skips intermediate sets and sees the newest one, never a
//! stale one; memory stays bounded. The stream ends when the client is closed.
//!
//! # Session states
//! `Suspended`: the last set stays (it may be stale until the reconnect). `Reconnected`
//! and a new session (after `Lost`): every watch re-reads and any difference is yielded.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use futures::StreamExt;
//! use zkr_recipes::Discovery;
//! let mut services = Discovery::new(&client, "/services", "api")?;
//! services.start()?;
//! while let Some(instances) = services.next().await {
//!     println!("{} live instances", instances.len());
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use zkr::Client;

use crate::changes::{Changes, Live};
use crate::child_cache::{read_children, ChildCache};
use crate::error::{check_segment, Error, Result};
use crate::registration::ServiceInstance;

type Snapshot = Option<Arc<Vec<ServiceInstance>>>;

/// The live instances of one service; see the [module docs](self). Created idle by
/// [`new`](Self::new), running after [`start`](Self::start). A `Stream` of instance sets
/// (sorted by id, coalescing). Dropping it stops every watch it holds.
#[must_use = "discovery stops watching when dropped"]
pub struct Discovery {
    client: Client,
    dir: String,
    /// The instance sets, published by the task once started.
    live: Live<Snapshot>,
    stream: Changes<Vec<ServiceInstance>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// `{base}/{name}`, after checking both.
fn service_dir(base: &str, name: &str) -> Result<String> {
    check_segment("service name", name)?;
    zkr::path::validate_path(base, false)?;
    Ok(zkr::path::join(base, name))
}

impl Discovery {
    /// A discovery of the instances of service `name` under `base` (validated now; nothing is
    /// read until [`start`](Self::start)).
    pub fn new(client: &Client, base: &str, name: &str) -> Result<Discovery> {
        let dir = service_dir(base, name)?;
        let live = Live::idle(None);
        let stream = loaded(&live);
        Ok(Discovery {
            client: client.clone(),
            dir,
            live,
            stream,
        })
    }

    /// Starts watching in the background (the watches are set up and the first load runs
    /// there). `Error::Invalid` if already started.
    pub fn start(&self) -> Result<()> {
        let started = self.live.start(
            || ChildCache::new(&self.client, &self.dir, true),
            |cache, tx| {
                let span = tracing::info_span!("zkr.discovery", dir = %self.dir);
                tracing::Instrument::instrument(run(cache, tx), span)
            },
        )?;
        if started {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "discovery of {} is already started",
                self.dir
            )))
        }
    }

    /// The latest instance set, `None` before the first load completed (or before `start`).
    pub fn current(&self) -> Option<Vec<ServiceInstance>> {
        self.live.current().map(|s| s.as_ref().clone())
    }

    /// The latest instance set now (once loaded), then after every change (coalescing).
    pub fn changes(&self) -> Changes<Vec<ServiceInstance>> {
        loaded(&self.live)
    }

    /// The next instance set of the stream (the first one is the initial load), or
    /// `Err(Timeout)` if none comes within `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`.
    ///
    /// # Cancel safety
    /// Cancel-safe: a set not yet taken stays in the stream.
    pub async fn next_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Vec<ServiceInstance>>> {
        crate::wait::timed(timeout, "discovery update", self.stream.next()).await
    }

    /// Waits until the instance set satisfies `pred` (tried on the latest set first, then on
    /// every new one); returns that set.
    ///
    /// # Errors
    /// [`Error::Closed`] if the discovery stops (the client was closed).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn wait_for(
        &self,
        pred: impl FnMut(&[ServiceInstance]) -> bool,
    ) -> Result<Vec<ServiceInstance>> {
        self.wait_for_timeout(pred, Duration::MAX).await
    }

    /// [`wait_for`](Self::wait_for), giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`; [`Error::Closed`] if the discovery stops.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn wait_for_timeout(
        &self,
        mut pred: impl FnMut(&[ServiceInstance]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ServiceInstance>> {
        self.live
            .wait_until(timeout, "discovery condition", "discovery", |snap| {
                snap.as_ref()
                    .filter(|s| pred(s))
                    .map(|s| s.as_ref().clone())
            })
            .await
    }

    /// One-shot read of the live instances of service `name` under `base` (no watch, no
    /// `Discovery` needed). Instances that vanish during the read are left out (not an error),
    /// as are nodes that do not hold a `ServiceInstance`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad `base` or `name`; [`Error::Zk`] if the reads fail after
    /// retrying.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn instances(
        client: &Client,
        base: &str,
        name: &str,
    ) -> Result<Vec<ServiceInstance>> {
        let dir = service_dir(base, name)?;
        let span = tracing::info_span!("zkr.discovery.instances", dir = %dir);
        tracing::Instrument::instrument(
            async {
                let mut v: Vec<ServiceInstance> = read_children(client, &dir)
                    .await?
                    .into_iter()
                    .filter_map(|(c, (d, _))| {
                        ServiceInstance::from_json(&zkr::path::join(&dir, &c), &d).ok()
                    })
                    .collect();
                v.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(v)
            },
            span,
        )
        .await
    }
}

/// The instance sets of `live` once loaded: the current one (if loaded), then every change.
fn loaded(live: &Live<Snapshot>) -> Changes<Vec<ServiceInstance>> {
    Changes::filtered(live.receiver(), |s: &Snapshot| {
        s.as_ref().map(|s| s.as_ref().clone())
    })
}

impl Stream for Discovery {
    type Item = Vec<ServiceInstance>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

async fn run(mut cache: ChildCache, tx: watch::Sender<Snapshot>) {
    // Parsed instances by child name, with the stat they were parsed from.
    let mut parsed: HashMap<String, ((i64, i64), Option<ServiceInstance>)> = HashMap::new();
    // The set last sent, shared with the receivers (no second deep copy per build).
    let mut last: Option<Arc<Vec<ServiceInstance>>> = None;
    let mut built_at = u64::MAX;
    loop {
        if !cache.step().await {
            return;
        }
        // Let a burst of events arrive before building a snapshot.
        tokio::task::yield_now().await;
        if !cache.drain() {
            return;
        }
        if !cache.loaded() || cache.changes == built_at {
            continue;
        }
        built_at = cache.changes;
        parsed.retain(|k, _| cache.nodes.contains_key(k));
        let mut v = Vec::with_capacity(cache.nodes.len());
        for (name, (data, stat)) in &cache.nodes {
            let key = (stat.czxid, stat.mzxid);
            let entry = parsed.entry(name.clone()).or_insert((key, None));
            if entry.0 != key || entry.1.is_none() {
                entry.0 = key;
                entry.1 = match ServiceInstance::from_json(name, data) {
                    Ok(i) => Some(i),
                    Err(e) => {
                        tracing::debug!(child = %name, error = %e, "not a service instance; skipped");
                        None
                    }
                };
            }
            if let Some(i) = &entry.1 {
                v.push(i.clone());
            }
        }
        v.sort_by(|a, b| a.id.cmp(&b.id));
        if last.as_deref() != Some(&v) {
            let v = Arc::new(v);
            last = Some(v.clone());
            if tx.send(Some(v)).is_err() {
                return;
            }
        }
    }
}
