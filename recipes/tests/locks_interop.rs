//! Interop with Apache Curator 5.4 on the same lock paths (clients of different libraries must
//! exclude each other; see docs/failure-modes.md, *Mixed libraries on one lock*): a Curator
//! `InterProcessMutex` holder blocks zkr and a zkr holder blocks Curator; the same for the
//! read/write lock. The Curator side is a real Java program (tests/java/CuratorPeer.java)
//! compiled at test time; the test is skipped (printing why) only where Java is absent.

mod common;

use std::time::Duration;

use common::java::CuratorPeer;
use common::*;
use tokio::task::block_in_place;
use zkr_recipes::{Error, Mutex, RwLock};

fn is_timeout<T>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Timeout { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_and_zkr_mutexes_exclude_each_other() {
    init_tracing();
    let ens = zkr_testing::shared().expect("zookeeper");
    let Some(mut peer) = block_in_place(|| CuratorPeer::start(&ens.connect_string(), 10_000))
    else {
        return;
    };
    let path = root("interop-mutex");
    let c = client(&ens.connect_string(), 10_000).await;
    let m = Mutex::new(&c, &path).unwrap();

    // Curator holds: zkr cannot get it.
    block_in_place(|| peer.call(&format!("mutex-acquire {path} 10000"), "ACQUIRED"));
    let names = c.get_children(&path).await.unwrap();
    assert_eq!(names.len(), 1);
    assert!(
        names[0].starts_with("_c_") && names[0].contains("-lock-"),
        "Curator's node name: {names:?}"
    );
    assert!(m.try_acquire().await.unwrap().is_none());
    assert!(is_timeout(
        &m.acquire_timeout(Duration::from_millis(300)).await
    ));
    // Curator releases: zkr gets it (a waiting zkr acquire is woken).
    let m2 = m.clone();
    let waiting = tokio::spawn(async move { m2.acquire_timeout(Duration::from_secs(10)).await });
    block_in_place(|| peer.call("mutex-release", "RELEASED"));
    let g = waiting.await.unwrap().unwrap();

    // zkr holds: Curator cannot get it.
    let answer = block_in_place(|| peer.call(&format!("mutex-acquire {path} 500"), "TIMEOUT"));
    assert_eq!(answer, "TIMEOUT");
    g.release().await.unwrap();
    block_in_place(|| peer.call(&format!("mutex-acquire {path} 10000"), "ACQUIRED"));
    block_in_place(|| peer.call("mutex-release", "RELEASED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_and_zkr_read_write_locks_interoperate() {
    init_tracing();
    let ens = zkr_testing::shared().expect("zookeeper");
    let Some(mut peer) = block_in_place(|| CuratorPeer::start(&ens.connect_string(), 10_000))
    else {
        return;
    };
    let path = root("interop-rw");
    let c = client(&ens.connect_string(), 10_000).await;
    let l = RwLock::new(&c, &path).unwrap();
    let short = Duration::from_millis(300);

    // Curator's write lock excludes zkr readers and writers.
    block_in_place(|| peer.call(&format!("write-acquire {path} 10000"), "ACQUIRED"));
    assert!(is_timeout(&l.read_timeout(short).await));
    assert!(is_timeout(&l.write_timeout(short).await));
    block_in_place(|| peer.call("rw-release", "RELEASED"));

    // Curator's read lock is shared with zkr readers but excludes a zkr writer.
    block_in_place(|| peer.call(&format!("read-acquire {path} 10000"), "ACQUIRED"));
    let r = l.read_timeout(Duration::from_secs(5)).await.unwrap();
    assert!(is_timeout(&l.write_timeout(short).await));
    r.release().await.unwrap();
    block_in_place(|| peer.call("rw-release", "RELEASED"));

    // zkr's write lock excludes a Curator reader.
    let w = l.write_timeout(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        block_in_place(|| peer.call(&format!("read-acquire {path} 500"), "TIMEOUT")),
        "TIMEOUT"
    );
    w.release().await.unwrap();
    block_in_place(|| peer.call(&format!("read-acquire {path} 10000"), "ACQUIRED"));
    block_in_place(|| peer.call("rw-release", "RELEASED"));
}
