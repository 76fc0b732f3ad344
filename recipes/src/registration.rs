//! Heartbeat registration: an ephemeral node per service instance, in Apache Curator's
//! `curator-x-discovery` layout, so Java `ServiceDiscovery` clients see Rust instances (and
//! [`Discovery`](crate::discovery::Discovery) sees Java ones).
//!
//! # Znode layout
//! ```text
//! {base}/{name}/{id}      ephemeral, data = JSON of Curator's ServiceInstance:
//!   {"name":"api","id":"a1","address":"10.0.0.5","port":8080,"sslPort":null,
//!    "payload":{..},"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":null}
//! ```
//! Missing parents are created as container nodes (Curator's `creatingParentContainersIfNeeded`).
//!
//! # Guarantees
//! * [`Registration::new`] only validates; [`Registration::start`] creates the node and returns
//!   once it exists. From then on, while the registration is alive and a session is up, the
//!   node exists, is owned by the current session and carries the latest payload given to
//!   [`Registration::update`].
//! * After a session loss the node is re-created in the next session with the **latest**
//!   payload, never the one it was first registered with. If a node of an older session (or an
//!   older process) is still there, it is deleted (version-checked) and re-created — never a
//!   `NodeExists` error.
//! * After [`Registration::unregister`] (or drop) the node is removed and never re-created,
//!   even if the unregister raced a reconnect: the unregistered flag is checked under the same
//!   lock that re-registration holds. An `unregister` dropped mid-way leaves the removal to the
//!   drop, exactly as if it had never been called.
//!
//! # State
//! [`Registration::state`] is [`RegistrationState::Idle`] before `start`, then `Registered`,
//! `Pending` (between sessions) and finally `Unregistered`. [`Registration::changes`] streams
//! it, **coalescing** (a slow reader sees the latest state; memory stays bounded), and ends
//! after `Unregistered`.
//!
//! # Session states
//! * `Suspended`: nothing is done; the node lives as long as the session does.
//! * `Reconnected`: the node is checked (re-created if someone deleted it) and a payload
//!   update that could not be written while disconnected is written now.
//! * `Lost`: the state becomes [`RegistrationState::Pending`]; on the next `Connected` the
//!   node is re-created with the latest payload.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use zkr_recipes::{Registration, ServiceInstance};
//! let instance = ServiceInstance::new("api", "api-1")
//!     .with_address("10.0.0.5")
//!     .with_port(8080)
//!     .with_payload(serde_json::json!({"zone": "a"}));
//! let reg = Registration::new(&client, "/services", instance)?;
//! reg.start().await?;
//! reg.update(serde_json::json!({"zone": "a", "load": 0.7})).await?;
//! reg.unregister().await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tracing::Instrument;
use zkr::{Client, CreateMode, SessionId, SessionState};

use crate::changes::{Changes, Step};
use crate::error::{check_segment, Error, Result};
use crate::sync::lock;

/// Curator's `ServiceType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceType {
    /// An ephemeral registration (what [`Registration`] creates).
    #[default]
    Dynamic,
    /// A static entry.
    Static,
    /// A persistent entry.
    Permanent,
    /// An ephemeral-sequential entry.
    DynamicSequential,
}

/// One service instance, serialized exactly like Curator's `JsonInstanceSerializer` writes a
/// `ServiceInstance` (field names and order; unknown fields such as Curator 5's `enabled` are
/// ignored when reading).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInstance {
    /// Service name (the parent node).
    pub name: String,
    /// Instance id (the node name).
    pub id: String,
    /// Host or IP address.
    #[serde(default)]
    pub address: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<u16>,
    /// TLS port.
    #[serde(default)]
    pub ssl_port: Option<u16>,
    /// Application payload (any JSON).
    #[serde(default)]
    pub payload: Value,
    /// Registration time, ms since the Unix epoch.
    #[serde(rename = "registrationTimeUTC", default)]
    pub registration_time_utc: i64,
    /// Curator's service type.
    #[serde(default)]
    pub service_type: ServiceType,
    /// Curator's `UriSpec` (kept as raw JSON).
    #[serde(default)]
    pub uri_spec: Option<Value>,
}

impl ServiceInstance {
    /// A dynamic instance `id` of service `name`, with no address and a `null` payload.
    pub fn new(name: &str, id: &str) -> ServiceInstance {
        ServiceInstance {
            name: name.to_string(),
            id: id.to_string(),
            address: None,
            port: None,
            ssl_port: None,
            payload: Value::Null,
            registration_time_utc: now_ms(),
            service_type: ServiceType::Dynamic,
            uri_spec: None,
        }
    }

    /// Sets the address.
    pub fn with_address(mut self, a: &str) -> Self {
        self.address = Some(a.to_string());
        self
    }

    /// Sets the port.
    pub fn with_port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }

    /// Sets the TLS port.
    pub fn with_ssl_port(mut self, p: u16) -> Self {
        self.ssl_port = Some(p);
        self
    }

    /// Sets the payload.
    pub fn with_payload(mut self, v: Value) -> Self {
        self.payload = v;
        self
    }

    /// The node data (Curator's JSON).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Payload {
            path: format!("{}/{}", self.name, self.id),
            reason: e.to_string(),
        })
    }

    /// Parses node data written by zkr or by Curator.
    pub fn from_json(path: &str, data: &[u8]) -> Result<ServiceInstance> {
        serde_json::from_slice(data).map_err(|e| Error::Payload {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a registration stands; see [`Registration::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// Not started yet ([`Registration::start`] creates the node).
    Idle,
    /// The node exists, owned by this session.
    Registered {
        /// The owning session.
        session: SessionId,
        /// Its epoch.
        epoch: u64,
    },
    /// The session was lost; the node will be re-created in the next one.
    Pending,
    /// Unregistered (or dropped, or the client was closed); the node is gone and never comes
    /// back. Terminal.
    Unregistered,
}

struct State {
    instance: ServiceInstance,
    /// Session and epoch owning the current node.
    owner: Option<(SessionId, u64)>,
    /// Every session that may have created the node (for a safe unregister).
    sessions: Vec<i64>,
    /// The latest payload may not be in the node yet.
    dirty: bool,
}

struct Shared {
    client: Client,
    path: String,
    state: tokio::sync::Mutex<State>,
    unregistered: AtomicBool,
    status: watch::Sender<RegistrationState>,
}

/// A service instance registration; see the [module docs](self). Created idle by
/// [`new`](Self::new), registered by [`start`](Self::start). Dropping it unregisters in the
/// background.
#[must_use = "the instance is unregistered when the registration is dropped; bind it to stay registered"]
pub struct Registration {
    shared: Arc<Shared>,
    started: AtomicBool,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    finished: bool,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("path", &self.shared.path)
            .field("state", &*self.shared.status.borrow())
            .finish()
    }
}

fn conn_retry() -> zkr::RetryPolicy {
    crate::retry::bounded(Duration::MAX)
}

/// Clears the `started` flag when a `start` does not complete (failed or dropped), so that it
/// may be called again.
struct StartGuard<'a>(Option<&'a AtomicBool>);

impl Drop for StartGuard<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0 {
            f.store(false, Ordering::SeqCst);
        }
    }
}

impl Registration {
    /// A registration of `instance` at `{base}/{instance.name}/{instance.id}`, validated now
    /// (`base` a valid path, name and id single path segments); nothing is written until
    /// [`start`](Self::start).
    pub fn new(client: &Client, base: &str, instance: ServiceInstance) -> Result<Registration> {
        check_segment("service name", &instance.name)?;
        check_segment("instance id", &instance.id)?;
        zkr::path::validate_path(base, false)?;
        let path = zkr::path::join(&zkr::path::join(base, &instance.name), &instance.id);
        let (status, _) = watch::channel(RegistrationState::Idle);
        Ok(Registration {
            shared: Arc::new(Shared {
                client: client.clone(),
                path,
                state: tokio::sync::Mutex::new(State {
                    instance,
                    owner: None,
                    sessions: Vec::new(),
                    dirty: true,
                }),
                unregistered: AtomicBool::new(false),
                status,
            }),
            started: AtomicBool::new(false),
            task: std::sync::Mutex::new(None),
            finished: false,
        })
    }

    /// Creates the node (missing parents as containers) and keeps it registered, across
    /// reconnects and new sessions, until unregistered or dropped. Returns once the node exists
    /// in the current session.
    ///
    /// # Errors
    /// [`Error::Invalid`] if already started; [`Error::Zk`] for an error retrying cannot fix
    /// (e.g. `NoAuth`), [`Error::SessionLost`] if no session could be had. A failed `start`
    /// may be called again.
    ///
    /// # Cancel safety
    /// Dropped before it returns, the registration is not started (`start` may be called
    /// again); a node it may already have created is adopted by the next `start`, or deleted
    /// when the registration is dropped.
    pub async fn start(&self) -> Result<()> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Err(Error::Invalid(format!(
                "registration {} is already started",
                self.shared.path
            )));
        }
        let mut guard = StartGuard(Some(&self.started));
        let span = tracing::info_span!("zkr.registration.start", path = %self.shared.path);
        async {
            let mut st = self.shared.state.lock().await;
            establish(&self.shared, &mut st).await
        }
        .instrument(span)
        .await?;
        *lock(&self.task) = Some(tokio::spawn(maintain(self.shared.clone())));
        guard.0 = None;
        Ok(())
    }

    /// The node's path.
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// The instance with the latest payload.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads (waiting for a registration step in progress).
    pub async fn instance(&self) -> ServiceInstance {
        self.shared.state.lock().await.instance.clone()
    }

    /// The state now.
    pub fn state(&self) -> RegistrationState {
        *self.shared.status.borrow()
    }

    /// The current state, then every change: **coalescing** (a slow reader skips to the latest
    /// state; memory stays bounded). Ends after [`RegistrationState::Unregistered`].
    pub fn changes(&self) -> Changes<RegistrationState> {
        Changes::until(self.shared.status.subscribe(), |s| match s {
            RegistrationState::Unregistered => Step::Last(*s),
            s => Step::Item(*s),
        })
    }

    /// Waits until the node is registered in the current session (after `start`, or after a
    /// new session); returns that [`RegistrationState::Registered`].
    ///
    /// # Errors
    /// [`Error::Closed`] once unregistered (or the client was closed).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn wait_registered(&self) -> Result<RegistrationState> {
        self.wait_registered_timeout(Duration::MAX).await
    }

    /// [`wait_registered`](Self::wait_registered), giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`; [`Error::Closed`] once unregistered.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn wait_registered_timeout(&self, timeout: Duration) -> Result<RegistrationState> {
        let mut rx = self.shared.status.subscribe();
        let fut = async {
            loop {
                let s = *rx.borrow_and_update();
                match s {
                    RegistrationState::Registered { epoch, .. }
                        if Some(epoch) == self.shared.client.epoch() =>
                    {
                        return Ok(s)
                    }
                    RegistrationState::Unregistered => return Err(Error::Closed("registration")),
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Closed("registration"));
                }
            }
        };
        crate::wait::timed(timeout, "registration", fut).await?
    }

    /// Replaces the payload. Returns once the node carries it, or once it is certain the next
    /// (re-)registration will write it (the session was lost meanwhile, or the registration is
    /// not started yet).
    ///
    /// # Errors
    /// [`Error::Closed`] once unregistered; [`Error::Zk`] for a ZooKeeper error retrying
    /// cannot fix.
    ///
    /// # Cancel safety
    /// Dropped mid-way, the new payload is kept (the next registration or reconnect writes
    /// it) but may not be in the node yet.
    pub async fn update(&self, payload: Value) -> Result<()> {
        let span = tracing::info_span!("zkr.registration.update", path = %self.shared.path);
        async {
            if self.shared.unregistered.load(Ordering::SeqCst) {
                return Err(Error::Closed("registration"));
            }
            let mut st = self.shared.state.lock().await;
            if self.shared.unregistered.load(Ordering::SeqCst) {
                return Err(Error::Closed("registration"));
            }
            st.instance.payload = payload;
            st.dirty = true;
            write_payload(&self.shared, &mut st).await
        }
        .instrument(span)
        .await
    }

    /// Removes the node; it is never re-created afterwards.
    ///
    /// # Errors
    /// [`Error::Zk`] if the delete fails after retrying; the registration's drop then tries
    /// again in the background.
    ///
    /// # Cancel safety
    /// Cancel-safe: the registration counts as finished only once the node is gone, so if this
    /// future is dropped before, dropping the registration deletes the node in the background,
    /// exactly as if `unregister` had never been called.
    pub async fn unregister(mut self) -> Result<()> {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        let r = unregister_inner(&self.shared).await;
        self.finished = r.is_ok();
        r
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        if self.finished {
            return;
        }
        self.shared.unregistered.store(true, Ordering::SeqCst);
        let shared = self.shared.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    let mut backoff = crate::retry::backoff(Duration::from_secs(2));
                    loop {
                        match unregister_inner(&shared).await {
                            Ok(()) => return,
                            // Cut off for longer than the retries last: the node may live on
                            // with its session, so keep trying (a closed client ends this).
                            Err(e) if e.is_zk(|z| z.is_retryable()) => {
                                backoff.wait().await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, path = %shared.path, "unregister on drop failed");
                                return;
                            }
                        }
                    }
                });
            }
            Err(_) => tracing::warn!(
                path = %self.shared.path,
                "registration dropped outside a runtime; its node goes with the session"
            ),
        }
    }
}

async fn unregister_inner(shared: &Shared) -> Result<()> {
    let span = tracing::info_span!("zkr.registration.unregister", path = %shared.path);
    async {
        shared.unregistered.store(true, Ordering::SeqCst);
        let st = shared.state.lock().await;
        shared.status.send_replace(RegistrationState::Unregistered);
        if st.sessions.is_empty() {
            return Ok(()); // never started: no node was ever created
        }
        let client = &shared.client;
        let policy = zkr::RetryPolicy::default();
        // Delete the node if one of our sessions owns it (an older session's node may still
        // be there after a client-side Lost).
        let r = client
            .retry(&policy, || async {
                match client.exists(&shared.path).await? {
                    Some(stat) if st.sessions.contains(&stat.ephemeral_owner) => {
                        match client.delete(&shared.path, Some(stat.version)).await {
                            Ok(()) | Err(zkr::Error::NoNode { .. }) => Ok(()),
                            Err(zkr::Error::BadVersion { .. }) => Err(zkr::Error::ConnectionLoss),
                            Err(e) => Err(e),
                        }
                    }
                    _ => Ok(()),
                }
            })
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(zkr::Error::Closed) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    .instrument(span)
    .await
}

/// Creates the node in the current session with the latest payload (replacing a node of
/// another session). Called with the state lock held.
async fn establish(shared: &Shared, st: &mut State) -> Result<()> {
    let client = &shared.client;
    let mut attempts = 0u32;
    let mut backoff = crate::retry::backoff(Duration::from_millis(200));
    loop {
        if shared.unregistered.load(Ordering::SeqCst) {
            return Err(Error::Closed("registration"));
        }
        attempts += 1;
        if attempts > 1 {
            backoff.wait().await;
        }
        if attempts > 50 {
            return Err(Error::Invalid(format!(
                "could not register {}: the node keeps being re-created by someone else",
                shared.path
            )));
        }
        let pinned = client.pinned().await?;
        let (Some(sid), Some(epoch)) = (pinned.session_id(), pinned.epoch()) else {
            return Err(Error::SessionLost {
                what: "registration",
            });
        };
        if !st.sessions.contains(&sid.0) {
            st.sessions.push(sid.0);
            if st.sessions.len() > 16 {
                st.sessions.remove(0);
            }
        }
        let data = st.instance.to_json()?;
        match pinned
            .create_with_parents(&shared.path, &data, CreateMode::Ephemeral)
            .await
        {
            Ok(_) => {}
            Err(zkr::Error::NodeExists { .. }) => match pinned.exists(&shared.path).await {
                Ok(Some(stat)) if stat.ephemeral_owner == sid.0 => {
                    // Ours (a create whose reply was lost): make sure it has the latest data.
                    match pinned.set_data(&shared.path, &data, None).await {
                        Ok(_) => {}
                        Err(e) if e.is_connection_loss() => continue,
                        Err(zkr::Error::NoNode { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(Some(stat)) => {
                    tracing::info!(
                        path = %shared.path,
                        owner = %SessionId(stat.ephemeral_owner),
                        "replacing a registration node of another session"
                    );
                    match pinned.delete(&shared.path, Some(stat.version)).await {
                        Ok(())
                        | Err(zkr::Error::NoNode { .. })
                        | Err(zkr::Error::BadVersion { .. }) => {}
                        Err(e) if e.is_connection_loss() => {}
                        Err(e) => return Err(e.into()),
                    }
                    continue;
                }
                Ok(None) => continue,
                Err(e) if e.is_connection_loss() => continue,
                Err(e) => return Err(e.into()),
            },
            Err(e) if e.is_connection_loss() => continue,
            Err(e) => return Err(e.into()),
        }
        st.owner = Some((sid, epoch));
        st.dirty = false;
        shared.status.send_replace(RegistrationState::Registered {
            session: sid,
            epoch,
        });
        tracing::debug!(path = %shared.path, session = %sid, epoch, "registered");
        return Ok(());
    }
}

/// Writes the latest payload into the node of the current session, or leaves it to the next
/// registration. Called with the state lock held.
async fn write_payload(shared: &Shared, st: &mut State) -> Result<()> {
    let Some((_, epoch)) = st.owner else {
        return Ok(()); // pending: the next registration writes the latest payload
    };
    let client = &shared.client;
    let pinned = match client.pinned().await {
        Ok(p) if p.epoch() == Some(epoch) => p,
        Ok(_) | Err(_) => return Ok(()), // a newer session: re-registration will write it
    };
    let data = st.instance.to_json()?;
    let r = conn_retry()
        .max_elapsed(pinned.timeout())
        .run_if(
            |e| e.is_connection_loss(),
            || pinned.set_data(&shared.path, &data, None),
        )
        .await;
    match r {
        Ok(_) => {
            st.dirty = false;
            Ok(())
        }
        Err(zkr::Error::NoNode { .. }) => establish(shared, st).await,
        Err(e) if e.is_retryable() || matches!(e, zkr::Error::Closed) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Follows the session states: re-registers on a new session, repairs on a reconnect.
async fn maintain(shared: Arc<Shared>) {
    let mut states = shared.client.states();
    let mut first = true;
    while let Some(s) = states.next_state().await {
        if shared.unregistered.load(Ordering::SeqCst) {
            return;
        }
        // The state at subscription time: nothing to repair if we registered in it.
        if std::mem::take(&mut first)
            && s.is_connected()
            && s.epoch().is_some()
            && shared.status.borrow().eq(&RegistrationState::Registered {
                session: s.session().unwrap_or(SessionId(0)),
                epoch: s.epoch().unwrap_or(0),
            })
        {
            continue;
        }
        match s {
            SessionState::Connected { epoch, .. } | SessionState::Reconnected { epoch, .. } => {
                let mut st = shared.state.lock().await;
                if shared.unregistered.load(Ordering::SeqCst) {
                    return;
                }
                let same = st.owner.map(|(_, e)| e) == Some(epoch);
                let r = if !same {
                    establish(&shared, &mut st).await
                } else {
                    // Same session: the node should be there; repair if someone deleted it,
                    // and write a payload update that could not be written while away.
                    match shared.client.exists(&shared.path).await {
                        Ok(None) => establish(&shared, &mut st).await,
                        Ok(Some(_)) if st.dirty => write_payload(&shared, &mut st).await,
                        _ => Ok(()),
                    }
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, path = %shared.path, "re-registration failed; retrying on the next session event");
                }
            }
            SessionState::Lost { .. } => {
                let mut st = shared.state.lock().await;
                if shared.unregistered.load(Ordering::SeqCst) {
                    return;
                }
                st.owner = None;
                shared.status.send_replace(RegistrationState::Pending);
            }
            SessionState::Closed => {
                shared.status.send_replace(RegistrationState::Unregistered);
                return;
            }
            _ => {}
        }
    }
}
