//! A bounded, coalescing queue from one producer to one subscriber, for fan-out to streams
//! that may be polled slowly or not at all.
//!
//! Every subscriber of a watch or of the session states gets one. Items queue in order up to a
//! capacity; past it the newest item is *merged* into the last queued one (by a function the
//! producer gives), so a subscriber that sleeps through 100,000 changes holds at most
//! `capacity` items, and the last of them is always the latest state. Nothing blocks the
//! producer, and nothing is lost silently: what a merge combines is up to the merge function
//! (a watch turns "deleted, then created" into "re-created", for instance).
//!
//! Closing: when the sender is dropped the receiver drains what is queued, then ends (`None`).
//! When the receiver is dropped, sends fail, so the producer can forget the subscriber.

use crate::sync::lock;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// How many items a subscriber's queue holds before newer ones are merged into the last.
pub const CAPACITY: usize = 1024;

struct State<T> {
    queue: VecDeque<T>,
    sender_gone: bool,
    receiver_gone: bool,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        lock(&self.state)
    }
}

/// The producer's end.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The subscriber's end.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue of `capacity` items (at least 1).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            sender_gone: false,
            receiver_gone: false,
            waker: None,
        }),
        capacity: capacity.max(1),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Queues `item`; when the queue is full, `merge(last, item)` replaces the last queued item.
    /// `Err(item)` if the receiver is gone.
    pub fn send_or_merge(&self, item: T, merge: impl FnOnce(T, T) -> T) -> Result<(), T> {
        let waker = {
            let mut st = self.shared.lock();
            if st.receiver_gone {
                return Err(item);
            }
            if st.queue.len() >= self.shared.capacity {
                match st.queue.pop_back() {
                    Some(last) => st.queue.push_back(merge(last, item)),
                    None => st.queue.push_back(item),
                }
            } else {
                st.queue.push_back(item);
            }
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues `item`; when the queue is full it replaces the last queued item (the latest wins).
    pub fn send_latest(&self, item: T) -> Result<(), T> {
        self.send_or_merge(item, |_, new| new)
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().receiver_gone
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.shared.lock();
            st.sender_gone = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once the sender is gone and the queue is drained.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut st = self.shared.lock();
        if let Some(item) = st.queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        if st.sender_gone {
            return Poll::Ready(None);
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The next item; `None` once the sender is gone and the queue is drained. Cancel-safe.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Whether nothing is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.receiver_gone = true;
        st.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscriber_asleep_through_100_000_items_holds_at_most_capacity() {
        let (tx, mut rx) = channel::<u64>(CAPACITY);
        for i in 0..100_000u64 {
            tx.send_latest(i).unwrap();
        }
        assert_eq!(rx.len(), CAPACITY);
        let mut got = Vec::new();
        drop(tx);
        while let Some(i) = rx.recv().await {
            got.push(i);
        }
        // The first items in order, then the latest.
        assert_eq!(got.len(), CAPACITY);
        assert_eq!(
            got[..CAPACITY - 1],
            (0..CAPACITY as u64 - 1).collect::<Vec<_>>()[..]
        );
        assert_eq!(got.last(), Some(&99_999));
    }

    #[tokio::test]
    async fn merge_combines_the_tail() {
        let (tx, mut rx) = channel::<Vec<u32>>(2);
        for i in 0..5 {
            tx.send_or_merge(vec![i], |mut a, b| {
                a.extend(b);
                a
            })
            .unwrap();
        }
        assert_eq!(rx.recv().await, Some(vec![0]));
        assert_eq!(rx.recv().await, Some(vec![1, 2, 3, 4]));
    }

    #[tokio::test]
    async fn ends_after_the_sender_and_refuses_after_the_receiver() {
        let (tx, mut rx) = channel::<u8>(4);
        tx.send_latest(1).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, None);
        let (tx, rx) = channel::<u8>(4);
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send_latest(1), Err(1));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken() {
        let (tx, mut rx) = channel::<u8>(4);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.send_latest(7).unwrap();
        assert_eq!(waiter.await.unwrap(), Some(7));
    }
}
