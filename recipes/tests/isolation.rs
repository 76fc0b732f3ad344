//! A holder connected to a member that is cut off from the others (its quorum links silently
//! dropped, its client port reachable) is told it may have lost its lock or leadership BEFORE a
//! client on the majority takes over. The cut-off member goes on answering reads and pings on
//! its own for syncLimit × tickTime (5 s here), longer than the session timeout (4 s), so only
//! leader-confirmed liveness and leases get this right (see docs/leases.md).
//!
//! The order of the two events is taken by an independent observer: each side records the
//! instant of its own event, and the test compares them. Nothing sleeps and hopes.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use zkr_recipes::{LeaderLatch, LeaderSelector, LossPolicy, Mutex, RwLock, Semaphore};
use zkr_testing::ZkEnsemble;

/// Shorter than syncLimit × tickTime (10 × 500 ms): the member does not drop its clients first.
const SESSION_MS: u64 = 4000;
const LONG: Duration = Duration::from_secs(40);

/// One ensemble at a time (each test starts its own).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Clone, Copy, Debug)]
enum Kind {
    Mutex,
    MutexOnLost,
    RwLockWrite,
    Semaphore,
    Latch,
    Selector,
}

async fn leader_of(ens: &Arc<ZkEnsemble>) -> usize {
    let ens = ens.clone();
    common::blocking(move || ens.wait_leader_among(&[0, 1, 2], Duration::from_secs(30)))
        .await
        .expect("a leader among the three")
}

/// The instant one side of a scenario saw its event (told of the loss, or took over).
type Event = std::pin::Pin<Box<dyn Future<Output = Instant> + Send>>;

/// `A` holds through member `m` only; `B` waits through the other two; `m` is isolated.
/// Returns how long after the isolation A was told and B took over.
async fn scenario(ens: &Arc<ZkEnsemble>, kind: Kind, isolate_leader: bool) -> (Duration, Duration) {
    let leader = leader_of(ens).await;
    let m = if isolate_leader {
        leader
    } else {
        (leader + 1) % 3
    };
    let majority: Vec<String> = (0..3)
        .filter(|&i| i != m)
        .map(|i| ens.member_connect_string(i))
        .collect();
    let a = common::client(&ens.member_connect_string(m), SESSION_MS).await;
    // B's session outlives an election on the majority (when the leader is the one cut off,
    // the other two need syncLimit × tickTime and an election before anything is confirmed).
    let b = common::client(&majority.join(","), 5 * SESSION_MS).await;
    let path = common::root(&format!("iso-{kind:?}-{isolate_leader}").to_lowercase());

    // A takes the hold; B starts waiting for it. Each side reports the instant of its event.
    let (told, took): (Event, Event) = match kind {
        Kind::Mutex | Kind::MutexOnLost => {
            let policy = if matches!(kind, Kind::Mutex) {
                LossPolicy::Suspended
            } else {
                LossPolicy::Lost
            };
            let g = Mutex::new(&a, &path)
                .unwrap()
                .with_loss_policy(policy)
                .acquire()
                .await
                .unwrap();
            let mb = Mutex::new(&b, &path).unwrap();
            (
                Box::pin(async move {
                    g.lost().await;
                    assert!(g.is_lost());
                    Instant::now()
                }),
                Box::pin(async move {
                    let g = mb.acquire_timeout(LONG).await.unwrap();
                    let at = Instant::now();
                    g.release().await.unwrap();
                    at
                }),
            )
        }
        Kind::RwLockWrite => {
            let g = RwLock::new(&a, &path).unwrap().write().await.unwrap();
            let lb = RwLock::new(&b, &path).unwrap();
            (
                Box::pin(async move {
                    g.lost().await;
                    Instant::now()
                }),
                Box::pin(async move {
                    let g = lb.read_timeout(LONG).await.unwrap();
                    let at = Instant::now();
                    g.release().await.unwrap();
                    at
                }),
            )
        }
        Kind::Semaphore => {
            let g = Semaphore::new(&a, &path, 1)
                .unwrap()
                .acquire()
                .await
                .unwrap();
            let sb = Semaphore::new(&b, &path, 1).unwrap();
            (
                Box::pin(async move {
                    g.lost().await;
                    Instant::now()
                }),
                Box::pin(async move {
                    let g = sb.acquire_timeout(LONG).await.unwrap();
                    let at = Instant::now();
                    g.release().await.unwrap();
                    at
                }),
            )
        }
        Kind::Latch => {
            let la = LeaderLatch::new(&a, &path, "a").unwrap();
            la.start().await.unwrap();
            la.wait_leader_timeout(LONG).await.unwrap();
            let lb = LeaderLatch::new(&b, &path, "b").unwrap();
            lb.start().await.unwrap();
            (
                Box::pin(async move {
                    let mut changes = la.changes();
                    while let Some(s) = changes.next().await {
                        if !s.is_leader() {
                            break;
                        }
                    }
                    let at = Instant::now();
                    assert!(!la.is_leader());
                    at
                }),
                Box::pin(async move {
                    lb.wait_leader_timeout(LONG).await.unwrap();
                    let at = Instant::now();
                    lb.close().await.unwrap();
                    at
                }),
            )
        }
        Kind::Selector => {
            let (a_term_tx, a_term_rx) = tokio::sync::oneshot::channel::<()>();
            let (a_lost_tx, a_lost_rx) = tokio::sync::oneshot::channel::<Instant>();
            let sa = LeaderSelector::new(&a, &path)
                .unwrap()
                .with_id("a")
                .with_requeue(false);
            let handle_a = sa.handle();
            let mut txs = Some((a_term_tx, a_lost_tx));
            tokio::spawn(sa.run(move |leadership| {
                let txs = txs.take();
                async move {
                    if let Some((term, lost)) = txs {
                        // The selector cancels this closure when the term ends: observe the
                        // loss from a task of its own.
                        tokio::spawn(async move {
                            leadership.lost().await;
                            let _ = lost.send(Instant::now());
                        });
                        let _ = term.send(());
                        std::future::pending::<()>().await;
                    }
                }
            }));
            a_term_rx.await.unwrap();
            let (b_tx, b_rx) = tokio::sync::oneshot::channel::<Instant>();
            let sb = LeaderSelector::new(&b, &path)
                .unwrap()
                .with_id("b")
                .with_requeue(false);
            let handle_b = sb.handle();
            let mut b_tx = Some(b_tx);
            tokio::spawn(sb.run(move |_leadership| {
                let tx = b_tx.take();
                async move {
                    if let Some(tx) = tx {
                        let _ = tx.send(Instant::now());
                    }
                }
            }));
            (
                Box::pin(async move {
                    let at = a_lost_rx.await.unwrap();
                    handle_a.stop();
                    at
                }),
                Box::pin(async move {
                    let at = b_rx.await.unwrap();
                    handle_b.stop();
                    at
                }),
            )
        }
    };
    let told = tokio::spawn(told);
    let took = tokio::spawn(took);
    let cut = Instant::now();
    let e = ens.clone();
    common::blocking(move || e.isolate(m)).await.unwrap();
    let told = tokio::time::timeout(LONG, told)
        .await
        .expect("A is told")
        .unwrap();
    let took = tokio::time::timeout(LONG, took)
        .await
        .expect("B takes over")
        .unwrap();
    assert!(
        told < took,
        "{kind:?} (isolated {}): A was told {:?} after the cut, but B took over {:?} after it",
        if isolate_leader { "leader" } else { "follower" },
        told - cut,
        took - cut
    );
    let result = (told - cut, took - cut);
    a.close().await;
    b.close().await;
    let e = ens.clone();
    common::blocking(move || {
        e.heal().unwrap();
        e.wait_leader_among(&[0, 1, 2], Duration::from_secs(30))
            .unwrap();
    })
    .await;
    result
}

// Holding the std mutex across the awaits is the point: it keeps the tests of this file serial.
#[allow(clippy::await_holding_lock)]
async fn run_all(isolate_leader: bool, kinds: &[Kind]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::init_tracing();
    let ens = Arc::new(ZkEnsemble::start_partitionable(3).expect("ensemble"));
    for &kind in kinds {
        let (told, took) = scenario(&ens, kind, isolate_leader).await;
        eprintln!(
            "{kind:?}, isolated {}: told after {told:?}, the majority took over after {took:?}",
            if isolate_leader { "leader" } else { "follower" }
        );
    }
}

#[tokio::test]
async fn holders_on_an_isolated_follower_are_told_before_the_majority_takes_over() {
    run_all(
        false,
        &[
            Kind::Mutex,
            Kind::MutexOnLost,
            Kind::RwLockWrite,
            Kind::Semaphore,
            Kind::Latch,
            Kind::Selector,
        ],
    )
    .await;
}

#[tokio::test]
async fn holders_on_an_isolated_leader_are_told_before_the_majority_takes_over() {
    run_all(
        true,
        &[
            Kind::Mutex,
            Kind::RwLockWrite,
            Kind::Semaphore,
            Kind::Latch,
            Kind::Selector,
        ],
    )
    .await;
}

/// A holder whose connect string names every member is moved off the cut-off member while its
/// lease lasts: the session survives (same session, node kept), and with the `Lost` loss policy
/// the lock stays held; nobody else gets it.
#[tokio::test]
#[allow(clippy::await_holding_lock)]
async fn a_session_on_an_isolated_follower_moves_to_the_majority_and_keeps_its_lock() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::init_tracing();
    let ens = Arc::new(ZkEnsemble::start_partitionable(3).expect("ensemble"));
    let leader = leader_of(&ens).await;
    let f = (leader + 1) % 3;
    let all: Vec<String> = (0..3).map(|i| ens.member_connect_string(i)).collect();
    let a = common::client(&all.join(","), SESSION_MS).await;
    a.move_session(&ens.member_connect_string(f)).await.unwrap();
    let session = a.session_id().unwrap();
    let path = common::root("iso-move");
    let g = Mutex::new(&a, &path)
        .unwrap()
        .with_loss_policy(LossPolicy::Lost)
        .acquire()
        .await
        .unwrap();
    let mut states = a.states();
    // The first item is the state now: `Reconnected`, from the move to `f` above. The move off
    // `f` is the next `Suspended` then `Reconnected`.
    let _now = states.next_state().await;
    let e = ens.clone();
    common::blocking(move || e.isolate(f)).await.unwrap();
    common::expect_state(&mut states, LONG, "suspended on the isolated member", |s| {
        matches!(s, zkr::SessionState::Suspended { .. })
    })
    .await;
    common::expect_state(&mut states, LONG, "reconnected elsewhere", |s| {
        matches!(s, zkr::SessionState::Reconnected { .. })
    })
    .await;
    assert_ne!(
        a.connected_server().as_deref(),
        Some(ens.member_connect_string(f).as_str()),
        "moved off the isolated member"
    );
    assert_eq!(a.session_id(), Some(session), "same session");
    // Past the point where the isolated member gives up (and well past the session timeout):
    // the session and its lock node are alive, seen by a client on the majority.
    let e = ens.clone();
    common::blocking(move || {
        let deadline = Instant::now() + LONG;
        while e.mode(f).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the isolated member keeps serving"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await;
    let observer = common::client(&all.join(","), 5 * SESSION_MS).await;
    let stat = observer
        .exists(g.fence().path.as_str())
        .await
        .unwrap()
        .expect("lock node kept");
    assert_eq!(stat.ephemeral_owner, session.0);
    assert!(
        !g.is_lost(),
        "with the Lost policy the lock survives the move"
    );
    g.release().await.unwrap();
    a.close().await;
    observer.close().await;
    let e = ens.clone();
    common::blocking(move || e.heal().unwrap()).await;
}
