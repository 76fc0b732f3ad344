//! Who leads an election, for processes that do not take part: [`LeaderObserver`] follows the
//! leader in the background; [`leader`] and [`participants`] read the election once.
//!
//! The election is the one of the [leader latch](crate::leader_latch) (Curator's `LeaderLatch`
//! layout: `<path>/_c_<uuid>-latch-NNNNNNNNNN`, data = participant id); the leader is the
//! participant whose node has the lowest sequence number. Observing writes nothing.
//!
//! # Delivery
//! [`LeaderObserver::changes`] is **coalescing** (a watch channel): it yields the leader known
//! now (once the first read completed), then the leader after each change; a reader that falls
//! behind skips intermediate leaders and sees the latest. Items are bare values: `None` means
//! nobody takes part.
//!
//! # Session events and errors
//! The observer is built on [`Client::watch_children`], so it survives `Suspended`,
//! `Reconnected` and new sessions (it reads the election again after each). A read that fails
//! for a transient reason is retried with backoff. It stops for good only when the client is
//! closed ([`ObserverState::Closed`]) or ZooKeeper refuses to let it read the election
//! ([`ObserverState::Failed`] with the error); the stream then ends and [`LeaderObserver::state`]
//! says why.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use futures::StreamExt;
//! use zkr_recipes::LeaderObserver;
//!
//! let observer = LeaderObserver::new(&client, "/app/election")?;
//! observer.start()?;
//! let mut changes = observer.changes();
//! while let Some(leader) = changes.next().await {
//!     match leader {
//!         Some(p) => println!("{} leads (fencing token {})", p.id, p.token),
//!         None => println!("nobody leads"),
//!     }
//! }
//! println!("observer stopped: {:?}", observer.state());
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;
use zkr::{Client, SessionId};

use crate::changes::{Changes, Step};
use crate::error::{Error, Result};
use crate::leader_latch::MARKER;
use crate::sequence;
use crate::sync::lock;

/// A member of an election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    /// The participant id (the node's data).
    pub id: String,
    /// Full path of its latch node.
    pub path: String,
    /// `czxid` of its node (the fencing token it has or will have as leader).
    pub token: i64,
    /// The session owning the node.
    pub session: SessionId,
    /// Whether it is first in line (the leader).
    pub is_leader: bool,
}

/// What a [`LeaderObserver`] knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObserverState {
    /// Not started.
    Idle,
    /// Started; the first read has not completed yet.
    Loading,
    /// Following: the leader as of the last read (`None`: nobody takes part).
    Following(Option<Participant>),
    /// Closed ([`LeaderObserver::close`], or the client was closed); terminal.
    Closed,
    /// ZooKeeper refuses to let us read the election (the error); terminal.
    Failed(Error),
}

/// Follows who leads an election; see the [module docs](self).
///
/// Dropping it stops following.
#[must_use = "the observer stops when dropped"]
pub struct LeaderObserver {
    client: Client,
    path: String,
    state: Arc<watch::Sender<ObserverState>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for LeaderObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderObserver")
            .field("path", &self.path)
            .field("state", &self.state())
            .finish()
    }
}

impl LeaderObserver {
    /// An observer of the election at `path` (validated here; nothing is read until
    /// [`start`](Self::start)).
    pub fn new(client: &Client, path: &str) -> Result<LeaderObserver> {
        zkr::path::validate_path(path, false)?;
        Ok(LeaderObserver {
            client: client.clone(),
            path: path.to_string(),
            state: Arc::new(watch::channel(ObserverState::Idle).0),
            task: Mutex::new(None),
        })
    }

    /// Starts following in the background (needs a Tokio runtime). Starting twice, or after
    /// [`close`](Self::close), is `Error::Invalid`.
    pub fn start(&self) -> Result<()> {
        let mut task = lock(&self.task);
        if *self.state.borrow() != ObserverState::Idle {
            return Err(Error::Invalid(format!(
                "the leader observer of {} was already started",
                self.path
            )));
        }
        let watch = self.client.watch_children(&self.path)?;
        self.state.send_replace(ObserverState::Loading);
        let span = tracing::debug_span!("zkr.leader_observer.follow", path = %self.path);
        *task = Some(tokio::spawn(
            follow(
                self.client.clone(),
                self.path.clone(),
                watch,
                self.state.clone(),
            )
            .instrument(span),
        ));
        Ok(())
    }

    /// The election path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What the observer knows now.
    pub fn state(&self) -> ObserverState {
        self.state.borrow().clone()
    }

    /// The leader as of the last read (`None`: nobody, or not known yet; see
    /// [`state`](Self::state)).
    pub fn current(&self) -> Option<Participant> {
        match &*self.state.borrow() {
            ObserverState::Following(p) => p.clone(),
            _ => None,
        }
    }

    /// The leader now (once known), then after every change of leader; coalescing. Ends when
    /// the observer is closed or fails ([`state`](Self::state) says which).
    pub fn changes(&self) -> Changes<Option<Participant>> {
        Changes::until(self.state.subscribe(), |s| match s {
            ObserverState::Idle | ObserverState::Loading => Step::Skip,
            ObserverState::Following(p) => Step::Item(p.clone()),
            ObserverState::Closed | ObserverState::Failed(_) => Step::End,
        })
    }

    /// Stops following; the state becomes `Closed` and streams end. Idempotent.
    pub fn close(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        self.state.send_if_modified(|s| match s {
            ObserverState::Closed | ObserverState::Failed(_) => false,
            _ => {
                *s = ObserverState::Closed;
                true
            }
        });
    }
}

impl Drop for LeaderObserver {
    fn drop(&mut self) {
        self.close();
    }
}

/// The observer's task: reads the leader on every change of the election's children.
async fn follow(
    client: Client,
    path: String,
    mut watch: zkr::ChildrenWatch,
    state: Arc<watch::Sender<ObserverState>>,
) {
    // The name of the leader's node we published last (`Some(None)`: nobody).
    let mut last: Option<Option<String>> = None;
    // After a failed read: read again after this delay (doubling), even without a new event.
    let mut retry: Option<Duration> = None;
    let mut head: Option<String> = None;
    let policy = zkr::RetryPolicy::default();
    loop {
        let delay = retry;
        let ev = tokio::select! {
            ev = watch.next_event() => Some(ev),
            _ = crate::wait::sleep_or_never(delay) => None,
        };
        match ev {
            Some(None) => {
                // The client was closed.
                publish(&state, ObserverState::Closed);
                return;
            }
            Some(Some(Err(e))) if e.is_auth_error() => {
                tracing::error!(error = %e, "the election's ACL refuses us; the observer stops");
                publish(&state, ObserverState::Failed(e.into()));
                return;
            }
            Some(Some(Err(e))) => {
                // The watch reads again by itself.
                tracing::debug!(error = %e, "watching the election failed; retrying");
                continue;
            }
            Some(Some(Ok(ev))) => {
                head = ev.children().and_then(|c| {
                    sequence::contenders(c, &[MARKER], None)
                        .into_iter()
                        .next()
                        .map(|c| c.name)
                });
                // Fast path: the head did not change.
                if retry.is_none() && last.as_ref() == Some(&head) {
                    continue;
                }
            }
            None => {} // read again after a failure
        }
        let current = match &head {
            None => Ok(None),
            Some(_) => client
                .retry(&policy, || read_participants(&client, &path, true))
                .await
                .map(|v| v.into_iter().next()),
        };
        match current {
            Ok(p) => {
                retry = None;
                let name = p.as_ref().map(|p| node_name(&p.path).to_string());
                if last.as_ref() != Some(&name) {
                    last = Some(name);
                    publish(&state, ObserverState::Following(p));
                }
            }
            Err(zkr::Error::Closed) => {
                publish(&state, ObserverState::Closed);
                return;
            }
            Err(e) if e.is_auth_error() => {
                tracing::error!(error = %e, "the election's ACL refuses us; the observer stops");
                publish(&state, ObserverState::Failed(e.into()));
                return;
            }
            Err(e) => {
                let d = retry.map_or(Duration::from_millis(100), |d| {
                    (d * 2).min(Duration::from_secs(5))
                });
                tracing::warn!(error = %e, retry_in = ?d, "reading the leader failed");
                retry = Some(d);
            }
        }
    }
}

/// Publishes `new` unless the observer already ended (a close racing the task keeps `Closed`).
fn publish(state: &watch::Sender<ObserverState>, new: ObserverState) {
    state.send_if_modified(|s| match s {
        ObserverState::Closed | ObserverState::Failed(_) => false,
        _ => {
            *s = new;
            true
        }
    });
}

fn node_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Reads the participants of `path` in line order (only the first with `first_only`).
pub(crate) async fn read_participants(
    client: &Client,
    path: &str,
    first_only: bool,
) -> zkr::Result<Vec<Participant>> {
    if !first_only {
        // Everyone: the children read together (one listing, the reads pipelined). A node
        // gone between the listing and its read is left out; the first one left leads, since
        // later nodes only ever line up behind it.
        let nodes = crate::child_cache::read_children(client, path)
            .await
            .map_err(|e| match e {
                Error::Zk(e) => e,
                e => zkr::Error::Unexpected(e.to_string()),
            })?;
        let names: Vec<String> = nodes.keys().cloned().collect();
        let order = sequence::contenders(&names, &[MARKER], None);
        let out = order
            .into_iter()
            .filter_map(|c| {
                let (data, st) = nodes.get(&c.name)?;
                Some((c.name, data, st))
            })
            .enumerate()
            .map(|(i, (name, data, st))| Participant {
                id: String::from_utf8_lossy(data).into_owned(),
                path: zkr::path::join(path, &name),
                token: st.czxid,
                session: SessionId(st.ephemeral_owner),
                is_leader: i == 0,
            })
            .collect();
        return Ok(out);
    }
    'again: for _ in 0..20 {
        let children = match client.get_children(path).await {
            Ok(c) => c,
            Err(e) if e.is_no_node() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let order = sequence::contenders(&children, &[MARKER], None);
        let mut out = Vec::with_capacity(order.len());
        for c in order {
            let node = zkr::path::join(path, &c.name);
            match client.get_data(&node).await {
                Ok((data, st)) => {
                    out.push(Participant {
                        id: String::from_utf8_lossy(&data).into_owned(),
                        path: node,
                        token: st.czxid,
                        session: SessionId(st.ephemeral_owner),
                        is_leader: out.is_empty(),
                    });
                    if first_only {
                        return Ok(out);
                    }
                }
                // The first one went between listing and reading: list again.
                Err(e) if e.is_no_node() && out.is_empty() => continue 'again,
                Err(e) if e.is_no_node() => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(out);
    }
    Err(zkr::Error::Unexpected(format!(
        "the election at {path} kept changing while being read"
    )))
}

/// The current leader of the election at `path` (`None` when nobody takes part); one read.
///
/// # Errors
/// The ZooKeeper error if the election cannot be read (after the client's retries), e.g.
/// `InvalidPath`, `NoAuth`, `Closed`.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn leader(client: &Client, path: &str) -> Result<Option<Participant>> {
    let span = tracing::debug_span!("zkr.leader_observer.leader", path);
    zkr::path::validate_path(path, false)?;
    let policy = zkr::RetryPolicy::default();
    let v = client
        .retry(&policy, || read_participants(client, path, true))
        .instrument(span)
        .await?;
    Ok(v.into_iter().next())
}

/// Everyone in the election at `path`, in line order (the first leads); one read.
///
/// # Errors
/// The ZooKeeper error if the election cannot be read (after the client's retries), e.g.
/// `InvalidPath`, `NoAuth`, `Closed`.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn participants(client: &Client, path: &str) -> Result<Vec<Participant>> {
    let span = tracing::debug_span!("zkr.leader_observer.participants", path);
    zkr::path::validate_path(path, false)?;
    let policy = zkr::RetryPolicy::default();
    Ok(client
        .retry(&policy, || read_participants(client, path, false))
        .instrument(span)
        .await?)
}
