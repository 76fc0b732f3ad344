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
//! * **Dead workers' tasks come back**: when a worker's session dies its ephemeral claim
//!   vanishes and the task is claimable again (workers watch `claims/`).
//! * The coordinator's stream ([`Coordinator`]) first yields once every node listed at start
//!   was read (a node that vanished meanwhile counts as gone, not as an error), then after every
//!   change (coalesced: the latest view is never missed).
//!
//! # Session states
//! * `Suspended`: a worker keeps its claim; progress writes wait (within their deadline).
//! * `Reconnected`: nothing lost; writes go on.
//! * `Lost`: every [`ClaimedTask`] of that session is dead ([`ClaimedTask::lost`] completes);
//!   its task goes back to the queue. Workers claim again in the next session.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use std::time::Duration;
//! use zkr_recipes::work_queue::WorkQueue;
//! let queue = WorkQueue::open(&client, "/jobs").await?;
//! queue.put(&serde_json::json!({"resize": "cat.png"})).await?;
//! let mut worker = queue.worker("worker-1").await?;
//! let mut task = worker.claim(Duration::from_secs(10)).await?;
//! task.progress(50.0, "half way").await?;
//! task.complete(serde_json::json!({"ok": true})).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use zkr::{ChildrenWatch, Client, CreateMode, Op, SessionState};

use crate::discovery::ChildCache;
use crate::error::{Error, Result};
use crate::registration::now_ms;

const TASK_PREFIX: &str = "task-";

/// The progress JSON in a claim node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The worker's id.
    pub worker: String,
    /// Unique per claim.
    #[serde(default)]
    pub token: String,
    /// 0–100.
    #[serde(default)]
    pub percent: f64,
    /// Free text.
    #[serde(default)]
    pub message: String,
    /// ms since the Unix epoch.
    #[serde(default)]
    pub updated_at: i64,
}

/// The outcome JSON in a done node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The worker that finished the task.
    pub worker: String,
    /// Its claim token.
    #[serde(default)]
    pub token: String,
    /// `completed` or `failed`.
    pub state: String,
    /// The result (completed tasks).
    #[serde(default)]
    pub result: Value,
    /// Why it failed (failed tasks).
    #[serde(default)]
    pub error: Option<String>,
    /// The task's payload.
    #[serde(default)]
    pub payload: Value,
    /// ms since the Unix epoch.
    #[serde(default)]
    pub finished_at: i64,
}

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

fn json_err(path: &str, e: serde_json::Error) -> Error {
    Error::Payload {
        path: path.to_string(),
        reason: e.to_string(),
    }
}

/// The sequence of a task name, for ordering.
fn task_seq(name: &str) -> Option<i64> {
    name.strip_prefix(TASK_PREFIX)?.parse::<i64>().ok()
}

/// A work queue rooted at one path; see the [module docs](self). Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkQueue {
    client: Client,
    root: String,
}

impl WorkQueue {
    /// Opens (creating its directories if needed) the queue at `root`.
    pub async fn open(client: &Client, root: &str) -> Result<WorkQueue> {
        zkr::path::validate_path(root, false)?;
        let q = WorkQueue {
            client: client.clone(),
            root: root.to_string(),
        };
        let span = tracing::info_span!("zkr.queue.open", root);
        async {
            let policy = zkr::RetryPolicy::default();
            for d in [q.dir("tasks"), q.dir("claims"), q.dir("done")] {
                client.retry(&policy, || client.ensure_path(&d)).await?;
            }
            Ok::<_, Error>(())
        }
        .instrument(span)
        .await?;
        Ok(q)
    }

    /// The root path.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn dir(&self, d: &str) -> String {
        zkr::path::join(&self.root, d)
    }

    fn node(&self, d: &str, id: &str) -> String {
        zkr::path::join(&self.dir(d), id)
    }

    /// Adds a task; returns its id (`task-NNNNNNNNNN`). Not retried: after a connection loss
    /// (outcome unknown) the caller decides whether to put it again.
    pub async fn put(&self, payload: &Value) -> Result<String> {
        let data = serde_json::to_vec(payload).map_err(|e| json_err(&self.root, e))?;
        let path = self.node("tasks", TASK_PREFIX);
        let span = tracing::info_span!("zkr.queue.put", root = %self.root);
        let created = self
            .client
            .create(&path, &data, CreateMode::PersistentSequential)
            .instrument(span)
            .await?;
        Ok(created.rsplit('/').next().unwrap_or(&created).to_string())
    }

    /// A worker named `worker_id` (the name is recorded in its claims).
    pub async fn worker(&self, worker_id: &str) -> Result<Worker> {
        Ok(Worker {
            queue: self.clone(),
            id: worker_id.to_string(),
            tasks: self.client.watch_children(&self.dir("tasks"))?,
            claims: self.client.watch_children(&self.dir("claims"))?,
            task_names: BTreeSet::new(),
            claimed: HashSet::new(),
            tried: HashSet::new(),
            listed: (false, false),
        })
    }

    /// A live view of every task; see [`Coordinator`].
    pub fn coordinator(&self) -> Result<Coordinator> {
        Coordinator::start(self)
    }

    /// A one-shot view of every task. Nodes that vanish while being read count as gone.
    pub async fn snapshot(&self) -> Result<QueueSnapshot> {
        let span = tracing::info_span!("zkr.queue.snapshot", root = %self.root);
        async {
            let tasks = read_dir(&self.client, &self.dir("tasks")).await?;
            let claims = read_dir(&self.client, &self.dir("claims")).await?;
            let done = read_dir(&self.client, &self.dir("done")).await?;
            Ok(build_snapshot(&tasks, &claims, &done))
        }
        .instrument(span)
        .await
    }
}

async fn read_dir(client: &Client, dir: &str) -> Result<BTreeMap<String, Vec<u8>>> {
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
                Ok((d, _)) => Ok(Some((c, d))),
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

fn build_snapshot(
    tasks: &BTreeMap<String, Vec<u8>>,
    claims: &BTreeMap<String, Vec<u8>>,
    done: &BTreeMap<String, Vec<u8>>,
) -> QueueSnapshot {
    let mut out = Vec::new();
    for (id, data) in done {
        let Ok(o) = serde_json::from_slice::<Outcome>(data) else {
            continue;
        };
        let failed = o.state == "failed";
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
    for (id, data) in tasks {
        if done.contains_key(id) {
            continue;
        }
        let payload = serde_json::from_slice(data).unwrap_or(Value::Null);
        let progress = claims
            .get(id)
            .and_then(|c| serde_json::from_slice::<Progress>(c).ok());
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

/// Claims tasks of a [`WorkQueue`]. Keeps watches on `tasks/` and `claims/` so that a task
/// freed by a dead worker is seen at once.
pub struct Worker {
    queue: WorkQueue,
    id: String,
    tasks: ChildrenWatch,
    claims: ChildrenWatch,
    task_names: BTreeSet<String>,
    claimed: HashSet<String>,
    /// Tasks whose claim failed since the last listing change.
    tried: HashSet<String>,
    listed: (bool, bool),
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("root", &self.queue.root)
            .finish()
    }
}

enum Attempt {
    Claimed(Box<ClaimedTask>),
    Taken,
}

impl Worker {
    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn apply_tasks(&mut self, ev: zkr::Result<zkr::ChildrenEvent>) {
        if let Ok(ev) = ev {
            self.task_names = ev.children().unwrap_or(&[]).iter().cloned().collect();
            self.listed.0 = true;
            self.tried.clear();
        }
    }

    fn apply_claims(&mut self, ev: zkr::Result<zkr::ChildrenEvent>) {
        if let Ok(ev) = ev {
            self.claimed = ev.children().unwrap_or(&[]).iter().cloned().collect();
            self.listed.1 = true;
            self.tried.clear();
        }
    }

    fn drain(&mut self) -> Result<()> {
        loop {
            let mut any = false;
            match self.tasks.next_event().now_or_never() {
                Some(None) => return Err(Error::Closed("client")),
                Some(Some(ev)) => {
                    self.apply_tasks(ev);
                    any = true;
                }
                None => {}
            }
            match self.claims.next_event().now_or_never() {
                Some(None) => return Err(Error::Closed("client")),
                Some(Some(ev)) => {
                    self.apply_claims(ev);
                    any = true;
                }
                None => {}
            }
            if !any {
                return Ok(());
            }
        }
    }

    /// Tries the unclaimed tasks in order; `None` if none could be claimed right now.
    async fn attempt(&mut self) -> Result<Option<ClaimedTask>> {
        self.drain()?;
        if self.listed != (true, true) {
            return Ok(None);
        }
        let mut candidates: Vec<String> = self
            .task_names
            .iter()
            .filter(|t| !self.claimed.contains(*t) && !self.tried.contains(*t))
            .filter(|t| task_seq(t).is_some())
            .cloned()
            .collect();
        candidates.sort_by_key(|t| task_seq(t));
        for name in candidates {
            match self.claim_one(&name).await? {
                Attempt::Claimed(t) => return Ok(Some(*t)),
                Attempt::Taken => {
                    self.tried.insert(name);
                }
            }
        }
        Ok(None)
    }

    /// Claims one task if one is free now.
    pub async fn try_claim(&mut self) -> Result<Option<ClaimedTask>> {
        let span =
            tracing::info_span!("zkr.queue.try_claim", worker = %self.id, root = %self.queue.root);
        async {
            // The first call needs the initial listings.
            if self.listed != (true, true) {
                let _ = self.wait_event(Duration::from_secs(10)).await?;
            }
            self.attempt().await
        }
        .instrument(span)
        .await
    }

    /// Waits for the next listing change; `false` on timeout.
    async fn wait_event(&mut self, d: Duration) -> Result<bool> {
        let r = tokio::time::timeout(d, async {
            tokio::select! {
                ev = self.tasks.next_event() => ev.map(|e| self.apply_tasks(e)),
                ev = self.claims.next_event() => ev.map(|e| self.apply_claims(e)),
            }
        })
        .await;
        match r {
            Err(_) => Ok(false),
            Ok(None) => Err(Error::Closed("client")),
            Ok(Some(())) => Ok(true),
        }
    }

    /// Claims the next free task, waiting up to `timeout` for one.
    pub async fn claim(&mut self, timeout: Duration) -> Result<ClaimedTask> {
        let span =
            tracing::info_span!("zkr.queue.claim", worker = %self.id, root = %self.queue.root);
        async {
            let deadline = crate::wait::std_deadline_in(timeout);
            loop {
                match self.attempt().await {
                    Ok(Some(t)) => return Ok(t),
                    Ok(None) => {}
                    // The session went away under an attempt: claim in the next one.
                    Err(e) if e.is_zk(|z| z.is_retryable()) => {
                        self.tried.clear();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !self.wait_event(left).await? {
                    return Err(Error::Timeout {
                        what: "claiming a task",
                        after: timeout,
                    });
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn claim_one(&self, name: &str) -> Result<Attempt> {
        let q = &self.queue;
        let pinned = q.client.pinned().await?;
        let session = pinned.session_id().map(|s| s.0).unwrap_or(0);
        let token = uuid::Uuid::new_v4().to_string();
        let progress = Progress {
            worker: self.id.clone(),
            token: token.clone(),
            percent: 0.0,
            message: "claimed".into(),
            updated_at: now_ms(),
        };
        let claim_path = q.node("claims", name);
        let task_path = q.node("tasks", name);
        let data = serde_json::to_vec(&progress).map_err(|e| json_err(&claim_path, e))?;
        let ops = [
            Op::Check {
                path: task_path.clone(),
                version: None,
            },
            Op::Create {
                path: claim_path.clone(),
                data,
                mode: CreateMode::Ephemeral,
            },
        ];
        match pinned.multi(&ops).await {
            Ok(_) => {}
            Err(zkr::Error::MultiFailed { .. }) => return Ok(Attempt::Taken),
            Err(e) if e.is_connection_loss() => {
                // Outcome unknown: the claim is ours iff it is owned by our session with our token.
                let policy = conn_retry(&pinned);
                let r = policy
                    .run_if(|e| e.is_connection_loss(), || pinned.get_data(&claim_path))
                    .await;
                match r {
                    Ok((d, st)) if st.ephemeral_owner == session => {
                        let p: Option<Progress> = serde_json::from_slice(&d).ok();
                        if p.map(|p| p.token != token).unwrap_or(true) {
                            return Ok(Attempt::Taken);
                        }
                    }
                    Ok(_) | Err(zkr::Error::NoNode { .. }) => return Ok(Attempt::Taken),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        // Claimed: the task cannot go away while we hold the claim.
        let policy = conn_retry(&pinned);
        let payload = match policy
            .run_if(|e| e.is_connection_loss(), || pinned.get_data(&task_path))
            .await
        {
            Ok((d, _)) => serde_json::from_slice(&d).unwrap_or(Value::Null),
            Err(e) => {
                // Give the claim back (best effort) and report.
                let _ = pinned.delete(&claim_path, None).await;
                return Err(e.into());
            }
        };
        tracing::debug!(task = name, worker = %self.id, "claimed");
        Ok(Attempt::Claimed(Box::new(ClaimedTask {
            client: q.client.clone(),
            epoch: pinned.epoch().unwrap_or(0),
            queue: q.clone(),
            id: name.to_string(),
            progress,
            issued: AtomicU64::new(0),
            payload,
            finished: false,
        })))
    }
}

fn conn_retry(c: &Client) -> zkr::RetryPolicy {
    zkr::RetryPolicy::exponential(Duration::from_millis(20), Duration::from_millis(500))
        .max_elapsed(c.timeout())
}

/// A task claimed by a worker; see the [module docs](self). Dropping it without completing,
/// failing or releasing gives it back to the queue (in the background).
#[must_use = "the task goes back to the queue when the claim is dropped unfinished"]
pub struct ClaimedTask {
    /// Unpinned: holding a pinned handle would keep the session's wire client alive and
    /// delay `Client::close` (operations pin on demand and check the epoch instead).
    client: Client,
    epoch: u64,
    queue: WorkQueue,
    id: String,
    progress: Progress,
    /// Progress reports issued so far.
    issued: AtomicU64,
    payload: Value,
    finished: bool,
}

impl std::fmt::Debug for ClaimedTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedTask")
            .field("id", &self.id)
            .field("worker", &self.progress.worker)
            .finish()
    }
}

impl ClaimedTask {
    /// The task id (`task-NNNNNNNNNN`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The producer's payload.
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    /// Whether the session holding the claim is gone (the task is back in the queue).
    pub fn is_lost(&self) -> bool {
        self.client.epoch() != Some(self.epoch)
    }

    /// Completes when the session holding the claim ends.
    pub async fn lost(&self) {
        let mut rx = self.client.state_receiver();
        loop {
            let s = *rx.borrow_and_update();
            let ours = s.epoch() == Some(self.epoch) && !matches!(s, SessionState::Lost { .. });
            if !ours || rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A handle pinned to the claim's session, or `SessionLost`.
    async fn pin(&self) -> zkr::Result<Client> {
        let p = self.client.pinned().await?;
        if p.epoch() == Some(self.epoch) {
            Ok(p)
        } else {
            Err(zkr::Error::SessionLost {
                session: 0,
                epoch: self.epoch,
            })
        }
    }

    fn lost_error(&self, e: zkr::Error) -> Error {
        if e.is_session_lost() {
            Error::SessionLost { what: "task" }
        } else {
            e.into()
        }
    }

    /// Reports progress (`percent` 0–100 and a message) in the claim node.
    ///
    /// Takes `&self`, so several reports may be in flight at once (e.g. with
    /// `futures::StreamExt::buffered`): they are sent in call order on one session, so the node
    /// ends with the last one. After a connection loss only the newest report is retried; an
    /// older one that a newer report supersedes returns `Ok` without being re-sent.
    pub async fn progress(&self, percent: f64, message: &str) -> Result<()> {
        let span = tracing::debug_span!("zkr.queue.progress", task = %self.id, percent);
        async {
            let seq = self.issued.fetch_add(1, AtomicOrdering::SeqCst) + 1;
            let p = Progress {
                worker: self.progress.worker.clone(),
                token: self.progress.token.clone(),
                percent: percent.clamp(0.0, 100.0),
                message: message.to_string(),
                updated_at: now_ms(),
            };
            let path = self.queue.node("claims", &self.id);
            let data = serde_json::to_vec(&p).map_err(|e| json_err(&path, e))?;
            let client = self.pin().await.map_err(|e| self.lost_error(e))?;
            let deadline = crate::wait::std_deadline_in(client.timeout());
            let mut delay = Duration::from_millis(20);
            loop {
                match client.set_data(&path, &data, None).await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_connection_loss() && Instant::now() < deadline => {
                        if self.issued.load(AtomicOrdering::SeqCst) != seq {
                            return Ok(()); // a newer report carries the latest progress
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_millis(500));
                    }
                    Err(e) => return Err(self.lost_error(e)),
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Completes the task with `result` (exactly once, atomically with removing the task).
    pub async fn complete(self, result: Value) -> Result<()> {
        self.finish("completed", result, None).await
    }

    /// Marks the task failed (it does not come back to the queue).
    pub async fn fail(self, error: &str) -> Result<()> {
        self.finish("failed", Value::Null, Some(error.to_string()))
            .await
    }

    /// Gives the task back to the queue.
    pub async fn release(mut self) -> Result<()> {
        let path = self.queue.node("claims", &self.id);
        let client = match self.pin().await {
            Ok(c) => c,
            Err(_) => {
                self.finished = true;
                return Ok(()); // the claim went with the session
            }
        };
        // `finished` is set only once the claim is gone: a release dropped mid-way (or failed)
        // is finished by the drop handler in the background.
        let r = match conn_retry(&client)
            .run_if(|e| e.is_connection_loss(), || client.delete(&path, None))
            .await
        {
            Ok(()) | Err(zkr::Error::NoNode { .. }) => Ok(()),
            Err(e) if e.is_session_lost() => Ok(()), // the claim went with the session
            Err(e) => Err(e.into()),
        };
        self.finished = r.is_ok();
        r
    }

    async fn finish(mut self, state: &str, result: Value, error: Option<String>) -> Result<()> {
        let span = tracing::info_span!("zkr.queue.finish", task = %self.id, state);
        let outcome = Outcome {
            worker: self.progress.worker.clone(),
            token: self.progress.token.clone(),
            state: state.to_string(),
            result,
            error,
            payload: self.payload.clone(),
            finished_at: now_ms(),
        };
        let done_path = self.queue.node("done", &self.id);
        let data = serde_json::to_vec(&outcome).map_err(|e| json_err(&done_path, e))?;
        let ops = [
            Op::Delete {
                path: self.queue.node("claims", &self.id),
                version: None,
            },
            Op::Delete {
                path: self.queue.node("tasks", &self.id),
                version: None,
            },
            Op::Create {
                path: done_path.clone(),
                data,
                mode: CreateMode::Persistent,
            },
        ];
        // `finished` is set only once the outcome is known: a finish dropped mid-way leaves the
        // drop handler to release the claim (the task goes back to the queue, unless our multi
        // already ran, in which case the claim is gone and `done/` holds our outcome).
        let r = async {
            let deadline = crate::wait::std_deadline_in(self.client.timeout());
            loop {
                let r = match self.pin().await {
                    Ok(client) => client.multi(&ops).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_connection_loss() || e.is_session_lost() => {
                        // Outcome unknown: did our multi run?
                        match self.ours_done(&done_path).await {
                            Ok(true) => return Ok(()),
                            Ok(false) if e.is_session_lost() || self.is_lost() => {
                                return Err(Error::SessionLost { what: "task" })
                            }
                            Ok(false) if Instant::now() < deadline => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Ok(false) => return Err(e.into()),
                            Err(_) if Instant::now() < deadline => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(err) => return Err(err),
                        }
                    }
                    Err(e) => return Err(self.lost_error(e)),
                }
            }
        }
        .instrument(span)
        .await;
        self.finished = true;
        r
    }

    /// Whether `done/x` holds our outcome (read through any live session).
    async fn ours_done(&self, done_path: &str) -> Result<bool> {
        match self.client.get_data(done_path).await {
            Ok((d, _)) => Ok(serde_json::from_slice::<Outcome>(&d)
                .map(|o| o.token == self.progress.token)
                .unwrap_or(false)),
            Err(zkr::Error::NoNode { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for ClaimedTask {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let client = self.client.clone();
        let epoch = self.epoch;
        let path = self.queue.node("claims", &self.id);
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let Ok(client) = client.pinned().await else {
                    return;
                };
                if client.epoch() != Some(epoch) {
                    return; // the claim went with its session
                }
                let _ = conn_retry(&client)
                    .run_if(|e| e.is_connection_loss(), || client.delete(&path, None))
                    .await;
            });
        }
    }
}

type Shared = Option<Arc<QueueSnapshot>>;

/// A live view of every task of a queue: a `Stream` of [`QueueSnapshot`]s (state, owner,
/// progress of each task), coalesced. Dropping it removes its watches.
#[must_use = "the coordinator stops watching when dropped"]
pub struct Coordinator {
    rx: watch::Receiver<Shared>,
    stream: crate::wait::Snapshots<QueueSnapshot>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").finish_non_exhaustive()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Coordinator {
    fn start(q: &WorkQueue) -> Result<Coordinator> {
        let tasks = ChildCache::new(&q.client, &q.dir("tasks"), false)?;
        let claims = ChildCache::new(&q.client, &q.dir("claims"), true)?;
        let done = ChildCache::new(&q.client, &q.dir("done"), false)?;
        let (tx, rx) = watch::channel::<Shared>(None);
        let span = tracing::info_span!("zkr.queue.coordinator", root = %q.root);
        let task = tokio::spawn(coordinate(tasks, claims, done, tx).instrument(span));
        let stream = crate::wait::loaded_snapshots(rx.clone());
        Ok(Coordinator { rx, stream, task })
    }

    /// The latest view, `None` before the first load completed.
    pub fn current(&self) -> Option<QueueSnapshot> {
        self.rx.borrow().as_ref().map(|s| s.as_ref().clone())
    }

    /// Waits until the view satisfies `pred`; returns that view.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&QueueSnapshot) -> bool,
    ) -> Result<QueueSnapshot> {
        crate::wait::wait_until(
            &self.rx,
            timeout,
            "coordinator condition",
            "coordinator",
            |snap| {
                snap.as_ref()
                    .filter(|s| pred(s))
                    .map(|s| s.as_ref().clone())
            },
        )
        .await
    }
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
        let data = |c: &ChildCache| -> BTreeMap<String, Vec<u8>> {
            c.nodes
                .iter()
                .map(|(k, (d, _))| (k.clone(), d.clone()))
                .collect()
        };
        let snap = build_snapshot(&data(&tasks), &data(&claims), &data(&done));
        if last.as_ref() != Some(&snap) {
            last = Some(snap.clone());
            if tx.send(Some(Arc::new(snap))).is_err() {
                return;
            }
        }
    }
}
