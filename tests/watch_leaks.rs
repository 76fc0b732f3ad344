//! Watch streams leave nothing behind: many streams opened and dropped leave no server watch
//! and no client registry entry (see docs/failure-modes.md, *Watch leaks*).

mod common;

use std::time::Duration;

use common::*;
use zkr::{Change, CreateMode};
use zkr_testing::ZkEnsemble;

/// 1,000 watch streams opened and dropped: the server's watch count (`wchs`) and the client's
/// registry return to their baselines. Own server, so nothing else moves the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_watch_streams_leave_no_server_watches() {
    init_tracing();
    let ens = blocking(ZkEnsemble::standalone).await.expect("zookeeper");
    let c = client(&ens.connect_string(), 10_000).await;
    c.create("/w", b"", CreateMode::Persistent).await.unwrap();
    for i in 0..500 {
        c.create(&format!("/w/n{i}"), b"x", CreateMode::Persistent)
            .await
            .unwrap();
    }
    let baseline = ens.watch_count().unwrap();

    for cycle in 0..2 {
        // 500 existing nodes (data watches) + 500 absent ones (exists watches) + children watches.
        let mut streams = Vec::new();
        for i in 0..500 {
            streams.push(c.watch_data(&format!("/w/n{i}")).unwrap());
        }
        let mut absent = Vec::new();
        for i in 0..500 {
            absent.push(c.watch_data(&format!("/w/missing{i}")).unwrap());
        }
        let mut kids = c.watch_children("/w").unwrap();
        for s in streams.iter_mut().chain(absent.iter_mut()) {
            let ev = s
                .next_timeout(Duration::from_secs(10))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(ev.change, Change::Initial);
        }
        assert_eq!(
            kids.next_timeout(Duration::from_secs(10))
                .await
                .unwrap()
                .unwrap()
                .unwrap()
                .change,
            Change::Initial
        );
        assert_eq!(c.watch_registry_len(), 1001, "cycle {cycle}");
        let during = ens.watch_count().unwrap();
        assert!(
            during >= baseline + 1001,
            "cycle {cycle}: {during} server watches while open (baseline {baseline})"
        );

        drop(streams);
        drop(absent);
        drop(kids);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = ens.watch_count().unwrap();
            if now == baseline && c.watch_registry_len() == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cycle {cycle}: {now} server watches (baseline {baseline}), registry {}",
                c.watch_registry_len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Many streams on one path share one logical watch; each gets the current state first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_one_path_share_one_watch() {
    init_tracing();
    let ens = zkr_testing::shared().expect("zookeeper");
    let c = client(&ens.connect_string(), 10_000).await;
    let root = root("share");
    c.create(&root, b"v0", CreateMode::Persistent)
        .await
        .unwrap();
    let mut a = c.watch_data(&root).unwrap();
    assert_eq!(
        a.next_timeout(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .change,
        Change::Initial
    );
    let mut b = c.watch_data(&root).unwrap();
    let first = b
        .next_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.change, first.data()),
        (Change::Initial, Some(&b"v0"[..]))
    );
    c.set_data(&root, b"v1", None).await.unwrap();
    for s in [&mut a, &mut b] {
        let ev = s
            .next_timeout(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((ev.change, ev.data()), (Change::Changed, Some(&b"v1"[..])));
    }
    drop(a);
    c.set_data(&root, b"v2", None).await.unwrap();
    let ev = b
        .next_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.data(), Some(&b"v2"[..]));
    c.delete(&root, None).await.unwrap();
}

/// `wait_gone`: immediate for an absent node, completes on deletion — also when the deletion
/// happened while the client was cut off — and leaves no server watch behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_gone_sees_deletions_across_a_cut() {
    init_tracing();
    let ens = blocking(ZkEnsemble::standalone).await.expect("zookeeper");
    let proxy = zkr_testing::FaultProxy::for_ensemble(&ens).unwrap();
    let admin = client(&ens.connect_string(), 10_000).await;
    let c = client(&proxy.connect_string(), 4000).await;
    let baseline = ens.watch_count().unwrap();
    c.wait_gone("/absent").await.unwrap();
    admin
        .create("/g", b"", CreateMode::Persistent)
        .await
        .unwrap();
    let c2 = c.clone();
    let waiter = tokio::spawn(async move { c2.wait_gone("/g").await });
    // Wait until the exists watch is set, then delete the node while the client is cut off.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ens.watch_count().unwrap() == baseline {
        assert!(tokio::time::Instant::now() < deadline, "watch never set");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut states = c.states();
    proxy.cut();
    expect_state(&mut states, Duration::from_secs(5), "Suspended", |s| {
        matches!(s, zkr::SessionState::Suspended { .. })
    })
    .await;
    admin.delete("/g", None).await.unwrap();
    proxy.heal();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("wait_gone completes")
        .unwrap()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ens.watch_count().unwrap() != baseline {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a watch was left behind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A data watch stream that is kept but not read while thousands of changes arrive queues a
/// bounded number of events (at most `zkr::fanout::CAPACITY`: older ones in order, newer ones
/// merged into the last; the bound itself is unit-tested in `src/fanout.rs` with 100,000
/// items), and its last event is the latest value: nothing stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_watch_stream_stays_bounded_and_ends_on_the_latest_value() {
    init_tracing();
    let ens = zkr_testing::shared().expect("zookeeper");
    let c = client(&ens.connect_string(), 10_000).await;
    let path = "/watch-leaks-unread-stream";
    let _ = c.delete(path, None).await;
    c.create(path, b"0", CreateMode::Persistent).await.unwrap();
    let mut stream = c.watch_data(path).unwrap();
    let first = stream.next_event().await.unwrap().unwrap();
    assert_eq!(first.change, Change::Initial);
    // 3,000 writes, 50 in flight; the watch re-arms after each notification, so the stream
    // sees many of them, and nobody reads it meanwhile.
    let writes = 3_000usize;
    for chunk in (1..=writes).collect::<Vec<_>>().chunks(50) {
        let futs = chunk.iter().map(|i| {
            let c = c.clone();
            async move { c.set_data(path, i.to_string().as_bytes(), None).await }
        });
        for r in futures::future::join_all(futs).await {
            r.unwrap();
        }
    }
    let last = c.get_data(path).await.unwrap().0;
    // Drain what is queued (the watch may still be catching up with the last writes).
    let mut seen = 0usize;
    let mut latest = Vec::new();
    while latest != last {
        let ev = stream
            .next_timeout(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        latest = ev.data().unwrap_or_default().to_vec();
        seen += 1;
    }
    assert!(
        seen <= zkr::fanout::CAPACITY + 2,
        "{seen} events queued for an unread stream"
    );
    c.delete(path, None).await.unwrap();
    c.close().await;
}
