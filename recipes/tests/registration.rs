//! Registration and discovery against real ZooKeeper, with session expiry and cut connections.
//! Covered (see docs/failure-modes.md): instances vanishing during a load, stale
//! re-registration after expiry, and `NodeExists` from an old session's node.

mod common;

use std::time::Duration;

use common::{blocking, client, expect_state, init_tracing, poll_at_most, root};
use serde_json::{json, Value};
use zkr::{CreateMode, SessionState};
use zkr_recipes::discovery::Discovery;
use zkr_recipes::registration::{Registration, RegistrationState, ServiceInstance};
use zkr_testing::{self as testing, FaultProxy};

const T: Duration = Duration::from_secs(15);

/// `instance` registered under `base` (created and started).
async fn register(c: &zkr::Client, base: &str, instance: ServiceInstance) -> Registration {
    let reg = Registration::new(c, base, instance).unwrap();
    reg.start().await.unwrap();
    reg
}

/// A started discovery of service `name` under `base`.
fn discover(c: &zkr::Client, base: &str, name: &str) -> Discovery {
    let disc = Discovery::new(c, base, name).unwrap();
    disc.start().unwrap();
    disc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_is_curators_service_instance_json() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let base = root("reg-json");
    let c = client(&ens.connect_string(), 10_000).await;
    let inst = ServiceInstance::new("api", "a1")
        .with_address("10.0.0.5")
        .with_port(8080)
        .with_payload(json!({"zone": "z1"}));
    let reg = register(&c, &base, inst).await;
    assert_eq!(reg.path(), format!("{base}/api/a1"));
    let (data, stat) = c.get_data(reg.path()).await.unwrap();
    assert_eq!(stat.ephemeral_owner, c.session_id().unwrap().0);
    let text = String::from_utf8(data).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    let mut expected = vec![
        "name",
        "id",
        "address",
        "port",
        "sslPort",
        "payload",
        "registrationTimeUTC",
        "serviceType",
        "uriSpec",
    ];
    let mut sorted = keys.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "{text}");
    assert!(text.starts_with(r#"{"name":"api","id":"a1","address":"10.0.0.5","port":8080,"sslPort":null,"payload":{"zone":"z1"},"registrationTimeUTC":"#), "{text}");
    assert!(
        text.ends_with(r#","serviceType":"DYNAMIC","uriSpec":null}"#),
        "{text}"
    );

    // A node written by Curator 5 (with `enabled` and a typed payload) is readable.
    let java = r#"{"name":"api","id":"j1","address":"10.0.0.9","port":9090,"sslPort":null,"payload":{"@class":"java.util.LinkedHashMap","zone":"z2"},"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":null,"enabled":true}"#;
    c.create(
        &format!("{base}/api/j1"),
        java.as_bytes(),
        CreateMode::Ephemeral,
    )
    .await
    .unwrap();
    let all = Discovery::instances(&c, &base, "api").await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].id, "j1");
    assert_eq!(all[1].port, Some(9090));
    assert_eq!(all[1].payload["zone"], "z2");
    reg.unregister().await.unwrap();
    assert!(c.exists(&format!("{base}/api/a1")).await.unwrap().is_none());
    c.delete_recursive(&base).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_follows_adds_updates_and_removals() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let base = root("reg-disc");
    let a = client(&ens.connect_string(), 10_000).await;
    let b = client(&ens.connect_string(), 10_000).await;
    let w = client(&ens.connect_string(), 10_000).await;
    let mut disc = discover(&w, &base, "svc");
    let first = disc.next_timeout(T).await.unwrap().unwrap();
    assert!(first.is_empty());
    let ra = register(
        &a,
        &base,
        ServiceInstance::new("svc", "a").with_payload(json!(1)),
    )
    .await;
    let _rb = register(
        &b,
        &base,
        ServiceInstance::new("svc", "b").with_payload(json!(1)),
    )
    .await;
    disc.wait_for_timeout(|s| s.len() == 2, T).await.unwrap();
    ra.update(json!({"load": 7})).await.unwrap();
    let s = disc
        .wait_for_timeout(
            |s| {
                s.iter()
                    .any(|i| i.id == "a" && i.payload == json!({"load": 7}))
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(s.len(), 2);
    ra.unregister().await.unwrap();
    let s = disc.wait_for_timeout(|s| s.len() == 1, T).await.unwrap();
    assert_eq!(s[0].id, "b");
    b.close().await; // the session ends: its instance goes
    disc.wait_for_timeout(|s| s.is_empty(), T).await.unwrap();
    w.delete_recursive(&base).await.unwrap();
}

/// A node of another (old) session is in the way: it is replaced, no NodeExists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_sessions_node_is_replaced() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let base = root("reg-old");
    let old = client(&ens.connect_string(), 10_000).await;
    let c = client(&ens.connect_string(), 10_000).await;
    let stale =
        serde_json::to_vec(&ServiceInstance::new("svc", "x").with_payload(json!("stale"))).unwrap();
    old.create_with_parents(&format!("{base}/svc/x"), &stale, CreateMode::Ephemeral)
        .await
        .unwrap();
    let reg = register(
        &c,
        &base,
        ServiceInstance::new("svc", "x").with_payload(json!("fresh")),
    )
    .await;
    let (d, st) = c.get_data(reg.path()).await.unwrap();
    assert_eq!(st.ephemeral_owner, c.session_id().unwrap().0);
    assert_eq!(
        ServiceInstance::from_json("x", &d).unwrap().payload,
        json!("fresh")
    );
    drop(reg);
    // Dropping unregisters in the background.
    let mut wd = c.watch_data(&format!("{base}/svc/x")).unwrap();
    loop {
        let ev = wd.next_timeout(T).await.unwrap().unwrap().unwrap();
        if ev.node.is_none() {
            break;
        }
    }
    old.close().await;
    c.delete_recursive(&base).await.unwrap();
}

/// After the session is lost the registration comes back with the newest
/// payload (set while disconnected), replacing the old session's node if still present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_after_session_loss_with_newest_payload() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let base = root("reg-expire");
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let c = client(&proxy.connect_string(), 3000).await;
    let w = client(&ens.connect_string(), 10_000).await;
    let disc = discover(&w, &base, "svc");
    let reg = register(
        &c,
        &base,
        ServiceInstance::new("svc", "r1").with_payload(json!({"v": 1})),
    )
    .await;
    disc.wait_for_timeout(|s| s.len() == 1, T).await.unwrap();
    let first_session = c.session_id().unwrap();

    // 1. Cut off past the session timeout: client-side Lost while the server may still hold
    //    the old node; the payload changes meanwhile.
    let mut states = c.states();
    proxy.cut();
    expect_state(&mut states, T, "Lost", |s| {
        matches!(s, SessionState::Lost { .. })
    })
    .await;
    reg.update(json!({"v": 2})).await.unwrap();
    let old_node = w.exists(reg.path()).await.unwrap();
    tracing::info!(?old_node, "old session's node after the client-side Lost");
    proxy.heal();
    expect_state(&mut states, T, "Connected", |s| {
        matches!(s, SessionState::Connected { .. })
    })
    .await;
    let st = reg.wait_registered_timeout(T).await.unwrap();
    assert!(
        matches!(st, RegistrationState::Registered { epoch: 2, .. }),
        "{st:?}"
    );
    let s = disc
        .wait_for_timeout(|s| s.len() == 1 && s[0].payload == json!({"v": 2}), T)
        .await
        .unwrap();
    assert_eq!(s[0].id, "r1");
    let (_, stat) = w.get_data(reg.path()).await.unwrap();
    assert_eq!(stat.ephemeral_owner, c.session_id().unwrap().0);
    assert_ne!(stat.ephemeral_owner, first_session.0);

    // 2. A real server-side expiry; the newest payload is written after it.
    c.expire_session_for_testing(&ens.connect_string(), &proxy)
        .await
        .unwrap();
    expect_state(&mut states, T, "Lost", |s| {
        matches!(s, SessionState::Lost { .. })
    })
    .await;
    reg.update(json!({"v": 3})).await.unwrap();
    expect_state(&mut states, T, "Connected", |s| {
        matches!(s, SessionState::Connected { .. })
    })
    .await;
    reg.wait_registered_timeout(T).await.unwrap();
    disc.wait_for_timeout(|s| s.len() == 1 && s[0].payload == json!({"v": 3}), T)
        .await
        .unwrap();
    let (d, stat) = w.get_data(reg.path()).await.unwrap();
    assert_eq!(stat.ephemeral_owner, c.session_id().unwrap().0);
    assert_eq!(
        ServiceInstance::from_json("r1", &d).unwrap().payload,
        json!({"v": 3})
    );
    reg.unregister().await.unwrap();
    disc.wait_for_timeout(|s| s.is_empty(), T).await.unwrap();
    w.delete_recursive(&base).await.unwrap();
}

/// Unregister while the session is being replaced: the instance stays gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_during_reconnect_stays_gone() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let base = root("reg-unreg");
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let c = client(&proxy.connect_string(), 2000).await;
    let w = client(&ens.connect_string(), 10_000).await;
    let reg = register(&c, &base, ServiceInstance::new("svc", "u1")).await;
    let path = reg.path().to_string();
    let mut states = c.states();
    proxy.cut();
    expect_state(&mut states, T, "Lost", |s| {
        matches!(s, SessionState::Lost { .. })
    })
    .await;
    // Unregister while no session exists; heal right away so that the new session and the
    // re-registration race the unregister.
    let unreg = tokio::spawn(reg.unregister());
    proxy.heal();
    unreg.await.unwrap().unwrap();
    expect_state(&mut states, T, "Connected", |s| {
        matches!(s, SessionState::Connected { .. })
    })
    .await;
    // The old session's node (if it was still there) is gone, and nothing comes back.
    let mut wd = w.watch_data(&path).unwrap();
    loop {
        let ev = wd.next_timeout(T).await.unwrap().unwrap().unwrap();
        if ev.node.is_none() {
            break;
        }
    }
    // Give a wrong re-registration every chance to happen: a new session and 2 more seconds.
    match wd.next_timeout(Duration::from_secs(2)).await {
        Err(zkr::Error::Timeout { .. }) => {}
        other => panic!("the unregistered instance came back: {other:?}"),
    }
    assert!(w.exists(&path).await.unwrap().is_none());
    drop(c);
    w.delete_recursive(&base).await.unwrap();
    blocking(move || drop(proxy)).await;
}

/// Instances vanish while the discovery loads; the load completes, treating them
/// as gone, and converges to the survivors. Junk nodes are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_load_survives_vanishing_children() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let base = root("reg-vanish");
    let c = client(&ens.connect_string(), 10_000).await;
    let w = client(&ens.connect_string(), 10_000).await;
    let dir = format!("{base}/svc");
    c.ensure_path(&dir).await.unwrap();
    for i in 0..200 {
        let inst = ServiceInstance::new("svc", &format!("i{i:03}"));
        c.create(
            &format!("{dir}/i{i:03}"),
            &serde_json::to_vec(&inst).unwrap(),
            CreateMode::Ephemeral,
        )
        .await
        .unwrap();
    }
    c.create(&format!("{dir}/junk"), b"not json", CreateMode::Ephemeral)
        .await
        .unwrap();
    // Delete the odd ones while the discovery (and a one-shot read) load.
    let deleter = {
        let c = c.clone();
        let dir = dir.clone();
        tokio::spawn(async move {
            let dels = (0..200).filter(|i| i % 2 == 1).map(|i| {
                let c = c.clone();
                let p = format!("{dir}/i{i:03}");
                async move { c.delete(&p, None).await }
            });
            for r in futures::future::join_all(dels).await {
                r.unwrap();
            }
        })
    };
    let mut disc = discover(&w, &base, "svc");
    let once = Discovery::instances(&w, &base, "svc").await.unwrap();
    assert!(once.len() >= 100 && once.len() <= 200);
    let first = disc.next_timeout(T).await.unwrap().unwrap();
    assert!(first.len() >= 100, "{}", first.len());
    deleter.await.unwrap();
    let s = disc.wait_for_timeout(|s| s.len() == 100, T).await.unwrap();
    assert!(s.iter().all(|i| i.id[1..].parse::<u32>().unwrap() % 2 == 0));
    c.close().await;
    w.delete_recursive(&base).await.unwrap();
}

/// An unregister future dropped mid-way (under a timeout) still removes the instance: the
/// registration counts as finished only once the delete is done.
#[tokio::test]
async fn an_unregister_dropped_mid_way_still_removes_the_instance() {
    let ens = testing::shared().expect("zookeeper");
    let base = root("reg-dropped-unregister");
    let c = client(&ens.connect_string(), 10_000).await;
    let other = client(&ens.connect_string(), 10_000).await;
    for i in 0..10 {
        let reg = register(&c, &base, ServiceInstance::new("api", &format!("i{i}"))).await;
        let path = reg.path().to_string();
        let _ = tokio::time::timeout(Duration::from_micros(1), reg.unregister()).await;
        tokio::time::timeout(T, other.wait_gone(&path))
            .await
            .expect("the instance goes although unregister was dropped")
            .unwrap();
    }
    c.close().await;
    other.close().await;
}

/// `unregister` dropped at each of its await points in turn still removes the instance (the
/// drop finishes the job), and so does dropping a `start` at each of its await points along
/// with its registration. Run until each call completes within the polls allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_or_start_dropped_at_every_await_point_leaves_no_instance() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let base = root("reg-dropped-each");
    let c = client(&ens.connect_string(), 10_000).await;
    let other = client(&ens.connect_string(), 10_000).await;
    for polls in 0.. {
        assert!(polls < 100, "unregister never completed");
        let reg = register(&c, &base, ServiceInstance::new("api", &format!("u{polls}"))).await;
        let path = reg.path().to_string();
        let finished = poll_at_most(reg.unregister(), polls).await;
        if let Some(r) = &finished {
            assert!(r.is_ok(), "{r:?}");
        }
        tokio::time::timeout(T, other.wait_gone(&path))
            .await
            .unwrap_or_else(|_| panic!("unregister dropped after {polls} polls left the node"))
            .unwrap();
        if finished.is_some() {
            assert!(
                polls >= 2,
                "never dropped after an await: done within {polls} polls"
            );
            break;
        }
    }
    for polls in 0.. {
        assert!(polls < 100, "start never completed");
        let reg = Registration::new(&c, &base, ServiceInstance::new("api", &format!("s{polls}")))
            .unwrap();
        let path = reg.path().to_string();
        let finished = poll_at_most(reg.start(), polls).await;
        if let Some(r) = finished {
            r.unwrap();
            assert!(other.exists(&path).await.unwrap().is_some());
            reg.unregister().await.unwrap();
            assert!(other.exists(&path).await.unwrap().is_none());
            assert!(
                polls >= 2,
                "never dropped after an await: done within {polls} polls"
            );
            break;
        }
        drop(reg);
        tokio::time::timeout(T, other.wait_gone(&path))
            .await
            .unwrap_or_else(|_| panic!("start dropped after {polls} polls left the node"))
            .unwrap();
    }
    c.close().await;
    other.close().await;
}
