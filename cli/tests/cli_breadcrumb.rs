//! `zkr elect --fence-cmd`: after an active crashed (SIGKILL, no resignation), the next leader
//! runs the fence command with the old active's id before its own command starts.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::process::{kill_process, Pid, Signal};
use zkr_testing as testing;

const BIN: &str = env!("CARGO_BIN_EXE_zkr");

fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

#[test]
fn the_next_leader_fences_a_crashed_active_first() {
    let zk = testing::shared().unwrap().connect_string();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let path = format!("/zkr-cli-crumb/{nanos}/election");
    let dir = tempfile::tempdir().unwrap();
    let fenced = dir.path().join("fenced");
    let elect = |id: &str, fence_cmd: &str| {
        Command::new(BIN)
            .env_remove("ZK_SERVERS")
            .env_remove("RUST_LOG")
            .args(["--zk", &zk, "--session-timeout-ms", "2000", "elect", &path])
            .args(["--id", id, "--fence-cmd", fence_cmd, "--"])
            .args(["sh", "-c", "echo $$; exec sleep 60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut alpha = elect("alpha", "true");
    let alpha_cmd: i32 = first_line(&mut alpha).parse().unwrap();
    let fence_cmd = format!("printf %s \"$ZKR_FENCE_ID\" > {}", fenced.display());
    let mut beta = elect("beta", &fence_cmd);
    // Crash alpha's zkr (its command lives on in its own process group until fenced).
    alpha.kill().unwrap();
    alpha.wait().unwrap();
    let beta_cmd: i32 = first_line(&mut beta).parse().unwrap();
    assert_eq!(
        std::fs::read_to_string(&fenced).unwrap(),
        "alpha",
        "the fence ran with the crashed active's id before beta's command started"
    );
    for pid in [alpha_cmd, beta_cmd] {
        if let Some(p) = Pid::from_raw(pid) {
            let _ = kill_process(p, Signal::KILL);
        }
    }
    let _ = beta.kill();
    let _ = beta.wait();
}
