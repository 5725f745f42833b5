//! Open-loop pacing for `--rate`: message `k` is due at `start + k / rate`.
//!
//! tokio's timers tick in milliseconds, so sleeping per message would send in 1 ms bursts
//! and charge each message up to a millisecond of the bench's own lateness. A thread that
//! sleeps with the OS's finer timer releases messages as they come due; the publishers wait
//! on it. Latency is measured from the due time, so a system (or publisher) that falls behind
//! is charged for the wait instead of quietly lowering the load (no coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

pub struct Pacer {
    rate: f64,
    start: Instant,
    /// Messages released so far (`k` may go once `released > k`).
    released: Arc<AtomicU64>,
    notify: Arc<Notify>,
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
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (released, notify, stop) = (released.clone(), notify.clone(), stop.clone());
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
                        notify.notify_waiters();
                        let next = start + Duration::from_secs_f64(due as f64 / rate);
                        std::thread::sleep(
                            next.saturating_duration_since(Instant::now())
                                .max(MIN_SLEEP),
                        );
                    }
                    released.store(u64::MAX, Ordering::Release);
                    notify.notify_waiters();
                })
                .expect("pacer thread")
        };
        Pacer {
            rate,
            start,
            released,
            notify,
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
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.released.load(Ordering::Acquire) > k {
                return;
            }
            notified.await;
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
}
