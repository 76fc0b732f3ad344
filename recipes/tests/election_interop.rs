//! Interop with Apache Curator 5.4's `LeaderLatch` on the same path: Java and Rust candidates
//! share one election (the Java peer, `tests/java/CuratorPeer.java`, is compiled at test time;
//! skipped, with a printed reason, only when Java is absent).

mod common;

use std::time::{Duration, Instant};

use common::java::CuratorPeer;
use common::{blocking, client, init_tracing, root};
use futures::StreamExt;
use zkr_recipes::{LatchState, LeaderLatch, LeaderObserver};
use zkr_testing as testing;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_curator_share_one_election() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let connect = ens.connect_string();
    let Some(mut java) = blocking(move || CuratorPeer::start(&connect, 10_000)).await else {
        return;
    };
    let base = root("interop-election");
    let path = format!("{base}/election");
    let c = client(&ens.connect_string(), 10_000).await;
    let watcher = client(&ens.connect_string(), 10_000).await;

    // Java joins first and leads.
    let cmd = format!("latch {path} java-1");
    java = blocking(move || {
        java.call(&cmd, "LATCH_STARTED");
        java.expect("LEADER", T);
        java
    })
    .await;
    let observer = LeaderObserver::new(&watcher, &path).unwrap();
    observer.start().unwrap();
    let mut obs = observer.changes();
    let p = obs.next_timeout(T).await.unwrap().unwrap().unwrap();
    assert_eq!(p.id, "java-1");
    let name = p.path.rsplit('/').next().unwrap().to_string();
    assert!(
        name.starts_with("_c_") && name.contains("-latch-"),
        "Curator's node: {name}"
    );

    // Rust queues behind Java.
    let rust = LeaderLatch::new(&c, &path, "rust-1").unwrap();
    rust.start().await.unwrap();
    assert!(!rust.is_leader());
    let parts = rust.participants().await.unwrap();
    let ids: Vec<&str> = parts.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, vec!["java-1", "rust-1"]);
    assert_eq!(rust.leader().await.unwrap().unwrap().id, "java-1");
    java = blocking(move || {
        let l = java.call("participants", "PARTICIPANTS");
        assert_eq!(l, "PARTICIPANTS java-1,rust-1");
        let l = java.call("leader", "LEADER_ID");
        assert_eq!(l, "LEADER_ID java-1");
        java
    })
    .await;

    // Java resigns: Rust learns within one notification.
    let mut ch = rust.changes();
    assert_eq!(ch.next().await, Some(LatchState::NotLeader));
    let t0 = Instant::now();
    java = blocking(move || {
        java.call("latch-close", "LATCH_CLOSED");
        java
    })
    .await;
    let f = match ch.next_timeout(T).await.unwrap() {
        Some(LatchState::Leader(f)) => f,
        other => panic!("expected leadership, got {other:?}"),
    };
    eprintln!(
        "rust leads {:?} after Curator's close() started",
        t0.elapsed()
    );
    assert_eq!(
        obs.next_timeout(T).await.unwrap().unwrap().unwrap().id,
        "rust-1"
    );

    // Java rejoins behind Rust and sees Rust lead; Rust resigns and Java leads.
    let cmd = format!("latch {path} java-2");
    java = blocking(move || {
        java.call(&cmd, "LATCH_STARTED");
        java
    })
    .await;
    let deadline = Instant::now() + T;
    loop {
        let ids: Vec<String> = rust
            .participants()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        if ids == ["rust-1", "java-2"] {
            break;
        }
        assert!(Instant::now() < deadline, "{ids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    java = blocking(move || {
        assert_eq!(java.call("is-leader", "IS_LEADER"), "IS_LEADER false");
        assert_eq!(java.call("leader", "LEADER_ID"), "LEADER_ID rust-1");
        java
    })
    .await;
    assert!(rust.is_leader());
    rust.close().await.unwrap();
    java = blocking(move || {
        java.expect("LEADER", T);
        java
    })
    .await;
    let p = obs.next_timeout(T).await.unwrap().unwrap().unwrap();
    assert_eq!(p.id, "java-2");
    assert!(
        p.token > f.token,
        "fencing epochs increase across libraries"
    );

    // The same peer also holds Curator's InterProcessMutex (used by the lock interop tests).
    let cmd = format!("mutex-acquire {base}/lock 10000");
    java = blocking(move || {
        java.call(&cmd, "ACQUIRED");
        java.call("mutex-release", "RELEASED");
        java.call("latch-close", "LATCH_CLOSED");
        java
    })
    .await;
    drop(java);
    watcher.delete_recursive(&base).await.unwrap();
}

/// A Curator candidate whose process dies while leading: the Rust candidate takes over once
/// the Java session is gone; a Rust leader that dies hands over to Curator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_passes_between_libraries_when_a_process_dies() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let connect = ens.connect_string();
    let Some(mut java) = blocking(move || CuratorPeer::start(&connect, 4_000)).await else {
        return;
    };
    let base = root("interop-die");
    let path = format!("{base}/election");
    let rc = client(&ens.connect_string(), 4_000).await;
    let rust = LeaderLatch::new(&rc, &path, "rust").unwrap();
    rust.start().await.unwrap();
    rust.wait_leader_timeout(T).await.unwrap();
    let cmd = format!("latch {path} java");
    java = blocking(move || {
        java.call(&cmd, "LATCH_STARTED");
        java
    })
    .await;
    // The Rust process "dies": its client closes without resigning.
    drop(rust);
    rc.close().await;
    java = blocking(move || {
        java.expect("LEADER", T);
        java
    })
    .await;
    // A new Rust candidate queues; the Java process is killed (by pid): Rust leads after the
    // Java session expires.
    let rc2 = client(&ens.connect_string(), 4_000).await;
    let rust2 = LeaderLatch::new(&rc2, &path, "rust-2").unwrap();
    rust2.start().await.unwrap();
    assert!(!rust2.is_leader());
    let pid = java.pid();
    drop(java);
    eprintln!("killed Curator peer pid {pid}");
    rust2.wait_leader_timeout(T).await.unwrap();
    rust2.close().await.unwrap();
    rc2.delete_recursive(&base).await.unwrap();
}
