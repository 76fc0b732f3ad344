//! A work queue with progress reporting: producers put tasks, workers claim them (exactly one
//! worker per task), report progress and complete or fail them; a coordinator watches it all.
//!
//! # Znode layout
//! ```text
//! {root}/tasks/task-NNNNNNNNNN    persistent sequential, data = the task's JSON payload
//! {root}/claims/task-NNNNNNNNNN   ephemeral, owned by the worker's session; data = progress JSON
//!                                 {"worker":"w1","token":"<uuid>","percent":40.0,"message":"..","updatedAt":ms}
//! {root}/done/task-NNNNNNNNNN     persistent, data = outcome JSON
//!                                 {"worker":"w1","token":"<uuid>","state":"completed"|"failed",
//!                                  "result":..,"error":..,"payload":<task payload>,"finishedAt":ms}
//! ```
//! [`Progress`] and [`Outcome`] are these records. [`WorkQueue::new`] does no I/O; the three
//! directories are created (idempotently) by the first [`WorkQueue::put`] or claim of a queue
//! handle.
//!
//! # Guarantees
//! * **One worker per task**: a claim is one atomic multi `[check tasks/x, create claims/x]`;
//!   the ephemeral claim node can exist only once.
//! * **A claim belongs to one session**: a [`ClaimedTask`] works through a handle pinned to the
//!   session that created the claim; once that session is lost its operations fail with
//!   [`Error::SessionLost`](crate::Error::SessionLost) and never run in a later session.
//! * **Exactly-once completion**: completing (or failing) is one atomic multi
//!   `[delete claims/x, delete tasks/x, create done/x]`, so a task is finished at most once; a
//!   reply lost to a connection loss is resolved by reading `done/x` (the claim token tells
//!   whose completion it was).
//! * **No stuck claims**: a claim is given back (its node deleted, only if it still holds our
//!   token) when a [`ClaimedTask`] is dropped unfinished, when `complete` / `fail` / `release`
//!   fail or are dropped mid-way, and when a `claim` is dropped after its create was sent.
//! * **Dead workers' tasks come back**: when a worker's session dies its ephemeral claim
//!   vanishes and the task is claimable again (workers watch `claims/`).
//! * The coordinator's view ([`Coordinator`]) is first published once every node listed at
//!   start was read (a node that vanished meanwhile counts as gone, not as an error), then
//!   after every change.
//!
//! # Delivery
//! [`Coordinator`] is a `Stream` of [`QueueSnapshot`]s, **coalescing**: it holds only the
//! latest view, so a slow reader skips intermediate views and never misses the latest; memory
//! stays bounded. The stream ends when the client is closed.
//!
//! # Session states
//! * `Suspended`: a worker keeps its claim; progress writes wait (within their deadline).
//! * `Reconnected`: nothing lost; writes go on.
//! * `Lost`: every [`ClaimedTask`] of that session is dead ([`ClaimedTask::lost`] completes,
//!   [`ClaimedTask::is_lost`] is true); its task goes back to the queue. Workers claim again in
//!   the next session.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use zkr_recipes::WorkQueue;
//! let queue = WorkQueue::new(&client, "/jobs")?;
//! queue.put(&serde_json::json!({"resize": "cat.png"})).await?;
//! let mut worker = queue.worker("worker-1")?;
//! let task = worker.claim_timeout(std::time::Duration::from_secs(10)).await?;
//! task.progress(50.0, "half way").await?;
//! task.complete(serde_json::json!({"ok": true})).await?;
//! # Ok(()) }
//! ```

mod coordinator;
mod schema;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tracing::Instrument;
use zkr::{Client, CreateMode};

use crate::child_cache::read_children;
use crate::error::Result;

pub use coordinator::{Coordinator, QueueSnapshot, TaskState, TaskView};
pub use schema::{Outcome, Progress};
pub use worker::{ClaimedTask, Worker};

use schema::{json_err, TASK_PREFIX};

/// A work queue rooted at one path; see the [module docs](self). Cheap to clone.
#[derive(Clone, Debug)]
#[must_use = "a work queue handle does nothing by itself"]
pub struct WorkQueue {
    client: Client,
    root: String,
    /// Whether this handle (or a clone) has made sure the directories exist.
    dirs_ready: Arc<AtomicBool>,
}

impl WorkQueue {
    /// The queue at `root` (validated now; nothing is read or created until an operation
    /// needs it).
    pub fn new(client: &Client, root: &str) -> Result<WorkQueue> {
        zkr::path::validate_path(root, false)?;
        Ok(WorkQueue {
            client: client.clone(),
            root: root.to_string(),
            dirs_ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The queue's root path.
    pub fn path(&self) -> &str {
        &self.root
    }

    fn dir(&self, d: &str) -> String {
        zkr::path::join(&self.root, d)
    }

    fn node(&self, d: &str, id: &str) -> String {
        zkr::path::join(&self.dir(d), id)
    }

    /// Creates `tasks/`, `claims/` and `done/` if needed, once per handle (and its clones).
    async fn ensure_dirs(&self) -> Result<()> {
        if self.dirs_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let policy = zkr::RetryPolicy::default();
        for d in [self.dir("tasks"), self.dir("claims"), self.dir("done")] {
            self.client
                .retry(&policy, || self.client.ensure_path(&d))
                .await?;
        }
        self.dirs_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Adds a task; returns its id (`task-NNNNNNNNNN`). Not retried: after a connection loss
    /// (outcome unknown) the caller decides whether to put it again.
    ///
    /// # Errors
    /// [`Error::Payload`](crate::Error::Payload) if `payload` cannot be encoded;
    /// [`Error::Zk`](crate::Error::Zk) if creating the directories (retried) or the task
    /// fails.
    ///
    /// # Cancel safety
    /// Dropped after the create was sent, the task may or may not have been added (as after a
    /// connection loss).
    pub async fn put(&self, payload: &Value) -> Result<String> {
        let data = serde_json::to_vec(payload).map_err(|e| json_err(&self.root, e))?;
        let path = self.node("tasks", TASK_PREFIX);
        let span = tracing::info_span!("zkr.work_queue.put", root = %self.root);
        async {
            self.ensure_dirs().await?;
            let created = self
                .client
                .create(&path, &data, CreateMode::PersistentSequential)
                .await?;
            Ok(created.rsplit('/').next().unwrap_or(&created).to_string())
        }
        .instrument(span)
        .await
    }

    /// A worker named `worker_id` (the name is recorded in its claims). It watches the queue
    /// from now on; no I/O happens until it claims.
    pub fn worker(&self, worker_id: &str) -> Result<Worker> {
        Worker::new(self, worker_id)
    }

    /// A live view of every task; see [`Coordinator`].
    pub fn coordinator(&self) -> Result<Coordinator> {
        Coordinator::spawn(self)
    }

    /// A one-shot view of every task, read from the server. Nodes that vanish while being read
    /// count as gone.
    ///
    /// # Errors
    /// [`Error::Zk`](crate::Error::Zk) if the reads fail after retrying.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn snapshot(&self) -> Result<QueueSnapshot> {
        let span = tracing::info_span!("zkr.work_queue.snapshot", root = %self.root);
        async {
            let tasks = read_children(&self.client, &self.dir("tasks")).await?;
            let claims = read_children(&self.client, &self.dir("claims")).await?;
            let done = read_children(&self.client, &self.dir("done")).await?;
            Ok(coordinator::build_snapshot(&tasks, &claims, &done))
        }
        .instrument(span)
        .await
    }
}

/// Retries on connection loss within the client's operation timeout.
fn conn_retry(c: &Client) -> zkr::RetryPolicy {
    crate::retry::within_timeout(c)
}
