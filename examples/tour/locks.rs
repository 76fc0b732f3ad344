//! Chapter: locks. Workers share a counter kept in ZooKeeper under a Curator-compatible mutex
//! (fenced writes: each write only applies while the writer's lock node exists), then a holder
//! is cut off and is told it lost the lock before anyone else gets it.

use std::time::Duration;

use zkr::{Client, CreateMode, Op};
use zkr_recipes::Mutex;

use crate::{Res, Tour};

pub async fn chapter(tour: &Tour<'_>) -> Res<()> {
    let t = tour.t;
    t.say("── Chapter: locks ──");
    let lock_path = format!("{}/locks/counter", tour.root);
    let counter = format!("{}/counter", tour.root);
    tour.admin
        .create_with_parents(&counter, b"0", CreateMode::Persistent)
        .await?;
    let mut workers = Vec::new();
    for w in 0..4 {
        let c = Client::builder(&tour.servers).connect().await?;
        let (lock_path, counter) = (lock_path.clone(), counter.clone());
        workers.push(tokio::spawn(async move {
            let m = Mutex::new(&c, &lock_path)?;
            let mut log = Vec::new();
            for _ in 0..3 {
                let g = m.acquire_timeout(Duration::from_secs(10)).await?;
                let (data, stat) = c.get_data(&counter).await?;
                let n: u64 = String::from_utf8_lossy(&data).parse().unwrap_or(0);
                g.fenced_multi(&[Op::SetData {
                    path: counter.clone(),
                    data: (n + 1).to_string().into_bytes(),
                    version: Some(stat.version),
                }])
                .await?;
                log.push((g.fence().token, n + 1));
                g.release().await?;
            }
            c.close().await;
            Ok::<_, zkr_recipes::Error>((w, log))
        }));
    }
    let mut all = Vec::new();
    for h in workers {
        let (w, log) = h.await??;
        for (token, value) in log {
            all.push((token, w, value));
        }
    }
    all.sort();
    for (token, w, value) in &all {
        t.say(format!(
            "worker-{w} held the lock (fencing token {token}) and wrote counter = {value}"
        ));
    }
    let (data, _) = tour.admin.get_data(&counter).await?;
    t.say(format!(
        "4 workers × 3 increments under the lock: counter = {}",
        String::from_utf8_lossy(&data)
    ));

    t.say("a holder behind the fault proxy takes the lock; then its connection is cut");
    let holder = Client::builder(&tour.proxy.connect_string())
        .session_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let g = Mutex::new(&holder, &lock_path)?.acquire().await?;
    let other = Client::builder(&tour.servers).connect().await?;
    let m2 = Mutex::new(&other, &lock_path)?;
    let waiter = tokio::spawn(async move {
        let g2 = m2.acquire_timeout(Duration::from_secs(20)).await;
        (std::time::Instant::now(), g2)
    });
    tour.proxy.cut();
    g.lost().await;
    let told = std::time::Instant::now();
    t.say(format!(
        "holder told: lock lost (is_lost = {})",
        g.is_lost()
    ));
    let (got, g2) = waiter.await?;
    let g2 = g2?;
    t.say(format!(
        "another client acquired it {} ms after the holder was told",
        got.saturating_duration_since(told).as_millis()
    ));
    g2.release().await?;
    tour.proxy.heal();
    drop(g);
    holder.close().await;
    other.close().await;
    Ok(())
}
