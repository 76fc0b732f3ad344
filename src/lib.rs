//! # zkr — a session-managed ZooKeeper client
//!
//! `zkr` is the foundation of the zkr SDK: one ZooKeeper connection whose session is managed
//! for you, with the guarantees coordination recipes (`zkr-recipes`) rely on:
//!
//! * **One ordered stream of states** ([`SessionState`]): `Connected`, `Suspended`,
//!   `Reconnected` (same session), `Lost` (decided on the client side, before the server can
//!   let anyone else take over), then `Connected` with a new session. See [`session`].
//! * **Epoch fencing**: every session is an epoch; an operation never runs in a later session
//!   than the one it was issued for ([`Client::pinned`]).
//! * **Watches that never go silently stale**: [`Client::watch_data`] and
//!   [`Client::watch_children`] re-arm across reconnects and new sessions and compare what they
//!   read with what they saw, so a change made while disconnected is always delivered. See
//!   [`watch`].
//! * **No call waits forever**: every operation has a deadline; errors are one typed [`Error`].
//!
//! ```no_run
//! # async fn demo() -> zkr::Result<()> {
//! use futures::StreamExt;
//! let client = zkr::Client::builder("127.0.0.1:2181").connect().await?;
//! client.create_with_parents("/app/config", b"v1", zkr::CreateMode::Persistent).await?;
//! let mut watch = client.watch_data("/app/config")?;
//! while let Some(event) = watch.next().await {
//!     let event = event?;
//!     println!("{:?}: {:?}", event.change, event.data());
//! }
//! # Ok(()) }
//! ```
//!
//! The wire protocol is zkr's own (a private module on tokio's `TcpStream`): recipes and users
//! see only zkr's types.

#![warn(missing_docs)]

mod client;
mod error;
pub mod fanout;
pub mod path;
mod proto;
mod retry;
pub mod session;
mod sync;
mod types;
pub mod watch;
mod wire;

#[cfg(feature = "testing")]
pub mod test_hooks;

pub use client::{Client, ClientBuilder, SessionStates};
pub use error::{Error, ErrorCode, Result};
pub use proto::tls::TlsConfig;
pub use retry::{Backoff, RetryPolicy};
pub use session::{LostReason, SessionState};
pub use types::{
    perms, Acl, AclProvider, ClientInfo, CreateMode, Op, OpResult, ReadOp, ReadResult, SessionId,
    Stat,
};
pub use watch::{
    Change, ChildrenEvent, ChildrenWatch, DataEvent, DataWatch, PersistentWatch, WatchedEvent,
    WatchedEventKind,
};
