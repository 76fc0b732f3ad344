//! Waiting on a recipe's `watch` channel: for a condition with a timeout, or as a stream of
//! loaded snapshots.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Waits until `pick` returns `Some` for the channel's value (tried on the current value first,
/// then on every change); `Error::Timeout { what }` after `timeout`, `Error::Closed(closed)` if
/// the sender goes away.
pub(crate) async fn wait_until<V, R>(
    rx: &watch::Receiver<V>,
    timeout: Duration,
    what: &'static str,
    closed: &'static str,
    mut pick: impl FnMut(&V) -> Option<R>,
) -> Result<R> {
    let mut rx = rx.clone();
    let fut = async {
        loop {
            if let Some(r) = pick(&rx.borrow_and_update()) {
                return Ok(r);
            }
            if rx.changed().await.is_err() {
                return Err(Error::Closed(closed));
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Timeout {
            what,
            after: timeout,
        })?
}

/// `fut` (typically the next event of a recipe's stream), or `Error::Timeout { what }` if it
/// does not complete within `timeout`.
pub(crate) async fn timed<T>(
    timeout: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Timeout {
            what,
            after: timeout,
        })
}

/// Every snapshot published on `rx` after this call (coalescing: a slow reader sees the latest),
/// skipping `None` (not loaded yet); ends when the sender goes away.
pub(crate) fn loaded_snapshots<T: Clone + Send + Sync + 'static>(
    rx: watch::Receiver<Option<Arc<T>>>,
) -> BoxStream<'static, T> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            if rx.changed().await.is_err() {
                return None;
            }
            let snap = rx.borrow_and_update().clone();
            if let Some(s) = snap {
                return Some((s.as_ref().clone(), rx));
            }
        }
    })
    .boxed()
}
