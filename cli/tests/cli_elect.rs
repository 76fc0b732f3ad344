//! `zkr elect` and `zkr leader` against a real ZooKeeper: one leader runs the command, the
//! next takes over when the leader's process is terminated, and `zkr leader` names the leader.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use zkr_testing as testing;
use zkr_testing::helpers::root;

const BIN: &str = env!("CARGO_BIN_EXE_zkr");

fn zkr(zk: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("ZK_SERVERS")
        .env_remove("RUST_LOG")
        .arg("--zk")
        .arg(zk);
    c
}

/// Spawns `zkr elect` whose command prints `leading <id>` and then sleeps; lines arrive on the
/// returned channel.
fn candidate(zk: &str, path: &str, id: &str) -> (Child, mpsc::Receiver<String>) {
    let script = format!("echo leading {id}; exec sleep 60");
    let mut child = zkr(zk)
        .args(["elect", path, "--id", id, "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn leader_of(zk: &str, path: &str) -> String {
    let o = zkr(zk).args(["leader", path]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn elect_runs_the_command_on_one_leader_and_fails_over() {
    let zk = testing::shared().unwrap().connect_string();
    let path = root("failover");
    let (mut a, a_out) = candidate(&zk, &path, "a");
    assert_eq!(
        a_out.recv_timeout(Duration::from_secs(10)).unwrap(),
        "leading a"
    );
    let (mut b, b_out) = candidate(&zk, &path, "b");
    // b waits behind a: `zkr leader` names a, and b has not started its command.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while zkr(&zk)
        .args(["ls", &path])
        .output()
        .unwrap()
        .stdout
        .iter()
        .filter(|&&c| c == b'\n')
        .count()
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "b never joined");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(leader_of(&zk, &path), "a");
    assert!(
        b_out.try_recv().is_err(),
        "b must not run its command while a leads"
    );
    // a's process ends (SIGTERM by pid): b takes over.
    kill_process(Pid::from_child(&a), Signal::TERM).unwrap();
    a.wait().unwrap();
    assert_eq!(
        b_out.recv_timeout(Duration::from_secs(10)).unwrap(),
        "leading b"
    );
    assert_eq!(leader_of(&zk, &path), "b");
    kill_process(Pid::from_child(&b), Signal::TERM).unwrap();
    b.wait().unwrap();
}
