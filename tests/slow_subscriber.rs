//! Bounded memory for a subscriber that does not read: a data watch stream and a recursive
//! persistent watch stream sleep through 100,000 changes of a real ZooKeeper node. Each holds at
//! most `fanout::CAPACITY` queued events, the process's memory stays flat, the data watch's
//! last event carries the latest state, and the persistent watch says that it dropped events
//! (`WatchedEventKind::Lagged`) and then goes on.

mod common;

use std::time::{Duration, Instant};

use common::*;
use zkr::{fanout, CreateMode, Op, WatchedEventKind};
use zkr_testing as testing;

const CHANGES: usize = 100_000;
/// Changes per `multi` (one transaction, one reply; every change still fires its own event).
const PER_MULTI: usize = 1_000;

/// Resident memory of this process, from `/proc/self/statm` (pages of 4 KiB).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_subscriber_holds_a_bounded_queue_through_100_000_changes() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let root = root("slow-sub");
    let c = client(&ens.connect_string(), 10_000).await;
    let writer = client(&ens.connect_string(), 10_000).await;
    c.create(&root, b"", CreateMode::Persistent).await.unwrap();
    // A long name, so that every event an unbounded queue kept would cost memory that shows.
    let node = format!("{root}/{}", "n".repeat(200));
    c.create(&node, b"0", CreateMode::Persistent).await.unwrap();

    // Neither stream is read until all the changes are made.
    let mut data = c.watch_data(&node).unwrap();
    let mut deep = c.add_watch(&root, true).await.unwrap();
    // The data watch has its first read queued (the `Initial` event).
    let t0 = Instant::now();
    while data.queued() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no initial event");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_before = rss_bytes();

    let mut last = String::new();
    for batch in 0..CHANGES / PER_MULTI {
        let ops: Vec<Op> = (0..PER_MULTI)
            .map(|i| {
                last = (batch * PER_MULTI + i + 1).to_string();
                Op::SetData {
                    path: node.clone(),
                    data: last.clone().into_bytes(),
                    version: None,
                }
            })
            .collect();
        writer.multi(&ops).await.unwrap();
    }
    // The watcher sees every notification before a read that shows the last change.
    let t0 = Instant::now();
    loop {
        let (now, _) = c.get_data(&node).await.unwrap();
        if now == last.as_bytes() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "changes not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the data watch's driver catch up with the last change too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_bytes();
    let grown = rss_after.saturating_sub(rss_before);
    eprintln!(
        "queued: data {}, persistent {}; rss {} KiB -> {} KiB (+{} KiB)",
        data.queued(),
        deep.queued(),
        rss_before / 1024,
        rss_after / 1024,
        grown / 1024
    );
    assert!(data.queued() <= fanout::CAPACITY, "{}", data.queued());
    assert!(deep.queued() <= fanout::CAPACITY, "{}", deep.queued());
    // 100,000 events of a 250-byte path held in a queue would be more than 25 MB.
    assert!(grown < 8 << 20, "memory grew by {} KiB", grown / 1024);

    // The data watch: at most a queue's worth, the last one with the latest data.
    let mut n = 0;
    let mut latest = None;
    while let Ok(Some(ev)) = data.next_timeout(Duration::from_millis(200)).await {
        n += 1;
        latest = ev.unwrap().data().map(|d| d.to_vec());
    }
    assert!((1..=fanout::CAPACITY).contains(&n), "{n} data events");
    assert_eq!(latest.as_deref(), Some(last.as_bytes()));

    // The persistent watch: the events that fitted, then one `Lagged` marker for the rest.
    let mut events = Vec::new();
    while let Ok(Some(ev)) = deep.next_timeout(Duration::from_millis(200)).await {
        events.push(ev);
    }
    assert!(events.len() <= fanout::CAPACITY, "{} events", events.len());
    let lagged: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].kind == WatchedEventKind::Lagged)
        .collect();
    assert_eq!(lagged, vec![events.len() - 1], "one marker, last");
    assert_eq!(events[events.len() - 1].path, root);
    assert!(events[..events.len() - 1]
        .iter()
        .all(|e| e.kind == WatchedEventKind::DataChanged && e.path == node));
    // It goes on after the marker.
    writer.set_data(&node, b"after", None).await.unwrap();
    let ev = deep
        .next_timeout(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("an event after the marker");
    assert_eq!(
        (ev.kind, ev.path.as_str()),
        (WatchedEventKind::DataChanged, node.as_str())
    );

    drop((data, deep));
    c.delete_recursive(&root).await.unwrap();
}
