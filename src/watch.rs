//! Watches that never go silently stale.
//!
//! [`Client::watch_data`](crate::Client::watch_data) and
//! [`Client::watch_children`](crate::Client::watch_children) return `Stream`s that yield the
//! current state first and then every change, across reconnects and new sessions.
//!
//! # How
//! Each distinct `(path, kind)` is one *logical watch* with one driver task and one server-side
//! watch, however many streams share it. The driver reads the node with a one-shot watch set
//! (`getData`/`getChildren`, or `exists` while the node is absent), then waits for the watch to
//! fire, for a reconnect, or for a new session; then it reads again. Every read is compared with
//! the last stat seen:
//! * existence changed → [`Change::Created`] / [`Change::Deleted`];
//! * `czxid` differs → [`Change::Recreated`] (deleted and created again, maybe at the same version);
//! * data: `mzxid` differs → [`Change::Changed`]; children: `pzxid` differs → [`Change::Changed`];
//! * otherwise nothing happened while away, and nothing is emitted.
//!
//! Server events and re-reads go through this one comparison, so duplicates are dropped and a
//! change made while the client was disconnected (or in an older session) is always delivered.
//! Like every ZooKeeper watch, several quick changes may coalesce into one event carrying the
//! latest state; the final state is never missed.
//!
//! Dropping the last stream of a logical watch stops its driver and removes the server watch.
//! Errors that retrying cannot fix (e.g. no read permission) are yielded as `Err` items; the
//! watch keeps trying afterwards. Streams end when the client is closed.

use crate::sync::lock;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::Notify;

use crate::client::Inner;
use crate::error::{Error, Result};
use crate::fanout;
use crate::session::{Epoch, SessionState, Shared};
use crate::types::Stat;
use crate::wire::{Wire, WireEvent, WireWatch};

/// What happened to a watched node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// The state when the stream was opened.
    Initial,
    /// The node came into existence.
    Created,
    /// Data (for data watches) or the children (for children watches) changed.
    Changed,
    /// The node was deleted.
    Deleted,
    /// The node was deleted and created again (seen by a different `czxid`).
    Recreated,
}

/// One item of a data watch: what changed and the node's state now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataEvent {
    /// What happened.
    pub change: Change,
    /// Data and stat, `None` if the node does not exist.
    pub node: Option<(Vec<u8>, Stat)>,
}

impl DataEvent {
    /// The data, if the node exists.
    pub fn data(&self) -> Option<&[u8]> {
        self.node.as_ref().map(|(d, _)| d.as_slice())
    }
    /// The stat, if the node exists.
    pub fn stat(&self) -> Option<&Stat> {
        self.node.as_ref().map(|(_, s)| s)
    }
}

/// One item of a children watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildrenEvent {
    /// What happened.
    pub change: Change,
    /// Children names (sorted) and the parent's stat, `None` if the parent does not exist.
    pub node: Option<(Vec<String>, Stat)>,
}

impl ChildrenEvent {
    /// The children, if the node exists.
    pub fn children(&self) -> Option<&[String]> {
        self.node.as_ref().map(|(c, _)| c.as_slice())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum WatchKind {
    Data,
    Children,
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    stat: Option<Stat>,
    data: Vec<u8>,
    children: Vec<String>,
}

type Item = Result<(Change, Arc<Snapshot>)>;
type Key = (String, WatchKind);

struct EntryState {
    subs: Vec<(u64, fanout::Sender<Item>)>,
    last: Option<Arc<Snapshot>>,
    next_id: u64,
}

struct Entry {
    path: String,
    kind: WatchKind,
    state: Mutex<EntryState>,
    subs_changed: Notify,
}

impl Entry {
    fn lock(&self) -> std::sync::MutexGuard<'_, EntryState> {
        lock(&self.state)
    }

    fn emit(&self, item: Item) {
        let mut st = self.lock();
        if let Ok((_, snap)) = &item {
            st.last = Some(snap.clone());
        }
        st.subs
            .retain(|(_, tx)| tx.send_or_merge(item.clone(), merge_items).is_ok());
    }
}

/// All logical watches of one client.
pub(crate) struct Registry {
    map: Arc<Mutex<HashMap<Key, Arc<Entry>>>>,
}

fn lock_map(
    map: &Mutex<HashMap<Key, Arc<Entry>>>,
) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Entry>>> {
    lock(map)
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn len(&self) -> usize {
        lock_map(&self.map).len()
    }

    pub fn subscribe(&self, inner: &Arc<Inner>, path: &str, kind: WatchKind) -> Subscription {
        let mut map = lock_map(&self.map);
        let key = (path.to_string(), kind);
        let entry = match map.get(&key) {
            Some(e) => e.clone(),
            None => {
                let e = Arc::new(Entry {
                    path: path.to_string(),
                    kind,
                    state: Mutex::new(EntryState {
                        subs: Vec::new(),
                        last: None,
                        next_id: 0,
                    }),
                    subs_changed: Notify::new(),
                });
                map.insert(key, e.clone());
                tokio::spawn(drive(inner.shared.clone(), self.map.clone(), e.clone()));
                e
            }
        };
        let (tx, rx) = fanout::channel(fanout::CAPACITY);
        let id = {
            let mut st = entry.lock();
            let id = st.next_id;
            st.next_id += 1;
            if let Some(last) = &st.last {
                let _ = tx.send_latest(Ok((Change::Initial, last.clone())));
            }
            st.subs.push((id, tx));
            id
        };
        drop(map);
        Subscription { entry, id, rx }
    }
}

/// One stream's membership in a logical watch.
pub(crate) struct Subscription {
    entry: Arc<Entry>,
    id: u64,
    rx: fanout::Receiver<Item>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.entry.lock().subs.retain(|(id, _)| *id != self.id);
        self.entry.subs_changed.notify_one();
    }
}

macro_rules! watch_stream {
    ($name:ident, $event:ident, $doc:literal, $conv:expr) => {
        #[doc = $doc]
        pub struct $name {
            sub: Subscription,
        }

        impl $name {
            pub(crate) fn new(sub: Subscription) -> Self {
                $name { sub }
            }

            /// The next event; `None` once the client is closed.
            pub async fn next_event(&mut self) -> Option<Result<$event>> {
                self.sub.rx.recv().await.map(|r| r.map($conv))
            }

            /// The next event, or `Err(Timeout)` if none arrives within `d`.
            pub async fn next_timeout(&mut self, d: Duration) -> Result<Option<Result<$event>>> {
                tokio::time::timeout(d, self.next_event())
                    .await
                    .map_err(|_| Error::Timeout {
                        op: "watch",
                        after: d,
                    })
            }

            /// The watched path.
            pub fn path(&self) -> &str {
                &self.sub.entry.path
            }

            /// Events queued for this stream now, not yet taken: at most `fanout::CAPACITY`
            /// however slowly it is read (older changes coalesce; the last event always
            /// carries the latest state).
            pub fn queued(&self) -> usize {
                self.sub.rx.len()
            }
        }

        impl Stream for $name {
            type Item = Result<$event>;
            fn poll_next(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Self::Item>> {
                self.sub.rx.poll_recv(cx).map(|o| o.map(|r| r.map($conv)))
            }
        }
    };
}

watch_stream!(
    DataWatch,
    DataEvent,
    "A stream of a node's data; see the [module docs](self).",
    |(change, s): (Change, Arc<Snapshot>)| {
        DataEvent {
            change,
            node: s.stat.map(|st| (s.data.clone(), st)),
        }
    }
);

watch_stream!(
    ChildrenWatch,
    ChildrenEvent,
    "A stream of a node's children; see the [module docs](self).",
    |(change, s): (Change, Arc<Snapshot>)| ChildrenEvent {
        change,
        node: s.stat.map(|st| (s.children.clone(), st))
    }
);

/// Two queued items as one, for a subscriber that fell `fanout::CAPACITY` items behind: the
/// newer snapshot, and the change from the state before the older item to the newer one.
fn merge_items(old: Item, new: Item) -> Item {
    match (old, new) {
        (Ok((a, _)), Ok((b, snap))) => {
            let change = merge_change(a, b, snap.stat.is_some());
            Ok((change, snap))
        }
        // An error, or what follows one: the newer wins.
        (_, new) => new,
    }
}

fn merge_change(a: Change, b: Change, exists_now: bool) -> Change {
    use Change::*;
    if a == Initial {
        return Initial;
    }
    let existed_before = a != Created;
    let replaced =
        matches!(a, Deleted | Recreated | Created) || matches!(b, Deleted | Recreated | Created);
    match (existed_before, exists_now) {
        (true, true) if replaced => Recreated,
        (true, true) => Changed,
        (true, false) | (false, false) => Deleted,
        (false, true) => Created,
    }
}

fn diff(kind: WatchKind, last: Option<&Snapshot>, new: &Snapshot) -> Option<Change> {
    let Some(last) = last else {
        return Some(Change::Initial);
    };
    match (last.stat, new.stat) {
        (None, None) => None,
        (None, Some(_)) => Some(Change::Created),
        (Some(_), None) => Some(Change::Deleted),
        (Some(a), Some(b)) if a.czxid != b.czxid => Some(Change::Recreated),
        (Some(a), Some(b)) => {
            let changed = match kind {
                WatchKind::Data => a.mzxid != b.mzxid,
                WatchKind::Children => a.pzxid != b.pzxid || a.cversion != b.cversion,
            };
            changed.then_some(Change::Changed)
        }
    }
}

/// Reads the node and sets a one-shot watch. `Ok(None)` means "changed under us, read again".
async fn read(wire: &Wire, path: &str, kind: WatchKind) -> Result<Option<(Snapshot, WireWatch)>> {
    let present = match kind {
        WatchKind::Data => wire.get_data_watch(path).await.map(|(data, stat, w)| {
            (
                Snapshot {
                    stat: Some(stat),
                    data,
                    children: Vec::new(),
                },
                w,
            )
        }),
        WatchKind::Children => {
            wire.get_children_watch(path)
                .await
                .map(|(mut children, stat, w)| {
                    children.sort_unstable();
                    (
                        Snapshot {
                            stat: Some(stat),
                            data: Vec::new(),
                            children,
                        },
                        w,
                    )
                })
        }
    };
    match present {
        Ok(r) => Ok(Some(r)),
        Err(Error::NoNode { .. }) => match wire.exists_watch(path).await? {
            (None, w) => Ok(Some((
                Snapshot {
                    stat: None,
                    data: Vec::new(),
                    children: Vec::new(),
                },
                w,
            ))),
            // Created between the two reads: read again.
            (Some(_), _) => Ok(None),
        },
        Err(e) => Err(e),
    }
}

/// Whether the driver should keep going; removes the entry from the map when it has no
/// subscribers left (checked under the map lock so a concurrent subscribe is never lost).
fn still_wanted(map: &Mutex<HashMap<Key, Arc<Entry>>>, entry: &Arc<Entry>) -> bool {
    let mut m = lock_map(map);
    if !entry.lock().subs.is_empty() {
        return true;
    }
    let key = (entry.path.clone(), entry.kind);
    if m.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
        m.remove(&key);
    }
    false
}

async fn drive(shared: Arc<Shared>, map: Arc<Mutex<HashMap<Key, Arc<Entry>>>>, entry: Arc<Entry>) {
    let span = tracing::debug_span!("zkr.watch", path = %entry.path, kind = ?entry.kind);
    let mut states = shared.state_receiver();
    let mut backoff = error_backoff();
    'outer: loop {
        if !still_wanted(&map, &entry) {
            return;
        }
        let epoch: Arc<Epoch> = tokio::select! {
            e = shared.live_epoch() => match e {
                Ok(e) => e,
                Err(_) => break,
            },
            _ = entry.subs_changed.notified() => continue,
        };
        states.borrow_and_update();
        let t = epoch.timeout;
        // The wire handle is held only for the read, never while waiting.
        let r = {
            let Ok(wire) = epoch.wire() else { continue };
            match tokio::time::timeout(t, epoch.run(read(&wire, &entry.path, entry.kind))).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout {
                    op: "watch read",
                    after: t,
                }),
            }
        };
        let watch = match r {
            Ok(None) => continue,
            Ok(Some((snap, watch))) => {
                backoff = error_backoff();
                let change = diff(entry.kind, entry.lock().last.as_deref(), &snap);
                if let Some(change) = change {
                    tracing::debug!(parent: &span, ?change, "watch event");
                    entry.emit(Ok((change, Arc::new(snap))));
                }
                Some(watch)
            }
            // Connection trouble: read again soon, or when the session state moves.
            Err(e) if e.is_retryable() => None,
            Err(e) => {
                tracing::warn!(parent: &span, error = %e, "watch read failed");
                entry.emit(Err(e));
                tokio::select! {
                    _ = backoff.wait() => {},
                    _ = epoch.ended() => {},
                }
                continue;
            }
        };
        // Wait for a reason to read again. Dropping `fired` drops the server watch.
        let fired = async move {
            match watch {
                Some(w) => Some(w.fired().await),
                None => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    None
                }
            }
        };
        tokio::pin!(fired);
        loop {
            tokio::select! {
                ev = &mut fired => {
                    // A deletion is certain from the event alone: tell subscribers now (lock
                    // waiters act on it), then re-read as usual (it may have been re-created).
                    if ev == Some(WireEvent::Deleted) {
                        let present =
                            entry.lock().last.as_ref().is_some_and(|l| l.stat.is_some());
                        if present {
                            let gone =
                                Snapshot { stat: None, data: Vec::new(), children: Vec::new() };
                            entry.emit(Ok((Change::Deleted, Arc::new(gone))));
                        }
                    }
                    continue 'outer;
                }
                _ = epoch.ended() => continue 'outer,
                c = states.changed() => {
                    if c.is_err() {
                        break 'outer;
                    }
                    let s = *states.borrow_and_update();
                    match s {
                        SessionState::Reconnected { .. } | SessionState::Connected { .. } => {
                            continue 'outer
                        }
                        SessionState::Closed => break 'outer,
                        _ => {}
                    }
                }
                _ = entry.subs_changed.notified() => {
                    if !still_wanted(&map, &entry) {
                        return;
                    }
                }
            }
        }
    }
    // Client closed: end every stream.
    entry.lock().subs.clear();
    let key = (entry.path.clone(), entry.kind);
    let mut m = lock_map(&map);
    if m.get(&key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
        m.remove(&key);
    }
}

/// What a [`PersistentWatch`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchedEventKind {
    /// A node was created.
    Created,
    /// A node was deleted.
    Deleted,
    /// A node's data changed.
    DataChanged,
    /// A node's children changed (non-recursive watches only).
    ChildrenChanged,
    /// The connection was replaced: changes may have been missed. The stream ends after this.
    Resync,
    /// The session ended. The stream ends after this.
    SessionEnded,
    /// The subscriber fell behind: its queue was full (`fanout::CAPACITY` events) and the
    /// events that did not fit were dropped for this marker (at the watched path). The watch
    /// goes on and later events are delivered again; the state may have changed unseen, so read
    /// again what the watch covers. This is how memory stays bounded for a slow subscriber.
    Lagged,
}

/// One event of a [`PersistentWatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedEvent {
    /// What happened.
    pub kind: WatchedEventKind,
    /// Where (the watched path itself for `Resync` and `SessionEnded`).
    pub path: String,
}

/// A stream of the events of a persistent watch; see
/// [`Client::add_watch`](crate::Client::add_watch). Dropping it removes the watch.
pub struct PersistentWatch {
    inner: crate::wire::WirePersistentWatch,
    done: bool,
}

impl PersistentWatch {
    pub(crate) fn new(inner: crate::wire::WirePersistentWatch) -> Self {
        PersistentWatch { inner, done: false }
    }

    fn convert(&mut self, ev: crate::proto::connection::PathEvent) -> WatchedEvent {
        let kind = match ev.event {
            WireEvent::Created => WatchedEventKind::Created,
            WireEvent::Deleted => WatchedEventKind::Deleted,
            WireEvent::DataChanged => WatchedEventKind::DataChanged,
            WireEvent::ChildrenChanged => WatchedEventKind::ChildrenChanged,
            WireEvent::Resync => WatchedEventKind::Resync,
            WireEvent::SessionEnded => WatchedEventKind::SessionEnded,
            WireEvent::Lagged => WatchedEventKind::Lagged,
        };
        if matches!(
            kind,
            WatchedEventKind::Resync | WatchedEventKind::SessionEnded
        ) {
            self.done = true;
        }
        WatchedEvent {
            kind,
            path: ev.path,
        }
    }

    /// Events queued for this stream now, not yet taken: at most `fanout::CAPACITY`, however
    /// slowly the stream is read (see [`WatchedEventKind::Lagged`]).
    pub fn queued(&self) -> usize {
        self.inner.queued()
    }

    /// The next event, or `Err(Timeout)` if none arrives within `d`.
    pub async fn next_timeout(&mut self, d: Duration) -> Result<Option<WatchedEvent>> {
        use futures::StreamExt;
        tokio::time::timeout(d, self.next())
            .await
            .map_err(|_| Error::Timeout {
                op: "persistent watch",
                after: d,
            })
    }
}

impl Stream for PersistentWatch {
    type Item = WatchedEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchedEvent>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.poll_next(cx) {
            Poll::Ready(Some(ev)) => Poll::Ready(Some(self.convert(ev))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Waits between reads that keep failing: from 100 ms doubling to 5 s.
fn error_backoff() -> crate::Backoff {
    crate::RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5)).backoff()
}

#[cfg(test)]
mod tests {
    use super::Change::*;
    use super::*;

    /// Two queued changes merged into one (a full queue) say what a reader of both would have
    /// concluded: from the state before the first to the state after the second.
    #[test]
    fn merged_changes_span_both() {
        for (a, b, exists_now, want) in [
            (Changed, Changed, true, Changed),
            (Deleted, Created, true, Recreated),
            (Changed, Recreated, true, Recreated),
            (Changed, Deleted, false, Deleted),
            (Recreated, Deleted, false, Deleted),
            (Created, Changed, true, Created),
            (Created, Deleted, false, Deleted),
            (Initial, Changed, true, Initial),
            (Initial, Deleted, false, Initial),
        ] {
            assert_eq!(merge_change(a, b, exists_now), want, "{a:?} then {b:?}");
        }
    }
}
