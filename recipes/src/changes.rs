//! The one shape of every long-lived handle's state: the latest value in a `watch` channel, read
//! now with `state()` / `current()`, followed with `changes()`, and waited on with `wait_for`.
//!
//! # Delivery
//! [`Changes`] is **coalescing**: it yields the value at the moment `changes()` was called, then
//! the latest value after each change. A reader that falls behind skips intermediate values and
//! sees the newest one; memory does not grow however slow it is. It ends when the handle that
//! publishes the values is dropped or closed.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::watch;

use crate::error::Result;

/// A coalescing stream of a handle's state or value (see the module doc): the value now, then
/// the latest one after every change. Also [`next_timeout`](Self::next_timeout).
#[must_use = "streams do nothing unless polled"]
pub struct Changes<T> {
    // In a mutex only so that `Changes` is `Sync`; it is only reached through `&mut`, so the
    // lock is never contended.
    inner: Mutex<BoxStream<'static, T>>,
}

impl<T> std::fmt::Debug for Changes<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

impl<T: Clone + Send + Sync + 'static> Changes<T> {
    /// Every value of `rx`: the current one first, then the latest after each change.
    pub(crate) fn new(rx: watch::Receiver<T>) -> Self {
        Self::filtered(rx, |v: &T| Some(v.clone()))
    }

    /// Like [`new`](Self::new), mapping each value through `pick` and skipping `None`s (e.g.
    /// "not loaded yet").
    pub(crate) fn filtered<V, F>(mut rx: watch::Receiver<V>, pick: F) -> Self
    where
        V: Send + Sync + 'static,
        F: Fn(&V) -> Option<T> + Send + 'static,
    {
        rx.mark_changed();
        let stream = futures::stream::unfold((rx, pick), |(mut rx, pick)| async move {
            loop {
                if rx.changed().await.is_err() {
                    return None;
                }
                let v = pick(&rx.borrow_and_update());
                if let Some(v) = v {
                    return Some((v, (rx, pick)));
                }
            }
        })
        .boxed();
        Changes {
            inner: Mutex::new(stream),
        }
    }
}

impl<T: Send + 'static> Changes<T> {
    /// Like [`filtered`](Self::filtered) for a handle that outlives its last value (a closed
    /// latch, a failed observer): `step` maps each value to an item, says to skip it, or ends
    /// the stream (after a last item, or without one). Once ended it stays ended (polling it
    /// again yields `None`).
    pub(crate) fn until<V, F>(mut rx: watch::Receiver<V>, step: F) -> Self
    where
        V: Send + Sync + 'static,
        F: FnMut(&V) -> Step<T> + Send + 'static,
    {
        rx.mark_changed();
        let stream = futures::stream::unfold(Some((rx, step)), |state| async move {
            let (mut rx, mut step) = state?;
            loop {
                if rx.changed().await.is_err() {
                    return None;
                }
                let s = step(&rx.borrow_and_update());
                match s {
                    Step::Item(v) => return Some((v, Some((rx, step)))),
                    Step::Last(v) => return Some((v, None)),
                    Step::Skip => {}
                    Step::End => return None,
                }
            }
        })
        .fuse()
        .boxed();
        Changes {
            inner: Mutex::new(stream),
        }
    }
}

/// What [`Changes::until`] makes of one value.
pub(crate) enum Step<T> {
    /// Yield this item.
    Item(T),
    /// Yield this item, then end.
    Last(T),
    /// Yield nothing for this value.
    Skip,
    /// End without an item.
    End,
}

impl<T> Changes<T> {
    /// The next value, `Ok(None)` once the stream ended, or [`Error::Timeout`] when nothing
    /// changes within `d`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `d` (`Duration::MAX` waits forever).
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped call loses nothing; the next call sees the latest value.
    ///
    /// [`Error::Timeout`]: crate::Error::Timeout
    pub async fn next_timeout(&mut self, d: Duration) -> Result<Option<T>> {
        crate::wait::timed(d, "state change", self.next()).await
    }
}

impl<T> Stream for Changes<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.inner
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .poll_next(cx)
    }
}

/// The one "latest value + stream + background task" handle behind every long-lived recipe
/// handle: a task publishes into a `watch` channel; readers get [`current`](Self::current),
/// [`changes`](Self::changes) and [`wait_until`](Self::wait_until). It is created running
/// ([`spawn`](Self::spawn)) or idle and started once ([`idle`](Self::idle),
/// [`start`](Self::start)). Dropping it stops the task.
pub(crate) struct Live<T> {
    rx: watch::Receiver<T>,
    /// Until started: the sending side, handed to the task.
    idle: Mutex<Option<watch::Sender<T>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl<T> Drop for Live<T> {
    fn drop(&mut self) {
        if let Some(task) = crate::sync::lock(&self.task).take() {
            task.abort();
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Live<T> {
    /// Not running yet: `init` is the value until [`start`](Self::start).
    pub(crate) fn idle(init: T) -> Self {
        let (tx, rx) = watch::channel(init);
        Live {
            rx,
            idle: Mutex::new(Some(tx)),
            task: Mutex::new(None),
        }
    }

    /// Spawns `run(sender)` (inside a Tokio runtime) with `init` as the first value.
    pub(crate) fn spawn<F>(init: T, run: impl FnOnce(watch::Sender<T>) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let live = Live::idle(init);
        // Idle until now and nothing to prepare: it starts.
        let _ = live.start(|| Ok(()), |(), tx| run(tx));
        live
    }

    /// Starts the task once (inside a Tokio runtime): `prepare` first (its error leaves the
    /// handle idle, to be started again), then `run(prepared, sender)`. `Ok(false)` if it was
    /// already started.
    pub(crate) fn start<P, F>(
        &self,
        prepare: impl FnOnce() -> Result<P>,
        run: impl FnOnce(P, watch::Sender<T>) -> F,
    ) -> Result<bool>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut idle = crate::sync::lock(&self.idle);
        if idle.is_none() {
            return Ok(false);
        }
        let prepared = prepare()?;
        let Some(tx) = idle.take() else {
            return Ok(false);
        };
        *crate::sync::lock(&self.task) = Some(tokio::spawn(run(prepared, tx)));
        Ok(true)
    }

    /// A receiver of the value (for streams built on it).
    pub(crate) fn receiver(&self) -> watch::Receiver<T> {
        self.rx.clone()
    }

    /// The value now.
    pub(crate) fn current(&self) -> T {
        self.rx.borrow().clone()
    }

    /// The value now, then after every change.
    pub(crate) fn changes(&self) -> Changes<T> {
        Changes::new(self.rx.clone())
    }

    /// Waits until `pick` returns `Some` for the value (tried now, then on every change);
    /// `Error::Timeout { what }` after `timeout`, `Error::Closed(closed)` once the task ended.
    pub(crate) async fn wait_until<R>(
        &self,
        timeout: Duration,
        what: &'static str,
        closed: &'static str,
        pick: impl FnMut(&T) -> Option<R>,
    ) -> Result<R> {
        crate::wait::wait_until(&self.rx, timeout, what, closed, pick).await
    }
}

/// The sending side of a recipe's **bounded** event stream: at most `capacity` events wait for
/// a slow reader; beyond that events are dropped and counted, and the reader gets one
/// "lagged" event (made by `lagged(missed)`) before the next event that fits.
pub(crate) struct EventSender<E> {
    tx: tokio::sync::mpsc::Sender<E>,
    missed: u64,
    lagged: fn(u64) -> E,
}

impl<E> EventSender<E> {
    /// A sender and its receiver, holding at most `capacity` undelivered events.
    pub(crate) fn channel(
        capacity: usize,
        lagged: fn(u64) -> E,
    ) -> (Self, tokio::sync::mpsc::Receiver<E>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let tx = EventSender {
            tx,
            missed: 0,
            lagged,
        };
        (tx, rx)
    }

    /// Queues `ev`, or counts it as missed when the reader lags.
    pub(crate) fn emit(&mut self, ev: E) {
        if self.missed > 0 {
            if self.tx.try_send((self.lagged)(self.missed)).is_err() {
                self.missed += 1;
                return;
            }
            self.missed = 0;
        }
        if self.tx.try_send(ev).is_err() {
            tracing::debug!("event dropped: the reader lags");
            self.missed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Ev {
        N(u32),
        Lagged(u64),
    }

    #[tokio::test]
    async fn a_slow_reader_gets_a_bounded_queue_then_a_lagged_marker() {
        let (mut tx, mut rx) = EventSender::channel(4, Ev::Lagged);
        for n in 0..100_000 {
            tx.emit(Ev::N(n));
        }
        let got: Vec<Ev> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, vec![Ev::N(0), Ev::N(1), Ev::N(2), Ev::N(3)]);
        tx.emit(Ev::N(100_000));
        assert_eq!(rx.try_recv().ok(), Some(Ev::Lagged(99_996)));
        assert_eq!(rx.try_recv().ok(), Some(Ev::N(100_000)));
    }

    #[tokio::test]
    async fn changes_start_with_the_value_now_and_coalesce() {
        let (tx, rx) = watch::channel(0u32);
        let mut changes = Changes::new(rx);
        assert_eq!(changes.next().await, Some(0));
        for n in 1..=100_000 {
            tx.send_replace(n);
        }
        assert_eq!(changes.next().await, Some(100_000));
        drop(tx);
        assert_eq!(changes.next().await, None);
    }
}
