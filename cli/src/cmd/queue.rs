//! `zkr queue put|work|status PATH`: the work queue with progress reporting
//! (`zkr_recipes::WorkQueue`).
//!
//! * `put PATH JSON` adds a task and prints `{"id":"task-NNNNNNNNNN"}`.
//! * `work PATH [--worker ID] [--count N] [--exec CMD]` claims tasks one after another (waiting
//!   for new ones) until Ctrl-C or N tasks. Without `--exec` each task is "worked" in
//!   `--steps` steps of `--step-ms` ms, reporting progress after each. With `--exec` the shell
//!   command runs with the payload on stdin (and in `$ZKR_TASK_PAYLOAD`, the id in
//!   `$ZKR_TASK_ID`); every stdout line `progress PERCENT [MESSAGE]` is reported as progress;
//!   exit status 0 completes the task (result: the last other stdout line), anything else fails
//!   it. One JSON line per claimed / completed / failed task.
//! * `status PATH [--watch]` prints every task (state, owner, progress, result) as one JSON
//!   line; `--watch` prints one per change until Ctrl-C (or `--count N` lines). When stdout is
//!   a terminal, `--watch` redraws progress bars instead (one line per task).

use std::time::Duration;

use serde_json::{json, Value};
use zkr_recipes::{ClaimedTask, WorkQueue};

use super::config::recipe_err;
use super::{
    follow, log_session_states, print_json_line, print_raw, shutdown_signal, CliError, Ctx,
};

/// `zkr queue ...`
#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    /// What to do.
    #[command(subcommand)]
    pub op: QueueOp,
}

/// The `queue` operations.
#[derive(clap::Subcommand, Debug)]
pub enum QueueOp {
    /// Add a task (JSON payload; `-` reads stdin) and print its id
    Put {
        /// Queue root
        path: String,
        /// The task's JSON payload
        json: String,
    },
    /// Claim and work tasks until Ctrl-C (or --count tasks)
    Work {
        /// Queue root
        path: String,
        /// Worker id recorded in claims (default: zkr-<pid>)
        #[arg(long)]
        worker: Option<String>,
        /// Exit after N tasks
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Shell command doing the work (see the module docs)
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
        /// Without --exec: progress steps per task
        #[arg(long, default_value_t = 10)]
        steps: u32,
        /// Without --exec: milliseconds per step
        #[arg(long, default_value_t = 200)]
        step_ms: u64,
    },
    /// Print every task's state, owner and progress
    Status {
        /// Queue root
        path: String,
        /// One line per change until Ctrl-C
        #[arg(long)]
        watch: bool,
        /// With --watch: exit after N lines
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

impl QueueOp {
    /// The queue root.
    pub fn path(&self) -> &str {
        match self {
            QueueOp::Put { path, .. }
            | QueueOp::Work { path, .. }
            | QueueOp::Status { path, .. } => path,
        }
    }
}

/// Runs `zkr queue ...`. `input` is the JSON of `put`, read before connecting.
pub async fn run(ctx: &Ctx, args: &QueueArgs, input: &[u8]) -> Result<(), CliError> {
    let q = WorkQueue::new(&ctx.client, args.op.path()).map_err(recipe_err)?;
    match &args.op {
        QueueOp::Put { .. } => {
            let payload: Value = serde_json::from_slice(input)
                .map_err(|e| CliError::Usage(format!("the task is not valid JSON: {e}")))?;
            let id = q.put(&payload).await.map_err(recipe_err)?;
            print_json_line(&json!({ "id": id }))
        }
        QueueOp::Status { watch, count, .. } => {
            if !watch {
                let s = q.snapshot().await.map_err(recipe_err)?;
                return print_json_line(&s);
            }
            let coord = q.coordinator().map_err(recipe_err)?;
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                let path = args.op.path().to_string();
                return follow(&ctx.client, coord, *count, |s| {
                    print_raw(render_bars(&path, &s, 30).as_bytes()).map(|_| true)
                })
                .await;
            }
            follow(&ctx.client, coord, *count, |s| {
                print_json_line(&s).map(|_| true)
            })
            .await
        }
        QueueOp::Work {
            worker,
            count,
            exec,
            steps,
            step_ms,
            ..
        } => {
            let _states = log_session_states(&ctx.client);
            let id = worker
                .clone()
                .unwrap_or_else(|| format!("zkr-{}", std::process::id()));
            let mut w = q.worker(&id).map_err(recipe_err)?;
            let shutdown = shutdown_signal();
            tokio::pin!(shutdown);
            let mut worked = 0u64;
            while !count.is_some_and(|c| worked >= c) {
                let task = tokio::select! {
                    r = &mut shutdown => return r,
                    t = w.claim() => t,
                };
                let task = task.map_err(recipe_err)?;
                print_json_line(
                    &json!({"event": "claimed", "task": task.id(), "worker": id, "payload": task.payload()}),
                )?;
                let tid = task.id().to_string();
                let outcome = tokio::select! {
                    r = &mut shutdown => {
                        // The dropped task is given back to the queue (and its claim goes
                        // with the session when the client closes).
                        print_json_line(&json!({"event": "released", "task": tid}))?;
                        return r;
                    }
                    o = work(task, exec.as_deref(), *steps, *step_ms) => o,
                };
                match outcome {
                    Ok(line) => print_json_line(&line)?,
                    Err(e) => print_json_line(
                        &json!({"event": "lost", "task": tid, "error": e.to_string()}),
                    )?,
                }
                worked += 1;
            }
            Ok(())
        }
    }
}

/// Works one task; the JSON line to print on success.
async fn work(
    task: ClaimedTask,
    exec: Option<&str>,
    steps: u32,
    step_ms: u64,
) -> Result<Value, zkr_recipes::Error> {
    let id = task.id().to_string();
    let Some(cmd) = exec else {
        let steps = steps.max(1);
        for s in 1..=steps {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(step_ms)) => {}
                _ = task.lost() => return Err(zkr_recipes::Error::SessionLost { what: "task" }),
            }
            let pct = 100.0 * f64::from(s) / f64::from(steps);
            task.progress(pct, &format!("step {s}/{steps}")).await?;
        }
        task.complete(json!({"steps": steps})).await?;
        return Ok(json!({"event": "completed", "task": id}));
    };
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let payload = serde_json::to_string(task.payload()).unwrap_or_default();
    let mut child = match tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("ZKR_TASK_ID", &id)
        .env("ZKR_TASK_PAYLOAD", &payload)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot run {cmd:?}: {e}");
            task.fail(&msg).await?;
            return Ok(json!({"event": "failed", "task": id, "error": msg}));
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(payload.as_bytes()).await;
    }
    let mut last = String::new();
    if let Some(out) = child.stdout.take() {
        let mut lines = tokio::io::BufReader::new(out).lines();
        loop {
            let line = tokio::select! {
                l = lines.next_line() => l,
                _ = task.lost() => return Err(zkr_recipes::Error::SessionLost { what: "task" }),
            };
            let Ok(Some(line)) = line else { break };
            let mut parts = line.splitn(3, ' ');
            if parts.next() == Some("progress") {
                if let Some(Ok(pct)) = parts.next().map(str::parse::<f64>) {
                    task.progress(pct, parts.next().unwrap_or("")).await?;
                    continue;
                }
            }
            last = line;
        }
    }
    let status = child.wait().await;
    match status {
        Ok(s) if s.success() => {
            task.complete(json!({"output": last})).await?;
            Ok(json!({"event": "completed", "task": id}))
        }
        other => {
            let msg = match other {
                Ok(s) => format!("command exited with {s}"),
                Err(e) => format!("command failed: {e}"),
            };
            task.fail(&msg).await?;
            Ok(json!({"event": "failed", "task": id, "error": msg}))
        }
    }
}

/// One screen of progress bars (clears the terminal first): a header with the counts, then one
/// line per task: id, state, a bar `width` cells wide, percent, worker and message or error.
pub fn render_bars(path: &str, s: &zkr_recipes::QueueSnapshot, width: usize) -> String {
    use zkr_recipes::TaskState;
    let count = |st| s.count(st);
    let mut out = format!(
        "\x1b[H\x1b[2J{path}: {} pending, {} running, {} completed, {} failed\n",
        count(TaskState::Pending),
        count(TaskState::Running),
        count(TaskState::Completed),
        count(TaskState::Failed)
    );
    for t in &s.tasks {
        let (state, pct) = match t.state {
            TaskState::Pending => ("pending", 0.0),
            TaskState::Running => ("running", t.percent.unwrap_or(0.0)),
            TaskState::Completed => ("completed", 100.0),
            TaskState::Failed => ("failed", t.percent.unwrap_or(0.0)),
        };
        let pct = pct.clamp(0.0, 100.0);
        // Whole cells, rounded down: a bar is full only at 100 %.
        let full = ((pct / 100.0) * width as f64).floor() as usize;
        let bar = format!(
            "{}{}",
            "#".repeat(full),
            "-".repeat(width - full.min(width))
        );
        let note = t
            .error
            .as_deref()
            .or(t.message.as_deref())
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<16} {:<9} [{bar}] {:>5.1}% {:<12} {note}\n",
            t.id,
            state,
            pct,
            t.owner.as_deref().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use zkr_recipes::{QueueSnapshot, TaskState, TaskView};

    fn task(id: &str, state: TaskState, percent: Option<f64>) -> TaskView {
        TaskView {
            id: id.into(),
            state,
            payload: Value::Null,
            owner: Some("w1".into()),
            percent,
            message: Some("working".into()),
            result: None,
            error: None,
        }
    }

    #[test]
    fn bars_show_state_and_progress() {
        let s = QueueSnapshot {
            tasks: vec![
                task("task-0000000001", TaskState::Running, Some(40.0)),
                task("task-0000000002", TaskState::Completed, None),
                task("task-0000000003", TaskState::Pending, None),
            ],
        };
        let out = render_bars("/jobs", &s, 10);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with("/jobs: 1 pending, 1 running, 1 completed, 0 failed"));
        assert!(
            lines[1].contains("running   [####------]  40.0% w1"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("[##########] 100.0%"), "{}", lines[2]);
        assert!(lines[3].contains("[----------]   0.0%"), "{}", lines[3]);
    }
}
