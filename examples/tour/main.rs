//! A guided tour of zkr, printed as a timeline.
//!
//! Run it with `scripts/demo` (or `cargo run --release --example tour`). With `ZK_SERVERS` set
//! it uses that ensemble; otherwise it starts a throwaway 3-member ZooKeeper ensemble on
//! loopback and stops it at the end.
//!
//! One chapter per module: `session.rs` (the session layer), then one per recipe.

use std::time::{Duration, Instant};

use zkr::{Client, DataWatch, SessionState, SessionStates};
use zkr_testing::{FaultProxy, ZkEnsemble};

mod config;
mod election;
mod locks;
mod session;
mod workers;

/// Prints the tour as a timeline.
pub struct Timeline(Instant);

impl Timeline {
    pub fn say(&self, what: impl AsRef<str>) {
        println!(
            "[{:>7.3}s] {}",
            self.0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

/// What every chapter gets: the timeline, the ensemble (when the tour started it), a fault
/// proxy in front of it, an admin client and a root path of its own.
pub struct Tour<'a> {
    pub t: &'a Timeline,
    pub ensemble: Option<std::sync::Arc<ZkEnsemble>>,
    pub servers: String,
    pub proxy: &'a FaultProxy,
    pub admin: &'a Client,
    pub root: String,
}

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("tour failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Res<()> {
    let t = Timeline(Instant::now());
    // The ensemble: the user's, or a throwaway one that dies with this process.
    let (ensemble, servers) = match std::env::var("ZK_SERVERS") {
        Ok(s) if !s.trim().is_empty() => {
            t.say(format!("using the ensemble in ZK_SERVERS: {s}"));
            (None, s)
        }
        _ => {
            t.say("no ZK_SERVERS given: starting a throwaway 3-member ZooKeeper ensemble on loopback...");
            let ens =
                std::sync::Arc::new(tokio::task::spawn_blocking(|| ZkEnsemble::start(3)).await??);
            t.say(format!("ensemble up: {}", ens.connect_string()));
            let s = ens.connect_string();
            (Some(ens), s)
        }
    };
    let addrs: Vec<std::net::SocketAddr> = servers
        .split('/')
        .next()
        .unwrap_or("")
        .split(',')
        .filter_map(|a| {
            std::net::ToSocketAddrs::to_socket_addrs(a.trim())
                .ok()
                .and_then(|mut i| i.next())
        })
        .collect();
    // The tour's client goes through a fault proxy so that its TCP connection can be cut for real.
    let proxy = FaultProxy::start(addrs)?;
    let root = format!("/zkr-tour-{}", std::process::id());
    let admin = Client::builder(&servers).connect().await?;

    let tour = Tour {
        t: &t,
        ensemble: ensemble.clone(),
        servers: servers.clone(),
        proxy: &proxy,
        admin: &admin,
        root: root.clone(),
    };
    session::chapter(&tour).await?;
    locks::chapter(&tour).await?;
    election::chapter(&tour).await?;
    config::chapter(&tour).await?;
    workers::chapter(&tour).await?;
    // Recipe chapters are added here as their recipes land.

    admin.delete_recursive(&root).await?;
    admin.close().await;
    drop(ensemble);
    t.say("done: all ZooKeeper processes stopped");
    Ok(())
}

pub async fn next_state(t: &Timeline, states: &mut SessionStates) -> SessionState {
    let s = tokio::time::timeout(Duration::from_secs(20), states.next_state())
        .await
        .ok()
        .flatten();
    let s = s.unwrap_or(SessionState::Closed);
    let line = match s {
        SessionState::Connecting => "state: Connecting (opening a new session)".to_string(),
        SessionState::Connected { session, epoch } => {
            format!("state: Connected (session {session}, epoch {epoch})")
        }
        SessionState::ReadOnly { session, .. } => format!("state: ReadOnly (session {session})"),
        SessionState::Suspended { session, .. } => {
            format!(
                "state: Suspended (session {session} may still be alive; no reply from the server)"
            )
        }
        SessionState::Reconnected { session, .. } => {
            format!("state: Reconnected (same session {session})")
        }
        SessionState::Lost {
            session, reason, ..
        } => format!("state: Lost (session {session}: {reason:?})"),
        SessionState::Closed => "state: Closed".to_string(),
    };
    t.say(line);
    s
}

pub async fn show(t: &Timeline, watch: &mut DataWatch) -> Res<()> {
    let ev = watch
        .next_timeout(Duration::from_secs(20))
        .await?
        .ok_or("watch ended")??;
    let data = ev
        .data()
        .map(|d| format!("{:?}", String::from_utf8_lossy(d)))
        .unwrap_or_else(|| "absent".into());
    t.say(format!("watch event: {:?} → {data}", ev.change));
    Ok(())
}
