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
//! * While the registration is alive and a session is up, the node exists, is owned by the
//!   current session and carries the latest payload given to [`Registration::update`].
//! * After a session loss the node is re-created in the next session with the **latest**
//!   payload, never the one it was first registered with. If a node of an older session (or an
//!   older process) is still there, it is deleted (version-checked) and re-created — never a
//!   `NodeExists` error.
//! * After [`Registration::unregister`] (or drop) the node is removed and never re-created,
//!   even if the unregister raced a reconnect: the unregistered flag is checked under the same
//!   lock that re-registration holds.
//!
//! # Session states
//! * `Suspended`: nothing is done; the node lives as long as the session does.
//! * `Reconnected`: the node is checked (re-created if someone deleted it) and a payload
//!   update that could not be written while disconnected is written now.
//! * `Lost`: the status becomes [`RegistrationStatus::Pending`]; on the next `Connected` the
//!   node is re-created with the latest payload.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use zkr_recipes::registration::{Registration, ServiceInstance};
//! let instance = ServiceInstance::new("api", "api-1")
//!     .address("10.0.0.5")
//!     .port(8080)
//!     .payload(serde_json::json!({"zone": "a"}));
//! let reg = Registration::register(&client, "/services", instance).await?;
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

use crate::error::{Error, Result};

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
    pub fn address(mut self, a: &str) -> Self {
        self.address = Some(a.to_string());
        self
    }

    /// Sets the port.
    pub fn port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }

    /// Sets the TLS port.
    pub fn ssl_port(mut self, p: u16) -> Self {
        self.ssl_port = Some(p);
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, v: Value) -> Self {
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

fn check_segment(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.contains('/') || s == "." || s == ".." {
        return Err(Error::Invalid(format!(
            "{what} {s:?} must be one non-empty path segment"
        )));
    }
    Ok(())
}

/// Where a registration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationStatus {
    /// The node exists, owned by this session.
    Registered {
        /// The owning session.
        session: SessionId,
        /// Its epoch.
        epoch: u64,
    },
    /// The session was lost; the node will be re-created in the next one.
    Pending,
    /// Unregistered (or dropped); the node is gone and never comes back.
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
    status: watch::Sender<RegistrationStatus>,
}

/// A registered service instance; see the [module docs](self). Dropping it unregisters in the
/// background.
#[must_use = "the instance is unregistered when the registration is dropped; bind it to stay registered"]
pub struct Registration {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    finished: bool,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("path", &self.shared.path)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

fn conn_retry() -> zkr::RetryPolicy {
    zkr::RetryPolicy::exponential(Duration::from_millis(20), Duration::from_millis(500))
}

impl Registration {
    /// Registers `instance` under `{base}/{instance.name}/{instance.id}` and keeps it
    /// registered (across reconnects and new sessions) until unregistered or dropped.
    pub async fn register(
        client: &Client,
        base: &str,
        instance: ServiceInstance,
    ) -> Result<Registration> {
        check_segment("service name", &instance.name)?;
        check_segment("instance id", &instance.id)?;
        zkr::path::validate_path(base, false)?;
        let path = zkr::path::join(&zkr::path::join(base, &instance.name), &instance.id);
        let span = tracing::info_span!("zkr.registration.register", path = %path);
        async move {
            let (status, _) = watch::channel(RegistrationStatus::Pending);
            let shared = Arc::new(Shared {
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
            });
            {
                let mut st = shared.state.lock().await;
                establish(&shared, &mut st).await?;
            }
            let task = tokio::spawn(maintain(shared.clone()));
            Ok(Registration {
                shared,
                task,
                finished: false,
            })
        }
        .instrument(span)
        .await
    }

    /// The node's path.
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// The instance with the latest payload.
    pub async fn instance(&self) -> ServiceInstance {
        self.shared.state.lock().await.instance.clone()
    }

    /// The current status.
    pub fn status(&self) -> RegistrationStatus {
        *self.shared.status.borrow()
    }

    /// A receiver of status changes.
    pub fn status_receiver(&self) -> watch::Receiver<RegistrationStatus> {
        self.shared.status.subscribe()
    }

    /// Waits until the node is registered in the current session (e.g. after a new session).
    pub async fn wait_registered(&self, timeout: Duration) -> Result<RegistrationStatus> {
        let mut rx = self.shared.status.subscribe();
        let fut = async {
            loop {
                let s = *rx.borrow_and_update();
                match s {
                    RegistrationStatus::Registered { epoch, .. }
                        if Some(epoch) == self.shared.client.epoch() =>
                    {
                        return Ok(s)
                    }
                    RegistrationStatus::Unregistered => return Err(Error::Closed("registration")),
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Closed("registration"));
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::Timeout {
                what: "registration",
                after: timeout,
            })?
    }

    /// Replaces the payload. Returns once the node carries it, or once it is certain the next
    /// (re-)registration will write it (the session was lost meanwhile). Errors only on a
    /// closed registration or a non-retryable ZooKeeper error.
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
    pub async fn unregister(mut self) -> Result<()> {
        self.task.abort();
        // Marked finished only once the delete is done: dropped before (under a timeout, say)
        // or failed, the registration's drop deletes the node in the background instead.
        let r = unregister_inner(&self.shared).await;
        self.finished = r.is_ok();
        r
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
        if self.finished {
            return;
        }
        self.shared.unregistered.store(true, Ordering::SeqCst);
        let shared = self.shared.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = unregister_inner(&shared).await {
                        tracing::warn!(error = %e, path = %shared.path, "unregister on drop failed");
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
        shared.status.send_replace(RegistrationStatus::Unregistered);
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
    loop {
        if shared.unregistered.load(Ordering::SeqCst) {
            return Err(Error::Closed("registration"));
        }
        attempts += 1;
        if attempts > 1 {
            tokio::time::sleep(Duration::from_millis(10 * u64::from(attempts.min(20)))).await;
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
        shared.status.send_replace(RegistrationStatus::Registered {
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
            && shared.status.borrow().eq(&RegistrationStatus::Registered {
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
                shared.status.send_replace(RegistrationStatus::Pending);
            }
            SessionState::Closed => {
                shared.status.send_replace(RegistrationStatus::Unregistered);
                return;
            }
            _ => {}
        }
    }
}
