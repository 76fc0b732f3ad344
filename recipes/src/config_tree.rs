//! Config tree: a directory of typed config keys, seen as one map `key → value`.
//!
//! # Layout
//! `<dir>/<key>` persistent nodes, each holding the JSON encoding of `T` (as in
//! [`crate::config`]). Keys are the child names; grandchildren are ignored.
//!
//! # Guarantees
//! * [`ConfigTree::subscribe`] keeps the whole map as a [`TreeSnapshot`]
//!   ([`current`](TreeSubscription::current), [`changes`](TreeSubscription::changes),
//!   [`wait_for`](TreeSubscription::wait_for)) and is a `Stream` of [`TreeEvent`]s. It is built on one
//!   [`zkr::Client::watch_children`] of the directory plus one [`zkr::Client::watch_data`] per
//!   key, all re-armed and re-read across reconnects and new sessions, so it converges to the
//!   current map — including a key deleted and re-created while the client was disconnected
//!   (seen by its new `czxid`/`mzxid`, even at the same data version) and a value changed
//!   meanwhile (re-read, never missed).
//! * A key that vanishes between the listing and its read is treated as gone, never as an error:
//!   the first load always completes.
//! * A key whose payload does not decode is reported as [`TreeEvent::Invalid`]; its last good
//!   value stays in the map.
//! * Per key, an older read arriving late never replaces a newer one (ordered by `mzxid`).
//!
//! # Delivery
//! * `current()` and `changes()` are **coalescing**: they never lag and never grow.
//! * The event `Stream` is **bounded** (1,024 events). A reader that falls that far behind
//!   loses the oldest undelivered events and then gets [`TreeEvent::Lagged`] with the number
//!   lost, before newer events; `current()` is the whole map at any time.
//!
//! # Suspended / Reconnected / Lost
//! While disconnected the map is kept, flagged [`TreeSnapshot::stale`] (and each entry's
//! [`Versioned::stale`]), and [`TreeEvent::Stale`] is emitted. Once connected again the
//! directory is re-read freshly (`sync`, list, then every key's data); keys that were created
//! before that listing but are absent from it are removed, changed keys are updated, then
//! [`TreeEvent::Fresh`] is emitted.
//!
//! # Cancellation
//! Dropping the [`TreeSubscription`] stops its tasks and removes its server-side watches.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use std::time::Duration;
//! use zkr_recipes::ConfigTree;
//! let tree: ConfigTree<u32> = ConfigTree::new(&client, "/app/limits")?;
//! tree.set("rps", &100).await?;
//! let sub = tree.subscribe()?;
//! let snap = sub
//!     .wait_for_timeout(|s| s.entries.contains_key("rps"), Duration::from_secs(5))
//!     .await?;
//! println!("{:?}", snap.entries.get("rps").map(|v| v.value));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use zkr::{Client, CreateMode, DataEvent, SessionState, Stat};

use crate::changes::{Changes, EventSender, Live};
use crate::config::{decode, encode, is_stale_state, policy, Versioned, EVENT_QUEUE};
use crate::error::{Error, Result};

/// The whole map at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeSnapshot<T> {
    /// Key → last good value.
    pub entries: BTreeMap<String, Versioned<T>>,
    /// The client is disconnected: the map may be out of date.
    pub stale: bool,
    /// The first full load has completed.
    pub loaded: bool,
}

impl<T> Default for TreeSnapshot<T> {
    fn default() -> Self {
        TreeSnapshot {
            entries: BTreeMap::new(),
            stale: false,
            loaded: false,
        }
    }
}

impl<T> TreeSnapshot<T> {
    /// Key → value, without the version information.
    pub fn values(&self) -> BTreeMap<String, T>
    where
        T: Clone,
    {
        self.entries
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()
    }
}

/// What a tree subscription reports.
#[derive(Clone, Debug, PartialEq)]
pub enum TreeEvent<T> {
    /// The first full load completed.
    Loaded,
    /// A key was added or changed.
    Upserted {
        /// The key.
        key: String,
        /// Its new value.
        value: Versioned<T>,
    },
    /// A key was removed.
    Removed {
        /// The key.
        key: String,
    },
    /// A key holds a payload that does not decode; its last good value stays.
    Invalid {
        /// The key.
        key: String,
        /// The decoding error.
        error: Error,
    },
    /// A watch reported an error it will retry by itself.
    Error(Error),
    /// The client is disconnected: the map may be out of date.
    Stale,
    /// Connected again and the directory re-read: the map is current.
    Fresh,
    /// The reader fell more than the queue's capacity behind: this many events were lost.
    /// The whole map is in [`TreeSubscription::current`].
    Lagged {
        /// How many events were lost.
        missed: u64,
    },
}

/// A directory of typed config keys. Cheap to clone.
pub struct ConfigTree<T> {
    client: Client,
    dir: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for ConfigTree<T> {
    fn clone(&self) -> Self {
        ConfigTree {
            client: self.client.clone(),
            dir: self.dir.clone(),
            _t: PhantomData,
        }
    }
}

fn check_key(key: &str) -> Result<()> {
    crate::error::check_segment("config key", key)
}

impl<T> ConfigTree<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// A tree rooted at `dir` (validated; nothing is sent).
    pub fn new(client: &Client, dir: &str) -> Result<Self> {
        zkr::path::validate_path(dir, false)?;
        Ok(ConfigTree {
            client: client.clone(),
            dir: dir.to_string(),
            _t: PhantomData,
        })
    }

    /// The directory (its children are the keys).
    pub fn path(&self) -> &str {
        &self.dir
    }

    /// Sets `key` to `value` (creating it and the directory if needed).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a key that is not one node name, [`Error::Payload`] if `value`
    /// does not encode; [`Error::Zk`] when ZooKeeper refuses the write or the retries ran
    /// out.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the write applied or not; setting again is safe.
    pub async fn set(&self, key: &str, value: &T) -> Result<Stat> {
        check_key(key)?;
        let path = zkr::path::join(&self.dir, key);
        let data = encode(&path, value)?;
        let span = tracing::debug_span!("zkr.config_tree.set", dir = %self.dir, key);
        async {
            let pol = policy(self.client.timeout());
            let c = &self.client;
            Ok(c.retry(&pol, || async {
                match c.set_data(&path, &data, None).await {
                    Err(zkr::Error::NoNode { .. }) => {}
                    r => return r,
                }
                c.ensure_path(&self.dir).await?;
                match c.create(&path, &data, CreateMode::Persistent).await {
                    Ok(_) => c
                        .exists(&path)
                        .await
                        .and_then(|s| s.ok_or(zkr::Error::NoNode { path: path.clone() })),
                    Err(zkr::Error::NodeExists { .. }) => c.set_data(&path, &data, None).await,
                    Err(e) => Err(e),
                }
            })
            .await?)
        }
        .instrument(span)
        .await
    }

    /// Removes `key` (no error if absent).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad key; [`Error::Zk`] when ZooKeeper refuses the delete or
    /// the retries ran out.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the key removed or not; removing again is safe.
    pub async fn remove(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let path = zkr::path::join(&self.dir, key);
        let span = tracing::debug_span!("zkr.config_tree.remove", dir = %self.dir, key);
        async {
            let pol = policy(self.client.timeout());
            self.client
                .retry(&pol, || async {
                    match self.client.delete(&path, None).await {
                        Err(zkr::Error::NoNode { .. }) => Ok(()),
                        r => r,
                    }
                })
                .await?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Fresh pull of the whole map (`sync`, list, then every key's data pipelined). Keys that
    /// vanish between the listing and the read are skipped; a key that does not decode is an
    /// error.
    ///
    /// # Errors
    /// [`Error::Payload`] for a key whose payload does not decode; [`Error::Zk`] when the
    /// reads fail after their retries.
    ///
    /// # Cancel safety
    /// Cancel-safe: reads only.
    pub async fn get_all(&self) -> Result<BTreeMap<String, Versioned<T>>> {
        let span = tracing::debug_span!("zkr.config_tree.get_all", dir = %self.dir);
        async {
            let (entries, _) = read_all::<T>(&self.client, &self.dir).await?;
            let mut out = BTreeMap::new();
            for (k, r) in entries {
                if let Some(v) = r? {
                    out.insert(k, v);
                }
            }
            Ok(out)
        }
        .instrument(span)
        .await
    }

    /// Subscribes to the whole map (must be called inside a Tokio runtime).
    pub fn subscribe(&self) -> Result<TreeSubscription<T>> {
        let children = self.client.watch_children(&self.dir)?;
        let (ev_tx, ev_rx) =
            EventSender::channel(EVENT_QUEUE, |missed| TreeEvent::Lagged { missed });
        let (key_tx, key_rx) = mpsc::unbounded_channel();
        let span = tracing::debug_span!("zkr.config_tree.subscribe", dir = %self.dir);
        let snap = Live::spawn(TreeSnapshot::default(), |snap| {
            let driver = TreeDriver {
                client: self.client.clone(),
                dir: self.dir.clone(),
                snap,
                events: ev_tx,
                key_tx,
                watchers: HashMap::new(),
                high: HashMap::new(),
                stale: false,
            };
            driver.run(children, key_rx).instrument(span)
        });
        Ok(TreeSubscription {
            snap,
            events: ev_rx,
        })
    }
}

type KeyRead<T> = (String, Result<Option<Versioned<T>>>);

/// `sync`, list and read every key; returns the per-key results and the listing's stat.
async fn read_all<T: DeserializeOwned>(
    client: &Client,
    dir: &str,
) -> Result<(Vec<KeyRead<T>>, Option<Stat>)> {
    let pol = policy(client.timeout());
    client.retry(&pol, || client.sync(dir)).await?;
    let (names, stat) = match client
        .retry(&pol, || client.get_children_with_stat(dir))
        .await
    {
        Ok((n, s)) => (n, Some(s)),
        Err(zkr::Error::NoNode { .. }) => (Vec::new(), None),
        Err(e) => return Err(e.into()),
    };
    let reads = names.iter().map(|k| {
        let path = zkr::path::join(dir, k);
        let pol = pol.clone();
        async move {
            let r = client.retry(&pol, || client.get_data(&path)).await;
            (k.clone(), path, r)
        }
    });
    let mut out = Vec::new();
    for (k, path, r) in futures::future::join_all(reads).await {
        match r {
            Ok((data, stat)) => out.push((k, decode::<T>(&path, &data, &stat, false))),
            Err(zkr::Error::NoNode { .. }) => {} // vanished after the listing: gone, not an error
            Err(e) => return Err(e.into()),
        }
    }
    Ok((out, stat))
}

struct TreeDriver<T> {
    client: Client,
    dir: String,
    snap: watch::Sender<TreeSnapshot<T>>,
    events: EventSender<TreeEvent<T>>,
    key_tx: mpsc::UnboundedSender<(String, zkr::Result<DataEvent>)>,
    watchers: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Per key: highest mzxid applied and the czxid it belongs to (kept after removal, so a late
    /// read of a deleted key cannot bring it back).
    high: HashMap<String, (i64, i64)>,
    stale: bool,
}

impl<T> Drop for TreeDriver<T> {
    fn drop(&mut self) {
        for (_, h) in self.watchers.drain() {
            h.abort();
        }
    }
}

impl<T: DeserializeOwned + Clone + Send + Sync + 'static> TreeDriver<T> {
    fn emit(&mut self, ev: TreeEvent<T>) {
        self.events.emit(ev);
    }

    fn watch_key(&mut self, key: &str) {
        if self.watchers.contains_key(key) {
            return;
        }
        let path = zkr::path::join(&self.dir, key);
        let mut w = match self.client.watch_data(&path) {
            Ok(w) => w,
            Err(e) => {
                self.emit(TreeEvent::Error(e.into()));
                return;
            }
        };
        let tx = self.key_tx.clone();
        let k = key.to_string();
        let h = tokio::spawn(async move {
            while let Some(ev) = w.next_event().await {
                if tx.send((k.clone(), ev)).is_err() {
                    break;
                }
            }
        });
        self.watchers.insert(key.to_string(), h);
    }

    fn unwatch_key(&mut self, key: &str) {
        if let Some(h) = self.watchers.remove(key) {
            h.abort();
        }
    }

    /// Applies one key's state read at `stat` (`None`: gone).
    fn apply_key(&mut self, key: &str, node: Option<(&[u8], &Stat)>) {
        match node {
            Some((data, stat)) => {
                if let Some((m, _)) = self.high.get(key) {
                    if stat.mzxid <= *m {
                        return;
                    }
                }
                self.high.insert(key.to_string(), (stat.mzxid, stat.czxid));
                let path = zkr::path::join(&self.dir, key);
                match decode::<T>(&path, data, stat, self.stale) {
                    Ok(Some(v)) => {
                        self.snap.send_modify(|s| {
                            s.entries.insert(key.to_string(), v.clone());
                        });
                        self.emit(TreeEvent::Upserted {
                            key: key.to_string(),
                            value: v,
                        });
                    }
                    Ok(None) => self.remove_entry(key),
                    Err(error) => {
                        tracing::warn!(key, %error, "bad config payload; keeping the last good value");
                        self.emit(TreeEvent::Invalid {
                            key: key.to_string(),
                            error,
                        });
                    }
                }
            }
            None => self.remove_entry(key),
        }
    }

    fn remove_entry(&mut self, key: &str) {
        let mut had = false;
        self.snap.send_if_modified(|s| {
            had = s.entries.remove(key).is_some();
            had
        });
        if had {
            self.emit(TreeEvent::Removed {
                key: key.to_string(),
            });
        }
    }

    fn apply_children(&mut self, names: &[String]) {
        let listed: std::collections::HashSet<&str> = names.iter().map(|s| s.as_str()).collect();
        let gone: Vec<String> = self
            .watchers
            .keys()
            .filter(|k| !listed.contains(k.as_str()))
            .cloned()
            .collect();
        for k in gone {
            self.unwatch_key(&k);
            self.remove_entry(&k);
        }
        for n in names {
            self.watch_key(n);
        }
    }

    fn set_stale(&mut self, stale: bool) {
        if self.stale == stale {
            return;
        }
        self.stale = stale;
        self.snap.send_modify(|s| {
            s.stale = stale;
            for v in s.entries.values_mut() {
                v.stale = stale;
            }
        });
        self.emit(if stale {
            TreeEvent::Stale
        } else {
            TreeEvent::Fresh
        });
    }

    /// Fresh re-read of the whole directory; `true` once the map is known to be current.
    async fn refresh(&mut self) -> bool {
        match read_all::<T>(&self.client, &self.dir).await {
            Ok((reads, stat)) => {
                let pzxid = stat.map(|s| s.pzxid).unwrap_or(i64::MAX);
                let listed: std::collections::HashSet<String> =
                    reads.iter().map(|(k, _)| k.clone()).collect();
                // Keys created before the listing but not in it were deleted meanwhile.
                let present: Vec<String> = self.snap.borrow().entries.keys().cloned().collect();
                for k in present {
                    if listed.contains(&k) {
                        continue;
                    }
                    let czxid = self.high.get(&k).map(|(_, c)| *c).unwrap_or(i64::MAX);
                    if czxid <= pzxid {
                        self.remove_entry(&k);
                    }
                }
                for (k, r) in reads {
                    self.watch_key(&k);
                    match r {
                        Ok(Some(v)) => {
                            let stat = Stat {
                                mzxid: v.mzxid,
                                czxid: v.czxid,
                                version: v.version,
                                ..Stat::default()
                            };
                            // Re-encode-free path: apply the decoded value directly.
                            if self.high.get(&k).is_some_and(|(m, _)| stat.mzxid <= *m) {
                                continue;
                            }
                            self.high.insert(k.clone(), (stat.mzxid, stat.czxid));
                            let mut v = v;
                            v.stale = self.stale;
                            self.snap.send_modify(|s| {
                                s.entries.insert(k.clone(), v.clone());
                            });
                            self.emit(TreeEvent::Upserted { key: k, value: v });
                        }
                        Ok(None) => {}
                        Err(error) => self.emit(TreeEvent::Invalid { key: k, error }),
                    }
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "fresh re-read failed; still stale");
                false
            }
        }
    }

    /// Initial load: wait until every listed key has reported its first state.
    fn loaded_check(&mut self, pending: &mut Option<std::collections::HashSet<String>>) {
        if let Some(p) = pending {
            if p.is_empty() {
                *pending = None;
                self.snap.send_modify(|s| s.loaded = true);
                self.emit(TreeEvent::Loaded);
            }
        }
    }

    async fn run(
        mut self,
        mut children: zkr::ChildrenWatch,
        mut keys: mpsc::UnboundedReceiver<(String, zkr::Result<DataEvent>)>,
    ) {
        let mut states = self.client.state_receiver();
        let s = *states.borrow_and_update();
        self.stale = is_stale_state(&s);
        self.snap.send_modify(|s| s.stale = self.stale);
        // Keys still to report before the first load is complete; None once loaded.
        let mut pending: Option<std::collections::HashSet<String>> = None;
        let mut first_listing = true;
        loop {
            tokio::select! {
                ev = children.next_event() => match ev {
                    None => break,
                    Some(Err(e)) => self.emit(TreeEvent::Error(e.into())),
                    Some(Ok(ev)) => {
                        let names: Vec<String> =
                            ev.children().map(|c| c.to_vec()).unwrap_or_default();
                        if first_listing {
                            first_listing = false;
                            pending = Some(names.iter().cloned().collect());
                        }
                        if let Some(p) = &mut pending {
                            // A set, not `names.contains`: linear, not quadratic, in the keys.
                            let listed: std::collections::HashSet<&str> =
                                names.iter().map(|s| s.as_str()).collect();
                            p.retain(|k| listed.contains(k.as_str()));
                        }
                        self.apply_children(&names);
                        self.loaded_check(&mut pending);
                    }
                },
                Some((key, ev)) = keys.recv() => {
                    if !self.watchers.contains_key(&key) {
                        continue; // a key no longer listed: its late events are ignored
                    }
                    if let Some(p) = &mut pending {
                        p.remove(&key);
                    }
                    match ev {
                        Err(e) => self.emit(TreeEvent::Error(e.into())),
                        Ok(ev) => {
                            let node = ev.node.as_ref().map(|(d, s)| (d.as_slice(), s));
                            self.apply_key(&key, node);
                        }
                    }
                    self.loaded_check(&mut pending);
                },
                r = states.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let s = *states.borrow_and_update();
                    if s == SessionState::Closed {
                        self.set_stale(true);
                        break;
                    }
                    if is_stale_state(&s) {
                        self.set_stale(true);
                    } else if self.stale && self.refresh().await {
                        self.set_stale(false);
                    }
                }
            }
        }
    }
}

/// A live subscription to a [`ConfigTree`]: a `Stream` of [`TreeEvent`]s (bounded, see the
/// module doc) plus the whole map ([`current`](Self::current), [`changes`](Self::changes)).
/// Dropping it stops it.
#[must_use = "the subscription stops when dropped"]
pub struct TreeSubscription<T> {
    snap: Live<TreeSnapshot<T>>,
    events: mpsc::Receiver<TreeEvent<T>>,
}

impl<T: Clone + Send + Sync + 'static> TreeSubscription<T> {
    /// The current map.
    pub fn current(&self) -> TreeSnapshot<T> {
        self.snap.current()
    }

    /// The map now, then after every change (coalescing: never lags).
    pub fn changes(&self) -> Changes<TreeSnapshot<T>> {
        self.snap.changes()
    }

    /// The next event, `Ok(None)` once the client is closed, or [`Error::Timeout`] if none
    /// arrives within `d`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `d`.
    ///
    /// # Cancel safety
    /// Cancel-safe: an event is only taken from the queue when it is returned.
    pub async fn next_timeout(&mut self, d: Duration) -> Result<Option<TreeEvent<T>>> {
        crate::wait::timed(d, "config tree event", self.events.recv()).await
    }

    /// Waits until the map satisfies `pred` (checked on the current map first).
    ///
    /// # Errors
    /// [`Error::Closed`] if the subscription's task ended (the client was closed).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads the current map.
    pub async fn wait_for(
        &self,
        pred: impl FnMut(&TreeSnapshot<T>) -> bool,
    ) -> Result<TreeSnapshot<T>> {
        self.wait_for_timeout(pred, Duration::MAX).await
    }

    /// [`wait_for`](Self::wait_for) for at most `d`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `d`; [`Error::Closed`] as `wait_for`.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads the current map.
    pub async fn wait_for_timeout(
        &self,
        mut pred: impl FnMut(&TreeSnapshot<T>) -> bool,
        d: Duration,
    ) -> Result<TreeSnapshot<T>> {
        self.snap
            .wait_until(d, "config tree", "config tree subscription", |s| {
                pred(s).then(|| s.clone())
            })
            .await
    }
}

impl<T> Stream for TreeSubscription<T> {
    type Item = TreeEvent<T>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}
