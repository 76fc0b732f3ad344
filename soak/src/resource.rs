//! The fenced resource: a TCP server on `127.0.0.1:0` that the holders write to.
//!
//! Protocol, one line each way: `W <holder> <hold-id> <token>` → `OK` or `REJECT`. A write is
//! accepted when its token is at least the highest token accepted so far. Every write, accepted
//! or not, is recorded with the resource's own receive time (CLOCK_MONOTONIC, the soak's one
//! clock), taken under the same lock as the decision, so the record's order is the order of
//! the decisions.
//!
//! The holder's command also marks the start and the end of its hold: `A <holder> <hold-id>
//! <token>` (acquired: the command runs, so the lock is held) and `R ...` (released: the command
//! is about to exit) → `OK`. Markers are recorded with their receive time and decide nothing.

use std::io::{self, BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use crate::now_ms;

/// One write as the resource received it.
#[derive(Debug, Clone)]
pub struct Write {
    /// Receive time, ms since the soak started.
    pub t_ms: f64,
    pub holder: usize,
    /// The hold it belongs to: the lock node of the `zkr lock` that ran the writer.
    pub hold: String,
    pub token: i64,
    pub accepted: bool,
}

/// A hold's start (`acquired`) or end (`!acquired`) as its command reported it.
#[derive(Debug, Clone)]
pub struct Marker {
    pub t_ms: f64,
    pub holder: usize,
    pub hold: String,
    pub acquired: bool,
}

#[derive(Default)]
struct State {
    highest: Option<i64>,
    writes: Vec<Write>,
    markers: Vec<Marker>,
}

/// The running resource server (its threads live as long as the soak process).
pub struct Resource {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Resource {
    pub fn start() -> io::Result<Resource> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let accept_state = Arc::clone(&state);
        thread::Builder::new()
            .name("soak-resource".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let state = Arc::clone(&accept_state);
                    let _ = thread::Builder::new()
                        .name("soak-resource-conn".into())
                        .spawn(move || serve(stream, &state));
                }
            })?;
        Ok(Resource { addr, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every write so far, in receive order.
    pub fn writes(&self) -> Vec<Write> {
        lock(&self.state).writes.clone()
    }

    /// Every marker so far, in receive order.
    pub fn markers(&self) -> Vec<Marker> {
        lock(&self.state).markers.clone()
    }

    /// (accepted, rejected) so far.
    pub fn counts(&self) -> (usize, usize) {
        let state = lock(&self.state);
        let accepted = state.writes.iter().filter(|w| w.accepted).count();
        (accepted, state.writes.len() - accepted)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_nodelay(true);
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let reply = match parse(&line) {
            Some((kind @ ('A' | 'R'), holder, hold, _)) => {
                let t_ms = now_ms();
                lock(state).markers.push(Marker {
                    t_ms,
                    holder,
                    hold,
                    acquired: kind == 'A',
                });
                "OK\n"
            }
            Some((_, holder, hold, token)) => {
                let mut state = lock(state);
                let accepted = state.highest.is_none_or(|h| token >= h);
                if accepted {
                    state.highest = Some(token);
                }
                let t_ms = now_ms();
                state.writes.push(Write {
                    t_ms,
                    holder,
                    hold,
                    token,
                    accepted,
                });
                if accepted {
                    "OK\n"
                } else {
                    "REJECT\n"
                }
            }
            None => "ERR\n",
        };
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn parse(line: &str) -> Option<(char, usize, String, i64)> {
    let mut parts = line.split_whitespace();
    let kind = match parts.next()? {
        "W" => 'W',
        "A" => 'A',
        "R" => 'R',
        _ => return None,
    };
    let holder = parts.next()?.parse().ok()?;
    let hold = parts.next()?.to_string();
    let token = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((kind, holder, hold, token))
}
