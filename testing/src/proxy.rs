//! [`FaultProxy`]: a TCP proxy that cuts, flaps or freezes a client's connections for real.
//!
//! Built on std threads and blocking sockets only (no async runtime): one accept thread, and two
//! threads per proxied connection (one per direction) that block in `read` until bytes arrive
//! or the socket is shut down. Nothing polls; mode changes wake waiting threads through a
//! condition variable, and closing a connection shuts its sockets down, which wakes its threads.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{HarnessError, ZkEnsemble};

/// How long the proxy tries to connect to one upstream before trying the next one.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a quorum-link proxy keeps retrying an upstream that refuses (see
/// [`FaultProxy::start_quorum_link`]).
const QUORUM_UPSTREAM_PATIENCE: Duration = Duration::from_secs(2);
/// Pause between two such retries.
const UPSTREAM_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);
const BUFFER_SIZE: usize = 16 * 1024;
/// Longest address list accepted in a ZooKeeper election handshake (ZooKeeper's own limit).
const MAX_ELECTION_ADDRESS_LEN: i32 = 8192;

/// A TCP proxy on `127.0.0.1:<ephemeral port>` in front of one or more ZooKeeper servers.
///
/// Point the client under test at [`FaultProxy::connect_string`] instead of the servers, then
/// cause network faults:
///
/// | call | open connections | new connections |
/// |---|---|---|
/// | [`cut`](FaultProxy::cut) | closed at once (both sides shut down) | accepted and closed at once |
/// | [`blackhole`](FaultProxy::blackhole) | stay open, nothing is forwarded | accepted, not forwarded (no upstream connection yet) |
/// | [`drop_connections`](FaultProxy::drop_connections) | closed at once | forwarded as usual |
/// | [`heal`](FaultProxy::heal) | forwarded | forwarded |
///
/// **Blackhole semantics: bytes are held, not discarded.** While blackholed the proxy stops
/// reading from both sides (at most one buffer per direction that was being read at that moment
/// is held in the proxy); everything else waits in the kernel's socket buffers. A close
/// (end-of-stream) from either side is held as well, so neither the client nor the server
/// notices anything but silence. After [`heal`](FaultProxy::heal) the held bytes and closes are
/// delivered in order, as TCP would after a network partition heals. Connections accepted
/// during a blackhole are connected upstream only after `heal`.
///
/// Each accepted connection goes to one upstream: the first connection tries the first
/// upstream, the next one the second, and so on (round robin); an upstream that refuses is
/// skipped for the next. If none accepts, the client connection is closed.
///
/// Dropping the proxy closes every connection and joins all its threads.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// A clone of the accept thread's listener, to wake it on drop if connecting fails.
    listener: TcpListener,
    accept_thread: Option<JoinHandle<()>>,
}

/// What the proxy does to the first bytes a client sends, before it forwards as usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preamble {
    /// Nothing: forward every byte unchanged.
    Forward,
    /// The connection is a ZooKeeper election connection: strip the initiator's own election
    /// address from its handshake (see [`FaultProxy::start_election_link`]).
    StripElectionAddress,
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Cut,
    Blackhole,
}

/// State shared by the proxy handle and its threads.
struct Shared {
    upstreams: Vec<SocketAddr>,
    preamble: Preamble,
    /// How long to keep retrying when every upstream refuses (zero: try each once).
    upstream_patience: Duration,
    next_upstream: AtomicUsize,
    state: Mutex<State>,
    /// Signalled on every mode change, connection close and shutdown.
    changed: Condvar,
    /// Connection threads, joined on drop (finished ones are pruned on accept).
    workers: Mutex<Vec<JoinHandle<()>>>,
}

struct State {
    mode: Mode,
    shutdown: bool,
    next_id: u64,
    connections: HashMap<u64, Arc<Connection>>,
}

/// One proxied connection.
struct Connection {
    client: TcpStream,
    upstream: Mutex<Option<TcpStream>>,
    /// Set (under the state lock) when the proxy closes the connection.
    closed: AtomicBool,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `upstreams` (tried round robin).
    pub fn start(upstreams: Vec<SocketAddr>) -> Result<FaultProxy, HarnessError> {
        FaultProxy::start_with(upstreams, Preamble::Forward, Duration::ZERO)
    }

    /// A proxy for one direction of a quorum link of a partitionable ensemble: member A's
    /// connections to member B's peer port (`election == false`) or election port
    /// (`election == true`). Differences from [`start`](FaultProxy::start):
    ///
    /// * **Refused upstream.** Without a proxy a connection to a port nobody listens on yet
    ///   is refused and ZooKeeper retries it (a new leader binds its peer port a few
    ///   milliseconds after the election, and its followers may already be connecting). The
    ///   proxy has accepted the connection by then, so instead it retries the upstream for up
    ///   to 2 s before closing the connection.
    /// * **Election handshake.** ZooKeeper 3.8 opens an election connection with
    ///   `[protocol version][sid][length][initiator's own election address]`; a receiver with
    ///   a higher sid drops the connection and calls the initiator back *at that address*,
    ///   which would bypass the proxy of the reverse link. An election-link proxy rewrites the
    ///   handshake to the older `[sid]`-only form (which 3.8 still accepts), so the receiver
    ///   calls back at the address in its own configuration, i.e. through its own proxy.
    ///   Everything after the handshake is forwarded unchanged.
    pub(crate) fn start_quorum_link(
        upstream: SocketAddr,
        election: bool,
    ) -> Result<FaultProxy, HarnessError> {
        let preamble = if election {
            Preamble::StripElectionAddress
        } else {
            Preamble::Forward
        };
        FaultProxy::start_with(vec![upstream], preamble, QUORUM_UPSTREAM_PATIENCE)
    }

    fn start_with(
        upstreams: Vec<SocketAddr>,
        preamble: Preamble,
        upstream_patience: Duration,
    ) -> Result<FaultProxy, HarnessError> {
        if upstreams.is_empty() {
            return Err(HarnessError::Other(
                "a FaultProxy needs at least one upstream address".to_string(),
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| HarnessError::io("binding the fault proxy to 127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading the fault proxy's address", e))?;
        let shared = Arc::new(Shared {
            upstreams,
            preamble,
            upstream_patience,
            next_upstream: AtomicUsize::new(0),
            state: Mutex::new(State {
                mode: Mode::Forward,
                shutdown: false,
                next_id: 0,
                connections: HashMap::new(),
            }),
            changed: Condvar::new(),
            workers: Mutex::new(Vec::new()),
        });
        let listener_handle = listener
            .try_clone()
            .map_err(|e| HarnessError::io("cloning the fault proxy's listener", e))?;
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name(format!("zkr-proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(&listener, &accept_shared))
            .map_err(|e| HarnessError::io("starting the fault proxy's accept thread", e))?;
        tracing::debug!(%addr, upstreams = ?shared.upstreams, "fault proxy started");
        Ok(FaultProxy {
            addr,
            shared,
            listener: listener_handle,
            accept_thread: Some(accept_thread),
        })
    }

    /// A proxy in front of every member of `ensemble` (in member order).
    pub fn for_ensemble(ensemble: &ZkEnsemble) -> Result<FaultProxy, HarnessError> {
        FaultProxy::start(ensemble.addrs())
    }

    /// A proxy in front of member `i` of `ensemble` only.
    pub fn for_member(ensemble: &ZkEnsemble, i: usize) -> Result<FaultProxy, HarnessError> {
        let addr = ensemble.addrs().get(i).copied().ok_or_else(|| {
            HarnessError::Other(format!(
                "no member {i}: the ensemble has {} member(s)",
                ensemble.len()
            ))
        })?;
        FaultProxy::start(vec![addr])
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connect string for a client: `"127.0.0.1:port"`.
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// Closes every open connection now (both directions shut down) and refuses new ones
    /// (accepted, then closed at once) until [`heal`](FaultProxy::heal). The client sees a
    /// connection loss and cannot reconnect through the proxy.
    pub fn cut(&self) {
        let mut state = self.shared.lock_state();
        state.mode = Mode::Cut;
        close_all(&mut state);
        self.shared.changed.notify_all();
    }

    /// Stops forwarding in both directions without closing anything (a frozen network); new
    /// connections are accepted but not forwarded. Held bytes are delivered after
    /// [`heal`](FaultProxy::heal) (see the type docs).
    pub fn blackhole(&self) {
        let mut state = self.shared.lock_state();
        state.mode = Mode::Blackhole;
        self.shared.changed.notify_all();
    }

    /// Closes every open connection once (a brief flap); the mode is unchanged, so after
    /// forwarding new connections are forwarded as usual.
    pub fn drop_connections(&self) {
        let mut state = self.shared.lock_state();
        close_all(&mut state);
        self.shared.changed.notify_all();
    }

    /// Back to normal forwarding (after [`cut`](FaultProxy::cut) or
    /// [`blackhole`](FaultProxy::blackhole)).
    pub fn heal(&self) {
        let mut state = self.shared.lock_state();
        state.mode = Mode::Forward;
        self.shared.changed.notify_all();
    }

    /// Number of client connections currently open through the proxy (including ones held by a
    /// blackhole).
    pub fn connection_count(&self) -> usize {
        self.shared
            .lock_state()
            .connections
            .values()
            .filter(|connection| !connection.closed.load(Ordering::SeqCst))
            .count()
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock_state();
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstreams", &self.shared.upstreams)
            .field("mode", &state.mode)
            .field("connections", &state.connections.len())
            .finish()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock_state();
            state.shutdown = true;
            close_all(&mut state);
            self.shared.changed.notify_all();
        }
        if let Some(accept_thread) = self.accept_thread.take() {
            wake_acceptor(self.addr, &self.listener);
            if accept_thread.join().is_err() {
                tracing::warn!(addr = %self.addr, "fault proxy accept thread panicked");
            }
        }
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            if worker.join().is_err() {
                tracing::warn!(addr = %self.addr, "fault proxy connection thread panicked");
            }
        }
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Blocks while the proxy is blackholed. `true` when bytes may flow, `false` when this
    /// connection is closed, the proxy is cut or shutting down.
    fn wait_forwarding(&self, connection: &Connection) -> bool {
        let mut state = self.lock_state();
        loop {
            if state.shutdown || connection.closed.load(Ordering::SeqCst) {
                return false;
            }
            match state.mode {
                Mode::Forward => return true,
                Mode::Cut => return false,
                Mode::Blackhole => {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
        }
    }

    /// Closes one connection (both sockets shut down) and wakes its waiting threads.
    fn close(&self, connection: &Connection) {
        let _state = self.lock_state();
        connection.close();
        self.changed.notify_all();
    }

    fn unregister(&self, id: u64) {
        let mut state = self.lock_state();
        if let Some(connection) = state.connections.remove(&id) {
            connection.close();
        }
        self.changed.notify_all();
    }

    /// Connects to the next upstream in round-robin order, skipping ones that refuse; while
    /// all refuse, retries for `upstream_patience` unless the connection is closed meanwhile.
    fn connect_upstream(&self, connection: &Connection) -> io::Result<TcpStream> {
        let deadline = Instant::now() + self.upstream_patience;
        loop {
            let error = match self.try_upstreams() {
                Ok(stream) => return Ok(stream),
                Err(error) => error,
            };
            if Instant::now() >= deadline || !self.still_wanted(connection) {
                return Err(error);
            }
            thread::sleep(UPSTREAM_RETRY_PAUSE);
        }
    }

    /// Whether `connection` still needs an upstream (not closed, the proxy not cut or shut).
    fn still_wanted(&self, connection: &Connection) -> bool {
        let state = self.lock_state();
        !state.shutdown && state.mode != Mode::Cut && !connection.closed.load(Ordering::SeqCst)
    }

    /// One round over the upstreams, starting with the next in round-robin order.
    fn try_upstreams(&self) -> io::Result<TcpStream> {
        let count = self.upstreams.len();
        let start = self.next_upstream.fetch_add(1, Ordering::SeqCst) % count;
        let mut last_error = None;
        for offset in 0..count {
            let addr = self.upstreams[(start + offset) % count];
            match TcpStream::connect_timeout(&addr, UPSTREAM_CONNECT_TIMEOUT) {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no upstream")))
    }
}

impl Connection {
    /// Shuts both sockets down; blocked reads and writes on them return at once.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(upstream) = lock(&self.upstream).as_ref() {
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

fn close_all(state: &mut State) {
    for connection in state.connections.values() {
        connection.close();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        let mut state = shared.lock_state();
        if state.shutdown {
            return;
        }
        let client = match accepted {
            Ok((client, _)) => client,
            Err(error) => {
                drop(state);
                tracing::debug!(%error, "fault proxy accept failed");
                thread::sleep(ACCEPT_ERROR_PAUSE);
                continue;
            }
        };
        if state.mode == Mode::Cut {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let _ = client.set_nodelay(true);
        let Ok(client_handle) = client.try_clone() else {
            continue;
        };
        let id = state.next_id;
        state.next_id += 1;
        let connection = Arc::new(Connection {
            client: client_handle,
            upstream: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        state.connections.insert(id, Arc::clone(&connection));
        drop(state);

        let worker_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("zkr-proxy-conn-{id}"))
            .spawn(move || serve_connection(&worker_shared, id, client, &connection));
        match spawned {
            Ok(worker) => {
                let mut workers = lock(&shared.workers);
                workers.retain(|worker| !worker.is_finished());
                workers.push(worker);
            }
            Err(error) => {
                tracing::warn!(%error, "fault proxy could not start a connection thread");
                shared.unregister(id);
            }
        }
    }
}

/// Runs one proxied connection: waits out a blackhole, connects upstream, then pumps both
/// directions (upstream → client on a second thread) until both are done.
fn serve_connection(
    shared: &Arc<Shared>,
    id: u64,
    client: TcpStream,
    connection: &Arc<Connection>,
) {
    if shared.wait_forwarding(connection) {
        if let Some(upstream) = attach_upstream(shared, connection) {
            pump_both(shared, client, upstream, connection);
        }
    }
    shared.unregister(id);
}

/// Connects upstream and records the stream in `connection` (so that closing it shuts the
/// upstream side down too). `None` if no upstream accepts or the connection was closed meanwhile.
fn attach_upstream(shared: &Shared, connection: &Connection) -> Option<TcpStream> {
    let upstream = match shared.connect_upstream(connection) {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!(%error, "fault proxy: no upstream accepted the connection");
            return None;
        }
    };
    let _ = upstream.set_nodelay(true);
    let handle = upstream.try_clone().ok()?;
    let _state = shared.lock_state();
    if connection.closed.load(Ordering::SeqCst) {
        let _ = upstream.shutdown(Shutdown::Both);
        return None;
    }
    *lock(&connection.upstream) = Some(handle);
    Some(upstream)
}

fn pump_both(
    shared: &Arc<Shared>,
    client: TcpStream,
    upstream: TcpStream,
    connection: &Arc<Connection>,
) {
    let (Ok(client_writer), Ok(upstream_reader)) = (client.try_clone(), upstream.try_clone())
    else {
        shared.close(connection);
        return;
    };
    let back_shared = Arc::clone(shared);
    let back_connection = Arc::clone(connection);
    let backward = thread::Builder::new()
        .name("zkr-proxy-pump".to_string())
        .spawn(move || {
            pump(
                &back_shared,
                upstream_reader,
                client_writer,
                &back_connection,
            )
        });
    match backward {
        Ok(backward) => {
            let mut client = client;
            let mut upstream = upstream;
            if forward_preamble(shared, &mut client, &mut upstream, connection) {
                pump(shared, client, upstream, connection);
            }
            let _ = backward.join();
        }
        Err(_) => shared.close(connection),
    }
}

/// Copies `from` → `to` until end-of-stream or an error. Bytes and the end-of-stream are held
/// while the proxy is blackholed. End-of-stream is passed on as a half close (the other
/// direction keeps flowing); an error closes the whole connection.
fn pump(shared: &Shared, mut from: TcpStream, mut to: TcpStream, connection: &Connection) {
    let mut buffer = vec![0u8; BUFFER_SIZE];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                shared.close(connection);
                return;
            }
        };
        if !shared.wait_forwarding(connection) {
            return;
        }
        if to.write_all(&buffer[..read]).is_err() {
            shared.close(connection);
            return;
        }
    }
    if shared.wait_forwarding(connection) {
        let _ = to.shutdown(Shutdown::Write);
    }
}

/// Applies the proxy's [`Preamble`] to the first bytes from the client. `true` when the rest of
/// the stream is to be pumped as usual; `false` when the connection is done (closed, cut, or the
/// client ended the stream inside the preamble, which is then passed on like in [`pump`]).
fn forward_preamble(
    shared: &Shared,
    from: &mut TcpStream,
    to: &mut TcpStream,
    connection: &Connection,
) -> bool {
    if shared.preamble == Preamble::Forward {
        return true;
    }
    let mut raw = Vec::new();
    let (forward, ended) = match read_election_handshake(from, &mut raw) {
        Ok(Handshake::Election { sid }) => (sid.to_be_bytes().to_vec(), false),
        // Not a handshake this proxy knows how to rewrite, or the stream ended early: as is.
        Ok(Handshake::Other) => (raw, false),
        Ok(Handshake::Ended) => (raw, true),
        Err(_) => {
            shared.close(connection);
            return false;
        }
    };
    if !shared.wait_forwarding(connection) {
        return false;
    }
    if to.write_all(&forward).is_err() {
        shared.close(connection);
        return false;
    }
    if ended {
        let _ = to.shutdown(Shutdown::Write);
        return false;
    }
    true
}

/// What [`read_election_handshake`] found.
enum Handshake {
    /// A complete handshake of the member with this sid.
    Election { sid: i64 },
    /// Bytes that are no handshake this proxy knows: forward them unchanged and go on.
    Other,
    /// The stream ended inside the handshake: forward what came, then end the stream.
    Ended,
}

/// Reads a ZooKeeper election handshake (`[version: i64][sid: i64][len: i32][address]` with a
/// negative version, or a bare non-negative `[sid: i64]`) into `raw`.
fn read_election_handshake(from: &mut TcpStream, raw: &mut Vec<u8>) -> io::Result<Handshake> {
    if !read_more(from, raw, 8)? {
        return Ok(Handshake::Ended);
    }
    let first = i64::from_be_bytes(array(&raw[..8]));
    if first >= 0 {
        return Ok(Handshake::Election { sid: first });
    }
    if !read_more(from, raw, 12)? {
        return Ok(Handshake::Ended);
    }
    let sid = i64::from_be_bytes(array(&raw[8..16]));
    let len = i32::from_be_bytes(array(&raw[16..20]));
    if !(0..=MAX_ELECTION_ADDRESS_LEN).contains(&len) || sid < 0 {
        return Ok(Handshake::Other);
    }
    if !read_more(from, raw, len as usize)? {
        return Ok(Handshake::Ended);
    }
    Ok(Handshake::Election { sid })
}

/// `bytes` as a fixed-size array; `bytes` is exactly `N` long (a slice of a range of that size).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Appends exactly `n` more bytes from `from` to `raw`; `false` if the stream ends first.
fn read_more(from: &mut TcpStream, raw: &mut Vec<u8>, n: usize) -> io::Result<bool> {
    let start = raw.len();
    raw.resize(start + n, 0);
    let mut filled = start;
    while filled < raw.len() {
        match from.read(&mut raw[filled..]) {
            Ok(0) => {
                raw.truncate(filled);
                return Ok(false);
            }
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

/// Unblocks the accept thread after `shutdown` was set: connect to the listener, or, if that
/// fails, shut the listening socket down (a blocked `accept` then returns an error on Linux).
fn wake_acceptor(addr: SocketAddr, listener: &TcpListener) {
    if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
        return;
    }
    tracing::debug!(%addr, "fault proxy: waking the accept thread by shutting the listener down");
    // SAFETY: shutdown(2) on a descriptor this process owns (a clone of the listener).
    unsafe {
        libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
