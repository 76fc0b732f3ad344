//! Workers and the tasks they claim.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::Value;
use tracing::Instrument;
use zkr::{ChildrenWatch, Client, CreateMode, Op, ReadOp, ReadResult, SessionId, SessionState};

use super::schema::{json_err, task_seq, Outcome, Progress, COMPLETED, FAILED};
use super::{conn_retry, WorkQueue};
use crate::error::{Error, Result};
use crate::hold::Fence;
use crate::registration::now_ms;

/// How long [`Worker::try_claim`] waits for the first listings of the queue.
const FIRST_LISTING: Duration = Duration::from_secs(10);

/// Claims tasks of a [`WorkQueue`]. Keeps watches on `tasks/` and `claims/` so that a task
/// freed by a dead worker is seen at once.
#[must_use = "a worker does nothing unless it claims"]
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
    pub(super) fn new(queue: &WorkQueue, worker_id: &str) -> Result<Worker> {
        Ok(Worker {
            queue: queue.clone(),
            id: worker_id.to_string(),
            tasks: queue.client.watch_children(&queue.dir("tasks"))?,
            claims: queue.client.watch_children(&queue.dir("claims"))?,
            task_names: BTreeSet::new(),
            claimed: HashSet::new(),
            tried: HashSet::new(),
            listed: (false, false),
        })
    }

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

    /// Claims one task if one is free now (on the first call, after waiting up to 10 s for
    /// the queue's first listings).
    ///
    /// # Errors
    /// [`Error::Closed`] if the client is closed; [`Error::Zk`] if a claim fails with a
    /// ZooKeeper error (e.g. no session).
    ///
    /// # Cancel safety
    /// Cancel-safe: a claim whose create was sent when the future is dropped is given back in
    /// the background (its task returns to the queue).
    pub async fn try_claim(&mut self) -> Result<Option<ClaimedTask>> {
        let span = tracing::info_span!("zkr.work_queue.try_claim", worker = %self.id, root = %self.queue.root);
        async {
            // The first call needs the initial listings.
            if self.listed != (true, true) {
                let _ = self
                    .wait_event(crate::wait::deadline_in(FIRST_LISTING))
                    .await?;
            }
            self.attempt().await
        }
        .instrument(span)
        .await
    }

    /// Waits for the next listing change until `deadline` (`None`: as long as it takes);
    /// `false` once the deadline passed.
    async fn wait_event(&mut self, deadline: Option<tokio::time::Instant>) -> Result<bool> {
        let next = async {
            tokio::select! {
                ev = self.tasks.next_event() => ev.map(|e| self.apply_tasks(e)),
                ev = self.claims.next_event() => ev.map(|e| self.apply_claims(e)),
            }
        };
        let r = match deadline {
            Some(d) => match tokio::time::timeout_at(d, next).await {
                Ok(r) => r,
                Err(_) => return Ok(false),
            },
            None => next.await,
        };
        match r {
            None => Err(Error::Closed("client")),
            Some(()) => Ok(true),
        }
    }

    /// Claims the next free task, waiting as long as it takes for one.
    ///
    /// # Errors
    /// [`Error::Closed`] if the client is closed; [`Error::Zk`] for a ZooKeeper error that
    /// retrying cannot fix (errors of a session going away are retried in the next session).
    ///
    /// # Cancel safety
    /// Cancel-safe: a claim whose create was sent when the future is dropped is given back in
    /// the background (its task returns to the queue).
    pub async fn claim(&mut self) -> Result<ClaimedTask> {
        self.claim_until(None, Duration::MAX).await
    }

    /// [`claim`](Self::claim), giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`; otherwise as [`claim`](Self::claim).
    ///
    /// # Cancel safety
    /// As [`claim`](Self::claim).
    pub async fn claim_timeout(&mut self, timeout: Duration) -> Result<ClaimedTask> {
        self.claim_until(crate::wait::deadline_in(timeout), timeout)
            .await
    }

    async fn claim_until(
        &mut self,
        deadline: Option<tokio::time::Instant>,
        timeout: Duration,
    ) -> Result<ClaimedTask> {
        let span =
            tracing::info_span!("zkr.work_queue.claim", worker = %self.id, root = %self.queue.root);
        async {
            let mut backoff = crate::retry::backoff(Duration::from_millis(500));
            loop {
                match self.attempt().await {
                    Ok(Some(t)) => return Ok(t),
                    Ok(None) => {}
                    // The session went away under an attempt: claim in the next one.
                    Err(e) if e.is_zk(|z| z.is_retryable()) => {
                        self.tried.clear();
                        backoff.wait().await;
                    }
                    Err(e) => return Err(e),
                }
                let timed_out = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
                if timed_out || !self.wait_event(deadline).await? {
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
        q.ensure_dirs().await?;
        let pinned = q.client.pinned().await?;
        let session = pinned.session_id().unwrap_or(SessionId(0));
        let epoch = pinned.epoch().unwrap_or(0);
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
        // From here until a `ClaimedTask` owns the claim, dropping this future (or an error)
        // gives back a claim node that carries our token, in the background.
        let mut pending = PendingClaim(Some(Claim {
            client: q.client.clone(),
            epoch,
            session,
            path: claim_path.clone(),
            token: token.clone(),
        }));
        match pinned.multi(&ops).await {
            Ok(_) => {}
            Err(zkr::Error::MultiFailed { .. }) => {
                pending.disarm();
                return Ok(Attempt::Taken);
            }
            Err(e) if e.is_connection_loss() => {
                // Outcome unknown: the claim is ours iff it is owned by our session with our
                // token; the read below tells.
            }
            Err(e) => return Err(e.into()),
        }
        // Claimed (the task cannot go away while we hold the claim); read its payload and
        // the claim's stat (for the fence) in one request.
        let reads = [
            ReadOp::GetData {
                path: task_path.clone(),
            },
            ReadOp::GetData {
                path: claim_path.clone(),
            },
        ];
        let mut r = conn_retry(&pinned)
            .run_if(|e| e.is_connection_loss(), || pinned.multi_read(&reads))
            .await?
            .into_iter();
        let (task_read, claim_read) = (r.next(), r.next());
        let claim_stat = match claim_read {
            Some(Ok(ReadResult::Data { data, stat }))
                if stat.ephemeral_owner == session.0
                    && serde_json::from_slice::<Progress>(&data)
                        .is_ok_and(|p| p.token == token) =>
            {
                stat
            }
            Some(Ok(_)) | Some(Err(zkr::Error::NoNode { .. })) | None => {
                pending.disarm(); // not ours: taken by someone else (or gone)
                return Ok(Attempt::Taken);
            }
            Some(Err(e)) => return Err(e.into()),
        };
        let payload = match task_read {
            Some(Ok(ReadResult::Data { data, .. })) => {
                serde_json::from_slice(&data).unwrap_or(Value::Null)
            }
            Some(Ok(_)) | None => Value::Null,
            // The pending claim is given back on return.
            Some(Err(e)) => return Err(e.into()),
        };
        tracing::debug!(task = name, worker = %self.id, "claimed");
        let task = ClaimedTask {
            fence: Fence {
                token: claim_stat.czxid,
                path: claim_path,
                session,
            },
            claim: pending.take(),
            epoch,
            queue: q.clone(),
            id: name.to_string(),
            progress,
            issued: AtomicU64::new(0),
            payload,
        };
        Ok(Attempt::Claimed(Box::new(task)))
    }
}

/// What it takes to give a claim back: its node, and the session and token it must carry to
/// still be ours.
#[derive(Clone)]
struct Claim {
    /// Unpinned: holding a pinned handle would keep the session's wire client alive and delay
    /// `Client::close` (operations pin on demand and check the epoch instead).
    client: Client,
    epoch: u64,
    session: SessionId,
    path: String,
    token: String,
}

impl Claim {
    /// Deletes the claim node if it is still ours (our session, our token): a node of another
    /// claim of the same task is never touched. `Ok` too when it is gone or not ours.
    async fn give_back(&self, client: &Client) -> Result<()> {
        let deadline = crate::wait::std_deadline_in(client.timeout());
        let mut backoff = crate::retry::backoff(Duration::from_millis(500));
        loop {
            let r = match client.get_data(&self.path).await {
                Ok((d, st)) => {
                    let ours = st.ephemeral_owner == self.session.0
                        && serde_json::from_slice::<Progress>(&d)
                            .is_ok_and(|p| p.token == self.token);
                    if !ours {
                        return Ok(());
                    }
                    // Version-checked: a progress write in between makes us read again.
                    client.delete(&self.path, Some(st.version)).await
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(()) | Err(zkr::Error::NoNode { .. }) => return Ok(()),
                Err(zkr::Error::BadVersion { .. }) => {}
                Err(e) if e.is_session_lost() => return Ok(()), // it went with the session
                Err(e) if e.is_connection_loss() && Instant::now() < deadline => {
                    backoff.wait().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Gives the claim back in the background, trying again while its session lives.
    fn give_back_in_background(self) {
        let Ok(h) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(path = %self.path, "claim dropped outside a runtime; it goes with the session");
            return;
        };
        h.spawn(async move {
            let mut backoff = crate::retry::backoff(Duration::from_secs(2));
            loop {
                match self.client.pinned().await {
                    Ok(c) if c.epoch() == Some(self.epoch) => match self.give_back(&c).await {
                        Ok(()) => return,
                        Err(e) if e.is_zk(|z| matches!(z, zkr::Error::Closed)) => return,
                        // Cut off for longer than the operation timeout: the claim stays ours
                        // as long as the session lives, so try again (until it ends).
                        Err(e) if e.is_zk(|z| z.is_retryable()) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => {
                            tracing::warn!(path = %self.path, error = %e, "giving back a claim failed");
                            return;
                        }
                    },
                    // Our session is still current but not usable right now: try again.
                    Err(e)
                        if !matches!(e, zkr::Error::Closed)
                            && self.client.epoch() == Some(self.epoch) =>
                    {
                        backoff.wait().await;
                    }
                    _ => return, // the claim went with its session
                }
            }
        });
    }
}

/// A claim whose create may have been sent but that no [`ClaimedTask`] owns yet.
struct PendingClaim(Option<Claim>);

impl PendingClaim {
    fn disarm(&mut self) {
        self.0 = None;
    }

    fn take(mut self) -> Option<Claim> {
        self.0.take()
    }
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.give_back_in_background();
        }
    }
}

/// A task claimed by a worker; see the [module docs](super). Dropping it without completing,
/// failing or releasing gives it back to the queue (in the background).
#[must_use = "the task goes back to the queue when the claim is dropped unfinished"]
pub struct ClaimedTask {
    /// `None` once finished: the claim is gone (completed, failed, released or lost).
    claim: Option<Claim>,
    /// The epoch of the session holding the claim.
    epoch: u64,
    fence: Fence,
    queue: WorkQueue,
    id: String,
    progress: Progress,
    /// Progress reports issued so far.
    issued: AtomicU64,
    payload: Value,
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

    fn client(&self) -> &Client {
        &self.queue.client
    }

    /// The proof of holding the claim: the claim node's `czxid` (a later claim of the same
    /// task gets a larger one), its path and the session that owns it.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Until when the claim is certainly still ours: the lease of the session that holds it
    /// (see [`zkr::Client::valid_until`]); in the past once that session is over.
    pub fn valid_until(&self) -> std::time::Instant {
        self.client()
            .lease_of(self.fence.session)
            .unwrap_or_else(std::time::Instant::now)
    }

    /// Whether the claim may be gone: the session holding it ended (the task is back in the
    /// queue) or its lease ([`valid_until`](Self::valid_until)) ran out, checked at the moment
    /// of the call.
    pub fn is_lost(&self) -> bool {
        self.client().epoch() != Some(self.epoch) || std::time::Instant::now() >= self.valid_until()
    }

    /// Completes when the session holding the claim ends.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn lost(&self) {
        let mut rx = self.client().state_receiver();
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
        let p = self.client().pinned().await?;
        if p.epoch() == Some(self.epoch) {
            Ok(p)
        } else {
            Err(zkr::Error::SessionLost {
                session: self.fence.session.0,
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
    ///
    /// # Errors
    /// [`Error::SessionLost`] once the claim's session is gone; [`Error::Zk`] if the write
    /// fails otherwise (after retrying connection losses within the operation timeout).
    ///
    /// # Cancel safety
    /// Dropped mid-way, the report may or may not have been written; the claim is unaffected.
    pub async fn progress(&self, percent: f64, message: &str) -> Result<()> {
        let span = tracing::debug_span!("zkr.work_queue.progress", task = %self.id, percent);
        async {
            let seq = self.issued.fetch_add(1, AtomicOrdering::SeqCst) + 1;
            let p = Progress {
                worker: self.progress.worker.clone(),
                token: self.progress.token.clone(),
                percent: percent.clamp(0.0, 100.0),
                message: message.to_string(),
                updated_at: now_ms(),
            };
            let path = &self.fence.path;
            let data = serde_json::to_vec(&p).map_err(|e| json_err(path, e))?;
            let client = self.pin().await.map_err(|e| self.lost_error(e))?;
            let deadline = crate::wait::std_deadline_in(client.timeout());
            let mut backoff = crate::retry::backoff(Duration::from_millis(500));
            loop {
                match client.set_data(path, &data, None).await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_connection_loss() && Instant::now() < deadline => {
                        if self.issued.load(AtomicOrdering::SeqCst) != seq {
                            return Ok(()); // a newer report carries the latest progress
                        }
                        backoff.wait().await;
                    }
                    Err(e) => return Err(self.lost_error(e)),
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Completes the task with `result` (exactly once, atomically with removing the task).
    ///
    /// # Errors
    /// [`Error::SessionLost`] if the claim's session ended before the completion ran (the task
    /// is back in the queue); [`Error::Zk`] if it fails otherwise, in which case the claim is
    /// given back (the task returns to the queue, unless the completion did run).
    ///
    /// # Cancel safety
    /// Dropped mid-way, the task ends up either completed (the multi ran) or back in the queue
    /// (the claim is given back in the background), never stuck as claimed.
    pub async fn complete(self, result: Value) -> Result<()> {
        self.finish(COMPLETED, result, None).await
    }

    /// Marks the task failed (it does not come back to the queue).
    ///
    /// # Errors
    /// As [`complete`](Self::complete).
    ///
    /// # Cancel safety
    /// As [`complete`](Self::complete): failed, or back in the queue.
    pub async fn fail(self, error: &str) -> Result<()> {
        self.finish(FAILED, Value::Null, Some(error.to_string()))
            .await
    }

    /// Gives the task back to the queue.
    ///
    /// # Errors
    /// [`Error::Zk`] if the delete fails after retrying (the claim is then given back in the
    /// background, as on drop). A claim already gone with its session is `Ok`.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropped mid-way, the claim is given back in the background, exactly as if
    /// the task had been dropped.
    pub async fn release(mut self) -> Result<()> {
        let span = tracing::info_span!("zkr.work_queue.release", task = %self.id);
        async {
            let r = match self.pin().await {
                Ok(client) => match &self.claim {
                    Some(claim) => claim.give_back(&client).await,
                    None => Ok(()),
                },
                Err(e) if e.is_session_lost() => Ok(()), // the claim went with the session
                Err(e) => Err(e.into()),
            };
            // Finished only once the claim is gone: a release dropped mid-way (or failed) is
            // finished by the drop handler in the background.
            if r.is_ok() {
                self.claim = None;
            }
            r
        }
        .instrument(span)
        .await
    }

    async fn finish(mut self, state: &str, result: Value, error: Option<String>) -> Result<()> {
        let span = tracing::info_span!("zkr.work_queue.finish", task = %self.id, state);
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
                path: self.fence.path.clone(),
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
        // The claim counts as finished only once the outcome is known: a finish dropped
        // mid-way (or failed) leaves the drop handler to give the claim back (the task goes
        // back to the queue, unless our multi already ran, in which case the claim is gone and
        // `done/` holds our outcome).
        let r = async {
            let deadline = crate::wait::std_deadline_in(self.client().timeout());
            let mut backoff = crate::retry::backoff(Duration::from_millis(500));
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
                                backoff.wait().await;
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
        if matches!(r, Ok(()) | Err(Error::SessionLost { .. })) {
            self.claim = None; // done, or gone with the session
        }
        r
    }

    /// Whether `done/x` holds our outcome (read through any live session).
    async fn ours_done(&self, done_path: &str) -> Result<bool> {
        match self.client().get_data(done_path).await {
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
        if let Some(c) = self.claim.take() {
            c.give_back_in_background();
        }
    }
}
