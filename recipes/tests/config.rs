//! Config center (`zkr_recipes::Config`, `ConfigTree`) against real ZooKeeper, with real faults:
//! a subscriber cut off (fault proxy) while the config changes, a session expired meanwhile,
//! bad payloads, and keys deleted and re-created while disconnected.
//!
//! Failure modes covered (see docs/failure-modes.md): a change made while cut off is delivered
//! after healing (*Missed change on reconnect*); a delete + re-create at the same version is seen
//! (*Same-version re-create*); keys vanishing during the first load do not stall it (*Vanishing
//! child during a load*); a value whose version repeats, or that changed while disconnected, is
//! re-read (*Stuck versioned value*).

mod common;

use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

use common::{client, init_tracing, root};
use serde::{Deserialize, Serialize};
use zkr::{Client, CreateMode};
use zkr_recipes::{Config, ConfigEvent, ConfigTree, TreeEvent};
use zkr_testing::{self as testing, FaultProxy};

const T: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Db {
    url: String,
    pool: u32,
}

fn db(pool: u32) -> Db {
    Db {
        url: format!("postgres://db/{pool}"),
        pool,
    }
}

fn zk() -> &'static zkr_testing::ZkEnsemble {
    testing::shared().expect("zookeeper")
}

async fn proxied(session_ms: u64) -> (FaultProxy, Client) {
    let proxy = FaultProxy::for_ensemble(zk()).expect("proxy");
    let c = client(&proxy.connect_string(), session_ms).await;
    (proxy, c)
}

/// Waits for an event matching `pred`, skipping others.
async fn expect_event<T: Clone + std::fmt::Debug>(
    sub: &mut zkr_recipes::ConfigSubscription<T>,
    what: &str,
    mut pred: impl FnMut(&ConfigEvent<T>) -> bool,
) -> ConfigEvent<T> {
    let mut seen = Vec::new();
    let r = tokio::time::timeout(T, async {
        while let Some(ev) = sub.next().await {
            seen.push(ev.clone());
            if pred(&ev) {
                return Some(ev);
            }
        }
        None
    })
    .await;
    match r {
        Ok(Some(ev)) => ev,
        _ => panic!("expected {what}; saw {seen:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_get_subscribe_and_compare_and_set() {
    init_tracing();
    let c = client(&zk().connect_string(), 10_000).await;
    let path = format!("{}/app/db", root("cfg-basic"));
    let cfg: Config<Db> = Config::new(&c, &path).unwrap();

    assert_eq!(cfg.get().await.unwrap(), None, "nothing published yet");
    let mut sub = cfg.subscribe().unwrap();
    expect_event(&mut sub, "Absent", |e| matches!(e, ConfigEvent::Absent)).await;

    // Create-if-absent, then compare-and-set.
    let s0 = cfg.publish_cas(&db(1), None).await.unwrap();
    assert!(
        cfg.publish_cas(&db(9), None).await.is_err(),
        "exists already"
    );
    let v = cfg.get().await.unwrap().unwrap();
    assert_eq!(
        (v.value.clone(), v.version, v.stale),
        (db(1), s0.version, false)
    );
    let s1 = cfg.publish_cas(&db(2), Some(v.version)).await.unwrap();
    assert_eq!(s1.version, v.version + 1);
    let stale_cas = cfg.publish_cas(&db(3), Some(v.version)).await;
    assert!(
        matches!(
            stale_cas,
            Err(zkr_recipes::Error::Zk(zkr::Error::BadVersion { .. }))
        ),
        "{stale_cas:?}"
    );
    let got = sub.wait_for_timeout(|v| v.value == db(2), T).await.unwrap();
    assert_eq!(got.mzxid, s1.mzxid);

    // A burst converges to the last value (intermediate versions may coalesce).
    for i in 10..40 {
        cfg.publish(&db(i)).await.unwrap();
    }
    let last = sub
        .wait_for_timeout(|v| v.value == db(39), T)
        .await
        .unwrap();
    assert!(!last.stale);
    assert_eq!(cfg.get().await.unwrap().unwrap().value, db(39));
    let mut changes = sub.changes();
    let now = changes.next().await.unwrap();
    assert_eq!(now.as_ref().map(|v| v.value.pool), Some(39));

    cfg.unpublish().await.unwrap();
    expect_event(&mut sub, "Absent after unpublish", |e| {
        matches!(e, ConfigEvent::Absent)
    })
    .await;
    assert_eq!(sub.current(), None);
    c.delete_recursive(&root_of(&path)).await.unwrap();
}

fn root_of(path: &str) -> String {
    format!(
        "/{}",
        path.trim_start_matches('/').split('/').next().unwrap()
    )
}

/// A change while cut off: the subscriber is cut off (stale, last value kept), the config changes
/// twice meanwhile; after healing the latest value is delivered and the flag clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_while_cut_off_is_delivered_after_healing() {
    init_tracing();
    let admin = client(&zk().connect_string(), 10_000).await;
    let path = format!("{}/db", root("cfg-cut"));
    let publisher: Config<Db> = Config::new(&admin, &path).unwrap();
    publisher.publish(&db(1)).await.unwrap();

    let (proxy, c) = proxied(4000).await;
    let cfg: Config<Db> = Config::new(&c, &path).unwrap();
    let mut sub = cfg.subscribe().unwrap();
    sub.wait_for_timeout(|v| v.value == db(1), T).await.unwrap();

    proxy.cut();
    expect_event(&mut sub, "Stale", |e| matches!(e, ConfigEvent::Stale)).await;
    let kept = sub.current().unwrap();
    assert_eq!(kept.value, db(1), "last good value kept while disconnected");
    assert!(kept.stale, "flagged stale");
    publisher.publish(&db(2)).await.unwrap();
    let s3 = publisher.publish(&db(3)).await.unwrap();
    // A pull while cut off fails (bounded) rather than returning old data as fresh.
    assert!(cfg.get_timeout(Duration::from_millis(300)).await.is_err());
    assert_eq!(sub.current().unwrap().value, db(1));

    proxy.heal();
    let v = sub
        .wait_for_timeout(|v| v.value == db(3) && !v.stale, T)
        .await
        .unwrap();
    assert_eq!((v.version, v.mzxid), (s3.version, s3.mzxid));
    expect_event(&mut sub, "Fresh", |e| matches!(e, ConfigEvent::Fresh)).await;
    c.close().await;
    admin.delete_recursive(&root_of(&path)).await.unwrap();
}

/// Same-version re-create: deleted and re-created at the same data version (0) while the subscriber
/// was cut off; and a change during a session expiry. Both are re-read and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_at_same_version_and_expiry_are_not_missed() {
    init_tracing();
    let admin = client(&zk().connect_string(), 10_000).await;
    let base = root("cfg-recreate");
    let path = format!("{base}/db");
    admin
        .create_with_parents(&path, br#"{"url":"a","pool":1}"#, CreateMode::Persistent)
        .await
        .unwrap();

    let (proxy, c) = proxied(3000).await;
    let cfg: Config<Db> = Config::new(&c, &path).unwrap();
    let mut sub = cfg.subscribe().unwrap();
    let first = sub
        .wait_for_timeout(|v| v.value.pool == 1, T)
        .await
        .unwrap();
    assert_eq!(first.version, 0);

    proxy.cut();
    expect_event(&mut sub, "Stale", |e| matches!(e, ConfigEvent::Stale)).await;
    admin.delete(&path, None).await.unwrap();
    admin
        .create(&path, br#"{"url":"b","pool":2}"#, CreateMode::Persistent)
        .await
        .unwrap();
    proxy.heal();
    let v = sub
        .wait_for_timeout(|v| v.value.pool == 2, T)
        .await
        .unwrap();
    assert_eq!(v.version, 0, "same version as before");
    assert_ne!(v.czxid, first.czxid, "told apart by czxid/mzxid");
    assert!(v.mzxid > first.mzxid);

    // Session expiry: changed while the session was being replaced.
    let mut states = c.states();
    c.expire_session_for_testing(&zk().connect_string(), &proxy)
        .await
        .unwrap();
    admin
        .set_data(&path, br#"{"url":"c","pool":3}"#, None)
        .await
        .unwrap();
    common::expect_state(&mut states, T, "new session", |s| {
        matches!(s, zkr::SessionState::Connected { epoch: 2, .. })
    })
    .await;
    let v = sub
        .wait_for_timeout(|v| v.value.pool == 3 && !v.stale, T)
        .await
        .unwrap();
    assert_eq!(v.version, 1);
    c.close().await;
    admin.delete_recursive(&base).await.unwrap();
}

/// Malformed JSON and a schema-breaking payload are error events; the last good value stays in
/// force; the next good value is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payload_keeps_last_good_value() {
    init_tracing();
    let c = client(&zk().connect_string(), 10_000).await;
    let base = root("cfg-bad");
    let path = format!("{base}/db");
    let cfg: Config<Db> = Config::new(&c, &path).unwrap();
    cfg.publish(&db(7)).await.unwrap();
    let mut sub = cfg.subscribe().unwrap();
    sub.wait_for_timeout(|v| v.value == db(7), T).await.unwrap();

    let bad = c.set_data(&path, b"{not json", None).await.unwrap();
    let ev = expect_event(&mut sub, "Invalid", |e| {
        matches!(e, ConfigEvent::Invalid { .. })
    })
    .await;
    match ev {
        ConfigEvent::Invalid {
            error: zkr_recipes::Error::Payload { .. },
            version,
            ..
        } => assert_eq!(version, bad.version),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sub.current().unwrap().value,
        db(7),
        "last good value in force"
    );
    assert!(matches!(
        cfg.get().await,
        Err(zkr_recipes::Error::Payload { .. })
    ));

    c.set_data(&path, br#"{"url":5}"#, None).await.unwrap();
    expect_event(&mut sub, "Invalid (schema)", |e| {
        matches!(e, ConfigEvent::Invalid { .. })
    })
    .await;
    assert_eq!(sub.current().unwrap().value, db(7));

    cfg.publish(&db(8)).await.unwrap();
    sub.wait_for_timeout(|v| v.value == db(8), T).await.unwrap();
    c.delete_recursive(&base).await.unwrap();
}

fn map(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// ConfigTree: keys added, changed, removed; while cut off a key is deleted and re-created at
/// the same version, another removed, one added, one changed: it converges after healing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_converges_after_cut_with_recreated_key() {
    init_tracing();
    let admin = client(&zk().connect_string(), 10_000).await;
    let dir = format!("{}/limits", root("cfg-tree"));
    let writer: ConfigTree<u32> = ConfigTree::new(&admin, &dir).unwrap();
    for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
        writer.set(k, &v).await.unwrap();
    }

    let (proxy, c) = proxied(4000).await;
    let tree: ConfigTree<u32> = ConfigTree::new(&c, &dir).unwrap();
    let mut sub = tree.subscribe().unwrap();
    let snap = sub.wait_for_timeout(|s| s.loaded, T).await.unwrap();
    assert_eq!(snap.values(), map(&[("a", 1), ("b", 2), ("c", 3)]));
    let a_before = snap.entries["a"].clone();

    writer.set("c", &30).await.unwrap();
    sub.wait_for_timeout(|s| s.values() == map(&[("a", 1), ("b", 2), ("c", 30)]), T)
        .await
        .unwrap();

    proxy.cut();
    sub.wait_for_timeout(|s| s.stale, T).await.unwrap();
    let a_path = format!("{dir}/a");
    admin.delete(&a_path, None).await.unwrap();
    admin
        .create(&a_path, b"100", CreateMode::Persistent)
        .await
        .unwrap();
    writer.remove("b").await.unwrap();
    writer.set("d", &4).await.unwrap();
    writer.set("c", &31).await.unwrap();
    assert_eq!(
        sub.current().values(),
        map(&[("a", 1), ("b", 2), ("c", 30)]),
        "kept while disconnected"
    );
    proxy.heal();
    let snap = sub
        .wait_for_timeout(
            |s| !s.stale && s.values() == map(&[("a", 100), ("c", 31), ("d", 4)]),
            T,
        )
        .await
        .unwrap();
    let a = &snap.entries["a"];
    assert_eq!(a.version, a_before.version, "same version");
    assert_ne!(a.czxid, a_before.czxid);

    // A bad payload for one key keeps its last good value.
    admin
        .set_data(&format!("{dir}/d"), b"nope", None)
        .await
        .unwrap();
    let r = tokio::time::timeout(T, async {
        while let Some(ev) = sub.next().await {
            if let TreeEvent::Invalid { key, .. } = ev {
                return key;
            }
        }
        String::new()
    })
    .await
    .unwrap();
    assert_eq!(r, "d");
    assert_eq!(sub.current().entries["d"].value, 4);
    assert!(tree.get_all().await.is_err(), "a pull reports the bad key");
    writer.set("d", &5).await.unwrap();
    let all = sub
        .wait_for_timeout(|s| s.values() == map(&[("a", 100), ("c", 31), ("d", 5)]), T)
        .await
        .unwrap();
    assert_eq!(
        tree.get_all()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect::<BTreeMap<_, _>>(),
        all.values()
    );
    c.close().await;
    admin.delete_recursive(&root_of(&dir)).await.unwrap();
}

/// Keys vanish while the first load runs; the load still completes and converges
/// to the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_first_load_completes_while_keys_vanish() {
    init_tracing();
    let admin = client(&zk().connect_string(), 10_000).await;
    let dir = format!("{}/keys", root("cfg-vanish"));
    let writer: ConfigTree<u32> = ConfigTree::new(&admin, &dir).unwrap();
    for i in 0..60u32 {
        writer.set(&format!("k{i:02}"), &i).await.unwrap();
    }
    let c = client(&zk().connect_string(), 10_000).await;
    let tree: ConfigTree<u32> = ConfigTree::new(&c, &dir).unwrap();
    let deleter = {
        let admin = admin.clone();
        let dir = dir.clone();
        tokio::spawn(async move {
            for i in (0..60u32).filter(|i| i % 2 == 0) {
                admin.delete(&format!("{dir}/k{i:02}"), None).await.unwrap();
            }
        })
    };
    let sub = tree.subscribe().unwrap();
    sub.wait_for_timeout(|s| s.loaded, T).await.unwrap();
    deleter.await.unwrap();
    let truth: BTreeMap<String, u32> = (0..60u32)
        .filter(|i| i % 2 == 1)
        .map(|i| (format!("k{i:02}"), i))
        .collect();
    sub.wait_for_timeout(|s| s.values() == truth, T)
        .await
        .unwrap();
    c.close().await;
    admin.delete_recursive(&root_of(&dir)).await.unwrap();
}
