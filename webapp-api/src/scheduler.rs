//! Posts scheduled messages (`chat.scheduleMessage`) when they are due.
//!
//! Every Web API node runs one. Every `webapp.scheduled_poll_ms` it reads the messages due
//! from the store ([`MessageStore::due_scheduled_messages`]) and posts each through the admin
//! server, as `chat.postMessage` would, then removes it. A message's scheduled id is its
//! `client_msg_id`, so when two nodes post one at once, or a node stops between the post and
//! the removal and posts it again later, its channel stores it once.
//!
//! A message is checked again when due: if its poster is gone or has left the channel, the
//! channel is archived or gone, or its thread was deleted, it is dropped, not posted (and
//! counted). A post that fails for now (the admin server or the owner unreachable) stays
//! scheduled and is tried on the next look. Messages of one channel are posted one at a time
//! in their order (`post_at`, then id); channels in parallel.
//!
//! Each look reads from a low-water mark: the earliest message it left waiting, else the
//! present less [`CLOCK_SKEW`]. A message is scheduled only for the future of the node that
//! took it, so reading from there misses none while the nodes' clocks agree within that, and
//! skips the removed rows of the past (tombstones, in the CQL store).
//!
//! [`MessageStore::due_scheduled_messages`]: shared::store::MessageStore::due_scheduled_messages

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use shared::ids::{ChannelId, Ts};
use shared::protocol::MeshError;
use shared::shutdown::{Every, Shutdown};
use shared::store::{ScheduledMessage, StorageResult};

use crate::admin_link::PostError;
use crate::api::AppState;

/// Most due messages read per store query (a few in unit tests, so that a small backlog
/// spans batches).
#[cfg(not(test))]
const BATCH: u32 = 256;
#[cfg(test)]
const BATCH: u32 = 8;
/// Channels whose due messages are posted at once.
const CHANNELS_AT_ONCE: usize = 16;
/// How far behind the present each look starts reading, beyond the messages it left: how
/// much the nodes' clocks may disagree.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// What became of one due message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Posted,
    /// Not posted, and never will be: the reason, as the metric's `dropped_<reason>`.
    Dropped(&'static str),
    /// Not posted for now; tried again on the next look.
    Retry,
}

/// Starts the scheduler of this node: it looks every `poll` until `shutdown`.
pub fn spawn(state: AppState, poll: Duration, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut scheduler = Scheduler {
            state,
            watermark: Ts(0),
        };
        let mut every = Every::new(poll, shutdown);
        while every.next().await {
            if let Err(e) = scheduler.look().await {
                tracing::warn!(error = %e, "could not read the scheduled messages that are due; looking again later");
            }
        }
    });
}

/// One look of a scheduler that starts now (as after a restart), for tests.
#[cfg(test)]
pub(crate) async fn look_once(state: AppState) -> StorageResult<()> {
    Scheduler {
        state,
        watermark: Ts(0),
    }
    .look()
    .await
}

struct Scheduler {
    state: AppState,
    /// Where the next look starts reading (see the module docs).
    watermark: Ts,
}

impl Scheduler {
    /// Posts what is due, batch after batch, until a batch is not full or leaves some
    /// waiting.
    async fn look(&mut self) -> StorageResult<()> {
        loop {
            let now = Ts::now();
            let due = self
                .state
                .store
                .due_scheduled_messages(self.watermark, now, BATCH)
                .await?;
            let full = due.len() as u32 == BATCH;
            let left = self.post_all(due).await?;
            if full && left.is_none() {
                // A backlog (the node was down): the next batch starts where this one did,
                // since what it posted is gone.
                continue;
            }
            let floor = Ts(now.0.saturating_sub(CLOCK_SKEW.as_micros() as u64));
            self.watermark = left.map_or(floor, |at| at.min(floor));
            return Ok(());
        }
    }

    /// Posts `due`, each channel's in order; the earliest `post_at` of those left waiting.
    async fn post_all(&self, due: Vec<ScheduledMessage>) -> StorageResult<Option<Ts>> {
        let mut by_channel: BTreeMap<ChannelId, Vec<ScheduledMessage>> = BTreeMap::new();
        for m in due {
            by_channel
                .entry(m.message.channel.clone())
                .or_default()
                .push(m);
        }
        let results: Vec<StorageResult<Option<Ts>>> = stream::iter(by_channel.into_values())
            .map(|messages| self.post_channel(messages))
            .buffer_unordered(CHANNELS_AT_ONCE)
            .collect()
            .await;
        let mut left: Option<Ts> = None;
        for r in results {
            if let Some(at) = r? {
                left = Some(left.map_or(at, |l| l.min(at)));
            }
        }
        Ok(left)
    }

    /// Posts one channel's due messages in order, stopping at the first that must wait (the
    /// later ones wait behind it, to keep their order): its `post_at` then.
    async fn post_channel(&self, messages: Vec<ScheduledMessage>) -> StorageResult<Option<Ts>> {
        for m in messages {
            let outcome = post(&self.state, &m).await;
            let label = match outcome {
                Outcome::Posted => "posted".to_string(),
                Outcome::Dropped(why) => format!("dropped_{why}"),
                Outcome::Retry => "retried".to_string(),
            };
            crate::metrics::SCHEDULED.with_label_values(&[&label]).inc();
            if outcome == Outcome::Retry {
                return Ok(Some(m.post_at));
            }
            if outcome == Outcome::Posted {
                let late = Ts::now().0.saturating_sub(m.post_at.0);
                crate::metrics::SCHEDULED_LATENESS.observe(late as f64 / 1e6);
            } else {
                tracing::info!(id = %m.id, channel = %m.message.channel, user = %m.message.user, reason = label, "scheduled message not posted");
            }
            self.state
                .store
                .unschedule_message(&m.message.workspace, &m.id)
                .await?;
        }
        Ok(None)
    }
}

/// Checks that `m` may still be posted, and posts it.
async fn post(state: &AppState, m: &ScheduledMessage) -> Outcome {
    let msg = &m.message;
    let Ok(read) = state
        .store
        .user_channel_membership(&msg.user, &msg.channel)
        .await
    else {
        return Outcome::Retry;
    };
    if read
        .user
        .is_none_or(|u| u.workspace != msg.workspace || u.deleted)
    {
        return Outcome::Dropped("user_gone");
    }
    let Some(channel) = read.channel.filter(|c| c.workspace == msg.workspace) else {
        return Outcome::Dropped("channel_gone");
    };
    if !read.is_member {
        return Outcome::Dropped("not_in_channel");
    }
    if channel.is_archived {
        return Outcome::Dropped("archived");
    }
    if let Some(parent) = msg.thread_ts {
        match state
            .store
            .message_view(&msg.workspace, &msg.channel, parent)
            .await
        {
            Ok(Some(v)) if v.takes_replies() => {}
            Ok(_) => return Outcome::Dropped("thread_gone"),
            Err(_) => return Outcome::Retry,
        }
    }
    match state.admin.post(msg.clone()).await {
        Ok((posted, repeat)) => {
            if !repeat {
                crate::methods::members::tell_reopened(state, &channel, &posted).await;
            }
            Outcome::Posted
        }
        Err(PostError::Mesh(MeshError::BadRequest(reason))) => {
            tracing::warn!(id = %m.id, reason, "the channel's owner refused a scheduled message");
            Outcome::Dropped("refused")
        }
        Err(e) => {
            tracing::debug!(id = %m.id, error = %e, "scheduled message not posted yet");
            Outcome::Retry
        }
    }
}
