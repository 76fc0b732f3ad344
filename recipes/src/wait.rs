//! Waiting: on a recipe's `watch` channel for a condition, on a future with a timeout, and
//! deadlines that saturate instead of panicking.

use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};

/// About a century: the furthest deadline worth representing.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `timeout` from now, or `None` (no deadline: wait as long as it takes) when that is further
/// than the clock can represent, so that `Duration::MAX` means "forever" instead of a panic.
pub(crate) fn deadline_in(timeout: Duration) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(timeout)
}

/// `timeout` from now, capped at about a century.
pub(crate) fn std_deadline_in(timeout: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(timeout.min(FAR)).unwrap_or(now)
}

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

/// Sleeps for `d`, or forever when there is nothing to wait for (for a `select!` arm).
pub(crate) async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The next event of `w`, or never when there is no watch (for a `select!` arm).
pub(crate) async fn next_or_never(
    w: Option<&mut zkr::DataWatch>,
) -> Option<zkr::Result<zkr::DataEvent>> {
    match w {
        Some(w) => w.next_event().await,
        None => std::future::pending().await,
    }
}
