//! The relay of stored changes (memberships, profiles, channels, read positions) through the
//! admin server to the gateways and Flannel caches.
//!
//! A method stores its change, then relays the change events of the call ([`relay`]) before
//! it answers, so what a client does next comes after them: a message posted right after an
//! invite reaches the invited user's sessions, which the gateway subscribed on the join. The
//! relay is bounded by [`RELAY_DEADLINE`] (the admin link's retries included): with the admin
//! server slow or unreachable, a call waits that long at most, not the link's full retry
//! budget per event one after another (up to 15 s each, and a 1,000-user invite took hours).
//! What was not relayed by then, or failed, is dropped and counted
//! (`switchboard_webapp_user_events_dropped_total{reason}`, and in
//! `switchboard_webapp_user_event_failures_total`, which an alert watches): the change is
//! stored, and the gateways resync their sessions' channels when their stream from the admin
//! server comes back; a Flannel that lost its admin link reloads what it caches.
//!
//! A call's events go in order (a channel is announced before its members join it: a Flannel
//! that hears of a join to a channel it does not know reloads the whole workspace), except
//! that a run of joins to one channel goes concurrently (up to [`MAX_IN_FLIGHT`]): joins of
//! different users commute, and a 1,000-user invite then takes a few round trips. A request
//! cut off by the deadline may still reach the admin server later, after a later call's
//! events; only the call's own order is kept.

use std::time::Duration;

use futures_util::StreamExt;
use shared::protocol::UserEvent;

use crate::admin_link::AdminLink;
use crate::metrics as m;

/// How long one call may spend relaying its events, retries included.
#[cfg(not(test))]
pub const RELAY_DEADLINE: Duration = Duration::from_secs(2);
#[cfg(test)]
pub const RELAY_DEADLINE: Duration = Duration::from_millis(500);
/// Relays of one wave (joins to one channel) in flight at once.
pub const MAX_IN_FLIGHT: usize = 32;

/// Relays the events of one call, in order, within [`RELAY_DEADLINE`]; what is not relayed
/// is counted, never the call's failure (the change is stored).
pub async fn relay(admin: &AdminLink, events: Vec<UserEvent>) {
    let num_events = events.len();
    if num_events == 0 {
        return;
    }
    let mut settled = 0;
    let relayed =
        tokio::time::timeout(RELAY_DEADLINE, relay_batch(admin, events, &mut settled)).await;
    if relayed.is_err() {
        dropped("deadline", num_events - settled);
        tracing::warn!(
            num_events,
            num_dropped = num_events - settled,
            "changes not relayed to gateways within the deadline"
        );
    }
}

/// Counts `n` events that were stored but will not be relayed.
pub(crate) fn dropped(reason: &'static str, n: usize) {
    m::USER_EVENTS_DROPPED
        .with_label_values(&[reason])
        .inc_by(n as u64);
    m::USER_EVENT_FAILURES.inc_by(n as u64);
}

/// Relays one call's events, wave after wave; `settled` counts the events done (relayed or
/// failed).
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
            after_seq: None,
            private: false,
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
}
