//! Conformance of zkr's protocol layer against a real ZooKeeper 3.8: one test per operation
//! (and its error codes), through the public `Client`.

mod common;

use std::time::Duration;

use futures::StreamExt;
use zkr::{
    perms, Acl, Client, CreateMode, Error, ErrorCode, Op, OpResult, ReadOp, ReadResult,
    WatchedEventKind,
};
use zkr_testing as testing;

async fn client() -> Client {
    let ens = testing::shared().expect("zookeeper");
    common::client(&ens.connect_string(), 4000).await
}

async fn fresh_root(c: &Client, name: &str) -> String {
    let root = common::root(name);
    c.delete_recursive(&root).await.unwrap();
    c.ensure_path(&root).await.unwrap();
    root
}

#[tokio::test]
async fn create_in_every_mode() {
    let c = client().await;
    let root = fresh_root(&c, "proto-create").await;
    let (p, s) = c
        .create_with_stat(&format!("{root}/p"), b"d", CreateMode::Persistent)
        .await
        .unwrap();
    assert_eq!(p, format!("{root}/p"));
    assert_eq!((s.version, s.data_length, s.ephemeral_owner), (0, 1, 0));

    let (_, s) = c
        .create_with_stat(&format!("{root}/e"), b"", CreateMode::Ephemeral)
        .await
        .unwrap();
    assert_eq!(s.ephemeral_owner, c.session_id().unwrap().0);

    let a = c
        .create(&format!("{root}/s-"), b"", CreateMode::PersistentSequential)
        .await
        .unwrap();
    let b = c
        .create(&format!("{root}/s-"), b"", CreateMode::EphemeralSequential)
        .await
        .unwrap();
    assert!(a.len() == format!("{root}/s-").len() + 10, "{a}");
    assert!(b > a, "{b} after {a}");

    // A container disappears once its last child is gone (the server checks periodically,
    // so only its kind is checked here: it accepts children and is not ephemeral).
    c.create(&format!("{root}/c"), b"", CreateMode::Container)
        .await
        .unwrap();
    c.create(&format!("{root}/c/x"), b"", CreateMode::Persistent)
        .await
        .unwrap();

    let (_, s) = c
        .create_with_stat(
            &format!("{root}/ttl"),
            b"t",
            CreateMode::PersistentWithTtl(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    // Clients see no owner on TTL nodes; a TTL of zero is refused, which only a TTL create is.
    assert_eq!(s.ephemeral_owner, 0);
    assert!(matches!(
        c.create(
            &format!("{root}/ttl0"),
            b"",
            CreateMode::PersistentWithTtl(Duration::ZERO)
        )
        .await,
        Err(Error::InvalidArgument(_))
    ));

    assert!(matches!(
        c.create(&format!("{root}/p"), b"", CreateMode::Persistent)
            .await,
        Err(Error::NodeExists { .. })
    ));
    assert!(matches!(
        c.create(&format!("{root}/none/x"), b"", CreateMode::Persistent)
            .await,
        Err(Error::NoNode { .. })
    ));
    assert!(matches!(
        c.create(&format!("{root}/e/x"), b"", CreateMode::Persistent)
            .await,
        Err(Error::NoChildrenForEphemerals { .. })
    ));
    c.delete_recursive(&root).await.unwrap();
}

#[tokio::test]
async fn read_write_delete_and_their_errors() {
    let c = client().await;
    let root = fresh_root(&c, "proto-rw").await;
    let n = format!("{root}/n");
    assert_eq!(c.exists(&n).await.unwrap(), None);
    assert!(matches!(c.get_data(&n).await, Err(Error::NoNode { .. })));
    c.create(&n, b"one", CreateMode::Persistent).await.unwrap();
    let (d, s) = c.get_data(&n).await.unwrap();
    assert_eq!((d.as_slice(), s.version), (&b"one"[..], 0));
    assert_eq!(c.exists(&n).await.unwrap(), Some(s));

    let s1 = c.set_data(&n, b"two", Some(0)).await.unwrap();
    assert_eq!(s1.version, 1);
    assert!(s1.mzxid > s.mzxid);
    assert!(matches!(
        c.set_data(&n, b"x", Some(0)).await,
        Err(Error::BadVersion { .. })
    ));
    c.set_data(&n, b"", None).await.unwrap();
    assert_eq!(c.get_data(&n).await.unwrap().0, b"");

    c.create(&format!("{n}/kid"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    assert!(matches!(
        c.delete(&n, None).await,
        Err(Error::NotEmpty { .. })
    ));
    assert!(matches!(
        c.delete(&format!("{n}/kid"), Some(3)).await,
        Err(Error::BadVersion { .. })
    ));
    c.delete(&format!("{n}/kid"), Some(0)).await.unwrap();
    c.delete(&n, None).await.unwrap();
    assert!(matches!(
        c.delete(&n, None).await,
        Err(Error::NoNode { .. })
    ));
    c.sync(&root).await.unwrap();
    assert!(matches!(
        c.sync(&format!("{root}/none")).await,
        Err(Error::NoNode { .. }) | Ok(())
    ));
    c.delete_recursive(&root).await.unwrap();
}

#[tokio::test]
async fn data_near_one_mib() {
    let c = client().await;
    let root = fresh_root(&c, "proto-big").await;
    // jute.maxbuffer is 1 MiB (0xfffff) for the whole request, path and header included.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let n = format!("{root}/big");
    c.create(&n, &big, CreateMode::Persistent).await.unwrap();
    let (d, s) = c.get_data(&n).await.unwrap();
    assert_eq!(s.data_length as usize, big.len());
    assert!(d == big, "1 MB read back intact");
    let too_big = vec![0u8; 1024 * 1024 + 1];
    assert!(matches!(
        c.set_data(&n, &too_big, None).await,
        Err(Error::DataTooLarge { .. })
    ));
    c.delete_recursive(&root).await.unwrap();
}

#[tokio::test]
async fn listing_ten_thousand_children() {
    let c = client().await;
    let root = fresh_root(&c, "proto-kids").await;
    let ops: Vec<Op> = (0..10_000)
        .map(|i| Op::Create {
            path: format!("{root}/child-with-a-longish-name-{i:05}"),
            data: Vec::new(),
            mode: CreateMode::Persistent,
        })
        .collect();
    // 500 per multi keeps each request far below 1 MiB; all sent back to back.
    let batches = futures::future::join_all(ops.chunks(500).map(|b| c.multi(b))).await;
    for b in batches {
        assert_eq!(b.unwrap().len(), 500);
    }
    let (mut kids, stat) = c.get_children_with_stat(&root).await.unwrap();
    assert_eq!((kids.len(), stat.num_children), (10_000, 10_000));
    kids.sort();
    assert_eq!(kids[0], "child-with-a-longish-name-00000");
    assert_eq!(kids[9_999], "child-with-a-longish-name-09999");
    assert_eq!(c.count_descendants(&root).await.unwrap(), 10_000);
    c.delete_recursive(&root).await.unwrap();
}

#[tokio::test]
async fn multi_commits_all_or_reports_which_op_failed() {
    let c = client().await;
    let root = fresh_root(&c, "proto-multi").await;
    let a = format!("{root}/a");
    let r = c
        .multi(&[
            Op::Create {
                path: a.clone(),
                data: b"1".to_vec(),
                mode: CreateMode::Persistent,
            },
            Op::Create {
                path: format!("{root}/s-"),
                data: Vec::new(),
                mode: CreateMode::EphemeralSequential,
            },
            Op::Check {
                path: a.clone(),
                version: Some(0),
            },
            Op::SetData {
                path: a.clone(),
                data: b"2".to_vec(),
                version: Some(0),
            },
        ])
        .await
        .unwrap();
    assert!(matches!(&r[0], OpResult::Created { path, .. } if *path == a));
    assert!(
        matches!(&r[1], OpResult::Created { path, .. } if path.starts_with(&format!("{root}/s-")))
    );
    assert_eq!(r[2], OpResult::Checked);
    assert!(matches!(&r[3], OpResult::DataSet { stat } if stat.version == 1));

    // The third op fails: nothing is applied, and the error names op #2.
    let err = c
        .multi(&[
            Op::SetData {
                path: a.clone(),
                data: b"3".to_vec(),
                version: None,
            },
            Op::Create {
                path: format!("{root}/b"),
                data: Vec::new(),
                mode: CreateMode::Persistent,
            },
            Op::Check {
                path: a.clone(),
                version: Some(0),
            },
            Op::Delete {
                path: a.clone(),
                version: None,
            },
        ])
        .await
        .unwrap_err();
    match err {
        Error::MultiFailed { index, source } => {
            assert_eq!(index, 2);
            assert!(matches!(*source, Error::BadVersion { ref path } if *path == a));
        }
        other => panic!("expected MultiFailed, got {other:?}"),
    }
    assert_eq!(c.get_data(&a).await.unwrap().0, b"2");
    assert_eq!(c.exists(&format!("{root}/b")).await.unwrap(), None);
    c.delete_recursive(&root).await.unwrap();
}

#[tokio::test]
async fn multi_read_answers_each_read() {
    let c = client().await;
    let root = fresh_root(&c, "proto-mread").await;
    c.create(&format!("{root}/x"), b"xd", CreateMode::Persistent)
        .await
        .unwrap();
    let r = c
        .multi_read(&[
            ReadOp::GetData {
                path: format!("{root}/x"),
            },
            ReadOp::GetChildren { path: root.clone() },
            ReadOp::GetData {
                path: format!("{root}/missing"),
            },
        ])
        .await
        .unwrap();
    assert!(
        matches!(&r[0], Ok(ReadResult::Data { data, stat }) if data == b"xd" && stat.version == 0)
    );
    assert_eq!(
        r[1],
        Ok(ReadResult::Children {
            children: vec!["x".to_string()]
        })
    );
    assert!(matches!(&r[2], Err(Error::NoNode { path }) if path.ends_with("/missing")));
    c.delete_recursive(&root).await.unwrap();
}

#[tokio::test]
async fn acls_auth_and_who_am_i() {
    let ens = testing::shared().expect("zookeeper");
    let owner = Client::builder(&ens.connect_string())
        .session_timeout(Duration::from_secs(4))
        .digest_auth("app", "secret")
        .connect()
        .await
        .unwrap();
    let root = fresh_root(&owner, "proto-acl").await;
    let ids = owner.who_am_i().await.unwrap();
    assert!(
        ids.iter().any(|i| i.scheme == "digest" && i.user == "app"),
        "{ids:?}"
    );

    let n = format!("{root}/secret");
    owner
        .create(&n, b"s", CreateMode::Persistent)
        .await
        .unwrap();
    let (acl, stat) = owner.get_acl(&n).await.unwrap();
    assert_eq!(acl, Acl::open());
    let locked = vec![Acl {
        perms: perms::ALL,
        scheme: "auth".into(),
        id: String::new(),
    }];
    assert!(matches!(
        owner.set_acl(&n, &locked, Some(stat.aversion + 1)).await,
        Err(Error::BadVersion { .. })
    ));
    let s = owner
        .set_acl(&n, &locked, Some(stat.aversion))
        .await
        .unwrap();
    assert_eq!(s.aversion, stat.aversion + 1);
    let (acl, _) = owner.get_acl(&n).await.unwrap();
    assert_eq!(acl.len(), 1);
    assert_eq!(
        (acl[0].scheme.as_str(), acl[0].perms),
        ("digest", perms::ALL)
    );
    assert!(acl[0].id.starts_with("app:"), "{acl:?}");

    let stranger = common::client(&ens.connect_string(), 4000).await;
    assert!(matches!(
        stranger.get_data(&n).await,
        Err(Error::NoAuth { .. })
    ));
    stranger.add_auth("digest", b"app:secret").await.unwrap();
    assert_eq!(stranger.get_data(&n).await.unwrap().0, b"s");
    assert!(matches!(
        owner.set_acl(&n, &[], None).await,
        Err(Error::InvalidArgument(_))
    ));
    owner.set_acl(&n, &Acl::open(), None).await.unwrap();
    owner.delete_recursive(&root).await.unwrap();
}

#[tokio::test]
async fn ephemerals_of_the_session_and_close() {
    let ens = testing::shared().expect("zookeeper");
    let c = client().await;
    let root = fresh_root(&c, "proto-eph").await;
    let mut mine = Vec::new();
    for i in 0..3 {
        mine.push(
            c.create(&format!("{root}/e{i}"), b"", CreateMode::Ephemeral)
                .await
                .unwrap(),
        );
    }
    c.create(&format!("{root}/p"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    let mut got = c.get_ephemerals(&root).await.unwrap();
    got.sort();
    assert_eq!(got, mine);

    // closeSession: the ephemerals are gone when close() returns.
    c.close().await;
    let other = common::client(&ens.connect_string(), 4000).await;
    for p in &mine {
        assert_eq!(other.exists(p).await.unwrap(), None, "{p}");
    }
    assert!(matches!(c.get_data(&root).await, Err(Error::Closed)));
    other.delete_recursive(&root).await.unwrap();
}

#[tokio::test]
async fn persistent_and_recursive_watches() {
    let ens = testing::shared().expect("zookeeper");
    let c = client().await;
    let root = fresh_root(&c, "proto-pwatch").await;
    let baseline = ens.watch_count().unwrap();
    // The server keeps one persistent mode per path and session: the flat watch gets its own.
    let c2 = client().await;
    let mut flat = c2.add_watch(&root, false).await.unwrap();
    let mut deep = c.add_watch(&root, true).await.unwrap();

    c.create(&format!("{root}/a"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    c.create(&format!("{root}/a/b"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    c.set_data(&format!("{root}/a/b"), b"x", None)
        .await
        .unwrap();
    c.set_data(&root, b"r", None).await.unwrap();
    c.delete(&format!("{root}/a/b"), None).await.unwrap();

    let t = Duration::from_secs(5);
    let mut deep_seen = Vec::new();
    for _ in 0..5 {
        match deep.next_timeout(t).await {
            Ok(Some(e)) => deep_seen.push((e.kind, e.path)),
            other => panic!("after {deep_seen:?}: {other:?}"),
        }
    }
    let rel = |s: &str| format!("{root}{s}");
    assert_eq!(
        deep_seen,
        vec![
            (WatchedEventKind::Created, rel("/a")),
            (WatchedEventKind::Created, rel("/a/b")),
            (WatchedEventKind::DataChanged, rel("/a/b")),
            (WatchedEventKind::DataChanged, rel("")),
            (WatchedEventKind::Deleted, rel("/a/b")),
        ]
    );
    // The flat watch sees its node's own changes and its children list, nothing deeper.
    let mut flat_seen = Vec::new();
    for _ in 0..2 {
        let e = flat.next_timeout(t).await.unwrap().unwrap();
        flat_seen.push((e.kind, e.path));
    }
    assert_eq!(
        flat_seen,
        vec![
            (WatchedEventKind::ChildrenChanged, rel("")),
            (WatchedEventKind::DataChanged, rel("")),
        ]
    );
    assert!(flat.next_timeout(Duration::from_millis(200)).await.is_err());

    // Dropping the streams removes the watches from the server (removeWatches).
    assert!(ens.watch_count().unwrap() >= baseline + 2);
    drop(flat);
    drop(deep);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ens.watch_count().unwrap() > baseline {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watches left on the server: {} (baseline {baseline})",
            ens.watch_count().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.delete_recursive(&root).await.unwrap();
}

#[tokio::test]
async fn persistent_watch_ends_with_session_ended_on_close() {
    let c = client().await;
    let root = fresh_root(&c, "proto-pwatch-end").await;
    let mut w = c.add_watch(&root, true).await.unwrap();
    c.close().await;
    let e = w
        .next_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.kind, WatchedEventKind::SessionEnded);
    assert_eq!(w.next().await, None);
}

#[test]
fn every_error_code_maps_to_a_typed_error_and_back() {
    let mut n = 0;
    for code in ErrorCode::all() {
        n += 1;
        assert_eq!(ErrorCode::from_i32(code.code()), code);
        let e = Error::from_code(code, "/p");
        assert!(!e.to_string().is_empty());
        match code {
            // Session-level codes become SessionLost; BadArguments an InvalidArgument.
            ErrorCode::SessionMoved => assert_eq!(e.code(), Some(ErrorCode::SessionExpired)),
            ErrorCode::BadArguments => assert!(matches!(e, Error::InvalidArgument(_))),
            _ => assert_eq!(e.code(), Some(code), "{code:?} -> {e:?}"),
        }
        assert!(
            !matches!(e, Error::Unexpected(_)),
            "{code:?} has no typed error"
        );
    }
    assert_eq!(n, 31, "ZooKeeper 3.8 defines 31 error codes besides Ok");
    assert_eq!(ErrorCode::from_i32(-9999), ErrorCode::Other(-9999));
}

#[tokio::test]
async fn a_session_moves_to_the_member_asked_for() {
    let ens = testing::shared_ensemble3().expect("zookeeper ensemble");
    let c = common::client(&ens.connect_string(), 4000).await;
    let session = c.session_id().unwrap();
    let root = fresh_root(&c, "proto-move").await;
    let eph = format!("{root}/mine");
    c.create(&eph, b"", CreateMode::Ephemeral).await.unwrap();
    let mut watch = c.watch_data(&eph).unwrap();
    assert_eq!(
        watch
            .next_timeout(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .change,
        zkr::Change::Initial
    );
    for i in [0, 1, 2, 0] {
        let target = ens.member_connect_string(i);
        c.move_session(&target).await.unwrap();
        assert_eq!(c.connected_server().as_deref(), Some(target.as_str()));
        assert_eq!(c.session_id(), Some(session), "same session after the move");
        assert_eq!(
            common::blocking({
                let ens = testing::shared_ensemble3().unwrap();
                let sid = session.0;
                move || common::member_of(ens, sid)
            })
            .await,
            Some(i)
        );
        // The ephemeral node is still ours and the watch still works.
        let stat = c.exists(&eph).await.unwrap().unwrap();
        assert_eq!(stat.ephemeral_owner, session.0);
    }
    c.set_data(&eph, b"moved", None).await.unwrap();
    let ev = watch
        .next_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.data(), Some(&b"moved"[..]));
    assert!(matches!(
        c.move_session("127.0.0.1:1").await,
        Err(Error::InvalidArgument(_))
    ));
    c.delete_recursive(&root).await.unwrap();
    c.close().await;
}

#[tokio::test]
async fn dropped_calls_never_desynchronise_the_replies() {
    let c = client().await;
    let root = fresh_root(&c, "proto-drop").await;
    for i in 0..20 {
        c.create(
            &format!("{root}/n{i}"),
            format!("{i}").as_bytes(),
            CreateMode::Persistent,
        )
        .await
        .unwrap();
    }
    // Calls dropped at random points (before sending, in flight, after the reply) ...
    let mut dropped = 0;
    for k in 0..600u64 {
        let path = format!("{root}/n{}", k % 20);
        let wait = Duration::from_micros((k * 7919) % 1500);
        if tokio::time::timeout(wait, c.get_data(&path)).await.is_err() {
            dropped += 1;
        }
    }
    assert!(dropped > 0, "some calls must have been dropped");
    // ... and every reply still reaches the call it belongs to.
    let reads = (0..20).map(|i| {
        let c = c.clone();
        let path = format!("{root}/n{i}");
        async move { (i, c.get_data(&path).await.unwrap().0) }
    });
    for (i, data) in futures::future::join_all(reads).await {
        assert_eq!(data, format!("{i}").as_bytes());
    }
    c.delete_recursive(&root).await.unwrap();
}
