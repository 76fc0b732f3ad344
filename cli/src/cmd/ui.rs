//! `zkr ui`: a live, read-only web view of what runs on ZooKeeper: locks, elections, config
//! nodes, services, work queues, the session, and a plain tree browser.
//!
//! # How
//! One [`TreeCache`] of `--root` (one persistent recursive watch) feeds a *view model*, rebuilt
//! from the cache's snapshot after every change (coalesced: at most one rebuild per
//! [`MIN_REBUILD`]) and after every session state change. The model goes to the browsers as
//! server-sent events on `/events` through a `tokio::sync::watch` channel, so a slow browser
//! only ever skips to the latest model and never holds memory for the others. `/api/state`
//! serves the same JSON once. The page (HTML, JS, CSS) is embedded in the binary; nothing is
//! fetched from the network.
//!
//! # Recognised layouts
//! * **Locks**: children `_c_<uuid>-lock-<seq>` (Curator `InterProcessMutex`, zkr `Mutex`) or
//!   kazoo's `<hex>__lock__<seq>`: the lowest sequence holds; the others wait in order. The
//!   fencing token is the holder node's `czxid`. "Held since" is when this view first saw that
//!   node hold the lock (its creation time for a holder already there when the view started).
//! * **Elections**: children `_c_<uuid>-latch-<seq>` (Curator `LeaderLatch`, zkr `LeaderLatch`),
//!   data = participant id: the lowest sequence leads; its `czxid` is the fence.
//! * **Services**: nodes whose data is a Curator `ServiceInstance` (JSON with `name`, `id`,
//!   `registrationTimeUTC`), grouped by their parent `{base}/{name}`.
//! * **Work queues**: a node with children `tasks` and `claims` (zkr `WorkQueue`): every task's
//!   state (pending, running with worker and percent, completed, failed).
//! * **Config**: any other node whose data is a JSON object or array (zkr `Config`,
//!   `ConfigTree`, Curator/kazoo apps writing JSON).
//! * Everything else: the tree browser (first [`TREE_LIMIT`] nodes in path order).
//!
//! # Session states
//! The page shows the view's own session state. While it is not connected the content may be
//! stale (the cache's status says so); after a reconnect or a new session the cache re-reads the
//! tree and the page catches up.
//!
//! Read-only: the server has no endpoint that writes. It listens on loopback unless `--listen`
//! says otherwise.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use zkr_recipes::{CacheSnapshot, CacheState, CachedNode, Outcome, Progress, TreeCache};

use super::{CliError, Ctx};

/// Nodes listed in the tree browser at most.
pub const TREE_LIMIT: usize = 2000;
/// Model rebuilds happen at most this often (changes in between are coalesced).
pub const MIN_REBUILD: Duration = Duration::from_millis(20);
/// Bytes of node data shown in the tree browser.
const PREVIEW: usize = 160;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// `zkr ui` arguments.
#[derive(clap::Args, Debug)]
pub struct UiArgs {
    /// Address to serve the page on (loopback by default; port 0 picks a free port)
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// The subtree to show
    #[arg(long, default_value = "/", value_name = "PATH")]
    pub root: String,
}

/// Serves the page until Ctrl-C / SIGTERM. Prints one JSON line with the URL once listening.
pub async fn run(ctx: &Ctx, args: &UiArgs) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Other(format!("listening socket: {e}")))?;
    let cache = TreeCache::new(&ctx.client, &args.root)
        .map_err(|e| CliError::Other(format!("tree cache: {e}")))?
        .with_max_data_bytes(64 * 1024);
    cache
        .start()
        .map_err(|e| CliError::Other(format!("tree cache: {e}")))?;
    let (tx, rx) = watch::channel(Arc::new(String::from("{}")));
    let builder = tokio::spawn(feed(ctx.client.clone(), cache, tx));
    let app = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/api/state", get(state))
        .route("/events", get(events))
        .with_state(rx);
    super::print_json_line(&serde_json::json!({
        "event": "listening",
        "url": format!("http://{addr}/"),
        "root": args.root,
    }))?;
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = super::shutdown_signal().await;
        })
        .await;
    builder.abort();
    served.map_err(|e| CliError::Other(format!("web server: {e}")))
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn app_css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS)
}

async fn state(State(rx): State<watch::Receiver<Arc<String>>>) -> impl IntoResponse {
    let body = rx.borrow().as_ref().clone();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn events(
    State(rx): State<watch::Receiver<Arc<String>>>,
) -> Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let model = rx.borrow_and_update().clone();
        Some((Ok(Event::default().data(model.as_str())), (rx, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Rebuilds the model after every cache change and session state change.
async fn feed(client: zkr::Client, cache: TreeCache, tx: watch::Sender<Arc<String>>) {
    let mut updates = cache.subscribe();
    let mut states = client.state_receiver();
    let mut status = cache.changes();
    let mut since: HashMap<String, (String, i64)> = HashMap::new();
    loop {
        let snap = cache.current();
        let model = build(&client, &cache, &snap, &mut since);
        let json = serde_json::to_string(&model).unwrap_or_else(|_| "{}".into());
        tx.send_replace(Arc::new(json));
        let wait = tokio::time::sleep(MIN_REBUILD);
        tokio::select! {
            u = updates.next() => if u.is_none() { return },
            c = states.changed() => if c.is_err() { return },
            c = status.next() => if c.is_none() { return },
        }
        // Coalesce: whatever else arrives within MIN_REBUILD goes into the next rebuild.
        wait.await;
        while let Some(Some(_)) = futures::FutureExt::now_or_never(updates.next()) {}
        states.borrow_and_update();
        while let Some(Some(_)) = futures::FutureExt::now_or_never(status.next()) {}
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The page's whole view model.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    /// The view's own session.
    pub session: SessionView,
    /// The cache's status (`Live`, `Stale`, ...).
    pub cache: String,
    /// The subtree shown.
    pub root: String,
    /// Sequence number of the cache snapshot shown.
    pub seq: u64,
    /// When the model was built (ms since the epoch).
    pub generated_at: i64,
    /// Locks.
    pub locks: Vec<LockView>,
    /// Elections.
    pub elections: Vec<ElectionView>,
    /// Config nodes.
    pub configs: Vec<ConfigView>,
    /// Services.
    pub services: Vec<ServiceView>,
    /// Work queues.
    pub queues: Vec<QueueView>,
    /// The tree browser's nodes (at most [`TREE_LIMIT`]).
    pub tree: Vec<TreeNodeView>,
    /// Number of nodes cached (ZooKeeper's own `/zookeeper` subtree left out).
    pub tree_total: usize,
}

/// The session of `zkr ui` itself.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// `Connected`, `Suspended`, ...
    pub state: String,
    /// Session id in hex.
    pub session: Option<String>,
    /// Epoch (sessions of this process, from 1).
    pub epoch: Option<u64>,
    /// Server.
    pub server: Option<String>,
}

/// A contender of a lock or an election.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Contender {
    /// Node name.
    pub node: String,
    /// Data as text (the participant id for elections).
    pub data: String,
    /// Owner session in hex.
    pub session: String,
    /// Sequence number.
    pub seq: i64,
    /// Creation time (ms).
    pub ctime: i64,
    /// `czxid` (the fencing token / fence of a holder or leader).
    pub czxid: i64,
}

/// A lock.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct LockView {
    /// Lock path.
    pub path: String,
    /// Holder, if any.
    pub holder: Option<Contender>,
    /// Fencing token of the holder (its node's `czxid`).
    pub token: Option<i64>,
    /// Since when (ms) the holder holds, as far as this view knows.
    pub held_since: Option<i64>,
    /// Waiters in order.
    pub waiters: Vec<Contender>,
}

/// An election.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ElectionView {
    /// Election path.
    pub path: String,
    /// Leader id (the leader node's data).
    pub leader: Option<String>,
    /// The leader's fence (its node's `czxid`).
    pub fence: Option<i64>,
    /// Participants in order (leader first).
    pub participants: Vec<Contender>,
}

/// A config node.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    /// Path.
    pub path: String,
    /// The JSON value.
    pub value: Value,
    /// Data version.
    pub version: i32,
    /// Last change (ms).
    pub mtime: i64,
    /// `mzxid` (tells changes apart).
    pub mzxid: i64,
}

/// A service and its instances.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    /// `{base}/{name}`.
    pub path: String,
    /// Service name.
    pub name: String,
    /// Instances (their JSON as registered).
    pub instances: Vec<Value>,
}

/// A work queue.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct QueueView {
    /// Queue root.
    pub path: String,
    /// Tasks in order.
    pub tasks: Vec<TaskRow>,
}

/// One task of a queue.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TaskRow {
    /// `task-NNNNNNNNNN`.
    pub name: String,
    /// `pending`, `running`, `completed`, `failed`.
    pub state: String,
    /// The worker (running or finished tasks).
    pub worker: Option<String>,
    /// Progress 0–100 (100 when completed).
    pub percent: f64,
    /// Progress message or error.
    pub message: Option<String>,
}

/// A node of the tree browser.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TreeNodeView {
    /// Path.
    pub path: String,
    /// Depth below the root.
    pub depth: usize,
    /// The start of the data, as text.
    pub preview: String,
    /// Data length.
    pub len: i32,
    /// Children.
    pub children: i32,
    /// Ephemeral (owner session in hex).
    pub owner: Option<String>,
}

fn hex(session: i64) -> String {
    format!("{session:#x}")
}

fn text(n: &CachedNode) -> String {
    String::from_utf8_lossy(&n.data).into_owned()
}

/// The sequence number at the end of a sequential node's name.
fn seq_of(name: &str) -> Option<i64> {
    let digits = name.get(name.len().checked_sub(10)?..)?;
    if !digits.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return None;
    }
    digits.parse().ok()
}

/// The start of `data` for the tree browser: text when it is printable UTF-8, else hex.
fn preview(data: &[u8]) -> String {
    let printable = |s: &str| !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t');
    match std::str::from_utf8(data) {
        Ok(s) if printable(s) => {
            let mut out = s.to_string();
            if out.len() > PREVIEW {
                let mut cut = PREVIEW;
                while !out.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.truncate(cut);
                out.push('…');
            }
            out
        }
        _ => {
            let shown = &data[..data.len().min(PREVIEW / 2)];
            let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
            let more = if shown.len() < data.len() { "…" } else { "" };
            format!("0x{hex}{more}")
        }
    }
}

fn contender(n: &CachedNode) -> Contender {
    Contender {
        node: n.name().to_string(),
        data: text(n),
        session: hex(n.stat.ephemeral_owner),
        seq: seq_of(n.name()).unwrap_or(i64::MAX),
        ctime: n.stat.ctime,
        czxid: n.stat.czxid,
    }
}

fn is_lock_node(name: &str) -> bool {
    (name.starts_with("_c_") && name.contains("-lock-")) || name.contains("__lock__")
}

fn is_latch_node(name: &str) -> bool {
    name.starts_with("_c_") && name.contains("-latch-")
}

fn is_service_instance(v: &Value) -> bool {
    v.get("name").is_some_and(Value::is_string)
        && v.get("id").is_some_and(Value::is_string)
        && v.get("registrationTimeUTC").is_some()
}

/// Builds the view model from one snapshot. `since` remembers, per lock, the holder node and
/// since when this view has seen it hold.
pub fn build(
    client: &zkr::Client,
    cache: &TreeCache,
    snap: &CacheSnapshot,
    since: &mut HashMap<String, (String, i64)>,
) -> Model {
    let state = client.state();
    let session = SessionView {
        state: format!("{state:?}")
            .split([' ', '{'])
            .next()
            .unwrap_or("")
            .to_string(),
        session: state.session().map(|s| hex(s.0)),
        epoch: state.epoch(),
        server: client.connected_server(),
    };
    let cache_status = match cache.state() {
        CacheState::Failing(e) => format!("Failing: {e}"),
        s => format!("{s:?}"),
    };
    let mut m = Model {
        session,
        cache: cache_status,
        root: cache.path().to_string(),
        seq: snap.seq(),
        generated_at: now_ms(),
        ..Model::default()
    };
    let now = now_ms();
    // Nodes that belong to a recognised recipe are not config.
    let mut claimed: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut services: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut seen_locks = std::collections::HashSet::new();
    for n in snap.iter() {
        if n.path == "/zookeeper" || n.path.starts_with("/zookeeper/") {
            continue;
        }
        m.tree_total += 1;
        let kids = snap.children(&n.path);
        let locks: Vec<Contender> = kids
            .iter()
            .filter(|k| is_lock_node(k.name()))
            .map(|k| contender(k))
            .collect();
        if !locks.is_empty() {
            let mut c = locks;
            c.sort_by_key(|c| c.seq);
            let holder = c.first().cloned();
            let held_since = holder.as_ref().map(|h| {
                let entry = since
                    .entry(n.path.clone())
                    .or_insert_with(|| (h.node.clone(), h.ctime));
                if entry.0 != h.node {
                    *entry = (h.node.clone(), now);
                }
                entry.1
            });
            seen_locks.insert(n.path.clone());
            m.locks.push(LockView {
                path: n.path.clone(),
                token: holder.as_ref().map(|h| h.czxid),
                holder,
                held_since,
                waiters: c.into_iter().skip(1).collect(),
            });
        }
        let latches: Vec<Contender> = kids
            .iter()
            .filter(|k| is_latch_node(k.name()))
            .map(|k| contender(k))
            .collect();
        if !latches.is_empty() {
            let mut c = latches;
            c.sort_by_key(|c| c.seq);
            m.elections.push(ElectionView {
                path: n.path.clone(),
                leader: c.first().map(|l| l.data.clone()),
                fence: c.first().map(|l| l.czxid),
                participants: c,
            });
        }
        let names: Vec<&str> = kids.iter().map(|k| k.name()).collect();
        if names.contains(&"tasks") && names.contains(&"claims") {
            m.queues.push(queue_view(snap, &n.path));
            claimed.insert(format!("{}/", n.path));
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&n.data) {
            if is_service_instance(&v) {
                let parent = zkr::path::parent(&n.path).unwrap_or("/").to_string();
                services.entry(parent).or_default().push(v);
            } else if (v.is_object() || v.is_array())
                && !claimed.iter().any(|p| n.path.starts_with(p.as_str()))
                && !is_lock_node(n.name())
                && !is_latch_node(n.name())
            {
                m.configs.push(ConfigView {
                    path: n.path.clone(),
                    value: v,
                    version: n.stat.version,
                    mtime: n.stat.mtime,
                    mzxid: n.stat.mzxid,
                });
            }
        }
        if m.tree.len() < TREE_LIMIT {
            let depth = match cache.path() {
                "/" if n.path == "/" => 0,
                "/" => n.path.matches('/').count(),
                r => n.path[r.len()..].matches('/').count(),
            };
            let preview = preview(&n.data);
            m.tree.push(TreeNodeView {
                path: n.path.clone(),
                depth,
                preview,
                len: n.stat.data_length,
                children: n.stat.num_children,
                owner: (n.stat.ephemeral_owner != 0).then(|| hex(n.stat.ephemeral_owner)),
            });
        }
    }
    since.retain(|k, _| seen_locks.contains(k));
    m.services = services
        .into_iter()
        .map(|(path, instances)| ServiceView {
            name: path.rsplit('/').next().unwrap_or("").to_string(),
            path,
            instances,
        })
        .collect();
    m
}

fn queue_view(snap: &CacheSnapshot, root: &str) -> QueueView {
    let dir = |d: &str| -> BTreeMap<String, Arc<CachedNode>> {
        snap.children(&zkr::path::join(root, d))
            .into_iter()
            .map(|n| (n.name().to_string(), n.clone()))
            .collect()
    };
    let (tasks, claims, done) = (dir("tasks"), dir("claims"), dir("done"));
    let mut names: Vec<&String> = tasks
        .keys()
        .chain(claims.keys())
        .chain(done.keys())
        .collect();
    names.sort();
    names.dedup();
    let rows = names
        .into_iter()
        .map(|name| {
            if let Some(d) = done.get(name) {
                let o = serde_json::from_slice::<Outcome>(&d.data).ok();
                TaskRow {
                    name: name.clone(),
                    percent: 100.0,
                    state: o
                        .as_ref()
                        .map_or_else(|| "completed".into(), |o| o.state.clone()),
                    worker: o.as_ref().map(|o| o.worker.clone()),
                    message: o.and_then(|o| o.error),
                }
            } else if let Some(c) = claims.get(name) {
                let p = serde_json::from_slice::<Progress>(&c.data).ok();
                TaskRow {
                    name: name.clone(),
                    state: "running".into(),
                    worker: p.as_ref().map(|p| p.worker.clone()),
                    percent: p.as_ref().map_or(0.0, |p| p.percent),
                    message: p.map(|p| p.message),
                }
            } else {
                TaskRow {
                    name: name.clone(),
                    state: "pending".into(),
                    worker: None,
                    percent: 0.0,
                    message: None,
                }
            }
        })
        .collect();
    QueueView {
        path: root.to_string(),
        tasks: rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_and_recipe_names() {
        assert_eq!(seq_of("_c_0f-lock-0000000042"), Some(42));
        assert_eq!(seq_of("task-0000000007"), Some(7));
        assert_eq!(seq_of("short"), None);
        assert!(is_lock_node("_c_6a1e-lock-0000000001"));
        assert!(is_lock_node("a1b2__lock__0000000001"));
        assert!(!is_lock_node("_c_6a1e-latch-0000000001"));
        assert!(is_latch_node("_c_6a1e-latch-0000000001"));
        assert_eq!(preview(b"hello"), "hello");
        assert_eq!(preview(&[0, 0, 0, 12]), "0x0000000c");
        let inst = serde_json::json!({"name":"api","id":"i1","registrationTimeUTC":1});
        assert!(is_service_instance(&inst));
        assert!(!is_service_instance(&serde_json::json!({"name":"x"})));
    }
}
