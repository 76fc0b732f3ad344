//! The coordinator: a live view of every task of a queue.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tracing::Instrument;
use zkr::Stat;

use super::schema::{task_seq, Outcome, Progress, FAILED};
use super::WorkQueue;
use crate::changes::{Changes, Live};
use crate::child_cache::ChildCache;
use crate::error::Result;

/// A task's state as the coordinator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for a worker.
    Pending,
    /// Claimed by a live worker.
    Running,
    /// Completed.
    Completed,
    /// Failed.
    Failed,
}

/// One task in a [`QueueSnapshot`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskView {
    /// `task-NNNNNNNNNN`.
    pub id: String,
    /// Its state.
    pub state: TaskState,
    /// The payload given by the producer.
    pub payload: Value,
    /// The worker running or having finished it.
    pub owner: Option<String>,
    /// Progress percent (running tasks).
    pub percent: Option<f64>,
    /// Progress message (running tasks).
    pub message: Option<String>,
    /// Result (completed tasks).
    pub result: Option<Value>,
    /// Error (failed tasks).
    pub error: Option<String>,
}

/// Every task of a queue, sorted by id.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QueueSnapshot {
    /// The tasks.
    pub tasks: Vec<TaskView>,
}

impl QueueSnapshot {
    /// The task with this id.
    pub fn get(&self, id: &str) -> Option<&TaskView> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// How many tasks are in `state`.
    pub fn count(&self, state: TaskState) -> usize {
        self.tasks.iter().filter(|t| t.state == state).count()
    }
}

type Nodes = BTreeMap<String, (Vec<u8>, Stat)>;

pub(super) fn build_snapshot(tasks: &Nodes, claims: &Nodes, done: &Nodes) -> QueueSnapshot {
    let mut out = Vec::new();
    for (id, (data, _)) in done {
        let Ok(o) = serde_json::from_slice::<Outcome>(data) else {
            continue;
        };
        let failed = o.state == FAILED;
        out.push(TaskView {
            id: id.clone(),
            state: if failed {
                TaskState::Failed
            } else {
                TaskState::Completed
            },
            payload: o.payload,
            owner: Some(o.worker),
            percent: None,
            message: None,
            result: (!failed).then_some(o.result),
            error: o.error,
        });
    }
    for (id, (data, _)) in tasks {
        if done.contains_key(id) {
            continue;
        }
        let payload = serde_json::from_slice(data).unwrap_or(Value::Null);
        let progress = claims
            .get(id)
            .and_then(|(c, _)| serde_json::from_slice::<Progress>(c).ok());
        out.push(match progress {
            Some(p) => TaskView {
                id: id.clone(),
                state: TaskState::Running,
                payload,
                owner: Some(p.worker),
                percent: Some(p.percent),
                message: Some(p.message),
                result: None,
                error: None,
            },
            None => TaskView {
                id: id.clone(),
                state: TaskState::Pending,
                payload,
                owner: None,
                percent: None,
                message: None,
                result: None,
                error: None,
            },
        });
    }
    out.sort_by(|a, b| (task_seq(&a.id), &a.id).cmp(&(task_seq(&b.id), &b.id)));
    QueueSnapshot { tasks: out }
}

type Shared = Option<Arc<QueueSnapshot>>;

/// A live view of every task of a queue: a `Stream` of [`QueueSnapshot`]s (state, owner,
/// progress of each task), **coalescing** (a slow reader sees the latest view; see the
/// [module docs](super)). [`current`](Self::current) is the latest view. Dropping it removes
/// its watches.
#[must_use = "the coordinator stops watching when dropped"]
pub struct Coordinator {
    live: Live<Shared>,
    stream: Changes<QueueSnapshot>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").finish_non_exhaustive()
    }
}

impl Coordinator {
    pub(super) fn spawn(q: &WorkQueue) -> Result<Coordinator> {
        let tasks = ChildCache::new(&q.client, &q.dir("tasks"), false)?;
        let claims = ChildCache::new(&q.client, &q.dir("claims"), true)?;
        let done = ChildCache::new(&q.client, &q.dir("done"), false)?;
        let span = tracing::info_span!("zkr.work_queue.coordinator", root = %q.root);
        let live = Live::spawn(None, |tx| {
            coordinate(tasks, claims, done, tx).instrument(span)
        });
        let stream = loaded(&live);
        Ok(Coordinator { live, stream })
    }

    /// The latest view, `None` before the first load completed.
    pub fn current(&self) -> Option<QueueSnapshot> {
        self.live.current().map(|s| s.as_ref().clone())
    }

    /// The latest view now (once loaded), then after every change (coalescing).
    pub fn changes(&self) -> Changes<QueueSnapshot> {
        loaded(&self.live)
    }

    /// The next view of the stream (the first one is the initial load), or `Err(Timeout)` if
    /// none comes within `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout) after `timeout`.
    ///
    /// # Cancel safety
    /// Cancel-safe: a view not yet taken stays in the stream.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<QueueSnapshot>> {
        crate::wait::timed(timeout, "coordinator update", self.stream.next()).await
    }

    /// Waits until the view satisfies `pred` (tried on the latest view first, then on every
    /// new one); returns that view.
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) if the coordinator stops (the client was
    /// closed).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn wait_for(
        &self,
        pred: impl FnMut(&QueueSnapshot) -> bool,
    ) -> Result<QueueSnapshot> {
        self.wait_for_timeout(pred, Duration::MAX).await
    }

    /// [`wait_for`](Self::wait_for), giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout) after `timeout`;
    /// [`Error::Closed`](crate::Error::Closed) if the coordinator stops.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn wait_for_timeout(
        &self,
        mut pred: impl FnMut(&QueueSnapshot) -> bool,
        timeout: Duration,
    ) -> Result<QueueSnapshot> {
        self.live
            .wait_until(timeout, "coordinator condition", "coordinator", |snap| {
                snap.as_ref()
                    .filter(|s| pred(s))
                    .map(|s| s.as_ref().clone())
            })
            .await
    }
}

/// The views of `live` once loaded: the current one (if loaded), then every change.
fn loaded(live: &Live<Shared>) -> Changes<QueueSnapshot> {
    Changes::filtered(live.receiver(), |s: &Shared| {
        s.as_ref().map(|s| s.as_ref().clone())
    })
}

impl Stream for Coordinator {
    type Item = QueueSnapshot;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

async fn coordinate(
    mut tasks: ChildCache,
    mut claims: ChildCache,
    mut done: ChildCache,
    tx: watch::Sender<Shared>,
) {
    let mut last: Option<QueueSnapshot> = None;
    let mut built_at = (u64::MAX, u64::MAX, u64::MAX);
    loop {
        let alive = tokio::select! {
            a = tasks.step() => a,
            a = claims.step() => a,
            a = done.step() => a,
        };
        if !alive {
            return;
        }
        // Let a burst of events arrive before building a view.
        tokio::task::yield_now().await;
        if !tasks.drain() || !claims.drain() || !done.drain() {
            return;
        }
        let now = (tasks.changes, claims.changes, done.changes);
        if !(tasks.loaded() && claims.loaded() && done.loaded()) || now == built_at {
            continue;
        }
        built_at = now;
        let snap = build_snapshot(&tasks.nodes, &claims.nodes, &done.nodes);
        if last.as_ref() != Some(&snap) {
            last = Some(snap.clone());
            if tx.send(Some(Arc::new(snap))).is_err() {
                return;
            }
        }
    }
}
