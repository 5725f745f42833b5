//! Task threads: a few threads, each running a single-threaded tokio runtime that holds a
//! share of many similar tasks (a gateway's sessions, `gateway.session_threads`; the bench's
//! subscribers).
//!
//! One event that wakes many such tasks at once (a message for a channel wakes every session
//! of it) sends each wake-up, on a multi-threaded runtime, to any worker, and an idle worker
//! is woken (a system call) to steal it. With the tasks held by a few threads of their own, the
//! event wakes each thread once, and the thread runs its tasks one after another. A new task
//! goes to the thread that holds the fewest.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::oneshot;

struct Thread {
    handle: tokio::runtime::Handle,
    /// Tasks it runs now.
    tasks: Arc<AtomicUsize>,
    /// Ends the thread's runtime (dropping what still runs on it) when sent or dropped.
    stop: Option<oneshot::Sender<()>>,
}

pub struct TaskThreads {
    threads: Vec<Thread>,
}

impl TaskThreads {
    /// Starts `n` threads named `{name}-{i}`; with none, [`TaskThreads::place`] finds no place
    /// and the caller runs its tasks where it is.
    ///
    /// `own_reactor`: whether each thread polls sockets of its own, as tasks that open
    /// connections need. Without one, the tasks may only use sockets registered with another
    /// runtime (a gateway's sessions, accepted on the process's runtime) and must start
    /// anything that opens one there; in return a wake-up from another thread costs a system
    /// call only when the thread is idle, where a reactor's thread takes one (an `eventfd`
    /// write) for every task woken from elsewhere.
    pub fn start(n: usize, name: &str, own_reactor: bool) -> anyhow::Result<TaskThreads> {
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            if own_reactor {
                builder.enable_all();
            } else {
                builder.enable_time();
            }
            let runtime = builder.build().context("task thread runtime")?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Dropping the runtime drops the tasks still on it.
                })
                .context("task thread")?;
            threads.push(Thread {
                handle,
                tasks: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
            });
        }
        Ok(TaskThreads { threads })
    }

    /// A place on the thread holding the fewest tasks; `None` without threads.
    pub fn place(&self) -> Option<Place> {
        let thread = self
            .threads
            .iter()
            .min_by_key(|t| t.tasks.load(Ordering::Relaxed))?;
        Some(Place {
            handle: thread.handle.clone(),
            held: Held::new(thread.tasks.clone()),
        })
    }

    /// Tasks each thread holds now.
    pub fn loads(&self) -> Vec<usize> {
        self.threads
            .iter()
            .map(|t| t.tasks.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for TaskThreads {
    fn drop(&mut self) {
        for t in &mut self.threads {
            if let Some(stop) = t.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

/// A task's place on one of the threads.
pub struct Place {
    handle: tokio::runtime::Handle,
    held: Held,
}

impl Place {
    /// Runs the task made by `make` there; `make` gets what the task must hold until it ends
    /// (it counts the task on its thread). Handing it in, rather than wrapping the task in an
    /// `async` block that holds it, keeps the task's future from being held twice (the block's
    /// copy and the one it awaits).
    pub fn spawn<F>(self, make: impl FnOnce(Held) -> F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(make(self.held))
    }
}

/// Counts a task on its thread from when it is placed until it ends or is dropped.
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
    async fn tasks_go_to_the_least_loaded_thread_and_leave_its_count_when_done() {
        let threads = TaskThreads::start(2, "t", false).unwrap();
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
            ["t-0", "t-0", "t-1", "t-1"],
            "two each, each on a thread of its own"
        );
        assert_eq!(threads.loads(), [2, 2]);
        release_tx.send(true).unwrap();
        for _ in 0..500 {
            if threads.loads() == [0, 0] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(threads.loads(), [0, 0], "finished tasks are not counted");
    }

    #[tokio::test]
    async fn without_threads_there_is_no_place() {
        let threads = TaskThreads::start(0, "t", false).unwrap();
        assert!(threads.place().is_none());
        assert!(threads.loads().is_empty());
    }

    #[tokio::test]
    async fn dropping_the_threads_drops_their_tasks() {
        let threads = TaskThreads::start(1, "t", true).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        threads.place().unwrap().spawn(|held| async move {
            let _keep = (tx, held);
            std::future::pending::<()>().await;
        });
        drop(threads);
        // The sender is dropped with the task: the receiver sees the end.
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the task was dropped")
            .unwrap_err();
    }
}
