//! Session threads (`gateway.session_threads`): each runs a single-threaded tokio runtime that
//! holds a share of the sessions.
//!
//! A message for a channel wakes every session of it. On the process's shared runtime each of
//! those wake-ups may go to any worker, and an idle worker is woken (a system call) to steal
//! it; with sessions held by a few threads of their own, a message wakes each thread once and
//! the thread writes its sessions one after another. A new session goes to the thread that
//! holds the fewest.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::oneshot;

struct Thread {
    handle: tokio::runtime::Handle,
    /// Sessions it runs now.
    sessions: Arc<AtomicUsize>,
    /// Ends the thread's runtime (dropping what still runs on it) when sent or dropped.
    stop: Option<oneshot::Sender<()>>,
}

pub struct SessionThreads {
    threads: Vec<Thread>,
}

impl SessionThreads {
    /// Starts `n` threads; none runs the sessions on the caller's runtime.
    pub fn start(n: usize) -> anyhow::Result<SessionThreads> {
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("session thread runtime")?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("gw-sessions-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Dropping the runtime drops the sessions still on it.
                })
                .context("session thread")?;
            threads.push(Thread {
                handle,
                sessions: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
            });
        }
        Ok(SessionThreads { threads })
    }

    /// A place on the thread holding the fewest sessions; `None` without session threads (the
    /// session then runs where its connection was upgraded).
    pub fn place(&self) -> Option<Place> {
        let thread = self
            .threads
            .iter()
            .min_by_key(|t| t.sessions.load(Ordering::Relaxed))?;
        Some(Place {
            handle: thread.handle.clone(),
            held: Held::new(thread.sessions.clone()),
        })
    }

    /// Sessions each thread holds now.
    pub fn loads(&self) -> Vec<usize> {
        self.threads
            .iter()
            .map(|t| t.sessions.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for SessionThreads {
    fn drop(&mut self) {
        for t in &mut self.threads {
            if let Some(stop) = t.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

/// A session's place on a session thread.
pub struct Place {
    handle: tokio::runtime::Handle,
    held: Held,
}

impl Place {
    /// Runs the session made by `make` there; `make` gets what the session must hold until it
    /// ends (it counts the session on its thread).
    pub fn spawn<F>(self, make: impl FnOnce(Held) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(make(self.held));
    }
}

/// Counts a session on its thread from when it is placed until it ends or is dropped.
pub struct Held(Arc<AtomicUsize>);

impl Held {
    fn new(count: Arc<AtomicUsize>) -> Held {
        count.fetch_add(1, Ordering::Relaxed);
        Held(count)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn sessions_go_to_the_least_loaded_thread_and_leave_its_count_when_done() {
        let threads = SessionThreads::start(2).unwrap();
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let (names_tx, mut names_rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let mut release = release_rx.clone();
            let names = names_tx.clone();
            threads
                .place()
                .expect("two threads")
                .spawn(|held| async move {
                    let _held = held;
                    let name = std::thread::current().name().map(str::to_string);
                    names.send(name).unwrap();
                    let _ = release.wait_for(|r| *r).await;
                });
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(names_rx.recv().await.unwrap().unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "gw-sessions-0",
                "gw-sessions-0",
                "gw-sessions-1",
                "gw-sessions-1"
            ],
            "two each, each on a session thread"
        );
        assert_eq!(threads.loads(), [2, 2]);
        release_tx.send(true).unwrap();
        for _ in 0..500 {
            if threads.loads() == [0, 0] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(threads.loads(), [0, 0], "finished sessions are not counted");
    }

    #[tokio::test]
    async fn without_threads_there_is_no_place() {
        let threads = SessionThreads::start(0).unwrap();
        assert!(threads.place().is_none());
        assert!(threads.loads().is_empty());
    }

    #[tokio::test]
    async fn dropping_the_threads_drops_their_sessions() {
        let threads = SessionThreads::start(1).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        threads.place().unwrap().spawn(|held| async move {
            let _keep = (tx, held);
            std::future::pending::<()>().await;
        });
        drop(threads);
        // The sender is dropped with the session: the receiver sees the end.
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the session was dropped")
            .unwrap_err();
    }
}
