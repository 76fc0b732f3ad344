//! Naming recipes (`SequentialIds`, `AtomicCounter`, `IdBlocks`) against real ZooKeeper:
//! uniqueness across 4 sessions, Curator's counter layout, and a counter changed while a client
//! was cut off (re-read, never overwritten). Uniqueness across 4 OS processes
//! running `zkr id next` is tested in `cli/tests/cli_recipes.rs`.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{client, expect_state, init_tracing, root};
use zkr::{CreateMode, SessionState};
use zkr_recipes::{AtomicCounter, IdBlocks, SequentialIds};
use zkr_testing::{self as testing, FaultProxy};

fn zk() -> &'static zkr_testing::ZkEnsemble {
    testing::shared().expect("zookeeper")
}

async fn four_clients() -> Vec<zkr::Client> {
    let zk = zk().connect_string();
    futures::future::join_all((0..4).map(|_| client(&zk, 10_000))).await
}

fn assert_unique(ids: &[i64]) {
    let set: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(set.len(), ids.len(), "duplicate ids handed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_ids_unique_ordered_and_cleaned_up() {
    init_tracing();
    let base = root("ids-seq");
    let dir = format!("{base}/orders");
    let clients = four_clients().await;
    let work = clients.iter().map(|c| {
        let ids = SequentialIds::new(c, &dir).unwrap();
        async move {
            let mut mine = Vec::new();
            for _ in 0..25 {
                mine.push(ids.next().await.unwrap());
            }
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "ordered within a client: {mine:?}"
            );
            let batch = ids.next_batch(200).await.unwrap();
            assert!(batch[0] > *mine.last().unwrap(), "a batch comes after");
            mine.extend(batch);
            mine
        }
    });
    let all: Vec<i64> = futures::future::join_all(work)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(all.len(), 4 * 225);
    assert_unique(&all);

    // Every ID node is deleted again.
    let admin = &clients[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = admin.get_children(&dir).await.unwrap();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{} id nodes left", left.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A leftover (as from a lost create reply) is removed by cleanup().
    admin
        .create(&format!("{dir}/id-"), b"", CreateMode::PersistentSequential)
        .await
        .unwrap();
    let ids = SequentialIds::new(admin, &dir).unwrap();
    assert_eq!(ids.cleanup().await.unwrap(), 1);
    admin.delete_recursive(&base).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_counter_curator_layout_and_contention() {
    init_tracing();
    let base = root("ids-counter");
    let path = format!("{base}/c");
    let clients = four_clients().await;
    let admin = &clients[0];
    let counter = AtomicCounter::new(admin, &path).unwrap();
    assert_eq!(counter.get().await.unwrap(), 0, "no node = 0");
    admin
        .create_with_parents(&path, b"", CreateMode::Persistent)
        .await
        .unwrap();
    assert_eq!(counter.get().await.unwrap(), 0, "empty = 0");
    assert_eq!(counter.increment().await.unwrap().post, 1);
    // Curator's DistributedAtomicLong layout: 8 bytes big-endian.
    admin
        .set_data(&path, &41i64.to_be_bytes(), None)
        .await
        .unwrap();
    let v = counter.increment().await.unwrap();
    // The handle's fast path (its own last write) fails the version check and re-reads.
    assert_eq!((v.pre, v.post, v.tries), (41, 42, 2));
    let v = counter.increment().await.unwrap();
    assert_eq!(
        (v.pre, v.post, v.tries),
        (42, 43, 1),
        "uncontended: one try"
    );
    admin
        .set_data(&path, &42i64.to_be_bytes(), None)
        .await
        .unwrap();
    assert_eq!(admin.get_data(&path).await.unwrap().0, 42i64.to_be_bytes());
    assert!(counter.compare_and_set(42, 100).await.unwrap());
    assert!(!counter.compare_and_set(42, 7).await.unwrap());
    assert_eq!(counter.decrement().await.unwrap().post, 99);
    assert_eq!(counter.force_set(0).await.unwrap().post, 0);

    // 4 sessions × 50 increments concurrently: every post-value distinct, none lost.
    let work = clients.iter().map(|c| {
        let counter = AtomicCounter::new(c, &path).unwrap();
        async move {
            let mut posts = Vec::new();
            for _ in 0..50 {
                posts.push(counter.increment().await.unwrap().post);
            }
            posts
        }
    });
    let posts: Vec<i64> = futures::future::join_all(work)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_unique(&posts);
    assert_eq!(counter.get().await.unwrap(), 200);

    // A payload of the wrong size is an error, not a silent 0.
    admin.set_data(&path, b"abc", None).await.unwrap();
    assert!(matches!(
        counter.increment().await,
        Err(zkr_recipes::Error::Payload { .. })
    ));
    admin.delete_recursive(&base).await.unwrap();
}

/// The counter changes while a client is cut off; after healing its increment
/// builds on the new value (re-read), never on what it saw before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_changed_while_cut_off_is_reread() {
    init_tracing();
    let base = root("ids-cut");
    let path = format!("{base}/c");
    let admin = client(&zk().connect_string(), 10_000).await;
    let proxy = FaultProxy::for_ensemble(zk()).unwrap();
    let c = client(&proxy.connect_string(), 4000).await;
    let counter = AtomicCounter::new(&c, &path).unwrap();
    assert_eq!(counter.add(10).await.unwrap().post, 10);

    let mut states = c.states();
    proxy.cut();
    expect_state(&mut states, Duration::from_secs(10), "Suspended", |s| {
        matches!(s, SessionState::Suspended { .. })
    })
    .await;
    let other = AtomicCounter::new(&admin, &path).unwrap();
    assert_eq!(other.add(5).await.unwrap().post, 15);
    // Issued while cut off, with a cached value (10) that is already stale.
    let pending = tokio::spawn({
        let counter = counter.clone();
        async move { counter.increment().await }
    });
    assert_eq!(other.add(5).await.unwrap().post, 20);
    assert!(
        !pending.is_finished(),
        "an increment completed while cut off"
    );
    proxy.heal();
    let v = pending.await.unwrap().unwrap();
    assert_eq!((v.pre, v.post), (20, 21));
    c.close().await;
    admin.delete_recursive(&base).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_blocks_unique_across_sessions_and_increasing() {
    init_tracing();
    let base = root("ids-blocks");
    let path = format!("{base}/c");
    let clients = four_clients().await;
    let work = clients.iter().enumerate().map(|(i, c)| {
        let blocks = IdBlocks::new(c, &path, 7 + i as u32).unwrap();
        let counter = AtomicCounter::new(c, &path).unwrap();
        async move {
            let mut mine = Vec::new();
            let mut plain = Vec::new();
            for j in 0..150 {
                mine.push(blocks.next().await.unwrap());
                if j % 25 == 0 {
                    plain.push(counter.increment().await.unwrap().post);
                }
            }
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "increasing within a process"
            );
            mine.extend(plain);
            mine
        }
    });
    let all: Vec<i64> = futures::future::join_all(work)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(all.len(), 4 * 156);
    assert_unique(&all);
    assert!(IdBlocks::new(&clients[0], &path, 0).is_err());
    clients[0].delete_recursive(&base).await.unwrap();
}
