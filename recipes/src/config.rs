//! Config center: one typed, JSON-encoded value on one znode, pushed to subscribers and pulled
//! on demand.
//!
//! # Layout
//! One persistent node (e.g. `/app/config`) whose data is the JSON encoding of `T`
//! (`serde_json`). Empty data, or no node at all, means "no value published yet". Any JSON
//! client (Curator, kazoo, `zkr config set`) can publish.
//!
//! # Guarantees
//! * [`Config::publish`] writes the value; [`Config::publish_cas`] writes it only if the node
//!   is still at the data version the caller read (compare-and-set).
//! * [`Config::get`] is a *fresh* pull: `sync` and `getData` pipelined in one round trip, so it
//!   sees every publish that completed before it was called.
//! * [`Config::subscribe`] pushes: a [`ConfigSubscription`] always knows the latest good
//!   [`Versioned`] value ([`current`](ConfigSubscription::current),
//!   [`changes`](ConfigSubscription::changes), [`wait_for`](ConfigSubscription::wait_for)) and
//!   is a `Stream` of [`ConfigEvent`]s. It always converges to the latest published value; quick
//!   successive versions may coalesce into one event. Changes are recognised by `mzxid` (and `czxid`), never by the data version alone, so
//!   a node deleted and re-created at the same version, or a data version that wrapped around,
//!   is still seen as a new value, and an old read arriving late never replaces a newer value.
//! * A payload that is not valid JSON for `T` is reported as [`ConfigEvent::Invalid`]; the last
//!   good value stays in force.
//!
//! # Delivery
//! * `current()` and `changes()` are **coalescing**: they never lag and never grow.
//! * The event `Stream` is **bounded** (1,024 events). A reader that falls that far behind
//!   loses the oldest undelivered events and then gets [`ConfigEvent::Lagged`] with the number
//!   lost, before newer events; `current()` is the latest value at any time.
//!
//! # Suspended / Reconnected / Lost
//! On `Suspended`, `Connecting` or `Lost` the subscription keeps serving the last good value,
//! now flagged [`Versioned::stale`], and emits [`ConfigEvent::Stale`]. Once connected again
//! (same or new session) it re-reads the node freshly (`sync` + `getData`): a value changed
//! while disconnected is delivered, then [`ConfigEvent::Fresh`] is emitted and the flag is
//! cleared. The underlying [`zkr::Client::watch_data`] re-arms its watch on every reconnect and
//! new session as well.
//!
//! # Cancellation
//! Dropping a [`ConfigSubscription`] stops its task and (when it was the last watcher of the
//! node) removes the server-side watch. `publish`/`get` futures may be dropped at any point.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use std::time::Duration;
//! use zkr_recipes::Config;
//!
//! #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
//! struct Db { url: String, pool: u32 }
//!
//! let config: Config<Db> = Config::new(&client, "/app/db")?;
//! config.publish(&Db { url: "postgres://db1".into(), pool: 8 }).await?;
//! let mut sub = config.subscribe()?;
//! let v = sub.wait_for_timeout(|v| v.value.pool == 8, Duration::from_secs(5)).await?;
//! println!("pool {} (version {}, stale: {})", v.value.pool, v.version, v.stale);
//! # Ok(()) }
//! ```

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use zkr::{Client, CreateMode, DataWatch, SessionState, Stat};

use crate::changes::{Changes, EventSender, Live};
use crate::error::{Error, Result};

/// Capacity of a subscription's event queue; events beyond it are dropped while the consumer
/// lags (the latest-value receiver never lags).
pub(crate) const EVENT_QUEUE: usize = 1024;

/// A decoded value with the node's version information.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// The node's data version (use it for [`Config::publish_cas`]). It may repeat after a
    /// delete + re-create and wraps after 2^31 writes: compare `mzxid` to tell values apart.
    pub version: i32,
    /// zxid of the write that produced this value (strictly increasing across changes).
    pub mzxid: i64,
    /// zxid of the node's creation (changes when the node is deleted and re-created).
    pub czxid: i64,
    /// The client is not connected: this is the last good value, which may be out of date.
    pub stale: bool,
}

/// What a config subscription reports.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigEvent<T> {
    /// A new value (the first one, or a change).
    Value(Versioned<T>),
    /// The node does not exist (or holds no data): nothing is published.
    Absent,
    /// The node holds a payload that does not decode as `T`; the last good value stays.
    Invalid {
        /// The decoding error.
        error: Error,
        /// Data version of the bad payload.
        version: i32,
        /// zxid of the bad write.
        mzxid: i64,
    },
    /// The watch reported an error it will retry by itself (e.g. no read permission).
    Error(Error),
    /// The client is disconnected: the value may be out of date.
    Stale,
    /// Connected again and the value was re-read: it is current.
    Fresh,
    /// The reader fell more than the queue's capacity behind: this many events were lost.
    /// The latest value is in [`ConfigSubscription::current`].
    Lagged {
        /// How many events were lost.
        missed: u64,
    },
}

/// A typed config value on one znode. Cheap to clone.
pub struct Config<T> {
    client: Client,
    path: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Config<T> {
    fn clone(&self) -> Self {
        Config {
            client: self.client.clone(),
            path: self.path.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Config<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("path", &self.path).finish()
    }
}

/// Decodes a payload into a [`Versioned`]; `Ok(None)` for empty data.
pub(crate) fn decode<T: DeserializeOwned>(
    path: &str,
    data: &[u8],
    stat: &Stat,
    stale: bool,
) -> Result<Option<Versioned<T>>> {
    if data.is_empty() {
        return Ok(None);
    }
    let value = serde_json::from_slice::<T>(data).map_err(|e| Error::Payload {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Some(Versioned {
        value,
        version: stat.version,
        mzxid: stat.mzxid,
        czxid: stat.czxid,
        stale,
    }))
}

pub(crate) fn encode<T: Serialize>(path: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Payload {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// Whether a session state means "reads may be out of date".
pub(crate) fn is_stale_state(s: &SessionState) -> bool {
    !s.is_connected()
}

pub(crate) use crate::retry::bounded as policy;

impl<T> Config<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// A config on `path` (validated; nothing is sent).
    pub fn new(client: &Client, path: &str) -> Result<Self> {
        zkr::path::validate_path(path, false)?;
        Ok(Config {
            client: client.clone(),
            path: path.to_string(),
            _t: PhantomData,
        })
    }

    /// The node's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Publishes `value` (creating the node and its parents if needed); returns the new stat.
    /// Retried on connection loss (the write is idempotent).
    ///
    /// # Errors
    /// [`Error::Payload`] if `value` does not encode; [`Error::Zk`] when ZooKeeper refuses the
    /// write (`NoAuth`, data too large) or the retries ran out (the client's session timeout).
    ///
    /// # Cancel safety
    /// Dropping the future may leave the write applied or not; a publish is idempotent, so
    /// publishing again is safe.
    pub async fn publish(&self, value: &T) -> Result<Stat> {
        let data = encode(&self.path, value)?;
        let span = tracing::debug_span!("zkr.config.publish", path = %self.path, len = data.len());
        async {
            let pol = policy(self.client.timeout());
            let stat = self
                .client
                .retry(&pol, || async {
                    match self.client.set_data(&self.path, &data, None).await {
                        Err(zkr::Error::NoNode { .. }) => {}
                        r => return r,
                    }
                    match self
                        .client
                        .create_with_parents_stat(&self.path, &data, CreateMode::Persistent)
                        .await
                    {
                        Ok((_, stat)) => Ok(stat),
                        Err(zkr::Error::NodeExists { .. }) => {
                            self.client.set_data(&self.path, &data, None).await
                        }
                        Err(e) => Err(e),
                    }
                })
                .await?;
            tracing::debug!(version = stat.version, mzxid = stat.mzxid, "published");
            Ok(stat)
        }
        .instrument(span)
        .await
    }

    /// Publishes `value` only if the node is still at data `version` (as read in a
    /// [`Versioned`]); `expected = None` means "only if nothing is published yet" (the node is
    /// created). Fails with `zkr::Error::BadVersion` / `NodeExists` (wrapped) if someone else
    /// published meanwhile. On connection loss the outcome is checked by re-reading: if the
    /// node holds exactly our payload at `version + 1`, the write is ours.
    ///
    /// # Errors
    /// As [`publish`](Self::publish), plus the compare-and-set failures above.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the write applied or not; [`get`](Self::get) tells.
    pub async fn publish_cas(&self, value: &T, expected: Option<i32>) -> Result<Stat> {
        let data = encode(&self.path, value)?;
        let span = tracing::debug_span!("zkr.config.publish_cas", path = %self.path, ?expected);
        async {
            let r = match expected {
                Some(v) => self.client.set_data(&self.path, &data, Some(v)).await,
                None => match self
                    .client
                    .create_with_parents_stat(&self.path, &data, CreateMode::Persistent)
                    .await
                {
                    Ok((_, stat)) => Ok(stat),
                    Err(e) => Err(e),
                },
            };
            match r {
                Err(e) if e.is_retryable() => {
                    // Outcome unknown: look at what the node holds now.
                    let pol = policy(self.client.timeout());
                    let (now, stat) = self
                        .client
                        .retry(&pol, || self.client.get_data_fresh(&self.path))
                        .await?;
                    let want = expected.map(|v| v.wrapping_add(1)).unwrap_or(0);
                    if now == data && stat.version == want {
                        Ok(stat)
                    } else {
                        Err(e.into())
                    }
                }
                r => Ok(r?),
            }
        }
        .instrument(span)
        .await
    }

    /// Deletes the node (nothing published afterwards). No error if it does not exist.
    ///
    /// # Errors
    /// [`Error::Zk`] when ZooKeeper refuses the delete or the retries ran out.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the node deleted or not; unpublishing again is safe.
    pub async fn unpublish(&self) -> Result<()> {
        let span = tracing::debug_span!("zkr.config.unpublish", path = %self.path);
        async {
            let pol = policy(self.client.timeout());
            self.client
                .retry(&pol, || async {
                    match self.client.delete(&self.path, None).await {
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

    /// Fresh pull of the current value (`sync` + `getData` in one round trip); `None` when
    /// nothing is published.
    ///
    /// # Errors
    /// [`Error::Payload`] for a payload that does not decode; [`Error::Zk`] when the read
    /// fails after its retries (the client's session timeout).
    ///
    /// # Cancel safety
    /// Cancel-safe: a read.
    pub async fn get(&self) -> Result<Option<Versioned<T>>> {
        let span = tracing::debug_span!("zkr.config.get", path = %self.path);
        async {
            let pol = policy(self.client.timeout());
            match self
                .client
                .retry(&pol, || self.client.get_data_fresh(&self.path))
                .await
            {
                Ok((data, stat)) => decode(&self.path, &data, &stat, false),
                Err(zkr::Error::NoNode { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
        .instrument(span)
        .await
    }

    /// [`get`](Self::get) with a deadline.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `d`; otherwise as [`get`](Self::get).
    ///
    /// # Cancel safety
    /// Cancel-safe: a read.
    pub async fn get_timeout(&self, d: Duration) -> Result<Option<Versioned<T>>> {
        crate::wait::timed(d, "config get", self.get()).await?
    }

    /// Subscribes: the returned subscription receives the current value first, then every
    /// change (coalescing quick successions), across reconnects and new sessions. Must be
    /// called inside a Tokio runtime.
    pub fn subscribe(&self) -> Result<ConfigSubscription<T>> {
        let watch = self.client.watch_data(&self.path)?;
        let (ev_tx, ev_rx) =
            EventSender::channel(EVENT_QUEUE, |missed| ConfigEvent::Lagged { missed });
        let span = tracing::debug_span!("zkr.config.subscribe", path = %self.path);
        let latest = Live::spawn(None, |latest| {
            let driver = Driver {
                client: self.client.clone(),
                path: self.path.clone(),
                latest,
                events: ev_tx,
                high: i64::MIN,
                stale: false,
                seen_any: false,
            };
            driver.run(watch).instrument(span)
        });
        Ok(ConfigSubscription {
            latest,
            events: ev_rx,
        })
    }
}

struct Driver<T> {
    client: Client,
    path: String,
    latest: watch::Sender<Option<Versioned<T>>>,
    events: EventSender<ConfigEvent<T>>,
    /// Highest mzxid applied (also across deletes): older reads arriving late are ignored.
    high: i64,
    stale: bool,
    seen_any: bool,
}

impl<T: DeserializeOwned + Clone + Send + Sync + 'static> Driver<T> {
    fn emit(&mut self, ev: ConfigEvent<T>) {
        self.events.emit(ev);
    }

    fn apply(&mut self, node: Option<(&[u8], &Stat)>) {
        match node {
            Some((data, stat)) => {
                if stat.mzxid <= self.high {
                    return;
                }
                self.high = stat.mzxid;
                match decode::<T>(&self.path, data, stat, self.stale) {
                    Ok(Some(v)) => {
                        tracing::debug!(version = v.version, mzxid = v.mzxid, "config value");
                        self.seen_any = true;
                        self.latest.send_replace(Some(v.clone()));
                        self.emit(ConfigEvent::Value(v));
                    }
                    Ok(None) => self.absent(),
                    Err(error) => {
                        tracing::warn!(%error, version = stat.version, "bad config payload; keeping the last good value");
                        self.seen_any = true;
                        self.emit(ConfigEvent::Invalid {
                            error,
                            version: stat.version,
                            mzxid: stat.mzxid,
                        });
                    }
                }
            }
            None => self.absent(),
        }
    }

    fn absent(&mut self) {
        let had = self.latest.borrow().is_some();
        if had || !self.seen_any {
            self.seen_any = true;
            self.latest.send_replace(None);
            self.emit(ConfigEvent::Absent);
        }
    }

    fn set_stale(&mut self, stale: bool) {
        if self.stale == stale {
            return;
        }
        self.stale = stale;
        self.latest.send_modify(|v| {
            if let Some(v) = v {
                v.stale = stale;
            }
        });
        self.emit(if stale {
            ConfigEvent::Stale
        } else {
            ConfigEvent::Fresh
        });
    }

    /// Re-reads freshly after a reconnect; `true` once the value is known to be current.
    async fn refresh(&mut self) -> bool {
        let pol = policy(self.client.timeout());
        let r = self
            .client
            .retry(&pol, || self.client.get_data_fresh(&self.path))
            .await;
        match r {
            Ok((data, stat)) => {
                self.apply(Some((&data, &stat)));
                true
            }
            Err(zkr::Error::NoNode { .. }) => {
                self.apply(None);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "fresh re-read failed; still stale");
                false
            }
        }
    }

    async fn run(mut self, mut watch: DataWatch) {
        let mut states = self.client.state_receiver();
        let s = *states.borrow_and_update();
        self.stale = is_stale_state(&s);
        loop {
            tokio::select! {
                ev = watch.next_event() => match ev {
                    None => break,
                    Some(Err(e)) => self.emit(ConfigEvent::Error(e.into())),
                    Some(Ok(ev)) => {
                        let node = ev.node.as_ref().map(|(d, s)| (d.as_slice(), s));
                        self.apply(node);
                    }
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

/// A live subscription to a [`Config`]: a `Stream` of [`ConfigEvent`]s (bounded, see the module
/// doc) plus the latest value ([`current`](Self::current), [`changes`](Self::changes)).
/// Dropping it stops it.
#[must_use = "the subscription stops when dropped"]
pub struct ConfigSubscription<T> {
    latest: Live<Option<Versioned<T>>>,
    events: mpsc::Receiver<ConfigEvent<T>>,
}

impl<T: Clone + Send + Sync + 'static> ConfigSubscription<T> {
    /// The latest good value (`None`: nothing published, or nothing read yet).
    pub fn current(&self) -> Option<Versioned<T>> {
        self.latest.current()
    }

    /// The latest good value now, then after every change (coalescing: never lags).
    pub fn changes(&self) -> Changes<Option<Versioned<T>>> {
        self.latest.changes()
    }

    /// The next event, `Ok(None)` once the client is closed, or [`Error::Timeout`] if none
    /// arrives within `d`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `d`.
    ///
    /// # Cancel safety
    /// Cancel-safe: an event is only taken from the queue when it is returned.
    pub async fn next_timeout(&mut self, d: Duration) -> Result<Option<ConfigEvent<T>>> {
        crate::wait::timed(d, "config event", self.events.recv()).await
    }

    /// Waits until the latest value satisfies `pred` (checked on the current value first).
    ///
    /// # Errors
    /// [`Error::Closed`] if the subscription's task ended (the client was closed).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads the latest value.
    pub async fn wait_for(&self, pred: impl FnMut(&Versioned<T>) -> bool) -> Result<Versioned<T>> {
        self.wait_for_timeout(pred, Duration::MAX).await
    }

    /// [`wait_for`](Self::wait_for) for at most `d`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `d`; [`Error::Closed`] as `wait_for`.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads the latest value.
    pub async fn wait_for_timeout(
        &self,
        mut pred: impl FnMut(&Versioned<T>) -> bool,
        d: Duration,
    ) -> Result<Versioned<T>> {
        self.latest
            .wait_until(d, "config value", "config subscription", |v| {
                v.as_ref().filter(|v| pred(v)).cloned()
            })
            .await
    }
}

impl<T> Stream for ConfigSubscription<T> {
    type Item = ConfigEvent<T>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}
