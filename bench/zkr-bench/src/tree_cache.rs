//! `w9` — W9-tree-cache: a `zkr_recipes::TreeCache` of a 10,000-node tree (100 directories,
//! each with 99 leaves of 32 bytes), on its own session: the time of the first load, then the
//! latency of 200 changes made one at a time (a `set_data` on a leaf, until the cache's
//! subscriber sees the new data). The Curator peer uses `CuratorCache` on the same tree.
//!
//! `ops` = changes; `ops_per_s` is null; percentiles: from the `set_data` call starting to the
//! subscriber seeing that change. `first_load_ms`: from starting the cache to its first load
//! being complete; `nodes_cached` must equal the tree's size (root included).

use std::time::{Duration, Instant};

use futures::StreamExt;
use zkr::CreateMode;
use zkr_recipes::{CacheEvent, CacheUpdate, TreeCache};

use super::{ms, Bench, BenchError, Latencies, Report};

/// The `workload` field.
pub const W9: &str = "W9-tree-cache";

const NODES: usize = 10_000;
const DIRS: usize = 100;
const CHANGES: usize = 200;
const TIMEOUT: Duration = Duration::from_secs(10);

fn shape(b: &Bench) -> (usize, usize, usize) {
    let nodes = b.scaled(NODES).max(DIRS * 2);
    let leaves = nodes / DIRS - 1;
    (DIRS, leaves, b.scaled(CHANGES))
}

/// Params of w9.
pub fn params(b: &Bench) -> serde_json::Map<String, serde_json::Value> {
    let (dirs, leaves, changes) = shape(b);
    let mut p = b.base_params();
    p.insert("nodes".into(), (dirs * (leaves + 1)).into());
    p.insert("dirs".into(), dirs.into());
    p.insert("leaves_per_dir".into(), leaves.into());
    p.insert("value_bytes".into(), 32.into());
    p.insert("changes".into(), changes.into());
    p
}

fn value(i: usize) -> Vec<u8> {
    format!("{i:032}").into_bytes()
}

/// W9.
pub async fn w9(b: &Bench) -> Result<Report, BenchError> {
    let admin = b.client().await?;
    let cached = b.client().await?;
    let root = b.setup_root(&admin).await?;
    let result = run(b, &admin, &cached, &root).await;
    b.teardown_root(&admin, &root).await;
    cached.close().await;
    admin.close().await;
    result
}

async fn run(
    b: &Bench,
    admin: &zkr::Client,
    cached: &zkr::Client,
    root: &str,
) -> Result<Report, BenchError> {
    let (dirs, leaves, changes) = shape(b);
    // The tree (not timed): every level's creates pipelined.
    let dir_paths: Vec<String> = (0..dirs).map(|d| format!("{root}/d{d:03}")).collect();
    futures::future::try_join_all(
        dir_paths
            .iter()
            .map(|d| admin.create(d, b"directory", CreateMode::Persistent)),
    )
    .await?;
    let leaf_paths: Vec<String> = dir_paths
        .iter()
        .flat_map(|d| (0..leaves).map(move |l| format!("{d}/leaf{l:03}")))
        .collect();
    for chunk in leaf_paths.chunks(1000) {
        futures::future::try_join_all(
            chunk.iter().enumerate().map(|(i, p)| async move {
                admin.create(p, &value(i), CreateMode::Persistent).await
            }),
        )
        .await?;
    }
    let total = 1 + dirs * (leaves + 1);

    let t0 = Instant::now();
    let cache = TreeCache::new(cached, root).map_err(|e| BenchError(e.to_string()))?;
    cache.start().map_err(|e| BenchError(e.to_string()))?;
    let snap = cache
        .wait_loaded_timeout(Duration::from_secs(120))
        .await
        .map_err(|e| BenchError(e.to_string()))?;
    let first_load = t0.elapsed();
    let nodes_cached = snap.len();

    let mut sub = cache.subscribe();
    let mut lat = Latencies::with_capacity(changes);
    let mut missed = 0usize;
    let start = Instant::now();
    for i in 0..changes {
        let path = &leaf_paths[(i * 37) % leaf_paths.len().max(1)];
        let data = format!("change-{i:026}").into_bytes();
        let t = Instant::now();
        admin.set_data(path, &data, None).await?;
        let seen = tokio::time::timeout(TIMEOUT, async {
            while let Some(u) = sub.next().await {
                match u {
                    CacheUpdate::Event {
                        event: CacheEvent::Updated { new, .. },
                        ..
                    } if new.path == *path && new.data == data => return true,
                    CacheUpdate::Snapshot(s) if s.get(path).is_some_and(|n| n.data == data) => {
                        return true
                    }
                    _ => {}
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if seen {
            lat.push(t.elapsed());
        } else {
            missed += 1;
        }
    }
    let elapsed = start.elapsed();
    let ok = nodes_cached == total && missed == 0;
    let mut r = Report::new(W9, params(b), changes as u64, elapsed, &mut lat, ok);
    r.ops_per_s = None;
    Ok(r.field("first_load_ms", ms(first_load))
        .field(
            "first_load_nodes_per_s",
            (total as f64 / first_load.as_secs_f64()).round(),
        )
        .field("nodes_cached", nodes_cached)
        .field("missed_changes", missed)
        .field(
            "latency_of",
            "set_data start -> the TreeCache subscriber sees the change",
        ))
}
