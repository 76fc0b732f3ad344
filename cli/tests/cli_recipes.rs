//! `zkr config` and `zkr id` against a real ZooKeeper: the commands' exit codes and output, and
//! IDs handed out to several OS processes at once. (Moved here from the root crate's tests so
//! Cargo builds the binary for them: `CARGO_BIN_EXE_zkr`.)

use std::collections::HashSet;
use std::time::Duration;

use zkr_recipes::Config;
use zkr_testing as testing;
use zkr_testing::helpers::{client, root};

const BIN: &str = env!("CARGO_BIN_EXE_zkr");
const T: Duration = Duration::from_secs(15);

fn assert_unique(ids: &[i64]) {
    let set: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(set.len(), ids.len(), "duplicate ids handed out");
}

/// `zkr config set|get|watch`: compare-and-set, a fresh get, and watch lines for a value, a
/// bad payload (last good kept) and the next value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_config_set_get_watch() {
    let zk = testing::shared().expect("zookeeper").connect_string();
    let base = root("cfg-cli");
    let path = format!("{base}/svc");
    let run = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.env_remove("RUST_LOG")
            .args(["--zk", &zk])
            .args(args)
            .kill_on_drop(true);
        cmd.output()
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let o = run(s(&["config", "set", &path, r#"{"a":1}"#]))
        .await
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(s(&["config", "set", &path, "{oops"])).await.unwrap();
    assert_eq!(o.status.code(), Some(2), "bad JSON is a usage error");
    let o = run(s(&["config", "set", &path, r#"{"a":2}"#, "--version", "7"]))
        .await
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(5),
        "compare-and-set at a wrong version"
    );
    let o = run(s(&["config", "get", &path])).await.unwrap();
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["value"], serde_json::json!({"a": 1}));
    assert_eq!(line["version"], 0);

    // Watch: read each line before causing the next change (no timing assumptions).
    let (mut child, mut lines) =
        spawn_lines(&["--zk", &zk, "config", "watch", &path, "--count", "3"]);
    let admin = client(&zk, 10_000).await;
    let l = next_json(&mut lines).await;
    assert_eq!(
        (l["event"].as_str(), &l["value"]),
        (Some("value"), &serde_json::json!({"a": 1}))
    );
    admin.set_data(&path, b"not json", None).await.unwrap();
    let l = next_json(&mut lines).await;
    assert_eq!(l["event"].as_str(), Some("invalid"), "{l}");
    let cfg: Config<serde_json::Value> = Config::new(&admin, &path).unwrap();
    cfg.publish(&serde_json::json!({"a": 3})).await.unwrap();
    let l = next_json(&mut lines).await;
    assert_eq!(
        (l["event"].as_str(), &l["value"]),
        (Some("value"), &serde_json::json!({"a": 3}))
    );
    let status = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    admin.delete_recursive(&base).await.unwrap();
}

/// 4 OS processes run `zkr id next PATH --count N` concurrently (sequential-node IDs and
/// ID blocks): no ID appears twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ids_unique_across_four_processes() {
    let base = root("ids-cli");
    let zk = testing::shared().expect("zookeeper").connect_string();
    for extra in [&[][..], &["--counter"][..], &["--block", "25"][..]] {
        let path = format!("{base}/p{}", extra.len());
        let procs: Vec<_> = (0..4)
            .map(|_| {
                let mut cmd = tokio::process::Command::new(BIN);
                cmd.env_remove("RUST_LOG")
                    .args(["--zk", &zk, "id", "next", &path, "--count", "150"])
                    .args(extra)
                    .kill_on_drop(true);
                cmd.output()
            })
            .collect();
        let outs = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(procs))
            .await
            .expect("zkr id next finished");
        let mut all = Vec::new();
        for o in outs {
            let o = o.expect("spawn zkr");
            assert!(
                o.status.success(),
                "zkr id next {extra:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let ids: Vec<i64> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().parse().expect("one id per line"))
                .collect();
            assert_eq!(ids.len(), 150);
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "increasing per process"
            );
            all.extend(ids);
        }
        assert_unique(&all);
    }
    let admin = client(&zk, 10_000).await;
    admin.delete_recursive(&base).await.unwrap();
}

/// Starts `zkr ARGS...` with stdout piped; returns the child and a reader of its lines.
fn spawn_lines(
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = tokio::process::Command::new(BIN)
        .env_remove("RUST_LOG")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    (child, lines)
}

async fn next_json(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let l = tokio::time::timeout(T, lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("a line, not the end of output");
    serde_json::from_str(&l).unwrap()
}

/// `zkr services NAME --watch --count 2` and `zkr queue status PATH --watch --count 2`: the
/// current state, then the change made after it was printed, then exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_services_and_queue_watch() {
    let zk = testing::shared().expect("zookeeper").connect_string();
    let base = root("follow");
    let admin = client(&zk, 10_000).await;

    let services = format!("{base}/services");
    admin.ensure_path(&format!("{services}/svc")).await.unwrap();
    let (mut child, mut lines) = spawn_lines(&[
        "--zk", &zk, "services", "svc", "--base", &services, "--watch", "--count", "2",
    ]);
    let l = next_json(&mut lines).await;
    assert_eq!(l["instances"], serde_json::json!([]), "{l}");
    let reg = zkr_recipes::Registration::new(
        &admin,
        &services,
        zkr_recipes::ServiceInstance::new("svc", "i1"),
    )
    .unwrap();
    reg.start().await.unwrap();
    let l = next_json(&mut lines).await;
    assert_eq!(l["instances"].as_array().map(|a| a.len()), Some(1), "{l}");
    assert_eq!(l["instances"][0]["id"], "i1", "{l}");
    let status = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    reg.unregister().await.unwrap();

    let queue = format!("{base}/queue");
    let q = zkr_recipes::WorkQueue::new(&admin, &queue).unwrap();
    let (mut child, mut lines) = spawn_lines(&[
        "--zk", &zk, "queue", "status", &queue, "--watch", "--count", "2",
    ]);
    let l = next_json(&mut lines).await;
    assert_eq!(l["tasks"], serde_json::json!([]), "{l}");
    let id = q.put(&serde_json::json!({"n": 1})).await.unwrap();
    let l = next_json(&mut lines).await;
    assert_eq!(l["tasks"].as_array().map(|a| a.len()), Some(1), "{l}");
    assert_eq!(l["tasks"][0]["id"], id.as_str(), "{l}");
    let status = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    admin.delete_recursive(&base).await.unwrap();
}

/// `zkr register` prints `registered` and keeps the instance while it runs; on SIGTERM it
/// unregisters (prints `unregistered`, the node is gone) and exits 0. `zkr queue work --count 1`
/// claims the queued task, completes it and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_register_and_queue_work() {
    let zk = testing::shared().expect("zookeeper").connect_string();
    let base = root("reg-work");
    let admin = client(&zk, 10_000).await;

    let services = format!("{base}/services");
    let (mut child, mut lines) = spawn_lines(&[
        "--zk", &zk, "register", "svc", "--id", "i1", "--base", &services,
    ]);
    let l = next_json(&mut lines).await;
    assert_eq!(l["event"], "registered", "{l}");
    let node = format!("{services}/svc/i1");
    assert!(admin.exists(&node).await.unwrap().is_some());
    // SIGTERM by pid (the child we started).
    let pid = child.id().expect("running").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let l = next_json(&mut lines).await;
    assert_eq!(l["event"], "unregistered", "{l}");
    let status = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert!(admin.exists(&node).await.unwrap().is_none());

    let queue = format!("{base}/queue");
    let q = zkr_recipes::WorkQueue::new(&admin, &queue).unwrap();
    let id = q.put(&serde_json::json!({"n": 1})).await.unwrap();
    let (mut child, mut lines) = spawn_lines(&[
        "--zk",
        &zk,
        "queue",
        "work",
        &queue,
        "--worker",
        "w1",
        "--count",
        "1",
        "--steps",
        "2",
        "--step-ms",
        "10",
    ]);
    let l = next_json(&mut lines).await;
    assert_eq!(
        (l["event"].as_str(), l["task"].as_str()),
        (Some("claimed"), Some(id.as_str())),
        "{l}"
    );
    let l = next_json(&mut lines).await;
    assert_eq!(
        (l["event"].as_str(), l["task"].as_str()),
        (Some("completed"), Some(id.as_str())),
        "{l}"
    );
    let status = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let s = q.snapshot().await.unwrap();
    assert_eq!(s.count(zkr_recipes::TaskState::Completed), 1);
    admin.delete_recursive(&base).await.unwrap();
}
