//! Session layer against real ZooKeeper with real faults: a member killed or paused, a session
//! expired, a connection cut or half-open (see docs/failure-modes.md, *Session and watches*).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use zkr::{Acl, Change, Client, CreateMode, Error, LostReason, SessionState};
use zkr_testing::{self as testing, FaultProxy, ZkEnsemble};

/// 1. Kill the member the client is connected to: same session, ephemeral nodes kept,
/// `Suspended` then `Reconnected`, in-flight calls fail promptly with the connection-loss kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_connected_member_keeps_session() {
    init_tracing();
    let ens = Arc::new(blocking(|| ZkEnsemble::start(3)).await.expect("ensemble"));
    let c = client(&ens.connect_string(), 4000).await;
    let sid = c.session_id().expect("session");
    c.create("/k1", b"mine", CreateMode::Ephemeral)
        .await
        .unwrap();
    let m = member_of(&ens, sid.0).expect("our member");
    let mut states = c.states();
    expect_state(&mut states, Duration::from_secs(1), "Connected", |s| {
        matches!(s, SessionState::Connected { .. })
    })
    .await;

    // Freeze the member so a request is stuck in flight, then crash it.
    let e2 = ens.clone();
    blocking(move || e2.pause(m)).await.unwrap();
    let c2 = c.clone();
    let inflight = tokio::spawn(async move {
        let t = Instant::now();
        (c2.get_data("/k1").await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // let the request reach the socket
    let e2 = ens.clone();
    blocking(move || e2.kill(m)).await.unwrap();

    expect_state(&mut states, Duration::from_secs(4), "Suspended", |s| {
        matches!(s, SessionState::Suspended { .. })
    })
    .await;
    let back = expect_state(&mut states, Duration::from_secs(6), "Reconnected", |s| {
        matches!(
            s,
            SessionState::Reconnected { .. } | SessionState::Lost { .. }
        )
    })
    .await;
    assert_eq!(
        back,
        SessionState::Reconnected {
            session: sid,
            epoch: 1
        },
        "same session, same epoch"
    );

    let (r, took) = inflight.await.unwrap();
    match r {
        Err(Error::ConnectionLoss) => {}
        other => panic!("in-flight call should fail with ConnectionLoss, got {other:?}"),
    }
    assert!(
        took < Duration::from_millis(2700),
        "in-flight call failed promptly ({took:?})"
    );

    let stat = c.exists("/k1").await.unwrap().expect("ephemeral node kept");
    assert_eq!(stat.ephemeral_owner, sid.0);
    assert_ne!(member_of(&ens, sid.0), Some(m));
}

/// 2. Pause the only member the client can reach beyond the session timeout: the client says
/// `Lost` no later than the server expires the session (seen by an observer), then opens a new
/// session; nothing issued for the old session runs in the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_member_lost_before_server_expiry() {
    init_tracing();
    let ens = Arc::new(blocking(|| ZkEnsemble::start(3)).await.expect("ensemble"));
    let leader = ens.leader_index().expect("leader");
    let f = (0..3).find(|&i| i != leader).unwrap_or(0);
    let others: Vec<String> = (0..3)
        .filter(|&i| i != f)
        .map(|i| ens.member_connect_string(i))
        .collect();
    let observer = client(&others.join(","), 10_000).await;
    let c = client(&ens.member_connect_string(f), 2000).await;
    let old = c.session_id().unwrap();
    c.create("/p2", b"", CreateMode::Ephemeral).await.unwrap();
    let pinned = c.pinned().await.unwrap();
    let mut w = observer.watch_data("/p2").unwrap();
    assert!(w
        .next_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .node
        .is_some());
    // Record when the observer learns of the expiry, independently of this task.
    let deleted_at = tokio::spawn(async move {
        let ev = w
            .next_timeout(Duration::from_secs(20))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ev.change, Change::Deleted);
        Instant::now()
    });
    let mut states = c.states();

    let e2 = ens.clone();
    blocking(move || e2.pause(f)).await.unwrap();
    expect_state(&mut states, Duration::from_secs(3), "Suspended", |s| {
        matches!(s, SessionState::Suspended { .. })
    })
    .await;
    // Issued while suspended, for the old session.
    let c2 = c.clone();
    let late = tokio::spawn(async move { c2.create("/p2-late", b"", CreateMode::Ephemeral).await });
    let lost = expect_state(&mut states, Duration::from_secs(4), "Lost", |s| {
        matches!(s, SessionState::Lost { .. })
    })
    .await;
    let t_lost = Instant::now();
    assert_eq!(
        lost,
        SessionState::Lost {
            session: old,
            epoch: 1,
            reason: LostReason::CutOff
        }
    );
    // The server expires the session later: the observer sees the ephemeral node go.
    let t_deleted = deleted_at.await.unwrap();
    assert!(
        t_lost <= t_deleted,
        "client declared Lost before the server expired the session"
    );
    assert!(
        late.await.unwrap().is_err(),
        "a call issued for the old session must not succeed"
    );

    let e2 = ens.clone();
    blocking(move || e2.resume(f)).await.unwrap();
    let now = expect_state(
        &mut states,
        Duration::from_secs(10),
        "Connected (new session)",
        |s| matches!(s, SessionState::Connected { .. }),
    )
    .await;
    assert_eq!(now.epoch(), Some(2));
    assert_ne!(now.session(), Some(old));
    assert!(
        observer.exists("/p2-late").await.unwrap().is_none(),
        "old-session call ran in the new session"
    );
    assert!(matches!(
        pinned
            .create("/p2-pinned", b"", CreateMode::Ephemeral)
            .await,
        Err(Error::SessionLost { .. })
    ));
    assert!(observer.exists("/p2-pinned").await.unwrap().is_none());
    // The unpinned handle works in the new session.
    c.create("/p2-new", b"", CreateMode::Ephemeral)
        .await
        .unwrap();
}

/// 3. Expire the session on purpose: `Lost`, a new session, watches re-armed, digest auth
/// re-applied (a node readable only by the creator stays readable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_recovers_with_auth_and_watches() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let root = root("expire");
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let c = Client::builder(&proxy.connect_string())
        .session_timeout(Duration::from_millis(3000))
        .digest_auth("alice", "secret")
        .default_acl(Acl::creator_all())
        .connect()
        .await
        .unwrap();
    let anon = client(&ens.connect_string(), 10_000).await;
    anon.create(&root, b"", CreateMode::Persistent)
        .await
        .unwrap();
    let secret = format!("{root}/secret");
    c.create(&secret, b"s3cr3t", CreateMode::Persistent)
        .await
        .unwrap();
    assert!(
        matches!(anon.get_data(&secret).await, Err(Error::NoAuth { .. })),
        "ACL is effective"
    );
    let watched = format!("{root}/w");
    let mut w = c.watch_data(&watched).unwrap();
    assert_eq!(
        w.next_timeout(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .change,
        Change::Initial
    );

    let mut states = c.states();
    c.expire_session_for_testing(&ens.connect_string(), &proxy)
        .await
        .unwrap();
    let lost = expect_state(&mut states, Duration::from_secs(5), "Lost", |s| {
        matches!(s, SessionState::Lost { .. })
    })
    .await;
    assert!(
        matches!(
            lost,
            SessionState::Lost {
                reason: LostReason::Expired,
                epoch: 1,
                ..
            }
        ),
        "{lost:?}"
    );
    let s = expect_state(&mut states, Duration::from_secs(5), "Connected", |s| {
        matches!(s, SessionState::Connected { .. })
    })
    .await;
    assert_eq!(s.epoch(), Some(2));

    assert_eq!(
        c.get_data(&secret).await.unwrap().0,
        b"s3cr3t",
        "auth re-applied in the new session"
    );
    anon.create(&watched, b"hello", CreateMode::Persistent)
        .await
        .unwrap();
    let ev = w
        .next_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.change, Change::Created);
    assert_eq!(ev.data(), Some(&b"hello"[..]));
}

/// 4. Watches across a reconnect and across an expiry: a data change, a child added, and a
/// delete + re-create (same version) made while the client was cut off are each observed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_survive_reconnect_and_expiry() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let root = root("watches");
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let admin = client(&ens.connect_string(), 10_000).await;
    let (a, p, r) = (
        format!("{root}/a"),
        format!("{root}/p"),
        format!("{root}/r"),
    );
    admin
        .create_with_parents(&a, b"a0", CreateMode::Persistent)
        .await
        .unwrap();
    admin.create(&p, b"", CreateMode::Persistent).await.unwrap();
    admin
        .create(&r, b"r", CreateMode::Persistent)
        .await
        .unwrap();

    let c = client(&proxy.connect_string(), 3000).await;
    let mut wa = c.watch_data(&a).unwrap();
    let mut wp = c.watch_children(&p).unwrap();
    let mut wr = c.watch_data(&r).unwrap();
    let d = Duration::from_secs(10);
    for _ in 0..1 {
        assert_eq!(
            wa.next_timeout(d).await.unwrap().unwrap().unwrap().change,
            Change::Initial
        );
        assert_eq!(
            wp.next_timeout(d).await.unwrap().unwrap().unwrap().change,
            Change::Initial
        );
        assert_eq!(
            wr.next_timeout(d).await.unwrap().unwrap().unwrap().change,
            Change::Initial
        );
    }
    let mut states = c.states();
    let sid = c.session_id().unwrap();

    // Phase 1: cut off for less than the session timeout.
    proxy.cut();
    expect_state(&mut states, d, "Suspended", |s| {
        matches!(s, SessionState::Suspended { .. })
    })
    .await;
    admin.set_data(&a, b"a1", None).await.unwrap();
    admin
        .create(&format!("{p}/c1"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    admin.delete(&r, None).await.unwrap();
    admin
        .create(&r, b"r", CreateMode::Persistent)
        .await
        .unwrap();
    proxy.heal();
    let s = expect_state(&mut states, d, "Reconnected", |s| {
        matches!(
            s,
            SessionState::Reconnected { .. } | SessionState::Lost { .. }
        )
    })
    .await;
    assert_eq!(
        s,
        SessionState::Reconnected {
            session: sid,
            epoch: 1
        }
    );
    let ev = wa.next_timeout(d).await.unwrap().unwrap().unwrap();
    assert_eq!((ev.change, ev.data()), (Change::Changed, Some(&b"a1"[..])));
    let ev = wp.next_timeout(d).await.unwrap().unwrap().unwrap();
    assert_eq!(
        (ev.change, ev.children()),
        (Change::Changed, Some(&["c1".to_string()][..]))
    );
    let ev = wr.next_timeout(d).await.unwrap().unwrap().unwrap();
    assert_eq!(ev.change, Change::Recreated);
    assert_eq!(
        ev.stat().unwrap().version,
        0,
        "re-created at the same version"
    );
    // Exactly one event each: the next event is the next change, not a duplicate.
    admin.set_data(&a, b"a2", None).await.unwrap();
    admin
        .create(&format!("{p}/c2"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    admin.set_data(&r, b"r2", None).await.unwrap();
    assert_eq!(
        wa.next_timeout(d).await.unwrap().unwrap().unwrap().data(),
        Some(&b"a2"[..])
    );
    assert_eq!(
        wp.next_timeout(d)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .children()
            .map(|c| c.len()),
        Some(2)
    );
    let ev = wr.next_timeout(d).await.unwrap().unwrap().unwrap();
    assert_eq!((ev.change, ev.data()), (Change::Changed, Some(&b"r2"[..])));

    // Phase 2: cut off past the session timeout: a new session, same streams.
    proxy.cut();
    expect_state(&mut states, d, "Lost", |s| {
        matches!(s, SessionState::Lost { .. })
    })
    .await;
    admin.set_data(&a, b"a3", None).await.unwrap();
    admin
        .create(&format!("{p}/c3"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    admin.delete(&r, None).await.unwrap();
    admin
        .create(&r, b"r", CreateMode::Persistent)
        .await
        .unwrap();
    proxy.heal();
    let s = expect_state(&mut states, Duration::from_secs(15), "Connected", |s| {
        matches!(s, SessionState::Connected { .. })
    })
    .await;
    assert_eq!(s.epoch(), Some(2));
    let ev = wa.next_timeout(d).await.unwrap().unwrap().unwrap();
    assert_eq!((ev.change, ev.data()), (Change::Changed, Some(&b"a3"[..])));
    let ev = wp.next_timeout(d).await.unwrap().unwrap().unwrap();
    assert_eq!(
        (ev.change, ev.children().map(|c| c.len())),
        (Change::Changed, Some(3))
    );
    let ev = wr.next_timeout(d).await.unwrap().unwrap().unwrap();
    assert_eq!((ev.change, ev.data()), (Change::Recreated, Some(&b"r"[..])));
    admin.delete_recursive(&root).await.unwrap();
}

/// Session ids never go backwards and `Lost` always precedes the next session's `Connected`,
/// over several expiries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_order_over_repeated_expiry() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let c = client(&proxy.connect_string(), 2000).await;
    let mut states = c.states();
    let mut seen = vec![states.next_state().await.unwrap()];
    for round in 0..3u64 {
        c.expire_session_for_testing(&ens.connect_string(), &proxy)
            .await
            .unwrap();
        let s = expect_state(&mut states, Duration::from_secs(8), "Connected", |s| {
            seen.push(*s);
            matches!(s, SessionState::Connected { .. })
        })
        .await;
        assert_eq!(s.epoch(), Some(round + 2));
    }
    let mut last_epoch = 0;
    let mut lost_since_connect = true;
    for s in &seen {
        match s {
            SessionState::Connected { epoch, .. } => {
                assert!(
                    lost_since_connect,
                    "Connected without Lost before it: {seen:?}"
                );
                assert!(*epoch > last_epoch);
                last_epoch = *epoch;
                lost_since_connect = false;
            }
            SessionState::Lost { epoch, .. } => {
                assert_eq!(*epoch, last_epoch);
                lost_since_connect = true;
            }
            _ => {}
        }
    }
}

/// A half-open connection (the network silently drops everything) is noticed:
/// `Suspended` within 2/3 of the session timeout, `Lost` before the server expires the session
/// (an observer sees the ephemeral node go only afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connection_is_noticed_before_expiry() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = root("half-open");
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let observer = client(&ens.connect_string(), 10_000).await;
    let c = client(&proxy.connect_string(), 3000).await;
    let timeout = c.session_timeout().unwrap();
    c.create(&path, b"", CreateMode::Ephemeral).await.unwrap();
    let mut w = observer.watch_data(&path).unwrap();
    assert!(w
        .next_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .node
        .is_some());
    let mut states = c.states();
    let t0 = Instant::now();
    proxy.blackhole();
    expect_state(&mut states, timeout, "Suspended", |s| {
        matches!(s, SessionState::Suspended { .. })
    })
    .await;
    let suspended_after = t0.elapsed();
    assert!(
        suspended_after <= timeout * 2 / 3 + Duration::from_millis(300),
        "{suspended_after:?}"
    );
    expect_state(&mut states, timeout, "Lost", |s| {
        matches!(s, SessionState::Lost { .. })
    })
    .await;
    let lost_at = Instant::now();
    let ev = w
        .next_timeout(Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.change, Change::Deleted);
    assert!(lost_at <= Instant::now());
    assert!(
        lost_at.duration_since(t0) < timeout,
        "Lost {:?} after the cut",
        lost_at.duration_since(t0)
    );
    proxy.heal();
    expect_state(&mut states, Duration::from_secs(10), "Connected", |s| {
        matches!(s, SessionState::Connected { .. })
    })
    .await;
}

/// `close()` ends the session on the server at once — ephemeral nodes gone when it returns —
/// even while handles pinned to that session (lock guards, leases) are still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_the_session_despite_pinned_handles() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = root("close");
    let observer = client(&ens.connect_string(), 10_000).await;
    let c = client(&ens.connect_string(), 10_000).await;
    c.create(&path, b"", CreateMode::Ephemeral).await.unwrap();
    let pinned = c.pinned().await.unwrap();
    let t = Instant::now();
    c.close().await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "close took {:?}",
        t.elapsed()
    );
    assert!(
        observer.exists(&path).await.unwrap().is_none(),
        "ephemeral node gone when close() returns"
    );
    let r = pinned.exists(&path).await;
    assert!(
        matches!(r, Err(Error::SessionLost { .. }) | Err(Error::Closed)),
        "{r:?}"
    );
}
