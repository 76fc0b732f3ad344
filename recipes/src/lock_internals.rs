//! The queue discipline shared by [`Mutex`](crate::Mutex), [`RwLock`](crate::RwLock) and
//! [`Semaphore`](crate::Semaphore): a protected ephemeral-sequential node per acquirer, a
//! predicate over the ordered contenders that says "acquired" or "wait for node X", and a wait
//! that watches only that one node (no herd effect).

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use zkr::{Client, SessionState, SessionStates, Stat};

use crate::error::{Error, Result};
pub(crate) use crate::hold::LossPolicy;
use crate::sequence::{contenders, create_protected, parse_seq, Ahead, Contender};

/// Every marker that names a contender on a lock path: Curator's mutex (`lock-`), kazoo's
/// (`__lock__`), Curator's read/write lock (`__READ__`, `__WRIT__`).
pub(crate) const LOCK_MARKERS: &[&str] = &["lock-", "__lock__"];

/// What a predicate decides for our position in the queue.
pub(crate) enum Decision {
    Acquired,
    /// Wait until the contender at this index is gone.
    WaitFor(usize),
}

/// A node we own in a lock queue.
pub(crate) struct Acquired {
    pub client: Client,
    pub path: String,
    pub stat: Stat,
    pub states: SessionStates,
}

/// One lock queue: the directory, the marker of our node's name, every marker that names a
/// contender, and our node's data.
#[derive(Clone, Copy)]
pub(crate) struct Queue<'a> {
    pub dir: &'a str,
    pub marker: &'a str,
    pub markers: &'a [&'a str],
    pub data: &'a [u8],
}

/// Waits (`deadline`, or not at all with `try_only`) until `decide` says we hold it.
pub(crate) async fn acquire(
    client: &Client,
    queue: &Queue<'_>,
    deadline: Option<Instant>,
    try_only: bool,
    decide: impl Fn(&[Contender], usize) -> Decision,
) -> Result<Option<Acquired>> {
    let Queue {
        dir,
        marker,
        markers,
        data,
    } = *queue;
    let pinned = within(deadline, "lock acquire", client.pinned()).await??;
    // Subscribe before creating: a Suspended from here on is seen by the guard.
    let states = pinned.states();
    let (node, stat, mut children) = within(
        deadline,
        "lock acquire",
        create_protected(&pinned, dir, marker, data),
    )
    .await??;
    let our_name = node.name().to_string();
    let our_seq = parse_seq(&our_name, marker);
    loop {
        let cs = contenders(&children, markers, our_seq);
        let Some(ours) = cs.iter().position(|c| c.name == our_name) else {
            // Our node is gone: only a lost session does that.
            return Err(Error::SessionLost {
                what: "lock acquire",
            });
        };
        match decide(&cs, ours) {
            Decision::Acquired => {
                let path = node.disarm();
                return Ok(Some(Acquired {
                    client: pinned,
                    path,
                    stat,
                    states,
                }));
            }
            Decision::WaitFor(_) if try_only => {
                node.remove().await?;
                return Ok(None);
            }
            Decision::WaitFor(i) => {
                let pred = zkr::path::join(dir, &cs[i].name);
                // If the contenders up to ours, without the one we wait for, say "acquired"
                // once it is gone, it is: no need to list again (see `Ahead`).
                let ahead = Ahead::keep(&cs, ours, i);
                drop(cs);
                drop(std::mem::take(&mut children));
                tracing::debug!(waiting_for = %pred, "queued");
                within(deadline, "lock acquire", wait_gone(&pinned, &pred)).await??;
                if let Some(rest) = ahead.after_gone() {
                    let rest_cs = contenders(&rest, markers, our_seq);
                    if let Some(ours) = rest_cs.iter().position(|c| c.name == our_name) {
                        if matches!(decide(&rest_cs, ours), Decision::Acquired) {
                            children = rest;
                            continue;
                        }
                    }
                }
                let policy = zkr::RetryPolicy::default();
                children = within(
                    deadline,
                    "lock acquire",
                    pinned.retry(&policy, || pinned.get_children(dir)),
                )
                .await??;
            }
        }
    }
}

/// Completes when `path` no longer exists (or the pinned session ends: an error).
async fn wait_gone(pinned: &Client, path: &str) -> Result<()> {
    match pinned.wait_gone(path).await {
        Ok(()) => Ok(()),
        Err(zkr::Error::SessionLost { .. }) => Err(Error::SessionLost {
            what: "lock acquire",
        }),
        Err(e) => Err(e.into()),
    }
}

/// Runs `f` until `deadline` (if any); the timeout is a recipe error.
pub(crate) async fn within<T>(
    deadline: Option<Instant>,
    what: &'static str,
    f: impl std::future::Future<Output = T>,
) -> Result<T> {
    match deadline {
        None => Ok(f.await),
        Some(d) => {
            let after = d.saturating_duration_since(Instant::now());
            tokio::time::timeout_at(d, f)
                .await
                .map_err(|_| Error::Timeout { what, after })
        }
    }
}

/// Whether `s` ends a hold under `policy` (the pinned epoch ending is checked separately).
pub(crate) fn is_loss(s: &SessionState, policy: LossPolicy, epoch: Option<u64>) -> bool {
    match s {
        SessionState::Suspended { .. } => policy == LossPolicy::Suspended,
        SessionState::Lost { .. } | SessionState::Closed | SessionState::Connecting => true,
        SessionState::Connected { epoch: e, .. } => Some(*e) != epoch,
        _ => false,
    }
}

/// Tracks whether a held node may no longer be held.
pub(crate) struct HoldMonitor {
    states: tokio::sync::Mutex<SessionStates>,
    lost: std::sync::atomic::AtomicBool,
    policy: LossPolicy,
    epoch: Option<u64>,
    /// Our node, watched from the first call to [`lost`](Self::lost) on (a hold that nobody
    /// waits on costs no watch: lock cycles stay two writes and one read).
    node: Option<(Client, String)>,
    node_watch: std::sync::OnceLock<NodeWatch>,
}

/// Watches a held node: if it disappears (an operator deleted it, or its session ended), the
/// hold is over. One `exists` watch, removed when the hold is dropped.
struct NodeWatch {
    gone: std::sync::Arc<(std::sync::atomic::AtomicBool, tokio::sync::Notify)>,
    task: tokio::task::JoinHandle<()>,
}

impl NodeWatch {
    fn start(client: &Client, path: &str) -> NodeWatch {
        let gone = std::sync::Arc::new((
            std::sync::atomic::AtomicBool::new(false),
            tokio::sync::Notify::new(),
        ));
        let (client, path, flag) = (client.clone(), path.to_string(), gone.clone());
        let task = tokio::spawn(async move {
            match client.wait_gone(&path).await {
                Ok(()) => tracing::warn!(node = %path, "held node deleted: the hold is lost"),
                Err(e) if e.is_session_lost() => {}
                // Anything else (no permission to watch, say) leaves the decision to the
                // session states.
                Err(_) => return,
            }
            flag.0.store(true, std::sync::atomic::Ordering::Release);
            flag.1.notify_waiters();
        });
        NodeWatch { gone, task }
    }

    fn is_gone(&self) -> bool {
        self.gone.0.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn wait(&self) {
        loop {
            let notified = self.gone.1.notified();
            if self.is_gone() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HoldMonitor {
    /// Starts watching at acquisition: what happened before it (e.g. a suspension the acquire
    /// rode out) does not count, only the state now and what follows.
    pub fn new(mut states: SessionStates, policy: LossPolicy, epoch: Option<u64>) -> Self {
        let mut last = None;
        while let Some(Some(s)) = states.next().now_or_never() {
            last = Some(s);
        }
        let lost = last.is_some_and(|s| is_loss(&s, policy, epoch));
        HoldMonitor {
            states: tokio::sync::Mutex::new(states),
            lost: lost.into(),
            policy,
            epoch,
            node: None,
            node_watch: std::sync::OnceLock::new(),
        }
    }

    /// Also ends the hold when `path` (our node) disappears, as seen by a watch set when
    /// someone first waits for the loss.
    pub fn watching_node(mut self, client: &Client, path: &str) -> Self {
        self.node = Some((client.clone(), path.to_string()));
        self
    }

    fn mark(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Non-blocking check: drains the state transitions seen so far.
    pub fn is_lost(&self) -> bool {
        if self.lost.load(std::sync::atomic::Ordering::Acquire)
            || self.node_watch.get().is_some_and(NodeWatch::is_gone)
        {
            return true;
        }
        if let Ok(mut st) = self.states.try_lock() {
            while let Some(Some(s)) = st.next().now_or_never() {
                if is_loss(&s, self.policy, self.epoch) {
                    self.mark();
                    return true;
                }
            }
        }
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Completes when the hold may be lost.
    pub async fn lost(&self) {
        if self.is_lost() {
            return;
        }
        let node_gone = async {
            match &self.node {
                Some((client, path)) => {
                    self.node_watch
                        .get_or_init(|| NodeWatch::start(client, path))
                        .wait()
                        .await
                }
                None => std::future::pending().await,
            }
        };
        let states_lost = async {
            let mut st = self.states.lock().await;
            while let Some(s) = st.next().await {
                if is_loss(&s, self.policy, self.epoch) {
                    return;
                }
            }
        };
        tokio::select! {
            _ = node_gone => {}
            _ = states_lost => {}
        }
        self.mark();
    }
}

use futures::FutureExt;

/// Deletes our node in the background (a guard dropped without `release`).
pub(crate) fn release_in_background(client: Client, path: String) {
    if let Ok(h) = tokio::runtime::Handle::try_current() {
        h.spawn(async move {
            let _ = release_node(&client, &path).await;
        });
    }
}

/// Deletes our node; `Ok(true)` if it was deleted now, `Ok(false)` if the session (and with it
/// the node) was already gone.
pub(crate) async fn release_node(client: &Client, path: &str) -> Result<bool> {
    let policy = zkr::RetryPolicy::default().max_elapsed(Duration::from_secs(10));
    match client.retry(&policy, || client.delete(path, None)).await {
        Ok(()) => Ok(true),
        Err(e) if e.is_no_node() || e.is_session_lost() => Ok(false),
        Err(e) => Err(e.into()),
    }
}
