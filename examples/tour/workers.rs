//! Chapter: workers. Workers register themselves (Curator ServiceDiscovery layout), claim tasks
//! from a work queue and report progress; a coordinator watches. One worker dies mid-task (its
//! session is expired): its task goes back to the queue and another worker completes it exactly
//! once, while the dead worker's registration comes back in its new session with its latest
//! payload.

use std::time::Duration;

use serde_json::json;
use zkr::Client;
use zkr_recipes::{Discovery, QueueSnapshot, Registration, ServiceInstance, TaskState, WorkQueue};

use crate::{Res, Tour};

const T: Duration = Duration::from_secs(20);

fn describe(s: &QueueSnapshot) -> String {
    s.tasks
        .iter()
        .map(|t| {
            let mut d = format!("{}={:?}", t.id, t.state);
            if let Some(o) = &t.owner {
                d.push_str(&format!(" by {o}"));
            }
            if let (TaskState::Running, Some(p)) = (t.state, t.percent) {
                d.push_str(&format!(" {p:.0}%"));
            }
            d
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn chapter(tour: &Tour<'_>) -> Res<()> {
    let (t, admin, proxy, root, servers) =
        (tour.t, tour.admin, tour.proxy, &tour.root, &tour.servers);
    t.say("── Chapter: workers (registration, discovery, work queue with progress) ──");
    let base = format!("{root}/services");
    let qroot = format!("{root}/jobs");

    // Worker A goes through the fault proxy (so its session can be killed); B connects directly.
    let ca = Client::builder(&proxy.connect_string())
        .session_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    let cb = Client::builder(servers)
        .session_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let discovery = Discovery::new(admin, &base, "worker")?;
    discovery.start()?;
    let reg_a = Registration::new(
        &ca,
        &base,
        ServiceInstance::new("worker", "A").with_payload(json!({"busy": false})),
    )?;
    reg_a.start().await?;
    let reg_b = Registration::new(
        &cb,
        &base,
        ServiceInstance::new("worker", "B").with_payload(json!({"busy": false})),
    )?;
    reg_b.start().await?;
    let seen = discovery.wait_for_timeout(|s| s.len() == 2, T).await?;
    t.say(format!(
        "workers registered at {base}/worker/{{A,B}}; discovery sees {:?}",
        seen.iter().map(|i| &i.id).collect::<Vec<_>>()
    ));
    let raw = admin.get_data(reg_a.path()).await?.0;
    t.say(format!(
        "A's node holds Curator's ServiceInstance JSON: {}",
        String::from_utf8_lossy(&raw)
    ));

    let producer = WorkQueue::new(admin, &qroot)?;
    let coordinator = producer.coordinator()?;
    let t1 = producer.put(&json!({"resize": "cat.png"})).await?;
    let t2 = producer.put(&json!({"resize": "dog.png"})).await?;
    t.say(format!("a producer put two tasks: {t1}, {t2}"));

    let mut wa = WorkQueue::new(&ca, &qroot)?.worker("A")?;
    let mut wb = WorkQueue::new(&cb, &qroot)?.worker("B")?;
    let task_a = wa.claim_timeout(T).await?;
    reg_a
        .update(json!({"busy": true, "task": task_a.id()}))
        .await?;
    task_a.progress(40.0, "resizing").await?;
    let task_b = wb.claim_timeout(T).await?;
    task_b.progress(10.0, "starting").await?;
    let s = coordinator
        .wait_for_timeout(
            |s| {
                s.count(TaskState::Running) == 2
                    && s.get(task_a.id()).and_then(|x| x.percent) == Some(40.0)
            },
            T,
        )
        .await?;
    t.say(format!(
        "A claimed {}, B claimed {}; the coordinator sees: {}",
        task_a.id(),
        task_b.id(),
        describe(&s)
    ));
    task_b
        .complete(json!({"thumbnail": "dog-small.png"}))
        .await?;
    let s = coordinator
        .wait_for_timeout(|s| s.count(TaskState::Completed) == 1, T)
        .await?;
    t.say(format!("B completed its task: {}", describe(&s)));

    t.say("worker A dies mid-task: its ZooKeeper session is expired");
    let a_task = task_a.id().to_string();
    ca.expire_session_for_testing(servers, proxy).await?;
    reg_a
        .update(json!({"busy": false, "note": "restarted"}))
        .await?;
    let next = wb.claim_timeout(T).await?;
    t.say(format!(
        "A's claim vanished with its session; B claimed {} (the same task: {})",
        next.id(),
        next.id() == a_task
    ));
    let late = task_a.progress(80.0, "still here?").await;
    t.say(format!(
        "A's late progress report is refused: {}",
        late.err().map(|e| e.to_string()).unwrap_or_default()
    ));
    next.progress(50.0, "redoing").await?;
    next.complete(json!({"thumbnail": "cat-small.png"})).await?;
    let late = task_a.complete(json!("A was here")).await;
    t.say(format!(
        "B completed it; A's late completion fails ({}), so it was completed exactly once",
        late.err().map(|e| e.to_string()).unwrap_or_default()
    ));
    let s = coordinator
        .wait_for_timeout(|s| s.count(TaskState::Completed) == 2, T)
        .await?;
    t.say(format!("the coordinator's final view: {}", describe(&s)));

    reg_a.wait_registered_timeout(T).await?;
    let seen = discovery
        .wait_for_timeout(
            |s| {
                s.iter()
                    .any(|i| i.id == "A" && i.payload.get("note").is_some())
            },
            T,
        )
        .await?;
    let a = seen.iter().find(|i| i.id == "A").map(|i| i.payload.clone());
    t.say(format!(
        "A's registration is back in its new session with its latest payload: {}",
        a.unwrap_or_default()
    ));
    reg_a.unregister().await?;
    reg_b.unregister().await?;
    discovery.wait_for_timeout(|s| s.is_empty(), T).await?;
    t.say("both workers unregistered; discovery sees none");
    ca.close().await;
    cb.close().await;
    Ok(())
}
