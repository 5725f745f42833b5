//! Storage: the [`MessageStore`] interface and its implementations.
//!
//! # Layout
//! - [`snapshot`]: a workspace's users, channels and memberships in one read (Flannel's load).
//! - [`sqlite`]: the embedded store (the default; no server needed). One SQLite file per
//!   workspace shard for messages and one for metadata; safe to share between the processes
//!   of one machine (WAL mode), which is how the multi-process tests and `dev` use it.
//!
//! # Invariants
//! - `(channel, seq)` is unique: an append at a taken sequence fails with
//!   [`StorageErrorKind::SeqConflict`], which fences two channel servers that briefly both
//!   believe they own a channel during a ring change.
//! - `(channel, client_msg_id)` is unique: a repeated post returns the stored message.
//! - An append that returned `Ok` is durable (committed and synced).

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod cql;
pub mod dm;
pub mod snapshot;
pub mod sqlite;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{ChannelId, Seq, Ts, UserId, WorkspaceId};
use crate::protocol::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// A name or id already exists (`name_taken`).
    AlreadyExists,
    /// The referenced row does not exist.
    NotFound,
    /// Another append took this `(channel, seq)` first.
    SeqConflict,
    /// The store could not be reached or failed.
    Unavailable,
    /// Stored bytes that could not be understood.
    Corrupt,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("storage error ({kind:?}): {message}")]
pub struct StorageError {
    pub kind: StorageErrorKind,
    pub message: String,
}

impl StorageError {
    pub fn new(kind: StorageErrorKind, message: impl Into<String>) -> Self {
        StorageError {
            kind,
            message: message.into(),
        }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: WorkspaceId,
    /// Unique, lower-case: the workspace's subdomain in Slack.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub workspace: WorkspaceId,
    /// Unique in the workspace.
    pub name: String,
    pub real_name: String,
    /// What clients show instead of `name` when set (`users.profile.set`); empty when not.
    pub display_name: String,
    pub is_admin: bool,
    pub is_bot: bool,
    /// Unique in the workspace, as [`normalize_email`] gives it; empty when the user has none.
    #[serde(default)]
    pub email: String,
    /// Deactivated (`admin.users.setInactive`): its tokens are refused and its sessions
    /// closed; it stays in the workspace's lists (Slack's `deleted: true`) and its messages
    /// stay.
    #[serde(default)]
    pub deleted: bool,
}

/// An email address as users are found by it: trimmed and lower-cased (addresses are
/// compared without case, as Slack does).
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub id: ChannelId,
    pub workspace: WorkspaceId,
    /// Unique in the workspace, without the `#`.
    pub name: String,
    pub is_private: bool,
    pub creator: UserId,
    pub created: Ts,
    pub topic: String,
    pub purpose: String,
    pub is_archived: bool,
}

/// One membership: the channel, the member, the last sequence it marked read there
/// (`conversations.mark`; 0 when never marked), and where it closed the channel if it is a
/// DM it closed ([`MessageStore::dm_closed`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub channel: ChannelId,
    pub user: UserId,
    pub last_read: Seq,
    #[serde(default)]
    pub closed: Option<Seq>,
}

/// Which slice of a channel's history to read. Bounds are exclusive, like Slack's `oldest` and
/// `latest` without `inclusive`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    pub after_seq: Option<Seq>,
    pub before_seq: Option<Seq>,
    pub oldest: Option<Ts>,
    pub latest: Option<Ts>,
    pub limit: u32,
    /// Newest first (Slack's `conversations.history` order) when true.
    pub newest_first: bool,
}

/// What [`MessageStore::user_channel_membership`] reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserChannelMembership {
    pub user: Option<User>,
    pub channel: Option<Channel>,
    /// Whether the user is a member of the channel (false when either does not exist).
    pub is_member: bool,
}

/// The result of an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Stored,
    /// A message with the same `client_msg_id` was already in the channel; nothing was written.
    Duplicate(Box<Message>),
}

/// What [`MessageStore::append_new`] did.
#[derive(Debug)]
pub enum GroupAppend {
    /// No message repeated a stored `client_msg_id`: each one's outcome, in order.
    Appended(Vec<StorageResult<AppendOutcome>>),
    /// Nothing was written: these messages (by index) repeat a `client_msg_id` that their
    /// channel already stored, as the given stored message.
    Repeated(Vec<(usize, Message)>),
}

/// Storage shared by every role that persists or reads (channel servers write messages, the
/// Web API writes metadata and reads history).
#[async_trait::async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// What keeps the store from taking writes, where it can tell without trying one: the
    /// embedded store checks that its files are still the ones it opened (a data directory
    /// removed or replaced under a running server). `None`: nothing known to be wrong. Cheap
    /// enough for every `/health` request.
    fn fault(&self) -> Option<String> {
        None
    }

    // -- workspaces and users --
    async fn create_workspace(&self, name: &str) -> StorageResult<Workspace>;
    async fn workspace(&self, id: &WorkspaceId) -> StorageResult<Option<Workspace>>;
    async fn workspace_by_name(&self, name: &str) -> StorageResult<Option<Workspace>>;
    async fn create_user(
        &self,
        workspace: &WorkspaceId,
        name: &str,
        real_name: &str,
        is_admin: bool,
        is_bot: bool,
    ) -> StorageResult<User>;
    /// Removes a user, its memberships and its name, so the name can be taken again; `Ok(false)`
    /// when there was no such user. It undoes a creation whose next step failed (a new user
    /// that could not join #general); what the user posted is not touched.
    async fn delete_user(&self, id: &UserId) -> StorageResult<bool>;
    async fn user(&self, id: &UserId) -> StorageResult<Option<User>>;
    async fn user_by_name(
        &self,
        workspace: &WorkspaceId,
        name: &str,
    ) -> StorageResult<Option<User>>;
    async fn users(&self, workspace: &WorkspaceId) -> StorageResult<Vec<User>>;
    /// Sets a user's email ([`normalize_email`]; empty clears it); returns the user as
    /// stored afterwards, or `None` when there is no such user. `AlreadyExists` when another
    /// user of the workspace has it.
    async fn set_user_email(&self, user: &UserId, email: &str) -> StorageResult<Option<User>>;
    /// Deactivates a user (`deleted`) or brings it back; the user as it now is, or `None`
    /// when there is no such user.
    async fn set_user_deleted(&self, user: &UserId, deleted: bool) -> StorageResult<Option<User>>;
    /// The user of `workspace` with this email ([`normalize_email`]).
    async fn user_by_email(
        &self,
        workspace: &WorkspaceId,
        email: &str,
    ) -> StorageResult<Option<User>>;
    /// Sets the given profile fields of a user; returns the user as stored afterwards, or
    /// `None` when there is no such user.
    async fn update_user_profile(
        &self,
        user: &UserId,
        real_name: Option<&str>,
        display_name: Option<&str>,
    ) -> StorageResult<Option<User>>;

    // -- channels and membership --
    async fn create_channel(&self, channel: &Channel) -> StorageResult<()>;
    async fn channel(&self, id: &ChannelId) -> StorageResult<Option<Channel>>;
    async fn channel_by_name(
        &self,
        workspace: &WorkspaceId,
        name: &str,
    ) -> StorageResult<Option<Channel>>;
    /// Channels of a workspace ordered by id, after `after` (cursor), at most `limit`.
    async fn channels(
        &self,
        workspace: &WorkspaceId,
        after: Option<&ChannelId>,
        limit: u32,
    ) -> StorageResult<Vec<Channel>>;
    /// Adds a member; `Ok(false)` if it already was one.
    async fn add_member(&self, channel: &ChannelId, user: &UserId) -> StorageResult<bool>;
    /// Removes a member; `Ok(false)` if it was not one.
    async fn remove_member(&self, channel: &ChannelId, user: &UserId) -> StorageResult<bool>;
    async fn is_member(&self, channel: &ChannelId, user: &UserId) -> StorageResult<bool>;
    /// A user, a channel and whether the user is a member of it, read together: what the Web
    /// API checks before a post. A store that can answer all three in one round trip (the
    /// embedded one: one blocking-pool hop instead of three) overrides this.
    async fn user_channel_membership(
        &self,
        user: &UserId,
        channel: &ChannelId,
    ) -> StorageResult<UserChannelMembership> {
        Ok(UserChannelMembership {
            user: self.user(user).await?,
            channel: self.channel(channel).await?,
            is_member: self.is_member(channel, user).await?,
        })
    }
    async fn members(&self, channel: &ChannelId) -> StorageResult<Vec<UserId>>;
    /// The channels a user is a member of.
    async fn user_channels(&self, user: &UserId) -> StorageResult<Vec<Channel>>;
    /// Rewrites a channel's mutable fields (name, topic, purpose, archived) from `channel`,
    /// by id. `NotFound` when there is no such channel, `AlreadyExists` when the new name is
    /// taken in the workspace.
    async fn update_channel(&self, channel: &Channel) -> StorageResult<()>;
    /// The last sequence `user` read in `channel` (0 when never marked); `None` if it is not
    /// a member.
    async fn last_read(&self, channel: &ChannelId, user: &UserId) -> StorageResult<Option<Seq>>;
    /// Records the last sequence `user` read in `channel`; `Ok(false)` if it is not a member.
    async fn set_last_read(
        &self,
        channel: &ChannelId,
        user: &UserId,
        seq: Seq,
    ) -> StorageResult<bool>;
    /// Where `user` closed the DM `channel` (`conversations.close`): the channel's last
    /// sequence then, so that a later message opens it again; `None` while it is open, and
    /// for a non-member.
    async fn dm_closed(&self, channel: &ChannelId, user: &UserId) -> StorageResult<Option<Seq>>;
    /// Records that `user` closed the DM `channel` at `closed` (`None`: opened it again);
    /// `Ok(false)` if it is not a member.
    async fn set_dm_closed(
        &self,
        channel: &ChannelId,
        user: &UserId,
        closed: Option<Seq>,
    ) -> StorageResult<bool>;
    /// Every membership of the workspace's channels, with read positions and where DMs
    /// were closed.
    async fn workspace_members(&self, workspace: &WorkspaceId) -> StorageResult<Vec<Membership>>;

    // -- messages --
    /// Appends a message placed by its channel server. Fails with `SeqConflict` if
    /// `(channel, seq)` is taken; returns `Duplicate` if its `client_msg_id` is.
    async fn append(&self, msg: &Message) -> StorageResult<AppendOutcome>;
    /// Appends one channel's new messages, placed in order by its channel server, unless one
    /// of them repeats a `client_msg_id` the channel already stored: then nothing is written
    /// and the stored messages are returned ([`GroupAppend::Repeated`]), so the channel server
    /// can answer those with the stored message and number the rest again without a gap.
    /// Otherwise each message's outcome is what [`append`](Self::append) would give.
    ///
    /// The default looks each id up, then appends. The embedded store checks and writes in one
    /// transaction on its writer thread: one hand-off per group instead of a read per message
    /// and then the append.
    async fn append_new(&self, msgs: Vec<Message>) -> StorageResult<GroupAppend> {
        let mut repeated = Vec::new();
        for (i, msg) in msgs.iter().enumerate() {
            if let Some(cmid) = msg.client_msg_id.as_deref() {
                if let Some(stored) = self
                    .message_by_client_msg_id(&msg.workspace, &msg.channel, cmid)
                    .await?
                {
                    repeated.push((i, stored));
                }
            }
        }
        if !repeated.is_empty() {
            return Ok(GroupAppend::Repeated(repeated));
        }
        Ok(GroupAppend::Appended(
            futures_util::future::join_all(msgs.iter().map(|m| self.append(m))).await,
        ))
    }
    /// The channel's last message (its sequence and ts), for a channel server taking
    /// ownership.
    async fn last_message(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
    ) -> StorageResult<Option<Message>>;
    async fn message_by_client_msg_id(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        client_msg_id: &str,
    ) -> StorageResult<Option<Message>>;
    /// One page of history: a single range read.
    async fn history(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        query: &HistoryQuery,
    ) -> StorageResult<Vec<Message>>;

    // -- change feed (feeds the search index) --
    /// How many message shards the store has.
    fn num_shards(&self) -> u32;
    /// The shard that holds `channel`'s messages, whose changes
    /// [`MessageStore::changes_since`] lists. By default a workspace's messages share one
    /// shard ([`shard_for`]); the embedded store spreads a workspace's channels instead
    /// ([`ShardKey::Channel`]), so that one busy workspace has a writer per shard.
    fn shard_of(&self, workspace: &WorkspaceId, _channel: &ChannelId) -> u32 {
        shard_for(workspace, self.num_shards())
    }
    /// Changes to the messages of `shard` after change `after`, oldest first, at most `limit`:
    /// each with its change id and the message as it is now. Written in the same transaction
    /// as the change itself, so a consumer that remembers the last id it applied misses
    /// nothing, even across crashes.
    async fn changes_since(&self, shard: u32, after: u64, limit: u32)
        -> StorageResult<Vec<Change>>;
    /// How long after its write a change may take to appear in [`MessageStore::changes_since`]
    /// (zero for a store whose change ids follow commit order).
    fn change_feed_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    // -- message views (what history, threads and reactions show) --
    /// Posted, undeleted messages with their edit, thread and reaction state: top-level ones
    /// (`thread: None`), or one thread's parent and replies (`thread: Some(parent ts)`). A
    /// deleted thread parent whose replies remain is kept, flagged `deleted`, as Slack keeps
    /// a tombstone above them; it goes with its last reply.
    async fn message_views(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        query: &HistoryQuery,
        thread: Option<Ts>,
    ) -> StorageResult<Vec<MessageView>>;
    /// One posted message by its ts (deleted ones too, flagged).
    async fn message_view(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        ts: Ts,
    ) -> StorageResult<Option<MessageView>>;
    /// How many messages are pinned to the channel.
    async fn pin_count(&self, workspace: &WorkspaceId, channel: &ChannelId) -> StorageResult<u64>;
    /// The channel's pinned messages, the most recently pinned first, at most `limit`.
    async fn pins(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        limit: usize,
    ) -> StorageResult<Vec<MessageView>>;

    /// The channel's posted, undeleted messages that have reaction `reaction` (added by
    /// `user`, when given): their sequence numbers, the newest first, at most `limit`.
    /// Search's `has::name:` and `hasmy::name:`.
    async fn reacted(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        reaction: &str,
        user: Option<&UserId>,
        limit: usize,
    ) -> StorageResult<Vec<Seq>>;

    /// The messages `user` reacted to in the workspace (each once, however many reactions it
    /// added), the latest reaction first, only those reacted to before `before` when given
    /// (a page's end), at most `limit`. `reactions.list`.
    async fn user_reactions(
        &self,
        workspace: &WorkspaceId,
        user: &UserId,
        before: Option<Ts>,
        limit: usize,
    ) -> StorageResult<Vec<UserReaction>>;

    // -- files (`files.*`) --
    /// Keeps a file's record (its bytes come with [`MessageStore::put_file_content`]).
    async fn create_file(&self, file: &FileRecord) -> StorageResult<()>;
    /// Replaces a file's record (its title, state, the channels it is shared in).
    async fn update_file(&self, file: &FileRecord) -> StorageResult<()>;
    /// One of the workspace's files by id.
    async fn file(&self, workspace: &WorkspaceId, id: &str) -> StorageResult<Option<FileRecord>>;
    /// The workspace's files, the newest first, created before `before` when given (a
    /// page's end), at most `limit`.
    async fn files(
        &self,
        workspace: &WorkspaceId,
        before: Option<Ts>,
        limit: usize,
    ) -> StorageResult<Vec<FileRecord>>;
    /// Stores a file's bytes durably (replacing any earlier ones).
    async fn put_file_content(
        &self,
        workspace: &WorkspaceId,
        id: &str,
        bytes: Vec<u8>,
    ) -> StorageResult<()>;
    /// A file's bytes, `None` when none were stored.
    async fn file_content(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> StorageResult<Option<Vec<u8>>>;
    /// Removes a file, record and bytes; `false` when there was none.
    async fn delete_file(&self, workspace: &WorkspaceId, id: &str) -> StorageResult<bool>;

    // -- scheduled messages (`chat.scheduleMessage`) --
    /// Keeps a message to be posted at its `post_at`. Ids are unique (the caller makes them).
    async fn schedule_message(&self, scheduled: &ScheduledMessage) -> StorageResult<()>;
    /// The workspace's messages waiting to be posted, by `post_at` then id.
    async fn scheduled_messages(
        &self,
        workspace: &WorkspaceId,
    ) -> StorageResult<Vec<ScheduledMessage>>;
    /// One of the workspace's waiting messages by id.
    async fn scheduled_message(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> StorageResult<Option<ScheduledMessage>>;
    /// Messages of every workspace due in `from..=to` (by `post_at`), the earliest first, at
    /// most `limit`. What a scheduler posts; it removes each with
    /// [`MessageStore::unschedule_message`] once posted.
    async fn due_scheduled_messages(
        &self,
        from: Ts,
        to: Ts,
        limit: u32,
    ) -> StorageResult<Vec<ScheduledMessage>>;
    /// Removes a waiting message; what was removed, or `None` when the workspace has no
    /// message waiting with that id (never scheduled, deleted, or posted).
    async fn unschedule_message(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> StorageResult<Option<ScheduledMessage>>;

    // -- a workspace's small record sets (user groups, custom emoji) --
    /// The workspace's records of `kind` (by id), with the set's version: every
    /// [`MessageStore::put_record`] of that kind in the workspace moves it on (0 before the
    /// first).
    async fn record_set(
        &self,
        workspace: &WorkspaceId,
        kind: &RecordKind,
    ) -> StorageResult<RecordSet>;
    /// The version of the workspace's records of `kind` alone (what [`MessageStore::record_set`]
    /// would give with them): one small read, for a poller that reads the set again only when
    /// it moved.
    async fn record_set_version(
        &self,
        workspace: &WorkspaceId,
        kind: &RecordKind,
    ) -> StorageResult<u64> {
        Ok(self.record_set(workspace, kind).await?.version)
    }
    /// Writes record `id` of `kind` (`None`: removes it) if the workspace's records of that
    /// kind are still at `expected` (the version [`MessageStore::record_set`] gave); `false`,
    /// writing nothing, when another write came first. So a caller that checked names against
    /// the set it read writes only if the set is still that one.
    async fn put_record(
        &self,
        workspace: &WorkspaceId,
        kind: &RecordKind,
        id: &str,
        record: Option<&str>,
        expected: u64,
    ) -> StorageResult<bool>;

    /// The workspace's user groups (the [`RecordKind::UserGroup`] set).
    async fn usergroups(&self, workspace: &WorkspaceId) -> StorageResult<UserGroups> {
        UserGroups::from_set(&self.record_set(workspace, &RecordKind::UserGroup).await?)
    }

    /// [`MessageStore::put_record`] of a user group.
    async fn put_usergroup(&self, group: &UserGroup, expected: u64) -> StorageResult<bool> {
        let json = group.json();
        self.put_record(
            &group.workspace,
            &RecordKind::UserGroup,
            &group.id,
            Some(&json),
            expected,
        )
        .await
    }
}

/// The kinds of [`MessageStore::record_set`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// [`UserGroup`]s, by id.
    UserGroup,
    /// Custom emoji, by name.
    Emoji,
    /// A channel's bookmarks, by id: a set per channel.
    Bookmarks(ChannelId),
    /// The apps that take their events over HTTP ([`EventSubscription`]s), by
    /// [`EventSubscription::record_id`]: one set for the whole cluster, under
    /// [`cluster_records`], which every Web API node reads to know whose events to send.
    EventSubscriptions,
    /// Tokens revoked with `auth.revoke`, by [`crate::auth::Claims::token_id`] (the record:
    /// a [`RevokedToken`]): one set for the whole cluster, under [`cluster_records`], which
    /// every Web API node holds in memory to refuse them.
    RevokedTokens,
    /// The workspace's Do Not Disturb snoozes, by user id (`dnd.setSnooze`).
    Dnd,
    /// When each snooze ends: one set for the whole cluster, under [`cluster_records`], by
    /// workspace and user, which every Web API node reads to tell a snooze's lapse to its user
    /// and workspace without reading every workspace's [`RecordKind::Dnd`].
    DndLapses,
}

impl RecordKind {
    /// The stored name of the set (with its channel, for a channel's).
    pub fn name(&self) -> String {
        match self {
            RecordKind::UserGroup => "usergroup".into(),
            RecordKind::Emoji => "emoji".into(),
            RecordKind::Bookmarks(channel) => format!("bookmarks:{channel}"),
            RecordKind::EventSubscriptions => "event_subscriptions".into(),
            RecordKind::RevokedTokens => "revoked_tokens".into(),
            RecordKind::Dnd => "dnd".into(),
            RecordKind::DndLapses => "dnd_lapses".into(),
        }
    }
}

/// Where the record sets that belong to no one workspace are kept (in place of a workspace
/// id): no workspace id is written this way.
pub fn cluster_records() -> WorkspaceId {
    WorkspaceId::from("-cluster")
}

/// An app that takes its events over HTTP, as Slack's Events API sends them: each event of
/// its channels is POSTed to `request_url`, signed with `signing_secret`. In Switchboard an
/// app is its bot (or person) user, as in Socket Mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSubscription {
    pub workspace: WorkspaceId,
    pub user: UserId,
    pub request_url: String,
    /// The key of the `X-Slack-Signature` HMAC, as Slack gives each app one.
    pub signing_secret: String,
    /// The older shared secret that Slack puts in each payload's `token`.
    pub verification_token: String,
    /// When the URL was last set (and verified).
    pub updated: Ts,
    /// Set when the Web API stopped sending events because the URL kept failing them (Slack
    /// disables an app's subscription whose URL fails more than 95 % of its events for an
    /// hour); setting the URL again clears it. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<SubscriptionDisabled>,
}

/// Why and when an [`EventSubscription`] was disabled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionDisabled {
    pub at: Ts,
    /// What failed, in words, for `apps.eventSubscriptions.info` and the log.
    pub reason: String,
}

/// A token revoked with `auth.revoke` (the [`RecordKind::RevokedTokens`] set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedToken {
    pub workspace: WorkspaceId,
    pub user: UserId,
    pub revoked: Ts,
}

impl EventSubscription {
    /// The subscription's id in the [`RecordKind::EventSubscriptions`] set.
    pub fn record_id(workspace: &WorkspaceId, user: &UserId) -> String {
        format!("{workspace}/{user}")
    }
}

/// A workspace's records of one kind, as JSON by id (in id order), and the set's version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordSet {
    pub version: u64,
    pub records: Vec<(String, String)>,
}

/// A custom emoji (the [`RecordKind::Emoji`] set, by name): an image URL, or an alias of
/// another custom emoji.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomEmoji {
    /// The image, or `None` for an alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The emoji an alias names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_for: Option<String>,
    pub created: Ts,
    pub by: UserId,
}

impl CustomEmoji {
    /// The record as the stores keep it: JSON.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("an emoji serializes")
    }

    /// A stored record back; its JSON unreadable is [`StorageErrorKind::Corrupt`].
    pub fn from_json(json: &str) -> StorageResult<CustomEmoji> {
        serde_json::from_str(json)
            .map_err(|e| StorageError::new(StorageErrorKind::Corrupt, format!("custom emoji: {e}")))
    }

    /// Slack's value in `emoji.list`: the URL, or `alias:<name>`.
    pub fn value(&self) -> String {
        match (&self.url, &self.alias_for) {
            (Some(url), _) => url.clone(),
            (None, Some(target)) => format!("alias:{target}"),
            (None, None) => String::new(),
        }
    }
}

/// A workspace's user groups as one versioned set ([`MessageStore::usergroups`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserGroups {
    pub version: u64,
    /// By id.
    pub groups: Vec<UserGroup>,
}

impl UserGroups {
    /// The groups of a [`RecordKind::UserGroup`] set; an unreadable one is
    /// [`StorageErrorKind::Corrupt`].
    pub fn from_set(set: &RecordSet) -> StorageResult<UserGroups> {
        let groups = set
            .records
            .iter()
            .map(|(_, json)| UserGroup::from_json(json))
            .collect::<StorageResult<Vec<_>>>()?;
        Ok(UserGroups {
            version: set.version,
            groups,
        })
    }
}

/// A user group (Slack's "subteam"): a handle that mentions its members at once, and the
/// channels its members are given by default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserGroup {
    /// `S` and upper-case letters and digits.
    pub id: String,
    pub workspace: WorkspaceId,
    /// Unique among the workspace's user groups (ignoring case).
    pub name: String,
    /// What `@handle` mentions: unique among the workspace's user groups, users and channels.
    pub handle: String,
    pub description: String,
    /// The channels its members are given by default (Slack's `prefs.channels`).
    pub channels: Vec<ChannelId>,
    /// Its members, in the order they were set.
    pub users: Vec<UserId>,
    pub created: Ts,
    pub created_by: UserId,
    pub updated: Ts,
    pub updated_by: UserId,
    /// When it was disabled (`usergroups.disable`), and by whom; `None` while enabled.
    pub disabled: Option<(Ts, UserId)>,
}

impl UserGroup {
    /// Slack's usergroup object (what `usergroups.list` answers and the `subteam_*` events and
    /// Flannel's boot data carry). `users` lists the members when asked (at most that many),
    /// `count` adds `user_count`.
    pub fn slack_json(&self, users: Option<usize>, count: bool) -> serde_json::Value {
        const MICROS: u64 = 1_000_000;
        let mut v = serde_json::json!({
            "id": self.id,
            "team_id": self.workspace,
            "is_usergroup": true,
            "is_subteam": true,
            "name": self.name,
            "description": self.description,
            "handle": self.handle,
            "is_external": false,
            "date_create": self.created.0 / MICROS,
            "date_update": self.updated.0 / MICROS,
            "date_delete": self.disabled.as_ref().map_or(0, |(at, _)| at.0 / MICROS),
            "auto_type": null,
            "auto_provision": false,
            "enterprise_subteam_id": "",
            "created_by": self.created_by,
            "updated_by": self.updated_by,
            "deleted_by": self.disabled.as_ref().map(|(_, by)| by),
            "prefs": { "channels": self.channels, "groups": [] },
            "channel_count": self.channels.len(),
        });
        if let Some(max) = users {
            v["users"] = serde_json::json!(self.users.iter().take(max).collect::<Vec<_>>());
        }
        if count {
            v["user_count"] = self.users.len().into();
        }
        v
    }

    /// The record as the stores keep it: JSON.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a user group serializes")
    }

    /// A stored record back; its JSON unreadable is [`StorageErrorKind::Corrupt`].
    pub fn from_json(json: &str) -> StorageResult<UserGroup> {
        serde_json::from_str(json)
            .map_err(|e| StorageError::new(StorageErrorKind::Corrupt, format!("user group: {e}")))
    }
}

/// A file uploaded to a workspace (`files.getUploadURLExternal`, then its bytes, then
/// `files.completeUploadExternal`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// `F` and upper-case letters and digits.
    pub id: String,
    pub workspace: WorkspaceId,
    /// Who uploaded it.
    pub user: UserId,
    /// Its file name, as uploaded.
    pub name: String,
    pub title: String,
    pub mimetype: String,
    /// Bytes: as announced until uploaded, then as stored.
    pub size: u64,
    pub created: Ts,
    /// Its bytes are stored.
    pub uploaded: bool,
    /// `files.completeUploadExternal` finished it.
    pub complete: bool,
    /// The conversations it was shared in.
    pub channels: Vec<ChannelId>,
    /// Its description for screen readers.
    #[serde(default)]
    pub alt_txt: String,
    /// The messages that shared it, by channel and ts: what a deletion turns into Slack's
    /// tombstone. (Records made before it lack it.)
    #[serde(default)]
    pub shares: Vec<(ChannelId, Ts)>,
}

impl FileRecord {
    /// The record as the stores keep it: JSON.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a file record serializes")
    }

    /// A stored record back; its JSON unreadable is [`StorageErrorKind::Corrupt`].
    pub fn from_json(json: &str) -> StorageResult<FileRecord> {
        serde_json::from_str(json)
            .map_err(|e| StorageError::new(StorageErrorKind::Corrupt, format!("file record: {e}")))
    }
}

/// A message a user reacted to ([`MessageStore::user_reactions`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserReaction {
    pub channel: ChannelId,
    /// The message's ts.
    pub target: Ts,
    /// When the user's latest reaction to it was added (that entry's ts).
    pub at: Ts,
}

/// A message waiting to be posted (`chat.scheduleMessage`): what the post will be, checked
/// when it was scheduled, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledMessage {
    /// Slack's `scheduled_message_id`: `Q` and upper-case letters and digits.
    pub id: String,
    /// When to post it.
    pub post_at: Ts,
    /// When it was scheduled.
    pub created: Ts,
    /// The post: its workspace, channel, user and content.
    pub message: crate::protocol::NewMessage,
}

impl ScheduledMessage {
    /// The post as the stores keep it: JSON (its `rich` as a struct, readable by any version
    /// that knows the fields; older rows lack newer fields, which default).
    pub fn message_json(&self) -> String {
        serde_json::to_string(&self.message).expect("a new message serializes")
    }

    /// A stored row back; its JSON unreadable is [`StorageErrorKind::Corrupt`].
    pub fn from_row(id: String, post_at: Ts, created: Ts, message: &str) -> StorageResult<Self> {
        let message = serde_json::from_str(message).map_err(|e| {
            StorageError::new(
                StorageErrorKind::Corrupt,
                format!("scheduled message {id}: {e}"),
            )
        })?;
        Ok(ScheduledMessage {
            id,
            post_at,
            created,
            message,
        })
    }
}

/// One entry of the change feed: a posted message whose searchable state changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub id: u64,
    /// The message as it is now.
    pub message: Message,
    /// Deleted since: the search index drops it.
    pub deleted: bool,
}

/// A posted message as history shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub message: Message,
    /// When it was last edited.
    pub edited: Option<Ts>,
    pub deleted: bool,
    /// Replies in its thread (for a parent).
    pub reply_count: u32,
    pub latest_reply: Option<Ts>,
    pub reactions: Vec<Reaction>,
    /// Pinned to its channel: by whom and when.
    pub pinned: Option<Pin>,
}

/// Who pinned a message to its channel, and when (the pin's entry's `ts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub by: UserId,
    pub at: Ts,
}

impl MessageView {
    /// Whether a reply may hang off it: a top-level message that is not deleted, or a deleted
    /// one whose thread is still shown under its tombstone.
    pub fn takes_replies(&self) -> bool {
        (!self.deleted || self.reply_count > 0)
            && self.message.thread_ts.is_none_or(|t| t == self.message.ts)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub name: String,
    /// In the order they reacted.
    pub users: Vec<UserId>,
}

pub type SharedStore = Arc<dyn MessageStore>;

/// A `/health` check ([`crate::telemetry::Health::add_check`]) that fails while the store
/// reports a fault ([`MessageStore::fault`]).
pub fn health_check(store: &SharedStore) -> crate::telemetry::HealthCheck {
    let store = store.clone();
    std::sync::Arc::new(move || store.fault().map(|f| format!("store: {f}")))
}

/// Records one store call's latency (since `start`) and, if it failed, its failure, under
/// `op`: the same metrics for every implementation.
pub(crate) fn record_op<T>(op: &'static str, start: std::time::Instant, result: &StorageResult<T>) {
    use crate::telemetry::metrics as m;
    m::STORE_OPS
        .with_label_values(&[op])
        .observe(start.elapsed().as_secs_f64());
    if result.is_err() {
        m::STORE_ERRORS.with_label_values(&[op]).inc();
    }
}

/// What decides which shard holds a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardKey {
    /// Its workspace ([`shard_for`]): a workspace's messages share one shard.
    Workspace,
    /// Its channel ([`shard_for_channel`]): a workspace's channels spread over every shard.
    Channel,
}

impl ShardKey {
    /// The shard of `channel` (in `workspace`) among `num_shards`.
    pub fn shard(self, workspace: &WorkspaceId, channel: &ChannelId, num_shards: u32) -> u32 {
        match self {
            ShardKey::Workspace => shard_for(workspace, num_shards),
            ShardKey::Channel => shard_for_channel(channel, num_shards),
        }
    }

    /// The name recorded in a store's settings.
    pub fn name(self) -> &'static str {
        match self {
            ShardKey::Workspace => "workspace",
            ShardKey::Channel => "channel",
        }
    }

    pub fn from_name(name: &str) -> Option<ShardKey> {
        match name {
            "workspace" => Some(ShardKey::Workspace),
            "channel" => Some(ShardKey::Channel),
            _ => None,
        }
    }
}

/// Which shard holds a workspace's messages: a fixed hash, so every process agrees.
pub fn shard_for(workspace: &WorkspaceId, num_shards: u32) -> u32 {
    shard_hash(workspace.0.as_bytes(), num_shards)
}

/// Which shard holds a channel's messages under [`ShardKey::Channel`]: a fixed hash of the
/// channel id (unique across workspaces), so every process agrees.
pub fn shard_for_channel(channel: &ChannelId, num_shards: u32) -> u32 {
    shard_hash(channel.0.as_bytes(), num_shards)
}

fn shard_hash(bytes: &[u8], num_shards: u32) -> u32 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x5377_6974_6368, 0x0062_6f61_7264);
    h.write(bytes);
    (h.finish() % u64::from(num_shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscription kept before `disabled` existed reads as enabled, and one that is
    /// enabled is written as before (no `disabled` key), so older nodes read it too.
    #[test]
    fn subscriptions_without_disabled_read_as_enabled() {
        let old = r#"{"workspace":"T1","user":"U1","request_url":"https://a.example/e","signing_secret":"s","verification_token":"v","updated":1800000000000000}"#;
        let sub: EventSubscription = serde_json::from_str(old).unwrap();
        assert_eq!(sub.disabled, None);
        let again = serde_json::to_string(&sub).unwrap();
        assert!(!again.contains("disabled"), "{again}");
        let off = EventSubscription {
            disabled: Some(SubscriptionDisabled {
                at: Ts(1_800_000_000_000_001),
                reason: "failing".into(),
            }),
            ..sub
        };
        let json = serde_json::to_string(&off).unwrap();
        assert_eq!(
            serde_json::from_str::<EventSubscription>(&json).unwrap(),
            off
        );
    }

    /// Where messages live is decided by these hashes and recorded nowhere else: a change to
    /// them would leave every store's messages in shards that no process looks in.
    #[test]
    fn shard_hashes_never_change() {
        let ws = WorkspaceId::from("T0123ABCD");
        let ch = ChannelId::from("C0456EFGH");
        assert_eq!(
            [shard_for(&ws, 4), shard_for(&ws, 8), shard_for(&ws, 1024)],
            [0, 0, 312]
        );
        assert_eq!(
            [
                shard_for_channel(&ch, 4),
                shard_for_channel(&ch, 8),
                shard_for_channel(&ch, 1024)
            ],
            [2, 2, 978]
        );
        assert_eq!(ShardKey::Workspace.shard(&ws, &ch, 8), shard_for(&ws, 8));
        assert_eq!(
            ShardKey::Channel.shard(&ws, &ch, 8),
            shard_for_channel(&ch, 8)
        );
        assert_eq!(shard_for(&ws, 1), 0);
        assert_eq!(shard_for(&ws, 0), 0, "no shards reads as one");
        for key in [ShardKey::Workspace, ShardKey::Channel] {
            assert_eq!(ShardKey::from_name(key.name()), Some(key));
        }
        assert_eq!(ShardKey::from_name("Channel"), None);
    }
}
