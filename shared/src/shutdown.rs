//! One shutdown signal cloned into every task.

use tokio_util::sync::CancellationToken;

/// Cancelled once when the process (or a test) asks everything to stop. Tasks select on
/// [`Shutdown::wait`]; a role's `run` returns once its tasks are done.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// A child that stops with this one but can also be stopped alone.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }
}

/// The turns of a task that does something every `poll` until `shutdown`: the first at once,
/// a late one waits rather than several piling up.
pub struct Every {
    ticks: tokio::time::Interval,
    shutdown: Shutdown,
}

impl Every {
    pub fn new(poll: std::time::Duration, shutdown: Shutdown) -> Every {
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Every { ticks, shutdown }
    }

    /// Waits for the next turn: `false` once `shutdown` came instead.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.wait() => false,
            _ = self.ticks.tick() => true,
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed by the call itself, not when
/// the future is first polled: a signal that comes while the process is still starting
/// (before it waits for one) is then a request to stop, not the signal's default action,
/// which would kill the process on the spot.
pub fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
