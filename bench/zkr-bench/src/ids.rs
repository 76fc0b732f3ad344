//! `w6seq`, `w6counter`, `w6blocks` — cluster-wide IDs, 4 clients (each its own session).
//!
//! * W6a-ids-sequential: 4 clients create 5,000 IDs in total (1,250 each) with
//!   `zkr_recipes::SequentialIds`, in batches of 250 (`next_batch`: `multi` transactions of up to
//!   200 sequential creates, all in flight on the session, then one `multi` of their deletes). Latency: one batch call (`latency_of`). `duplicates`
//!   must be 0 and every node must be gone afterwards.
//! * W6b-ids-counter: 4 clients do 2,000 increments in total (500 each) of one
//!   `zkr_recipes::AtomicCounter` (Curator `DistributedAtomicLong` layout, compare-and-set with
//!   backoff). Latency: one increment. Reports `tries_per_increment`, `duplicates` (of the
//!   post-values), `final_value` (must be 2,000). The line also carries the ID-blocks figures of
//!   the `w6blocks` run (`blocks_*` fields).
//! * W6c-ids-blocks: 4 clients take 100,000 IDs in total from `zkr_recipes::IdBlocks` (blocks of
//!   1,000 reserved on one counter). Latency: one `next()`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use zkr_recipes::{AtomicCounter, IdBlocks, SequentialIds};

use super::{fan_out, per_s, round, Bench, BenchError, Latencies, Report};

/// `workload` of w6seq.
pub const W6A: &str = "W6a-ids-sequential";
/// `workload` of w6counter.
pub const W6B: &str = "W6b-ids-counter";
/// `workload` of w6blocks.
pub const W6C: &str = "W6c-ids-blocks";

const CLIENTS: usize = 4;
const SEQ_IDS: usize = 5_000;
const SEQ_BATCH: usize = 250;
const INCREMENTS: usize = 2_000;
const BLOCK_IDS: usize = 100_000;
const BLOCK: u32 = 1_000;

fn err(e: zkr_recipes::Error) -> BenchError {
    BenchError(e.to_string())
}

/// Params of w6seq.
pub fn seq_params(b: &Bench) -> Map<String, Value> {
    let mut p = b.base_params();
    p.insert("clients".into(), CLIENTS.into());
    p.insert("ids".into(), b.scaled(SEQ_IDS).into());
    p.insert("batch".into(), SEQ_BATCH.into());
    p
}

/// Params of w6counter.
pub fn counter_params(b: &Bench) -> Map<String, Value> {
    let mut p = b.base_params();
    p.insert("clients".into(), CLIENTS.into());
    p.insert("increments".into(), b.scaled(INCREMENTS).into());
    p.insert("blocks_ids".into(), b.scaled(BLOCK_IDS).into());
    p.insert("block_size".into(), BLOCK.into());
    p
}

/// Params of w6blocks.
pub fn blocks_params(b: &Bench) -> Map<String, Value> {
    let mut p = b.base_params();
    p.insert("clients".into(), CLIENTS.into());
    p.insert("ids".into(), b.scaled(BLOCK_IDS).into());
    p.insert("block_size".into(), BLOCK.into());
    p
}

fn duplicates(ids: &[i64]) -> usize {
    ids.len() - ids.iter().copied().collect::<HashSet<i64>>().len()
}

/// Splits `total` over the clients.
fn share(total: usize, i: usize) -> usize {
    total / CLIENTS + usize::from(i < total % CLIENTS)
}

/// W6a.
pub async fn w6seq(b: &Bench) -> Result<Report, BenchError> {
    let clients = b.clients(CLIENTS).await?;
    let root = b.setup_root(&clients[0]).await?;
    let dir = format!("{root}/ids");
    let total = b.scaled(SEQ_IDS);
    let result = async {
        // Warm-up (also creates the directory).
        SequentialIds::new(&clients[0], &dir)
            .map_err(err)?
            .next_batch(50)
            .await
            .map_err(err)?;
        let start = Instant::now();
        let outs = fan_out(CLIENTS, |i| {
            let c = clients[i].clone();
            let dir = dir.clone();
            async move {
                let ids = SequentialIds::new(&c, &dir)?;
                let mut mine = Vec::new();
                let mut lat = Vec::new();
                let n = share(total, i);
                while mine.len() < n {
                    let k = SEQ_BATCH.min(n - mine.len());
                    let t = Instant::now();
                    mine.extend(ids.next_batch(k).await?);
                    lat.push(t.elapsed());
                }
                Ok::<_, zkr_recipes::Error>((mine, lat))
            }
        })
        .await?;
        let elapsed = start.elapsed();
        let mut all = Vec::with_capacity(total);
        let mut lat = Latencies::default();
        for o in outs {
            let (ids, l) = o.map_err(err)?;
            all.extend(ids);
            l.into_iter().for_each(|d| lat.push(d));
        }
        let dups = duplicates(&all);
        let left = clients[0].get_children(&dir).await?.len();
        let ok = dups == 0 && all.len() == total && left == 0;
        Ok(
            Report::new(W6A, seq_params(b), all.len() as u64, elapsed, &mut lat, ok)
                .field("duplicates", dups)
                .field("nodes_left", left)
                .field("latency_of", format!("next_batch({SEQ_BATCH})")),
        )
    }
    .await;
    b.teardown_root(&clients[0], &root).await;
    for c in &clients {
        c.close().await;
    }
    result
}

struct Blocks {
    ids: usize,
    elapsed: Duration,
    lat: Latencies,
    dups: usize,
    blocks: i64,
}

async fn run_blocks(b: &Bench, clients: &[zkr::Client], path: &str) -> Result<Blocks, BenchError> {
    let total = b.scaled(BLOCK_IDS);
    let start = Instant::now();
    let outs = fan_out(CLIENTS, |i| {
        let c = clients[i].clone();
        let path = path.to_string();
        async move {
            let blocks = IdBlocks::new(&c, &path, BLOCK)?;
            let n = share(total, i);
            let mut mine = Vec::with_capacity(n);
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                mine.push(blocks.next().await?);
                lat.push(t.elapsed());
            }
            Ok::<_, zkr_recipes::Error>((mine, lat))
        }
    })
    .await?;
    let elapsed = start.elapsed();
    let mut all = Vec::with_capacity(total);
    let mut lat = Latencies::with_capacity(total);
    for o in outs {
        let (ids, l) = o.map_err(err)?;
        all.extend(ids);
        l.into_iter().for_each(|d| lat.push(d));
    }
    let counter = AtomicCounter::new(&clients[0], path).map_err(err)?;
    let blocks = counter.get().await.map_err(err)? / BLOCK as i64;
    Ok(Blocks {
        ids: all.len(),
        elapsed,
        lat,
        dups: duplicates(&all),
        blocks,
    })
}

/// W6b (plus the ID-blocks figures).
pub async fn w6counter(b: &Bench) -> Result<Report, BenchError> {
    let clients = b.clients(CLIENTS).await?;
    let root = b.setup_root(&clients[0]).await?;
    let path = format!("{root}/counter");
    let total = b.scaled(INCREMENTS);
    let result = async {
        let start = Instant::now();
        let outs = fan_out(CLIENTS, |i| {
            let c = clients[i].clone();
            let path = path.clone();
            async move {
                let counter = AtomicCounter::new(&c, &path)?;
                let n = share(total, i);
                let mut posts = Vec::with_capacity(n);
                let mut lat = Vec::with_capacity(n);
                let mut tries = 0u64;
                for _ in 0..n {
                    let t = Instant::now();
                    let v = counter.increment().await?;
                    lat.push(t.elapsed());
                    posts.push(v.post);
                    tries += v.tries as u64;
                }
                Ok::<_, zkr_recipes::Error>((posts, lat, tries))
            }
        })
        .await?;
        let elapsed = start.elapsed();
        let mut all = Vec::with_capacity(total);
        let mut lat = Latencies::with_capacity(total);
        let mut tries = 0u64;
        for o in outs {
            let (posts, l, t) = o.map_err(err)?;
            all.extend(posts);
            l.into_iter().for_each(|d| lat.push(d));
            tries += t;
        }
        let final_value = AtomicCounter::new(&clients[0], &path)
            .map_err(err)?
            .get()
            .await
            .map_err(err)?;
        let dups = duplicates(&all);
        let blocks = run_blocks(b, &clients, &format!("{root}/blocks")).await?;
        let ok = dups == 0 && final_value == total as i64 && blocks.dups == 0;
        let tpi = if all.is_empty() {
            0.0
        } else {
            tries as f64 / all.len() as f64
        };
        let mut blat = blocks.lat;
        Ok(Report::new(
            W6B,
            counter_params(b),
            all.len() as u64,
            elapsed,
            &mut lat,
            ok,
        )
        .field("tries_per_increment", round(tpi, 2))
        .field("duplicates", dups)
        .field("final_value", final_value)
        .field("latency_of", "increment")
        .field("blocks_ids", blocks.ids)
        .field("blocks_ids_per_s", per_s(blocks.ids, blocks.elapsed))
        .field("blocks_reserved", blocks.blocks)
        .field("blocks_duplicates", blocks.dups)
        .field("blocks_p99_ms", blat.percentile_ms(99.0))
        .field("blocks_max_ms", blat.max_ms()))
    }
    .await;
    b.teardown_root(&clients[0], &root).await;
    for c in &clients {
        c.close().await;
    }
    result
}

/// W6c: ID blocks alone.
pub async fn w6blocks(b: &Bench) -> Result<Report, BenchError> {
    let clients = b.clients(CLIENTS).await?;
    let root = b.setup_root(&clients[0]).await?;
    let result = async {
        let mut r = run_blocks(b, &clients, &format!("{root}/blocks")).await?;
        let ok = r.dups == 0 && r.ids == b.scaled(BLOCK_IDS);
        Ok(Report::new(
            W6C,
            blocks_params(b),
            r.ids as u64,
            r.elapsed,
            &mut r.lat,
            ok,
        )
        .field("duplicates", r.dups)
        .field("blocks_reserved", r.blocks)
        .field("latency_of", "next"))
    }
    .await;
    b.teardown_root(&clients[0], &root).await;
    for c in &clients {
        c.close().await;
    }
    result
}
