//! Leases checked at the moment of use: a holder or leader whose process was frozen past its
//! session's lease answers "not held" on its first call after it resumes, before any task has
//! run; a member that is merely slow (a pause well under a third of the timeout) costs nothing.

mod common;

use std::time::{Duration, Instant};

use zkr_recipes::{LeaderLatch, Mutex};
use zkr_testing::{self as testing, ZkEnsemble};

/// Freezes this (single-threaded) test runtime: no task runs, like a process under SIGSTOP.
fn freeze(d: Duration) {
    std::thread::sleep(d);
}

#[tokio::test]
async fn a_frozen_holder_knows_on_its_first_call() {
    let ens = testing::shared().expect("zookeeper");
    let c = common::client(&ens.connect_string(), 2000).await;
    let root = common::root("lease-freeze");
    let m = Mutex::new(&c, &format!("{root}/lock")).unwrap();
    let g = m.acquire().await.unwrap();
    assert!(!g.is_lost());
    let until = g.valid_until();
    let t = c.session_timeout().unwrap();
    assert!(until > Instant::now(), "a fresh lock has a lease");
    assert!(
        until < Instant::now() + t,
        "the lease ends before the server can expire the session"
    );
    freeze(until.saturating_duration_since(Instant::now()) + Duration::from_millis(100));
    // First call after the freeze: no background task has run since.
    assert!(
        g.is_lost(),
        "a holder frozen past its lease must not think it holds"
    );
    drop(g);
    c.close().await;
}

#[tokio::test]
async fn a_frozen_leader_knows_on_its_first_call() {
    let ens = testing::shared().expect("zookeeper");
    let c = common::client(&ens.connect_string(), 2000).await;
    let root = common::root("lease-leader");
    let latch = LeaderLatch::new(&c, &format!("{root}/election"), "solo").unwrap();
    latch.start().await.unwrap();
    latch
        .wait_leader_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(latch.is_leader());
    let until = latch.valid_until().expect("leading");
    freeze(until.saturating_duration_since(Instant::now()) + Duration::from_millis(100));
    assert!(
        !latch.is_leader(),
        "a leader frozen past its lease must not think it leads"
    );
    drop(latch);
    c.close().await;
}

#[tokio::test]
async fn a_slow_member_costs_nothing() {
    // Its own server: it is frozen on purpose.
    let ens = ZkEnsemble::standalone().expect("zookeeper");
    let c = common::client(&ens.connect_string(), 3000).await;
    let session = c.session_id();
    let m = Mutex::new(&c, "/slow/lock").unwrap();
    let g = m.acquire().await.unwrap();
    let mut states = c.states();
    assert!(states.next_state().await.unwrap().is_connected());
    // A pause of a quarter of the timeout: less than the third that is tolerated.
    ens.pause(0).unwrap();
    tokio::time::sleep(Duration::from_millis(750)).await;
    ens.resume(0).unwrap();
    // Confirmed replies flow again: a few heartbeats later the lock is still held.
    c.sync("/").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!g.is_lost(), "a short pause must not cost the lock");
    assert_eq!(c.session_id(), session, "same session");
    while let Ok(Some(s)) = tokio::time::timeout(Duration::ZERO, states.next_state()).await {
        assert!(s.is_connected(), "no state change expected, saw {s:?}");
    }
    g.release().await.unwrap();
    c.close().await;
}
