//! The Web API methods, one module per Slack method family, and the Slack object shapes they
//! share.
//!
//! Every method but `api.test` runs as an authenticated [`Caller`]; every channel or user id a
//! client names is parsed ([`ChannelId::parse`], [`UserId::parse`]) and then checked to belong
//! to the caller's workspace, so a token of one workspace never reads or writes another's.

pub(crate) mod apps;
mod attachments;
mod auth;
mod blocks;
mod bookmarks;
mod chat;
pub(crate) mod content;
mod conversations;
pub(crate) mod dnd;
mod emoji;
pub(crate) mod files;
mod internal;
pub(crate) mod members;
pub(crate) mod records;
mod scheduled;
mod search;
mod team;
mod usergroups;
mod users;

use std::collections::HashSet;

use serde_json::{json, Value};
use shared::ids::{ChannelId, UserId};
use shared::protocol::{ChannelSummary, Message, UserEvent, UserProfile};
use shared::store::{Channel, User};

use crate::api::{
    authenticate, authenticate_service, caller, verify_user_token, ApiError, ApiResult, AppState,
    Caller, Params, RequestInfo,
};

pub(crate) use chat::{check_repeat, Via};
/// The name prefixes that mark direct messages (1:1 and group), which Flannel reads too: a
/// channel summary carries the name, not the kind.
pub use members::{IM_PREFIX, MPIM_PREFIX};
pub(crate) use users::{parse_email, set_email};

/// Every method served, by its Slack name.
pub const METHODS: &[&str] = &[
    "api.test",
    "auth.test",
    "rtm.connect",
    "rtm.start",
    "apps.connections.open",
    "auth.revoke",
    "apps.eventSubscriptions.set",
    "apps.eventSubscriptions.info",
    "apps.eventSubscriptions.delete",
    "team.info",
    "conversations.create",
    "conversations.join",
    "conversations.leave",
    "conversations.kick",
    "conversations.list",
    "conversations.info",
    "conversations.history",
    "users.conversations",
    "chat.postMessage",
    "chat.meMessage",
    "chat.scheduleMessage",
    "chat.scheduledMessages.list",
    "chat.deleteScheduledMessage",
    "chat.update",
    "chat.delete",
    "chat.getPermalink",
    "chat.postEphemeral",
    "conversations.replies",
    "conversations.open",
    "conversations.close",
    "conversations.invite",
    "conversations.members",
    "reactions.add",
    "reactions.remove",
    "reactions.get",
    "reactions.list",
    "files.getUploadURLExternal",
    "files.completeUploadExternal",
    "files.info",
    "files.list",
    "files.delete",
    "pins.add",
    "pins.remove",
    "pins.list",
    "bookmarks.add",
    "bookmarks.edit",
    "bookmarks.remove",
    "bookmarks.list",
    "search.messages",
    "search.files",
    "search.all",
    "users.list",
    "users.info",
    "bots.info",
    "users.lookupByEmail",
    "users.getPresence",
    "users.setPresence",
    "dnd.info",
    "dnd.teamInfo",
    "dnd.setSnooze",
    "dnd.endSnooze",
    "dnd.endDnd",
    "admin.users.create",
    "admin.users.setInactive",
    "admin.users.setActive",
    "emoji.list",
    "admin.emoji.add",
    "admin.emoji.addAlias",
    "admin.emoji.remove",
    "admin.emoji.rename",
    "admin.emoji.list",
    "users.profile.set",
    "users.profile.get",
    "usergroups.create",
    "usergroups.list",
    "usergroups.update",
    "usergroups.disable",
    "usergroups.enable",
    "usergroups.users.list",
    "usergroups.users.update",
    "conversations.rename",
    "conversations.archive",
    "conversations.unarchive",
    "conversations.setTopic",
    "conversations.setPurpose",
    "conversations.mark",
    "hooks.create",
    "internal.flannel.snapshot",
];

/// The static name of a served method, so metric labels come from a fixed set.
pub fn canonical_name(method: &str) -> Option<&'static str> {
    METHODS.iter().copied().find(|m| *m == method)
}

/// Runs method `name` (one of [`METHODS`]). `token` is the presented token, or the error an
/// unreadable `Authorization` header earned; `request` what the method may need of the HTTP
/// request itself.
pub async fn dispatch(
    state: &AppState,
    name: &'static str,
    params: &Params,
    token: ApiResult<Option<&str>>,
    request: &RequestInfo,
) -> ApiResult {
    if name == "api.test" {
        return auth::api_test(params);
    }
    if name.starts_with("internal.") {
        let claims = authenticate_service(state, token?)?;
        return match name {
            "internal.flannel.snapshot" => internal::flannel_snapshot(state, &claims, params).await,
            _ => Err(ApiError::UnknownMethod),
        };
    }
    if matches!(
        name,
        "chat.postMessage" | "chat.meMessage" | "chat.scheduleMessage"
    ) {
        // As in Slack, a user id as `channel` posts to the caller's DM with that user.
        let dm_user = params
            .non_empty("channel")
            .map(str::trim)
            .and_then(UserId::parse);
        let (caller, visible) = match dm_user {
            Some(user) => {
                let caller = authenticate(state, token?).await?;
                let visible = members::dm_with(state, &caller, &user).await?;
                (caller, visible)
            }
            None => authenticate_in_channel(state, token?, params).await?,
        };
        if name == "chat.scheduleMessage" {
            return scheduled::schedule(state, &caller, visible, params).await;
        }
        let me = name == "chat.meMessage";
        return chat::post_message(state, &caller, visible, params, me).await;
    }
    let caller = authenticate(state, token?).await?;
    match name {
        "auth.test" => auth::auth_test(state, &caller, request).await,
        // Slack's `rtm.start` now answers like `rtm.connect`: a URL, `self` and `team`.
        "rtm.connect" | "rtm.start" => auth::rtm_connect(state, &caller, params).await,
        "apps.connections.open" => auth::apps_connections_open(state, &caller).await,
        "auth.revoke" => crate::revocation::auth_revoke(state, &caller, params).await,
        "apps.eventSubscriptions.set" => apps::set(state, &caller, params).await,
        "apps.eventSubscriptions.info" => apps::info(state, &caller).await,
        "apps.eventSubscriptions.delete" => apps::delete(state, &caller).await,
        "team.info" => team::info(state, &caller, params, request).await,
        "conversations.create" => conversations::create(state, &caller, params).await,
        "conversations.join" => conversations::join(state, &caller, params).await,
        "conversations.leave" => conversations::leave(state, &caller, params).await,
        "conversations.kick" => conversations::kick(state, &caller, params).await,
        "conversations.list" => conversations::list(state, &caller, params).await,
        "conversations.info" => conversations::info(state, &caller, params).await,
        "conversations.history" => conversations::history(state, &caller, params).await,
        "users.conversations" => conversations::user_conversations(state, &caller, params).await,
        "chat.scheduledMessages.list" => scheduled::list(state, &caller, params).await,
        "chat.deleteScheduledMessage" => scheduled::delete(state, &caller, params).await,
        "chat.update" => chat::update(state, &caller, params).await,
        "chat.delete" => chat::delete(state, &caller, params).await,
        "chat.postEphemeral" => chat::post_ephemeral(state, &caller, params).await,
        "chat.getPermalink" => chat::get_permalink(state, &caller, params, request).await,
        "conversations.replies" => chat::replies(state, &caller, params).await,
        "conversations.open" => members::open(state, &caller, params).await,
        "conversations.close" => members::close(state, &caller, params).await,
        "conversations.invite" => members::invite(state, &caller, params).await,
        "conversations.members" => members::members(state, &caller, params).await,
        "reactions.add" => chat::react(state, &caller, params, true).await,
        "reactions.remove" => chat::react(state, &caller, params, false).await,
        "files.getUploadURLExternal" => {
            files::get_upload_url(state, &caller, params, request).await
        }
        "files.completeUploadExternal" => {
            files::complete_upload(state, &caller, params, request).await
        }
        "files.info" => files::info(state, &caller, params, request).await,
        "files.list" => files::list(state, &caller, params, request).await,
        "files.delete" => files::delete(state, &caller, params).await,
        "reactions.list" => chat::reactions_list(state, &caller, params).await,
        "reactions.get" => chat::reactions_get(state, &caller, params).await,
        "pins.add" => chat::pin(state, &caller, params, true).await,
        "pins.remove" => chat::pin(state, &caller, params, false).await,
        "pins.list" => chat::pins_list(state, &caller, params).await,
        "bookmarks.add" => bookmarks::add(state, &caller, params).await,
        "bookmarks.edit" => bookmarks::edit(state, &caller, params).await,
        "bookmarks.remove" => bookmarks::remove(state, &caller, params).await,
        "bookmarks.list" => bookmarks::list(state, &caller, params).await,
        "search.messages" => search::messages(state, &caller, params, request).await,
        "search.files" => search::files(state, &caller, params, request).await,
        "search.all" => search::all(state, &caller, params, request).await,
        "users.list" => users::list(state, &caller, params).await,
        "users.info" => users::info(state, &caller, params).await,
        "bots.info" => users::bot_info(state, &caller, params).await,
        "users.lookupByEmail" => users::lookup_by_email(state, &caller, params).await,
        "users.getPresence" => users::get_presence(state, &caller, params).await,
        "users.setPresence" => users::set_presence(state, &caller, params).await,
        "dnd.info" => dnd::info(state, &caller, params).await,
        "dnd.teamInfo" => dnd::team_info(state, &caller, params).await,
        "dnd.setSnooze" => dnd::set_snooze(state, &caller, params).await,
        "dnd.endSnooze" => dnd::end_snooze(state, &caller).await,
        "dnd.endDnd" => dnd::end_dnd(state, &caller).await,
        "admin.users.create" => users::admin_create(state, &caller, params).await,
        "admin.users.setInactive" => users::set_inactive(state, &caller, params, true).await,
        "admin.users.setActive" => users::set_inactive(state, &caller, params, false).await,
        "emoji.list" => emoji::list(state, &caller).await,
        "admin.emoji.add" => emoji::add(state, &caller, params).await,
        "admin.emoji.addAlias" => emoji::add_alias(state, &caller, params).await,
        "admin.emoji.remove" => emoji::remove(state, &caller, params).await,
        "admin.emoji.rename" => emoji::rename(state, &caller, params).await,
        "admin.emoji.list" => emoji::admin_list(state, &caller, params).await,
        "users.profile.set" => users::profile_set(state, &caller, params).await,
        "users.profile.get" => users::profile_get(state, &caller, params).await,
        "usergroups.create" => usergroups::create(state, &caller, params).await,
        "usergroups.list" => usergroups::list(state, &caller, params).await,
        "usergroups.update" => usergroups::update(state, &caller, params).await,
        "usergroups.disable" => usergroups::set_enabled(state, &caller, params, false).await,
        "usergroups.enable" => usergroups::set_enabled(state, &caller, params, true).await,
        "usergroups.users.list" => usergroups::users_list(state, &caller, params).await,
        "usergroups.users.update" => usergroups::users_update(state, &caller, params).await,
        "conversations.rename" => conversations::rename(state, &caller, params).await,
        "conversations.archive" => conversations::archive(state, &caller, params, true).await,
        "conversations.unarchive" => conversations::archive(state, &caller, params, false).await,
        "conversations.setTopic" => {
            conversations::set_text(state, &caller, params, conversations::TextField::Topic).await
        }
        "conversations.setPurpose" => {
            conversations::set_text(state, &caller, params, conversations::TextField::Purpose).await
        }
        "conversations.mark" => conversations::mark(state, &caller, params).await,
        "hooks.create" => crate::hooks::create(state, &caller, params, request).await,
        _ => Err(ApiError::UnknownMethod),
    }
}

/// A channel the caller may see, and whether the caller is a member.
pub(crate) struct VisibleChannel {
    pub channel: Channel,
    pub is_member: bool,
}

/// Looks up the `channel` parameter as the caller sees it: `channel_not_found` when it is
/// malformed, missing, in another workspace, or private without the caller in it (so neither
/// another workspace's channels nor private ones leak their existence).
pub(crate) async fn visible_channel(
    state: &AppState,
    caller: &Caller,
    params: &Params,
) -> ApiResult<VisibleChannel> {
    let raw = params
        .non_empty("channel")
        .map(str::trim)
        .ok_or(ApiError::ChannelNotFound)?;
    // Like Slack, accept a channel id or a name (`#general` or `general`) in the caller's
    // workspace.
    let found = match ChannelId::parse(raw) {
        Some(id) => state.store.channel(&id).await?,
        None => {
            let name = raw.strip_prefix('#').unwrap_or(raw);
            if name.is_empty() || name.len() > 80 {
                None
            } else {
                state
                    .store
                    .channel_by_name(&caller.claims.workspace, name)
                    .await?
            }
        }
    };
    let channel = in_callers_workspace(caller, found)?;
    let is_member = state.store.is_member(&channel.id, &caller.user.id).await?;
    visible(channel, is_member)
}

/// The channel the store found, if it is in the caller's workspace.
fn in_callers_workspace(caller: &Caller, found: Option<Channel>) -> ApiResult<Channel> {
    found
        .filter(|c| c.workspace == caller.claims.workspace)
        .ok_or(ApiError::ChannelNotFound)
}

/// The last check of [`visible_channel`]: a private channel is visible to its members only.
fn visible(channel: Channel, is_member: bool) -> ApiResult<VisibleChannel> {
    if channel.is_private && !is_member {
        return Err(ApiError::ChannelNotFound);
    }
    Ok(VisibleChannel { channel, is_member })
}

/// [`authenticate`] then [`visible_channel`], with the same answers and errors in the same
/// order, but when `channel` is an id, the caller's user, the channel and the membership are
/// read in one store call (one blocking-pool hop on the embedded store instead of three).
/// Reads have no effects, so reading the channel before the user is known to exist changes
/// nothing a client can see.
pub(crate) async fn authenticate_in_channel(
    state: &AppState,
    token: Option<&str>,
    params: &Params,
) -> ApiResult<(Caller, VisibleChannel)> {
    let (claims, token) = verify_user_token(state, token)?;
    let channel_id = params
        .non_empty("channel")
        .map(str::trim)
        .and_then(ChannelId::parse);
    let Some(channel_id) = channel_id else {
        let user = state.store.user(&claims.user).await?;
        let caller = caller(claims, user, token)?;
        let visible = visible_channel(state, &caller, params).await?;
        return Ok((caller, visible));
    };
    let read = state
        .store
        .user_channel_membership(&claims.user, &channel_id)
        .await?;
    let caller = caller(claims, read.user, token)?;
    let visible = visible(in_callers_workspace(&caller, read.channel)?, read.is_member)?;
    Ok((caller, visible))
}

/// Looks up a user id given by a client in the caller's workspace.
pub(crate) async fn user_in_workspace(
    state: &AppState,
    caller: &Caller,
    raw: Option<&str>,
) -> ApiResult<User> {
    let id = raw
        .and_then(|raw| UserId::parse(raw.trim()))
        .ok_or(ApiError::UserNotFound)?;
    state
        .store
        .user(&id)
        .await?
        .filter(|u| u.workspace == caller.claims.workspace)
        .ok_or(ApiError::UserNotFound)
}

/// Which conversation types a listing includes (`types`): Slack's `public_channel`,
/// `private_channel`, `im` (1:1 direct messages) and `mpim` (group direct messages). A direct
/// message is private underneath, but only `im` or `mpim` select it, as in Slack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Types {
    pub public: bool,
    pub private: bool,
    pub im: bool,
    pub mpim: bool,
}

impl Types {
    /// Parses `types`. Absent means public and private channels (Slack's default is public
    /// only; both is what a client listing its own channels wants, and private ones are only
    /// ever shown to their members).
    pub fn parse(params: &Params) -> ApiResult<Types> {
        let Some(raw) = params.non_empty("types") else {
            return Ok(Types {
                public: true,
                private: true,
                im: false,
                mpim: false,
            });
        };
        let mut types = Types {
            public: false,
            private: false,
            im: false,
            mpim: false,
        };
        for t in raw.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match t {
                "public_channel" => types.public = true,
                "private_channel" => types.private = true,
                "im" => types.im = true,
                "mpim" => types.mpim = true,
                _ => return Err(ApiError::InvalidTypes),
            }
        }
        Ok(types)
    }

    pub fn includes(self, channel: &Channel) -> bool {
        if channel.name.starts_with(members::IM_PREFIX) {
            self.im
        } else if channel.name.starts_with(members::MPIM_PREFIX) {
            self.mpim
        } else if channel.is_private {
            self.private
        } else {
            self.public
        }
    }
}

/// The ids of the channels `user` is a member of.
pub(crate) async fn memberships(state: &AppState, user: &UserId) -> ApiResult<HashSet<ChannelId>> {
    Ok(state
        .store
        .user_channels(user)
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect())
}

/// Relays a change (membership, profile, channel, read position) through the admin server to
/// the gateways and Flannel caches before the call answers, bounded in time
/// ([`crate::relay`]): the change is already stored, so a relay that fails or runs out of
/// time is counted, not the call's failure.
pub(crate) async fn publish(state: &AppState, ev: UserEvent) {
    crate::relay::relay(&state.admin, vec![ev]).await;
}

/// [`publish`] for the events of one call, relayed in this order.
pub(crate) async fn publish_all(state: &AppState, events: Vec<UserEvent>) {
    crate::relay::relay(&state.admin, events).await;
}

/// Slack's RTM event about a channel of the workspace, for the gateways to hand on
/// ([`UserEvent::Notice`]): `public_type` (`channel_rename`, …) to every session of the
/// workspace for a public channel; for a private one, its `group_*` form to the sessions in
/// it. `fields` are the event's own.
pub(crate) fn channel_notice(c: &Channel, public_type: &str, fields: Value) -> UserEvent {
    let (kind, members_of) = if c.is_private {
        (
            public_type.replacen("channel_", "group_", 1),
            Some(c.id.clone()),
        )
    } else {
        (public_type.to_string(), None)
    };
    let mut event = fields;
    event["type"] = kind.into();
    UserEvent::Notice {
        workspace: c.workspace.clone(),
        members_of,
        event: event.to_string(),
    }
}

/// Slack's `team_join` (a new user) or `user_change` (a changed profile), for every session
/// of the user's workspace.
pub(crate) fn user_notice(u: &User, kind: &str) -> UserEvent {
    UserEvent::Notice {
        workspace: u.workspace.clone(),
        members_of: None,
        event: json!({ "type": kind, "user": user_json(u) }).to_string(),
    }
}

/// A user as change events and caches carry it.
pub(crate) fn user_profile(u: &User) -> UserProfile {
    u.profile()
}

/// A channel as change events and caches carry it.
pub(crate) fn channel_summary(c: &Channel) -> ChannelSummary {
    c.summary()
}

/// Slack's conversation object as `viewer` sees it: a 1:1 DM names the other member (`user`).
pub(crate) fn channel_json(
    c: &Channel,
    viewer: &UserId,
    is_member: bool,
    num_members: Option<usize>,
) -> Value {
    let created = c.created.0 / 1_000_000;
    let mut v = json!({
        "id": c.id,
        "name": c.name,
        "name_normalized": c.name,
        "is_channel": !members::is_direct(c),
        "is_group": false,
        "is_im": c.name.starts_with(members::IM_PREFIX),
        "is_mpim": c.name.starts_with(members::MPIM_PREFIX),
        "is_private": c.is_private,
        "is_archived": c.is_archived,
        "is_general": c.name == crate::seed::GENERAL,
        "is_shared": false,
        "is_ext_shared": false,
        "is_org_shared": false,
        "is_member": is_member,
        "created": created,
        "creator": c.creator,
        "context_team_id": c.workspace,
        "topic": { "value": c.topic, "creator": "", "last_set": 0 },
        "purpose": { "value": c.purpose, "creator": "", "last_set": 0 },
    });
    if let Some(n) = num_members {
        v["num_members"] = n.into();
    }
    if let Some(user) = members::im_user(c, viewer) {
        v["user"] = json!(user);
    }
    v
}

/// Slack's message object, plus the per-channel `seq`.
pub(crate) fn message_json(msg: &Message) -> Value {
    let mut v = json!({
        "type": "message",
        "user": msg.user,
        "text": msg.text,
        "ts": msg.ts.to_slack(),
        "team": msg.workspace,
        "seq": msg.seq,
    });
    if let Some(id) = &msg.client_msg_id {
        v["client_msg_id"] = id.as_str().into();
    }
    if let Some(ts) = msg.thread_ts {
        v["thread_ts"] = ts.to_slack().into();
    }
    if msg.broadcast {
        // Slack's reply that is also shown in the channel, with its thread's start.
        v["subtype"] = "thread_broadcast".into();
        if let Some(root) = shared::protocol::client::broadcast_root(msg) {
            v["root"] = root;
        }
    }
    if msg.bot {
        // What bots check to ignore bots (their own messages, and each other's).
        v["bot_id"] = msg.user.0.as_str().into();
        if let Some(profile) = shared::protocol::client::bot_profile(msg) {
            v["bot_profile"] = profile;
        }
    }
    if let Some(rich) = &msg.rich {
        rich.add_to(&mut v);
    }
    v
}

/// A message as history shows it: Slack's message object with its edit, thread and reaction
/// state. A deleted thread parent whose replies remain is Slack's tombstone: none of its
/// text, author or reactions, only where its thread is.
/// History's messages, as Slack gives them: an app's metadata only with
/// `include_all_metadata` (live events always carry it).
pub(super) fn without_metadata_unless_asked(
    messages: impl Iterator<Item = Value>,
    params: &Params,
) -> Vec<Value> {
    let keep = params.flag("include_all_metadata", false);
    messages
        .map(|mut m| {
            if !keep {
                if let Some(o) = m.as_object_mut() {
                    o.remove("metadata");
                }
            }
            m
        })
        .collect()
}

pub(crate) fn view_json(v: &shared::store::MessageView) -> Value {
    if v.deleted {
        let mut j = json!({
            "type": "message",
            "subtype": "tombstone",
            "text": "This message was deleted.",
            "user": "USLACKBOT",
            "hidden": true,
            "ts": v.message.ts.to_slack(),
            "thread_ts": v.message.ts.to_slack(),
            "reply_count": v.reply_count,
            "team": v.message.workspace,
            "seq": v.message.seq,
        });
        if let Some(latest) = v.latest_reply {
            j["latest_reply"] = latest.to_slack().into();
        }
        return j;
    }
    let mut j = message_json(&v.message);
    if let Some(edited) = v.edited {
        j["edited"] = json!({ "user": v.message.user, "ts": edited.to_slack() });
    }
    if v.reply_count > 0 {
        j["reply_count"] = v.reply_count.into();
        j["thread_ts"] = v.message.ts.to_slack().into();
        if let Some(latest) = v.latest_reply {
            j["latest_reply"] = latest.to_slack().into();
        }
    }
    if !v.reactions.is_empty() {
        j["reactions"] = v
            .reactions
            .iter()
            .map(|r| json!({ "name": r.name, "users": r.users, "count": r.users.len() }))
            .collect::<Vec<_>>()
            .into();
    }
    if v.pinned.is_some() {
        j["pinned_to"] = json!([v.message.channel]);
    }
    j
}

/// Slack's user object.
pub(crate) fn user_json(u: &User) -> Value {
    json!({
        "id": u.id,
        "team_id": u.workspace,
        "name": u.name,
        "real_name": u.real_name,
        "deleted": u.deleted,
        "is_admin": u.is_admin,
        "is_owner": false,
        "is_bot": u.is_bot,
        "is_app_user": false,
        "profile": profile_json(u),
    })
}

/// Slack's profile object of a user. `display_name` falls back to the user's name while
/// none is set.
pub(crate) fn profile_json(u: &User) -> Value {
    let display = if u.display_name.is_empty() {
        &u.name
    } else {
        &u.display_name
    };
    let mut profile = json!({
        "real_name": u.real_name,
        "real_name_normalized": u.real_name,
        "display_name": display,
        "display_name_normalized": display,
        "team": u.workspace,
    });
    if !u.email.is_empty() {
        profile["email"] = u.email.as_str().into();
    }
    if u.is_bot {
        // As Slack's bot users' profiles: the id its messages carry as `bot_id`.
        profile["bot_id"] = u.id.0.as_str().into();
    }
    profile
}

/// `response_metadata` with the cursor of the next page (empty on the last page).
pub(crate) fn response_metadata(next_cursor: Option<String>) -> Value {
    json!({ "next_cursor": next_cursor.unwrap_or_default() })
}
