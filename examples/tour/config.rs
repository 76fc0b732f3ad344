//! Chapter: the config center and cluster-wide IDs. A publisher publishes a typed config,
//! subscribers get it pushed; one subscriber is cut off while the config changes, keeps serving
//! its last good value (flagged stale) and converges once healed; a bad payload is reported and
//! ignored; then workers take unique IDs (sequential nodes, an atomic counter, ID blocks).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use zkr::Client;
use zkr_recipes::{AtomicCounter, Config, ConfigEvent, IdBlocks, SequentialIds};

use crate::{Res, Tour};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Limits {
    rps: u32,
    burst: u32,
}

const WAIT: Duration = Duration::from_secs(20);

pub async fn chapter(tour: &Tour<'_>) -> Res<()> {
    let (t, admin, proxy, root) = (tour.t, tour.admin, tour.proxy, &tour.root);
    t.say("── Chapter: config center and unique IDs ──");
    let path = format!("{root}/config/limits");
    let publisher: Config<Limits> = Config::new(admin, &path)?;
    publisher
        .publish(&Limits {
            rps: 100,
            burst: 10,
        })
        .await?;
    t.say(format!(
        "the publisher published {{rps: 100, burst: 10}} at {path}"
    ));

    let direct = Client::builder(&tour.servers)
        .session_timeout(Duration::from_secs(4))
        .connect()
        .await?;
    let cut_off = Client::builder(&proxy.connect_string())
        .session_timeout(Duration::from_secs(4))
        .connect()
        .await?;
    let sub_a = Config::<Limits>::new(&direct, &path)?.subscribe()?;
    let mut sub_b = Config::<Limits>::new(&cut_off, &path)?.subscribe()?;
    for (name, sub) in [("A", &sub_a), ("B", &sub_b)] {
        let v = sub.wait_for_timeout(|_| true, WAIT).await?;
        t.say(format!(
            "subscriber {name} got it pushed: {:?} (version {}, stale: {})",
            v.value, v.version, v.stale
        ));
    }

    t.say("cutting subscriber B's TCP connection");
    proxy.cut();
    wait_event(&mut sub_b, |e| matches!(e, ConfigEvent::Stale)).await?;
    let kept = sub_b.current().ok_or("no value")?;
    t.say(format!(
        "B keeps serving its last good value {:?}, flagged stale: {}",
        kept.value, kept.stale
    ));
    publisher
        .publish(&Limits {
            rps: 200,
            burst: 20,
        })
        .await?;
    publisher
        .publish(&Limits {
            rps: 300,
            burst: 30,
        })
        .await?;
    t.say("the publisher published two more versions (rps 200, then 300)");
    let v = sub_a.wait_for_timeout(|v| v.value.rps == 300, WAIT).await?;
    t.say(format!(
        "subscriber A sees rps {} (version {})",
        v.value.rps, v.version
    ));

    t.say("healing B's connection");
    proxy.heal();
    let v = sub_b
        .wait_for_timeout(|v| v.value.rps == 300 && !v.stale, WAIT)
        .await?;
    t.say(format!(
        "subscriber B converged after healing: {:?} (version {}, stale: {})",
        v.value, v.version, v.stale
    ));

    admin.set_data(&path, b"{\"rps\": \"lots\"", None).await?;
    t.say("someone wrote a malformed payload to the config node");
    let ev = wait_event(&mut sub_b, |e| matches!(e, ConfigEvent::Invalid { .. })).await?;
    if let ConfigEvent::Invalid { error, .. } = ev {
        t.say(format!("B reports it as an error event: {error}"));
    }
    let kept = sub_b.current().ok_or("no value")?;
    t.say(format!("and keeps the last good value: {:?}", kept.value));
    publisher
        .publish(&Limits {
            rps: 400,
            burst: 40,
        })
        .await?;
    let v = sub_b.wait_for_timeout(|v| v.value.rps == 400, WAIT).await?;
    t.say(format!(
        "a good value again is taken at once: rps {}",
        v.value.rps
    ));
    drop((sub_a, sub_b));

    // Unique IDs: three workers, each its own session.
    let workers =
        futures::future::try_join_all((0..3).map(|_| Client::builder(&tour.servers).connect()))
            .await?;
    let seq_dir = format!("{root}/ids/orders");
    let counter_path = format!("{root}/ids/counter");
    let mut lines = Vec::new();
    let jobs = workers.iter().enumerate().map(|(i, w)| {
        let seq = SequentialIds::new(w, &seq_dir);
        let counter = AtomicCounter::new(w, &counter_path);
        let blocks = IdBlocks::new(w, &format!("{root}/ids/blocks"), 100);
        async move {
            let (seq, counter, blocks) = (seq?, counter?, blocks?);
            let s = seq.next_batch(3).await?;
            let c = counter.increment().await?;
            let b = blocks.next_batch(3).await?;
            Ok::<_, zkr_recipes::Error>((i, s, c, b))
        }
    });
    for r in futures::future::try_join_all(jobs).await? {
        let (i, s, c, b) = r;
        lines.push(format!(
            "worker {i}: sequential-node ids {s:?}, counter id {} ({} tries), block ids {b:?}",
            c.post, c.tries
        ));
    }
    for l in lines {
        t.say(l);
    }
    t.say("no id was handed out twice; the sequential nodes are already deleted again");
    for w in workers.iter().chain([&direct, &cut_off]) {
        w.close().await;
    }
    Ok(())
}

async fn wait_event(
    sub: &mut zkr_recipes::ConfigSubscription<Limits>,
    mut pred: impl FnMut(&ConfigEvent<Limits>) -> bool,
) -> Res<ConfigEvent<Limits>> {
    loop {
        match sub.next_timeout(WAIT).await? {
            Some(ev) if pred(&ev) => return Ok(ev),
            Some(_) => {}
            None => return Err("config subscription ended".into()),
        }
    }
}
