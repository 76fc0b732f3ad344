//! ZooKeeper coordination recipes built on the session-managed [`zkr::Client`].
//!
//! One module per recipe; each module documents its znode layout, its guarantees and what it
//! does on `Suspended`, `Reconnected` and `Lost`. Recipes never talk to the wire client: they use
//! `zkr`'s retry, watch and session-state APIs. Nodes are named like Apache Curator's so that
//! Rust and Java services can share a lock or an election on the same path.
//!
//! **ACLs.** A recipe creates its nodes (and their container parents) through the client it was
//! given, so they get that handle's ACL: the client's `default_acl` or `acl_provider`, or, for one
//! recipe only, the ACL of a handle from [`zkr::Client::with_acl`]:
//! `Mutex::new(&client.with_acl(acl), "/locks/db")`. A recipe that the ACLs refuse
//! (`NoAuth`, `AuthFailed`, `InvalidAcl`) fails with that error instead of retrying.

#![warn(missing_docs)]

pub mod atomic_counter;
mod changes;
pub mod config;
pub mod config_tree;
pub mod discovery;
mod error;
mod hold;
pub mod id_blocks;
pub mod leader_latch;
pub mod leader_selector;
mod lock_internals;
pub mod mutex;
pub mod registration;
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
pub use leader_selector::{LeaderSelector, Leadership, SelectorHandle};
pub use mutex::{Mutex, MutexGuard};
pub use registration::{Registration, RegistrationStatus, ServiceInstance};
pub use rwlock::RwLock;
pub use semaphore::{Lease, Semaphore};
pub use sequential_ids::SequentialIds;
pub use tree_cache::{
    CacheEvent, CacheSnapshot, CacheState, CacheSubscription, CacheUpdate, CachedNode, PathCache,
    TreeCache,
};
pub use work_queue::{
    ClaimedTask, Coordinator, QueueSnapshot, TaskState, TaskView, WorkQueue, Worker,
};
