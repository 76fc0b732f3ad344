//! Bad input gets a typed error, never a panic: invalid paths, oversized data, malformed connect
//! strings, an unreachable ensemble.

mod common;

use std::time::{Duration, Instant};

use common::*;
use zkr::{Client, CreateMode, Error, Op};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_paths_and_oversized_data_are_typed_errors() {
    let ens = zkr_testing::shared().expect("zookeeper");
    let c = client(&ens.connect_string(), 10_000).await;
    for bad in [
        "",
        "no-slash",
        "/trailing/",
        "//double",
        "/a//b",
        "/a/./b",
        "/a/../b",
        "/nul\0",
    ] {
        assert!(
            matches!(c.get_data(bad).await, Err(Error::InvalidPath { .. })),
            "get {bad:?}"
        );
        assert!(
            matches!(
                c.create(bad, b"", CreateMode::Persistent).await,
                Err(Error::InvalidPath { .. })
            ),
            "{bad:?}"
        );
        assert!(
            matches!(c.watch_data(bad), Err(Error::InvalidPath { .. })),
            "watch {bad:?}"
        );
    }
    assert!(matches!(
        c.delete("/", None).await,
        Err(Error::InvalidPath { .. })
    ));
    let root = root("bad");
    let big = vec![7u8; 1024 * 1024 + 1];
    let e = c
        .create(&root, &big, CreateMode::Persistent)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::DataTooLarge { len, .. } if len == big.len()),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("exceeds"),
        "message says what is wrong: {e}"
    );
    assert!(
        c.exists(&root).await.unwrap().is_none(),
        "nothing was written"
    );
    c.create(&root, b"ok", CreateMode::Persistent)
        .await
        .unwrap();
    assert!(matches!(
        c.set_data(&root, &big, None).await,
        Err(Error::DataTooLarge { .. })
    ));
    let ops = [Op::SetData {
        path: root.clone(),
        data: big.clone(),
        version: None,
    }];
    assert!(matches!(
        c.multi(&ops).await,
        Err(Error::DataTooLarge { .. })
    ));
    assert_eq!(c.get_data(&root).await.unwrap().0, b"ok", "no data lost");
    // Server-side errors are typed too.
    assert!(matches!(
        c.get_data(&format!("{root}/nope")).await,
        Err(Error::NoNode { .. })
    ));
    assert!(matches!(
        c.create(&root, b"", CreateMode::Persistent).await,
        Err(Error::NodeExists { .. })
    ));
    assert!(matches!(
        c.set_data(&root, b"x", Some(42)).await,
        Err(Error::BadVersion { .. })
    ));
    c.create(&format!("{root}/kid"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    assert!(matches!(
        c.delete(&root, None).await,
        Err(Error::NotEmpty { .. })
    ));
    let e = c
        .multi(&[
            Op::Check {
                path: root.clone(),
                version: Some(0),
            },
            Op::Create {
                path: format!("{root}/kid"),
                data: vec![],
                mode: CreateMode::Persistent,
            },
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::MultiFailed { index: 1, source } if source.is_node_exists()),
        "{e:?}"
    );
    c.delete_recursive(&root).await.unwrap();
}

#[tokio::test]
async fn malformed_connect_strings_are_rejected() {
    for bad in [
        "",
        ",",
        "host:notaport",
        "host:0",
        "host:70000",
        ":2181",
        "a:1,,b:2",
        "h:1/bad//chroot",
        "h :1",
    ] {
        let t = Instant::now();
        let r = Client::builder(bad).connect().await;
        assert!(
            matches!(r, Err(Error::InvalidConnectString { .. })),
            "{bad:?}: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "rejected before any network activity"
        );
    }
}

/// An unreachable ensemble fails within the connect timeout, without busy-looping.
#[tokio::test]
async fn unreachable_ensemble_fails_within_connect_timeout() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cpu_before = cpu_time();
    let t = Instant::now();
    let r = Client::builder(&format!("127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(1500))
        .connect()
        .await;
    let took = t.elapsed();
    assert!(matches!(r, Err(Error::Unreachable { .. })), "{r:?}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    let cpu = cpu_time() - cpu_before;
    assert!(
        cpu < Duration::from_millis(500),
        "no busy loop while unreachable: {cpu:?} CPU in {took:?}"
    );
}

fn cpu_time() -> Duration {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Passwords never appear in `Debug` output of the builder or the client.
#[tokio::test]
async fn secrets_stay_out_of_debug_output() {
    let ens = zkr_testing::shared().expect("zookeeper");
    let builder = zkr::Client::builder(&ens.connect_string())
        .digest_auth("app", "hunter2-secret")
        .auth("digest", b"other:pa55word");
    let shown = format!("{builder:?}");
    assert!(shown.contains("digest"), "{shown}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("pa55word"),
        "{shown}"
    );
    let client = builder.connect().await.unwrap();
    let shown = format!("{client:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("pa55word"),
        "{shown}"
    );
    client.close().await;
}

/// `Duration::MAX` (or anything beyond what the clock holds) is "no deadline" or a typed error,
/// never a panic: in the client builder and in every recipe wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_durations_never_panic() {
    let ens = zkr_testing::shared().expect("zookeeper");
    let e = Client::builder(&ens.connect_string())
        .session_timeout(Duration::MAX)
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("too long"), "{e}");
    let c = Client::builder(&ens.connect_string())
        .session_timeout(Duration::from_secs(10))
        .connect_timeout(Duration::MAX)
        .operation_timeout(Duration::MAX)
        .connect()
        .await
        .unwrap();
    let root = "/bad-input-extreme-durations";
    let m = zkr_recipes::Mutex::new(&c, &format!("{root}/mutex")).unwrap();
    let g = m.acquire_timeout(Duration::MAX).await.unwrap();
    g.release().await.unwrap();
    let rw = zkr_recipes::RwLock::new(&c, &format!("{root}/rw")).unwrap();
    rw.read_timeout(Duration::MAX)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    rw.write_timeout(Duration::MAX)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let sem = zkr_recipes::Semaphore::new(&c, &format!("{root}/sem"), 1).unwrap();
    let lease = sem.acquire_timeout(Duration::MAX).await.unwrap();
    drop(lease);
    let q = zkr_recipes::WorkQueue::new(&c, &format!("{root}/queue")).unwrap();
    q.put(&serde_json::json!({"n": 1})).await.unwrap();
    let mut w = q.worker("w").unwrap();
    let task = w.claim_timeout(Duration::MAX).await.unwrap();
    task.complete(serde_json::json!(null)).await.unwrap();
    c.delete_recursive(root).await.unwrap();
    c.close().await;
}
