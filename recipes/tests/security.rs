//! ACLs and recipes against real ZooKeeper: a recipe refused by an ACL fails with a typed
//! error or closes instead of retrying forever, and every recipe works inside a namespace whose
//! nodes only their authenticated creator may touch.

mod common;

use std::time::Duration;

use common::*;
use zkr::{perms, Acl, Client, CreateMode, Error};
use zkr_testing as testing;

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
    let latch = zkr_recipes::LeaderLatch::new(&anon, &format!("{root}/election"), "anon").unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), latch.start())
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
    let leader = zkr_recipes::LeaderLatch::new(&owner, &election, "owner").unwrap();
    leader.start().await.unwrap();
    leader
        .wait_leader_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    // A second candidate of the owner's, then the anonymous one behind it.
    let middle_client = authed(&ens.connect_string(), "owner", "pw").await;
    let middle = zkr_recipes::LeaderLatch::new(&middle_client, &election, "middle").unwrap();
    middle.start().await.unwrap();
    let anon = client(&ens.connect_string(), 3000).await;
    let waiting = zkr_recipes::LeaderLatch::new(&anon, &election, "anon").unwrap();
    waiting.start().await.unwrap();
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
    let mut changes = waiting.changes();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(s) = futures::StreamExt::next(&mut changes).await {
            if s == zkr_recipes::LatchState::Closed {
                return;
            }
        }
        panic!("the latch's changes ended before Closed");
    })
    .await
    .expect("the latch closes");
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

    let latch = zkr_recipes::LeaderLatch::new(&c, "/election", "me").unwrap();
    latch.start().await.unwrap();
    latch.wait_leader_timeout(t).await.unwrap();
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

    let reg = zkr_recipes::Registration::new(
        &c,
        "/services",
        zkr_recipes::ServiceInstance::new("api", "i1"),
    )
    .unwrap();
    reg.start().await.unwrap();
    let found = zkr_recipes::Discovery::instances(&c, "/services", "api")
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    drop(reg);

    let q = zkr_recipes::WorkQueue::new(&c, "/queue").unwrap();
    q.put(&serde_json::json!({"job": 1})).await.unwrap();
    let mut w = q.worker("w1").unwrap();
    let task = w.claim_timeout(t).await.unwrap();
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
