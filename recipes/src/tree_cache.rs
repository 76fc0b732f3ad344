//! Tree cache: a whole subtree (every node's data and stat) kept in memory, on ONE persistent
//! recursive watch, with an initial snapshot and then ordered events. [`PathCache`] is the
//! one-level flavour (a directory's children with their data).
//!
//! # Znode layout
//! Any: the cache reads the subtree at its root (the root itself included), down to
//! [`TreeCache::with_max_depth`] levels below it. It writes nothing.
//!
//! # How
//! 1. A persistent recursive watch (`addWatch`, ZooKeeper 3.6+) is set on the root **before**
//!    anything is read, so no change after the read can go unseen.
//! 2. The subtree is read level by level, every read of a level pipelined (`getData`, then
//!    `getChildren` for nodes that have children). The result is diffed against what the
//!    cache holds (empty the first time) and the differences become events.
//! 3. Each watch event (created, deleted, data changed) re-reads the node it names; events that
//!    arrived together are read together (pipelined) and applied in arrival order. A read is
//!    compared with the cached node: a different `czxid` is a new node (the old one and its
//!    subtree are removed first), a larger `mzxid` is a data change, a missing node is a removal
//!    of its subtree. Anything else (same or older `czxid`/`mzxid`) is a duplicate and emits
//!    nothing. The cached stat follows the reads (`pzxid`/`cversion` included), but a change of
//!    the children alone emits no event for the parent: the children's own events say it.
//!
//! # Guarantees
//! * **Ordered**: events carry a sequence number; a [`CacheSubscription`] yields a
//!   [`CacheUpdate::Snapshot`] at sequence `n`, then exactly the events after `n`, in order.
//! * **Nothing missed, nothing twice, nothing backward**: every read is diffed by
//!   `czxid`/`mzxid` against the cached node, so an event seen again after a resync, or a read
//!   answering an older event, emits nothing; and a node never goes back to an older `mzxid` or
//!   an older incarnation (`czxid`). As with any ZooKeeper watch, quick successive changes of one
//!   node may coalesce into one event carrying the latest state.
//! * **Bounded**: memory per node is its path, its stat and at most
//!   [`TreeCache::with_max_data_bytes`] of data (longer data is cut and flagged
//!   [`CachedNode::truncated`]). Fan-out is a bounded broadcast: a subscriber that falls more
//!   than [`TreeCache::with_event_capacity`] events behind is handed a fresh
//!   [`CacheUpdate::Snapshot`] instead of the events it missed, so it never holds memory for
//!   others and never misses the final state.
//!
//! # Suspended / Reconnected / Lost
//! On `Suspended` (or `Lost`) the cache keeps its content, its state becomes
//! [`CacheState::Stale`] and [`CacheEvent::Stale`] is emitted. When the connection is replaced
//! (same session) or a new session starts, ZooKeeper does not carry the persistent watch over:
//! the cache sets a new one, re-reads the whole subtree, diffs it as in step 2 (changes made
//! while it was cut off become events; nodes deleted meanwhile are removed), and emits
//! [`CacheEvent::Fresh`]. Errors it cannot retry away (e.g. `NoAuth` on the root) show as
//! [`CacheState::Failing`]; it keeps trying, backing off up to 5 s.
//!
//! # Cancellation
//! Dropping the [`TreeCache`] stops its task and removes its watch; subscriptions then end.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use std::time::Duration;
//! use futures::StreamExt;
//! use zkr_recipes::tree_cache::{CacheUpdate, TreeCache};
//! let cache = TreeCache::new(&client, "/app")?;
//! cache.start()?;
//! let snap = cache.wait_loaded_timeout(Duration::from_secs(10)).await?;
//! println!("{} nodes", snap.len());
//! let mut updates = cache.subscribe();
//! while let Some(u) = updates.next().await {
//!     if let CacheUpdate::Event { event, .. } = u {
//!         println!("{event:?}");
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use futures::{FutureExt, Stream};
use tokio::sync::{broadcast, watch};
use tracing::Instrument;
use zkr::{Client, PersistentWatch, SessionState, Stat, WatchedEvent, WatchedEventKind};

use crate::changes::{Changes, Live};
use crate::error::{Error, Result};
use crate::sync::lock;

/// Reads kept in flight at once while loading or applying a burst of events.
const READS_IN_FLIGHT: usize = 256;
/// Watch events read (and applied) together at most.
const BATCH: usize = 1024;

/// One cached node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedNode {
    /// Full path.
    pub path: String,
    /// The stat of the last read.
    pub stat: Stat,
    /// The data (at most `max_data_bytes` of it).
    pub data: Vec<u8>,
    /// The data was longer than `max_data_bytes` and was cut.
    pub truncated: bool,
}

impl CachedNode {
    /// The last path segment (`/` for the root of the namespace).
    pub fn name(&self) -> &str {
        match self.path.rfind('/') {
            Some(i) if self.path.len() > 1 => &self.path[i + 1..],
            _ => &self.path,
        }
    }

    /// The data as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.data).ok()
    }
}

/// The whole cached tree at one moment (cheap to clone: copy-on-write).
#[derive(Clone, Debug, Default)]
pub struct CacheSnapshot {
    nodes: Arc<BTreeMap<String, Arc<CachedNode>>>,
    seq: u64,
}

/// `path` + "/", the first key below it in path order.
fn below(path: &str) -> String {
    if path == "/" {
        "/".to_string()
    } else {
        format!("{path}/")
    }
}

/// The first key after every key below `path` (`'0'` follows `'/'`).
fn after_below(path: &str) -> String {
    if path == "/" {
        "0".to_string()
    } else {
        format!("{path}0")
    }
}

/// `path` and the nodes below it, in key order. Not one key range: a sibling that has `path`
/// as a prefix ("/a/b-x" next to "/a/b") sorts between "/a/b" and "/a/b/...".
fn subtree<'a, V>(
    nodes: &'a BTreeMap<String, V>,
    path: &str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    let below_range = (
        Bound::Included(below(path)),
        Bound::Excluded(after_below(path)),
    );
    // For "/" the range below it starts with "/" itself.
    let own = if path == "/" {
        None
    } else {
        nodes.get_key_value(path)
    };
    own.into_iter().chain(nodes.range::<String, _>(below_range))
}

impl CacheSnapshot {
    /// The sequence number of the last event applied to it.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The node at `path`, if cached.
    pub fn get(&self, path: &str) -> Option<&Arc<CachedNode>> {
        self.nodes.get(path)
    }

    /// Number of cached nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing is cached (e.g. the root does not exist).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every cached node, in path order (a parent before its children).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<CachedNode>> {
        self.nodes.values()
    }

    /// The cached children of `path`, sorted by name (O(k log n) for k children).
    pub fn children(&self, path: &str) -> Vec<&Arc<CachedNode>> {
        let mut out = Vec::new();
        let end = after_below(path);
        let mut from = below(path);
        let skip = from.len();
        loop {
            let mut range = self
                .nodes
                .range::<String, _>((Bound::Included(&from), Bound::Excluded(&end)));
            let Some((k, v)) = range.next() else { break };
            if k.len() > skip && !k[skip..].contains('/') {
                out.push(v);
            }
            from = match k[skip..].find('/') {
                // Below a child: skip the rest of that child's subtree.
                Some(i) => after_below(&k[..skip + i]),
                // A child: go on from the key right after it. Its siblings that share its name
                // as a prefix ("b-x" after "b") sort before its own subtree ("b/c"), so jumping
                // past the subtree here would miss them.
                None => format!("{k}\u{0}"),
            };
        }
        out
    }

    /// `path` and every cached node below it, in path order.
    pub fn subtree(&self, path: &str) -> impl Iterator<Item = &Arc<CachedNode>> {
        subtree(&self.nodes, path).map(|(_, v)| v)
    }
}

/// A change of the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheEvent {
    /// A node appeared.
    Added(Arc<CachedNode>),
    /// A node's data changed (`new.stat.mzxid > old.stat.mzxid`).
    Updated {
        /// Before.
        old: Arc<CachedNode>,
        /// After.
        new: Arc<CachedNode>,
    },
    /// A node went (its descendants are removed first, each with its own event).
    Removed(Arc<CachedNode>),
    /// The first load is complete.
    Loaded,
    /// Disconnected: the cache may be out of date until [`CacheEvent::Fresh`].
    Stale,
    /// Re-read after a reconnect or a new session: the cache is current again.
    Fresh,
}

impl CacheEvent {
    /// The node the event is about (`None` for markers).
    pub fn node(&self) -> Option<&Arc<CachedNode>> {
        match self {
            CacheEvent::Added(n) | CacheEvent::Removed(n) | CacheEvent::Updated { new: n, .. } => {
                Some(n)
            }
            _ => None,
        }
    }
}

/// An item of a [`CacheSubscription`].
#[derive(Clone, Debug)]
pub enum CacheUpdate {
    /// The whole tree: the first item, and again if the subscriber fell too far behind.
    Snapshot(CacheSnapshot),
    /// The next change after the last snapshot or event.
    Event {
        /// Its sequence number (one more than the previous item's).
        seq: u64,
        /// The change.
        event: CacheEvent,
    },
}

/// Where the cache stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheState {
    /// The first load has not completed.
    Loading,
    /// Loaded and following every change.
    Live,
    /// Disconnected (or re-reading after a reconnect): the content may be out of date.
    Stale,
    /// A read or the watch fails with an error retrying cannot fix; the cache keeps trying.
    Failing(Error),
    /// The client was closed; the cache no longer changes.
    Closed,
}

type Sent = Arc<(u64, CacheEvent)>;

struct State {
    nodes: Arc<BTreeMap<String, Arc<CachedNode>>>,
    seq: u64,
}

struct Shared {
    state: Mutex<State>,
    tx: broadcast::Sender<Sent>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn snapshot(&self) -> CacheSnapshot {
        let st = self.lock();
        CacheSnapshot {
            nodes: st.nodes.clone(),
            seq: st.seq,
        }
    }
}

/// Applies events to the state and publishes them, under the state lock (so a snapshot and a
/// broadcast receiver taken together never disagree).
struct Tx<'a> {
    st: std::sync::MutexGuard<'a, State>,
    tx: &'a broadcast::Sender<Sent>,
}

impl Tx<'_> {
    fn emit(&mut self, ev: CacheEvent) {
        self.st.seq += 1;
        let _ = self.tx.send(Arc::new((self.st.seq, ev)));
    }

    fn nodes(&mut self) -> &mut BTreeMap<String, Arc<CachedNode>> {
        Arc::make_mut(&mut self.st.nodes)
    }

    fn add(&mut self, node: CachedNode) {
        let node = Arc::new(node);
        self.nodes().insert(node.path.clone(), node.clone());
        self.emit(CacheEvent::Added(node));
    }

    /// A newer read of the cached incarnation `old`: an update if its data changed, else only
    /// the stat is kept current (children changes); nothing for an older or equal read.
    fn update(&mut self, old: &Arc<CachedNode>, data: Vec<u8>, truncated: bool, stat: Stat) {
        if stat.mzxid > old.stat.mzxid {
            let new = Arc::new(CachedNode {
                path: old.path.clone(),
                stat,
                data,
                truncated,
            });
            self.nodes().insert(old.path.clone(), new.clone());
            self.emit(CacheEvent::Updated {
                old: old.clone(),
                new,
            });
        } else if stat.mzxid == old.stat.mzxid && stat.pzxid > old.stat.pzxid {
            let mut n = old.as_ref().clone();
            n.stat = stat;
            self.nodes().insert(old.path.clone(), Arc::new(n));
        }
    }

    /// Removes `path` and its subtree, deepest first.
    fn remove_subtree(&mut self, path: &str) {
        let keys: Vec<String> = subtree(&self.st.nodes, path)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys.into_iter().rev() {
            if let Some(old) = self.nodes().remove(&k) {
                self.emit(CacheEvent::Removed(old));
            }
        }
    }
}

/// The settings a [`TreeCache`] starts with.
#[derive(Clone, Debug)]
struct Settings {
    client: Client,
    root: String,
    max_depth: Option<usize>,
    max_data_bytes: usize,
}

/// A cache of a subtree; see the [module docs](self). Created with [`new`](Self::new),
/// configured with the `with_*` methods, run with [`start`](Self::start).
#[must_use = "dropping the cache stops it"]
pub struct TreeCache {
    settings: Settings,
    shared: Arc<Shared>,
    /// The state, published by the task once started.
    status: Live<CacheState>,
}

impl std::fmt::Debug for TreeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeCache")
            .field("root", &self.settings.root)
            .field("state", &self.status.current())
            .finish()
    }
}

fn new_shared(event_capacity: usize) -> Arc<Shared> {
    let (tx, _) = broadcast::channel(event_capacity.max(1));
    Arc::new(Shared {
        state: Mutex::new(State {
            nodes: Arc::new(BTreeMap::new()),
            seq: 0,
        }),
        tx,
    })
}

impl TreeCache {
    /// A cache of the subtree at `root` (validated now; nothing is read before
    /// [`start`](Self::start)). Defaults: unlimited depth, 1 MiB of data per node, 4096
    /// buffered events.
    pub fn new(client: &Client, root: &str) -> Result<TreeCache> {
        zkr::path::validate_path(root, false)?;
        Ok(TreeCache {
            settings: Settings {
                client: client.clone(),
                root: root.to_string(),
                max_depth: None,
                max_data_bytes: 1 << 20,
            },
            shared: new_shared(4096),
            status: Live::idle(CacheState::Loading),
        })
    }

    /// Cache nodes down to `depth` levels below the root (0: the root only; 1: its children).
    /// Default: unlimited.
    pub fn with_max_depth(mut self, depth: usize) -> Self {
        self.settings.max_depth = Some(depth);
        self
    }

    /// Keep at most `n` bytes of each node's data (0: stats only). Default 1 MiB, ZooKeeper's
    /// own limit.
    pub fn with_max_data_bytes(mut self, n: usize) -> Self {
        self.settings.max_data_bytes = n;
        self
    }

    /// Events buffered for subscribers before a lagging one is handed a snapshot instead
    /// (at least 1). Default 4096. Set it before subscribing.
    pub fn with_event_capacity(mut self, n: usize) -> Self {
        self.shared = new_shared(n);
        self
    }

    /// Starts the cache (must be called inside a Tokio runtime): sets the watch and loads the
    /// tree in the background; see [`wait_loaded`](Self::wait_loaded).
    ///
    /// # Errors
    /// [`Error::Invalid`] if the cache was already started.
    pub fn start(&self) -> Result<()> {
        let started = self.status.start(
            || Ok(()),
            |(), status| {
                let s = self.settings.clone();
                let span = tracing::debug_span!("zkr.tree_cache", root = %s.root);
                let driver = Driver {
                    client: s.client,
                    root: s.root,
                    max_depth: s.max_depth,
                    max_data: s.max_data_bytes,
                    shared: self.shared.clone(),
                    status,
                    loaded: false,
                };
                driver.run().instrument(span)
            },
        )?;
        if started {
            Ok(())
        } else {
            Err(Error::Invalid("the tree cache is already started".into()))
        }
    }

    /// The root of the cached subtree.
    pub fn path(&self) -> &str {
        &self.settings.root
    }

    /// The tree now.
    pub fn current(&self) -> CacheSnapshot {
        self.shared.snapshot()
    }

    /// The node at `path` now, if cached.
    pub fn get(&self, path: &str) -> Option<Arc<CachedNode>> {
        self.shared.lock().nodes.get(path).cloned()
    }

    /// Where the cache stands now.
    pub fn state(&self) -> CacheState {
        self.status.current()
    }

    /// The state now, then after every change (coalescing).
    pub fn changes(&self) -> Changes<CacheState> {
        self.status.changes()
    }

    /// Waits for the first load; returns the tree then.
    ///
    /// # Errors
    /// [`Error::Closed`] if the client was closed first. A cache that keeps failing (e.g.
    /// `NoAuth` on the root) keeps waiting; use [`wait_loaded_timeout`](Self::wait_loaded_timeout)
    /// and look at [`state`](Self::state).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn wait_loaded(&self) -> Result<CacheSnapshot> {
        self.wait_loaded_timeout(Duration::MAX).await
    }

    /// [`wait_loaded`](Self::wait_loaded) for at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout` (the last error, if any, is in
    /// [`CacheState::Failing`]); [`Error::Closed`] as `wait_loaded`.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn wait_loaded_timeout(&self, timeout: Duration) -> Result<CacheSnapshot> {
        self.status
            .wait_until(timeout, "tree cache load", "tree cache", |s| {
                matches!(s, CacheState::Live | CacheState::Stale).then_some(())
            })
            .await?;
        Ok(self.current())
    }

    /// Waits until `pick` returns `Some` for the tree (tried now, then after every event).
    ///
    /// # Errors
    /// [`Error::Closed`] once the cache is dropped or the client closed.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn wait_for<R>(&self, pick: impl FnMut(&CacheSnapshot) -> Option<R>) -> Result<R> {
        self.wait_for_timeout(pick, Duration::MAX).await
    }

    /// [`wait_for`](Self::wait_for) for at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`; [`Error::Closed`] as `wait_for`.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn wait_for_timeout<R>(
        &self,
        mut pick: impl FnMut(&CacheSnapshot) -> Option<R>,
        timeout: Duration,
    ) -> Result<R> {
        let mut sub = self.subscribe();
        crate::wait::timed(timeout, "tree cache condition", async {
            while let Some(u) = sub.next().await {
                let snap = match u {
                    CacheUpdate::Snapshot(s) => s,
                    CacheUpdate::Event { .. } => self.current(),
                };
                if let Some(r) = pick(&snap) {
                    return Ok(r);
                }
            }
            Err(Error::Closed("tree cache"))
        })
        .await?
    }

    /// The tree now, then every change in order; see [`CacheUpdate`]. Ends when the cache is
    /// dropped. Delivery: bounded (see [`with_event_capacity`](Self::with_event_capacity)); a
    /// subscriber that falls behind gets a fresh [`CacheUpdate::Snapshot`] instead of the events
    /// it missed.
    pub fn subscribe(&self) -> CacheSubscription {
        let (snap, rx) = {
            let st = self.shared.lock();
            let rx = self.shared.tx.subscribe();
            (
                CacheSnapshot {
                    nodes: st.nodes.clone(),
                    seq: st.seq,
                },
                rx,
            )
        };
        let weak = Arc::downgrade(&self.shared);
        let stream = futures::stream::unfold(
            (Some(snap.clone()), rx, snap.seq, weak),
            |(first, mut rx, mut upto, weak)| async move {
                if let Some(s) = first {
                    return Some((CacheUpdate::Snapshot(s), (None, rx, upto, weak)));
                }
                loop {
                    match rx.recv().await {
                        Ok(sent) => {
                            let (seq, ev) = sent.as_ref();
                            if *seq <= upto {
                                continue;
                            }
                            upto = *seq;
                            let item = CacheUpdate::Event {
                                seq: *seq,
                                event: ev.clone(),
                            };
                            return Some((item, (None, rx, upto, weak)));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let shared: Weak<Shared> = weak.clone();
                            let snap = shared.upgrade()?.snapshot();
                            upto = snap.seq;
                            return Some((CacheUpdate::Snapshot(snap), (None, rx, upto, weak)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )
        .boxed();
        CacheSubscription(Mutex::new(stream))
    }
}

/// The stream of [`TreeCache::subscribe`].
#[must_use = "a subscription does nothing unless polled"]
pub struct CacheSubscription(Mutex<BoxStream<'static, CacheUpdate>>);

impl CacheSubscription {
    /// The next update, `Error::Timeout` if none comes within `d`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `d`.
    ///
    /// # Cancel safety
    /// Cancel-safe: an update is only taken when it is returned.
    pub async fn next_timeout(&mut self, d: Duration) -> Result<Option<CacheUpdate>> {
        crate::wait::timed(d, "tree cache update", self.next()).await
    }
}

impl Stream for CacheSubscription {
    type Item = CacheUpdate;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<CacheUpdate>> {
        self.0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .poll_next(cx)
    }
}

/// Waits between tries after errors: from 100 ms doubling to 5 s.
fn error_backoff() -> zkr::Backoff {
    zkr::RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5)).backoff()
}

/// A read node: data (cut) + stat, `None` if absent.
type Read = Option<(Vec<u8>, bool, Stat)>;

struct Driver {
    client: Client,
    root: String,
    max_depth: Option<usize>,
    max_data: usize,
    shared: Arc<Shared>,
    status: watch::Sender<CacheState>,
    loaded: bool,
}

enum Follow {
    /// The watch ended (connection replaced or session over): set a new one and re-read.
    WatchEnded,
    /// Reads failed, or events were dropped: re-read everything (the watch still stands).
    Reload,
    /// The client was closed.
    Closed,
}

fn is_end(ev: &WatchedEvent) -> bool {
    matches!(
        ev.kind,
        WatchedEventKind::Resync | WatchedEventKind::SessionEnded
    )
}

impl Driver {
    fn depth(&self, path: &str) -> Option<usize> {
        if path == self.root {
            return Some(0);
        }
        let rest = if self.root == "/" {
            path.strip_prefix('/')?
        } else {
            path.strip_prefix(self.root.as_str())?.strip_prefix('/')?
        };
        Some(rest.split('/').count())
    }

    fn wanted(&self, path: &str) -> bool {
        match (self.depth(path), self.max_depth) {
            (None, _) => false,
            (Some(d), Some(m)) => d <= m,
            (Some(_), None) => true,
        }
    }

    fn tx(&self) -> Tx<'_> {
        Tx {
            st: self.shared.lock(),
            tx: &self.shared.tx,
        }
    }

    fn set_status(&self, s: CacheState) {
        self.status.send_if_modified(|cur| {
            if *cur == s {
                false
            } else {
                *cur = s;
                true
            }
        });
    }

    fn mark_stale(&self) {
        if *self.status.borrow() == CacheState::Live {
            self.set_status(CacheState::Stale);
            self.tx().emit(CacheEvent::Stale);
        }
    }

    async fn run(mut self) {
        let mut states = self.client.state_receiver();
        let mut backoff = error_backoff();
        'session: loop {
            if !wait_live(&mut states).await {
                break;
            }
            let mut watch = match self.client.add_watch(&self.root, true).await {
                Ok(w) => w,
                Err(e) => {
                    self.failed(e.into(), &mut backoff).await;
                    continue 'session;
                }
            };
            loop {
                // Events queued so far happened before the re-read: it sees them.
                loop {
                    match watch.next().now_or_never() {
                        Some(Some(ev)) if !is_end(&ev) => continue,
                        Some(_) => continue 'session,
                        None => break,
                    }
                }
                if let Err(e) = self.reload().await {
                    self.failed(e, &mut backoff).await;
                    continue;
                }
                backoff = error_backoff();
                self.set_status(CacheState::Live);
                self.tx().emit(if self.loaded {
                    CacheEvent::Fresh
                } else {
                    CacheEvent::Loaded
                });
                self.loaded = true;
                match self.follow(&mut watch, &mut states).await {
                    Follow::WatchEnded => {
                        self.mark_stale();
                        continue 'session;
                    }
                    Follow::Reload => {
                        self.mark_stale();
                        continue;
                    }
                    Follow::Closed => break 'session,
                }
            }
        }
        self.set_status(CacheState::Closed);
    }

    /// Reports `e` and waits before the next try.
    async fn failed(&self, e: Error, backoff: &mut zkr::Backoff) {
        if e.is_zk(|z| z.is_retryable()) {
            tracing::debug!(error = %e, "tree cache: retrying");
        } else {
            tracing::warn!(error = %e, "tree cache: failing, retrying");
            self.set_status(CacheState::Failing(e));
        }
        backoff.wait().await;
    }

    async fn follow(
        &self,
        watch: &mut PersistentWatch,
        states: &mut watch::Receiver<SessionState>,
    ) -> Follow {
        loop {
            tokio::select! {
                ev = watch.next() => {
                    let Some(ev) = ev else { return Follow::WatchEnded };
                    if is_end(&ev) {
                        return Follow::WatchEnded;
                    }
                    // Events were dropped (this driver fell behind): the watch stands, re-read.
                    if ev.kind == WatchedEventKind::Lagged {
                        return Follow::Reload;
                    }
                    let mut batch = vec![ev];
                    let mut ended = false;
                    let mut lagged = false;
                    while batch.len() < BATCH {
                        match watch.next().now_or_never() {
                            Some(Some(ev)) if ev.kind == WatchedEventKind::Lagged => {
                                lagged = true;
                                break;
                            }
                            Some(Some(ev)) if !is_end(&ev) => batch.push(ev),
                            Some(_) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    let applied = self.apply_events(batch).await;
                    if ended {
                        return Follow::WatchEnded;
                    }
                    if lagged {
                        return Follow::Reload;
                    }
                    if let Err(e) = applied {
                        tracing::debug!(error = %e, "tree cache: event reads failed, re-reading");
                        return Follow::Reload;
                    }
                }
                c = states.changed() => {
                    if c.is_err() {
                        return Follow::Closed;
                    }
                    let s = *states.borrow_and_update();
                    match s {
                        SessionState::Closed => return Follow::Closed,
                        SessionState::Suspended { .. }
                        | SessionState::Lost { .. }
                        | SessionState::Connecting => self.mark_stale(),
                        _ => {}
                    }
                }
            }
        }
    }

    async fn read(&self, path: &str) -> Result<Read> {
        match self.client.get_data(path).await {
            Ok((mut data, stat)) => {
                let cut = data.len() > self.max_data;
                data.truncate(self.max_data);
                Ok(Some((data, cut, stat)))
            }
            Err(zkr::Error::NoNode { .. }) => Ok(None),
            Err(e) if e.is_auth_error() => {
                // Unreadable nodes are left out, not retried forever.
                tracing::debug!(path, error = %e, "tree cache: node not readable, skipped");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn apply_events(&self, batch: Vec<WatchedEvent>) -> Result<()> {
        let batch: Vec<WatchedEvent> = batch
            .into_iter()
            .filter(|ev| self.wanted(&ev.path))
            .collect();
        // One read per path, all sent after every event of the batch arrived: each read is at
        // least as new as the events it answers.
        let mut paths: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for ev in &batch {
            if seen.insert(ev.path.clone()) {
                paths.push(ev.path.clone());
            }
        }
        let span = tracing::trace_span!("zkr.tree_cache.apply", n = paths.len());
        let reads: Vec<(String, Result<Read>)> = futures::stream::iter(paths)
            .map(|p| async move {
                let r = self.read(&p).await;
                (p, r)
            })
            .buffered(READS_IN_FLIGHT)
            .collect()
            .instrument(span)
            .await;
        let mut by_path = std::collections::HashMap::new();
        for (p, r) in reads {
            by_path.insert(p, r?);
        }
        let mut tx = self.tx();
        let mut orphan = false;
        for ev in &batch {
            let read = by_path.get(ev.path.as_str()).cloned().flatten();
            orphan |= !self.apply_event(&mut tx, ev.kind, &ev.path, read);
        }
        drop(tx);
        if orphan {
            // A node whose parent is not cached: only a full re-read can place it.
            return Err(Error::Invalid("tree cache: orphan node".into()));
        }
        Ok(())
    }

    /// Applies one watch event, given a read of its node made after it; `false` if a node
    /// could not be placed (parent not cached).
    ///
    /// Events arrive in order and a persistent watch misses none while it stands, so a cached
    /// node that no longer exists always has its `Deleted` event still to come: only that event
    /// removes it. A read showing a newer incarnation (larger `czxid`) than the cached one is
    /// therefore left to the coming `Deleted` + `Created` pair, and a `Deleted` that the read
    /// shows to concern an older incarnation than the cached one (deleted before a re-read saw
    /// the new one) is ignored.
    fn apply_event(&self, tx: &mut Tx<'_>, kind: WatchedEventKind, path: &str, read: Read) -> bool {
        let cur = tx.st.nodes.get(path).cloned();
        if kind == WatchedEventKind::Deleted {
            if let Some(old) = cur {
                let same = read
                    .as_ref()
                    .is_some_and(|(_, _, s)| s.czxid == old.stat.czxid);
                if !same {
                    tx.remove_subtree(path);
                }
            }
            return true;
        }
        match (cur, read) {
            (_, None) => {}
            (None, Some((data, truncated, stat))) => {
                if path != self.root {
                    let parent = zkr::path::parent(path).unwrap_or("/");
                    if !tx.st.nodes.contains_key(parent) {
                        return false;
                    }
                }
                tx.add(CachedNode {
                    path: path.to_string(),
                    stat,
                    data,
                    truncated,
                });
            }
            (Some(old), Some((data, truncated, stat))) => {
                if stat.czxid == old.stat.czxid {
                    tx.update(&old, data, truncated, stat);
                }
            }
        }
        true
    }

    /// Reads the whole subtree and applies the difference.
    async fn reload(&self) -> Result<()> {
        let span = tracing::debug_span!("zkr.tree_cache.reload", root = %self.root);
        let fresh = self.read_tree().instrument(span.clone()).await?;
        let _e = span.enter();
        let mut tx = self.tx();
        // Removed or re-created nodes go first, deepest first.
        let gone: Vec<String> = tx
            .st
            .nodes
            .iter()
            .filter(|(k, old)| match fresh.get(*k) {
                None => true,
                Some((_, _, s)) => s.czxid > old.stat.czxid,
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone.iter().rev() {
            if let Some(old) = tx.nodes().remove(k) {
                tx.emit(CacheEvent::Removed(old));
            }
        }
        for (path, (data, truncated, stat)) in fresh {
            match tx.st.nodes.get(&path).cloned() {
                None => tx.add(CachedNode {
                    path,
                    stat,
                    data,
                    truncated,
                }),
                Some(old) if old.stat.czxid == stat.czxid => tx.update(&old, data, truncated, stat),
                // An older incarnation than the cached one: never go back.
                Some(_) => {}
            }
        }
        tracing::debug!(nodes = tx.st.nodes.len(), "tree cache: re-read");
        Ok(())
    }

    /// Level by level: `getData` of every node of a level pipelined, then `getChildren` of
    /// those that have children.
    async fn read_tree(&self) -> Result<BTreeMap<String, (Vec<u8>, bool, Stat)>> {
        let mut out = BTreeMap::new();
        let mut level = vec![self.root.clone()];
        let mut depth = 0usize;
        while !level.is_empty() {
            let deeper = self.max_depth.is_none_or(|m| depth < m);
            let reads: Vec<(String, Result<Read>, Result<Vec<String>>)> =
                futures::stream::iter(level)
                    .map(|p| async move {
                        // The listing must be of the incarnation whose data was read: if the
                        // node was re-created in between, read it again.
                        let mut tries = 0;
                        loop {
                            tries += 1;
                            let r = self.read(&p).await;
                            let kids = match &r {
                                Ok(Some((_, _, s))) if deeper && s.num_children > 0 => {
                                    match self.client.get_children_with_stat(&p).await {
                                        Ok((_, ls)) if ls.czxid != s.czxid && tries < 5 => continue,
                                        Ok((k, _)) => Ok(k),
                                        Err(zkr::Error::NoNode { .. }) => Ok(Vec::new()),
                                        Err(e) if e.is_auth_error() => Ok(Vec::new()),
                                        Err(e) => Err(e.into()),
                                    }
                                }
                                _ => Ok(Vec::new()),
                            };
                            break (p, r, kids);
                        }
                    })
                    .buffered(READS_IN_FLIGHT)
                    .collect()
                    .await;
            let mut next = Vec::new();
            for (p, r, kids) in reads {
                let (Some(node), kids) = (r?, kids?) else {
                    continue;
                };
                for k in kids {
                    next.push(zkr::path::join(&p, &k));
                }
                out.insert(p, node);
            }
            level = next;
            depth += 1;
        }
        Ok(out)
    }
}

/// Waits for a live session; `false` once the client is closed.
async fn wait_live(states: &mut watch::Receiver<SessionState>) -> bool {
    loop {
        let s = *states.borrow_and_update();
        if s.is_connected() {
            return true;
        }
        if s == SessionState::Closed {
            return false;
        }
        if states.changed().await.is_err() {
            return false;
        }
    }
}

/// One directory's children with their data, kept current: a [`TreeCache`] one level deep.
/// Same guarantees and session behaviour as the tree cache; the directory node itself is not
/// reported. Its watch is recursive (a non-recursive persistent watch does not report the
/// children's data changes), so the server still notifies it of changes deeper down, which it
/// ignores: prefer a directory whose children have no big subtrees of their own.
#[must_use = "dropping the cache stops it"]
#[derive(Debug)]
pub struct PathCache {
    tree: TreeCache,
}

impl PathCache {
    /// A cache of the children of `dir` (validated now; nothing is read before
    /// [`start`](Self::start)).
    pub fn new(client: &Client, dir: &str) -> Result<PathCache> {
        Ok(PathCache {
            tree: TreeCache::new(client, dir)?.with_max_depth(1),
        })
    }

    /// Starts the cache in the background (inside a Tokio runtime).
    ///
    /// # Errors
    /// [`Error::Invalid`] if the cache was already started.
    pub fn start(&self) -> Result<()> {
        self.tree.start()
    }

    /// The directory whose children are cached.
    pub fn path(&self) -> &str {
        self.tree.path()
    }

    /// Name → node, now.
    pub fn current(&self) -> BTreeMap<String, Arc<CachedNode>> {
        children_of(&self.tree.current(), self.tree.path())
    }

    /// Waits for the first load and returns the children then.
    ///
    /// # Errors
    /// As [`TreeCache::wait_loaded`].
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn wait_loaded(&self) -> Result<BTreeMap<String, Arc<CachedNode>>> {
        self.wait_loaded_timeout(Duration::MAX).await
    }

    /// [`wait_loaded`](Self::wait_loaded) for at most `timeout`.
    ///
    /// # Errors
    /// As [`TreeCache::wait_loaded_timeout`].
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn wait_loaded_timeout(
        &self,
        timeout: Duration,
    ) -> Result<BTreeMap<String, Arc<CachedNode>>> {
        self.tree.wait_loaded_timeout(timeout).await?;
        Ok(self.current())
    }

    /// Waits until `pick` returns `Some` for the children (tried now, then after every change).
    ///
    /// # Errors
    /// As [`TreeCache::wait_for`].
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn wait_for<R>(
        &self,
        pick: impl FnMut(&BTreeMap<String, Arc<CachedNode>>) -> Option<R>,
    ) -> Result<R> {
        self.wait_for_timeout(pick, Duration::MAX).await
    }

    /// [`wait_for`](Self::wait_for) for at most `timeout`.
    ///
    /// # Errors
    /// As [`TreeCache::wait_for_timeout`].
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn wait_for_timeout<R>(
        &self,
        mut pick: impl FnMut(&BTreeMap<String, Arc<CachedNode>>) -> Option<R>,
        timeout: Duration,
    ) -> Result<R> {
        let dir = self.tree.path().to_string();
        self.tree
            .wait_for_timeout(|s| pick(&children_of(s, &dir)), timeout)
            .await
    }

    /// The children now, then every change of a child (the directory's own events left out).
    pub fn subscribe(&self) -> CacheSubscription {
        let dir = self.tree.path().to_string();
        let inner = self.tree.subscribe();
        let s = inner
            .filter(move |u| {
                let keep = match u {
                    CacheUpdate::Event { event, .. } => event.node().is_none_or(|n| n.path != dir),
                    CacheUpdate::Snapshot(_) => true,
                };
                futures::future::ready(keep)
            })
            .boxed();
        CacheSubscription(Mutex::new(s))
    }

    /// Where the cache stands now.
    pub fn state(&self) -> CacheState {
        self.tree.state()
    }

    /// The state now, then after every change (coalescing).
    pub fn changes(&self) -> Changes<CacheState> {
        self.tree.changes()
    }

    /// The underlying tree cache (directory node included).
    pub fn tree(&self) -> &TreeCache {
        &self.tree
    }
}

/// The children of `dir` in `snap`, by name.
fn children_of(snap: &CacheSnapshot, dir: &str) -> BTreeMap<String, Arc<CachedNode>> {
    snap.children(dir)
        .into_iter()
        .map(|n| (n.name().to_string(), n.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(paths: &[&str]) -> CacheSnapshot {
        let mut m = BTreeMap::new();
        for p in paths {
            m.insert(
                p.to_string(),
                Arc::new(CachedNode {
                    path: p.to_string(),
                    stat: Stat::default(),
                    data: Vec::new(),
                    truncated: false,
                }),
            );
        }
        CacheSnapshot {
            nodes: Arc::new(m),
            seq: 0,
        }
    }

    #[test]
    fn children_skip_grandchildren_and_siblings_with_common_prefix() {
        let s = snap(&["/a", "/a/b", "/a/b/c", "/a/b-x", "/a/d", "/a-z", "/a/d/e/f"]);
        let names: Vec<&str> = s.children("/a").iter().map(|n| n.name()).collect();
        assert_eq!(names, ["b", "b-x", "d"]);
        let root = snap(&["/", "/a", "/a/b", "/z"]);
        let names: Vec<&str> = root.children("/").iter().map(|n| n.name()).collect();
        assert_eq!(names, ["a", "z"]);
        let sub: Vec<&str> = s.subtree("/a/b").map(|n| n.path.as_str()).collect();
        assert_eq!(sub, ["/a/b", "/a/b/c"]);
        let all: Vec<&str> = root.subtree("/").map(|n| n.path.as_str()).collect();
        assert_eq!(all, ["/", "/a", "/a/b", "/z"]);
    }
}
