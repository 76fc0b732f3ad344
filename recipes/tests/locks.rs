//! Exclusive and shared locks and semaphores against real ZooKeeper, with real faults (see
//! docs/failure-modes.md, *Locks and semaphores*).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use zkr::{CreateMode, Op, SessionState};
use zkr_recipes::{LossPolicy, Mutex, RwLock, Semaphore};
use zkr_testing::{self as testing, FaultProxy, ZkEnsemble};

/// 8 clients × 200 cycles on one mutex: never two inside, no lost update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_excludes_under_contention() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = root("mutex-contention");
    let inside = Arc::new(AtomicUsize::new(0));
    let counter = Arc::new(std::sync::Mutex::new(0u64));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = client(&ens.connect_string(), 10_000).await;
        let (path, inside, counter) = (path.clone(), inside.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let m = Mutex::new(&c, &path).unwrap();
            let mut violations = 0;
            for _ in 0..200 {
                let g = m.acquire_timeout(Duration::from_secs(30)).await.unwrap();
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    violations += 1;
                }
                // Non-atomic read, yield, write: a second holder would lose updates.
                let v = *counter.lock().unwrap();
                tokio::task::yield_now().await;
                *counter.lock().unwrap() = v + 1;
                assert!(!g.is_lost());
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.unwrap();
            }
            violations
        }));
    }
    let mut violations = 0;
    for t in tasks {
        violations += t.await.unwrap();
    }
    assert_eq!(violations, 0);
    assert_eq!(*counter.lock().unwrap(), 1600, "no lost updates");
}

/// The fencing token strictly increases across holders and fenced writes stop once the lock
/// node is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_and_fenced_writes_check_the_lock() {
    let ens = testing::shared().expect("zookeeper");
    let path = root("fencing");
    let c = client(&ens.connect_string(), 10_000).await;
    let m = Mutex::new(&c, &path).unwrap();
    let data = format!("{path}-data");
    c.create(&data, b"0", CreateMode::Persistent).await.unwrap();
    let mut last = i64::MIN;
    for i in 0..5 {
        let g = m.acquire().await.unwrap();
        assert!(g.fence().token > last);
        last = g.fence().token;
        g.fenced_multi(&[Op::SetData {
            path: data.clone(),
            data: format!("{i}").into_bytes(),
            version: None,
        }])
        .await
        .unwrap();
        // Someone deletes our lock node (an operator, or our session's expiry): fenced writes stop.
        if i == 4 {
            c.delete(g.fence().path.as_str(), None).await.unwrap();
            let r = g
                .fenced_multi(&[Op::SetData {
                    path: data.clone(),
                    data: b"late".to_vec(),
                    version: None,
                }])
                .await;
            assert!(
                r.is_err(),
                "fenced write after the lock node is gone must fail"
            );
            assert_eq!(c.get_data(&data).await.unwrap().0, b"4");
        } else {
            g.release().await.unwrap();
        }
    }
}

/// A holder cut off past the session timeout is told it lost the lock before any
/// other client acquires it — with both loss policies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_holder_is_told_before_another_acquires() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    for policy in [LossPolicy::Suspended, LossPolicy::Lost] {
        let path = root(&format!("cutoff-{policy:?}"));
        let proxy = FaultProxy::for_ensemble(ens).unwrap();
        let holder = client(&proxy.connect_string(), 2000).await;
        let other = client(&ens.connect_string(), 10_000).await;
        let g = Mutex::new(&holder, &path)
            .unwrap()
            .with_loss_policy(policy)
            .acquire()
            .await
            .unwrap();
        let m2 = Mutex::new(&other, &path).unwrap();
        let waiter = tokio::spawn(async move {
            let g2 = m2.acquire_timeout(Duration::from_secs(20)).await.unwrap();
            (Instant::now(), g2)
        });
        // Make sure the waiter is queued behind the holder before cutting.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Mutex::new(&other, &path)
            .unwrap()
            .participants()
            .await
            .unwrap()
            .len()
            < 2
        {
            assert!(Instant::now() < deadline, "waiter never queued");
            tokio::task::yield_now().await;
        }
        proxy.cut();
        g.lost().await;
        let told = Instant::now();
        assert!(g.is_lost());
        let (acquired, g2) = waiter.await.unwrap();
        assert!(
            told < acquired,
            "{policy:?}: holder told {:?} after the other acquired",
            told - acquired
        );
        g2.release().await.unwrap();
        drop(g);
    }
}

/// After a client-side `Lost`, the client's new session never adopts the node its
/// old session left (the server keeps it until its own timeout): a new acquire queues behind
/// that node and holds the lock only once the server removed it, through its own node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_session_never_adopts_the_old_sessions_node() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = root("old-session-node");
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let c = client(&proxy.connect_string(), 6000).await;
    let admin = client(&ens.connect_string(), 10_000).await;
    let m = Mutex::new(&c, &path).unwrap();
    let g1 = m.acquire().await.unwrap();
    let old_node = g1.fence().path.as_str().to_string();
    let old_session = c.session_id().unwrap();

    let mut states = c.states();
    proxy.cut();
    expect_state(&mut states, Duration::from_secs(20), "Lost", |s| {
        matches!(s, SessionState::Lost { .. })
    })
    .await;
    g1.lost().await;
    assert!(g1.is_lost());
    // zkr declares Lost before the server can expire the session: the node is still there,
    // owned by the old session.
    let st = admin.exists(&old_node).await.unwrap();
    assert_eq!(
        st.map(|s| s.ephemeral_owner),
        Some(old_session.0),
        "the old session's node should outlive the client-side Lost"
    );
    proxy.heal();
    expect_state(&mut states, Duration::from_secs(20), "Connected", |s| {
        matches!(s, SessionState::Connected { .. })
    })
    .await;
    let new_session = c.session_id().unwrap();
    assert_ne!(new_session, old_session);

    // The new acquire queues behind the old session's node, and holds the lock only once the
    // server removed that node.
    let m2 = m.clone();
    let acquiring = tokio::spawn(async move { m2.acquire_timeout(Duration::from_secs(20)).await });
    let old_name = old_node.rsplit('/').next().unwrap().to_string();
    let queue = loop {
        let names = m.participants().await.unwrap();
        if names.len() >= 2 || names.first() != Some(&old_name) {
            break names;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(
        queue.first(),
        Some(&old_name),
        "the old session's node was gone before the new session queued: scenario not reached"
    );
    let g2 = acquiring.await.unwrap().unwrap();
    assert!(
        admin.exists(&old_node).await.unwrap().is_none(),
        "acquired while the old session's node {old_node} still existed"
    );
    assert_ne!(g2.fence().path.as_str(), old_node);
    let st = admin
        .exists(g2.fence().path.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.ephemeral_owner, new_session.0);
    assert!(g2.fence().token > g1.fence().token);
    // The old guard's release reports the loss and touches nothing of the new session.
    assert!(g1.release().await.is_err());
    assert!(admin
        .exists(g2.fence().path.as_str())
        .await
        .unwrap()
        .is_some());
    g2.release().await.unwrap();
    admin.delete_recursive(&path).await.unwrap();
}

/// An acquire cancelled at any stage (also while suspended) leaves no node behind, and the others
/// proceed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_leave_nothing_behind() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = root("cancel");
    let c = client(&ens.connect_string(), 10_000).await;
    let holder = Mutex::new(&c, &path).unwrap().acquire().await.unwrap();
    let m = Mutex::new(&c, &path).unwrap();
    // Cancel after 0..N polls/yields: before the create is sent, while it is in flight,
    // after it, while waiting for the predecessor.
    for delay_us in [0u64, 50, 200, 500, 1000, 2000, 5000, 20000] {
        let m2 = m.clone();
        let h = tokio::spawn(async move { m2.acquire().await });
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        h.abort();
        assert!(h.await.unwrap_err().is_cancelled());
    }
    // acquire_timeout: the same through a timeout.
    assert!(m.acquire_timeout(Duration::from_millis(50)).await.is_err());
    // Eventually only the holder's node remains.
    let mut w = c.watch_children(&path).unwrap();
    let deadline = Duration::from_secs(10);
    loop {
        let ev = w.next_timeout(deadline).await.unwrap().unwrap().unwrap();
        if ev.children().map(|c| c.len()) == Some(1) {
            break;
        }
    }
    // And a cancelled acquire while Suspended: through a proxy that is cut.
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let c2 = client(&proxy.connect_string(), 4000).await;
    let m3 = Mutex::new(&c2, &path).unwrap();
    let h = tokio::spawn(async move { m3.acquire().await });
    // Wait until its node is queued, then cut and cancel while suspended, then heal.
    loop {
        let ev = w.next_timeout(deadline).await.unwrap().unwrap().unwrap();
        if ev.children().map(|c| c.len()) == Some(2) {
            break;
        }
    }
    let mut states = c2.states();
    proxy.cut();
    expect_state(&mut states, deadline, "Suspended", |s| {
        matches!(s, zkr::SessionState::Suspended { .. })
    })
    .await;
    h.abort();
    let _ = h.await;
    proxy.heal();
    expect_state(&mut states, deadline, "Reconnected", |s| {
        matches!(s, zkr::SessionState::Reconnected { .. })
    })
    .await;
    loop {
        let ev = w.next_timeout(deadline).await.unwrap().unwrap().unwrap();
        if ev.children().map(|c| c.len()) == Some(1) {
            break;
        }
    }
    // The others proceed.
    holder.release().await.unwrap();
    m.acquire_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// Ghost nodes: connections dropped around the create: exactly one node per acquirer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_loss_during_create_leaves_one_node() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = root("ghost");
    let admin = client(&ens.connect_string(), 10_000).await;
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let c = client(&proxy.connect_string(), 4000).await;
    let m = Mutex::new(&c, &path).unwrap();
    for delay_us in [0u64, 100, 300, 600, 1000, 1500, 2500, 4000] {
        let m2 = m.clone();
        let h = tokio::spawn(async move { m2.acquire_timeout(Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        proxy.drop_connections();
        let g = h.await.unwrap().unwrap();
        let sid = c.session_id().unwrap().0;
        let mut ours = 0;
        for child in admin.get_children(&path).await.unwrap() {
            if let Some(st) = admin.exists(&format!("{path}/{child}")).await.unwrap() {
                if st.ephemeral_owner == sid {
                    ours += 1;
                }
            }
        }
        assert_eq!(ours, 1, "delay {delay_us}µs: exactly one node of ours");
        g.release().await.unwrap();
    }
}

/// Many acquire/release cycles with waiting leave no watches behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_cycles_leave_no_watches() {
    init_tracing();
    let ens = Arc::new(blocking(ZkEnsemble::standalone).await.expect("zookeeper"));
    let baseline = ens.watch_count().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = client(&ens.connect_string(), 10_000).await;
        tasks.push(tokio::spawn(async move {
            let m = Mutex::new(&c, "/cycles").unwrap();
            for _ in 0..2500 {
                m.acquire().await.unwrap().release().await.unwrap();
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = ens.watch_count().unwrap();
        let reg: usize = clients.iter().map(|c| c.watch_registry_len()).sum();
        if n == baseline && reg == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} server watches (baseline {baseline}), {reg} client watches"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// RwLock under 8-way contention: readers share, writers exclude everyone, no deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rwlock_invariants_under_contention() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = root("rwlock");
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let max_readers = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let c = client(&ens.connect_string(), 10_000).await;
        let (path, readers, writers, max_readers) = (
            path.clone(),
            readers.clone(),
            writers.clone(),
            max_readers.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let l = RwLock::new(&c, &path).unwrap();
            let mut violations = 0;
            for j in 0..60usize {
                let write = (37 * j + 11 * i) % 5 == 0;
                if write {
                    let g = l.write_timeout(Duration::from_secs(30)).await.unwrap();
                    if writers.fetch_add(1, Ordering::SeqCst) != 0
                        || readers.load(Ordering::SeqCst) != 0
                    {
                        violations += 1;
                    }
                    tokio::task::yield_now().await;
                    writers.fetch_sub(1, Ordering::SeqCst);
                    g.release().await.unwrap();
                } else {
                    let g = l.read_timeout(Duration::from_secs(30)).await.unwrap();
                    let now = readers.fetch_add(1, Ordering::SeqCst) + 1;
                    max_readers.fetch_max(now, Ordering::SeqCst);
                    if writers.load(Ordering::SeqCst) != 0 {
                        violations += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    readers.fetch_sub(1, Ordering::SeqCst);
                    g.release().await.unwrap();
                }
            }
            violations
        }));
    }
    let mut violations = 0;
    for t in tasks {
        violations += t.await.unwrap();
    }
    assert_eq!(violations, 0);
    assert!(
        max_readers.load(Ordering::SeqCst) > 1,
        "readers shared the lock"
    );
}

/// A reader queued before a writer is not blocked by it (kazoo 2.8's deadlock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_does_not_wait_for_a_later_writer() {
    let ens = testing::shared().expect("zookeeper");
    let path = root("rw-order");
    let c = client(&ens.connect_string(), 10_000).await;
    let l = RwLock::new(&c, &path).unwrap();
    let r1 = l.read().await.unwrap();
    let l2 = l.clone();
    let w = tokio::spawn(async move { l2.write().await });
    // Wait until the writer is queued behind r1.
    let mut kids = c.watch_children(&path).unwrap();
    loop {
        let ev = kids
            .next_timeout(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ev.children().map(|c| c.len()) == Some(2) {
            break;
        }
    }
    // r1 re-entering as a second read is queued after the writer: it must wait (writers are
    // not starved); but r1 itself holds and the writer waits for it.
    assert!(
        l.try_read().await.unwrap().is_none(),
        "a new reader queues behind the waiting writer"
    );
    assert!(!w.is_finished());
    r1.release().await.unwrap();
    let wg = w.await.unwrap().unwrap();
    assert!(l.try_read().await.unwrap().is_none());
    wg.release().await.unwrap();
    assert!(l.try_read().await.unwrap().is_some());
}

/// Semaphore: never more than N holders under 8-way contention (blocking and try), and leases
/// of cancelled acquires and dead sessions do not linger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_bounds_holders() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = root("sem");
    let holders = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let c = client(&ens.connect_string(), 10_000).await;
        let (path, holders, max_seen) = (path.clone(), holders.clone(), max_seen.clone());
        tasks.push(tokio::spawn(async move {
            let s = Semaphore::new(&c, &path, 3).unwrap();
            for j in 0..25 {
                let lease = if (i + j) % 3 == 0 {
                    match s.try_acquire().await.unwrap() {
                        Some(l) => l,
                        None => continue,
                    }
                } else {
                    s.acquire_timeout(Duration::from_secs(30)).await.unwrap()
                };
                let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                holders.fetch_sub(1, Ordering::SeqCst);
                lease.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let max = max_seen.load(Ordering::SeqCst);
    assert!(max <= 3, "{max} holders at once");
    let c = client(&ens.connect_string(), 10_000).await;
    let s = Semaphore::new(&c, &path, 3).unwrap();
    // A lease held by a session that then dies is gone with it.
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let dying = client(&proxy.connect_string(), 2000).await;
    let lease = Semaphore::new(&dying, &path, 3)
        .unwrap()
        .acquire()
        .await
        .unwrap();
    assert_eq!(s.lease_count().await.unwrap(), 1);
    proxy.cut();
    lease.lost().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.lease_count().await.unwrap() != 0 {
        assert!(Instant::now() < deadline, "a dead session's lease lingers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(lease);
    // All 3 leases are available again.
    let held: Vec<_> = futures::stream::iter(0..3)
        .then(|_| s.acquire_timeout(Duration::from_secs(5)))
        .collect()
        .await;
    assert!(held.iter().all(|l| l.is_ok()));
    assert!(
        s.try_acquire().await.unwrap().is_none(),
        "a 4th lease is refused"
    );
}

/// An operator deleting the lock node ends the hold: `lost()` completes and `is_held()` turns
/// false, while the session itself is fine.
#[tokio::test]
async fn a_deleted_lock_node_ends_the_hold() {
    let ens = zkr_testing::shared().expect("zookeeper");
    let c = common::client(&ens.connect_string(), 4000).await;
    let operator = common::client(&ens.connect_string(), 4000).await;
    let path = common::root("deleted-node");
    let m = zkr_recipes::Mutex::new(&c, &path).unwrap();
    let g = m.acquire().await.unwrap();
    assert!(!g.is_lost());
    operator
        .delete(g.fence().path.as_str(), None)
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), g.lost())
        .await
        .expect("lost() completes once the node is deleted");
    assert!(g.is_lost());
    assert!(c.state().is_connected(), "the session itself is fine");
    drop(g);
    c.close().await;
    operator.close().await;
}

/// A release future dropped mid-way (under a timeout) still removes the lock node: the guard
/// is marked released only once the delete finished, so dropping it deletes in the background.
#[tokio::test]
async fn a_release_dropped_mid_way_still_frees_the_lock() {
    let ens = zkr_testing::shared().expect("zookeeper");
    let c = common::client(&ens.connect_string(), 4000).await;
    let other = common::client(&ens.connect_string(), 4000).await;
    let path = common::root("dropped-release");
    for _ in 0..20 {
        let g = zkr_recipes::Mutex::new(&c, &path)
            .unwrap()
            .acquire()
            .await
            .unwrap();
        let node = g.fence().path.as_str().to_string();
        let _ = tokio::time::timeout(Duration::from_micros(1), g.release()).await;
        tokio::time::timeout(Duration::from_secs(5), other.wait_gone(&node))
            .await
            .expect("the node goes although the release was dropped")
            .unwrap();
    }
    c.close().await;
    other.close().await;
}

/// `MutexGuard::release` dropped at each of its await points in turn still frees the lock (the
/// guard's drop deletes the node). Run until a release completes within the polls allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_dropped_at_every_await_point_still_frees_the_lock() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let c = client(&ens.connect_string(), 10_000).await;
    let other = client(&ens.connect_string(), 10_000).await;
    let path = root("dropped-release-each");
    let mutex = Mutex::new(&c, &path).unwrap();
    for polls in 0.. {
        assert!(polls < 100, "release never completed");
        let g = mutex
            .acquire_timeout(Duration::from_secs(10))
            .await
            .unwrap();
        let node = g.fence().path.clone();
        let finished = poll_at_most(g.release(), polls).await;
        if let Some(r) = &finished {
            assert!(r.is_ok(), "{r:?}");
        }
        tokio::time::timeout(Duration::from_secs(10), other.wait_gone(&node))
            .await
            .unwrap_or_else(|_| panic!("release dropped after {polls} polls left the lock node"))
            .unwrap();
        if finished.is_some() {
            assert!(
                polls >= 2,
                "never dropped after an await: done within {polls} polls"
            );
            break;
        }
    }
    // And the lock is free for someone else.
    Mutex::new(&other, &path)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .expect("the lock is free")
        .release()
        .await
        .unwrap();
    c.close().await;
    other.close().await;
}
