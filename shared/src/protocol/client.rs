//! The RTM-style JSON protocol between a gateway and its WebSocket clients.
//!
//! Server -> client events carry a `type` like Slack's RTM API (`hello`, `message`,
//! `user_typing`, `presence_change`, `pong`, `error`, `goodbye`), extended with a per-channel
//! `seq` on messages and a `resync_required` event. Client -> server events carry an `id`
//! that the answer echoes as `reply_to`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::{ChannelSetting, EphemeralEvent, Message, MessageKind};
use crate::ids::{ChannelId, Seq, Ts};

/// WebSocket close codes the gateway uses (4000-4999 is the application range).
pub mod close_code {
    /// Missing, malformed or forged token (or one signed under an earlier cluster secret;
    /// tokens do not expire otherwise).
    pub const INVALID_AUTH: u16 = 4001;
    /// The client spoke a protocol version this gateway does not accept.
    pub const UNSUPPORTED_VERSION: u16 = 4002;
    /// The session fell too far behind; reconnect with `resume`.
    pub const RESYNC_REQUIRED: u16 = 4008;
    /// A frame larger than the gateway accepts.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The gateway is shutting down; reconnect (to another gateway).
    pub const GOING_AWAY: u16 = 1001;
    /// No pong within the timeout.
    pub const PING_TIMEOUT: u16 = 4003;
    /// The session's user was deactivated (`account_inactive`): do not reconnect.
    pub const ACCOUNT_INACTIVE: u16 = 4004;
    /// The session's token was revoked (`auth.revoke`): do not reconnect with it.
    pub const TOKEN_REVOKED: u16 = 4005;
}

/// What a client sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent {
    Ping {
        id: Option<u64>,
    },
    Typing {
        id: Option<u64>,
        channel: ChannelId,
    },
    /// Resume after a reconnect: the last `seq` the client saw per channel. The gateway
    /// sends exactly the messages after each, in order, then live ones.
    Resume {
        id: Option<u64>,
        channels: BTreeMap<ChannelId, Seq>,
    },
    /// Slack's RTM `presence_sub`: from now on, `presence_change` events only for these
    /// users (the list replaces the previous one; an empty list stops them).
    PresenceSub {
        id: Option<u64>,
        ids: Vec<String>,
    },
    /// Slack's RTM `presence_query`: the current presence of these users, answered with
    /// `presence_change` events (one listing the active ones, one the away ones).
    PresenceQuery {
        id: Option<u64>,
        ids: Vec<String>,
    },
    /// Slack's RTM `message`: post `text` to `channel` (an id, or `#name` as the Web API
    /// takes). The gateway posts it through `chat.postMessage` with the session's token, so it
    /// is stored, ordered and checked exactly like an HTTP post, and answers
    /// `{"ok":true,"reply_to":id,"ts":…,"text":…}` or `{"ok":false,"reply_to":id,"error":{…}}`.
    Message {
        id: Option<u64>,
        channel: String,
        text: String,
        #[serde(default)]
        thread_ts: Option<String>,
        #[serde(default)]
        client_msg_id: Option<String>,
    },
}

impl ClientEvent {
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientEvent::Ping { id }
            | ClientEvent::Typing { id, .. }
            | ClientEvent::Resume { id, .. }
            | ClientEvent::PresenceSub { id, .. }
            | ClientEvent::PresenceQuery { id, .. }
            | ClientEvent::Message { id, .. } => *id,
        }
    }
}

/// A message as clients see it (Slack's shape plus `seq`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub channel: String,
    pub user: String,
    pub text: String,
    pub ts: String,
    pub seq: Seq,
    pub team: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_msg_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub thread_ts: Option<String>,
    /// `thread_broadcast` for a reply also shown in the channel.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subtype: Option<String>,
    /// Block Kit blocks, as posted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub blocks: Option<serde_json::Value>,
    /// Legacy attachments, as posted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attachments: Option<serde_json::Value>,
    /// A `channel_topic` message's new topic.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub topic: Option<String>,
    /// A `channel_purpose` message's new purpose.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub purpose: Option<String>,
    /// A bot's message: the bot's id (what `auth.test` gives it as `bot_id`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bot_id: Option<String>,
    /// A `thread_broadcast`'s thread root, as it was when the reply was posted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub root: Option<serde_json::Value>,
    /// The name a bot gave this message, drawn instead of its own.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub username: Option<String>,
    /// The icon a bot gave this message: `{"emoji": …}` or `{"image_48": …, …}`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub icons: Option<serde_json::Value>,
    /// An app's metadata on the message: `{"event_type": …, "event_payload": {…}}`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub metadata: Option<serde_json::Value>,
    /// A bot's message: Slack's `bot_profile` (its id, name and app), which clients draw.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bot_profile: Option<serde_json::Value>,
    /// The files shared with the message (Slack's file objects), with `upload: true`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub files: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub upload: Option<bool>,
}

impl From<&Message> for MessageEvent {
    fn from(m: &Message) -> Self {
        let sets = m.rich.as_ref().and_then(|r| r.sets.as_ref());
        let identity = m.rich.as_ref().and_then(|r| r.identity.as_ref());
        MessageEvent {
            kind: "message".into(),
            channel: m.channel.0.clone(),
            user: m.user.0.clone(),
            text: m.text.clone(),
            ts: m.ts.to_slack(),
            seq: m.seq,
            team: m.workspace.0.clone(),
            client_msg_id: m.client_msg_id.clone(),
            thread_ts: m.thread_ts.map(|t| t.to_slack()),
            subtype: match (m.broadcast, sets) {
                (true, _) => Some("thread_broadcast".to_string()),
                (false, Some(s)) => Some(s.subtype().to_string()),
                (false, None) if m.rich.as_ref().is_some_and(|r| r.me) => {
                    Some("me_message".to_string())
                }
                (false, None) if m.rich.as_ref().is_some_and(|r| r.files.is_some()) => {
                    Some("file_share".to_string())
                }
                (false, None) => None,
            },
            blocks: m.rich.as_ref().and_then(|r| r.blocks_value()),
            attachments: m.rich.as_ref().and_then(|r| r.attachments_value()),
            topic: match sets {
                Some(ChannelSetting::Topic(t)) => Some(t.clone()),
                _ => None,
            },
            purpose: match sets {
                Some(ChannelSetting::Purpose(p)) => Some(p.clone()),
                _ => None,
            },
            bot_id: m.bot.then(|| m.user.0.clone()),
            root: broadcast_root(m),
            username: identity.and_then(|i| i.username.clone()),
            icons: identity.and_then(|i| i.icons()),
            metadata: m.rich.as_ref().and_then(|r| r.metadata_value()),
            bot_profile: bot_profile(m),
            files: m.rich.as_ref().and_then(|r| r.files_value()),
            upload: m.rich.as_ref().and_then(|r| r.files.as_ref()).map(|_| true),
        }
    }
}

/// Slack's `bot_profile` of a bot's message: the bot (its id is its user's, as `bot_id`),
/// named as it was when it posted. Absent for a person's message, and for a bot's stored
/// before the name was kept.
pub fn bot_profile(m: &Message) -> Option<serde_json::Value> {
    if !m.bot {
        return None;
    }
    let name = m.rich.as_ref()?.bot_name.as_ref()?;
    let id = &m.user.0;
    Some(serde_json::json!({
        "id": id,
        "deleted": false,
        "name": name,
        "app_id": format!("A{}", id.strip_prefix('U').unwrap_or(id)),
        "team_id": m.workspace.0,
    }))
}

/// Slack's `root` of a `thread_broadcast` (a reply also shown in the channel): the thread's
/// first message as it was when the reply was posted, which clients show above the reply.
/// Absent for other messages, for a root that was gone, and for replies stored before it was
/// kept.
pub fn broadcast_root(m: &Message) -> Option<serde_json::Value> {
    if !m.broadcast {
        return None;
    }
    let root = m.thread_ts?;
    let p = m.previous.as_deref()?;
    let ts = root.to_slack();
    let mut v = serde_json::json!({
        "type": "message",
        "user": p.user.0,
        "text": p.text,
        "ts": ts,
        "thread_ts": ts,
        "team": m.workspace.0,
    });
    if let Some(edited) = p.edited {
        v["edited"] = serde_json::json!({ "user": p.user.0, "ts": edited.to_slack() });
    }
    if let Some(rich) = &p.rich {
        rich.add_to(&mut v);
    }
    Some(v)
}

/// A hidden `message` event of `subtype` about the message `target`, for entry `m` (at
/// `ts`), with `previous_message` when the entry knows it.
fn hidden_change(m: &Message, ts: &str, subtype: &str, target: Ts) -> serde_json::Value {
    let mut v = serde_json::json!({
        "type": "message",
        "subtype": subtype,
        "hidden": true,
        "channel": m.channel.0,
        "ts": ts,
        "event_ts": ts,
        "seq": m.seq,
        "team": m.workspace.0,
    });
    if let Some(previous) = previous_message(m, target) {
        v["previous_message"] = previous;
    }
    v
}

/// Slack's `message_changed` event for entry `m` (at `ts`): `message` is what the message
/// is now, `previous_message` what it was.
fn message_changed(
    m: &Message,
    ts: &str,
    target: Ts,
    message: serde_json::Value,
) -> serde_json::Value {
    let mut v = hidden_change(m, ts, "message_changed", target);
    v["message"] = message;
    v
}

/// Slack's `previous_message` of an edit or deletion of `target`: the message as it was.
/// Absent for entries stored before the previous state was kept.
fn previous_message(m: &Message, target: Ts) -> Option<serde_json::Value> {
    let p = m.previous.as_deref()?;
    let mut v = serde_json::json!({
        "type": "message",
        "user": p.user.0,
        "text": p.text,
        "ts": target.to_slack(),
    });
    if let Some(thread) = p.thread_ts {
        v["thread_ts"] = thread.to_slack().into();
    }
    if let Some(edited) = p.edited {
        v["edited"] = serde_json::json!({ "user": p.user.0, "ts": edited.to_slack() });
    }
    if let Some(rich) = &p.rich {
        rich.add_to(&mut v);
    }
    Some(v)
}

/// Renders a stored message as the JSON text every subscribed session receives. Done once
/// per gateway per message; the text is shared between sessions.
///
/// Every entry carries `channel` and `seq`, so a client checks one contiguous sequence per
/// channel whatever the entry is: a message, an edit (`message_changed`), a deletion
/// (`message_deleted`, or `message_changed` into Slack's tombstone for a thread parent whose
/// replies remain) or a reaction (`reaction_added`, `reaction_removed`). Edits and deletions
/// carry `previous_message`, the message before the change.
pub fn message_json(m: &Message) -> String {
    let ts = m.ts.to_slack();
    let value = match &m.kind {
        MessageKind::Posted => {
            return serde_json::to_string(&MessageEvent::from(m)).expect("message event serializes")
        }
        MessageKind::Edited { target } => {
            let mut message = serde_json::json!({
                "type": "message",
                "user": m.user.0,
                "text": m.text,
                "ts": target.to_slack(),
                "edited": { "user": m.user.0, "ts": ts },
            });
            if let Some(thread) = m.previous.as_ref().and_then(|p| p.thread_ts) {
                message["thread_ts"] = thread.to_slack().into();
            }
            if let Some(rich) = &m.rich {
                rich.add_to(&mut message);
            }
            if m.bot {
                message["bot_id"] = m.user.0.clone().into();
            }
            message_changed(m, &ts, *target, message)
        }
        // A deletion that names the message's own thread leaves Slack's tombstone (a parent
        // whose replies remain): clients are told the message changed into it.
        MessageKind::Deleted { target } if m.thread_ts == Some(*target) => message_changed(
            m,
            &ts,
            *target,
            serde_json::json!({
                "type": "message",
                "subtype": "tombstone",
                "text": "This message was deleted.",
                "user": "USLACKBOT",
                "hidden": true,
                "ts": target.to_slack(),
                "thread_ts": target.to_slack(),
            }),
        ),
        MessageKind::Deleted { target } => {
            let mut v = hidden_change(m, &ts, "message_deleted", *target);
            v["deleted_ts"] = target.to_slack().into();
            v
        }
        MessageKind::ReactionAdded { target, reaction }
        | MessageKind::ReactionRemoved { target, reaction } => {
            let kind = if matches!(m.kind, MessageKind::ReactionAdded { .. }) {
                "reaction_added"
            } else {
                "reaction_removed"
            };
            serde_json::json!({
                "type": kind,
                "user": m.user.0,
                "reaction": reaction,
                "item": { "type": "message", "channel": m.channel.0, "ts": target.to_slack() },
                "channel": m.channel.0,
                "event_ts": ts,
                "ts": ts,
                "seq": m.seq,
                "team": m.workspace.0,
            })
        }
        // Slack's `pin_added` / `pin_removed`: the item is the message, as it was when pinned
        // (when the channel's owner knew it).
        MessageKind::Pinned { target } | MessageKind::Unpinned { target } => {
            let pinned = matches!(m.kind, MessageKind::Pinned { .. });
            let mut item = serde_json::json!({
                "type": "message",
                "channel": m.channel.0,
                "ts": target.to_slack(),
                "created": m.ts.0 / 1_000_000,
                "created_by": m.user.0,
            });
            if let Some(mut message) = previous_message(m, *target) {
                message["pinned_to"] = if pinned {
                    serde_json::json!([m.channel.0])
                } else {
                    serde_json::json!([])
                };
                item["message"] = message;
            }
            serde_json::json!({
                "type": if pinned { "pin_added" } else { "pin_removed" },
                "user": m.user.0,
                "channel_id": m.channel.0,
                "item": item,
                "channel": m.channel.0,
                "event_ts": ts,
                "ts": ts,
                "seq": m.seq,
                "team": m.workspace.0,
            })
        }
    };
    value.to_string()
}

/// Who reads a channel, for its counts of unread messages and mentions: the user, and the
/// user groups it is in (enabled ones), whose mentions are its mentions too.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    pub user: &'a str,
    pub groups: &'a [String],
}

impl Reader<'_> {
    /// No reader: every author's message counts, and nothing mentions it.
    pub const NOBODY: Reader<'static> = Reader {
        user: "",
        groups: &[],
    };

    /// Whether `text` mentions the reader as Slack notifies it: by id (`<@U…>`, with or
    /// without a label), everyone in the channel (`<!channel>`, `<!here>`, `<!everyone>`), or
    /// a user group the reader is in (`<!subteam^S…>`). Slack escapes a `<` that a user
    /// typed (`&lt;`), so only a real mention has one.
    pub fn is_mentioned_in(&self, text: &str) -> bool {
        let mut rest = text;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            // A mention ends at `>`, or at `|` before its label; an unclosed one is none.
            let Some(end) = rest.find(['>', '|', '<']) else {
                break;
            };
            if rest[end..].starts_with('<') {
                continue;
            }
            let inner = &rest[..end];
            if let Some(id) = inner.strip_prefix('@') {
                if !self.user.is_empty() && id == self.user {
                    return true;
                }
            } else if let Some(special) = inner.strip_prefix('!') {
                if matches!(special, "channel" | "here" | "everyone") {
                    return true;
                }
                if let Some(group) = special.strip_prefix("subteam^") {
                    if self.groups.iter().any(|g| g == group) {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// What one entry of a channel's stream does to a reader's count of unread messages: what
/// Slack counts as unread are the messages shown in the channel (top-level ones and replies
/// also sent to the channel), not the reader's own, and not those deleted since; edits,
/// reactions and pins are entries of the stream but no message to read (an edit may make a
/// message mention the reader, or no longer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnreadEffect {
    /// A message to read, by its `ts` (Slack's form), and whether it mentions the reader.
    Adds(String, bool),
    /// The message with this `ts` was edited: whether it mentions the reader now.
    Edits(String, bool),
    /// The message with this `ts` was deleted.
    Removes(String),
    Nothing,
}

/// [`UnreadEffect`] of an entry, for `reader`.
pub fn unread_effect(m: &Message, reader: &Reader) -> UnreadEffect {
    match &m.kind {
        MessageKind::Posted => {
            let reply = m.thread_ts.is_some_and(|t| t != m.ts) && !m.broadcast;
            if reply || m.user.0 == reader.user {
                UnreadEffect::Nothing
            } else {
                UnreadEffect::Adds(m.ts.to_slack(), reader.is_mentioned_in(&m.text))
            }
        }
        MessageKind::Edited { target } => {
            UnreadEffect::Edits(target.to_slack(), reader.is_mentioned_in(&m.text))
        }
        MessageKind::Deleted { target } => UnreadEffect::Removes(target.to_slack()),
        _ => UnreadEffect::Nothing,
    }
}

/// [`unread_effect`] of an entry as [`message_json`] rendered it (what a gateway keeps of its
/// recent entries); an event it cannot read is [`UnreadEffect::Nothing`].
pub fn unread_effect_of_event(event: &str, reader: &Reader) -> UnreadEffect {
    #[derive(Deserialize)]
    struct Changed {
        subtype: Option<String>,
        ts: Option<String>,
        #[serde(default)]
        text: String,
    }
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "type")]
        kind: String,
        subtype: Option<String>,
        user: Option<String>,
        ts: Option<String>,
        thread_ts: Option<String>,
        deleted_ts: Option<String>,
        message: Option<Changed>,
        #[serde(default)]
        text: String,
    }
    let Ok(e) = serde_json::from_str::<Event>(event) else {
        return UnreadEffect::Nothing;
    };
    if e.kind != "message" {
        return UnreadEffect::Nothing;
    }
    match e.subtype.as_deref() {
        Some("message_deleted") => e
            .deleted_ts
            .map_or(UnreadEffect::Nothing, UnreadEffect::Removes),
        // A thread's root deleted while its replies remain becomes Slack's tombstone.
        Some("message_changed") => match e.message {
            Some(Changed {
                subtype: Some(sub),
                ts: Some(ts),
                ..
            }) if sub == "tombstone" => UnreadEffect::Removes(ts),
            Some(Changed {
                ts: Some(ts), text, ..
            }) => UnreadEffect::Edits(ts, reader.is_mentioned_in(&text)),
            _ => UnreadEffect::Nothing,
        },
        subtype => {
            let Some(ts) = e.ts else {
                return UnreadEffect::Nothing;
            };
            let reply = e.thread_ts.as_ref().is_some_and(|t| *t != ts)
                && subtype != Some("thread_broadcast");
            if reply || e.user.as_deref() == Some(reader.user) {
                UnreadEffect::Nothing
            } else {
                let mention = reader.is_mentioned_in(&e.text);
                UnreadEffect::Adds(ts, mention)
            }
        }
    }
}

/// A reader's unread messages in a channel, and how many of them mention it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnreadCount {
    pub messages: u64,
    pub mentions: u64,
}

/// The unread messages among a run of entries, in order: those added and not removed after,
/// and those of them that mention the reader as last written.
pub fn count_unread(effects: impl IntoIterator<Item = UnreadEffect>) -> UnreadCount {
    let mut unread = std::collections::HashMap::new();
    for effect in effects {
        match effect {
            UnreadEffect::Adds(ts, mention) => {
                unread.insert(ts, mention);
            }
            UnreadEffect::Edits(ts, mention) => {
                if let Some(m) = unread.get_mut(&ts) {
                    *m = mention;
                }
            }
            UnreadEffect::Removes(ts) => {
                unread.remove(&ts);
            }
            UnreadEffect::Nothing => {}
        }
    }
    UnreadCount {
        messages: unread.len() as u64,
        mentions: unread.values().filter(|m| **m).count() as u64,
    }
}

/// Renders an ephemeral event for a channel.
pub fn ephemeral_json(channel: &ChannelId, event: &EphemeralEvent) -> String {
    match event {
        EphemeralEvent::Typing { user } => serde_json::json!({
            "type": "user_typing",
            "channel": channel.0,
            "user": user.0,
        }),
        EphemeralEvent::Presence { user, presence } => serde_json::json!({
            "type": "presence_change",
            "user": user.0,
            "presence": presence.as_str(),
        }),
    }
    .to_string()
}

/// An `error` event, optionally answering a client event.
pub fn error_json(code: u16, msg: &str, reply_to: Option<u64>) -> String {
    let mut v = serde_json::json!({
        "type": "error",
        "error": { "code": code, "msg": msg },
    });
    if let Some(id) = reply_to {
        v["reply_to"] = id.into();
    }
    v.to_string()
}

/// Error codes carried in `error` events.
pub mod error_code {
    pub const MALFORMED_JSON: u16 = 1;
    pub const UNKNOWN_EVENT: u16 = 2;
    pub const CHANNEL_NOT_FOUND: u16 = 3;
    pub const NOT_IN_CHANNEL: u16 = 4;
    pub const INVALID_UTF8: u16 = 5;
    pub const UNAVAILABLE: u16 = 6;
    pub const RATE_LIMITED: u16 = 7;
    /// The Web API refused a message sent over RTM; `msg` is its error (`no_text`,
    /// `msg_too_long`, `is_archived`, `invalid_auth`, …).
    pub const MESSAGE_REFUSED: u16 = 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_events_parse() {
        let e: ClientEvent = serde_json::from_str(r#"{"id":1,"type":"ping"}"#).unwrap();
        assert_eq!(e, ClientEvent::Ping { id: Some(1) });
        let e: ClientEvent =
            serde_json::from_str(r#"{"id":2,"type":"typing","channel":"C1"}"#).unwrap();
        assert_eq!(e.id(), Some(2));
        let e: ClientEvent =
            serde_json::from_str(r#"{"type":"resume","channels":{"C1":4}}"#).unwrap();
        match e {
            ClientEvent::Resume { channels, .. } => assert_eq!(channels[&ChannelId::from("C1")], 4),
            other => panic!("unexpected {other:?}"),
        }
        let e: ClientEvent =
            serde_json::from_str(r#"{"id":3,"type":"message","channel":"C1","text":"hi"}"#)
                .unwrap();
        assert_eq!(
            e,
            ClientEvent::Message {
                id: Some(3),
                channel: "C1".into(),
                text: "hi".into(),
                thread_ts: None,
                client_msg_id: None
            }
        );
        for bad in [
            r#"{"type":"dance"}"#,
            r#"{"id":4,"type":"message","channel":"C1"}"#,
            r#"{"id":4,"type":"message","channel":"C1","text":5}"#,
        ] {
            assert!(serde_json::from_str::<ClientEvent>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_entry_kind_renders_with_channel_and_seq() {
        use super::super::model::PreviousMessage;
        use crate::ids::{Ts, UserId, WorkspaceId};
        let base = Message {
            workspace: WorkspaceId::from("TW"),
            channel: ChannelId::from("CX"),
            seq: 7,
            ts: Ts(2_000_000),
            user: UserId::from("UA"),
            text: "new text".into(),
            client_msg_id: None,
            thread_ts: None,
            kind: MessageKind::Posted,
            previous: None,
            broadcast: false,
            bot: false,
            rich: None,
        };
        let kinds = [
            (MessageKind::Posted, "message", None),
            (
                MessageKind::Edited {
                    target: Ts(1_000_000),
                },
                "message",
                Some("message_changed"),
            ),
            (
                MessageKind::Deleted {
                    target: Ts(1_000_000),
                },
                "message",
                Some("message_deleted"),
            ),
            (
                MessageKind::ReactionAdded {
                    target: Ts(1_000_000),
                    reaction: "tada".into(),
                },
                "reaction_added",
                None,
            ),
            (
                MessageKind::ReactionRemoved {
                    target: Ts(1_000_000),
                    reaction: "tada".into(),
                },
                "reaction_removed",
                None,
            ),
            (
                MessageKind::Pinned {
                    target: Ts(1_000_000),
                },
                "pin_added",
                None,
            ),
            (
                MessageKind::Unpinned {
                    target: Ts(1_000_000),
                },
                "pin_removed",
                None,
            ),
        ];
        for (kind, ty, subtype) in kinds {
            let mut m = base.clone();
            m.kind = kind;
            let v: serde_json::Value = serde_json::from_str(&message_json(&m)).unwrap();
            assert_eq!(v["type"], ty);
            assert_eq!(v["seq"], 7);
            assert_eq!(v["channel"], "CX");
            assert_eq!(v["subtype"].as_str(), subtype);
        }
        // A pin names its message, and carries it when the channel's owner knew it.
        let mut pin = base.clone();
        pin.kind = MessageKind::Pinned {
            target: Ts(1_000_000),
        };
        let v: serde_json::Value = serde_json::from_str(&message_json(&pin)).unwrap();
        assert_eq!(v["channel_id"], "CX");
        assert_eq!(v["user"], "UA");
        assert_eq!(
            v["item"],
            serde_json::json!({"type": "message", "channel": "CX", "ts": "1.000000",
                               "created": 2, "created_by": "UA"})
        );
        pin.previous = Some(Box::new(PreviousMessage {
            user: UserId::from("UB"),
            text: "the house rules".into(),
            thread_ts: None,
            edited: None,
            rich: None,
        }));
        let v: serde_json::Value = serde_json::from_str(&message_json(&pin)).unwrap();
        assert_eq!(v["item"]["message"]["text"], "the house rules");
        assert_eq!(v["item"]["message"]["user"], "UB");
        assert_eq!(v["item"]["message"]["pinned_to"], serde_json::json!(["CX"]));
        pin.kind = MessageKind::Unpinned {
            target: Ts(1_000_000),
        };
        let v: serde_json::Value = serde_json::from_str(&message_json(&pin)).unwrap();
        assert_eq!(v["type"], "pin_removed");
        assert_eq!(v["item"]["message"]["pinned_to"], serde_json::json!([]));
        let mut edit = base.clone();
        edit.kind = MessageKind::Edited {
            target: Ts(1_000_000),
        };
        let v: serde_json::Value = serde_json::from_str(&message_json(&edit)).unwrap();
        assert_eq!(v["message"]["ts"], "1.000000");
        assert_eq!(v["message"]["text"], "new text");
        // The deletion of a thread parent whose replies remain names its thread: it renders
        // as the change into Slack's tombstone; any other deletion as the message going.
        let mut tombstone = base.clone();
        tombstone.kind = MessageKind::Deleted {
            target: Ts(1_000_000),
        };
        tombstone.thread_ts = Some(Ts(1_000_000));
        let v: serde_json::Value = serde_json::from_str(&message_json(&tombstone)).unwrap();
        assert_eq!(v["subtype"], "message_changed");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["message"]["subtype"], "tombstone");
        assert_eq!(v["message"]["ts"], "1.000000");
        assert_eq!(v["message"]["thread_ts"], "1.000000");
        assert_eq!(v["message"]["text"], "This message was deleted.");
        tombstone.thread_ts = Some(Ts(500_000));
        let v: serde_json::Value = serde_json::from_str(&message_json(&tombstone)).unwrap();
        assert_eq!(
            v["subtype"], "message_deleted",
            "another thread's ts is no tombstone"
        );

        // A reply also shown in the channel is Slack's `thread_broadcast`.
        let mut reply = base.clone();
        reply.thread_ts = Some(Ts(1_000_000));
        let v: serde_json::Value = serde_json::from_str(&message_json(&reply)).unwrap();
        assert!(v.get("subtype").is_none(), "{v}");
        reply.broadcast = true;
        let v: serde_json::Value = serde_json::from_str(&message_json(&reply)).unwrap();
        assert_eq!(v["subtype"], "thread_broadcast");
        assert_eq!(v["thread_ts"], "1.000000");
        assert!(v.get("root").is_none(), "no root known: {v}");
        // With its root (as the channel's owner places it), clients show the thread's start.
        reply.previous = Some(Box::new(PreviousMessage {
            user: UserId::from("UROOT"),
            text: "release 3.1?".into(),
            thread_ts: None,
            edited: Some(Ts(1_500_000)),
            rich: crate::protocol::RichContent {
                blocks: Some(r#"[{"type":"divider"}]"#.into()),
                attachments: None,
                sets: None,
                identity: None,
                metadata: None,
                bot_name: None,
                me: false,
                files: None,
            }
            .boxed(),
        }));
        let v: serde_json::Value = serde_json::from_str(&message_json(&reply)).unwrap();
        let root = &v["root"];
        assert_eq!(root["type"], "message", "{v}");
        assert_eq!(root["user"], "UROOT");
        assert_eq!(root["text"], "release 3.1?");
        assert_eq!(root["ts"], "1.000000");
        assert_eq!(root["thread_ts"], "1.000000");
        assert_eq!(root["edited"]["ts"], "1.500000");
        assert_eq!(root["blocks"][0]["type"], "divider");
        assert_eq!(v["text"], reply.text, "the reply is still the message");

        // Blocks and attachments reach clients as posted, in messages and in edits.
        let mut rich = base.clone();
        rich.rich = crate::protocol::RichContent {
            blocks: Some(r#"[{"type":"divider"}]"#.into()),
            attachments: Some(r#"[{"fallback":"f"}]"#.into()),
            sets: None,
            identity: None,
            metadata: Some(r#"{"event_type":"task_created","event_payload":{"id":"T1"}}"#.into()),
            bot_name: Some("tasks".into()),
            me: false,
            files: Some(r#"[{"id":"F1","name":"plan.txt"}]"#.into()),
        }
        .boxed();
        let v: serde_json::Value = serde_json::from_str(&message_json(&rich)).unwrap();
        assert_eq!(v["blocks"], serde_json::json!([{"type": "divider"}]));
        assert_eq!(v["files"][0]["name"], "plan.txt", "{v}");
        assert_eq!(v["upload"], true);
        assert_eq!(
            v["subtype"], "file_share",
            "Slack's subtype of a message with files"
        );
        assert_eq!(v["metadata"]["event_type"], "task_created");
        assert_eq!(v["metadata"]["event_payload"]["id"], "T1");
        assert!(v.get("bot_profile").is_none(), "a person's message: {v}");
        rich.bot = true;
        let v: serde_json::Value = serde_json::from_str(&message_json(&rich)).unwrap();
        assert_eq!(
            v["bot_profile"],
            serde_json::json!({"id": rich.user.0, "deleted": false, "name": "tasks",
                               "app_id": format!("A{}", &rich.user.0[1..]), "team_id": "TW"})
        );
        assert_eq!(v["bot_id"], rich.user.0.as_str());
        rich.bot = false;
        assert_eq!(v["attachments"], serde_json::json!([{"fallback": "f"}]));
        let v: serde_json::Value = serde_json::from_str(&message_json(&base)).unwrap();
        assert!(v.get("blocks").is_none() && v.get("attachments").is_none());
        rich.kind = MessageKind::Edited {
            target: Ts(1_000_000),
        };
        let v: serde_json::Value = serde_json::from_str(&message_json(&rich)).unwrap();
        assert_eq!(
            v["message"]["blocks"],
            serde_json::json!([{"type": "divider"}])
        );
        assert_eq!(v["message"]["attachments"][0]["fallback"], "f");

        // A bot's message carries its bot id (its user id, as `auth.test` gives it), in the
        // message and in an edit of it; a person's carries none.
        let v: serde_json::Value = serde_json::from_str(&message_json(&base)).unwrap();
        assert!(v.get("bot_id").is_none(), "{v}");
        let mut from_bot = base.clone();
        from_bot.bot = true;
        let v: serde_json::Value = serde_json::from_str(&message_json(&from_bot)).unwrap();
        assert_eq!(v["bot_id"], from_bot.user.0.as_str(), "{v}");
        from_bot.kind = MessageKind::Edited {
            target: Ts(1_000_000),
        };
        let v: serde_json::Value = serde_json::from_str(&message_json(&from_bot)).unwrap();
        assert_eq!(v["message"]["bot_id"], from_bot.user.0.as_str(), "{v}");
        // With the name and icon it gave the message, in the message and in its edit.
        from_bot.rich = crate::protocol::RichContent {
            identity: Some(crate::protocol::Identity {
                username: Some("Deploy: prod".into()),
                icon_emoji: Some(":rocket:".into()),
                icon_url: None,
            }),
            ..Default::default()
        }
        .boxed();
        let v: serde_json::Value = serde_json::from_str(&message_json(&from_bot)).unwrap();
        assert_eq!(v["message"]["username"], "Deploy: prod", "{v}");
        assert_eq!(v["message"]["icons"]["emoji"], ":rocket:", "{v}");
        from_bot.kind = MessageKind::Posted;
        let v: serde_json::Value = serde_json::from_str(&message_json(&from_bot)).unwrap();
        assert_eq!(v["username"], "Deploy: prod", "{v}");
        assert_eq!(v["icons"], serde_json::json!({"emoji": ":rocket:"}), "{v}");

        // A channel's topic or purpose announcement: Slack's subtype and the new text.
        for (sets, subtype, field, text) in [
            (
                ChannelSetting::Topic("launch day".into()),
                "channel_topic",
                "topic",
                "set the channel topic: launch day",
            ),
            (
                ChannelSetting::Purpose(String::new()),
                "channel_purpose",
                "purpose",
                "cleared the channel purpose",
            ),
        ] {
            assert_eq!(sets.text(), text);
            let mut m = base.clone();
            m.text = sets.text();
            m.rich = crate::protocol::RichContent {
                sets: Some(sets.clone()),
                ..Default::default()
            }
            .boxed();
            let v: serde_json::Value = serde_json::from_str(&message_json(&m)).unwrap();
            assert_eq!(v["subtype"], subtype, "{v}");
            assert_eq!(v[field], sets.field().1, "{v}");
            assert_eq!(v["text"], text);
            assert!(v.get("blocks").is_none(), "{v}");
            let mut history = serde_json::json!({"type": "message"});
            m.rich.as_ref().unwrap().add_to(&mut history);
            assert_eq!(
                (&history["subtype"], &history[field]),
                (&v["subtype"], &v[field])
            );
        }
    }

    /// Every kind of entry counts the same whether judged as stored or as rendered, and only
    /// the messages shown in the channel that others posted, and still there, are unread.
    #[test]
    fn unread_messages_are_others_channel_messages_still_there() {
        use crate::ids::{UserId, WorkspaceId};
        let entry = |seq: Seq, user: &str, kind: MessageKind| Message {
            workspace: WorkspaceId::from("TW"),
            channel: ChannelId::from("CX"),
            seq,
            ts: Ts(seq * 1_000_000),
            user: UserId::from(user),
            text: format!("entry {seq}"),
            client_msg_id: None,
            thread_ts: None,
            kind,
            previous: None,
            broadcast: false,
            bot: false,
            rich: None,
        };
        let ts = |seq: Seq| Ts(seq * 1_000_000);
        let mut stream = vec![
            entry(1, "UB", MessageKind::Posted),
            entry(2, "UME", MessageKind::Posted),
            entry(
                3,
                "UB",
                MessageKind::ReactionAdded {
                    target: ts(1),
                    reaction: "wave".into(),
                },
            ),
            entry(4, "UB", MessageKind::Edited { target: ts(1) }),
            entry(5, "UB", MessageKind::Pinned { target: ts(1) }),
            entry(6, "UC", MessageKind::Posted),
            entry(7, "UC", MessageKind::Posted),
            entry(8, "UC", MessageKind::Deleted { target: ts(6) }),
            // A deletion of a message older than the run changes nothing here.
            entry(9, "UC", MessageKind::Deleted { target: ts(0) }),
            entry(10, "UB", MessageKind::Posted),
            entry(11, "UB", MessageKind::Posted),
            entry(12, "UB", MessageKind::Posted),
        ];
        // A reply stays in its thread; one also sent to the channel is read there.
        stream[9].thread_ts = Some(ts(7));
        stream[10].thread_ts = Some(ts(7));
        stream[10].broadcast = true;
        // A root that kept its replies becomes a tombstone when deleted: gone too.
        stream.push(entry(13, "UB", MessageKind::Deleted { target: ts(7) }));
        stream[12].thread_ts = Some(ts(7));
        // A bot's message and a topic change are messages to read.
        let mut bot = entry(14, "UBOT", MessageKind::Posted);
        bot.bot = true;
        stream.push(bot);
        let mut topic = entry(15, "UC", MessageKind::Posted);
        topic.rich = crate::protocol::RichContent {
            sets: Some(ChannelSetting::Topic("launch".into())),
            ..Default::default()
        }
        .boxed();
        stream.push(topic);

        // Mentions: an edit makes 1 mention the reader; 12 calls on everyone here, 14 on a
        // group the reader is in; 16 and 17 mention someone else and another group.
        stream[3].text = "now for <@UME>".into();
        stream[11].text = "<!here> standup".into();
        stream[12].text = "<@UME> deleted anyway".into();
        stream[13].text = "<!subteam^SONCALL|@oncall> paged".into();
        let mut other = entry(16, "UC", MessageKind::Posted);
        other.text = "<@UOTHER> and &lt;@UME&gt; typed".into();
        stream.push(other);
        let mut group = entry(17, "UC", MessageKind::Posted);
        group.text = "<!subteam^SOTHER|@design>".into();
        stream.push(group);

        let groups = ["SONCALL".to_string()];
        let reader = Reader {
            user: "UME",
            groups: &groups,
        };
        let stored: Vec<UnreadEffect> = stream.iter().map(|m| unread_effect(m, &reader)).collect();
        let rendered: Vec<UnreadEffect> = stream
            .iter()
            .map(|m| unread_effect_of_event(&message_json(m), &reader))
            .collect();
        assert_eq!(stored, rendered);
        let adds = |seq: Seq, mention| UnreadEffect::Adds(ts(seq).to_slack(), mention);
        assert_eq!(stored[0], adds(1, false));
        assert_eq!(stored[1], UnreadEffect::Nothing, "the reader's own");
        assert_eq!(
            stored[2..5],
            [
                UnreadEffect::Nothing,
                UnreadEffect::Edits(ts(1).to_slack(), true),
                UnreadEffect::Nothing
            ]
        );
        assert_eq!(stored[9], UnreadEffect::Nothing, "a reply");
        assert_eq!(stored[10], adds(11, false), "a broadcast reply");
        assert_eq!(stored[11], adds(12, true), "<!here>");
        assert_eq!(stored[12], UnreadEffect::Removes(ts(7).to_slack()));
        // 1, 11, 12, 14, 15, 16 and 17: 6 and 7 were deleted. Mentions: 1 (as edited), 12, 14.
        let expected = UnreadCount {
            messages: 7,
            mentions: 3,
        };
        assert_eq!(count_unread(stored), expected);
        assert_eq!(count_unread(rendered), expected);
        // Nobody: the same messages, no mentions but everyone's.
        let nobody: Vec<UnreadEffect> = stream
            .iter()
            .map(|m| unread_effect(m, &Reader::NOBODY))
            .collect();
        assert_eq!(
            count_unread(nobody),
            UnreadCount {
                messages: 8,
                mentions: 1
            },
            "the reader's own message counts for nobody; only <!here> mentions nobody"
        );
        for junk in ["", "{", "[]", r#"{"type":"message"}"#, r#"{"type":7}"#] {
            assert_eq!(
                unread_effect_of_event(junk, &reader),
                UnreadEffect::Nothing,
                "{junk}"
            );
        }
    }

    #[test]
    fn a_mention_is_the_readers_id_everyone_or_a_group_of_its_own() {
        let groups = ["SONCALL".to_string()];
        let reader = Reader {
            user: "UME",
            groups: &groups,
        };
        for (text, mentions) in [
            ("<@UME>", true),
            ("hi <@UME|me>, see this", true),
            ("<@UMEX> <@UM> <@ume>", false),
            ("<!channel>", true),
            ("<!here|here>", true),
            ("<!everyone>", true),
            ("<!subteam^SONCALL|@oncall>", true),
            ("<!subteam^SONCALLX> <!subteam^>", false),
            ("<!date^1392734382^{date}|Feb 18>", false),
            ("<#CUME|general> <mailto:UME>", false),
            ("&lt;@UME&gt; typed by hand", false),
            ("<@UME", false),
            ("<<@UME>", true),
            ("<", false),
            ("", false),
            ("ünïcödé <@UME> ✓", true),
        ] {
            assert_eq!(reader.is_mentioned_in(text), mentions, "{text}");
        }
        assert!(!Reader::NOBODY.is_mentioned_in("<@> <@UME>"));
        assert!(Reader::NOBODY.is_mentioned_in("<!channel>"));
    }

    #[test]
    fn edits_and_deletions_say_what_the_message_was() {
        use super::super::model::PreviousMessage;
        use crate::ids::{Ts, UserId, WorkspaceId};
        let previous = PreviousMessage {
            user: UserId::from("UA"),
            text: "old text".into(),
            thread_ts: Some(Ts(500_000)),
            edited: Some(Ts(1_500_000)),
            rich: crate::protocol::RichContent {
                blocks: Some(r#"[{"type":"divider"}]"#.into()),
                ..Default::default()
            }
            .boxed(),
        };
        let mut m = Message {
            workspace: WorkspaceId::from("TW"),
            channel: ChannelId::from("CX"),
            seq: 9,
            ts: Ts(2_000_000),
            user: UserId::from("UA"),
            text: "new text".into(),
            client_msg_id: None,
            thread_ts: None,
            kind: MessageKind::Edited {
                target: Ts(1_000_000),
            },
            previous: Some(Box::new(previous)),
            broadcast: false,
            bot: false,
            rich: None,
        };
        let v: serde_json::Value = serde_json::from_str(&message_json(&m)).unwrap();
        assert_eq!(v["subtype"], "message_changed");
        assert_eq!(v["message"]["text"], "new text");
        assert_eq!(
            v["message"]["thread_ts"], "0.500000",
            "an edited reply stays a reply"
        );
        let p = &v["previous_message"];
        assert_eq!(p["type"], "message");
        assert_eq!(p["text"], "old text");
        assert_eq!(p["user"], "UA");
        assert_eq!(p["ts"], "1.000000");
        assert_eq!(p["thread_ts"], "0.500000");
        assert_eq!(p["edited"]["ts"], "1.500000");
        assert_eq!(p["blocks"], serde_json::json!([{"type": "divider"}]));

        m.kind = MessageKind::Deleted {
            target: Ts(1_000_000),
        };
        m.text = String::new();
        let v: serde_json::Value = serde_json::from_str(&message_json(&m)).unwrap();
        assert_eq!(v["subtype"], "message_deleted");
        assert_eq!(v["deleted_ts"], "1.000000");
        assert_eq!(v["previous_message"]["text"], "old text");

        // A thread parent becoming a tombstone: the change says what it was too.
        m.thread_ts = Some(Ts(1_000_000));
        let v: serde_json::Value = serde_json::from_str(&message_json(&m)).unwrap();
        assert_eq!(v["message"]["subtype"], "tombstone");
        assert_eq!(v["previous_message"]["text"], "old text");

        // Entries stored before the previous state was kept render without it.
        m.previous = None;
        let v: serde_json::Value = serde_json::from_str(&message_json(&m)).unwrap();
        assert!(v.get("previous_message").is_none(), "{v}");
    }

    #[test]
    fn error_events_carry_reply_to() {
        let v: serde_json::Value =
            serde_json::from_str(&error_json(2, "unknown event", Some(9))).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["reply_to"], 9);
        assert_eq!(v["error"]["code"], 2);
    }
}
