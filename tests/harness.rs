//! Checks of the real-ZooKeeper test harness (`zkr_testing`) itself.
//!
//! Needs Java and ZooKeeper 3.8 (`apt-get install -y zookeeper`).
//! Run with `cargo test --features testing --test harness`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use zkr_testing::{shared, shared_ensemble3, FaultProxy, HarnessError, ZkEnsemble};

/// Sends a four-letter word over `stream` and reads the answer until the peer closes.
fn ask(stream: &mut TcpStream, word: &str, timeout: Duration) -> std::io::Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(word.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

fn ask_at(addr: SocketAddr, word: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    ask(&mut stream, word, Duration::from_secs(2))
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until `condition` holds, for at most `timeout`.
fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// A minimal raw ZooKeeper client session: connect, then `getData(path, watch = true)`.
/// Enough to put a watch on the server without depending on the crate's client.
fn raw_session_with_watch(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut connect = Vec::new();
    connect.extend_from_slice(&0i32.to_be_bytes()); // protocol version
    connect.extend_from_slice(&0i64.to_be_bytes()); // last zxid seen
    connect.extend_from_slice(&10_000i32.to_be_bytes()); // session timeout
    connect.extend_from_slice(&0i64.to_be_bytes()); // session id
    connect.extend_from_slice(&16i32.to_be_bytes()); // password
    connect.extend_from_slice(&[0u8; 16]);
    connect.push(0); // read only
    write_frame(&mut stream, &connect);
    read_frame(&mut stream);

    let mut get_data = Vec::new();
    get_data.extend_from_slice(&1i32.to_be_bytes()); // xid
    get_data.extend_from_slice(&4i32.to_be_bytes()); // getData
    get_data.extend_from_slice(&(path.len() as i32).to_be_bytes());
    get_data.extend_from_slice(path.as_bytes());
    get_data.push(1); // watch
    write_frame(&mut stream, &get_data);
    let reply = read_frame(&mut stream);
    let xid = i32::from_be_bytes(reply[0..4].try_into().unwrap());
    let err = i32::from_be_bytes(reply[12..16].try_into().unwrap());
    assert_eq!((xid, err), (1, 0), "getData({path}) failed");
    stream
}

fn write_frame(stream: &mut TcpStream, body: &[u8]) {
    stream
        .write_all(&(body.len() as i32).to_be_bytes())
        .unwrap();
    stream.write_all(body).unwrap();
}

fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    body
}

#[test]
fn standalone_serves_and_is_killed_on_drop() {
    let zk = ZkEnsemble::standalone().unwrap();
    assert_eq!(zk.len(), 1);
    assert_eq!(zk.mode(0).unwrap(), "standalone");
    assert!(zk
        .four_letter(0, "srvr")
        .unwrap()
        .contains("Mode: standalone"));
    assert_eq!(
        zk.connect_string(),
        format!("127.0.0.1:{}", zk.member_addr(0).port())
    );
    assert_eq!(zk.member_connect_string(0), zk.connect_string());
    assert_eq!(zk.leader_index(), None);
    assert_eq!(zk.watch_count().unwrap(), 0);
    assert!(zk.is_running(0));

    let pid = zk.pid(0).unwrap();
    let addr = zk.member_addr(0);
    assert!(process_alive(pid));
    drop(zk);
    assert!(!process_alive(pid), "ZooKeeper still runs after drop");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}

#[test]
fn shared_server_is_started_once() {
    let a = shared().unwrap();
    let b = shared().unwrap();
    assert!(std::ptr::eq(a, b));
    assert_eq!(a.mode(0).unwrap(), "standalone");
}

#[test]
fn three_members_elect_one_leader_and_survive_a_follower_crash() {
    let zk = ZkEnsemble::start(3).unwrap();
    assert_eq!(zk.len(), 3);
    assert_eq!(zk.connect_string().split(',').count(), 3);
    let modes: Vec<String> = (0..3).map(|i| zk.mode(i).unwrap()).collect();
    assert_eq!(
        modes.iter().filter(|m| *m == "leader").count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|m| *m == "follower").count(),
        2,
        "{modes:?}"
    );
    let leader = zk.leader_index().unwrap();
    assert_eq!(modes[leader], "leader");

    let follower = (0..3).find(|&i| i != leader).unwrap();
    zk.kill(follower).unwrap();
    assert!(!zk.is_running(follower));
    assert_eq!(zk.pid(follower), None);
    let error = zk.four_letter(follower, "srvr").unwrap_err();
    assert!(matches!(error, HarnessError::Io { .. }), "{error}");
    zk.kill(follower).unwrap(); // idempotent
                                // The other two still form a quorum.
    assert_eq!(zk.leader_index(), Some(leader));

    zk.restart(follower).unwrap();
    assert!(zk.is_running(follower));
    assert_eq!(zk.mode(follower).unwrap(), "follower");
    assert_eq!(zk.leader_index(), Some(leader));

    // Crash the leader: the other two elect a new one; the old leader rejoins as a follower.
    zk.kill(leader).unwrap();
    assert!(eventually(Duration::from_secs(20), || zk
        .leader_index()
        .is_some_and(|new| new != leader)));
    zk.restart(leader).unwrap();
    assert_eq!(zk.mode(leader).unwrap(), "follower");
}

#[test]
fn shared_quorum_has_a_leader() {
    let zk = shared_ensemble3().unwrap();
    assert_eq!(zk.len(), 3);
    assert!(zk.leader_index().is_some());
    assert!(std::ptr::eq(zk, shared_ensemble3().unwrap()));
}

#[test]
fn harness_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ZkEnsemble>();
    check::<FaultProxy>();
    check::<HarnessError>();
}

#[test]
fn link_faults_need_a_partitionable_ensemble() {
    let zk = shared_ensemble3().expect("zookeeper quorum");
    assert!(!zk.is_partitionable());
    for result in [zk.isolate(0), zk.partition(&[&[0], &[1, 2]]), zk.heal()] {
        let error = result.expect_err("link faults on an ensemble without link proxies");
        assert!(matches!(error, HarnessError::Other(_)), "{error:?}");
        assert!(error.to_string().contains("start_partitionable"), "{error}");
    }
    assert_eq!(zk.link_addrs(0, 1), None);
    assert!(zk.quorum_addrs(0).is_some());
    // A standalone server has no quorum links; this fails before any JVM starts.
    assert!(matches!(
        ZkEnsemble::start_partitionable(1),
        Err(HarnessError::Other(_))
    ));
}

#[test]
fn paused_member_does_not_answer_until_resumed() {
    let zk = ZkEnsemble::standalone().unwrap();
    zk.pause(0).unwrap();
    assert!(zk.is_paused(0));
    assert!(zk.is_running(0));
    let started = Instant::now();
    let error = zk.four_letter(0, "srvr").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match &error {
        HarnessError::Io { source, .. } => assert_eq!(source.kind(), ErrorKind::TimedOut),
        other => panic!("unexpected error {other}"),
    }
    // Paused members are skipped when counting watches.
    assert_eq!(zk.watch_count().unwrap(), 0);

    zk.resume(0).unwrap();
    assert!(!zk.is_paused(0));
    assert_eq!(zk.mode(0).unwrap(), "standalone");

    // Killing a paused member works too.
    zk.pause(0).unwrap();
    zk.kill(0).unwrap();
    assert!(!zk.is_running(0));
    zk.restart(0).unwrap();
    assert_eq!(zk.mode(0).unwrap(), "standalone");
}

#[test]
fn watch_count_sees_watches_and_their_removal() {
    let zk = ZkEnsemble::standalone().unwrap();
    let proxy = FaultProxy::for_member(&zk, 0).unwrap();
    let session = raw_session_with_watch(proxy.addr(), "/");
    assert_eq!(zk.watch_count().unwrap(), 1);
    assert!(zk
        .four_letter(0, "wchs")
        .unwrap()
        .contains("Total watches:1"));
    // Cutting the connection closes it on the server too, which drops its watches.
    proxy.cut();
    assert!(eventually(Duration::from_secs(5), || zk
        .watch_count()
        .unwrap()
        == 0));
    drop(session);
}

#[test]
fn proxy_forwards_cuts_and_heals() {
    let zk = shared().unwrap();
    let proxy = FaultProxy::for_ensemble(zk).unwrap();
    assert_eq!(proxy.connect_string(), proxy.addr().to_string());
    assert!(ask_at(proxy.addr(), "srvr")
        .unwrap()
        .contains("Mode: standalone"));

    // An open connection is closed by cut().
    let mut open = TcpStream::connect(proxy.addr()).unwrap();
    assert!(eventually(Duration::from_secs(2), || proxy
        .connection_count()
        == 1));
    proxy.cut();
    open.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    match open.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("read {n} bytes from a cut connection"),
        Err(e) => assert_ne!(e.kind(), ErrorKind::WouldBlock, "cut connection still open"),
    }
    assert_eq!(proxy.connection_count(), 0);

    // New connections are refused (accepted and closed) while cut.
    match ask_at(proxy.addr(), "srvr") {
        Ok(answer) => assert!(answer.is_empty(), "got an answer while cut: {answer}"),
        Err(e) => assert_ne!(e.kind(), ErrorKind::WouldBlock),
    }

    proxy.heal();
    assert!(ask_at(proxy.addr(), "srvr")
        .unwrap()
        .contains("Mode: standalone"));
}

#[test]
fn proxy_blackhole_holds_bytes_until_heal() {
    let zk = shared().unwrap();
    let proxy = FaultProxy::for_member(zk, 0).unwrap();

    // A connection forwarded before the blackhole.
    let mut before = TcpStream::connect(proxy.addr()).unwrap();
    assert!(eventually(Duration::from_secs(2), || proxy
        .connection_count()
        == 1));
    proxy.blackhole();
    let error = ask(&mut before, "srvr", Duration::from_millis(700)).unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{error}"
    );
    // A connection made during the blackhole is accepted but not forwarded.
    let mut during = TcpStream::connect(proxy.addr()).unwrap();
    let error = ask(&mut during, "srvr", Duration::from_millis(700)).unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{error}"
    );
    assert_eq!(proxy.connection_count(), 2);

    // After heal the held requests are delivered and answered on the same connections.
    proxy.heal();
    for stream in [&mut before, &mut during] {
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("Mode: standalone"), "{answer:?}");
    }
}

#[test]
fn proxy_drop_connections_is_a_brief_flap() {
    let zk = shared().unwrap();
    let proxy = FaultProxy::for_ensemble(zk).unwrap();
    let mut open = TcpStream::connect(proxy.addr()).unwrap();
    assert!(eventually(Duration::from_secs(2), || proxy
        .connection_count()
        == 1));
    proxy.drop_connections();
    open.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    assert!(!matches!(open.read(&mut buf), Ok(n) if n > 0));
    assert!(ask_at(proxy.addr(), "srvr")
        .unwrap()
        .contains("Mode: standalone"));
}

#[test]
fn proxy_skips_a_dead_upstream() {
    let zk = shared().unwrap();
    // A port nobody listens on, first in the list.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = FaultProxy::start(vec![dead, zk.member_addr(0)]).unwrap();
    for _ in 0..3 {
        assert!(ask_at(proxy.addr(), "srvr")
            .unwrap()
            .contains("Mode: standalone"));
    }
}

#[test]
fn proxy_drop_joins_its_threads_with_connections_open() {
    let zk = shared().unwrap();
    let proxy = FaultProxy::for_ensemble(zk).unwrap();
    let _a = TcpStream::connect(proxy.addr()).unwrap();
    let _b = TcpStream::connect(proxy.addr()).unwrap();
    assert!(eventually(Duration::from_secs(2), || proxy
        .connection_count()
        == 2));
    proxy.blackhole();
    let started = Instant::now();
    drop(proxy);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn members_outlive_the_thread_that_started_them() {
    // The death signal is tied to the forking thread; the harness forks from a long-lived
    // spawner thread, so a member must survive the (short-lived) thread that asked for it.
    let zk = std::thread::spawn(|| ZkEnsemble::standalone().unwrap())
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(zk.is_running(0));
    assert_eq!(zk.mode(0).unwrap(), "standalone");
}
