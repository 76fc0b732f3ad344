//! The JSON formats of the queue's nodes. Payloads and results are any JSON; the records below
//! are what zkr itself writes, with camelCase field names.
//!
//! * `tasks/task-NNNNNNNNNN`: the task record is the producer's payload, as given to
//!   [`WorkQueue::put`](super::WorkQueue::put).
//! * `claims/task-NNNNNNNNNN`: the worker record, a [`Progress`].
//! * `done/task-NNNNNNNNNN`: the outcome record, an [`Outcome`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;

/// The name prefix of every task node (`task-NNNNNNNNNN`).
pub(super) const TASK_PREFIX: &str = "task-";

/// [`Outcome::state`] of a completed task.
pub(super) const COMPLETED: &str = "completed";

/// [`Outcome::state`] of a failed task.
pub(super) const FAILED: &str = "failed";

/// The worker record in a claim node: who runs the task and how far it got.
/// `{"worker":"w1","token":"<uuid>","percent":40.0,"message":"..","updatedAt":ms}`.
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

/// The outcome record in a done node.
/// `{"worker":"w1","token":"<uuid>","state":"completed"|"failed","result":..,"error":..,
/// "payload":<task payload>,"finishedAt":ms}`.
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

pub(super) fn json_err(path: &str, e: serde_json::Error) -> Error {
    Error::Payload {
        path: path.to_string(),
        reason: e.to_string(),
    }
}

/// The sequence of a task name, for ordering.
pub(super) fn task_seq(name: &str) -> Option<i64> {
    name.strip_prefix(TASK_PREFIX)?.parse::<i64>().ok()
}
