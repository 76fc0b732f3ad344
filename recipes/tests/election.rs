//! Master election (leader latch, run-while-leader, observe) against real ZooKeeper with real
//! faults. Covered (see docs/failure-modes.md, *Election*): at most one leader, sampled
//! continuously, under member kills, pauses, cuts and expiry; never leading from an older
//! session's node; two quick reconnects; the election path deleted while disconnected;
//! leadership interrupted twice in a row.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{blocking, client, init_tracing, member_of, root};
use futures::{FutureExt, StreamExt};
use zkr::Client;
use zkr_recipes::{leader_observer, Changes, LatchState, LeaderLatch, LeaderObserver};
use zkr_recipes::{LeaderSelector, LossPolicy};
use zkr_testing::{self as testing, FaultProxy, ZkEnsemble};

const T: Duration = Duration::from_secs(15);

/// Samples every candidate's belief continuously: never two leaders; distinct leaders' fencing
/// epochs strictly increase.
struct Sampler {
    add: std::sync::mpsc::Sender<(String, Changes<LatchState>)>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<SampleReport>,
}

#[derive(Debug, Default)]
struct SampleReport {
    samples: u64,
    violations: Vec<String>,
    leaders: Vec<(String, i64)>,
}

impl Sampler {
    fn start() -> Sampler {
        let (add, rx) = std::sync::mpsc::channel::<(String, Changes<LatchState>)>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            // Each candidate's id, its changes and the latest state they showed.
            let mut cands: Vec<(String, Changes<LatchState>, LatchState)> = Vec::new();
            let mut rep = SampleReport::default();
            let mut last: Option<(String, i64)> = None;
            while !stop2.load(Ordering::Acquire) {
                while let Ok((id, ch)) = rx.try_recv() {
                    cands.push((id, ch, LatchState::NotLeader));
                }
                for (_, ch, now) in &mut cands {
                    while let Some(Some(s)) = ch.next().now_or_never() {
                        *now = s;
                    }
                }
                let leading: Vec<(String, i64)> = cands
                    .iter()
                    .filter_map(|(id, _, s)| s.fence().map(|f| (id.clone(), f.token)))
                    .collect();
                rep.samples += 1;
                if leading.len() > 1 {
                    rep.violations.push(format!("two leaders: {leading:?}"));
                }
                if let Some(l) = leading.into_iter().next() {
                    if last.as_ref() != Some(&l) {
                        if let Some((_, e)) = &last {
                            if l.1 <= *e {
                                rep.violations
                                    .push(format!("epoch did not increase: {last:?} -> {l:?}"));
                            }
                        }
                        rep.leaders.push(l.clone());
                        last = Some(l);
                    }
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            rep
        });
        Sampler { add, stop, task }
    }

    fn watch(&self, latch: &LeaderLatch) {
        let _ = self.add.send((latch.id().to_string(), latch.changes()));
    }

    async fn finish(self) -> SampleReport {
        self.stop.store(true, Ordering::Release);
        let rep = self.task.await.expect("sampler");
        assert!(
            rep.violations.is_empty(),
            "violations: {:?}",
            rep.violations
        );
        rep
    }
}

/// The leader's node exists, is owned by the leader's current session and is first in line.
async fn assert_leader_node_sound(admin: &Client, latch: &LeaderLatch, c: &Client) {
    let fence = latch.fence().expect("leading");
    let parts = leader_observer::participants(admin, latch.path())
        .await
        .unwrap();
    let first = parts.first().expect("a participant");
    assert_eq!(first.path, fence.path, "the leader's node is first");
    assert_eq!(first.id, latch.id());
    assert_eq!(
        Some(first.session),
        c.session_id(),
        "owned by its current session"
    );
    assert_eq!(fence.session, first.session);
    assert_eq!(fence.token, first.token);
}

async fn wait_any_leader<'a>(latches: &'a [&'a LeaderLatch], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        if let Some(i) = latches.iter().position(|l| l.is_leader()) {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `n` candidates `cand-0` .. on `path`, each its own session, watched by `sampler`.
async fn candidates(
    ens: &ZkEnsemble,
    path: &str,
    n: usize,
    sampler: &Sampler,
) -> (Vec<Client>, Vec<LeaderLatch>) {
    let mut clients = Vec::new();
    let mut latches = Vec::new();
    for i in 0..n {
        let c = client(&ens.connect_string(), 10_000).await;
        let l = LeaderLatch::new(&c, path, format!("cand-{i}")).unwrap();
        l.start().await.unwrap();
        sampler.watch(&l);
        clients.push(c);
        latches.push(l);
    }
    (clients, latches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latch_elects_hands_over_fast_and_reports_participants() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = format!("{}/election", root("latch-basic"));
    let admin = client(&ens.connect_string(), 10_000).await;
    let sampler = Sampler::start();
    let (mut clients, mut latches) = candidates(ens, &path, 3, &sampler).await;
    let f0 = latches[0]
        .wait_leader_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!latches[1].is_leader() && !latches[2].is_leader());
    let parts = latches[1].participants().await.unwrap();
    let ids: Vec<&str> = parts.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, vec!["cand-0", "cand-1", "cand-2"]);
    assert!(parts[0].is_leader && !parts[1].is_leader);
    assert_eq!(latches[2].leader().await.unwrap().unwrap().id, "cand-0");
    assert_leader_node_sound(&admin, &latches[0], &clients[0]).await;
    // Node names are Curator's.
    let node = latches[0].node().unwrap();
    let name = node.rsplit('/').next().unwrap();
    assert!(
        name.starts_with("_c_") && name.contains("-latch-"),
        "{name}"
    );
    assert_eq!(admin.get_data(&node).await.unwrap().0, b"cand-0");

    // Failover after close(), five rounds, a fresh candidate each round.
    let mut epochs = vec![f0.token];
    let mut took = Vec::new();
    for next_id in 3..8 {
        let leader = latches.iter().position(|l| l.is_leader()).unwrap();
        let next = leader + 1;
        let mut ch = latches[next].changes();
        assert_eq!(ch.next().await, Some(LatchState::NotLeader));
        let t0 = Instant::now();
        latches[leader].close().await.unwrap();
        assert!(!latches[leader].is_leader());
        let st = ch.next_timeout(Duration::from_secs(5)).await.unwrap();
        let dt = t0.elapsed();
        let f = match st {
            Some(LatchState::Leader(f)) => f,
            other => panic!("expected leadership, got {other:?}"),
        };
        took.push(dt);
        epochs.push(f.token);
        let c = client(&ens.connect_string(), 10_000).await;
        let l = LeaderLatch::new(&c, &path, format!("cand-{next_id}")).unwrap();
        l.start().await.unwrap();
        sampler.watch(&l);
        clients.push(c);
        latches.push(l);
    }
    took.sort();
    eprintln!("failover after close(): {took:?}");
    assert!(
        took[took.len() / 2] < Duration::from_millis(50),
        "median failover {:?} (all {took:?})",
        took[took.len() / 2]
    );
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    // wait_leader times out cleanly; closed latches say so.
    let last = latches.len() - 1;
    let e = latches[last]
        .wait_leader_timeout(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(e, zkr_recipes::Error::Timeout { .. }), "{e}");
    assert!(matches!(
        latches[0].wait_leader().await,
        Err(zkr_recipes::Error::Closed(_))
    ));
    let rep = sampler.finish().await;
    assert!(rep.leaders.len() >= 6, "{:?}", rep.leaders);
    for l in &latches {
        l.close().await.unwrap();
    }
    assert!(leader_observer::participants(&admin, &path)
        .await
        .unwrap()
        .is_empty());
    admin.delete_recursive(&root_of(&path)).await.unwrap();
}

/// A candidate whose watched predecessor goes leads at once only if its last listing, minus
/// that node, puts it first; when the predecessor was not the leader it must look again (and
/// watch the next one ahead) instead of believing it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middle_candidate_leaving_promotes_nobody() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = format!("{}/election", root("latch-middle"));
    let admin = client(&ens.connect_string(), 10_000).await;
    let sampler = Sampler::start();
    let (clients, latches) = candidates(ens, &path, 4, &sampler).await;
    latches[0]
        .wait_leader_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    // cand-2 watches cand-1, cand-3 watches cand-2. Both middle ones leave: cand-3 sees its
    // predecessor go, but cand-0 still leads.
    latches[1].close().await.unwrap();
    latches[2].close().await.unwrap();
    // The leader writes a marker; by the time it is visible to cand-3's client, cand-3 has
    // processed the deletions before it (one session, in order).
    admin
        .create(
            &format!("{}/marker", root_of(&path)),
            b"",
            zkr::CreateMode::Persistent,
        )
        .await
        .unwrap();
    clients[3].sync(&root_of(&path)).await.unwrap();
    clients[3]
        .get_data(&format!("{}/marker", root_of(&path)))
        .await
        .unwrap();
    assert!(latches[0].is_leader());
    assert!(!latches[3].is_leader());
    let parts = leader_observer::participants(&admin, &path).await.unwrap();
    let ids: Vec<&str> = parts.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, vec!["cand-0", "cand-3"]);
    // The leader leaves: cand-3, now watching it, takes over.
    let mut ch = latches[3].changes();
    latches[0].close().await.unwrap();
    loop {
        match ch.next_timeout(Duration::from_secs(5)).await.unwrap() {
            Some(LatchState::Leader(_)) => break,
            Some(_) => continue,
            None => panic!("cand-3's changes ended"),
        }
    }
    assert!(latches[3].is_leader());
    let rep = sampler.finish().await;
    assert!(rep.violations.is_empty(), "{:?}", rep.violations);
    // Nobody but cand-0 led before cand-3 (the sampler may end before it sees cand-3).
    assert!(
        rep.leaders
            .iter()
            .all(|(id, _)| id == "cand-0" || id == "cand-3"),
        "{:?}",
        rep.leaders
    );
    latches[3].close().await.unwrap();
    admin.delete_recursive(&root_of(&path)).await.unwrap();
}

/// The third in line also watches the leader: once the leader and then its predecessor have
/// gone, it leads without listing the election again. Proven by taking away everyone's right
/// to list the election (READ on its node) before the hand-overs: a candidate that lists is
/// refused and closes; this one must lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_in_line_leads_after_two_hand_overs_without_listing() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = format!("{}/election", root("latch-third"));
    let admin = client(&ens.connect_string(), 10_000).await;
    let sampler = Sampler::start();
    let (clients, latches) = candidates(ens, &path, 3, &sampler).await;
    latches[0].wait_leader_timeout(T).await.unwrap();
    let no_read = vec![zkr::Acl::new(
        zkr::perms::ALL & !zkr::perms::READ,
        "world",
        "anyone",
    )];
    admin.set_acl(&path, &no_read, None).await.unwrap();
    assert!(
        matches!(
            admin.get_children(&path).await,
            Err(zkr::Error::NoAuth { .. })
        ),
        "listing is refused"
    );

    latches[0].close().await.unwrap();
    latches[1].wait_leader_timeout(T).await.unwrap();
    // cand-2's session has seen cand-0's deletion (in order, before this read) and its latch
    // takes the leader's event before its predecessor's.
    clients[2]
        .get_data(&latches[1].fence().unwrap().path)
        .await
        .unwrap();

    latches[1].close().await.unwrap();
    latches[2].wait_leader_timeout(T).await.unwrap();
    assert_ne!(latches[2].state(), LatchState::Closed);
    let rep = sampler.finish().await;
    assert!(rep.violations.is_empty(), "{:?}", rep.violations);
    latches[2].close().await.unwrap();
    admin.set_acl(&path, &zkr::Acl::open(), None).await.unwrap();
    admin.delete_recursive(&root_of(&path)).await.unwrap();
}

fn root_of(path: &str) -> String {
    path.rsplit_once('/').map(|(a, _)| a.to_string()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_follows_the_leader() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = format!("{}/election", root("latch-observe"));
    let watcher = client(&ens.connect_string(), 10_000).await;
    let observer = LeaderObserver::new(&watcher, &path).unwrap();
    observer.start().unwrap();
    let mut obs = observer.changes();
    let first = obs.next_timeout(T).await.unwrap().unwrap();
    assert_eq!(first, None, "nobody leads yet");
    let a = client(&ens.connect_string(), 10_000).await;
    let b = client(&ens.connect_string(), 10_000).await;
    let la = LeaderLatch::new(&a, &path, "a").unwrap();
    la.start().await.unwrap();
    let lb = LeaderLatch::new(&b, &path, "b").unwrap();
    lb.start().await.unwrap();
    let p = obs.next_timeout(T).await.unwrap().unwrap().unwrap();
    assert_eq!(p.id, "a");
    assert_eq!(Some(p.path.clone()), la.node());
    la.close().await.unwrap();
    let p2 = obs.next_timeout(T).await.unwrap().unwrap().unwrap();
    assert_eq!(p2.id, "b");
    assert!(p2.token > p.token);
    // The leader's process dies (its session is closed): nobody leads.
    b.close().await;
    assert_eq!(obs.next_timeout(T).await.unwrap().unwrap(), None);
    assert!(lb
        .wait_leader_timeout(Duration::from_secs(1))
        .await
        .is_err());
    watcher.delete_recursive(&root_of(&path)).await.unwrap();
}

/// A leader cut off from ZooKeeper steps down before anyone else is elected (default: on
/// Suspended; with `LossPolicy::Lost` still before the server expires its session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_leader_steps_down_before_another_is_elected() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    for policy in [LossPolicy::Suspended, LossPolicy::Lost] {
        let path = format!("{}/election", root("latch-cutoff"));
        let proxy = FaultProxy::for_ensemble(ens).unwrap();
        let a = client(&proxy.connect_string(), 3_000).await;
        let b = client(&ens.connect_string(), 3_000).await;
        let watcher = client(&ens.connect_string(), 3_000).await;
        let la = LeaderLatch::new(&a, &path, "a")
            .unwrap()
            .with_loss_policy(policy);
        la.start().await.unwrap();
        la.wait_leader_timeout(T).await.unwrap();
        let lb = LeaderLatch::new(&b, &path, "b").unwrap();
        lb.start().await.unwrap();
        let observer = LeaderObserver::new(&watcher, &path).unwrap();
        observer.start().unwrap();
        let mut obs = observer.changes();
        assert_eq!(obs.next_timeout(T).await.unwrap().unwrap().unwrap().id, "a");
        let mut cha = la.changes();
        assert!(cha.next().await.unwrap().is_leader());
        let t0 = Instant::now();
        proxy.blackhole();
        // A learns first ...
        assert_eq!(
            cha.next_timeout(T).await.unwrap(),
            Some(LatchState::NotLeader)
        );
        let demoted = t0.elapsed();
        assert!(
            !lb.is_leader(),
            "{policy:?}: b already leads when a steps down"
        );
        // ... then the server expires A's session and B is elected.
        let p = obs.next_timeout(T).await.unwrap().unwrap().unwrap();
        let elected = t0.elapsed();
        assert_eq!(p.id, "b");
        lb.wait_leader_timeout(T).await.unwrap();
        eprintln!("{policy:?}: a stepped down after {demoted:?}, b elected after {elected:?}");
        assert!(demoted < elected);
        proxy.heal();
        // A comes back on a new session and queues behind B.
        let deadline = Instant::now() + T;
        loop {
            let parts = lb.participants().await.unwrap();
            if parts.len() == 2 && parts[1].id == "a" && Some(parts[1].session) == a.session_id() {
                break;
            }
            assert!(Instant::now() < deadline, "a never rejoined: {parts:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!la.is_leader());
        la.close().await.unwrap();
        lb.close().await.unwrap();
        watcher.delete_recursive(&root_of(&path)).await.unwrap();
    }
}

/// After two quick reconnects the leader still has its (same) node; after its session expired
/// it never leads from the old node, and leads again only from a node of its new session (see
/// docs/failure-modes.md, *Double flap* and *Leading from an old node*).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_expiry_never_leave_a_stale_leader() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = format!("{}/election", root("latch-reconnect"));
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let admin = client(&ens.connect_string(), 10_000).await;
    let a = client(&proxy.connect_string(), 4_000).await;
    let b = client(&ens.connect_string(), 4_000).await;
    let sampler = Sampler::start();
    let la = LeaderLatch::new(&a, &path, "a").unwrap();
    la.start().await.unwrap();
    sampler.watch(&la);
    let f1 = la.wait_leader_timeout(T).await.unwrap();
    let lb = LeaderLatch::new(&b, &path, "b").unwrap();
    lb.start().await.unwrap();
    sampler.watch(&lb);

    // Two quick flaps. Each one is seen by the latch itself, in order: it steps down on
    // Suspended and, once reconnected and its node checked, leads again with the same node and
    // fence (no reset on reconnect).
    let mut ch = la.changes();
    assert_eq!(ch.next().await, Some(LatchState::Leader(f1.clone())));
    for _ in 0..2 {
        proxy.drop_connections();
        assert_eq!(
            ch.next_timeout(T).await.unwrap(),
            Some(LatchState::NotLeader)
        );
        let f2 = match ch.next_timeout(T).await.unwrap() {
            Some(LatchState::Leader(f)) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(f1, f2, "same node, same fence: no reset on reconnect");
    }
    drop(ch);
    assert_leader_node_sound(&admin, &la, &a).await;
    assert!(!lb.is_leader());

    // Expiry: B takes over; A rejoins from its new session only, never from its old node.
    let old_session = a.session_id().unwrap();
    a.expire_session_for_testing(&ens.connect_string(), &proxy)
        .await
        .unwrap();
    let fb = lb.wait_leader_timeout(T).await.unwrap();
    assert!(fb.token > f1.token);
    let deadline = Instant::now() + T;
    loop {
        let parts = lb.participants().await.unwrap();
        if parts.len() == 2 && parts[1].id == "a" {
            assert_ne!(parts[1].session, old_session);
            assert_eq!(Some(parts[1].session), a.session_id());
            break;
        }
        assert!(Instant::now() < deadline, "a never rejoined: {parts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admin.exists(&f1.path).await.unwrap().is_none());
    lb.close().await.unwrap();
    let f3 = la.wait_leader_timeout(T).await.unwrap();
    assert_ne!(f3.session, old_session);
    assert_eq!(Some(f3.session), a.session_id());
    assert!(f3.token > fb.token);
    assert_leader_node_sound(&admin, &la, &a).await;

    // An operator deletes the leader's node: it steps down and rejoins.
    let mut ch = la.changes();
    assert_eq!(ch.next().await, Some(LatchState::Leader(f3.clone())));
    admin.delete(&f3.path, None).await.unwrap();
    assert_eq!(
        ch.next_timeout(T).await.unwrap(),
        Some(LatchState::NotLeader)
    );
    let f4 = match ch.next_timeout(T).await.unwrap() {
        Some(LatchState::Leader(f)) => f,
        other => panic!("{other:?}"),
    };
    assert!(f4.token > f3.token);
    assert_leader_node_sound(&admin, &la, &a).await;
    sampler.finish().await;
    la.close().await.unwrap();
    admin.delete_recursive(&root_of(&path)).await.unwrap();
}

/// The election path is deleted while a candidate is disconnected; after healing it
/// recreates the path and rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_path_deleted_while_disconnected_rejoins() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = format!("{}/election", root("latch-pathgone"));
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let admin = client(&ens.connect_string(), 10_000).await;
    let a = client(&proxy.connect_string(), 6_000).await;
    let la = LeaderLatch::new(&a, &path, "a").unwrap();
    la.start().await.unwrap();
    let f1 = la.wait_leader_timeout(T).await.unwrap();
    let mut states = a.states();
    proxy.cut();
    common::expect_state(&mut states, T, "Suspended", |s| {
        matches!(s, zkr::SessionState::Suspended { .. })
    })
    .await;
    // The latch reacts to Suspended in its own task: wait (bounded) for it to step down.
    let mut ch = la.changes();
    tokio::time::timeout(Duration::from_secs(2), async {
        while la.is_leader() {
            ch.next().await.unwrap();
        }
    })
    .await
    .expect("steps down on Suspended");
    admin.delete_recursive(&path).await.unwrap();
    assert!(admin.exists(&path).await.unwrap().is_none());
    proxy.heal();
    common::expect_state(&mut states, T, "Reconnected", |s| {
        matches!(s, zkr::SessionState::Reconnected { .. })
    })
    .await;
    let f2 = la.wait_leader_timeout(T).await.unwrap();
    assert_ne!(f2.path, f1.path);
    assert_eq!(f2.session, f1.session, "same session, new node");
    assert!(f2.token > f1.token);
    assert_leader_node_sound(&admin, &la, &a).await;
    la.close().await.unwrap();
    admin.delete_recursive(&root_of(&path)).await.unwrap();
}

/// Never two leaders, on a 3-member ensemble: members killed and paused, a candidate's session
/// expired, a candidate's process gone; at most one leader at every sample, fencing epochs
/// strictly increasing, and every elected leader's node is its own and first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_one_leader_under_member_faults() {
    init_tracing();
    let ens = Arc::new(blocking(|| ZkEnsemble::start(3)).await.expect("ensemble"));
    let path = "/election-faults/e".to_string();
    let admin = client(&ens.connect_string(), 10_000).await;
    let sampler = Sampler::start();
    struct Cand {
        client: Client,
        proxy: FaultProxy,
        latch: LeaderLatch,
    }
    let mut cands = Vec::new();
    for i in 0..4 {
        let proxy = FaultProxy::for_ensemble(&ens).unwrap();
        let c = client(&proxy.connect_string(), 2_000).await;
        let latch = LeaderLatch::new(&c, &path, format!("c{i}")).unwrap();
        latch.start().await.unwrap();
        sampler.watch(&latch);
        cands.push(Cand {
            client: c,
            proxy,
            latch,
        });
    }
    for fault in ["kill", "pause", "expire", "die", "flap"] {
        let latches: Vec<&LeaderLatch> = cands.iter().map(|c| &c.latch).collect();
        let li = wait_any_leader(&latches, T).await;
        assert_leader_node_sound(&admin, &cands[li].latch, &cands[li].client).await;
        let sid = cands[li].client.session_id().unwrap().0;
        eprintln!("fault {fault}: leader at index {li}");
        match fault {
            "kill" | "pause" => {
                let e2 = ens.clone();
                let m = blocking(move || member_of(&e2, sid)).await.unwrap_or(0);
                let e2 = ens.clone();
                if fault == "kill" {
                    blocking(move || e2.kill(m)).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let e2 = ens.clone();
                    blocking(move || e2.restart(m)).await.unwrap();
                } else {
                    blocking(move || e2.pause(m)).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(3_000)).await;
                    let e2 = ens.clone();
                    blocking(move || e2.resume(m)).await.unwrap();
                }
            }
            "expire" => {
                cands[li]
                    .client
                    .expire_session_for_testing(&ens.connect_string(), &cands[li].proxy)
                    .await
                    .unwrap();
            }
            "die" => {
                // The leader's process dies: its client goes without resigning.
                let dead = cands.remove(li);
                dead.client.close().await;
                drop(dead);
                let proxy = FaultProxy::for_ensemble(&ens).unwrap();
                let c = client(&proxy.connect_string(), 2_000).await;
                let latch = LeaderLatch::new(&c, &path, "fresh").unwrap();
                latch.start().await.unwrap();
                sampler.watch(&latch);
                cands.push(Cand {
                    client: c,
                    proxy,
                    latch,
                });
            }
            _ => {
                cands[li].proxy.drop_connections();
                tokio::time::sleep(Duration::from_millis(30)).await;
                cands[li].proxy.drop_connections();
            }
        }
        // Someone leads again, soundly.
        let latches: Vec<&LeaderLatch> = cands.iter().map(|c| &c.latch).collect();
        let li = wait_any_leader(&latches, Duration::from_secs(20)).await;
        let deadline = Instant::now() + T;
        // Give the leader's view and the server a moment to agree (a rejoin may be in flight).
        loop {
            let parts = leader_observer::participants(&admin, &path).await.unwrap();
            let f = cands[li].latch.fence();
            if f.is_some() && parts.first().map(|p| &p.path) == f.as_ref().map(|f| &f.path) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "leader view never matched: {parts:?} {f:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_leader_node_sound(&admin, &cands[li].latch, &cands[li].client).await;
    }
    let rep = sampler.finish().await;
    eprintln!("samples {} leaders {:?}", rep.samples, rep.leaders);
    for c in &cands {
        c.latch.close().await.unwrap();
    }
}

type Term = (zkr_recipes::Fence, Instant);

async fn next_term(terms: &mut tokio::sync::mpsc::UnboundedReceiver<Term>) -> Term {
    tokio::time::timeout(T, terms.recv())
        .await
        .expect("term event")
        .expect("open")
}

/// Run-while-leader: terms alternate when the closure returns; the token fires on loss; two
/// interrupts in a row never stop the candidate from rejoining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_runs_terms_interrupts_and_rejoins() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = format!("{}/election", root("selector"));
    let admin = client(&ens.connect_string(), 10_000).await;
    // Two selectors whose closures return after a short term: terms alternate.
    let log = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let mut handles = Vec::new();
    let mut runs = Vec::new();
    for id in ["x", "y"] {
        let c = client(&ens.connect_string(), 10_000).await;
        let sel = LeaderSelector::new(&c, &path).unwrap().with_id(id);
        handles.push(sel.handle());
        let log = log.clone();
        runs.push(tokio::spawn(async move {
            let r = sel
                .run(|l| {
                    let log = log.clone();
                    async move {
                        log.lock().unwrap().push((id.to_string(), l.fence().token));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
            drop(c);
            r
        }));
    }
    let deadline = Instant::now() + T;
    while log.lock().unwrap().len() < 6 {
        assert!(Instant::now() < deadline, "{:?}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for h in &handles {
        h.stop();
    }
    for r in runs {
        r.await.unwrap().unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert!(
        log.windows(2).all(|w| w[0].0 != w[1].0),
        "alternating: {log:?}"
    );
    assert!(
        log.windows(2).all(|w| w[0].1 < w[1].1),
        "epochs increase: {log:?}"
    );

    // One selector, interrupted twice in a row, and again while not leading: it rejoins.
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let c = client(&proxy.connect_string(), 3_000).await;
    let sel = LeaderSelector::new(&c, &path)
        .unwrap()
        .with_id("z")
        .with_grace(Duration::from_millis(200));
    let h = sel.handle();
    let (tx, mut terms) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(async move {
        sel.run(|l| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((l.fence().clone(), Instant::now()));
                l.lost().await;
                let _ = tx.send((l.fence().clone(), Instant::now()));
                std::future::pending::<()>().await;
            }
        })
        .await
    });
    let (f1, _) = next_term(&mut terms).await;
    h.interrupt();
    h.interrupt();
    let (g1, _) = next_term(&mut terms).await;
    assert_eq!(g1, f1, "the token fired for the first term");
    let (f2, _) = next_term(&mut terms).await;
    assert!(f2.token > f1.token, "rejoined with a new node");
    // A second pair of interrupts after the new term started.
    h.interrupt();
    let _ = next_term(&mut terms).await;
    h.interrupt();
    let mut last = f2;
    let deadline = Instant::now() + T;
    loop {
        let (f, _) = next_term(&mut terms).await;
        if f.token > last.token && h.leading().as_ref() == Some(&f) {
            break;
        }
        last = f;
        assert!(Instant::now() < deadline);
    }
    // Losing the connection fires the token (before the session can be lost).
    let (cur, _) = (h.leading().unwrap(), ());
    let t0 = Instant::now();
    proxy.blackhole();
    let (g, at) = next_term(&mut terms).await;
    assert_eq!(g, cur);
    assert!(at.duration_since(t0) < Duration::from_millis(2_900));
    proxy.heal();
    let (f3, _) = next_term(&mut terms).await;
    assert!(f3.token >= cur.token);
    h.stop();
    tokio::time::timeout(T, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(leader_observer::participants(&admin, &path)
        .await
        .unwrap()
        .is_empty());
    admin.delete_recursive(&root_of(&path)).await.unwrap();
}

/// The latch and the observer validate at `new`, do nothing before `start`, refuse a second
/// `start`, and a latch closed before it started cannot start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latch_and_observer_start_once() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let path = format!("{}/election", root("latch-lifecycle"));
    let c = client(&ens.connect_string(), 10_000).await;
    let bad_path = |r: zkr_recipes::Result<()>| {
        matches!(
            r,
            Err(zkr_recipes::Error::Zk(zkr::Error::InvalidPath { .. }))
        )
    };
    assert!(bad_path(LeaderLatch::new(&c, "no-slash", "a").map(|_| ())));
    assert!(bad_path(LeaderObserver::new(&c, "no-slash").map(|_| ())));

    let observer = LeaderObserver::new(&c, &path).unwrap();
    assert_eq!(observer.state(), zkr_recipes::ObserverState::Idle);
    let mut leaders = observer.changes();
    observer.start().unwrap();
    assert!(matches!(
        observer.start(),
        Err(zkr_recipes::Error::Invalid(_))
    ));
    assert_eq!(leaders.next_timeout(T).await.unwrap(), Some(None));

    let latch = LeaderLatch::new(&c, &path, "a").unwrap();
    assert_eq!(latch.state(), LatchState::NotLeader);
    assert!(latch.node().is_none());
    assert!(
        c.exists(&path).await.unwrap().is_none(),
        "new() wrote nothing"
    );
    latch.start().await.unwrap();
    assert!(matches!(
        latch.start().await,
        Err(zkr_recipes::Error::Invalid(_))
    ));
    assert_eq!(
        c.get_children(&path).await.unwrap().len(),
        1,
        "a refused second start made no node"
    );
    let fence = latch.wait_leader_timeout(T).await.unwrap();
    let p = leaders.next_timeout(T).await.unwrap().unwrap().unwrap();
    assert_eq!(p.path, fence.path);
    assert_eq!(observer.current(), Some(p));
    latch.close().await.unwrap();
    assert_eq!(latch.state(), LatchState::Closed);
    assert_eq!(leaders.next_timeout(T).await.unwrap(), Some(None));

    let unstarted = LeaderLatch::new(&c, &path, "b").unwrap();
    unstarted.close().await.unwrap();
    assert_eq!(unstarted.state(), LatchState::Closed);
    assert!(matches!(
        unstarted.start().await,
        Err(zkr_recipes::Error::Closed(_))
    ));
    assert!(unstarted.node().is_none());

    observer.close();
    assert_eq!(observer.state(), zkr_recipes::ObserverState::Closed);
    assert_eq!(leaders.next_timeout(T).await.unwrap(), None);
    c.delete_recursive(&root_of(&path)).await.unwrap();
}
