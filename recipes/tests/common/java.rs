//! A real Apache Curator peer for interop tests: `tests/java/CuratorPeer.java`, compiled with
//! `javac` at test time against the Curator 5.4 / ZooKeeper 3.8 jars of Debian's packages
//! (`libcurator-recipes-java`, `zookeeper`), and driven by a line protocol on stdin/stdout (see
//! the Java file for the commands: LeaderLatch and InterProcessMutex / read-write lock).
//!
//! ```ignore
//! let Some(mut peer) = java::CuratorPeer::start(&connect, 10_000) else { return }; // no Java: skipped
//! peer.send("latch /app/election java-1");
//! peer.expect("LATCH_STARTED", Duration::from_secs(10));
//! peer.expect("LEADER", Duration::from_secs(10));
//! ```
//!
//! * [`CuratorPeer::start`] returns `None` (after printing why) only when `java` or `javac` is
//!   absent; missing Curator jars are a test failure with an install hint.
//! * The class is compiled once per test binary into a directory under the system temp dir,
//!   keyed by a hash of the source and class path, and reused by later runs.
//! * The child is killed by its pid (and reaped) when the peer is dropped; it also exits on its
//!   own when its stdin closes, so it never outlives the test process.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const SOURCE: &str = include_str!("../java/CuratorPeer.java");
const JAR_DIR: &str = "/usr/share/java";
/// What Curator 5.4's client, framework and recipes need at run time on Debian (guava's jar
/// includes failureaccess there).
const JARS: &[&str] = &[
    "curator-client.jar",
    "curator-framework.jar",
    "curator-recipes.jar",
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "guava.jar",
    "slf4j-api.jar",
    "slf4j-nop.jar",
    "netty-handler.jar",
    "netty-common.jar",
    "netty-buffer.jar",
    "netty-transport.jar",
    "netty-codec.jar",
    "netty-resolver.jar",
    "netty-transport-native-epoll.jar",
    "netty-transport-native-unix-common.jar",
];

fn find_tool(name: &str) -> Option<PathBuf> {
    if let Ok(home) = std::env::var("JAVA_HOME") {
        let p = Path::new(&home).join("bin").join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The class path of the Curator jars (fails the test with a hint if one is missing).
pub fn curator_classpath() -> String {
    let dir = std::env::var("ZKR_JAR_DIR").unwrap_or_else(|_| JAR_DIR.to_string());
    let mut parts = Vec::new();
    for jar in JARS {
        let p = Path::new(&dir).join(jar);
        assert!(
            p.is_file(),
            "{} not found: install Apache Curator and ZooKeeper with \
             `apt-get install -y libcurator-recipes-java zookeeper`",
            p.display()
        );
        parts.push(p.display().to_string());
    }
    parts.join(":")
}

struct Compiled {
    java: PathBuf,
    classpath: String,
}

/// Compiles the peer once per test binary. `Err(reason)`: skip (no Java).
fn compiled() -> &'static Result<Compiled, String> {
    static C: OnceLock<Result<Compiled, String>> = OnceLock::new();
    C.get_or_init(|| {
        let (Some(java), Some(javac)) = (find_tool("java"), find_tool("javac")) else {
            return Err(
                "java/javac not found (install a JDK: apt-get install -y default-jdk-headless)"
                    .into(),
            );
        };
        let jars = curator_classpath();
        let mut h = DefaultHasher::new();
        SOURCE.hash(&mut h);
        jars.hash(&mut h);
        let dir = std::env::temp_dir().join(format!("zkr-curator-peer-{:016x}", h.finish()));
        if !dir.join("CuratorPeer.class").is_file() {
            // Compile into a private directory, then move it into place atomically.
            let tmp = std::env::temp_dir().join(format!(
                "zkr-curator-peer-build-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).expect("temp dir");
            let src = tmp.join("CuratorPeer.java");
            std::fs::write(&src, SOURCE).expect("write java source");
            let out = Command::new(&javac)
                .arg("-nowarn")
                .arg("-cp")
                .arg(&jars)
                .arg("-d")
                .arg(&tmp)
                .arg(&src)
                .output()
                .expect("run javac");
            assert!(
                out.status.success(),
                "javac failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            if std::fs::rename(&tmp, &dir).is_err() {
                // Someone else won the race; theirs is as good.
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        Ok(Compiled {
            java,
            classpath: format!("{jars}:{}", dir.display()),
        })
    })
}

/// A running Curator peer process.
pub struct CuratorPeer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Every line received so far (for failure messages).
    pub seen: Vec<String>,
}

impl CuratorPeer {
    /// Starts a peer connected to `connect` and waits for `READY`. `None` (printed) when Java is
    /// absent.
    pub fn start(connect: &str, session_ms: u64) -> Option<CuratorPeer> {
        let c = match compiled() {
            Ok(c) => c,
            Err(why) => {
                eprintln!("SKIPPED: Curator interop needs Java: {why}");
                return None;
            }
        };
        let mut child = Command::new(&c.java)
            .arg("-Xss512k")
            .arg("-XX:+UseSerialGC")
            .arg("-XX:TieredStopAtLevel=1")
            .arg("-cp")
            .arg(&c.classpath)
            .arg("CuratorPeer")
            .arg(connect)
            .arg(session_ms.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start java");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = CuratorPeer {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        p.expect("READY", Duration::from_secs(30));
        Some(p)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line.
    pub fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}")
            .and_then(|_| self.stdin.flush())
            .expect("write to the Curator peer");
    }

    /// The next line within `within` (`None` on timeout or exit).
    pub fn next_line(&mut self, within: Duration) -> Option<String> {
        let l = self.lines.recv_timeout(within).ok()?;
        self.seen.push(l.clone());
        Some(l)
    }

    /// Waits for a line equal to `what` or starting with `what ` (skipping `STATE` lines and
    /// other events); returns it. Panics on timeout or on an `ERROR` line.
    pub fn expect(&mut self, what: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(l) if l == what || l.starts_with(&format!("{what} ")) => return l,
                Some(l) if l.starts_with("ERROR") => {
                    panic!(
                        "Curator peer: {l} (waiting for {what}; saw {:?})",
                        self.seen
                    )
                }
                Some(_) => {}
                None => panic!(
                    "Curator peer: no {what} within {within:?}; saw {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Sends `cmd` and waits for its answer line starting with `answer`.
    pub fn call(&mut self, cmd: &str, answer: &str) -> String {
        self.send(cmd);
        self.expect(answer, Duration::from_secs(30))
    }
}

impl Drop for CuratorPeer {
    fn drop(&mut self) {
        // By pid (never by name), then reap.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
