//! Chapter: master election. Three workers run for leader (Curator's LeaderLatch layout, so Java
//! services could join the same election); an observer that does not take part follows who
//! leads. The leader's process dies: the next worker takes over at once. Then the new leader is
//! cut off from ZooKeeper: it steps down by itself *before* the third worker is elected, so
//! there are never two leaders, and fencing epochs only grow.

use std::time::{Duration, Instant};

use zkr::Client;
use zkr_recipes::SelectorHandle;
use zkr_recipes::{leader_observer, Changes, LeaderObserver, LeaderSelector, Participant};

use crate::{Res, Timeline, Tour};

const T: Duration = Duration::from_secs(20);

/// Starts a worker that does "leader work" while it leads and narrates its terms.
fn worker(
    t: &'static Timeline,
    client: &Client,
    path: &str,
    name: &'static str,
) -> Res<(SelectorHandle, tokio::task::JoinHandle<()>)> {
    let selector = LeaderSelector::new(client, path)?
        .with_id(name)
        .with_grace(Duration::from_millis(100));
    let handle = selector.handle();
    let task = tokio::spawn(async move {
        let r = selector
            .run(|leadership| async move {
                t.say(format!(
                    "{name}: I lead (fencing epoch {}); doing leader work",
                    leadership.fence().token
                ));
                leadership.lost().await;
                t.say(format!("{name}: leadership lost; stopping leader work"));
            })
            .await;
        if let Err(e) = r {
            t.say(format!("{name}: left the election: {e}"));
        }
    });
    Ok((handle, task))
}

async fn next_leader(t: &Timeline, obs: &mut Changes<Option<Participant>>) -> Res<Option<String>> {
    let p = obs.next_timeout(T).await?.ok_or("observer ended")?;
    let id = p.as_ref().map(|p| p.id.clone());
    match &p {
        Some(p) => t.say(format!(
            "observer: {} leads (fencing epoch {})",
            p.id, p.token
        )),
        None => t.say("observer: nobody leads"),
    }
    Ok(id)
}

/// Waits until `n` candidates are in line and prints the line.
async fn in_line(t: &Timeline, admin: &Client, path: &str, n: usize) -> Res<()> {
    let deadline = Instant::now() + T;
    loop {
        let line: Vec<String> = leader_observer::participants(admin, path)
            .await?
            .into_iter()
            .map(|p| p.id)
            .collect();
        if line.len() == n {
            t.say(format!("in line: {}", line.join(" → ")));
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("expected {n} candidates, saw {line:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn chapter(tour: &Tour<'_>) -> Res<()> {
    let (t, admin, proxy, root, servers) =
        (tour.t, tour.admin, tour.proxy, &tour.root, &tour.servers);
    // The workers narrate from their own tasks; the timeline outlives the tour.
    let t: &'static Timeline = Box::leak(Box::new(Timeline(t.0)));
    t.say("── Chapter: master election (leader latch, run-while-leader, observe) ──");
    let path = format!("{root}/election");
    let observer = LeaderObserver::new(admin, &path)?;
    observer.start()?;
    let mut obs = observer.changes();
    next_leader(t, &mut obs).await?;

    // w1 and w3 connect directly; w2 goes through the fault proxy.
    let c1 = Client::builder(servers)
        .session_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    let c2 = Client::builder(&proxy.connect_string())
        .session_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    let c3 = Client::builder(servers)
        .session_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    let (h1, w1) = worker(t, &c1, &path, "w1")?;
    next_leader(t, &mut obs).await?;
    let (h2, w2) = worker(t, &c2, &path, "w2")?;
    in_line(t, admin, &path, 2).await?;
    let (h3, w3) = worker(t, &c3, &path, "w3")?;
    in_line(t, admin, &path, 3).await?;

    t.say("w1's process dies (its client goes away without resigning)");
    let t0 = Instant::now();
    w1.abort();
    c1.close().await;
    next_leader(t, &mut obs).await?;
    t.say(format!(
        "w2 took over {:?} after w1 died (its session was closed, its node went with it)",
        t0.elapsed()
    ));

    let deadline = Instant::now() + T;
    while h2.leading().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.say("now w2 is cut off from ZooKeeper (its TCP connection is frozen)");
    let t0 = Instant::now();
    proxy.blackhole();
    while h2.leading().is_some() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stepped = t0.elapsed();
    t.say(format!(
        "w2 stepped down after {stepped:?}: it cannot know whether it still leads (Suspended)"
    ));
    next_leader(t, &mut obs).await?;
    t.say(format!(
        "w3 elected after {:?}, once the server expired w2's session: never two leaders",
        t0.elapsed()
    ));
    proxy.heal();
    t.say("w2's network heals: it gets a new session and queues up again behind w3");
    in_line(t, admin, &path, 2).await?;
    for h in [&h1, &h2, &h3] {
        h.stop();
    }
    for w in [w2, w3] {
        let _ = tokio::time::timeout(T, w).await;
    }
    c2.close().await;
    c3.close().await;
    t.say("all workers resigned");
    Ok(())
}
