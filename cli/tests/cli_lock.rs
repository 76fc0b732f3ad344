//! `zkr lock` against a real ZooKeeper: the command's status, mutual exclusion between
//! processes, the timeout exit code, and SIGTERM + exit 8 when the lock is lost.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zkr_testing::helpers::root;
use zkr_testing::{self as testing, FaultProxy};

const BIN: &str = env!("CARGO_BIN_EXE_zkr");

fn zkr(zk: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("ZK_SERVERS")
        .env_remove("RUST_LOG")
        .arg("--zk")
        .arg(zk);
    c
}

#[test]
fn lock_runs_the_command_and_returns_its_status() {
    let zk = testing::shared().unwrap().connect_string();
    let path = root("status");
    let o = zkr(&zk)
        .args(["lock", &path, "--", "sh", "-c", "echo inside; exit 3"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "inside\n");
    // Released afterwards: the lock node is gone.
    let o = zkr(&zk).args(["ls", &path]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).trim().is_empty());
}

#[test]
fn lock_excludes_between_processes() {
    let zk = testing::shared().unwrap().connect_string();
    let path = root("exclusive");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "echo start >> {0}; sleep 0.2; echo end >> {0}",
        log.display()
    );
    let children: Vec<_> = (0..4)
        .map(|_| {
            zkr(&zk)
                .args(["lock", &path, "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8);
    for pair in lines.chunks(2) {
        assert_eq!(
            pair,
            ["start", "end"],
            "critical sections overlapped:\n{text}"
        );
    }
}

#[test]
fn lock_timeout_has_its_own_exit_code() {
    let zk = testing::shared().unwrap().connect_string();
    let path = root("timeout");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (client, guard) = rt.block_on(async {
        let c = zkr::Client::connect(&zk).await.unwrap();
        let g = zkr_recipes::Mutex::new(&c, &path)
            .unwrap()
            .acquire()
            .await
            .unwrap();
        (c, g)
    });
    let t = Instant::now();
    let o = zkr(&zk)
        .args(["--timeout", "500ms", "lock", &path, "--", "echo", "never"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(&o.stdout).is_empty(),
        "the command must not run"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("not acquired"));
    rt.block_on(async {
        guard.release().await.unwrap();
        client.close().await;
    });
}

#[test]
fn lost_lock_terminates_the_command() {
    let ens = testing::shared().unwrap();
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let path = root("lost");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("term");
    // The command records SIGTERM, then exits.
    let script = format!(
        "trap 'echo term > {}; exit 0' TERM; echo ready; while true; do sleep 0.05; done",
        marker.display()
    );
    let mut child = zkr(&proxy.connect_string())
        .args([
            "--session-timeout-ms",
            "2000",
            "lock",
            &path,
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let t = Instant::now();
    proxy.cut();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(8));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "term",
        "the command got SIGTERM"
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("lost"), "{err}");
}

#[test]
fn the_command_gets_the_lock_path_node_and_fencing_token() {
    let zk = testing::shared().unwrap().connect_string();
    let path = root("env");
    let run = || {
        let out = zkr(&zk)
            .args([
                "lock",
                &path,
                "--",
                "sh",
                "-c",
                "echo \"$ZKR_LOCK_PATH|$ZKR_LOCK_NODE|$ZKR_FENCING_TOKEN\"",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let line = String::from_utf8(out.stdout).unwrap();
        let parts: Vec<String> = line.trim().split('|').map(str::to_string).collect();
        assert_eq!(parts.len(), 3, "{line}");
        parts
    };
    let first = run();
    assert_eq!(first[0], path);
    assert!(
        first[1].starts_with(&format!("{path}/")) && first[1].contains("-lock-"),
        "{first:?}"
    );
    let t1: i64 = first[2].parse().unwrap();
    let second = run();
    let t2: i64 = second[2].parse().unwrap();
    assert!(t1 > 0 && t2 > t1, "fencing tokens increase: {t1} then {t2}");
}

/// A holder whose client is silently cut off (blackholed: no reset, no reply) learns it only
/// from missing confirmations. Its command ignores SIGTERM; the process group must still be
/// gone by the lease deadline, before the server expires the session and another process gets
/// the lock. Order checked by the exit of the first `zkr` against the second one's command.
#[test]
fn a_command_ignoring_sigterm_is_gone_before_the_next_holder_starts() {
    let ens = testing::shared().unwrap();
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let path = root("lease-kill");
    let mut first = zkr(&proxy.connect_string())
        .args([
            "--session-timeout-ms",
            "2000",
            "lock",
            &path,
            "--",
            "sh",
            "-c",
            "trap '' TERM; echo ready; while true; do sleep 0.05; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let mut second = zkr(&ens.connect_string())
        .args([
            "--timeout",
            "30s",
            "lock",
            &path,
            "--",
            "sh",
            "-c",
            "echo started",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    proxy.blackhole();
    let cut = Instant::now();
    let waiter = std::thread::spawn(move || {
        let status = first.wait().unwrap();
        (status, Instant::now())
    });
    let mut out2 = std::io::BufReader::new(second.stdout.take().unwrap());
    let mut started = String::new();
    std::io::BufRead::read_line(&mut out2, &mut started).unwrap();
    let second_started = Instant::now();
    assert_eq!(started.trim(), "started");
    let (status, first_gone) = waiter.join().unwrap();
    assert_eq!(status.code(), Some(8), "the first holder reports the loss");
    assert!(
        first_gone < second_started,
        "the first holder's command was gone {:?} after the cut, the second started {:?} after it",
        first_gone - cut,
        second_started - cut
    );
    assert!(second.wait().unwrap().success());
    proxy.heal();
}
