//! A guided tour of zkr, printed as a timeline.
//!
//! Run it with `scripts/demo` (or `cargo run --release --example tour`). With `ZK_SERVERS` set
//! it uses that ensemble; otherwise it starts a throwaway 3-member ZooKeeper ensemble on
//! loopback and stops it at the end.
//!
//! Chapter 1, the session layer: connect, watch a node, lose the server under the client,
//! reconnect on the same session, expire the session and recover on a new one, and see that
//! the watch missed nothing.

use std::time::{Duration, Instant};

use zkr::testing::{FaultProxy, ZkEnsemble};
use zkr::{Client, CreateMode, DataWatch, SessionState, SessionStates};

struct Timeline(Instant);

impl Timeline {
    fn say(&self, what: impl AsRef<str>) {
        println!("[{:>7.3}s] {}", self.0.elapsed().as_secs_f64(), what.as_ref());
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

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
            let ens = std::sync::Arc::new(tokio::task::spawn_blocking(|| ZkEnsemble::start(3)).await??);
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
        .filter_map(|a| std::net::ToSocketAddrs::to_socket_addrs(a.trim()).ok().and_then(|mut i| i.next()))
        .collect();
    // The tour's client goes through a fault proxy so that its TCP connection can be cut for real.
    let proxy = FaultProxy::start(addrs)?;
    let root = format!("/zkr-tour-{}", std::process::id());
    let admin = Client::builder(&servers).connect().await?;

    t.say("── Chapter 1: the session layer ──");
    let client = Client::builder(&proxy.connect_string()).session_timeout(Duration::from_secs(4)).connect().await?;
    let mut states = client.states();
    next_state(&t, &mut states).await;
    let greeting = format!("{root}/greeting");
    t.say(format!("watching {greeting} (it does not exist yet)"));
    let mut watch = client.watch_data(&greeting)?;
    show(&t, &mut watch).await?;
    admin.create_with_parents(&greeting, b"hello", CreateMode::Persistent).await?;
    t.say("another client created it with \"hello\"");
    show(&t, &mut watch).await?;
    client.create(&format!("{root}/tour-client"), b"", CreateMode::Ephemeral).await?;
    t.say("our client owns an ephemeral node (it lives as long as our session)");

    match &ensemble {
        Some(ens) => {
            let sid = client.session_id().map(|s| s.0).unwrap_or_default();
            let needle = format!("sid={sid:#x}");
            let member = (0..ens.len())
                .find(|&i| ens.four_letter(i, "cons").map(|c| c.contains(&needle)).unwrap_or(false))
                .unwrap_or(0);
            t.say(format!("killing ZooKeeper member {member} (pid {:?}), the one serving our session", ens.pid(member)));
            ens.kill(member)?;
            next_state(&t, &mut states).await;
            next_state(&t, &mut states).await;
            t.say(format!("restarting member {member}"));
            let ens2 = ens.clone();
            tokio::task::spawn_blocking(move || ens2.restart(member)).await??;
        }
        None => {
            t.say("cutting our client's TCP connection");
            proxy.cut();
            next_state(&t, &mut states).await;
            proxy.heal();
            next_state(&t, &mut states).await;
        }
    }
    let owned = admin.exists(&format!("{root}/tour-client")).await?.is_some();
    t.say(format!("same session, so our ephemeral node is still there: {owned}"));

    t.say("expiring our session on purpose (as if we had been cut off for longer than its timeout)");
    proxy.cut();
    admin.set_data(&greeting, b"changed while you were gone", None).await?;
    t.say("meanwhile another client changed the greeting");
    proxy.heal();
    client.expire_session_for_testing(&servers, &proxy).await?;
    next_state(&t, &mut states).await; // Suspended or Lost
    loop {
        if let SessionState::Connected { .. } = next_state(&t, &mut states).await {
            break;
        }
    }
    let owned = admin.exists(&format!("{root}/tour-client")).await?.is_some();
    t.say(format!("a new session: the old session's ephemeral node is gone: {}", !owned));
    t.say("the watch re-read the node after the new session and reports what it missed:");
    show(&t, &mut watch).await?;

    admin.delete_recursive(&root).await?;
    client.close().await;
    admin.close().await;
    drop(ensemble);
    t.say("done: all ZooKeeper processes stopped");
    Ok(())
}

async fn next_state(t: &Timeline, states: &mut SessionStates) -> SessionState {
    let s = tokio::time::timeout(Duration::from_secs(20), states.next_state()).await.ok().flatten();
    let s = s.unwrap_or(SessionState::Closed);
    let line = match s {
        SessionState::Connecting => "state: Connecting (opening a new session)".to_string(),
        SessionState::Connected { session, epoch } => format!("state: Connected (session {session}, epoch {epoch})"),
        SessionState::ReadOnly { session, .. } => format!("state: ReadOnly (session {session})"),
        SessionState::Suspended { session, .. } => {
            format!("state: Suspended (session {session} may still be alive; no reply from the server)")
        }
        SessionState::Reconnected { session, .. } => format!("state: Reconnected (same session {session})"),
        SessionState::Lost { session, reason, .. } => format!("state: Lost (session {session}: {reason:?})"),
        SessionState::Closed => "state: Closed".to_string(),
    };
    t.say(line);
    s
}

async fn show(t: &Timeline, watch: &mut DataWatch) -> Res<()> {
    let ev = watch.next_timeout(Duration::from_secs(20)).await?.ok_or("watch ended")??;
    let data = ev.data().map(|d| format!("{:?}", String::from_utf8_lossy(d))).unwrap_or_else(|| "absent".into());
    t.say(format!("watch event: {:?} → {data}", ev.change));
    Ok(())
}
