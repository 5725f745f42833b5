//! Types carried by both the mesh and the client protocol.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ChannelId, NodeId, RingEpoch, Seq, Ts, UserId, WorkspaceId};

/// A message as posted by a client, before its channel server has placed it in the channel's
/// order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub workspace: WorkspaceId,
    pub channel: ChannelId,
    pub user: UserId,
    pub text: String,
    /// Client-chosen idempotency key: posting twice with the same key stores one message.
    pub client_msg_id: Option<String>,
    /// Parent of a thread reply.
    pub thread_ts: Option<Ts>,
    /// A new message, or a change to an earlier one.
    pub kind: MessageKind,
    /// A thread reply also shown in the channel (Slack's `reply_broadcast`, drawn as subtype
    /// `thread_broadcast`). Only for a posted reply.
    #[serde(default)]
    pub broadcast: bool,
    /// Posted by a bot user: clients see its `bot_id`, which bots check to ignore other
    /// bots (and their own) and not answer each other in a loop.
    #[serde(default)]
    pub bot: bool,
    /// Its Block Kit `blocks` and legacy `attachments`, for a message or an edit that has
    /// them (an edit's are the message's whole new set).
    #[serde(default, with = "rich_wire")]
    pub rich: Option<Box<RichContent>>,
}

/// What a message carries beyond its text: its Block Kit `blocks` and legacy `attachments` as
/// the poster gave them (compact JSON arrays that the Web API checked), and, for a message the
/// Web API posts when a channel's topic or purpose changes, the new text. Clients draw them;
/// the message's `text` holds their text too, for notifications, search and clients that draw
/// only text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RichContent {
    pub blocks: Option<String>,
    pub attachments: Option<String>,
    /// Slack's `channel_topic` / `channel_purpose` message: what the channel's text became.
    /// (Stored as JSON, where older rows lack it.)
    #[serde(default)]
    pub sets: Option<ChannelSetting>,
    /// A bot's own name and icon for this message (`chat.postMessage`'s `username`,
    /// `icon_emoji`, `icon_url`). (Stored as JSON, where older rows lack it.)
    #[serde(default)]
    pub identity: Option<Identity>,
    /// Slack's message metadata: `{"event_type": …, "event_payload": {…}}`, as JSON text that
    /// the Web API checked and wrote. (Stored as JSON, where older rows lack it.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// A bot's name when it posted, for Slack's `bot_profile`. (Stored as JSON, where older
    /// rows lack it.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_name: Option<String>,
    /// A `/me` message (`chat.meMessage`): Slack's subtype `me_message`. (Stored as JSON,
    /// where older rows lack it.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub me: bool,
    /// The files shared with the message (`files.completeUploadExternal`): Slack's file
    /// objects as a JSON array, as they were when shared. (Stored as JSON, where older rows
    /// lack it.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<String>,
}

/// Whether `name` is an emoji name as Slack writes one without its colons (`tada`, `+1`,
/// `thumbsup::skin-tone-2`): 1 to 100 of lower-case letters, digits, `_`, `+`, `-` and `:`,
/// and with `apostrophe` also `'` (as icon names may have).
pub fn is_emoji_name(name: &str, apostrophe: bool) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, '_' | '+' | '-' | ':')
                || (apostrophe && c == '\'')
        })
}

/// The name and icon a bot gave one message, which clients draw instead of the bot's
/// (Slack's `username` and `icons` on the message).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// An emoji name in colons, `:robot_face:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon_emoji: Option<String>,
    /// An image's `http(s)` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon_url: Option<String>,
}

impl Identity {
    /// `None` when it names nothing.
    pub fn some(self) -> Option<Identity> {
        (self.username.is_some() || self.icon_emoji.is_some() || self.icon_url.is_some())
            .then_some(self)
    }

    fn string_bytes(&self) -> usize {
        [&self.username, &self.icon_emoji, &self.icon_url]
            .iter()
            .map(|s| s.as_ref().map_or(0, String::len))
            .sum()
    }

    /// Slack's `icons` of the message: the emoji, else the image in each size.
    pub fn icons(&self) -> Option<serde_json::Value> {
        match (&self.icon_emoji, &self.icon_url) {
            (Some(emoji), _) => Some(serde_json::json!({ "emoji": emoji })),
            (None, Some(url)) => {
                Some(serde_json::json!({ "image_36": url, "image_48": url, "image_72": url }))
            }
            (None, None) => None,
        }
    }

    /// Puts Slack's `username` and `icons` into the message object `message`.
    fn add_to(&self, message: &mut serde_json::Value) {
        if let Some(name) = &self.username {
            message["username"] = name.as_str().into();
        }
        if let Some(icons) = self.icons() {
            message["icons"] = icons;
        }
    }
}

/// How the `rich` fields of [`NewMessage`], [`Message`] and [`PreviousMessage`] are written.
/// In JSON (the stores, the change feed) as the object they are. In the mesh's bincode, which
/// reads fields by position, as a list of `(tag, text)` pairs of the fields that are set, and
/// a reader skips a tag it does not know: a field added to [`RichContent`] takes a new tag and
/// needs no new protocol version. (During a rolling upgrade an older node drops the new field:
/// an older channel server stores the message without it.)
mod rich_wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{ChannelSetting, Identity, RichContent};

    const BLOCKS: u8 = 1;
    const ATTACHMENTS: u8 = 2;
    const TOPIC: u8 = 3;
    const PURPOSE: u8 = 4;
    const USERNAME: u8 = 5;
    const ICON_EMOJI: u8 = 6;
    const ICON_URL: u8 = 7;
    const METADATA: u8 = 8;
    const BOT_NAME: u8 = 9;
    /// Present (with no text) for a `/me` message.
    const ME: u8 = 10;
    const FILES: u8 = 11;

    type Rich = Option<Box<RichContent>>;

    pub fn serialize<S: Serializer>(rich: &Rich, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return rich.serialize(s);
        }
        let Some(r) = rich.as_deref() else {
            return None::<Vec<(u8, &str)>>.serialize(s);
        };
        let identity = r.identity.as_ref();
        let pairs: Vec<(u8, &str)> = [
            (BLOCKS, r.blocks.as_deref()),
            (ATTACHMENTS, r.attachments.as_deref()),
            (
                TOPIC,
                match &r.sets {
                    Some(ChannelSetting::Topic(t)) => Some(t.as_str()),
                    _ => None,
                },
            ),
            (
                PURPOSE,
                match &r.sets {
                    Some(ChannelSetting::Purpose(p)) => Some(p.as_str()),
                    _ => None,
                },
            ),
            (USERNAME, identity.and_then(|i| i.username.as_deref())),
            (ICON_EMOJI, identity.and_then(|i| i.icon_emoji.as_deref())),
            (ICON_URL, identity.and_then(|i| i.icon_url.as_deref())),
            (METADATA, r.metadata.as_deref()),
            (BOT_NAME, r.bot_name.as_deref()),
            (ME, r.me.then_some("")),
            (FILES, r.files.as_deref()),
        ]
        .into_iter()
        .filter_map(|(tag, text)| Some((tag, text?)))
        .collect();
        Some(pairs).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Rich, D::Error> {
        if d.is_human_readable() {
            return Rich::deserialize(d);
        }
        let Some(pairs) = Option::<Vec<(u8, String)>>::deserialize(d)? else {
            return Ok(None);
        };
        let mut rich = RichContent::default();
        let mut identity = Identity::default();
        for (tag, text) in pairs {
            match tag {
                BLOCKS => rich.blocks = Some(text),
                ATTACHMENTS => rich.attachments = Some(text),
                TOPIC => rich.sets = Some(ChannelSetting::Topic(text)),
                PURPOSE => rich.sets = Some(ChannelSetting::Purpose(text)),
                USERNAME => identity.username = Some(text),
                ICON_EMOJI => identity.icon_emoji = Some(text),
                ICON_URL => identity.icon_url = Some(text),
                METADATA => rich.metadata = Some(text),
                BOT_NAME => rich.bot_name = Some(text),
                ME => rich.me = true,
                FILES => rich.files = Some(text),
                // A field of a newer node's: skipped.
                _ => {}
            }
        }
        rich.identity = identity.some();
        Ok(Some(Box::new(rich)))
    }
}

/// A channel text that a `channel_topic` or `channel_purpose` message announces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelSetting {
    Topic(String),
    Purpose(String),
}

impl ChannelSetting {
    /// The message's Slack subtype.
    pub fn subtype(&self) -> &'static str {
        match self {
            ChannelSetting::Topic(_) => "channel_topic",
            ChannelSetting::Purpose(_) => "channel_purpose",
        }
    }

    /// The message field that carries the new text (`topic` or `purpose`), and the text.
    pub fn field(&self) -> (&'static str, &str) {
        match self {
            ChannelSetting::Topic(t) => ("topic", t),
            ChannelSetting::Purpose(p) => ("purpose", p),
        }
    }

    /// The message's text, as Slack words it.
    pub fn text(&self) -> String {
        match self.field() {
            (what, "") => format!("cleared the channel {what}"),
            (what, value) => format!("set the channel {what}: {value}"),
        }
    }
}

impl RichContent {
    /// `None` when it holds nothing.
    pub fn boxed(self) -> Option<Box<RichContent>> {
        (self.blocks.is_some()
            || self.attachments.is_some()
            || self.sets.is_some()
            || self.identity.is_some()
            || self.metadata.is_some()
            || self.bot_name.is_some()
            || self.me
            || self.files.is_some())
        .then(|| Box::new(self))
    }

    /// The bytes of its strings (what it adds to a frame, less a few bytes of lengths).
    pub fn string_bytes(&self) -> usize {
        self.blocks.as_ref().map_or(0, String::len)
            + self.attachments.as_ref().map_or(0, String::len)
            + self.sets.as_ref().map_or(0, |s| s.field().1.len())
            + self.identity.as_ref().map_or(0, Identity::string_bytes)
            + self.metadata.as_ref().map_or(0, String::len)
            + self.bot_name.as_ref().map_or(0, String::len)
            + self.files.as_ref().map_or(0, String::len)
    }

    /// Its `metadata` as JSON.
    pub fn metadata_value(&self) -> Option<serde_json::Value> {
        self.metadata
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
    }

    /// Its `blocks` as JSON (what was stored is what the Web API checked and wrote).
    pub fn blocks_value(&self) -> Option<serde_json::Value> {
        self.blocks
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
    }

    /// Its `files` as JSON.
    pub fn files_value(&self) -> Option<serde_json::Value> {
        self.files
            .as_deref()
            .and_then(|f| serde_json::from_str(f).ok())
    }

    /// Its `attachments` as JSON.
    pub fn attachments_value(&self) -> Option<serde_json::Value> {
        self.attachments
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
    }

    /// Puts `blocks` and `attachments` (those it has) into the message object `message`,
    /// and for a channel's announcement its subtype and new text.
    pub fn add_to(&self, message: &mut serde_json::Value) {
        if let Some(blocks) = self.blocks_value() {
            message["blocks"] = blocks;
        }
        if let Some(attachments) = self.attachments_value() {
            message["attachments"] = attachments;
        }
        if self.me {
            message["subtype"] = "me_message".into();
        }
        if let Some(files) = self.files_value() {
            // Slack's message with files: subtype `file_share` (unless it is a broadcast
            // reply), the files, and `upload`.
            message["files"] = files;
            message["upload"] = true.into();
            if message.get("subtype").is_none() {
                message["subtype"] = "file_share".into();
            }
        }
        if let Some(sets) = &self.sets {
            message["subtype"] = sets.subtype().into();
            let (field, value) = sets.field();
            message[field] = value.into();
        }
        if let Some(identity) = &self.identity {
            identity.add_to(message);
        }
        if let Some(metadata) = self.metadata_value() {
            message["metadata"] = metadata;
        }
    }
}

/// What an entry of a channel's stream is. Every entry, edits, deletions and reactions
/// included, takes the channel's next `seq`: subscribers see changes in the same total order
/// as messages, and a resume replays them too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    /// A new message (its `ts` is its id; `thread_ts` makes it a reply).
    #[default]
    Posted,
    /// The message `target` now reads `text`.
    Edited { target: Ts },
    /// The message `target` was deleted.
    Deleted { target: Ts },
    /// `user` reacted to `target` with `reaction`.
    ReactionAdded { target: Ts, reaction: String },
    /// `user` took back `reaction` on `target`.
    ReactionRemoved { target: Ts, reaction: String },
    /// `user` pinned `target` to the channel (Slack's pins). Mesh version 6.
    Pinned { target: Ts },
    /// `user` unpinned `target`.
    Unpinned { target: Ts },
}

impl MessageKind {
    /// The stored name of the kind.
    pub fn name(&self) -> &'static str {
        match self {
            MessageKind::Posted => "posted",
            MessageKind::Edited { .. } => "edited",
            MessageKind::Deleted { .. } => "deleted",
            MessageKind::ReactionAdded { .. } => "reaction_added",
            MessageKind::ReactionRemoved { .. } => "reaction_removed",
            MessageKind::Pinned { .. } => "pinned",
            MessageKind::Unpinned { .. } => "unpinned",
        }
    }

    /// The message a change applies to.
    pub fn target(&self) -> Option<Ts> {
        match self {
            MessageKind::Posted => None,
            MessageKind::Edited { target }
            | MessageKind::Deleted { target }
            | MessageKind::ReactionAdded { target, .. }
            | MessageKind::ReactionRemoved { target, .. }
            | MessageKind::Pinned { target }
            | MessageKind::Unpinned { target } => Some(*target),
        }
    }

    pub fn reaction(&self) -> Option<&str> {
        match self {
            MessageKind::ReactionAdded { reaction, .. }
            | MessageKind::ReactionRemoved { reaction, .. } => Some(reaction),
            _ => None,
        }
    }

    /// Rebuilds a kind from its stored parts.
    pub fn from_parts(
        name: &str,
        target: Option<Ts>,
        reaction: Option<String>,
    ) -> Option<MessageKind> {
        Some(match name {
            "posted" => MessageKind::Posted,
            "edited" => MessageKind::Edited { target: target? },
            "deleted" => MessageKind::Deleted { target: target? },
            "reaction_added" => MessageKind::ReactionAdded {
                target: target?,
                reaction: reaction?,
            },
            "reaction_removed" => MessageKind::ReactionRemoved {
                target: target?,
                reaction: reaction?,
            },
            "pinned" => MessageKind::Pinned { target: target? },
            "unpinned" => MessageKind::Unpinned { target: target? },
            _ => return None,
        })
    }
}

/// An entry placed in its channel's total order: the unit that is stored, fanned out and
/// replayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub workspace: WorkspaceId,
    pub channel: ChannelId,
    /// Contiguous from 1 within the channel.
    pub seq: Seq,
    /// Unique and increasing within the channel; Slack's message id.
    pub ts: Ts,
    pub user: UserId,
    pub text: String,
    pub client_msg_id: Option<String>,
    pub thread_ts: Option<Ts>,
    pub kind: MessageKind,
    /// For an edit or a deletion: the message as it was just before (Slack's
    /// `previous_message`). For a broadcast reply: its thread's root as it was when the reply
    /// was placed (Slack's `root`). Filled in by the channel's owner when it places the entry,
    /// so it is what the channel's order had, whatever raced. `None` for other entries, and
    /// for entries stored before it was kept.
    #[serde(default)]
    pub previous: Option<Box<PreviousMessage>>,
    /// A thread reply also shown in the channel ([`NewMessage::broadcast`]).
    #[serde(default)]
    pub broadcast: bool,
    /// Posted by a bot user ([`NewMessage::bot`]).
    #[serde(default)]
    pub bot: bool,
    /// Its `blocks` and `attachments` ([`NewMessage::rich`]).
    #[serde(default, with = "rich_wire")]
    pub rich: Option<Box<RichContent>>,
}

/// A message as it was before an edit or a deletion changed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousMessage {
    pub user: UserId,
    pub text: String,
    pub thread_ts: Option<Ts>,
    /// When it had last been edited, if it had.
    pub edited: Option<Ts>,
    /// Its blocks and attachments. (Stored as JSON, where older entries lack it.)
    #[serde(default, with = "rich_wire")]
    pub rich: Option<Box<RichContent>>,
}

impl Message {
    /// Places a posted message at `seq`/`ts`.
    pub fn from_new(new: NewMessage, seq: Seq, ts: Ts) -> Self {
        Message {
            workspace: new.workspace,
            channel: new.channel,
            seq,
            ts,
            user: new.user,
            text: new.text,
            client_msg_id: new.client_msg_id,
            thread_ts: new.thread_ts,
            kind: new.kind,
            previous: None,
            broadcast: new.broadcast,
            bot: new.bot,
            rich: new.rich,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Presence {
    Active,
    Away,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Active => "active",
            Presence::Away => "away",
        }
    }
}

/// Not persisted: relayed through the channel's owner to every subscribed gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EphemeralEvent {
    Typing { user: UserId },
    Presence { user: UserId, presence: Presence },
}

/// Events addressed to users rather than channels (membership changes), broadcast by the
/// admin server to every gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserEvent {
    /// `user` joined `channel`: its sessions start receiving the channel.
    ChannelJoined {
        workspace: WorkspaceId,
        channel: ChannelId,
        user: UserId,
        channel_name: String,
        /// The channel's last stored `seq`, read before the membership was stored; `None`
        /// where unknown (a gateway's membership resync). The user's sessions start after it,
        /// so a message posted after the join reaches them even when it reaches their gateway
        /// before this event does. It may be a little early (a message stored between the
        /// read and the join is delivered too), never late.
        after_seq: Option<Seq>,
        /// A private channel (direct messages are private too): RTM's `channel_joined`
        /// says `is_private`, and Socket Mode's events say `channel_type` `group`.
        #[serde(default)]
        private: bool,
    },
    /// `user` left `channel`: its sessions stop receiving the channel.
    ChannelLeft {
        workspace: WorkspaceId,
        channel: ChannelId,
        user: UserId,
    },
    // Variants below were added for Flannel (the edge cache); new ones go at the end so that
    // the bincode tags of the ones above never change.
    /// A user was created or its profile changed; carries the whole profile as stored.
    UserChanged {
        workspace: WorkspaceId,
        user: UserProfile,
    },
    /// A channel was created (its creator's `ChannelJoined` follows).
    ChannelCreated {
        workspace: WorkspaceId,
        channel: ChannelSummary,
    },
    /// A channel was renamed, archived, unarchived or got a new topic or purpose; carries the
    /// whole channel as stored.
    ChannelChanged {
        workspace: WorkspaceId,
        channel: ChannelSummary,
    },
    /// `user` marked `channel` read up to `seq` (`conversations.mark`).
    ReadMarked {
        workspace: WorkspaceId,
        channel: ChannelId,
        user: UserId,
        seq: Seq,
    },
    /// Gateway -> admin server: `user` now has (`online`) or no longer has sessions on
    /// `gateway`. The admin server aggregates these into presence.
    PresenceReport {
        workspace: WorkspaceId,
        user: UserId,
        gateway: NodeId,
        online: bool,
    },
    /// Web API -> admin server: `users.setPresence` (`away: true` is manual away, `false` is
    /// auto).
    PresenceSet {
        workspace: WorkspaceId,
        user: UserId,
        away: bool,
    },
    /// Admin server -> gateways: `user`'s presence changed (after debouncing).
    PresenceChanged {
        workspace: WorkspaceId,
        user: UserId,
        presence: Presence,
    },
    /// Web API -> gateways (`chat.postEphemeral`): `event`, a rendered RTM `message` event, for
    /// `user`'s sessions in `channel` alone. Not stored and not in the channel's stream: a
    /// session that is not connected when it passes never sees it, as in Slack.
    Ephemeral {
        workspace: WorkspaceId,
        channel: ChannelId,
        user: UserId,
        event: String,
    },
    /// Web API -> gateways: `event`, a rendered RTM event about the workspace (Slack's
    /// `channel_created`, `channel_rename`, `channel_archive`, `team_join`, `user_change`, and
    /// the `group_*` forms of a private channel's), for every session of the workspace, or
    /// with `members_of` only for the sessions that follow that channel. Not stored: a
    /// session that is not connected reads the state from its boot data.
    Notice {
        workspace: WorkspaceId,
        members_of: Option<ChannelId>,
        event: String,
    },
    /// Web API -> gateways: `event`, a rendered RTM event for `user`'s sessions alone (Slack's
    /// `subteam_self_added`). Not stored. Mesh version 7.
    UserNotice {
        workspace: WorkspaceId,
        user: UserId,
        event: String,
    },
}

impl UserEvent {
    /// The workspace the event belongs to.
    pub fn workspace(&self) -> &WorkspaceId {
        match self {
            UserEvent::ChannelJoined { workspace, .. }
            | UserEvent::ChannelLeft { workspace, .. }
            | UserEvent::UserChanged { workspace, .. }
            | UserEvent::ChannelCreated { workspace, .. }
            | UserEvent::ChannelChanged { workspace, .. }
            | UserEvent::ReadMarked { workspace, .. }
            | UserEvent::PresenceReport { workspace, .. }
            | UserEvent::PresenceSet { workspace, .. }
            | UserEvent::PresenceChanged { workspace, .. }
            | UserEvent::Ephemeral { workspace, .. }
            | UserEvent::Notice { workspace, .. }
            | UserEvent::UserNotice { workspace, .. } => workspace,
        }
    }
}

/// A user as caches and clients see it (no secrets, nothing a client may not read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProfile {
    pub id: UserId,
    /// Unique in the workspace (the `@handle`).
    pub name: String,
    pub real_name: String,
    /// What clients show; empty means "use `name`" (as in Slack).
    pub display_name: String,
    pub is_bot: bool,
    pub is_admin: bool,
    pub deleted: bool,
    /// Empty when the user has none.
    #[serde(default)]
    pub email: String,
}

/// A channel as caches and clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSummary {
    pub id: ChannelId,
    /// Without the `#`.
    pub name: String,
    pub is_private: bool,
    pub is_archived: bool,
    pub topic: String,
    pub purpose: String,
    pub created: Ts,
    pub creator: UserId,
}

/// One membership row of a [`WorkspaceSnapshot`]: channel, user, and the last `seq` the user
/// marked read there (0: never marked). A JSON array, to keep large snapshots small.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow(pub ChannelId, pub UserId, pub Seq);

/// Everything Flannel caches about one workspace, as the Web API's
/// `internal.flannel.snapshot` returns it (JSON, besides `ok`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceSnapshot {
    pub workspace: WorkspaceId,
    pub workspace_name: String,
    pub users: Vec<UserProfile>,
    pub channels: Vec<ChannelSummary>,
    pub members: Vec<MemberRow>,
    /// The workspace's user groups, disabled ones too (absent from a Web API older than
    /// them: none).
    #[serde(default)]
    pub usergroups: Vec<crate::store::UserGroup>,
    /// The direct messages their members closed (`conversations.close`) and no message has
    /// opened again since: `(channel, user)`, one per member that has it closed (absent from
    /// a Web API older than them: none).
    #[serde(default)]
    pub closed_dms: Vec<(ChannelId, UserId)>,
}

/// The roles a node can play in the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Gateway,
    ChannelServer,
    AdminServer,
    WebApi,
    Flannel,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::ChannelServer => "channel-server",
            Role::AdminServer => "admin-server",
            Role::WebApi => "webapp",
            Role::Flannel => "flannel",
        }
    }
}

/// A channel server as the ring sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingMember {
    pub node: NodeId,
    /// Where its QUIC mesh endpoint listens.
    pub mesh_addr: String,
    /// Draining members keep serving what they own until the new epoch is out, but own
    /// nothing in it.
    pub draining: bool,
}

/// The ring as the admin server publishes it: everything a node needs to place channels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingState {
    pub epoch: RingEpoch,
    pub members: Vec<RingMember>,
    /// Virtual nodes per member.
    pub vnodes: u32,
}

/// Last sequence seen per channel, as a resuming client reports it.
pub type ResumePoint = BTreeMap<ChannelId, Seq>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wire(#[serde(with = "rich_wire")] Option<Box<RichContent>>);

    fn binary<T: Serialize>(v: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap()
    }

    fn from_binary<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        bincode::serde::decode_from_slice::<T, _>(bytes, bincode::config::standard())
            .map(|(v, _)| v)
            .map_err(|e| e.to_string())
    }

    fn full() -> RichContent {
        RichContent {
            blocks: Some(r#"[{"type":"divider"}]"#.into()),
            attachments: Some(r#"[{"fallback":"f \"quoted\""}]"#.into()),
            sets: Some(ChannelSetting::Purpose("ship it".into())),
            identity: Some(Identity {
                username: Some("Deploy: prod".into()),
                icon_emoji: Some(":rocket:".into()),
                icon_url: Some("https://example.com/i.png".into()),
            }),
            metadata: Some(r#"{"event_type":"deploy","event_payload":{"env":"prod"}}"#.into()),
            bot_name: Some("deploybot".into()),
            me: true,
            files: Some(r#"[{"id":"F1","name":"a.txt"}]"#.into()),
        }
    }

    #[test]
    fn rich_content_travels_as_tagged_fields_and_stays_an_object_in_json() {
        for rich in [
            None,
            Some(Box::new(RichContent::default())),
            Some(Box::new(full())),
            RichContent {
                sets: Some(ChannelSetting::Topic(String::new())),
                ..Default::default()
            }
            .boxed(),
        ] {
            let wire = Wire(rich);
            assert_eq!(from_binary::<Wire>(&binary(&wire)).unwrap(), wire);
            let json = serde_json::to_string(&wire).unwrap();
            assert_eq!(serde_json::from_str::<Wire>(&json).unwrap(), wire);
        }
        // JSON (the stores, the change feed) keeps the object, and reads rows written before
        // `identity` existed.
        let json = serde_json::to_value(Wire(Some(Box::new(full())))).unwrap();
        assert_eq!(json["identity"]["username"], "Deploy: prod");
        let old: Wire =
            serde_json::from_str(r#"{"blocks":"[]","attachments":null,"sets":null}"#).unwrap();
        assert_eq!(old.0.unwrap().identity, None);
        // The binary form is the strings and a few bytes: no JSON escaping in the mesh.
        let r = full();
        let encoded = binary(&Wire(Some(Box::new(r.clone())))).len();
        assert!(encoded <= r.string_bytes() + 11 * 10 + 10, "{encoded}");
        // Rows written before `metadata` existed read as none; a row without it stays without.
        assert_eq!(
            serde_json::from_str::<Wire>(
                r#"{"blocks":"[]","attachments":null,"sets":null,"identity":null}"#
            )
            .unwrap()
            .0
            .unwrap()
            .metadata,
            None
        );
        let plain = RichContent {
            blocks: Some("[]".into()),
            ..Default::default()
        };
        assert!(!serde_json::to_string(&plain).unwrap().contains("metadata"));
    }

    #[test]
    fn a_reader_skips_rich_fields_it_does_not_know() {
        // What a newer node writes: a field this build has no tag for, between known ones.
        let newer: Option<Vec<(u8, String)>> = Some(vec![
            (1, "[]".into()),
            (200, "a field from the future".into()),
            (5, "ci-bot".into()),
        ]);
        let read: Wire = from_binary(&binary(&newer)).unwrap();
        let rich = read.0.unwrap();
        assert_eq!(rich.blocks.as_deref(), Some("[]"));
        assert_eq!(rich.identity.unwrap().username.as_deref(), Some("ci-bot"));
        // A truncated frame is an error, never a panic.
        let bytes = binary(&newer);
        assert!(from_binary::<Wire>(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn an_identity_draws_slack_s_username_and_icons() {
        let mut message = serde_json::json!({"type": "message", "text": "deployed"});
        full().add_to(&mut message);
        assert_eq!(message["username"], "Deploy: prod");
        assert_eq!(message["icons"], serde_json::json!({"emoji": ":rocket:"}));
        assert_eq!(message["metadata"]["event_payload"]["env"], "prod");
        let mut message = serde_json::json!({});
        RichContent {
            identity: Some(Identity {
                icon_url: Some("https://example.com/i.png".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
        .add_to(&mut message);
        assert!(message.get("username").is_none());
        assert_eq!(message["icons"]["image_48"], "https://example.com/i.png");
        assert_eq!(Identity::default().some(), None);
    }
}
