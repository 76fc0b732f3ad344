//! Member-to-member network faults on a real ZooKeeper 3.8 quorum
//! (`ZkEnsemble::start_partitionable`): an isolated follower, an isolated leader, and a
//! {0} / {1, 2} partition, each followed by a heal.
//!
//! Every outcome is read from the servers themselves (four-letter words, client reads) by
//! polling against a deadline; nothing sleeps a fixed time and hopes. The members run with the
//! harness's `tickTime=500`, `syncLimit=10`: a member that hears nothing from its peers gives up
//! after `syncLimit × tickTime` = 5 s.
//!
//! Needs Java and ZooKeeper 3.8 (`apt-get install -y zookeeper`).
//! Run with `cargo test -p zkr-client --test partition`.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::blocking;

use zkr::{Client, CreateMode, RetryPolicy};
use zkr_testing::ZkEnsemble;

/// `syncLimit × tickTime` of the harness's members.
const SYNC_TIMEOUT: Duration = Duration::from_millis(10 * 500);
/// Slack on top of ZooKeeper's own timeouts for a loaded 2-core CI machine.
const SLACK: Duration = Duration::from_secs(8);

/// Polls `condition` (a blocking check) every 50 ms until it holds; returns how long that took
/// since `since`. Panics with `what` after `timeout`.
fn wait_for(
    since: Instant,
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Duration {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether member `i` serves (its `srvr` answer has a `Mode:` line) in `mode`.
fn serves_as(ens: &ZkEnsemble, i: usize, mode: &str) -> bool {
    ens.mode(i).is_ok_and(|m| m == mode)
}

/// Member `i` answers on its client port but does not serve (LOOKING): `srvr` says so and
/// `ruok` still gets `imok`.
fn answers_without_serving(ens: &ZkEnsemble, i: usize) -> bool {
    let srvr = ens.four_letter(i, "srvr").unwrap_or_default();
    srvr.contains("not currently serving") && ens.four_letter(i, "ruok").is_ok_and(|a| a == "imok")
}

/// A client on `members` only (their client ports, not the isolated member's).
async fn client_on(ens: &ZkEnsemble, members: &[usize]) -> Client {
    let connect = members
        .iter()
        .map(|&i| ens.member_connect_string(i))
        .collect::<Vec<_>>()
        .join(",");
    Client::builder(&connect)
        .session_timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {connect}: {e}"))
}

async fn write(client: &Client, path: &str, data: &[u8]) {
    client
        .retry(&RetryPolicy::default(), || {
            client.set_data(path, data, None)
        })
        .await
        .unwrap_or_else(|e| panic!("set_data({path}) on the majority: {e}"));
}

/// Reads `path` from member `i` alone (its own state, no `sync`).
async fn read_on(ens: &ZkEnsemble, i: usize, path: &str) -> Vec<u8> {
    let client = client_on(ens, &[i]).await;
    let (data, _) = client
        .get_data(path)
        .await
        .unwrap_or_else(|e| panic!("get_data({path}) on member {i}: {e}"));
    client.close().await;
    data
}

/// Established TCP connections of process `pid` (IPv4): `(local, remote)`.
fn tcp_connections(pid: u32) -> Vec<(SocketAddr, SocketAddr)> {
    let inodes: HashSet<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|fd| fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().into_owned();
                    Some(
                        target
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let parse = |field: &str| -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The kernel prints the network-order address as a host-order number.
        Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(ip.to_ne_bytes()),
            port,
        )))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local, remote, state ("01" = ESTABLISHED), ..., inode (field 9).
            if fields.len() < 10 || fields[3] != "01" || !inodes.contains(fields[9]) {
                return None;
            }
            Some((parse(fields[1])?, parse(fields[2])?))
        })
        .collect()
}

/// Proof that quorum traffic goes through the link proxies: no member holds a connection to
/// another member's real peer or election address, and every member does hold connections to
/// its own link proxies. Returns the number of those.
fn assert_quorum_traffic_is_proxied(ens: &ZkEnsemble) -> usize {
    let n = ens.len();
    let real: HashMap<SocketAddr, usize> = (0..n)
        .flat_map(|i| {
            let (peer, election) = ens.quorum_addrs(i).expect("quorum member");
            [(peer, i), (election, i)]
        })
        .collect();
    let mut proxied = 0;
    for i in 0..n {
        let own_proxies: HashSet<SocketAddr> = (0..n)
            .filter_map(|j| ens.link_addrs(i, j))
            .flat_map(|(peer, election)| [peer, election])
            .collect();
        let pid = ens.pid(i).expect("member runs");
        let connections = tcp_connections(pid);
        for (local, remote) in &connections {
            if let Some(&j) = real.get(remote) {
                assert_eq!(
                    j, i,
                    "member {i} ({local}) is connected straight to member {j}'s quorum \
                     address {remote}: the link bypasses its proxy; connections: {connections:?}"
                );
            }
        }
        let through_proxies = connections
            .iter()
            .filter(|(_, remote)| own_proxies.contains(remote))
            .count();
        assert!(
            through_proxies > 0,
            "member {i} has no quorum connection through its proxies {own_proxies:?}: \
             {connections:?}"
        );
        proxied += through_proxies;
    }
    proxied
}

/// Member `i`'s view of the ensemble (`conf`) still names its link proxies for the other
/// members (nothing, e.g. the leader's configuration, replaced them with the real addresses),
/// and it wrote no dynamic configuration file.
fn assert_view_unchanged(ens: &ZkEnsemble, i: usize) {
    let conf = ens.four_letter(i, "conf").expect("conf");
    for j in 0..ens.len() {
        let (peer, election) = ens
            .link_addrs(i, j)
            .or_else(|| ens.quorum_addrs(j))
            .expect("addresses");
        let line = format!(
            "server.{}={}:{}:{}:participant",
            j + 1,
            peer.ip(),
            peer.port(),
            election.port()
        );
        assert!(
            conf.lines().any(|l| l.trim() == line),
            "member {i}'s view of server.{} is not {line}:\n{conf}",
            j + 1
        );
    }
    let dir = ens.log_path(i).parent().expect("member directory");
    let dynamic: Vec<String> = walk(dir)
        .into_iter()
        .filter(|name| name.contains(".dynamic"))
        .collect();
    assert!(dynamic.is_empty(), "dynamic config written: {dynamic:?}");
}

/// The quorum-related lines of every member's log (for failure messages).
fn quorum_logs(ens: &ZkEnsemble) -> String {
    (0..ens.len())
        .map(|i| {
            let text = fs::read_to_string(ens.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|line| line.contains(".quorum.") || line.contains("Exception"))
                .collect();
            format!(
                "--- member {i} ---\n{}",
                lines[lines.len().saturating_sub(80)..].join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            names.extend(walk(&path));
        } else {
            names.push(path.display().to_string());
        }
    }
    names
}

/// Waits (blocking, off the runtime) until `members` have one leader and only followers.
async fn leader_among(ens: &Arc<ZkEnsemble>, members: &[usize], timeout: Duration) -> usize {
    let e = Arc::clone(ens);
    let members = members.to_vec();
    blocking(move || {
        e.wait_leader_among(&members, timeout)
            .unwrap_or_else(|error| panic!("{error}\n{}", quorum_logs(&e)))
    })
    .await
}

/// Waits (blocking, off the runtime) until member `i` serves as follower again.
async fn rejoins_as_follower(ens: &Arc<ZkEnsemble>, i: usize, since: Instant) -> Duration {
    let e = Arc::clone(ens);
    blocking(move || {
        wait_for(
            since,
            Duration::from_secs(20),
            "the healed member serves as follower again",
            || serves_as(&e, i, "follower"),
        )
    })
    .await
}

async fn start() -> Arc<ZkEnsemble> {
    let ens = blocking(|| ZkEnsemble::start_partitionable(3))
        .await
        .expect("partitionable zookeeper ensemble");
    let ens = Arc::new(ens);
    leader_among(&ens, &[0, 1, 2], Duration::from_secs(30)).await;
    ens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_follower_answers_then_stops_serving_and_rejoins_after_heal() {
    common::init_tracing();
    let ens = start().await;
    let proxied = assert_quorum_traffic_is_proxied(&ens);
    assert_view_unchanged(&ens, 0);
    let leader = ens.leader_index().expect("leader");
    let f = (0..3).find(|&i| i != leader).unwrap();
    let majority: Vec<usize> = (0..3).filter(|&i| i != f).collect();
    let client = client_on(&ens, &majority).await;
    client
        .create("/iso-f", b"0", CreateMode::Persistent)
        .await
        .unwrap();

    ens.isolate(f).unwrap();
    let isolated_at = Instant::now();
    // Silence, not a reset: the follower notices nothing yet and keeps serving its clients.
    assert!(serves_as(&ens, f, "follower"), "{:?}", ens.mode(f));
    assert_eq!(ens.four_letter(f, "ruok").unwrap(), "imok");
    TcpStream::connect_timeout(&ens.member_addr(f), Duration::from_secs(2))
        .expect("the isolated member's client port still accepts connections");
    // The majority keeps its leader and takes writes at once.
    write(&client, "/iso-f", b"1").await;

    // The follower gives up on its leader after syncLimit × tickTime (its reads time out) and
    // goes LOOKING: it still answers four-letter words but serves no requests.
    let e = Arc::clone(&ens);
    let (last_served, stopped) = blocking(move || {
        let mut last_served = Duration::ZERO;
        let stopped = wait_for(
            isolated_at,
            SYNC_TIMEOUT + SLACK,
            "the isolated follower stops serving",
            || {
                if serves_as(&e, f, "follower") {
                    last_served = isolated_at.elapsed();
                    false
                } else {
                    answers_without_serving(&e, f)
                }
            },
        );
        (last_served, stopped)
    })
    .await;
    eprintln!(
        "isolated follower {f}: last served as follower {last_served:?} after isolation, \
         answered 'not serving' after {stopped:?} (syncLimit × tickTime = {SYNC_TIMEOUT:?}); \
         {proxied} quorum connections went through link proxies"
    );
    assert!(
        last_served >= Duration::from_secs(2),
        "an isolated follower should serve until its {SYNC_TIMEOUT:?} read timeout, but \
         stopped serving after {last_served:?} (was the link reset instead of silenced?)"
    );

    // The majority still has the same leader and accepts writes while the follower is out.
    assert_eq!(
        leader_among(&ens, &majority, Duration::from_secs(10)).await,
        leader
    );
    write(&client, "/iso-f", b"2").await;
    client
        .create("/iso-f/meanwhile", b"m", CreateMode::Persistent)
        .await
        .unwrap();

    ens.heal().unwrap();
    let rejoined = rejoins_as_follower(&ens, f, Instant::now()).await;
    eprintln!("healed follower {f} served as follower again after {rejoined:?}");
    assert_eq!(
        leader_among(&ens, &[0, 1, 2], Duration::from_secs(10)).await,
        leader
    );
    // It caught up with what was written while it was cut off.
    assert_eq!(read_on(&ens, f, "/iso-f").await, b"2");
    assert_eq!(read_on(&ens, f, "/iso-f/meanwhile").await, b"m");
    assert_quorum_traffic_is_proxied(&ens);
    for i in 0..3 {
        assert_view_unchanged(&ens, i);
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_is_replaced_by_the_majority_and_rejoins_after_heal() {
    common::init_tracing();
    let ens = start().await;
    let old = ens.leader_index().expect("leader");
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let client = client_on(&ens, &others).await;
    client
        .create("/iso-l", b"0", CreateMode::Persistent)
        .await
        .unwrap();

    ens.isolate(old).unwrap();
    let isolated_at = Instant::now();
    assert!(serves_as(&ens, old, "leader"), "{:?}", ens.mode(old));
    // The old leader steps down after syncLimit × tickTime without acks; the followers time
    // out as long and elect one of themselves.
    let e = Arc::clone(&ens);
    let stepped_down = std::thread::spawn(move || {
        wait_for(
            isolated_at,
            SYNC_TIMEOUT + SLACK,
            "the isolated leader steps down",
            || answers_without_serving(&e, old),
        )
    });
    let new = leader_among(&ens, &others, SYNC_TIMEOUT + SLACK).await;
    let elected = isolated_at.elapsed();
    let stepped_down = blocking(move || stepped_down.join().expect("step-down poll")).await;
    assert_ne!(new, old);
    eprintln!(
        "isolated leader {old}: stopped serving after {stepped_down:?}; member {new} led the \
         other two after {elected:?}"
    );
    write(&client, "/iso-l", b"1").await;

    ens.heal().unwrap();
    let rejoined = rejoins_as_follower(&ens, old, Instant::now()).await;
    eprintln!("old leader {old} served as follower after heal in {rejoined:?}");
    assert_eq!(
        leader_among(&ens, &[0, 1, 2], Duration::from_secs(10)).await,
        new
    );
    assert_eq!(read_on(&ens, old, "/iso-l").await, b"1");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_one_against_two_is_like_isolating_the_one() {
    common::init_tracing();
    let ens = start().await;
    let client = client_on(&ens, &[1, 2]).await;
    client
        .create("/part", b"0", CreateMode::Persistent)
        .await
        .unwrap();

    ens.partition(&[&[0], &[1, 2]]).unwrap();
    let cut_at = Instant::now();
    // Member 0 may have been the leader or a follower; either way the majority side leads
    // itself and member 0 stops serving, still answering on its client port.
    let leader = leader_among(&ens, &[1, 2], SYNC_TIMEOUT + SLACK).await;
    let e = Arc::clone(&ens);
    let alone = blocking(move || {
        wait_for(
            cut_at,
            SYNC_TIMEOUT + SLACK,
            "member 0 stops serving",
            || answers_without_serving(&e, 0),
        )
    })
    .await;
    eprintln!("partition {{0}}/{{1,2}}: member 0 stopped serving after {alone:?}; {leader} leads");
    write(&client, "/part", b"1").await;

    ens.heal().unwrap();
    rejoins_as_follower(&ens, 0, Instant::now()).await;
    leader_among(&ens, &[0, 1, 2], Duration::from_secs(10)).await;
    assert_eq!(read_on(&ens, 0, "/part").await, b"1");
    client.close().await;
}
