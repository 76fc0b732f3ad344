//! The recipes' retry policies, all on [`zkr::RetryPolicy`] (one mechanism: `backon`'s
//! exponential delays with jitter): operations retry through [`zkr::Client::retry`], and loops
//! that wait between attempts of something else wait on a policy's [`zkr::Backoff`].

use std::time::Duration;

use zkr::{Backoff, Client, RetryPolicy};

/// Reads and idempotent writes, bounded by `d` (typically the client's operation timeout).
pub(crate) fn bounded(d: Duration) -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(500)).max_elapsed(d)
}

/// Writes retried on connection loss within the client's operation timeout.
pub(crate) fn within_timeout(c: &Client) -> RetryPolicy {
    bounded(c.timeout())
}

/// The waits of a loop that retries a step (joining an election again, re-creating a node, a
/// delete whose outcome was unknown): from 20 ms doubling to `max`.
pub(crate) fn backoff(max: Duration) -> Backoff {
    RetryPolicy::exponential(Duration::from_millis(20), max).backoff()
}
