//! Bounded memory for a subscriber that does not read: a data watch stream sleeps through more
//! changes than its queue holds, and a recursive persistent watch stream through 100,000
//! changes of a real ZooKeeper node. Each holds at
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

/// Waits until `w` holds at least `n` queued events.
async fn wait_queued(w: &zkr::DataWatch, n: usize, what: &str) {
    let t0 = Instant::now();
    while w.queued() < n {
        assert!(t0.elapsed() < Duration::from_secs(10), "no {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
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

    // The data watch, not read while its node changes more than a queue's worth of times,
    // each change after the watch queued the previous one (a one-shot server watch re-read
    // after each fire: changes inside one burst coalesce by nature, so a burst would not fill
    // the queue). Full, it holds exactly `CAPACITY` events; later changes merge into the last.
    let dnode = format!("{root}/data");
    c.create(&dnode, b"0", CreateMode::Persistent)
        .await
        .unwrap();
    let mut data = c.watch_data(&dnode).unwrap();
    wait_queued(&data, 1, "the initial event").await;
    let total = fanout::CAPACITY + 100;
    for i in 1..=total {
        let before = data.queued();
        writer
            .set_data(&dnode, i.to_string().as_bytes(), None)
            .await
            .unwrap();
        if before < fanout::CAPACITY {
            wait_queued(&data, before + 1, "the change's event").await;
        }
    }
    assert_eq!(data.queued(), fanout::CAPACITY);
    // Read out: a queue's worth, the last one (once the last change was merged) with the
    // latest data.
    let want = total.to_string().into_bytes();
    let mut n = 0;
    let mut latest = None;
    let t0 = Instant::now();
    while latest.as_deref() != Some(want.as_slice()) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the latest data never came"
        );
        if let Ok(Some(ev)) = data.next_timeout(Duration::from_secs(10)).await {
            n += 1;
            latest = ev.unwrap().data().map(|d| d.to_vec());
        }
    }
    // The last change may land after the reading began: then it is one more event.
    assert!(
        (fanout::CAPACITY..=fanout::CAPACITY + 1).contains(&n),
        "{n} data events"
    );
    drop(data);

    // The persistent watch is not read until all the changes are made.
    let mut deep = c.add_watch(&root, true).await.unwrap();
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
    let rss_after = rss_bytes();
    let grown = rss_after.saturating_sub(rss_before);
    eprintln!(
        "queued: persistent {}; rss {} KiB -> {} KiB (+{} KiB)",
        deep.queued(),
        rss_before / 1024,
        rss_after / 1024,
        grown / 1024
    );
    assert_eq!(deep.queued(), fanout::CAPACITY);
    // 100,000 events of a 250-byte path held in a queue would be more than 25 MB.
    assert!(grown < 8 << 20, "memory grew by {} KiB", grown / 1024);

    // The persistent watch: the events that fitted, then one `Lagged` marker for the rest.
    let mut events = Vec::new();
    while let Ok(Some(ev)) = deep.next_timeout(Duration::from_millis(200)).await {
        events.push(ev);
    }
    assert_eq!(events.len(), fanout::CAPACITY);
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

    drop(deep);
    c.delete_recursive(&root).await.unwrap();
}
