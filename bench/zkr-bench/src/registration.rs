//! `w7` — W7-registration: 10 sessions register 500 service instances (ephemeral, JSON
//! payload, `zkr_recipes::Registration`, 50 per session, all at once); a watcher
//! (`zkr_recipes::Discovery`, its own session) must see all 500. Then 5 of the sessions are
//! closed concurrently and the watcher must see exactly the 250 survivors.
//!
//! The service path `{root}/services/bench-svc` is created before timing.
//! `register_converge_ms`: from the start of the registrations until the watcher's instance
//! set is exactly the 500. `close_converge_ms`: from the start of the concurrent closes until
//! the set is exactly the survivors. Percentiles: latency of each `register` call. `ops` =
//! instances registered; `ops_per_s` is null. `ok` iff both sets converged exactly (10 s each).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use zkr_recipes::{Discovery, Registration, ServiceInstance};

use super::{fan_out, ms, Bench, BenchError, Latencies, Report};

/// The `workload` field.
pub const W7: &str = "W7-registration";

const SESSIONS: usize = 10;
const INSTANCES: usize = 500;
const CLOSED: usize = 5;
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(10);
const SERVICE: &str = "bench-svc";

/// Params of w7.
pub fn params(b: &Bench) -> serde_json::Map<String, serde_json::Value> {
    let mut p = b.base_params();
    p.insert("sessions".into(), SESSIONS.into());
    p.insert("instances".into(), b.scaled(INSTANCES).into());
    p.insert("closed_sessions".into(), CLOSED.into());
    p
}

fn err(e: zkr_recipes::Error) -> BenchError {
    BenchError(e.to_string())
}

/// `instance` registered under `base`: created, then started (the node is there on return).
pub(crate) async fn register(
    c: &zkr::Client,
    base: &str,
    instance: ServiceInstance,
) -> zkr_recipes::Result<Registration> {
    let reg = Registration::new(c, base, instance)?;
    reg.start().await?;
    Ok(reg)
}

fn id(i: usize) -> String {
    format!("inst-{i:05}")
}

/// W7.
pub async fn w7(b: &Bench) -> Result<Report, BenchError> {
    let watcher = b.client().await?;
    let clients = b.clients(SESSIONS).await?;
    let root = b.setup_root(&watcher).await?;
    let result = run(b, &watcher, &clients, &root).await;
    b.teardown_root(&watcher, &root).await;
    for c in clients.iter().chain(std::iter::once(&watcher)) {
        c.close().await;
    }
    result
}

async fn run(
    b: &Bench,
    watcher: &zkr::Client,
    clients: &[zkr::Client],
    root: &str,
) -> Result<Report, BenchError> {
    let n = b.scaled(INSTANCES);
    let base = format!("{root}/services");
    // The registry path exists before timing, as in a deployed registry (otherwise every one
    // of the 500 concurrent registrations would first create the missing parents).
    watcher
        .ensure_containers(&format!("{base}/{SERVICE}"))
        .await?;
    let mut disc = Discovery::new(watcher, &base, SERVICE).map_err(err)?;
    disc.start().map_err(err)?;
    disc.next_timeout(CONVERGE_TIMEOUT).await.map_err(err)?; // the (empty) initial set
    let all: BTreeSet<String> = (0..n).map(id).collect();

    // Register: instance i belongs to session i % SESSIONS; every register runs concurrently.
    let start = Instant::now();
    let seen_all = {
        let d = Discovery::new(watcher, &base, SERVICE).map_err(err)?;
        d.start().map_err(err)?;
        let all = all.clone();
        tokio::spawn(async move {
            let r = d
                .wait_for_timeout(
                    |s| s.len() == all.len() && s.iter().all(|i| all.contains(&i.id)),
                    CONVERGE_TIMEOUT,
                )
                .await;
            r.map(|_| Instant::now())
        })
    };
    let regs = fan_out(n, |i| {
        let c = clients[i % clients.len()].clone();
        let base = base.clone();
        async move {
            let inst = ServiceInstance::new(SERVICE, &id(i))
                .with_address("10.0.0.1")
                .with_port(8000 + (i % 1000) as u16)
                .with_payload(json!({"zone": format!("z{}", i % 3), "weight": i % 10}));
            let t = Instant::now();
            let r = register(&c, &base, inst).await;
            (t.elapsed(), r)
        }
    })
    .await?;
    let mut lat = Latencies::with_capacity(n);
    let mut registrations = Vec::with_capacity(n);
    for (i, (d, r)) in regs.into_iter().enumerate() {
        lat.push(d);
        registrations.push((i % clients.len(), r.map_err(err)?));
    }
    let register_converge = match seen_all.await {
        Ok(Ok(at)) => Some(at.saturating_duration_since(start)),
        _ => None,
    };
    let registered_in = start.elapsed();
    // Let the main discovery catch up too (it must agree).
    let first_ok = disc
        .wait_for_timeout(|s| s.len() == all.len(), CONVERGE_TIMEOUT)
        .await
        .is_ok();

    // Close the first CLOSED sessions concurrently.
    let survivors: BTreeSet<String> = (0..n)
        .filter(|i| i % clients.len() >= CLOSED)
        .map(id)
        .collect();
    let start = Instant::now();
    let closes = clients[..CLOSED].iter().map(|c| c.close());
    let seen = {
        let survivors = survivors.clone();
        disc.wait_for_timeout(
            move |s| s.len() == survivors.len() && s.iter().all(|i| survivors.contains(&i.id)),
            CONVERGE_TIMEOUT,
        )
    };
    let (_, seen) = futures::join!(futures::future::join_all(closes), seen);
    let close_converge = seen.ok().map(|_| start.elapsed());
    // Unregister the survivors' instances (not timed); the closed ones are gone already.
    for (s, r) in registrations {
        if s >= CLOSED {
            let _ = r.unregister().await;
        }
    }
    let ok = first_ok && register_converge.is_some() && close_converge.is_some();
    let mut r = Report::new(W7, params(b), n as u64, registered_in, &mut lat, ok)
        .field("register_converge_ms", register_converge.map(ms))
        .field("close_converge_ms", close_converge.map(ms))
        .field("latency_of", "one Registration::start call");
    r.ops_per_s = None;
    Ok(r)
}
