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
use std::time::Duration;

use super::{HarnessError, ZkEnsemble};

/// How long the proxy tries to connect to one upstream before trying the next one.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);
const BUFFER_SIZE: usize = 16 * 1024;

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

    /// Connects to the next upstream in round-robin order, skipping ones that refuse.
    fn connect_upstream(&self) -> io::Result<TcpStream> {
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
    let upstream = match shared.connect_upstream() {
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
            pump(shared, client, upstream, connection);
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
