//! Open-loop pacing for `--rate`: message `k` is due at `start + k / rate`.
//!
//! tokio's timers tick in milliseconds, so sleeping per message would send in 1 ms bursts
//! and charge each message up to a millisecond of the bench's own lateness. A thread that
//! sleeps with the OS's finer timer releases messages as they come due; the publishers wait
//! on it. Latency is measured from the due time, so a system (or publisher) that falls behind
//! is charged for the wait instead of quietly lowering the load (no coordinated omission).
//!
//! Each waiter is woken alone, when its own message comes due. (A broadcast wake-up of
//! every waiter per release had 256 posters wake for each message that one of them could
//! send: 2.3 M wake-ups a second at 9,000 messages/s, which made the bench's clients use as
//! much CPU as the servers at half of peak.)

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

pub struct Pacer {
    rate: f64,
    start: Instant,
    /// Messages released so far (`k` may go once `released > k`).
    released: Arc<AtomicU64>,
    waiters: Arc<Mutex<BinaryHeap<Waiter>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Shortest sleep of the pacing thread (below this the OS timer is not reliable).
const MIN_SLEEP: Duration = Duration::from_micros(100);

impl Pacer {
    /// Releases messages at `rate` per second from `start` until `deadline`; after that
    /// every waiter is released (and should see the deadline passed).
    pub fn start(rate: f64, start: Instant, deadline: Instant) -> Pacer {
        let released = Arc::new(AtomicU64::new(0));
        let waiters: Arc<Mutex<BinaryHeap<Waiter>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (released, waiters, stop) = (released.clone(), waiters.clone(), stop.clone());
            std::thread::Builder::new()
                .name("bench-pacer".into())
                .spawn(move || {
                    loop {
                        let now = Instant::now();
                        if now >= deadline || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let due =
                            (now.duration_since(start).as_secs_f64() * rate).floor() as u64 + 1;
                        released.store(due, Ordering::Release);
                        wake_due(&waiters, due);
                        let next = start + Duration::from_secs_f64(due as f64 / rate);
                        std::thread::sleep(
                            next.saturating_duration_since(Instant::now())
                                .max(MIN_SLEEP),
                        );
                    }
                    released.store(u64::MAX, Ordering::Release);
                    wake_due(&waiters, u64::MAX);
                })
                .expect("pacer thread")
        };
        Pacer {
            rate,
            start,
            released,
            waiters,
            stop,
            thread: Some(thread),
        }
    }

    /// When message `k` is due.
    pub fn due(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// Waits until message `k` is released.
    pub async fn wait(&self, k: u64) {
        if self.released.load(Ordering::Acquire) > k {
            return;
        }
        let rx = {
            let mut waiters = self.waiters.lock();
            // Checked again under the lock: the pacer thread stores `released` before it
            // takes the lock to wake who is due, so a waiter it does not see here is seen there.
            if self.released.load(Ordering::Acquire) > k {
                return;
            }
            let (tx, rx) = oneshot::channel();
            waiters.push(Waiter { k, tx });
            rx
        };
        // The pacer thread always answers (it wakes everyone when it ends).
        let _ = rx.await;
    }
}

/// A task waiting for message `k`; the heap gives the smallest `k` first.
struct Waiter {
    k: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.k == other.k
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.k.cmp(&self.k)
    }
}

/// Wakes every waiter whose message is below `released`, and no other.
fn wake_due(waiters: &Mutex<BinaryHeap<Waiter>>, released: u64) {
    let mut waiters = waiters.lock();
    while waiters.peek().is_some_and(|w| w.k < released) {
        if let Some(w) = waiters.pop() {
            let _ = w.tx.send(());
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn releases_on_schedule_and_everything_at_the_deadline() {
        let start = Instant::now();
        let pacer = Pacer::start(1000.0, start, start + Duration::from_millis(200));
        pacer.wait(50).await;
        let waited = start.elapsed();
        // Never early (how late is the scheduler's business, and not asserted).
        assert!(waited >= Duration::from_millis(49), "{waited:?}");
        assert_eq!(pacer.due(50), start + Duration::from_millis(50));
        // Past the deadline every waiter goes.
        pacer.wait(1_000_000).await;
        assert!(start.elapsed() >= Duration::from_millis(199));
    }

    #[test]
    fn only_the_waiters_whose_message_is_due_are_woken() {
        let waiters = Mutex::new(BinaryHeap::new());
        let mut rx: Vec<(u64, oneshot::Receiver<()>)> = Vec::new();
        for k in [9, 1, 5, 6] {
            let (tx, r) = oneshot::channel();
            waiters.lock().push(Waiter { k, tx });
            rx.push((k, r));
        }
        wake_due(&waiters, 6);
        for (k, r) in &mut rx {
            let woken = r.try_recv().is_ok();
            assert_eq!(woken, *k < 6, "message {k}");
        }
        assert_eq!(waiters.lock().len(), 2);
        wake_due(&waiters, u64::MAX);
        assert!(waiters.lock().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiters_each_go_when_their_message_is_due() {
        let start = Instant::now();
        let pacer = Arc::new(Pacer::start(
            2000.0,
            start,
            start + Duration::from_secs(600),
        ));
        let tasks: Vec<_> = (0..200u64)
            .rev()
            .map(|k| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    pacer.wait(k).await;
                    (k, Instant::now())
                })
            })
            .collect();
        for t in tasks {
            let (k, at) = t.await.unwrap();
            assert!(at >= pacer.due(k), "message {k} went early");
        }
        // Each went on its own release, not on the deadline's release of everyone.
        assert_ne!(pacer.released.load(Ordering::Acquire), u64::MAX);
    }
}
