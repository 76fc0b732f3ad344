//! ZooKeeper coordination recipes built on the session-managed [`zkr::Client`].
//!
//! One module per recipe; each module documents its znode layout, its guarantees and what it
//! does on `Suspended`, `Reconnected` and `Lost`. Recipes never talk to the wire client: they use
//! `zkr`'s retry, watch and session-state APIs. Nodes are named like Apache Curator's so that
//! Rust and Java services can share a lock or an election on the same path.
//!
//! # One convention
//! Every recipe is used the same way; learn it on [`Mutex`] and the others follow.
//!
//! **Construction.** `X::new(&client, path, ...)` validates its arguments and returns a typed
//! error for bad input; it does no I/O and never panics. Options are chained `with_*` methods
//! (`with_loss_policy`, `with_data`, `with_timeout`, `with_max_depth`, ...). A recipe that runs
//! in the background (a [`LeaderLatch`], a [`Registration`], a [`TreeCache`], a [`Discovery`])
//! is then started with `start()`, as in Curator and kazoo: `async` when it must write before it
//! is running (the latch's node, the registration's node), plain when the work happens in the
//! background (caches). Operations that hand out something held — `acquire`, `read`, `write`,
//! `claim`, `subscribe` — need no `start`.
//!
//! **Waiting.** Every wait comes in three forms: `op()` waits as long as it takes,
//! `op_timeout(d)` gives up with [`Error::Timeout`] after `d` (`Duration::MAX` means "forever",
//! never a panic), and `try_op()` answers at once:
//! [`Mutex::acquire`] / [`Mutex::acquire_timeout`] / [`Mutex::try_acquire`], the same on
//! [`Semaphore`], `read` / `write` and their forms on [`RwLock`], `claim` on a work-queue
//! worker. Waits on a handle's state are `wait_<what>()` / `wait_<what>_timeout(d)`
//! (`wait_leader`, `wait_registered`, `wait_loaded`, and `wait_for(pred)` /
//! `wait_for_timeout(pred, d)` for any condition); their non-blocking form is `state()`.
//! On a timeout nothing is held and nothing is left behind.
//!
//! **State.** Every long-lived handle tells where it stands the same way:
//! * `state()` is the state now (a small `Clone` value) and `current()` the latest value a
//!   handle keeps (a config value, a cached tree, the discovered instances, the queue's
//!   progress); `changes()` is a [`Changes`] stream of it;
//! * what is *held* — a [`MutexGuard`], a [`Lease`], a work claim, a [`Leadership`] term —
//!   has `is_lost()`, `lost().await`, `valid_until()` and a [`Fence`] (`fence()`): the token
//!   that strictly increases across holders, to stamp writes with;
//! * one [`LossPolicy`] says when a hold counts as lost: on `Suspended` (the default) or only on
//!   `Lost`.
//!
//! **Streams and memory.** Stream items are plain values, never `Result`s; a stream ends when
//! its handle is dropped or closed, and the reason is in `state()`. No stream grows without
//! bound: `changes()` and `current()` are *coalescing* (a slow reader skips to the latest
//! value), and event streams are *bounded* — a reader that falls behind gets an explicit marker
//! ([`ConfigEvent::Lagged`], [`TreeEvent::Lagged`]) or a fresh snapshot
//! ([`CacheUpdate::Snapshot`]) instead of the events it missed.
//!
//! **Errors.** One [`Error`] for the whole crate. [`Error::is_timeout`] and
//! [`Error::is_session_lost`] also look inside wrapped [`zkr::Error`]s. Errors that retrying
//! cannot fix (`NoAuth`, `AuthFailed`, bad input) come back at once; connection loss is retried
//! within the session's limits.
//!
//! **Cancellation and drop.** Every future can be dropped at any await point without leaving
//! anything behind: a dropped acquire removes its node, a dropped `release` leaves the guard to
//! release on drop. Guards, leases, claims, registrations, latches and caches release or stop
//! when dropped (in the background); the explicit `release()` / `close()` / `unregister()`
//! report the outcome. Each public async method documents its `# Errors` and `# Cancel safety`.
//!
//! **Tracing.** Every operation runs in a `tracing` span named `zkr.<recipe>.<operation>`.
//!
//! # ACLs
//! A recipe creates its nodes (and their container parents) through the client it was given, so
//! they get that handle's ACL: the client's `default_acl` or `acl_provider`, or, for one recipe
//! only, the ACL of a handle from [`zkr::Client::with_acl`]:
//! `Mutex::new(&client.with_acl(acl), "/locks/db")`. A recipe that the ACLs refuse
//! (`NoAuth`, `AuthFailed`, `InvalidAcl`) fails with that error instead of retrying.
//!
//! ```no_run
//! # async fn demo(client: zkr::Client) -> zkr_recipes::Result<()> {
//! use std::time::Duration;
//! use zkr_recipes::{LossPolicy, Mutex};
//!
//! let mutex = Mutex::new(&client, "/locks/printer")?.with_loss_policy(LossPolicy::Suspended);
//! match mutex.acquire_timeout(Duration::from_secs(5)).await {
//!     Ok(guard) => {
//!         // Stamp writes to the printer with guard.fence().token; stop when lost.
//!         tokio::select! {
//!             _ = guard.lost() => println!("lost the lock"),
//!             _ = tokio::time::sleep(Duration::from_secs(1)) => guard.release().await?,
//!         }
//!     }
//!     Err(e) if e.is_timeout() => println!("busy"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod atomic_counter;
mod changes;
mod child_cache;
pub mod config;
pub mod config_tree;
pub mod discovery;
mod error;
mod hold;
pub mod id_blocks;
pub mod leader_latch;
pub mod leader_observer;
pub mod leader_selector;
mod lock_internals;
pub mod mutex;
pub mod registration;
mod retry;
pub mod rwlock;
pub mod semaphore;
mod sequence;
pub mod sequential_ids;
mod sync;
pub mod tree_cache;
mod wait;
pub mod work_queue;

pub use atomic_counter::{AtomicCounter, AtomicValue};
pub use changes::Changes;
pub use config::{Config, ConfigEvent, ConfigSubscription, Versioned};
pub use config_tree::{ConfigTree, TreeEvent, TreeSnapshot, TreeSubscription};
pub use discovery::Discovery;
pub use error::{Error, Result};
pub use hold::{Fence, LossPolicy};
pub use id_blocks::IdBlocks;
pub use leader_latch::{LatchState, LeaderLatch};
pub use leader_observer::{LeaderObserver, ObserverState, Participant};
pub use leader_selector::{LeaderSelector, Leadership, SelectorHandle};
pub use mutex::{Mutex, MutexGuard};
pub use registration::{Registration, RegistrationState, ServiceInstance, ServiceType};
pub use rwlock::RwLock;
pub use semaphore::{Lease, Semaphore};
pub use sequential_ids::SequentialIds;
pub use tree_cache::{
    CacheEvent, CacheSnapshot, CacheState, CacheSubscription, CacheUpdate, CachedNode, PathCache,
    TreeCache,
};
pub use work_queue::{
    ClaimedTask, Coordinator, Outcome, Progress, QueueSnapshot, TaskState, TaskView, WorkQueue,
    Worker,
};
