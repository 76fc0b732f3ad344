//! A directory's children together with their data, skipping children that vanish between the
//! listing and the read (`NoNode` counts as gone, never as an error). Two forms: a one-shot
//! read ([`read_children`]) and a live cache on watches ([`ChildCache`]). Used by
//! [`Discovery`](crate::Discovery) and the work queue.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zkr::{ChildrenEvent, ChildrenWatch, Client, Stat};

use crate::error::{Error, Result};

/// Every child of `dir` with its data and stat, read once (no watch), by name. A missing `dir`
/// has no children; a child deleted between the listing and its read is left out.
pub(crate) async fn read_children(
    client: &Client,
    dir: &str,
) -> Result<BTreeMap<String, (Vec<u8>, Stat)>> {
    let policy = zkr::RetryPolicy::default();
    let children = match client.retry(&policy, || client.get_children(dir)).await {
        Ok(c) => c,
        Err(zkr::Error::NoNode { .. }) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.into()),
    };
    let reads = children.into_iter().map(|c| {
        let p = zkr::path::join(dir, &c);
        let policy = &policy;
        async move {
            match client.retry(policy, || client.get_data(&p)).await {
                Ok(d) => Ok(Some((c, d))),
                Err(zkr::Error::NoNode { .. }) => Ok(None),
                Err(e) => Err(Error::from(e)),
            }
        }
    });
    Ok(futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// Data and stat of a child, `None` when it does not exist (any more).
type NodeData = Option<(Vec<u8>, Stat)>;

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
