//! Tree cache and path cache (`zkr_recipes::TreeCache`, `PathCache`) against real ZooKeeper:
//! a 10,000-node tree, changes while the client is cut off, session expiry, a subtree deleted
//! and re-created (also while cut off), a lagging subscriber.
//!
//! Every test replays the events it receives onto a model and checks on the way that nothing
//! is delivered twice or goes backward (an `Added` only for an absent node, a `Removed` only for
//! a present one, an `Updated` only to a larger `mzxid`, sequence numbers without gaps), and at
//! the end that model, cache and a fresh read of the tree agree.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{client, init_tracing, root};
use futures::StreamExt;
use zkr::{Client, CreateMode};
use zkr_recipes::{CacheEvent, CacheState, CacheSubscription, CacheUpdate, PathCache, TreeCache};
use zkr_testing::{self as testing, FaultProxy};

const T: Duration = Duration::from_secs(20);

fn zk() -> &'static zkr_testing::ZkEnsemble {
    testing::shared().expect("zookeeper")
}

/// path → (czxid, mzxid, data)
type Model = BTreeMap<String, (i64, i64, Vec<u8>)>;

/// A subscriber that replays events onto a model and checks every step.
struct Replay {
    sub: CacheSubscription,
    model: Model,
    seq: u64,
    markers: Vec<CacheEvent>,
    events: Vec<CacheEvent>,
    snapshots: usize,
}

impl Replay {
    fn new(cache: &TreeCache) -> Replay {
        Replay {
            sub: cache.subscribe(),
            model: Model::new(),
            seq: 0,
            markers: Vec::new(),
            events: Vec::new(),
            snapshots: 0,
        }
    }

    fn apply(&mut self, u: CacheUpdate) {
        match u {
            CacheUpdate::Snapshot(s) => {
                self.snapshots += 1;
                self.model = s
                    .iter()
                    .map(|n| (n.path.clone(), (n.stat.czxid, n.stat.mzxid, n.data.clone())))
                    .collect();
                self.seq = s.seq();
            }
            CacheUpdate::Event { seq, event } => {
                assert_eq!(seq, self.seq + 1, "gap or repeat before {event:?}");
                self.seq = seq;
                match &event {
                    CacheEvent::Added(n) => {
                        let parent = zkr::path::parent(&n.path).unwrap_or("/");
                        assert!(
                            self.model.contains_key(parent) || self.model.is_empty(),
                            "added {} before its parent",
                            n.path
                        );
                        let old = self
                            .model
                            .insert(n.path.clone(), (n.stat.czxid, n.stat.mzxid, n.data.clone()));
                        assert!(old.is_none(), "added twice: {}", n.path);
                    }
                    CacheEvent::Updated { old, new } => {
                        let cur = self.model.get(&new.path).expect("update of an absent node");
                        assert_eq!(cur.0, new.stat.czxid, "update across incarnations");
                        assert_eq!(cur.1, old.stat.mzxid, "old side is what was cached");
                        assert!(new.stat.mzxid > cur.1, "update went backward: {}", new.path);
                        self.model.insert(
                            new.path.clone(),
                            (new.stat.czxid, new.stat.mzxid, new.data.clone()),
                        );
                    }
                    CacheEvent::Removed(n) => {
                        let below = format!("{}/", n.path);
                        assert!(
                            !self.model.keys().any(|k| k.starts_with(&below)),
                            "removed {} before its children",
                            n.path
                        );
                        assert!(
                            self.model.remove(&n.path).is_some(),
                            "removed twice: {}",
                            n.path
                        );
                    }
                    m => self.markers.push(m.clone()),
                }
                if event.node().is_some() {
                    self.events.push(event);
                }
            }
        }
    }

    /// Reads updates until the marker `want` has been seen `n` times in total.
    async fn until_marker(&mut self, want: CacheEvent, n: usize) {
        let r = tokio::time::timeout(T, async {
            while self.markers.iter().filter(|m| **m == want).count() < n {
                match self.sub.next().await {
                    Some(u) => self.apply(u),
                    None => panic!("subscription ended"),
                }
            }
        })
        .await;
        assert!(r.is_ok(), "no {want:?} #{n}; markers {:?}", self.markers);
    }

    /// Reads updates until `pred` holds for the model.
    async fn until(&mut self, what: &str, mut pred: impl FnMut(&Model) -> bool) {
        let r = tokio::time::timeout(T, async {
            while !pred(&self.model) {
                match self.sub.next().await {
                    Some(u) => self.apply(u),
                    None => panic!("subscription ended"),
                }
            }
        })
        .await;
        assert!(r.is_ok(), "{what}: model {:?}", self.model.keys());
    }
}

/// A fresh read of the subtree at `root`.
async fn truth(c: &Client, root: &str) -> Model {
    let mut out = Model::new();
    let mut todo = vec![root.to_string()];
    while let Some(p) = todo.pop() {
        match c.get_data(&p).await {
            Ok((data, stat)) => {
                out.insert(p.clone(), (stat.czxid, stat.mzxid, data));
            }
            Err(zkr::Error::NoNode { .. }) => continue,
            Err(e) => panic!("read {p}: {e}"),
        }
        match c.get_children(&p).await {
            Ok(kids) => todo.extend(kids.iter().map(|k| zkr::path::join(&p, k))),
            Err(zkr::Error::NoNode { .. }) => {}
            Err(e) => panic!("list {p}: {e}"),
        }
    }
    out
}

/// `cache`, started.
fn started(cache: TreeCache) -> TreeCache {
    cache.start().unwrap();
    cache
}

fn cache_model(cache: &TreeCache) -> Model {
    cache
        .current()
        .iter()
        .map(|n| (n.path.clone(), (n.stat.czxid, n.stat.mzxid, n.data.clone())))
        .collect()
}

async fn check_converged(c: &Client, cache: &TreeCache, replay: &Replay, root: &str) {
    let t = truth(c, root).await;
    assert_eq!(cache_model(cache), t, "cache vs ZooKeeper");
    assert_eq!(replay.model, t, "replayed events vs ZooKeeper");
}

async fn proxied(session_ms: u64) -> (FaultProxy, Client) {
    let proxy = FaultProxy::for_ensemble(zk()).expect("proxy");
    let c = client(&proxy.connect_string(), session_ms).await;
    (proxy, c)
}

fn event_paths(evs: &[CacheEvent], kind: &str) -> Vec<String> {
    evs.iter()
        .filter_map(|e| match (kind, e) {
            ("added", CacheEvent::Added(n))
            | ("removed", CacheEvent::Removed(n))
            | ("updated", CacheEvent::Updated { new: n, .. }) => Some(n.path.clone()),
            _ => None,
        })
        .collect()
}

/// A client of the shared server and a fresh root `name` (created) for one test.
async fn fresh(name: &str) -> (zkr::Client, String) {
    let c = client(&zk().connect_string(), 10_000).await;
    let r = root(name);
    c.create_with_parents(&r, b"", CreateMode::Persistent)
        .await
        .unwrap();
    (c, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_ordered_events() {
    init_tracing();
    let c = client(&zk().connect_string(), 10_000).await;
    let r = root("tc-basic");
    c.create_with_parents(&format!("{r}/a/b"), b"b0", CreateMode::Persistent)
        .await
        .unwrap();
    c.set_data(&r, b"root", None).await.unwrap();

    let cache = started(TreeCache::new(&c, &r).unwrap());
    let snap = cache.wait_loaded_timeout(T).await.unwrap();
    assert_eq!(snap.len(), 3);
    assert_eq!(snap.get(&r).unwrap().data, b"root");
    let kids: Vec<&str> = snap.children(&r).iter().map(|n| n.name()).collect();
    assert_eq!(kids, ["a"]);
    assert_eq!(cache.state(), CacheState::Live);

    let mut replay = Replay::new(&cache);
    let x = format!("{r}/a/x");
    c.create(&x, b"1", CreateMode::Persistent).await.unwrap();
    c.set_data(&x, b"2", None).await.unwrap();
    c.delete(&x, None).await.unwrap();
    c.set_data(&format!("{r}/a/b"), b"b1", None).await.unwrap();
    let b = format!("{r}/a/b");
    replay
        .until("b1", |m| m.get(&b).is_some_and(|v| v.2 == b"b1"))
        .await;
    assert!(!replay.model.contains_key(&x));
    // x was added and removed as often (each at most once; its update may have coalesced with
    // the create, or all three changes into nothing if they came before the first read).
    let added = event_paths(&replay.events, "added");
    assert!(added.len() <= 1);
    assert_eq!(added, event_paths(&replay.events, "removed"));
    check_converged(&c, &cache, &replay, &r).await;

    // A root that does not exist yet: empty, then filled when created.
    let later = format!("{r}/later");
    let cache2 = started(TreeCache::new(&c, &later).unwrap());
    assert!(cache2.wait_loaded_timeout(T).await.unwrap().is_empty());
    c.create(&later, b"now", CreateMode::Persistent)
        .await
        .unwrap();
    c.create(&format!("{later}/k"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    cache2
        .wait_for_timeout(|s| (s.len() == 2).then_some(()), T)
        .await
        .unwrap();
    c.delete_recursive(&r).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_nodes() {
    init_tracing();
    let (c, r) = fresh("tc-10k").await;
    // 100 directories of 99 leaves: 10,000 nodes below the root.
    let dirs: Vec<String> = (0..100).map(|i| format!("{r}/d{i:03}")).collect();
    futures::future::try_join_all(
        dirs.iter()
            .map(|d| c.create(d, b"dir", CreateMode::Persistent)),
    )
    .await
    .unwrap();
    for d in &dirs {
        futures::future::try_join_all((0..99).map(|j| {
            let p = format!("{d}/leaf{j:02}");
            let c = c.clone();
            async move {
                c.create(&p, format!("value {j}").as_bytes(), CreateMode::Persistent)
                    .await
            }
        }))
        .await
        .unwrap();
    }

    let t0 = Instant::now();
    let cache = started(TreeCache::new(&c, &r).unwrap());
    let snap = cache
        .wait_loaded_timeout(Duration::from_secs(60))
        .await
        .unwrap();
    let load = t0.elapsed();
    assert_eq!(snap.len(), 10_001);
    assert_eq!(snap.children(&r).len(), 100);
    assert_eq!(snap.children(&dirs[7]).len(), 99);
    eprintln!("tree cache: first load of 10,001 nodes in {load:?}");

    let mut replay = Replay::new(&cache);
    replay.until("snapshot", |m| m.len() == 10_001).await;
    let leaf = format!("{}/leaf42", dirs[55]);
    let t1 = Instant::now();
    c.set_data(&leaf, b"changed", None).await.unwrap();
    replay
        .until("change", |m| {
            m.get(&leaf).is_some_and(|v| v.2 == b"changed")
        })
        .await;
    eprintln!(
        "tree cache: change seen {:?} after set_data was sent",
        t1.elapsed()
    );

    // A burst: one directory deleted, leaf by leaf.
    c.delete_recursive(&dirs[3]).await.unwrap();
    let d3 = dirs[3].clone();
    replay
        .until("dir gone", |m| !m.keys().any(|k| k.starts_with(&d3)))
        .await;
    assert_eq!(replay.model.len(), 10_001 - 100);
    check_converged(&c, &cache, &replay, &r).await;
    drop(cache);
    c.delete_recursive(&r).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_while_cut_off_are_delivered_once_after_heal() {
    init_tracing();
    let admin = client(&zk().connect_string(), 10_000).await;
    let (proxy, c) = proxied(6_000).await;
    let r = root("tc-cut");
    for p in ["keep", "old", "upd", "re", "re/kid"] {
        admin
            .create_with_parents(&format!("{r}/{p}"), p.as_bytes(), CreateMode::Persistent)
            .await
            .unwrap();
    }
    let cache = started(TreeCache::new(&c, &r).unwrap());
    cache.wait_loaded_timeout(T).await.unwrap();
    let mut replay = Replay::new(&cache);
    replay.until("loaded", |m| m.len() == 6).await;

    let mut states = c.states();
    proxy.blackhole();
    common::expect_state(&mut states, T, "suspended", |s| {
        matches!(s, zkr::SessionState::Suspended { .. })
    })
    .await;
    replay.until_marker(CacheEvent::Stale, 1).await;
    assert_eq!(cache.state(), CacheState::Stale);
    // While cut off: add, delete, update, and delete + re-create a subtree (same data).
    admin
        .create(&format!("{r}/new"), b"new", CreateMode::Persistent)
        .await
        .unwrap();
    admin.delete(&format!("{r}/old"), None).await.unwrap();
    admin
        .set_data(&format!("{r}/upd"), b"upd2", None)
        .await
        .unwrap();
    admin.delete_recursive(&format!("{r}/re")).await.unwrap();
    admin
        .create(&format!("{r}/re"), b"re", CreateMode::Persistent)
        .await
        .unwrap();
    admin
        .create(&format!("{r}/re/kid"), b"re/kid", CreateMode::Persistent)
        .await
        .unwrap();
    proxy.heal();
    replay.until_marker(CacheEvent::Fresh, 1).await;

    let mut removed = event_paths(&replay.events, "removed");
    removed.sort();
    let mut added = event_paths(&replay.events, "added");
    added.sort();
    let want_removed = [format!("{r}/old"), format!("{r}/re"), format!("{r}/re/kid")];
    let want_added = [format!("{r}/new"), format!("{r}/re"), format!("{r}/re/kid")];
    assert_eq!(removed, want_removed);
    assert_eq!(added, want_added);
    assert_eq!(event_paths(&replay.events, "updated"), [format!("{r}/upd")]);
    check_converged(&admin, &cache, &replay, &r).await;
    assert_eq!(cache.state(), CacheState::Live);

    // Still following after the resync.
    admin
        .set_data(&format!("{r}/keep"), b"k2", None)
        .await
        .unwrap();
    let keep = format!("{r}/keep");
    replay
        .until("keep", |m| m.get(&keep).is_some_and(|v| v.2 == b"k2"))
        .await;
    admin.delete_recursive(&r).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_resyncs_in_the_new_session() {
    init_tracing();
    let admin = client(&zk().connect_string(), 10_000).await;
    let (proxy, c) = proxied(4_000).await;
    let r = root("tc-expiry");
    admin
        .create_with_parents(&format!("{r}/a"), b"a", CreateMode::Persistent)
        .await
        .unwrap();
    // The cached client's own ephemeral node goes with its session.
    c.create(&format!("{r}/mine"), b"e", CreateMode::Ephemeral)
        .await
        .unwrap();
    let cache = started(TreeCache::new(&c, &r).unwrap());
    cache.wait_loaded_timeout(T).await.unwrap();
    let mut replay = Replay::new(&cache);
    replay.until("loaded", |m| m.len() == 3).await;

    let mut states = c.states();
    c.expire_session_for_testing(&zk().connect_string(), &proxy)
        .await
        .unwrap();
    admin
        .set_data(&format!("{r}/a"), b"a2", None)
        .await
        .unwrap();
    common::expect_state(&mut states, T, "new session", |s| {
        matches!(s, zkr::SessionState::Connected { epoch: 2, .. })
    })
    .await;
    replay.until_marker(CacheEvent::Fresh, 1).await;
    let a = format!("{r}/a");
    let mine = format!("{r}/mine");
    replay
        .until("a2, no ephemeral", |m| {
            m.get(&a).is_some_and(|v| v.2 == b"a2") && !m.contains_key(&mine)
        })
        .await;
    // Following again in the new session.
    admin
        .create(&format!("{r}/b"), b"b", CreateMode::Persistent)
        .await
        .unwrap();
    let b = format!("{r}/b");
    replay.until("b", |m| m.contains_key(&b)).await;
    check_converged(&admin, &cache, &replay, &r).await;
    admin.delete_recursive(&r).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtree_deleted_and_recreated() {
    init_tracing();
    let c = client(&zk().connect_string(), 10_000).await;
    let r = root("tc-recreate");
    for p in ["sub/x/y", "sub/z", "other"] {
        c.create_with_parents(&format!("{r}/{p}"), b"v1", CreateMode::Persistent)
            .await
            .unwrap();
    }
    let cache = started(TreeCache::new(&c, &r).unwrap());
    cache.wait_loaded_timeout(T).await.unwrap();
    let mut replay = Replay::new(&cache);
    replay.until("loaded", |m| m.len() == 6).await;
    let sub = format!("{r}/sub");
    let old_czxid = replay.model[&sub].0;

    c.delete_recursive(&sub).await.unwrap();
    for p in ["sub", "sub/x", "sub/w"] {
        c.create(&format!("{r}/{p}"), b"v1", CreateMode::Persistent)
            .await
            .unwrap();
    }
    let w = format!("{r}/sub/w");
    replay.until("re-created", |m| m.contains_key(&w)).await;
    assert!(replay.model[&sub].0 > old_czxid, "a new incarnation");
    assert!(!replay.model.contains_key(&format!("{r}/sub/x/y")));
    assert!(!replay.model.contains_key(&format!("{r}/sub/z")));
    check_converged(&c, &cache, &replay, &r).await;
    c.delete_recursive(&r).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_subscriber_gets_a_snapshot_and_converges() {
    init_tracing();
    let (c, r) = fresh("tc-lag").await;
    let cache = started(TreeCache::new(&c, &r).unwrap().with_event_capacity(4));
    cache.wait_loaded_timeout(T).await.unwrap();
    let mut replay = Replay::new(&cache);
    replay.until("loaded", |m| m.len() == 1).await;
    for i in 0..40 {
        c.create(&format!("{r}/n{i:02}"), b"", CreateMode::Persistent)
            .await
            .unwrap();
    }
    // Not polled meanwhile: it fell behind, so it is handed a snapshot and goes on from there.
    cache
        .wait_for_timeout(|s| (s.len() == 41).then_some(()), T)
        .await
        .unwrap();
    replay.until("all", |m| m.len() == 41).await;
    assert!(
        replay.snapshots >= 2,
        "a lagging subscriber is re-based on a snapshot"
    );
    check_converged(&c, &cache, &replay, &r).await;
    c.delete_recursive(&r).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_cache_one_level_with_data() {
    init_tracing();
    let c = client(&zk().connect_string(), 10_000).await;
    let r = root("pc");
    c.create_with_parents(&format!("{r}/a/deep"), b"deep", CreateMode::Persistent)
        .await
        .unwrap();
    c.set_data(&format!("{r}/a"), b"A", None).await.unwrap();
    let cache = {
        let p = PathCache::new(&c, &r).unwrap();
        p.start().unwrap();
        p
    };
    let kids = cache.wait_loaded_timeout(T).await.unwrap();
    assert_eq!(kids.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(kids["a"].data, b"A");
    let mut sub = cache.subscribe();
    assert!(matches!(
        sub.next_timeout(T).await.unwrap(),
        Some(CacheUpdate::Snapshot(_))
    ));
    c.create(&format!("{r}/b"), b"B", CreateMode::Persistent)
        .await
        .unwrap();
    c.create(&format!("{r}/a/deeper"), b"x", CreateMode::Persistent)
        .await
        .unwrap();
    c.set_data(&format!("{r}/b"), b"B2", None).await.unwrap();
    let kids = cache
        .wait_for_timeout(
            |m| {
                m.get("b")
                    .is_some_and(|n| n.data == b"B2")
                    .then(|| m.clone())
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(kids.len(), 2, "grandchildren are not children");
    // Only child events: the directory's own (its pzxid moved) never shows.
    let mut got = Vec::new();
    loop {
        if let Some(CacheUpdate::Event { event, .. }) = sub.next_timeout(T).await.unwrap() {
            if let Some(n) = event.node() {
                got.push(n.path.clone());
                if n.data == b"B2" {
                    break;
                }
            }
        }
    }
    assert!(got.iter().all(|p| *p == format!("{r}/b")), "{got:?}");
    drop(cache);
    c.delete_recursive(&r).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_depth_bounds_and_drop_ends_subscriptions() {
    init_tracing();
    let c = client(&zk().connect_string(), 10_000).await;
    let r = root("tc-bounds");
    c.create_with_parents(&format!("{r}/a/b/c"), b"deep", CreateMode::Persistent)
        .await
        .unwrap();
    let big = vec![7u8; 5000];
    c.set_data(&format!("{r}/a"), &big, None).await.unwrap();
    let cache = started(
        TreeCache::new(&c, &r)
            .unwrap()
            .with_max_data_bytes(100)
            .with_max_depth(2),
    );
    let snap = cache.wait_loaded_timeout(T).await.unwrap();
    let paths: Vec<&str> = snap.iter().map(|n| n.path.as_str()).collect();
    let (a, b) = (format!("{r}/a"), format!("{r}/a/b"));
    assert_eq!(
        paths,
        [r.as_str(), a.as_str(), b.as_str()],
        "two levels only"
    );
    let node_a = snap.get(&a).unwrap();
    assert_eq!(node_a.data.len(), 100, "data cut to the bound");
    assert!(node_a.truncated);
    assert_eq!(
        node_a.stat.data_length, 5000,
        "the stat still tells the real size"
    );
    assert!(!snap.get(&b).unwrap().truncated);

    // Changes below the depth bound are not cached.
    let mut sub = cache.subscribe();
    c.create(&format!("{r}/a/b/c/d"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    // A new child of the deepest cached node (its children change) stays out too; its event
    // comes before the data change waited for below.
    c.create(&format!("{r}/a/b/new"), b"", CreateMode::Persistent)
        .await
        .unwrap();
    c.set_data(&b, b"b2", None).await.unwrap();
    cache
        .wait_for_timeout(
            |s| s.get(&b).is_some_and(|n| n.data == b"b2").then_some(()),
            T,
        )
        .await
        .unwrap();
    assert_eq!(cache.current().len(), 3);
    assert!(cache.get(&format!("{r}/a/b/new")).is_none());

    // Dropping the cache ends its subscriptions.
    drop(cache);
    let ended = tokio::time::timeout(T, async { while sub.next().await.is_some() {} }).await;
    assert!(
        ended.is_ok(),
        "the subscription ends once the cache is dropped"
    );
    c.delete_recursive(&r).await.unwrap();
}
