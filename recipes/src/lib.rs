//! ZooKeeper coordination recipes built on the session-managed [`zkr::Client`].
//!
//! One module per recipe; each module documents its znode layout, its guarantees and what it
//! does on `Suspended`, `Reconnected` and `Lost`. Recipes never talk to the wire client: they use
//! `zkr`'s retry, watch and session-state APIs. Nodes are named like Apache Curator's so that
//! Rust and Java services can share a lock or an election on the same path.

mod error;
mod lock_internals;
pub mod mutex;
pub mod rwlock;
pub mod semaphore;
mod sequence;

pub use error::{Error, Result};
pub use lock_internals::LossPolicy;
pub use mutex::{Mutex, MutexGuard};
pub use rwlock::RwLock;
pub use semaphore::{Lease, Semaphore};
