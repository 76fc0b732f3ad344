//! Service discovery: the live instances of a service, as a stream.
//!
//! # Znode layout
//! Reads what [`Registration`](crate::registration::Registration) (or Curator's
//! `ServiceDiscovery`) writes: `{base}/{name}/{id}`, each node's data being the JSON of a
//! Curator `ServiceInstance`.
//!
//! # Guarantees
//! * The first snapshot is yielded once every instance listed at start has been read; an
//!   instance whose node vanished between the listing and the read counts as gone, it never
//!   stalls or fails the load. Nodes whose data is not a `ServiceInstance` are
//!   skipped.
//! * Afterwards a snapshot is yielded after every change (instances added, removed, payload
//!   updated), coalesced: a slow consumer sees the latest set, never a stale one.
//! * Built on zkr's watches, so a change made while disconnected or during a new session is
//!   still delivered once the client is back.
//!
//! # Session states
//! `Suspended`: the last snapshot stays (it may be stale until the reconnect). `Reconnected`
//! and a new session (after `Lost`): every watch re-reads and any difference is yielded.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use futures::StreamExt;
//! use zkr_recipes::discovery::Discovery;
//! let mut services = Discovery::watch(&client, "/services", "api")?;
//! while let Some(instances) = services.next().await {
//!     println!("{} live instances", instances.len());
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zkr::{ChildrenEvent, ChildrenWatch, Client, Stat};

use crate::error::{Error, Result};
use crate::registration::ServiceInstance;

/// Data and stat of a child, `None` when it does not exist (any more).
pub(crate) type NodeData = Option<(Vec<u8>, Stat)>;

/// A cache of a directory's children and their data, built on a children watch plus either a
/// data watch per child (`follow`) or one read per child (for immutable nodes). A child that
/// vanishes before its read counts as gone, so a load never stalls or fails on it.
pub(crate) struct ChildCache {
    client: Client,
    dir: String,
    follow: bool,
    children: ChildrenWatch,
    tx: mpsc::UnboundedSender<(String, u64, NodeData)>,
    rx: mpsc::UnboundedReceiver<(String, u64, NodeData)>,
    readers: HashMap<String, (u64, JoinHandle<()>)>,
    next_gen: u64,
    listed: bool,
    pending: HashSet<String>,
    /// Children that exist, with their data.
    pub nodes: BTreeMap<String, (Vec<u8>, Stat)>,
    /// Bumped on every change of `nodes` (or of the first listing).
    pub changes: u64,
}

impl Drop for ChildCache {
    fn drop(&mut self) {
        for (_, (_, h)) in self.readers.drain() {
            h.abort();
        }
    }
}

impl ChildCache {
    pub(crate) fn new(client: &Client, dir: &str, follow: bool) -> Result<ChildCache> {
        let children = client.watch_children(dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(ChildCache {
            client: client.clone(),
            dir: dir.to_string(),
            follow,
            children,
            tx,
            rx,
            readers: HashMap::new(),
            next_gen: 0,
            listed: false,
            pending: HashSet::new(),
            nodes: BTreeMap::new(),
            changes: 0,
        })
    }

    /// The first listing arrived and every child of it has been read (or found gone).
    pub(crate) fn loaded(&self) -> bool {
        self.listed && self.pending.is_empty()
    }

    /// Waits for one change, applies it and everything else already queued. `false` once the
    /// client is closed.
    pub(crate) async fn step(&mut self) -> bool {
        tokio::select! {
            ev = self.children.next_event() => match ev {
                None => return false,
                Some(ev) => self.apply_children(ev),
            },
            Some(m) = self.rx.recv() => self.apply_data(m),
        }
        self.drain()
    }

    /// Applies what is queued without waiting. `false` once the client is closed.
    pub(crate) fn drain(&mut self) -> bool {
        loop {
            let mut any = false;
            match self.children.next_event().now_or_never() {
                Some(None) => return false,
                Some(Some(ev)) => {
                    self.apply_children(ev);
                    any = true;
                }
                None => {}
            }
            while let Ok(m) = self.rx.try_recv() {
                self.apply_data(m);
                any = true;
            }
            if !any {
                return true;
            }
        }
    }

    fn apply_children(&mut self, ev: zkr::Result<ChildrenEvent>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(dir = %self.dir, error = %e, "children watch error");
                return;
            }
        };
        if !self.listed {
            self.changes += 1;
        }
        self.listed = true;
        let names: HashSet<String> = ev.children().unwrap_or(&[]).iter().cloned().collect();
        let gone: Vec<String> = self
            .readers
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            if let Some((_, h)) = self.readers.remove(&n) {
                h.abort();
            }
            self.nodes.remove(&n);
            self.pending.remove(&n);
            self.changes += 1;
        }
        for n in names {
            if self.readers.contains_key(&n) {
                continue;
            }
            self.next_gen += 1;
            let gen = self.next_gen;
            let h = tokio::spawn(read_child(
                self.client.clone(),
                zkr::path::join(&self.dir, &n),
                n.clone(),
                gen,
                self.follow,
                self.tx.clone(),
            ));
            self.readers.insert(n.clone(), (gen, h));
            self.pending.insert(n);
        }
    }

    fn apply_data(&mut self, (name, gen, data): (String, u64, NodeData)) {
        if self.readers.get(&name).map(|(g, _)| *g) != Some(gen) {
            return; // a reader of a child that was removed meanwhile
        }
        self.pending.remove(&name);
        self.changes += 1;
        match data {
            Some(d) => {
                self.nodes.insert(name, d);
            }
            None => {
                self.nodes.remove(&name);
            }
        }
    }
}

async fn read_child(
    client: Client,
    path: String,
    name: String,
    gen: u64,
    follow: bool,
    tx: mpsc::UnboundedSender<(String, u64, NodeData)>,
) {
    if follow {
        let mut w = match client.watch_data(&path) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(path, error = %e, "cannot watch a child");
                let _ = tx.send((name, gen, None));
                return;
            }
        };
        while let Some(ev) = w.next_event().await {
            match ev {
                Ok(ev) => {
                    if tx.send((name.clone(), gen, ev.node)).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(path, error = %e, "child data watch error"),
            }
        }
    } else {
        let r = client
            .retry(&zkr::RetryPolicy::default(), || client.get_data(&path))
            .await;
        let data = match r {
            Ok(d) => Some(d),
            Err(zkr::Error::NoNode { .. }) => None,
            Err(e) => {
                tracing::warn!(path, error = %e, "cannot read a child; treating it as gone");
                None
            }
        };
        let _ = tx.send((name, gen, data));
    }
}

type Snapshot = Option<Arc<Vec<ServiceInstance>>>;

/// The live instances of one service; see the [module docs](self). A `Stream` of instance
/// sets (sorted by id). Dropping it stops every watch it holds.
#[must_use = "discovery stops watching when dropped"]
pub struct Discovery {
    rx: watch::Receiver<Snapshot>,
    stream: crate::wait::Snapshots<Vec<ServiceInstance>>,
    task: JoinHandle<()>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

impl Discovery {
    /// Starts watching the instances of service `name` under `base`.
    pub fn watch(client: &Client, base: &str, name: &str) -> Result<Discovery> {
        if name.is_empty() || name.contains('/') {
            return Err(Error::Invalid(format!(
                "service name {name:?} must be one path segment"
            )));
        }
        let dir = zkr::path::join(base, name);
        let cache = ChildCache::new(client, &dir, true)?;
        let (tx, rx) = watch::channel::<Snapshot>(None);
        let span = tracing::info_span!("zkr.discovery", dir = %dir);
        let task = tokio::spawn(tracing::Instrument::instrument(run(cache, tx), span));
        let stream = crate::wait::loaded_snapshots(rx.clone());
        Ok(Discovery { rx, stream, task })
    }

    /// The latest instance set, `None` before the first load completed.
    pub fn current(&self) -> Option<Vec<ServiceInstance>> {
        self.rx.borrow().as_ref().map(|s| s.as_ref().clone())
    }

    /// The next instance set (the first one is the initial load), or `Err(Timeout)`.
    pub async fn next_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Vec<ServiceInstance>>> {
        tokio::time::timeout(timeout, self.stream.next())
            .await
            .map_err(|_| Error::Timeout {
                what: "discovery update",
                after: timeout,
            })
    }

    /// Waits until the instance set satisfies `pred`; returns that set.
    pub async fn wait_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&[ServiceInstance]) -> bool,
    ) -> Result<Vec<ServiceInstance>> {
        crate::wait::wait_until(
            &self.rx,
            timeout,
            "discovery condition",
            "discovery",
            |snap| {
                snap.as_ref()
                    .filter(|s| pred(s))
                    .map(|s| s.as_ref().clone())
            },
        )
        .await
    }

    /// One-shot read of the live instances (no watch). Instances that vanish during the read
    /// are left out (not an error).
    pub async fn instances(
        client: &Client,
        base: &str,
        name: &str,
    ) -> Result<Vec<ServiceInstance>> {
        let dir = zkr::path::join(base, name);
        let span = tracing::info_span!("zkr.discovery.instances", dir = %dir);
        tracing::Instrument::instrument(
            async {
                let policy = zkr::RetryPolicy::default();
                let children = match client.retry(&policy, || client.get_children(&dir)).await {
                    Ok(c) => c,
                    Err(zkr::Error::NoNode { .. }) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let reads = children.iter().map(|c| {
                    let p = zkr::path::join(&dir, c);
                    let policy = &policy;
                    async move {
                        match client.retry(policy, || client.get_data(&p)).await {
                            Ok((d, _)) => Ok(ServiceInstance::from_json(&p, &d).ok()),
                            Err(zkr::Error::NoNode { .. }) => Ok(None),
                            Err(e) => Err(Error::from(e)),
                        }
                    }
                });
                let mut v: Vec<ServiceInstance> = futures::future::try_join_all(reads)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect();
                v.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(v)
            },
            span,
        )
        .await
    }
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
