//! Interop with kazoo 2.8 (Debian's `python3-kazoo`) on one lock path: a kazoo
//! `Lock` holder excludes zkr, and kazoo told about Curator-style names
//! (`extra_lock_patterns=["-lock-"]`) is excluded by a zkr holder. Skipped (printing why) only
//! where kazoo is not installed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use zkr_recipes::Mutex;

const PYTHON: &str = "/usr/bin/python3";

const SCRIPT: &str = r#"
import sys
from kazoo.client import KazooClient
from kazoo.exceptions import LockTimeout
hosts, path = sys.argv[1], sys.argv[2]
zk = KazooClient(hosts=hosts, timeout=10)
zk.start()
lock = zk.Lock(path, "kazoo-peer", extra_lock_patterns=["-lock-"])
print("READY", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "acquire":
        try:
            ok = lock.acquire(timeout=float(cmd[1]))
        except LockTimeout:
            ok = False
        print("ACQUIRED" if ok else "TIMEOUT", flush=True)
    elif cmd[0] == "release":
        lock.release()
        print("RELEASED", flush=True)
zk.stop()
"#;

struct Kazoo {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Kazoo {
    fn start(hosts: &str, path: &str) -> Option<Kazoo> {
        let ok = Command::new(PYTHON)
            .args(["-c", "import kazoo"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("SKIPPED: kazoo interop needs {PYTHON} with kazoo (apt-get install -y python3-kazoo)");
            return None;
        }
        let mut child = Command::new(PYTHON)
            .args(["-c", SCRIPT, hosts, path])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut k = Kazoo { child, out };
        assert_eq!(k.line(), "READY");
        Some(k)
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    fn call(&mut self, cmd: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        self.line()
    }
}

impl Drop for Kazoo {
    fn drop(&mut self) {
        let _ = self.child.kill(); // by pid
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_and_zkr_locks_exclude_each_other() {
    init_tracing();
    let ens = zkr_testing::shared().expect("zookeeper");
    let path = root("kazoo");
    let Some(mut kazoo) = Kazoo::start(&ens.connect_string(), &path) else {
        return;
    };
    let c = client(&ens.connect_string(), 10_000).await;
    let m = Mutex::new(&c, &path).unwrap();

    // kazoo holds: zkr counts its `__lock__` node as a contender and waits.
    assert_eq!(
        tokio::task::block_in_place(|| kazoo.call("acquire 10")),
        "ACQUIRED"
    );
    let names = c.get_children(&path).await.unwrap();
    assert!(names.iter().all(|n| n.contains("__lock__")), "{names:?}");
    assert!(m.try_acquire().await.unwrap().is_none());
    let m2 = m.clone();
    let waiting = tokio::spawn(async move { m2.acquire_timeout(Duration::from_secs(10)).await });
    assert_eq!(
        tokio::task::block_in_place(|| kazoo.call("release")),
        "RELEASED"
    );
    let g = waiting.await.unwrap().unwrap();

    // zkr holds: kazoo (told about `-lock-` names) waits.
    assert_eq!(
        tokio::task::block_in_place(|| kazoo.call("acquire 0.5")),
        "TIMEOUT"
    );
    g.release().await.unwrap();
    assert_eq!(
        tokio::task::block_in_place(|| kazoo.call("acquire 10")),
        "ACQUIRED"
    );
    assert_eq!(
        tokio::task::block_in_place(|| kazoo.call("release")),
        "RELEASED"
    );
}
