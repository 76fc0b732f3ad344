//! Helpers shared by the CLI's test binaries: running the built `zkr` and reading its output.
#![allow(dead_code)]

use std::process::{Command, Output};

/// The `zkr` binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_zkr");

/// The shared ZooKeeper of this test binary.
pub fn zk() -> String {
    zkr_testing::shared()
        .expect("shared ZooKeeper")
        .connect_string()
}

/// `zkr`, with no setting inherited from the environment (servers, logging, auth, TLS).
pub fn command() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("ZK_SERVERS")
        .env_remove("RUST_LOG")
        .env_remove("ZKR_AUTH")
        .env_remove("ZKR_TLS_CA")
        .env_remove("ZKR_TLS_CERT")
        .env_remove("ZKR_TLS_KEY");
    c
}

/// Runs `zkr --zk <shared> ARGS...`.
pub fn zkr(args: &[&str]) -> Output {
    command()
        .arg("--zk")
        .arg(zk())
        .args(args)
        .output()
        .expect("run zkr")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
#[track_caller]
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "zkr failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}
