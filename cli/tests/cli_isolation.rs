//! `zkr lock` and `zkr elect` whose ZooKeeper member is cut off from the others (quorum links
//! silently dropped, client port reachable): the first holder's command is gone — terminated
//! and, since it ignores SIGTERM, killed by the lease deadline — before the command of a holder
//! on the majority starts. The cut-off member keeps answering reads and pings for
//! syncLimit × tickTime (5 s), longer than the 4 s session timeout.
//!
//! Observed from outside: one thread watches the first command's process (by the pid it wrote)
//! and notes when it is gone; another notes when the second command prints its first line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zkr_testing::helpers::root;
use zkr_testing::ZkEnsemble;

const BIN: &str = env!("CARGO_BIN_EXE_zkr");

/// One ensemble at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn zkr(zk: &str, session_ms: u64) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("ZK_SERVERS").env_remove("RUST_LOG").args([
        "--zk",
        zk,
        "--session-timeout-ms",
        &session_ms.to_string(),
    ]);
    c
}

/// Whether process `pid` has terminated (gone, or a zombie not reaped yet).
fn terminated(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Reads lines of `child`'s stdout until one satisfies `pred`; returns it and when it came.
fn wait_line(child: &mut Child, pred: impl Fn(&str) -> bool) -> (String, Instant) {
    let out = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(out);
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stdout closed");
        if pred(line.trim()) {
            return (line.trim().to_string(), Instant::now());
        }
    }
}

/// Runs the scenario: `first` (on the member that gets isolated) writes its pid and ignores
/// SIGTERM; `second` (on the majority) prints `started`. Returns when each event happened.
fn scenario(args_first: &[&str], args_second: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ens = ZkEnsemble::start_partitionable(3).expect("ensemble");
    let leader = ens
        .wait_leader_among(&[0, 1, 2], Duration::from_secs(30))
        .unwrap();
    let f = (leader + 1) % 3;
    let majority: Vec<String> = (0..3)
        .filter(|&i| i != f)
        .map(|i| ens.member_connect_string(i))
        .collect();
    let first_cmd = "trap '' TERM; echo $$; while true; do sleep 0.05; done";
    let mut first = zkr(&ens.member_connect_string(f), 4000)
        .args(args_first)
        .args(["--", "sh", "-c", first_cmd])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (pid, _) = wait_line(&mut first, |l| l.parse::<u32>().is_ok());
    let pid: u32 = pid.parse().unwrap();
    let mut second = zkr(&majority.join(","), 20_000)
        .args(args_second)
        .args(["--", "sh", "-c", "echo started; exec sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cut = Instant::now();
    ens.isolate(f).unwrap();
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !terminated(pid) {
            assert!(Instant::now() < deadline, "the first command never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        Instant::now()
    });
    let (_, second_started) = wait_line(&mut second, |l| l == "started");
    let first_gone = watcher.join().unwrap();
    eprintln!(
        "first command gone {:?} after the cut, second started {:?} after it",
        first_gone - cut,
        second_started - cut
    );
    assert!(
        first_gone < second_started,
        "the first command was gone {:?} after the cut, the second started {:?} after it",
        first_gone - cut,
        second_started - cut
    );
    for mut c in [first, second] {
        let _ = c.kill();
        let _ = c.wait();
    }
    ens.heal().unwrap();
}

#[test]
fn zkr_lock_on_an_isolated_follower_is_gone_before_the_majority_locks() {
    let path = root("lock");
    scenario(&["lock", &path], &["--timeout", "60s", "lock", &path]);
}

#[test]
fn zkr_elect_on_an_isolated_follower_is_gone_before_the_majority_leads() {
    let path = root("elect");
    scenario(
        &["elect", &path, "--id", "first"],
        &["elect", &path, "--id", "second"],
    );
}
