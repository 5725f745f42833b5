//! The relay of stored changes (memberships, profiles, channels, read positions) through the
//! admin server to the gateways and Flannel caches, off the request path.
//!
//! A method stores its change, hands the change events to [`Relay::send`] as one batch and
//! answers: it never waits on the admin server, whose link retries each request (up to
//! [`crate::admin_link::ATTEMPTS`] tries, each bounded by the mesh's connect timeout and
//! [`crate::admin_link::REQUEST_TIMEOUT`]). One task relays the queued batches in the order
//! they were queued, so the events of one call, and of calls made one after another, keep
//! their order (a channel is announced before its members join it: a Flannel that hears of a
//! join to a channel it does not know reloads the whole workspace). Within a batch, a run of
//! joins to one channel is relayed concurrently (up to [`MAX_IN_FLIGHT`]): joins of different
//! users commute, and a 1,000-user invite then takes a few round trips, not 1,000 in a row.
//!
//! # Bounds
//! The queue holds at most [`QUEUE_BATCHES`] batches, and a batch gets [`BATCH_DEADLINE`] to
//! be relayed. A batch that finds the queue full, a relay still unfinished at its batch's
//! deadline and one that failed after the link's retries are dropped and counted
//! (`switchboard_webapp_user_events_dropped_total{reason}`, and in
//! `switchboard_webapp_user_event_failures_total`): the change is stored, sessions pick it up
//! when they reconnect, and a Flannel that lost its admin link reloads what it caches. So with
//! the admin server down, calls answer at once and the backlog stays bounded. Batches still
//! queued when the process exits are lost the same way.

use std::time::Duration;

use futures_util::StreamExt;
use shared::protocol::UserEvent;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::admin_link::AdminLink;
use crate::metrics as m;

/// Batches (one per call) waiting to be relayed, at most.
pub const QUEUE_BATCHES: usize = 1024;
/// How long one batch may take to relay, retries included; what is left then is dropped.
#[cfg(not(test))]
pub const BATCH_DEADLINE: Duration = Duration::from_secs(5);
#[cfg(test)]
pub const BATCH_DEADLINE: Duration = Duration::from_millis(500);
/// Relays of one wave (joins to one channel) in flight at once.
pub const MAX_IN_FLIGHT: usize = 32;

/// The queue of change events to relay. Cheap to clone; the relaying task ends when the last
/// clone is dropped and the queue is empty.
#[derive(Clone, Debug)]
pub struct Relay {
    tx: mpsc::Sender<Vec<UserEvent>>,
}

impl Relay {
    /// Starts the relaying task on `admin`. Must be called within a Tokio runtime.
    pub fn start(admin: AdminLink) -> Relay {
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        tokio::spawn(relay_batches(admin, rx));
        Relay { tx }
    }

    /// Queues the events of one call, to be relayed in this order (see the module doc);
    /// never waits. When the queue is full they are dropped and counted.
    pub fn send(&self, events: Vec<UserEvent>) {
        if events.is_empty() {
            return;
        }
        match self.tx.try_send(events) {
            Ok(()) => {}
            Err(TrySendError::Full(events)) => {
                dropped("queue_full", events.len());
                tracing::warn!(
                    num_events = events.len(),
                    "relay queue full: changes stored but not relayed to gateways"
                );
            }
            Err(TrySendError::Closed(events)) => dropped("closed", events.len()),
        }
        m::RELAY_QUEUE_BATCHES.set(self.queued() as i64);
    }

    /// Batches waiting in the queue.
    fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Counts `n` events that were stored but will not be relayed.
fn dropped(reason: &'static str, n: usize) {
    m::USER_EVENTS_DROPPED
        .with_label_values(&[reason])
        .inc_by(n as u64);
    m::USER_EVENT_FAILURES.inc_by(n as u64);
}

/// The relaying task: batch after batch, each within [`BATCH_DEADLINE`].
async fn relay_batches(admin: AdminLink, mut rx: mpsc::Receiver<Vec<UserEvent>>) {
    while let Some(batch) = rx.recv().await {
        m::RELAY_QUEUE_BATCHES.set(rx.len() as i64);
        let num_events = batch.len();
        let mut settled = 0;
        let relayed =
            tokio::time::timeout(BATCH_DEADLINE, relay_batch(&admin, batch, &mut settled)).await;
        if relayed.is_err() {
            dropped("deadline", num_events - settled);
            tracing::warn!(
                num_events,
                num_dropped = num_events - settled,
                "changes not relayed to gateways within the deadline"
            );
        }
    }
}

/// Relays one batch, wave after wave; `settled` counts the events done (relayed or failed).
async fn relay_batch(admin: &AdminLink, batch: Vec<UserEvent>, settled: &mut usize) {
    for wave in waves(batch) {
        let mut results = futures_util::stream::iter(wave)
            .map(|ev| admin.publish_user_event(ev))
            .buffer_unordered(MAX_IN_FLIGHT);
        while let Some(result) = results.next().await {
            *settled += 1;
            if let Err(e) = result {
                dropped("failed", 1);
                tracing::warn!(error = %e, "change stored but not relayed to gateways");
            }
        }
    }
}

/// Splits a batch into waves relayed one after another: a run of joins to one channel is one
/// wave (they commute), every other event is a wave of its own.
fn waves(batch: Vec<UserEvent>) -> Vec<Vec<UserEvent>> {
    let mut waves: Vec<Vec<UserEvent>> = Vec::new();
    for ev in batch {
        let joins_same_channel = match (waves.last().and_then(|w| w.first()), &ev) {
            (
                Some(UserEvent::ChannelJoined { channel: a, .. }),
                UserEvent::ChannelJoined { channel: b, .. },
            ) => a == b,
            _ => false,
        };
        match waves.last_mut() {
            Some(wave) if joins_same_channel => wave.push(ev),
            _ => waves.push(vec![ev]),
        }
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::{ChannelId, UserId, WorkspaceId};

    fn joined(channel: &str, user: &str) -> UserEvent {
        UserEvent::ChannelJoined {
            workspace: WorkspaceId::from("TDEMO"),
            channel: ChannelId::from(channel),
            user: UserId::from(user),
            channel_name: channel.to_lowercase(),
        }
    }

    fn left(channel: &str, user: &str) -> UserEvent {
        UserEvent::ChannelLeft {
            workspace: WorkspaceId::from("TDEMO"),
            channel: ChannelId::from(channel),
            user: UserId::from(user),
        }
    }

    fn shape(waves: &[Vec<UserEvent>]) -> Vec<usize> {
        waves.iter().map(Vec::len).collect()
    }

    #[test]
    fn only_joins_to_one_channel_share_a_wave() {
        let batch = vec![
            left("CA", "U1"),
            joined("CA", "U1"),
            joined("CA", "U2"),
            joined("CA", "U3"),
            joined("CB", "U1"),
            left("CB", "U1"),
            left("CB", "U2"),
        ];
        assert_eq!(shape(&waves(batch)), vec![1, 3, 1, 1, 1]);
        assert!(waves(Vec::new()).is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        // A queue nobody reads: the second batch finds it full.
        let (tx, _rx) = mpsc::channel(1);
        let relay = Relay { tx };
        let before = m::USER_EVENTS_DROPPED
            .with_label_values(&["queue_full"])
            .get();
        relay.send(vec![joined("CA", "U1")]);
        relay.send(vec![joined("CA", "U2"), joined("CA", "U3")]);
        let after = m::USER_EVENTS_DROPPED
            .with_label_values(&["queue_full"])
            .get();
        assert!(after >= before + 2, "{before} -> {after}");
    }
}
