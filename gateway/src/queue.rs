//! A session's outbound queue: bounded, filled by the hub (many senders), drained by the
//! session task (one receiver).
//!
//! tokio's `mpsc` allocates a block of 32 slots when a channel is made; at 72 bytes an
//! `Outbound` that is 2.3 KiB held by every session, idle or not. This queue holds no slots
//! while empty and gives back what a burst made it grow, so an idle session costs only the
//! queue's header.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Slots kept after a burst is drained.
const KEEP: usize = 8;

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    /// Most weight the queue holds.
    capacity: usize,
    /// An item's weight: 1, or what it stands for (a batch of messages counts each).
    weigh: fn(&T) -> usize,
    senders: AtomicUsize,
}

struct State<T> {
    items: VecDeque<T>,
    /// Sum of the items' weights.
    weight: usize,
    /// The receiver is gone, or the queue overflowed: sends fail with `Closed`.
    closed: bool,
}

/// Why [`Sender::try_send`] did not queue its value.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue's items weigh `capacity` (the value would pass it). It takes nothing more
    /// from then on (a session that fell behind resyncs rather than continuing with a hole):
    /// later sends are `Closed`.
    Full(T),
    /// The receiver was dropped, or the queue overflowed before.
    Closed(T),
}

pub struct Sender<T>(Arc<Shared<T>>);

pub struct Receiver<T>(Arc<Shared<T>>);

/// A queue that holds at most `capacity` items.
#[cfg(test)]
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    weighted(capacity, |_| 1)
}

/// A queue whose items weigh at most `capacity` together, each as `weigh` says.
pub fn weighted<T>(capacity: usize, weigh: fn(&T) -> usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            weight: 0,
            closed: false,
        }),
        ready: Notify::new(),
        capacity: capacity.max(1),
        weigh,
        senders: AtomicUsize::new(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `value` unless the queue is full or its receiver is gone.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let was_empty = {
            let mut state = self.0.state.lock();
            if state.closed {
                return Err(TrySendError::Closed(value));
            }
            let weight = (self.0.weigh)(&value);
            if state.weight + weight > self.0.capacity {
                state.closed = true;
                return Err(TrySendError::Full(value));
            }
            state.weight += weight;
            state.items.push_back(value);
            state.items.len() == 1
        };
        // Only the send that makes the queue non-empty wakes the receiver: it waits only after
        // finding the queue empty, and until it drains, what is added is taken with the rest.
        // A permit is stored if the receiver is not waiting yet, so no wake-up is lost.
        if was_empty {
            self.0.ready.notify_one();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: wake the receiver so it sees the end.
            self.0.ready.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// Waits for items and moves up to `limit` of them into `buf`; returns how many, or 0 once
    /// every sender is gone and the queue is empty. Cancel safe: dropped while waiting, it
    /// takes nothing.
    pub async fn recv_many(&mut self, buf: &mut Vec<T>, limit: usize) -> usize {
        loop {
            if let Some(n) = self.take(buf, limit.max(1)) {
                return n;
            }
            if self.0.senders.load(Ordering::Acquire) == 0 {
                // A send may have landed between the check above and the last drop.
                return self.take(buf, limit.max(1)).unwrap_or(0);
            }
            self.0.ready.notified().await;
        }
    }

    /// One item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut state = self.0.state.lock();
        let item = state.items.pop_front()?;
        state.weight -= (self.0.weigh)(&item);
        Some(item)
    }

    fn take(&mut self, buf: &mut Vec<T>, limit: usize) -> Option<usize> {
        let mut state = self.0.state.lock();
        if state.items.is_empty() {
            return None;
        }
        let n = limit.min(state.items.len());
        let from = buf.len();
        buf.extend(state.items.drain(..n));
        let taken: usize = buf[from..].iter().map(self.0.weigh).sum();
        state.weight -= taken;
        if state.items.is_empty() && state.items.capacity() > 4 * KEEP {
            state.items.shrink_to(KEEP);
        }
        Some(n)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.closed = true;
        state.items.clear();
        state.weight = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn bounded_in_order_and_ends_when_the_senders_are_gone() {
        let (tx, mut rx) = channel::<u32>(3);
        let tx2 = tx.clone();
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx2.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Ok(()));
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 2).await, 2);
        assert_eq!(tx.try_send(4), Ok(()), "room again once drained");
        drop(tx);
        assert_eq!(
            rx.recv_many(&mut buf, 10).await,
            2,
            "what was queued still comes"
        );
        assert_eq!(buf, vec![1, 2, 3, 4]);
        drop(tx2);
        assert_eq!(rx.recv_many(&mut buf, 10).await, 0, "then the end");
    }

    #[tokio::test]
    async fn a_weighted_queue_holds_up_to_its_capacity_in_weight() {
        // Each item weighs its own length: a batch counts every message in it.
        let (tx, mut rx) = weighted::<Vec<u32>>(4, |v| v.len());
        assert_eq!(tx.try_send(vec![1, 2]), Ok(()));
        assert_eq!(tx.try_send(vec![]), Ok(()));
        assert_eq!(tx.try_send(vec![3]), Ok(()));
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 10).await, 3);
        assert_eq!(buf, vec![vec![1, 2], vec![], vec![3]]);
        assert_eq!(
            tx.try_send(vec![4, 5, 6]),
            Ok(()),
            "drained: room for 4 again"
        );
        assert_eq!(rx.try_recv(), Some(vec![4, 5, 6]));
        assert_eq!(
            tx.try_send(vec![7, 8, 9]),
            Ok(()),
            "try_recv gives room back too"
        );
        assert_eq!(
            tx.try_send(vec![10, 11]),
            Err(TrySendError::Full(vec![10, 11])),
            "5 would pass the capacity of 4"
        );
        assert_eq!(tx.try_send(vec![12]), Err(TrySendError::Closed(vec![12])));
        buf.clear();
        assert_eq!(rx.recv_many(&mut buf, 10).await, 1);
        assert_eq!(
            buf,
            vec![vec![7, 8, 9]],
            "nothing of the batch that overflowed"
        );
    }

    #[tokio::test]
    async fn an_overflowed_queue_takes_nothing_more() {
        let (tx, mut rx) = channel::<u32>(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 10).await, 2);
        assert_eq!(
            tx.try_send(4),
            Err(TrySendError::Closed(4)),
            "no message after the one that was dropped"
        );
        assert_eq!(buf, vec![1, 2]);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_on_send_and_a_dropped_one_closes_the_queue() {
        let (tx, mut rx) = channel::<u32>(8);
        let waiter = tokio::spawn(async move {
            let mut buf = Vec::new();
            let n = rx.recv_many(&mut buf, 8).await;
            (n, buf, rx)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(7).unwrap();
        let (n, buf, rx) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!((n, buf), (1, vec![7]));
        drop(rx);
        assert_eq!(tx.try_send(8), Err(TrySendError::Closed(8)));
    }

    #[tokio::test]
    async fn cancelled_waits_lose_nothing_and_bursts_give_memory_back() {
        let (tx, mut rx) = channel::<u64>(10_000);
        // A wait cancelled (as a losing select! branch is) takes nothing.
        let mut buf = Vec::new();
        assert!(
            tokio::time::timeout(Duration::from_millis(10), rx.recv_many(&mut buf, 8))
                .await
                .is_err()
        );
        for i in 0..1_000 {
            tx.try_send(i).unwrap();
        }
        let mut got = 0;
        while got < 1_000 {
            got += rx.recv_many(&mut buf, 256).await;
        }
        assert_eq!(buf, (0..1_000).collect::<Vec<_>>());
        assert!(rx.0.state.lock().items.capacity() <= 4 * KEEP);
    }
}
