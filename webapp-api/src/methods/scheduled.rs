//! Scheduled messages: `chat.scheduleMessage`, `chat.scheduledMessages.list` and
//! `chat.deleteScheduledMessage`, as Slack has them.
//!
//! Scheduling checks everything a post checks ([`super::chat::compose_post`]: content, a
//! bot's identity and metadata, the caller in the channel, the thread) and keeps the message
//! in the store with its time; [`crate::scheduler`] posts it when due, through the same path
//! as `chat.postMessage`. A caller sees and deletes only what it scheduled. As in Slack, a
//! message due within 60 seconds (or past due) can no longer be deleted: the scheduler may be
//! posting it, so that a deletion answered `ok` never races a post.

use serde_json::{json, Value};
use shared::ids::{ScheduledMessageId, Ts};
use shared::protocol::Message;
use shared::store::ScheduledMessage;

use super::chat::compose_post;
use super::{message_json, response_metadata, visible_channel, VisibleChannel};
use crate::api::{
    decode_cursor, encode_cursor, object, ApiError, ApiResult, AppState, Caller, Params,
};

/// How far ahead a message may be scheduled: Slack's 120 days.
pub const MAX_SCHEDULE_AHEAD_SECS: u64 = 120 * 24 * 3600;
/// Most messages waiting for one channel within [`CHANNEL_WINDOW_SECS`] of each other (Slack:
/// 30 in 5 minutes); one more answers `restricted_too_many`.
pub const MAX_PER_CHANNEL_WINDOW: usize = 30;
/// The span of [`MAX_PER_CHANNEL_WINDOW`].
pub const CHANNEL_WINDOW_SECS: u64 = 300;
/// Most messages waiting in one workspace; one more answers `restricted_too_many`. Bounds
/// what a workspace keeps and what each scheduling reads.
pub const MAX_PER_WORKSPACE: usize = 10_000;
/// A message due this soon (or past due) can no longer be deleted.
pub const DELETE_CUTOFF_SECS: u64 = 60;
/// `chat.scheduledMessages.list`'s page: default and most.
const LIST_DEFAULT: u32 = 100;
const LIST_MAX: u32 = 1000;

const MICROS: u64 = 1_000_000;

/// A Unix time in seconds as Slack's time parameters give it: an integer, or a decimal whose
/// fraction is dropped. `None` for anything else (negative, not a number, absurdly far).
fn unix_seconds(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    let whole = match raw.split_once('.') {
        Some((whole, frac)) if frac.bytes().all(|b| b.is_ascii_digit()) => whole,
        Some(_) => return None,
        None => raw,
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || whole.len() > 12 {
        return None;
    }
    whole.parse().ok()
}

/// `chat.scheduleMessage`: the message of a `chat.postMessage` with these parameters, to be
/// posted at `post_at` (Unix seconds, in the future, at most 120 days ahead).
pub(super) async fn schedule(
    state: &AppState,
    caller: &Caller,
    visible: VisibleChannel,
    params: &Params,
) -> ApiResult {
    let post_at = params
        .non_empty("post_at")
        .and_then(unix_seconds)
        .ok_or(ApiError::InvalidTime)?;
    let now = Ts::now();
    let now_secs = now.0 / MICROS;
    if post_at <= now_secs {
        return Err(ApiError::TimeInPast);
    }
    if post_at > now_secs + MAX_SCHEDULE_AHEAD_SECS {
        return Err(ApiError::TimeTooFar);
    }
    let mut message = compose_post(state, caller, &visible, params, false).await?;
    let channel = visible.channel;
    let waiting = state.store.scheduled_messages(&channel.workspace).await?;
    let near = waiting
        .iter()
        .filter(|m| {
            m.message.channel == channel.id
                && (m.post_at.0 / MICROS).abs_diff(post_at) < CHANNEL_WINDOW_SECS
        })
        .count();
    if near >= MAX_PER_CHANNEL_WINDOW || waiting.len() >= MAX_PER_WORKSPACE {
        crate::metrics::SCHEDULED
            .with_label_values(&["restricted"])
            .inc();
        return Err(ApiError::RestrictedTooMany);
    }
    let id = ScheduledMessageId::generate();
    // The post's idempotency key: however many times (and by however many nodes) the
    // scheduler posts it, the channel stores it once.
    message.client_msg_id = Some(id.0.clone());
    let scheduled = ScheduledMessage {
        id: id.0,
        post_at: Ts(post_at * MICROS),
        created: now,
        message,
    };
    state.store.schedule_message(&scheduled).await?;
    crate::metrics::SCHEDULED
        .with_label_values(&["scheduled"])
        .inc();
    Ok(object(json!({
        "channel": channel.id,
        "scheduled_message_id": scheduled.id,
        "post_at": post_at.to_string(),
        "message": delayed_message_json(&scheduled),
    })))
}

/// Slack's `delayed_message`: the message as it will be posted, without a `ts` yet.
fn delayed_message_json(scheduled: &ScheduledMessage) -> Value {
    let m = &scheduled.message;
    let mut v = message_json(&Message {
        workspace: m.workspace.clone(),
        channel: m.channel.clone(),
        seq: 0,
        ts: scheduled.post_at,
        user: m.user.clone(),
        text: m.text.clone(),
        client_msg_id: None,
        thread_ts: m.thread_ts,
        kind: m.kind.clone(),
        previous: None,
        broadcast: m.broadcast,
        bot: m.bot,
        rich: m.rich.clone(),
    });
    if let Some(o) = v.as_object_mut() {
        o.remove("ts");
        o.remove("seq");
        o.insert("type".into(), "delayed_message".into());
    }
    v
}

/// `chat.scheduledMessages.list`: what the caller has waiting, in one channel or all that it
/// can see, earliest first; `oldest` and `latest` (Unix seconds, inclusive) bound `post_at`.
pub(super) async fn list(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let channel = match params.non_empty("channel") {
        Some(_) => Some(visible_channel(state, caller, params).await?.channel.id),
        None => None,
    };
    let bound = |key: &str, err: ApiError| match params.non_empty(key) {
        Some(raw) => unix_seconds(raw).map(Some).ok_or(err),
        None => Ok(None),
    };
    let oldest = bound("oldest", ApiError::InvalidTsOldest)?;
    let latest = bound("latest", ApiError::InvalidTsLatest)?;
    let limit = params.limit(LIST_DEFAULT, LIST_MAX)? as usize;
    // The cursor is the last listed message's (post_at, id).
    let after = match decode_cursor(params, "scheduled")? {
        Some(raw) => {
            let (at, id) = raw.split_once(':').ok_or(ApiError::InvalidCursor)?;
            Some((
                at.parse::<u64>().map_err(|_| ApiError::InvalidCursor)?,
                id.to_string(),
            ))
        }
        None => None,
    };
    let waiting = state
        .store
        .scheduled_messages(&caller.claims.workspace)
        .await?;
    let mut page: Vec<&ScheduledMessage> = waiting
        .iter()
        .filter(|m| m.message.user == caller.user.id)
        .filter(|m| channel.as_ref().is_none_or(|c| &m.message.channel == c))
        .filter(|m| {
            let secs = m.post_at.0 / MICROS;
            oldest.is_none_or(|o| secs >= o) && latest.is_none_or(|l| secs <= l)
        })
        .filter(|m| {
            after
                .as_ref()
                .is_none_or(|(at, id)| (m.post_at.0, &m.id) > (*at, id))
        })
        .take(limit + 1)
        .collect();
    let next = (page.len() > limit).then(|| {
        page.truncate(limit);
        let last = page[limit - 1];
        encode_cursor("scheduled", &format!("{}:{}", last.post_at.0, last.id))
    });
    let items: Vec<Value> = page
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "channel_id": m.message.channel,
                "post_at": m.post_at.0 / MICROS,
                "date_created": m.created.0 / MICROS,
                "text": m.message.text,
            })
        })
        .collect();
    Ok(object(json!({
        "scheduled_messages": items,
        "response_metadata": response_metadata(next),
    })))
}

/// `chat.deleteScheduledMessage`: takes back a message the caller scheduled in `channel`,
/// unless it is due within 60 seconds.
pub(super) async fn delete(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let channel = visible_channel(state, caller, params).await?.channel;
    let id = params
        .non_empty("scheduled_message_id")
        .map(str::trim)
        .and_then(ScheduledMessageId::parse)
        .ok_or(ApiError::InvalidScheduledMessageId)?;
    let found = state
        .store
        .scheduled_message(&channel.workspace, id.as_str())
        .await?
        .filter(|m| m.message.user == caller.user.id && m.message.channel == channel.id)
        .ok_or(ApiError::InvalidScheduledMessageId)?;
    if found.post_at.0 <= Ts::now().0 + DELETE_CUTOFF_SECS * MICROS {
        return Err(ApiError::InvalidScheduledMessageId);
    }
    state
        .store
        .unschedule_message(&channel.workspace, id.as_str())
        .await?
        .ok_or(ApiError::InvalidScheduledMessageId)?;
    crate::metrics::SCHEDULED
        .with_label_values(&["deleted"])
        .inc();
    Ok(object(json!({})))
}

#[cfg(test)]
mod tests {
    use super::unix_seconds;

    #[test]
    fn unix_seconds_take_integers_and_drop_fractions() {
        assert_eq!(unix_seconds("1562180400"), Some(1_562_180_400));
        assert_eq!(unix_seconds(" 1562180400.75 "), Some(1_562_180_400));
        assert_eq!(unix_seconds("1562180400."), Some(1_562_180_400));
        for bad in [
            "",
            "-5",
            "tomorrow",
            "1e9",
            "12.5.1",
            ".5",
            "1234567890123",
            "0x10",
        ] {
            assert_eq!(unix_seconds(bad), None, "{bad:?}");
        }
    }
}
