//! Runs the built `zkr` binary against a real ZooKeeper (`zkr_testing::shared()`, one
//! standalone server for the whole test binary; every test works under its own root path).
//!
//! Needs Java and ZooKeeper 3.8 (`apt-get install -y zookeeper`).

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use zkr_testing::helpers::root;

/// Runs `zkr --zk <shared> ARGS...` with `input` on stdin.
fn zkr_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = command()
        .arg("--zk")
        .arg(zk())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zkr");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Asserts exit code `code`, one clear `zkr: ` line on stderr containing `needle`, no panic.
#[track_caller]
fn fails(o: Output, code: i32, needle: &str) {
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {err}",
        stdout(&o)
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "panic: {err}"
    );
    assert!(
        err.starts_with("zkr: "),
        "stderr should be one `zkr: ...` line: {err:?}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err:?}"
    );
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}"))
}

#[test]
fn node_round_trip() {
    let r = root("round_trip");
    let n = format!("{r}/node");
    assert_eq!(
        ok(zkr(&["create", "--parents", &n, "v1"])),
        format!("{n}\n")
    );
    assert_eq!(ok(zkr(&["get", &n])), "v1");

    ok(zkr(&["set", &n, "v2"]));
    let o = zkr(&["get", "--stat", &n]);
    assert_eq!(stdout(&o), "v2");
    let st = json(&stderr(&o));
    assert_eq!(st["version"], 1);
    assert_eq!(st["data_length"], 2);

    // Compare-and-set, and data from stdin.
    fails(
        zkr(&["set", &n, "nope", "--version", "0"]),
        5,
        "not at version 0",
    );
    ok(zkr_stdin(
        &["set", &n, "-", "--version", "1"],
        b"from\nstdin",
    ));
    assert_eq!(ok(zkr(&["get", &n])), "from\nstdin");

    let st = json(&ok(zkr(&["stat", &n])));
    assert_eq!(st["path"], n.as_str());
    assert_eq!(st["version"], 2);
    assert_eq!(st["num_children"], 0);
    assert_eq!(st["ephemeral_owner"], 0);

    // ls is sorted; create of an existing node is exit 4.
    ok(zkr(&["create", &format!("{r}/a")]));
    assert_eq!(ok(zkr(&["ls", &r])), "a\nnode\n");
    fails(zkr(&["create", &n]), 4, "already exists");
    let seq = ok(zkr(&["create", "--sequential", &format!("{r}/s-")]));
    assert!(
        seq.starts_with(&format!("{r}/s-")) && seq.trim_end().len() == r.len() + 3 + 10,
        "{seq}"
    );

    // A sequential prefix ending in '/' gets its parent created with --parents.
    let q = ok(zkr(&[
        "create",
        "--sequential",
        "--parents",
        &format!("{r}/q/"),
    ]));
    assert!(q.starts_with(&format!("{r}/q/00")), "{q}");

    // A missing parent is explained.
    fails(zkr(&["create", &format!("{r}/x/y")]), 3, "use --parents");

    // ls -R draws the subtree.
    ok(zkr(&["create", &format!("{r}/a/b")]));
    let tree = ok(zkr(&["ls", "-R", &format!("{r}/a")]));
    assert_eq!(tree, format!("{r}/a\n└── b\n"));
    let tree = ok(zkr(&["ls", "--recursive", &r]));
    assert!(
        tree.starts_with(&format!("{r}\n├── a\n│   └── b\n├── node\n")),
        "{tree}"
    );
    ok(zkr(&["delete", &format!("{r}/a/b")]));

    // delete: version check, not-empty, recursive.
    fails(
        zkr(&["delete", &n, "--version", "7"]),
        5,
        "not at version 7",
    );
    ok(zkr(&["delete", &n, "--version", "2"]));
    fails(zkr(&["stat", &n]), 3, "does not exist");
    fails(zkr(&["delete", &r]), 1, "--recursive");
    ok(zkr(&["delete", "--recursive", &r]));
    fails(zkr(&["ls", &r]), 3, "does not exist");
}

#[test]
fn missing_node_is_exit_3() {
    let r = root("missing");
    let missing = format!("{r}/nothing");
    for cmd in ["get", "stat", "ls", "delete"] {
        fails(zkr(&[cmd, &missing]), 3, "does not exist");
    }
    fails(zkr(&["set", &missing, "x"]), 3, "does not exist");
    fails(
        zkr(&["delete", "--recursive", &missing]),
        3,
        "does not exist",
    );
}

#[test]
fn bad_usage_is_exit_2() {
    let z = zk();
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["get"],
        vec!["set", "/a"],
        vec!["get", "/a", "--no-such-flag"],
        vec!["create", "/a", "--ephemeral", "--container"],
        vec!["delete", "/a", "--version", "x"],
        vec!["--timeout", "soon", "ls", "/"],
    ] {
        let o = command().arg("--zk").arg(&z).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
    // No servers given at all.
    fails(
        command().args(["ls", "/"]).output().unwrap(),
        2,
        "ZK_SERVERS",
    );
    // ZK_SERVERS works instead of --zk.
    let o = command()
        .env("ZK_SERVERS", &z)
        .args(["ls", "/"])
        .output()
        .unwrap();
    assert!(ok(o).lines().any(|l| l == "zookeeper"));
}

#[test]
fn invalid_input_is_a_clear_error() {
    fails(zkr(&["get", "no-slash"]), 2, "invalid path");
    fails(zkr(&["create", "/a//b"]), 2, "invalid path");
    fails(zkr(&["ls", "/a/"]), 2, "invalid path");
    for bad in [
        "localhost:notaport",
        "host:0",
        ",",
        "127.0.0.1:2181/bad//chroot",
    ] {
        let o = command().args(["--zk", bad, "ls", "/"]).output().unwrap();
        fails(o, 2, "invalid connect string");
    }
    // Nobody listening: connection trouble, exit 6, within the --timeout.
    let t = Instant::now();
    let o = command()
        .args(["--zk", "127.0.0.1:1", "--timeout", "500ms", "ls", "/"])
        .output()
        .unwrap();
    fails(o, 6, "could not reach");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

/// Kills a child process when dropped (also when the test fails).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `zkr watch ARGS` and returns the process and a channel of its stdout lines.
fn spawn_watch(args: &[&str]) -> (KillOnDrop, mpsc::Receiver<String>) {
    let mut child = command()
        .arg("--zk")
        .arg(zk())
        .arg("watch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn zkr watch");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (KillOnDrop(child), rx)
}

fn next_line(rx: &mpsc::Receiver<String>) -> serde_json::Value {
    json(
        &rx.recv_timeout(Duration::from_secs(10))
            .expect("a watch event within 10 s"),
    )
}

fn wait_exit(child: &mut KillOnDrop) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "zkr watch did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn watch_count_prints_initial_and_changes() {
    let r = root("watch");
    let n = format!("{r}/node");
    ok(zkr(&["create", "--parents", &n, "v0"]));

    let (mut child, rx) = spawn_watch(&[&n, "--count", "3"]);
    let e = next_line(&rx);
    assert_eq!(e["change"], "initial");
    assert_eq!(e["exists"], true);
    assert_eq!(e["data"], "v0");
    assert_eq!(e["version"], 0);

    // One change at a time, so that the two are not coalesced into one event.
    ok(zkr(&["set", &n, "v1"]));
    let e = next_line(&rx);
    assert_eq!(
        (
            e["change"].as_str(),
            e["data"].as_str(),
            e["version"].as_i64()
        ),
        (Some("changed"), Some("v1"), Some(1))
    );
    ok(zkr(&["set", &n, "v2"]));
    let e = next_line(&rx);
    assert_eq!(
        (
            e["change"].as_str(),
            e["data"].as_str(),
            e["version"].as_i64()
        ),
        (Some("changed"), Some("v2"), Some(2))
    );

    assert!(wait_exit(&mut child).success());
    assert!(
        rx.recv_timeout(Duration::from_secs(1)).is_err(),
        "nothing after --count events"
    );
    ok(zkr(&["delete", "-r", &r]));
}

#[test]
fn watch_missing_node_and_children() {
    let r = root("watch_children");
    ok(zkr(&["create", "--parents", &r]));
    let n = format!("{r}/later");

    // A data watch on a node that does not exist yet, then is created and deleted.
    let (mut data_watch, data_rx) = spawn_watch(&[&n, "--count", "3"]);
    let e = next_line(&data_rx);
    assert_eq!(
        (e["change"].as_str(), e["exists"].as_bool()),
        (Some("initial"), Some(false))
    );
    assert!(e["data"].is_null());

    let (mut kids_watch, kids_rx) = spawn_watch(&["--children", &r, "--count", "2"]);
    let e = next_line(&kids_rx);
    assert_eq!(e["change"], "initial");
    assert_eq!(e["children"], serde_json::json!([]));

    ok(zkr(&["create", &n, "hi"]));
    let e = next_line(&data_rx);
    assert_eq!(
        (e["change"].as_str(), e["data"].as_str()),
        (Some("created"), Some("hi"))
    );
    let e = next_line(&kids_rx);
    assert_eq!(e["change"], "changed");
    assert_eq!(e["children"], serde_json::json!(["later"]));

    ok(zkr(&["delete", &n]));
    let e = next_line(&data_rx);
    assert_eq!(
        (e["change"].as_str(), e["exists"].as_bool()),
        (Some("deleted"), Some(false))
    );

    assert!(wait_exit(&mut data_watch).success());
    assert!(wait_exit(&mut kids_watch).success());
    ok(zkr(&["delete", "-r", &r]));
}

#[test]
fn watch_stops_on_sigterm() {
    let r = root("watch_term");
    ok(zkr(&["create", "--parents", &r]));
    let (mut child, rx) = spawn_watch(&[&r]);
    assert_eq!(next_line(&rx)["change"], "initial");
    // SIGTERM by pid (the child we started).
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut child).success(), "watch exits 0 on SIGTERM");
    ok(zkr(&["delete", "-r", &r]));
}
