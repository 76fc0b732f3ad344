//! ACLs and authentication against real ZooKeeper: `NoAuth` for clients without the right
//! identity, credentials kept across reconnects and new sessions, rejected credentials ending
//! the client, per-create ACLs and ACL versions. (The recipes under ACLs are tested in
//! `recipes/tests/security.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use zkr::{perms, Acl, Client, CreateMode, Error, LostReason, Op, SessionState};
use zkr_testing::{self as testing, FaultProxy};

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
