//! The library workloads: `zkr-soak worker --role ROLE`, one OS process per worker, so that a
//! process pause (SIGSTOP) or a session expiry hits exactly one participant.
//!
//! Each process connects through its own fault proxy (`--zk`), with the soak's session
//! timeout, and appends one JSON line per event to `--events` (`"t"` is CLOCK_MONOTONIC in
//! ms, the clock the soak and its fenced resources use too). Every line is written with one
//! `write` on an append-only file, so a killed process leaves whole lines.
//!
//! | role | what it does | events |
//! |---|---|---|
//! | `ids` | SequentialIds, AtomicCounter increments and IdBlocks (on the counter's node), at random | `id` (`ns`, `v`, `via`), `err` |
//! | `config-pub` | reads `/soak/config`, compare-and-set-publishes `{"v": v+1}` | `ack` (`v`), `nack` (`v`, `e`) |
//! | `config-sub` | subscribes to `/soak/config` | `seen` (`v`, `mzxid`) |
//! | `register` | keeps the service instance `svc/NAME` registered | `status` |
//! | `discover` | watches the instances of `svc` | `set` (`ids`) |
//! | `producer` | puts tasks `{"n": n}` into the work queue | `put` (`n`, `task`), `put-err` |
//! | `queue-worker` | claims, reports progress three times, completes | `claimed`, `completed`, `complete-err`, `lost` |
//! | `inspect` | reads the final state once (config value, queue, instances) and exits | `final` |
//!
//! Every role also writes `session` (id and password, so that the soak can expire the session
//! from outside) whenever a new session starts, and `state` on every session state change.

use futures::StreamExt;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use zkr::{Client, SessionState};
use zkr_recipes::work_queue::WorkQueue;
use zkr_recipes::{
    AtomicCounter, Config, ConfigEvent, Discovery, IdBlocks, Registration, SequentialIds,
    ServiceInstance,
};

/// Where the workloads live.
pub const SEQ_DIR: &str = "/soak/ids/seq";
pub const COUNTER: &str = "/soak/ids/counter";
pub const CONFIG: &str = "/soak/config";
pub const SERVICES: &str = "/soak/services";
pub const SERVICE: &str = "svc";
pub const QUEUE: &str = "/soak/queue";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Role {
    Ids,
    ConfigPub,
    ConfigSub,
    Register,
    Discover,
    Producer,
    QueueWorker,
    Inspect,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Ids => "ids",
            Role::ConfigPub => "config-pub",
            Role::ConfigSub => "config-sub",
            Role::Register => "register",
            Role::Discover => "discover",
            Role::Producer => "producer",
            Role::QueueWorker => "queue-worker",
            Role::Inspect => "inspect",
        }
    }
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    pub role: Role,
    /// Connect string (the worker's own fault proxy)
    #[arg(long)]
    pub zk: String,
    /// Participant name (instance id, worker id)
    #[arg(long)]
    pub name: String,
    /// Append events (JSON lines) here
    #[arg(long)]
    pub events: PathBuf,
    #[arg(long, default_value_t = 4000)]
    pub session_timeout_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// CLOCK_MONOTONIC in ms (the same clock in every process of the soak).
pub fn mono_ms() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as f64 * 1000.0 + t.tv_nsec as f64 / 1_000_000.0
}

struct Events(std::sync::Mutex<File>);

impl Events {
    fn emit(&self, mut v: Value) {
        v["t"] = json!(mono_ms());
        let mut line = v.to_string();
        line.push('\n');
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(line.as_bytes());
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn run(args: &WorkerArgs) -> Result<(), String> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.events)
        .map_err(|e| format!("{}: {e}", args.events.display()))?;
    let events = Arc::new(Events(std::sync::Mutex::new(file)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async move {
        let client = Client::builder(&args.zk)
            .session_timeout(Duration::from_millis(args.session_timeout_ms))
            .connect()
            .await
            .map_err(|e| format!("connect {}: {e}", args.zk))?;
        tokio::spawn(follow_session(client.clone(), events.clone()));
        let mut rng = StdRng::seed_from_u64(args.seed);
        match args.role {
            Role::Ids => ids(&client, &events, &mut rng).await,
            Role::ConfigPub => config_pub(&client, &events, &mut rng).await,
            Role::ConfigSub => config_sub(&client, &events).await,
            Role::Register => register(&client, &events, &args.name).await,
            Role::Discover => discover(&client, &events).await,
            Role::Producer => producer(&client, &events, &mut rng).await,
            Role::QueueWorker => queue_worker(&client, &events, &args.name, &mut rng).await,
            Role::Inspect => inspect(&client, &events).await,
        }
    })
}

/// Writes `session` (with the credentials) on every new session and `state` on every change.
async fn follow_session(client: Client, events: Arc<Events>) {
    let mut rx = client.state_receiver();
    loop {
        let state = *rx.borrow_and_update();
        events.emit(json!({"ev": "state", "s": format!("{state:?}")}));
        if let SessionState::Connected { session, epoch } = state {
            if let Ok((id, passwd)) = client.session_credentials_for_testing().await {
                if id == session {
                    events.emit(json!({
                        "ev": "session", "id": id.0, "passwd": hex(&passwd), "epoch": epoch,
                    }));
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn pause(rng: &mut StdRng, lo: u64, hi: u64) {
    tokio::time::sleep(Duration::from_millis(rng.gen_range(lo..=hi))).await;
}

async fn ids(client: &Client, events: &Events, rng: &mut StdRng) -> Result<(), String> {
    let seq = SequentialIds::new(client, SEQ_DIR).map_err(|e| e.to_string())?;
    let counter = AtomicCounter::new(client, COUNTER)
        .map_err(|e| e.to_string())?
        .with_timeout(Duration::from_secs(10));
    let blocks = IdBlocks::new(client, COUNTER, 10).map_err(|e| e.to_string())?;
    loop {
        let (via, ns, r) = match rng.gen_range(0..3) {
            0 => ("seq", "seq", seq.next().await),
            1 => ("inc", "counter", counter.increment().await.map(|v| v.post)),
            _ => ("block", "counter", blocks.next().await),
        };
        match r {
            Ok(v) => events.emit(json!({"ev": "id", "ns": ns, "via": via, "v": v})),
            Err(e) => {
                events.emit(json!({"ev": "err", "via": via, "e": e.to_string()}));
                pause(rng, 100, 200).await;
            }
        }
        pause(rng, 20, 60).await;
    }
}

async fn config_pub(client: &Client, events: &Events, rng: &mut StdRng) -> Result<(), String> {
    let config: Config<Value> = Config::new(client, CONFIG).map_err(|e| e.to_string())?;
    loop {
        pause(rng, 50, 150).await;
        let current = match config.get_timeout(Duration::from_secs(10)).await {
            Ok(c) => c,
            Err(e) => {
                events.emit(json!({"ev": "err", "op": "get", "e": e.to_string()}));
                continue;
            }
        };
        let (v, expected) = match current {
            Some(c) => (c.value["v"].as_i64().unwrap_or(0) + 1, Some(c.version)),
            None => (1, None),
        };
        match config.publish_cas(&json!({ "v": v }), expected).await {
            Ok(stat) => events.emit(json!({"ev": "ack", "v": v, "mzxid": stat.mzxid})),
            Err(e) => events.emit(json!({"ev": "nack", "v": v, "e": e.to_string()})),
        }
    }
}

async fn config_sub(client: &Client, events: &Events) -> Result<(), String> {
    let config: Config<Value> = Config::new(client, CONFIG).map_err(|e| e.to_string())?;
    let mut sub = config.subscribe().map_err(|e| e.to_string())?;
    while let Some(ev) = sub.next().await {
        match ev {
            ConfigEvent::Value(c) => events.emit(json!({
                "ev": "seen", "v": c.value["v"].as_i64(), "mzxid": c.mzxid, "stale": c.stale,
            })),
            ConfigEvent::Absent => events.emit(json!({"ev": "absent"})),
            ConfigEvent::Invalid { error, .. } => {
                events.emit(json!({"ev": "invalid", "e": error.to_string()}))
            }
            ConfigEvent::Error(e) => events.emit(json!({"ev": "err", "e": e.to_string()})),
            ConfigEvent::Stale => events.emit(json!({"ev": "stale"})),
            ConfigEvent::Fresh => events.emit(json!({"ev": "fresh"})),
            // The worker keeps up; should it not, the next value still comes.
            ConfigEvent::Lagged { .. } => {}
        }
    }
    Err("the subscription ended".into())
}

async fn register(client: &Client, events: &Events, name: &str) -> Result<(), String> {
    let instance = ServiceInstance::new(SERVICE, name).with_port(8080);
    let registration = Registration::new(client, SERVICES, instance).map_err(|e| e.to_string())?;
    // A failed start may be tried again.
    while let Err(e) = registration.start().await {
        events.emit(json!({"ev": "err", "op": "register", "e": e.to_string()}));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut changes = registration.changes();
    while let Some(state) = changes.next().await {
        events.emit(json!({"ev": "status", "s": format!("{state:?}")}));
    }
    Err("the registration ended".into())
}

async fn discover(client: &Client, events: &Events) -> Result<(), String> {
    let mut discovery = Discovery::new(client, SERVICES, SERVICE).map_err(|e| e.to_string())?;
    discovery.start().map_err(|e| e.to_string())?;
    loop {
        match discovery.next_timeout(Duration::from_secs(3600)).await {
            Ok(Some(set)) => {
                let ids: Vec<&str> = set.iter().map(|i| i.id.as_str()).collect();
                events.emit(json!({"ev": "set", "ids": ids}));
            }
            Ok(None) => return Err("the discovery stream ended".into()),
            Err(e) => events.emit(json!({"ev": "err", "e": e.to_string()})),
        }
    }
}

async fn open_queue(client: &Client, events: &Events) -> WorkQueue {
    loop {
        match WorkQueue::new(client, QUEUE) {
            Ok(q) => return q,
            Err(e) => {
                events.emit(json!({"ev": "err", "op": "open", "e": e.to_string()}));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn producer(client: &Client, events: &Events, rng: &mut StdRng) -> Result<(), String> {
    let queue = open_queue(client, events).await;
    for n in 1.. {
        match queue.put(&json!({ "n": n })).await {
            Ok(task) => events.emit(json!({"ev": "put", "n": n, "task": task})),
            Err(e) => events.emit(json!({"ev": "put-err", "n": n, "e": e.to_string()})),
        }
        pause(rng, 150, 300).await;
    }
    Ok(())
}

async fn queue_worker(
    client: &Client,
    events: &Events,
    name: &str,
    rng: &mut StdRng,
) -> Result<(), String> {
    let queue = open_queue(client, events).await;
    let mut worker = loop {
        match queue.worker(name) {
            Ok(w) => break w,
            Err(e) => {
                events.emit(json!({"ev": "err", "op": "worker", "e": e.to_string()}));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    loop {
        let task = match worker.claim_timeout(Duration::from_secs(2)).await {
            Ok(t) => t,
            Err(zkr_recipes::Error::Timeout { .. }) => continue,
            Err(e) => {
                events.emit(json!({"ev": "err", "op": "claim", "e": e.to_string()}));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = task.id().to_string();
        let n = task.payload()["n"].as_i64();
        events.emit(json!({"ev": "claimed", "task": id, "n": n}));
        let mut lost = false;
        for percent in [25.0, 50.0, 75.0] {
            pause(rng, 30, 120).await;
            if let Err(e) = task.progress(percent, "working").await {
                events.emit(json!({"ev": "lost", "task": id, "e": e.to_string()}));
                lost = true;
                break;
            }
        }
        if lost {
            continue;
        }
        match task.complete(json!({ "by": name })).await {
            Ok(()) => events.emit(json!({"ev": "completed", "task": id, "n": n})),
            Err(e) => events.emit(json!({"ev": "complete-err", "task": id, "e": e.to_string()})),
        }
    }
}

async fn inspect(client: &Client, events: &Events) -> Result<(), String> {
    let config: Config<Value> = Config::new(client, CONFIG).map_err(|e| e.to_string())?;
    let value = config
        .get_timeout(Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?
        .and_then(|c| c.value["v"].as_i64());
    let queue = WorkQueue::new(client, QUEUE).map_err(|e| e.to_string())?;
    let snapshot = queue.snapshot().await.map_err(|e| e.to_string())?;
    let tasks: Vec<Value> = snapshot
        .tasks
        .iter()
        .map(|t| {
            json!({
                "task": t.id, "state": t.state, "owner": t.owner, "n": t.payload["n"].as_i64(),
            })
        })
        .collect();
    let instances = Discovery::instances(client, SERVICES, SERVICE)
        .await
        .map_err(|e| e.to_string())?;
    let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    events.emit(json!({"ev": "final", "config": value, "tasks": tasks, "instances": ids}));
    client.close().await;
    Ok(())
}
