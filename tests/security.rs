//! ACLs and authentication against real ZooKeeper: `NoAuth` for clients without the right
//! identity, credentials kept across reconnects and new sessions, rejected credentials ending
//! the client, per-create ACLs, ACL versions, and every recipe inside a namespace whose nodes
//! only their authenticated creator may touch.

mod common;

use std::time::{Duration, Instant};

use common::*;
use zkr::testing::{self, FaultProxy};
use zkr::{perms, Acl, Client, CreateMode, Error, LostReason, Op, SessionState};

/// A client of the shared server with digest credentials (`user:password`).
async fn authed(connect: &str, user: &str, password: &str) -> Client {
    Client::builder(connect)
        .session_timeout(Duration::from_millis(3000))
        .digest_auth(user, password)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {connect}: {e}"))
}

/// Without credentials a protected node reads as `NoAuth`; with another user's too; with the
/// creator's it reads. The server's identity of the creator is `Acl::digest`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_node_needs_the_creators_credentials() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let root = root("sec-noauth");
    let owner = authed(&ens.connect_string(), "app", "s3cret").await;
    owner
        .create(&root, b"", CreateMode::Persistent)
        .await
        .unwrap();
    let node = format!("{root}/protected");
    owner
        .create_with_acl(
            &node,
            b"payload",
            CreateMode::Persistent,
            &Acl::creator_all(),
        )
        .await
        .unwrap();

    let (acl, _) = owner.get_acl(&node).await.unwrap();
    assert_eq!(
        acl,
        vec![Acl::digest_user("app", "s3cret", perms::ALL)],
        "the server's digest of app:s3cret is Acl::digest's"
    );

    let anon = client(&ens.connect_string(), 3000).await;
    let e = anon.get_data(&node).await.unwrap_err();
    assert!(matches!(e, Error::NoAuth { .. }), "{e:?}");
    assert!(e.is_auth_error() && !e.is_retryable());
    assert!(e.to_string().contains("NoAuth"), "{e}");
    let other = authed(&ens.connect_string(), "app", "wrong").await;
    assert!(matches!(
        other.get_data(&node).await,
        Err(Error::NoAuth { .. })
    ));
    assert!(matches!(
        other.set_data(&node, b"x", None).await,
        Err(Error::NoAuth { .. })
    ));
    let (data, _) = owner.get_data(&node).await.unwrap();
    assert_eq!(data, b"payload");

    // A reader added by ACL: anyone may read, only app may write.
    let mut acl = Acl::read_only();
    acl.push(Acl::digest_user("app", "s3cret", perms::ALL));
    let (_, stat) = owner.get_acl(&node).await.unwrap();
    owner
        .set_acl(&node, &acl, Some(stat.aversion))
        .await
        .unwrap();
    assert_eq!(anon.get_data(&node).await.unwrap().0, b"payload");
    assert!(matches!(
        anon.set_data(&node, b"x", None).await,
        Err(Error::NoAuth { .. })
    ));

    // creator_all without credentials is an invalid ACL, said so.
    let e = anon
        .create_with_acl(
            &format!("{root}/x"),
            b"",
            CreateMode::Persistent,
            &Acl::creator_all(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidAcl { .. }), "{e:?}");
    owner.delete_recursive(&root).await.unwrap();
}

/// `set_acl` checks the ACL version (`Stat::aversion`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_acl_checks_the_acl_version() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let root = root("sec-aversion");
    let c = client(&ens.connect_string(), 3000).await;
    c.create(&root, b"", CreateMode::Persistent).await.unwrap();
    let (_, s0) = c.get_acl(&root).await.unwrap();
    assert_eq!(s0.aversion, 0);
    let s1 = c.set_acl(&root, &Acl::open(), Some(0)).await.unwrap();
    assert_eq!(s1.aversion, 1);
    let e = c.set_acl(&root, &Acl::read_only(), Some(0)).await;
    assert!(matches!(e, Err(Error::BadVersion { .. })), "{e:?}");
    c.set_acl(&root, &Acl::open(), None).await.unwrap();
    assert_eq!(c.get_acl(&root).await.unwrap().1.aversion, 2);
    assert!(matches!(
        c.set_acl(&root, &[], None).await,
        Err(Error::InvalidArgument(_))
    ));
    c.delete(&root, None).await.unwrap();
}

/// The ACL of a new node: explicit per create, per handle (`with_acl`), per path (provider),
/// then the client's default; in a multi too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_create_can_have_its_own_acl() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let root = root("sec-percreate");
    let ro_root = format!("{root}/ro");
    let ro_prefix = format!("{ro_root}/");
    let c = Client::builder(&ens.connect_string())
        .session_timeout(Duration::from_millis(3000))
        .digest_auth("app", "pw")
        .default_acl(Acl::creator_all())
        .acl_provider(move |path: &str| {
            if path.starts_with(&ro_prefix) {
                Acl::read_only()
            } else {
                Vec::new()
            }
        })
        .connect()
        .await
        .unwrap();
    c.create(&root, b"", CreateMode::Persistent).await.unwrap();
    c.create(&ro_root, b"", CreateMode::Persistent)
        .await
        .unwrap();
    let mine = vec![Acl::digest_user("app", "pw", perms::ALL)];
    assert_eq!(c.get_acl(&root).await.unwrap().0, mine, "default ACL");

    c.create(&format!("{ro_root}/a"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    assert_eq!(
        c.get_acl(&format!("{ro_root}/a")).await.unwrap().0,
        Acl::read_only(),
        "provider"
    );

    let open = c.with_acl(Acl::open());
    let e = open
        .create(&format!("{ro_root}/a/b"), b"", CreateMode::Persistent)
        .await
        .unwrap_err(); // read-only parent: no CREATE permission for anyone
    assert!(matches!(e, Error::NoAuth { .. }), "{e:?}");
    open.create(&format!("{root}/b"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    assert_eq!(
        c.get_acl(&format!("{root}/b")).await.unwrap().0,
        Acl::open(),
        "with_acl handle"
    );
    // A pinned handle keeps the handle's ACL.
    let pinned = open.pinned().await.unwrap();
    pinned
        .create(&format!("{root}/p"), b"", CreateMode::Ephemeral)
        .await
        .unwrap();
    assert_eq!(
        c.get_acl(&format!("{root}/p")).await.unwrap().0,
        Acl::open()
    );

    let ro = Acl::read_only();
    c.create_with_acl(&format!("{root}/c"), b"", CreateMode::Persistent, &ro)
        .await
        .unwrap();
    assert_eq!(c.get_acl(&format!("{root}/c")).await.unwrap().0, ro);

    c.multi(&[
        Op::Create {
            path: format!("{root}/m1"),
            data: vec![],
            mode: CreateMode::Persistent,
        },
        Op::CreateWithAcl {
            path: format!("{root}/m2"),
            data: vec![],
            mode: CreateMode::Persistent,
            acl: Acl::open(),
        },
    ])
    .await
    .unwrap();
    assert_eq!(c.get_acl(&format!("{root}/m1")).await.unwrap().0, mine);
    assert_eq!(
        c.get_acl(&format!("{root}/m2")).await.unwrap().0,
        Acl::open()
    );
    assert!(matches!(
        c.create_with_acl(&format!("{root}/e"), b"", CreateMode::Persistent, &[])
            .await,
        Err(Error::InvalidArgument(_))
    ));
    // Read-only nodes cannot be deleted by their children's ACL; clean up what we can.
    c.set_acl(&ro_root, &Acl::open(), None).await.unwrap();
    c.delete_recursive(&root).await.unwrap();
}

/// Credentials added with `add_auth` (and those of the builder) are sent again on a reconnect
/// and in the new session after an expiry: the creator-only node stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_auth_is_kept_across_reconnects_and_new_sessions() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let root = root("sec-addauth");
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let c = client(&proxy.connect_string(), 3000).await;
    c.add_auth("digest", b"late:comer").await.unwrap();
    c.create(&root, b"", CreateMode::Persistent).await.unwrap();
    let node = format!("{root}/mine");
    c.create_with_acl(&node, b"v", CreateMode::Persistent, &Acl::creator_all())
        .await
        .unwrap();

    // A reconnect: the connection is cut, the session resumed.
    let mut states = c.states();
    // The connection is cut and the same session resumed; the credentials go again.
    drop_and_resume(&c, &mut states, &proxy).await;
    assert_eq!(c.get_data(&node).await.unwrap().0, b"v");

    // A new session after expiry.
    c.expire_session_for_testing(&ens.connect_string(), &proxy)
        .await
        .unwrap();
    expect_state(
        &mut states,
        Duration::from_secs(6),
        "Connected epoch 2",
        |s| matches!(s, SessionState::Connected { epoch: 2, .. }),
    )
    .await;
    assert_eq!(c.get_data(&node).await.unwrap().0, b"v");
    let who = c.who_am_i().await.unwrap();
    assert!(
        who.iter().any(|i| i.scheme == "digest" && i.user == "late"),
        "{who:?}"
    );
    c.delete_recursive(&root).await.unwrap();
}

/// Rejected credentials are final: connecting fails at once with `AuthFailed`, and a session
/// whose credentials are rejected later ends (`Lost` with `AuthFailed`, then `Closed`) instead
/// of reconnecting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_end_the_client() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let t = Instant::now();
    let r = Client::builder(&ens.connect_string())
        .session_timeout(Duration::from_millis(3000))
        .auth("nosuchscheme", b"whatever")
        .connect()
        .await;
    assert!(matches!(r, Err(Error::AuthFailed)), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    let c = client(&ens.connect_string(), 3000).await;
    let mut states = c.states();
    let r = c.add_auth("nosuchscheme", b"whatever").await;
    assert!(matches!(r, Err(Error::AuthFailed)), "{r:?}");
    expect_state(
        &mut states,
        Duration::from_secs(5),
        "Lost(AuthFailed)",
        |s| {
            matches!(
                s,
                SessionState::Lost {
                    reason: LostReason::AuthFailed,
                    ..
                }
            )
        },
    )
    .await;
    expect_state(&mut states, Duration::from_secs(5), "Closed", |s| {
        *s == SessionState::Closed
    })
    .await;
    assert!(matches!(c.get_data("/").await, Err(Error::AuthFailed)));
}

/// A latch whose election node this client may not write fails with `NoAuth` at once instead
/// of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latch_without_permission_fails_with_no_auth() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let root = root("sec-latch");
    let owner = authed(&ens.connect_string(), "owner", "pw").await;
    owner
        .create_with_acl(&root, b"", CreateMode::Persistent, &Acl::creator_all())
        .await
        .unwrap();
    let anon = client(&ens.connect_string(), 3000).await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        zkr_recipes::LeaderLatch::start(&anon, &format!("{root}/election"), "anon"),
    )
    .await
    .expect("the latch gives up");
    let e = r.unwrap_err();
    assert!(e.is_zk(|z| z.is_auth_error()), "{e:?}");
    owner.delete_recursive(&root).await.unwrap();
}

/// A waiting latch whose election node stops letting it read (the ACL was changed) closes
/// instead of retrying the listing forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latch_closes_when_the_acl_turns_against_it() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let root = root("sec-latch-acl");
    let owner = authed(&ens.connect_string(), "owner", "pw").await;
    let election = format!("{root}/election");
    owner
        .create(&root, b"", CreateMode::Persistent)
        .await
        .unwrap();
    owner
        .create(&election, b"", CreateMode::Persistent)
        .await
        .unwrap();
    let leader = zkr_recipes::LeaderLatch::start(&owner, &election, "owner")
        .await
        .unwrap();
    leader
        .wait_leader(Some(Duration::from_secs(10)))
        .await
        .unwrap();
    // A second candidate of the owner's, then the anonymous one behind it.
    let middle_client = authed(&ens.connect_string(), "owner", "pw").await;
    let middle = zkr_recipes::LeaderLatch::start(&middle_client, &election, "middle")
        .await
        .unwrap();
    let anon = client(&ens.connect_string(), 3000).await;
    let waiting = zkr_recipes::LeaderLatch::start(&anon, &election, "anon")
        .await
        .unwrap();
    assert!(!waiting.is_leader());
    // Only the owner may read or change the election from now on. The waiting latch learns it
    // when the candidate ahead of it goes: with the leader still ahead, it must list the
    // election again, and is refused.
    owner
        .set_acl(
            &election,
            &[Acl::digest_user("owner", "pw", perms::ALL)],
            None,
        )
        .await
        .unwrap();
    middle.close().await.unwrap();
    let mut rx = waiting.state_receiver();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| *s == zkr_recipes::LatchState::Closed),
    )
    .await
    .expect("the latch closes")
    .unwrap();
    drop(waiting);
    leader.close().await.unwrap();
    owner.delete_recursive(&root).await.unwrap();
}

/// Every recipe works inside a chroot namespace whose nodes only their authenticated creator
/// may touch (default ACL creator-all); a client without the credentials sees nothing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipe_works_in_a_creator_only_namespace() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let ns = root("sec-ns");
    let admin = authed(&ens.connect_string(), "svc", "pw").await;
    admin
        .create_with_acl(&ns, b"", CreateMode::Persistent, &Acl::creator_all())
        .await
        .unwrap();
    let c = Client::builder(&format!("{}{ns}", ens.connect_string()))
        .session_timeout(Duration::from_millis(3000))
        .digest_auth("svc", "pw")
        .default_acl(Acl::creator_all())
        .connect()
        .await
        .unwrap();
    let t = Duration::from_secs(10);

    let m = zkr_recipes::Mutex::new(&c, "/locks/m").unwrap();
    let g = m.acquire_timeout(t).await.unwrap();
    g.release().await.unwrap();
    // A recipe handed a `with_acl` handle gives its own nodes (and their parents) that ACL.
    let custom = vec![
        Acl::digest_user("svc", "pw", perms::ALL),
        Acl::new(perms::READ, "world", "anyone"),
    ];
    let m = zkr_recipes::Mutex::new(&c.with_acl(custom.clone()), "/custom/m").unwrap();
    let g = m.acquire_timeout(t).await.unwrap();
    assert_eq!(c.get_acl(g.fence().path.as_str()).await.unwrap().0, custom);
    assert_eq!(c.get_acl("/custom/m").await.unwrap().0, custom);
    g.release().await.unwrap();
    let rw = zkr_recipes::RwLock::new(&c, "/locks/rw").unwrap();
    rw.write_timeout(t).await.unwrap().release().await.unwrap();
    rw.read_timeout(t).await.unwrap().release().await.unwrap();
    let sem = zkr_recipes::Semaphore::new(&c, "/locks/sem", 2).unwrap();
    let lease = sem.acquire_timeout(t).await.unwrap();
    drop(lease);

    let latch = zkr_recipes::LeaderLatch::start(&c, "/election", "me")
        .await
        .unwrap();
    latch.wait_leader(Some(t)).await.unwrap();
    latch.close().await.unwrap();

    let cfg = zkr_recipes::Config::<serde_json::Value>::new(&c, "/config/app").unwrap();
    cfg.publish(&serde_json::json!({"k": 1})).await.unwrap();
    assert_eq!(
        cfg.get().await.unwrap().unwrap().value,
        serde_json::json!({"k": 1})
    );
    let tree = zkr_recipes::ConfigTree::<serde_json::Value>::new(&c, "/config/tree").unwrap();
    tree.set("a", &serde_json::json!(1)).await.unwrap();

    let counter = zkr_recipes::AtomicCounter::new(&c, "/ids/counter").unwrap();
    assert_eq!(counter.increment().await.unwrap().post, 1);
    let ids = zkr_recipes::SequentialIds::new(&c, "/ids/seq").unwrap();
    ids.next().await.unwrap();
    let blocks = zkr_recipes::IdBlocks::new(&c, "/ids/blocks", 10).unwrap();
    blocks.next().await.unwrap();

    let reg = zkr_recipes::Registration::register(
        &c,
        "/services",
        zkr_recipes::ServiceInstance::new("api", "i1"),
    )
    .await
    .unwrap();
    let found = zkr_recipes::Discovery::instances(&c, "/services", "api")
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    drop(reg);

    let q = zkr_recipes::WorkQueue::open(&c, "/queue").await.unwrap();
    q.put(&serde_json::json!({"job": 1})).await.unwrap();
    let mut w = q.worker("w1").await.unwrap();
    let task = w.claim(t).await.unwrap();
    task.complete(serde_json::json!("done")).await.unwrap();

    // Every node the recipes made is creator-only.
    let mine = vec![Acl::digest_user("svc", "pw", perms::ALL)];
    for p in [
        "/locks",
        "/election",
        "/config/app",
        "/ids/counter",
        "/services/api",
        "/queue",
    ] {
        assert_eq!(c.get_acl(p).await.unwrap().0, mine, "{p}");
    }
    // Without credentials: nothing.
    let anon = client(&format!("{}{ns}", ens.connect_string()), 3000).await;
    assert!(matches!(
        anon.get_children("/").await,
        Err(Error::NoAuth { .. })
    ));
    assert!(matches!(
        anon.get_data("/config/app").await,
        Err(Error::NoAuth { .. })
    ));
    drop(anon);
    c.close().await;
    admin.delete_recursive(&ns).await.unwrap();
}
