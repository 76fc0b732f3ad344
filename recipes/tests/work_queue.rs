//! Work queue with progress reporting against real ZooKeeper: exactly one worker per task,
//! a live coordinator view, and a worker dying mid-task (closed client, expired session, cut
//! connection) whose task is completed by another worker exactly once.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, expect_state, init_tracing, poll_at_most, root};
use serde_json::json;
use zkr::SessionState;
use zkr_recipes::work_queue::{TaskState, WorkQueue};
use zkr_testing::{self as testing, FaultProxy};

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_claimed_once_with_progress_and_completed() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let r = root("wq-basic");
    let admin = client(&ens.connect_string(), 10_000).await;
    let q = WorkQueue::new(&admin, &r).unwrap();
    let coord = q.coordinator().unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(q.put(&json!({"n": i})).await.unwrap());
    }
    coord
        .wait_for_timeout(|s| s.count(TaskState::Pending) == 20, T)
        .await
        .unwrap();
    // Who holds what right now: a second holder of a task is a violation.
    let holders: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut handles = Vec::new();
    for w in 0..4 {
        let c = client(&ens.connect_string(), 10_000).await;
        let q = WorkQueue::new(&c, &r).unwrap();
        let holders = holders.clone();
        let violations = violations.clone();
        handles.push(tokio::spawn(async move {
            let name = format!("w{w}");
            let mut worker = q.worker(&name).unwrap();
            let mut done = Vec::new();
            loop {
                let task = match worker.claim_timeout(Duration::from_millis(1500)).await {
                    Ok(t) => t,
                    Err(zkr_recipes::Error::Timeout { .. }) => break,
                    Err(e) => panic!("claim: {e}"),
                };
                if let Some(other) = holders
                    .lock()
                    .unwrap()
                    .insert(task.id().to_string(), name.clone())
                {
                    violations
                        .lock()
                        .unwrap()
                        .push(format!("{} held by {other}", task.id()));
                }
                assert!(task.payload()["n"].is_u64());
                task.progress(50.0, "half").await.unwrap();
                holders.lock().unwrap().remove(task.id());
                let id = task.id().to_string();
                task.complete(json!({"by": name})).await.unwrap();
                done.push(id);
            }
            c.close().await;
            done
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    assert!(
        violations.lock().unwrap().is_empty(),
        "{:?}",
        violations.lock().unwrap()
    );
    all.sort();
    assert_eq!(all, ids, "every task completed exactly once");
    let snap = coord
        .wait_for_timeout(|s| s.count(TaskState::Completed) == 20, T)
        .await
        .unwrap();
    assert_eq!(snap.tasks.len(), 20);
    for t in &snap.tasks {
        assert_eq!(
            t.result.as_ref().unwrap()["by"],
            json!(t.owner.clone().unwrap())
        );
    }
    let once = q.snapshot().await.unwrap();
    assert_eq!(once, snap);
    admin.delete_recursive(&r).await.unwrap();
}

/// The coordinator sees a running task's owner and progress; a worker whose client is closed
/// mid-task gives the task back, and another worker completes it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_worker_task_completed_by_another() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let r = root("wq-close");
    let admin = client(&ens.connect_string(), 10_000).await;
    let q = WorkQueue::new(&admin, &r).unwrap();
    let coord = q.coordinator().unwrap();
    let id = q.put(&json!("job")).await.unwrap();

    let ca = client(&ens.connect_string(), 10_000).await;
    let mut wa = WorkQueue::new(&ca, &r).unwrap().worker("A").unwrap();
    let ta = wa.claim_timeout(T).await.unwrap();
    assert_eq!(ta.id(), id);
    ta.progress(30.0, "resizing").await.unwrap();
    let s = coord
        .wait_for_timeout(|s| s.get(&id).and_then(|t| t.percent) == Some(30.0), T)
        .await
        .unwrap();
    let t = s.get(&id).unwrap();
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(t.owner.as_deref(), Some("A"));
    assert_eq!(t.message.as_deref(), Some("resizing"));

    let cb = client(&ens.connect_string(), 10_000).await;
    let mut wb = WorkQueue::new(&cb, &r).unwrap().worker("B").unwrap();
    assert!(
        wb.try_claim().await.unwrap().is_none(),
        "the task is held by A"
    );
    let b = tokio::spawn(async move {
        let t = wb.claim_timeout(T).await.unwrap();
        let id = t.id().to_string();
        t.complete(json!("B did it")).await.unwrap();
        (id, cb)
    });
    ca.close().await; // A dies
    assert!(ta.progress(60.0, "too late").await.is_err());
    let (bid, cb) = b.await.unwrap();
    assert_eq!(bid, id);
    let s = coord
        .wait_for_timeout(
            |s| s.get(&id).map(|t| t.state) == Some(TaskState::Completed),
            T,
        )
        .await
        .unwrap();
    assert_eq!(s.get(&id).unwrap().owner.as_deref(), Some("B"));
    assert_eq!(s.tasks.len(), 1);
    cb.close().await;
    admin.delete_recursive(&r).await.unwrap();
}

/// A worker cut off mid-task: its session is lost (client side first, then expired by the
/// server); only then does another worker get the task; the dead worker's completion fails;
/// the task is completed exactly once, by the other worker. Then a real server-side expiry of
/// the second worker's session mid-task hands the next task over the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_session_death_task_completed_once_by_another() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let r = root("wq-expire");
    let admin = client(&ens.connect_string(), 10_000).await;
    let q = WorkQueue::new(&admin, &r).unwrap();
    let coord = q.coordinator().unwrap();
    let id1 = q.put(&json!(1)).await.unwrap();

    let proxy_a = FaultProxy::for_ensemble(ens).unwrap();
    let ca = client(&proxy_a.connect_string(), 2000).await;
    let mut wa = WorkQueue::new(&ca, &r).unwrap().worker("A").unwrap();
    let ta = wa.claim_timeout(T).await.unwrap();
    assert_eq!(ta.id(), id1);
    ta.progress(10.0, "started").await.unwrap();

    let cb = client(&ens.connect_string(), 10_000).await;
    let qb = WorkQueue::new(&cb, &r).unwrap();
    let mut wb = qb.worker("B").unwrap();
    let mut states = ca.states();
    proxy_a.cut();
    expect_state(&mut states, T, "Lost", |s| {
        matches!(s, SessionState::Lost { .. })
    })
    .await;
    tokio::time::timeout(T, ta.lost()).await.unwrap();
    assert!(ta.is_lost());
    // B gets the task only once the server expired A's session (its claim vanished).
    let tb = wb.claim_timeout(T).await.unwrap();
    assert_eq!(tb.id(), id1);
    proxy_a.heal();
    let err = ta.complete(json!("A")).await.unwrap_err();
    assert!(
        matches!(err, zkr_recipes::Error::SessionLost { .. }),
        "{err}"
    );
    tb.complete(json!("B")).await.unwrap();
    let s = coord
        .wait_for_timeout(
            |s| s.get(&id1).map(|t| t.state) == Some(TaskState::Completed),
            T,
        )
        .await
        .unwrap();
    assert_eq!(s.get(&id1).unwrap().owner.as_deref(), Some("B"));
    assert_eq!(
        admin
            .get_children(&format!("{r}/done"))
            .await
            .unwrap()
            .len(),
        1
    );

    // Round 2: A (new session) takes a task, its session is expired by the server, B takes over.
    let id2 = q.put(&json!(2)).await.unwrap();
    let ta = wa.claim_timeout(T).await.unwrap();
    assert_eq!(ta.id(), id2);
    ta.progress(20.0, "working").await.unwrap();
    coord
        .wait_for_timeout(|s| s.get(&id2).and_then(|t| t.percent) == Some(20.0), T)
        .await
        .unwrap();
    ca.expire_session_for_testing(&ens.connect_string(), &proxy_a)
        .await
        .unwrap();
    let tb = wb.claim_timeout(T).await.unwrap();
    assert_eq!(tb.id(), id2);
    assert!(ta.progress(30.0, "zombie").await.is_err());
    tb.complete(json!("B2")).await.unwrap();
    assert!(ta.complete(json!("A2")).await.is_err());
    let s = coord
        .wait_for_timeout(|s| s.count(TaskState::Completed) == 2, T)
        .await
        .unwrap();
    assert_eq!(s.get(&id2).unwrap().owner.as_deref(), Some("B"));
    assert_eq!(s.get(&id2).unwrap().result, Some(json!("B2")));
    assert_eq!(s.tasks.len(), 2);
    ca.close().await;
    cb.close().await;
    admin.delete_recursive(&r).await.unwrap();
}

/// A `complete` dropped mid-way never leaves the task stuck as claimed: it ends up either done
/// (the multi ran) or back in the queue (the claim was released), and a release dropped mid-way
/// returns it to the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_calls_dropped_mid_way_leave_no_stuck_claim() {
    let ens = testing::shared().expect("zookeeper");
    let r = root("wq-dropped");
    let c = client(&ens.connect_string(), 10_000).await;
    let q = WorkQueue::new(&c, &r).unwrap();
    let coord = q.coordinator().unwrap();
    for i in 0..6 {
        q.put(&json!({ "n": i })).await.unwrap();
    }
    let mut worker = q.worker("w").unwrap();
    for k in 0..6 {
        let task = worker.claim_timeout(T).await.unwrap();
        let cut = Duration::from_micros(1);
        if k % 2 == 0 {
            let _ = tokio::time::timeout(cut, task.complete(json!({ "k": k }))).await;
        } else {
            let _ = tokio::time::timeout(cut, task.release()).await;
        }
        // Nothing stays claimed: every task is pending or completed.
        coord
            .wait_for_timeout(|s| s.count(TaskState::Running) == 0, T)
            .await
            .unwrap();
    }
    c.close().await;
}

/// `complete`, `fail` and `release` dropped at each of their await points in turn: the claim
/// always goes, and the task ends up finished (the multi ran) or back in the queue (the claim
/// was given back), never stuck as claimed. Run until each call completes within the polls
/// allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_calls_dropped_at_every_await_point_leave_no_stuck_claim() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let r = root("wq-dropped-each");
    let c = client(&ens.connect_string(), 10_000).await;
    let q = WorkQueue::new(&c, &r).unwrap();
    let mut worker = q.worker("w").unwrap();
    type Call = std::pin::Pin<Box<dyn std::future::Future<Output = zkr_recipes::Result<()>>>>;
    for op in ["complete", "fail", "release"] {
        let expected = match op {
            "complete" => TaskState::Completed,
            "fail" => TaskState::Failed,
            _ => TaskState::Pending,
        };
        for polls in 0.. {
            assert!(polls < 100, "{op} never completed");
            q.put(&json!({ "op": op, "polls": polls })).await.unwrap();
            let task = worker.claim_timeout(T).await.unwrap();
            let id = task.id().to_string();
            let claim = task.fence().path.clone();
            let call: Call = match op {
                "complete" => Box::pin(task.complete(json!(polls))),
                "fail" => Box::pin(task.fail("dropped")),
                _ => Box::pin(task.release()),
            };
            let finished = poll_at_most(call, polls).await;
            if let Some(r) = &finished {
                assert!(r.is_ok(), "{op}: {r:?}");
            }
            tokio::time::timeout(T, c.wait_gone(&claim))
                .await
                .unwrap_or_else(|_| panic!("{op} dropped after {polls} polls left its claim"))
                .unwrap();
            // Once the claim is gone nothing changes any more: read the outcome.
            let s = q.snapshot().await.unwrap();
            let state = s.get(&id).unwrap().state;
            if finished.is_some() {
                assert_eq!(state, expected, "{op} returned Ok");
                assert!(
                    polls >= 2,
                    "never dropped after an await: done within {polls} polls"
                );
                break;
            }
            assert!(
                state == expected || state == TaskState::Pending,
                "{op} dropped after {polls} polls: {state:?}"
            );
        }
    }
    // Nothing is stuck: every task still pending can be claimed and completed.
    loop {
        let s = q.snapshot().await.unwrap();
        assert_eq!(s.count(TaskState::Running), 0);
        if s.count(TaskState::Pending) == 0 {
            break;
        }
        worker
            .claim_timeout(T)
            .await
            .unwrap()
            .complete(json!("late"))
            .await
            .unwrap();
    }
    c.close().await;
}

/// A claim dropped at each of its await points in turn (also after its create was sent) leaves
/// no claim behind: every task can still be claimed and completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_dropped_at_every_await_point_leaves_no_claim() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let r = root("wq-dropped-claim");
    let c = client(&ens.connect_string(), 10_000).await;
    let q = WorkQueue::new(&c, &r).unwrap();
    let mut worker = q.worker("w").unwrap();
    let mut put = 0;
    for polls in 0.. {
        assert!(polls < 100, "claim never completed");
        q.put(&json!({ "polls": polls })).await.unwrap();
        put += 1;
        if let Some(task) = poll_at_most(worker.claim(), polls).await {
            task.unwrap().complete(json!(polls)).await.unwrap();
            assert!(
                polls >= 2,
                "never dropped after an await: done within {polls} polls"
            );
            break;
        }
    }
    // A claim left behind would keep its task from being claimed until the session ends.
    loop {
        let s = q.snapshot().await.unwrap();
        assert_eq!(s.tasks.len(), put);
        if s.count(TaskState::Completed) == put {
            break;
        }
        worker
            .claim_timeout(T)
            .await
            .unwrap()
            .complete(json!("late"))
            .await
            .unwrap();
    }
    c.close().await;
}

/// A claim dropped while its worker is cut off for longer than the operation timeout is still
/// given back once the same session reconnects (the background give-back keeps trying while
/// the session lives), so the task does not stay claimed by a live but idle session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_dropped_while_cut_off_is_given_back_after_the_reconnect() {
    init_tracing();
    let ens = testing::shared().expect("zookeeper");
    let r = root("wq-dropped-cut");
    let admin = client(&ens.connect_string(), 10_000).await;
    let q = WorkQueue::new(&admin, &r).unwrap();
    let id = q.put(&json!("job")).await.unwrap();
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let c = zkr::Client::builder(&proxy.connect_string())
        .session_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let mut worker = WorkQueue::new(&c, &r).unwrap().worker("w").unwrap();
    let task = worker.claim_timeout(T).await.unwrap();
    assert_eq!(task.id(), id);
    let claim = task.fence().path.clone();
    let mut states = c.states();
    proxy.cut();
    expect_state(&mut states, T, "Suspended", |s| {
        matches!(s, SessionState::Suspended { .. })
    })
    .await;
    drop(task);
    // Several operation timeouts go by while cut off.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        admin.exists(&claim).await.unwrap().is_some(),
        "still cut off"
    );
    proxy.heal();
    expect_state(&mut states, T, "Reconnected", |s| {
        matches!(s, SessionState::Reconnected { .. })
    })
    .await;
    tokio::time::timeout(T, admin.wait_gone(&claim))
        .await
        .expect("the claim is given back after the reconnect")
        .unwrap();
    assert_eq!(
        q.snapshot().await.unwrap().get(&id).map(|t| t.state),
        Some(TaskState::Pending)
    );
    c.close().await;
    admin.delete_recursive(&r).await.unwrap();
}
