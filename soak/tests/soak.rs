//! Short runs of `zkr-soak` against a real, partitionable ZooKeeper ensemble.
//!
//! The soak drives the `zkr` binary of package zkr-cli, which it looks for next to its own
//! executable (`target/<profile>/zkr`): `scripts/test` builds it first
//! (`cargo build --workspace --all-targets`), and `cargo test --workspace` builds it for
//! zkr-cli's own integration tests. Missing, the tests fail saying so.
//!
//! The safe run has every workload (locks, election, IDs, config, discovery, work queue); the
//! unsafe run only the locks. The two runs are one test, one after the other, so that two ensembles never share the
//! machine's cores (a starved ensemble would make the liveness figures meaningless).

use std::path::{Path, PathBuf};
use std::process::Command;

fn zkr_bin() -> PathBuf {
    let soak = Path::new(env!("CARGO_BIN_EXE_zkr-soak"));
    let zkr = soak.with_file_name("zkr");
    assert!(
        zkr.is_file(),
        "{} is missing: build it first (cargo build --workspace --all-targets, or cargo build -p zkr-cli --bin zkr)",
        zkr.display()
    );
    zkr
}

fn run(args: &[&str], report: &Path) -> (Option<i32>, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zkr-soak"))
        .args(args)
        .arg("--report")
        .arg(report)
        .arg("--zkr-bin")
        .arg(zkr_bin())
        .output()
        .expect("zkr-soak runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(report)
        .unwrap_or_else(|e| panic!("no report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    let json = serde_json::from_str(&text).expect("the report is JSON");
    (out.status.code(), json, format!("{stdout}\n{stderr}"))
}

#[test]
fn soak_safe_then_unsafe_holder() {
    let dir = tempfile::tempdir().expect("temp dir");

    // The safe run: a fixed seed, every workload, faults of most kinds, no violation.
    let (code, report, output) = run(
        &["--seconds", "45", "--seed", "7"],
        &dir.path().join("safe.json"),
    );
    assert_eq!(code, Some(0), "the safe soak failed:\n{output}");
    assert_eq!(report["ok"], true, "{output}");
    assert_eq!(report["violations"].as_array().map(Vec::len), Some(0));
    let faults = report["faults_total"].as_u64().unwrap_or(0);
    let kinds = report["fault_kinds"].as_u64().unwrap_or(0);
    assert!(faults >= 15, "only {faults} faults:\n{output}");
    assert!(kinds >= 6, "only {kinds} kinds of fault:\n{output}");
    // Every workload did real work.
    for (pointer, at_least) in [
        ("/locks/holds", 10),
        ("/election/holds", 5),
        ("/workloads/ids/handed_out", 100),
        ("/workloads/config/acknowledged", 20),
        ("/workloads/queue/completed_in_the_end", 20),
    ] {
        let n = report
            .pointer(pointer)
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        assert!(n >= at_least, "{pointer} = {n} < {at_least}:\n{output}");
    }
    let w = &report["workloads"];
    assert_eq!(w["discovery"]["registrants"], 3, "{output}");

    // Holder 0 writes outside zkr's control: the checker must catch it.
    let (code, report, output) = run(
        &[
            "--seconds",
            "12",
            "--seed",
            "7",
            "--locks-only",
            "--unsafe-holder",
        ],
        &dir.path().join("unsafe.json"),
    );
    assert_eq!(code, Some(1), "the unsafe holder went unnoticed:\n{output}");
    assert_eq!(report["ok"], false);
    let violations = report["violations"].as_array().cloned().unwrap_or_default();
    assert!(
        violations.iter().any(|v| v["workload"] == "locks"
            && (v["kind"] == "overlap" || v["kind"] == "stale-write-accepted")),
        "{output}"
    );
    assert!(
        output.contains("timeline around the first violation"),
        "{output}"
    );
}
