//! Retrying idempotent operations.
//!
//! [`RetryPolicy`] is exponential backoff with jitter (the delay sequence comes from the
//! `backon` crate), bounded by elapsed time and/or attempts. Only errors for which [`Error::is_retryable`] holds are
//! retried (connection loss, timeouts, session loss, a read-only server); everything else is
//! returned at once.
//!
//! ```
//! # async fn demo(client: zkr::Client) -> zkr::Result<()> {
//! use std::time::Duration;
//! let policy = zkr::RetryPolicy::exponential(Duration::from_millis(20), Duration::from_secs(1))
//!     .max_elapsed(Duration::from_secs(10));
//! let data = client.retry(&policy, || client.get_data("/config")).await?;
//! # let _ = data; Ok(()) }
//! ```

use std::future::Future;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;

use crate::error::{Error, Result};

/// How to retry: exponential backoff with jitter, bounded by time and/or attempts.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    initial: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: f64,
    max_elapsed: Option<Duration>,
    max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    /// 10 ms doubling to 1 s, ±50 % jitter, for at most 30 s.
    fn default() -> Self {
        RetryPolicy::exponential(Duration::from_millis(10), Duration::from_secs(1))
            .max_elapsed(Duration::from_secs(30))
    }
}

impl RetryPolicy {
    /// Exponential backoff from `initial` doubling up to `max_delay`, ±50 % jitter, unbounded.
    pub fn exponential(initial: Duration, max_delay: Duration) -> Self {
        RetryPolicy {
            initial,
            max_delay,
            multiplier: 2.0,
            jitter: 0.5,
            max_elapsed: None,
            max_attempts: None,
        }
    }

    /// Never retry.
    pub fn never() -> Self {
        RetryPolicy::exponential(Duration::ZERO, Duration::ZERO).max_attempts(1)
    }

    /// Stop retrying once this much time has passed since the first attempt.
    pub fn max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }

    /// Stop after this many attempts in total (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }

    /// Jitter factor in `0.0..=1.0` (0.5: each delay is randomised within ±50 %).
    pub fn jitter(mut self, f: f64) -> Self {
        self.jitter = f.clamp(0.0, 1.0);
        self
    }

    /// The delays between attempts, without jitter: `initial`, doubling, capped at `max_delay`.
    fn delays(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::new()
            .with_min_delay(self.initial)
            .with_max_delay(self.max_delay.max(self.initial))
            .with_factor(self.multiplier as f32)
            .without_max_times()
            .build()
    }

    /// `d` randomised within ±`jitter`.
    fn jittered(&self, d: Duration) -> Duration {
        if self.jitter <= 0.0 || d.is_zero() {
            return d;
        }
        let f = 1.0 + self.jitter * (2.0 * rand::random::<f64>() - 1.0);
        d.mul_f64(f.max(0.0))
    }

    /// The delays between attempts, jittered: for loops that wait between attempts of
    /// something other than one fallible call (a reconnect, a lost compare-and-set, a watch
    /// that keeps failing). Unbounded: the caller decides when to stop.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            delays: self.delays(),
            policy: self.clone(),
        }
    }

    /// Runs `f` until it succeeds, fails with a non-retryable error, or the policy gives up
    /// (then the last error is returned).
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run_if(Error::is_retryable, f).await
    }

    /// Like [`run`](Self::run), retrying only the errors `retryable` accepts.
    pub async fn run_if<T, F, Fut>(&self, retryable: impl Fn(&Error) -> bool, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut delays = self.delays();
        let start = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let err: Error = match f().await {
                Ok(v) => return Ok(v),
                Err(e) if !retryable(&e) => return Err(e),
                Err(e) => e,
            };
            if self.max_attempts.is_some_and(|m| attempts >= m) {
                return Err(err);
            }
            let next = delays.next().map(|d| self.jittered(d)).filter(|d| {
                self.max_elapsed
                    .is_none_or(|max| start.elapsed().saturating_add(*d) <= max)
            });
            match next {
                Some(d) => {
                    tracing::debug!(attempt = attempts, delay_ms = d.as_millis() as u64, error = %err, "retrying");
                    tokio::time::sleep(d).await;
                }
                None => return Err(err),
            }
        }
    }
}

/// The jittered delays of a [`RetryPolicy`] ([`RetryPolicy::backoff`]); never ends.
#[derive(Debug)]
pub struct Backoff {
    delays: backon::ExponentialBackoff,
    policy: RetryPolicy,
}

impl Backoff {
    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        if let Some(d) = self.next() {
            tokio::time::sleep(d).await;
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.delays.next().unwrap_or(self.policy.max_delay);
        Some(self.policy.jittered(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn retries_only_retryable_errors() {
        let n = AtomicU32::new(0);
        let p = RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(2))
            .max_attempts(5);
        let r: Result<()> = p
            .run(|| async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(Error::ConnectionLoss)
            })
            .await;
        assert_eq!(r, Err(Error::ConnectionLoss));
        assert_eq!(n.load(Ordering::SeqCst), 5);

        n.store(0, Ordering::SeqCst);
        let r: Result<()> = p
            .run(|| async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(Error::NoNode { path: "/x".into() })
            })
            .await;
        assert!(matches!(r, Err(Error::NoNode { .. })));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn delays_double_up_to_the_cap_within_the_jitter() {
        let p = RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(80));
        let plain: Vec<Duration> = p.delays().take(6).collect();
        for (d, want) in plain.iter().zip([10u64, 20, 40, 80, 80, 80]) {
            let want = Duration::from_millis(want);
            // (the factor is an f32 in backon: 40 ms may come out as 39.99 ms)
            assert!(d.abs_diff(want) < Duration::from_millis(1), "{plain:?}");
        }
        for _ in 0..100 {
            let d = p.jittered(Duration::from_millis(100));
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(150),
                "{d:?}"
            );
        }
        assert_eq!(
            p.clone().jitter(0.0).jittered(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        let plain: Vec<Duration> = p.clone().jitter(0.0).backoff().take(6).collect();
        assert!(plain[5].abs_diff(Duration::from_millis(80)) < Duration::from_millis(1));
    }

    #[tokio::test]
    async fn max_elapsed_bounds_the_retries() {
        let p = RetryPolicy::exponential(Duration::from_millis(5), Duration::from_millis(5))
            .jitter(0.0)
            .max_elapsed(Duration::from_millis(60));
        let t = Instant::now();
        let r: Result<()> = p.run(|| async { Err(Error::ConnectionLoss) }).await;
        assert_eq!(r, Err(Error::ConnectionLoss));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
}
