//! Direct messages and channel membership by others: `conversations.open` (1:1 and group
//! DMs), `conversations.close`, `conversations.invite`, `conversations.members`.
//!
//! A DM is a private channel whose members are fixed and whose name is derived from its
//! members (`dm-…`, `mpdm-…`, reserved for this): opening the same set of users again finds
//! the same conversation, and every path that checks private-channel membership protects it.
//!
//! Each member has a DM open or closed, as in Slack's sidebar: `conversations.close` closes
//! it for the caller where the channel's stream then ends, and it is open again when the
//! caller opens it (`conversations.open`, or a post to the user's id) or when a message
//! arrives after that point ([`dm_is_open`]), whose post tells them `im_open`
//! ([`tell_reopened`]). Nothing is written per message.

use std::collections::HashSet;

use serde_json::json;
use shared::ids::{ChannelId, Seq, Ts, UserId};
use shared::protocol::client::{unread_effect, Reader, UnreadEffect};
use shared::protocol::{Message, UserEvent};
use shared::store::{dm, Channel, StorageErrorKind};

use super::{
    channel_json, channel_summary, publish_all, response_metadata, visible_channel, VisibleChannel,
};
use crate::api::{
    decode_cursor, encode_cursor, object, ApiError, ApiResult, AppState, Caller, Params, UserError,
};

pub use shared::ids::{IM_PREFIX, MPIM_PREFIX};
/// Slack allows group DMs of up to 9 people, the caller included.
const MAX_DM_USERS: usize = 9;
const MAX_INVITES: usize = 1000;

pub fn is_direct(c: &Channel) -> bool {
    c.name.starts_with(IM_PREFIX) || c.name.starts_with(MPIM_PREFIX)
}

/// Users named in a comma-separated `users` parameter, each checked to be in the caller's
/// workspace, without repeats and without `leave_out` (the caller, for `conversations.open`),
/// which does not count towards `max` either. `user_not_found` when no user is named (naming
/// only `leave_out` counts as naming one).
async fn users_param(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    max: usize,
    leave_out: Option<&UserId>,
) -> ApiResult<Vec<UserId>> {
    let raw = params.non_empty("users").ok_or(ApiError::UserNotFound)?;
    let mut out: Vec<UserId> = Vec::new();
    let mut named_left_out = false;
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id = UserId::parse(part).ok_or(ApiError::UserNotFound)?;
        let user = state
            .store
            .user(&id)
            .await?
            .filter(|u| u.workspace == caller.claims.workspace)
            .ok_or(ApiError::UserNotFound)?;
        if leave_out == Some(&user.id) {
            named_left_out = true;
            continue;
        }
        if !out.contains(&user.id) {
            out.push(user.id);
        }
        if out.len() > max {
            return Err(ApiError::InvalidArguments(format!("at most {max} users")));
        }
    }
    if out.is_empty() && !named_left_out {
        return Err(ApiError::UserNotFound);
    }
    Ok(out)
}

/// `conversations.open`: finds or creates the DM between the caller and `users`.
pub(super) async fn open(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    // The caller is always a member, listed or not: only the others count towards the limit.
    let others = users_param(
        state,
        caller,
        params,
        MAX_DM_USERS - 1,
        Some(&caller.user.id),
    )
    .await?;
    let (channel, created, num_members, was_open) = open_dm(state, caller, others).await?;
    let mut body = channel_json(&channel, &caller.user.id, true, Some(num_members));
    // Open for the caller now, whatever it was.
    body["is_open"] = true.into();
    let mut out = object(json!({ "channel": body }));
    if !created && was_open {
        out.insert("already_open".into(), json!(true));
        out.insert("no_op".into(), json!(true));
    }
    Ok(out)
}

/// The 1:1 DM between the caller and `user` (a user id given as `chat.postMessage`'s
/// `channel`, as Slack accepts), opened if it was not: `channel_not_found` when the user is
/// not in the caller's workspace, as for any channel the caller cannot see.
pub(super) async fn dm_with(
    state: &AppState,
    caller: &Caller,
    user: &UserId,
) -> ApiResult<VisibleChannel> {
    let user = super::user_in_workspace(state, caller, Some(user.as_str()))
        .await
        .map_err(|e| match e {
            ApiError::UserNotFound => ApiError::ChannelNotFound,
            other => other,
        })?;
    let others = if user.id == caller.user.id {
        Vec::new()
    } else {
        vec![user.id]
    };
    let (channel, _, _, _) = open_dm(state, caller, others).await?;
    Ok(VisibleChannel {
        channel,
        is_member: true,
    })
}

/// Finds or creates the DM between the caller and `others` (the caller not among them), makes
/// sure every one of them is a member, and opens it for the caller if the caller had closed
/// it. Returns the DM, whether it was created, its number of members, and whether the caller
/// had it open already.
async fn open_dm(
    state: &AppState,
    caller: &Caller,
    others: Vec<UserId>,
) -> ApiResult<(Channel, bool, usize, bool)> {
    let mut members = others;
    members.push(caller.user.id.clone());
    members.sort();
    let prefix = if members.len() <= 2 {
        IM_PREFIX
    } else {
        MPIM_PREFIX
    };
    let name = format!(
        "{prefix}{}",
        members
            .iter()
            .map(|u| u.0.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join("-")
    );
    let ws = &caller.claims.workspace;
    let (channel, created) = match state.store.channel_by_name(ws, &name).await? {
        Some(c) => (c, false),
        None => {
            let channel = Channel {
                id: ChannelId::generate(),
                workspace: ws.clone(),
                name: name.clone(),
                is_private: true,
                creator: caller.user.id.clone(),
                created: Ts::now(),
                topic: String::new(),
                purpose: String::new(),
                is_archived: false,
            };
            match state.store.create_channel(&channel).await {
                Ok(()) => (channel, true),
                // Opened concurrently by another member: use theirs.
                Err(e) if e.kind == StorageErrorKind::AlreadyExists => (
                    state
                        .store
                        .channel_by_name(ws, &name)
                        .await?
                        .ok_or(ApiError::ChannelNotFound)?,
                    false,
                ),
                Err(e) => return Err(e.into()),
            }
        }
    };
    // The channel is announced before its members, as `conversations.create` does: a cache
    // that learned of a join to a channel it does not know would reload the whole workspace.
    let mut events = Vec::new();
    if created {
        events.push(UserEvent::ChannelCreated {
            workspace: ws.clone(),
            channel: channel_summary(&channel),
        });
    }
    let added = add_members(state, &channel, &members, &mut events).await;
    let reopened = match added {
        Ok(_) if !created => reopen_dm(state, &channel, &caller.user.id).await,
        _ => Ok(false),
    };
    if let Ok(true) = reopened {
        events.push(dm_notice(&channel, &caller.user.id, "open"));
    }
    publish_all(state, events).await;
    added?;
    Ok((channel, created, members.len(), !reopened?))
}

/// Whether `user` has the DM `channel` open: never closed, or closed and then a message
/// arrived (Slack opens a closed DM again when a message comes; reactions, edits and replies
/// in threads, which the channel does not show, do not).
pub(crate) async fn dm_is_open(
    state: &AppState,
    channel: &Channel,
    user: &UserId,
) -> ApiResult<bool> {
    let closed = state.store.dm_closed(&channel.id, user).await?;
    Ok(dm::is_open(
        state.store.as_ref(),
        &channel.workspace,
        &channel.id,
        closed,
    )
    .await?)
}

/// Whether a message shown in `channel` came after `seq`.
async fn message_since(state: &AppState, channel: &Channel, seq: Seq) -> ApiResult<bool> {
    Ok(first_message_after(state, channel, seq).await?.is_some())
}

/// The `seq` of the first message shown in `channel` after `seq` ([`dm::first_message_after`]).
async fn first_message_after(
    state: &AppState,
    channel: &Channel,
    seq: Seq,
) -> ApiResult<Option<Seq>> {
    Ok(dm::first_message_after(state.store.as_ref(), &channel.workspace, &channel.id, seq).await?)
}

/// After `msg` was stored in `channel`: the members who had the DM closed until this message
/// (the first one it shows since they closed it: not a reaction, an edit or a reply kept in
/// its thread) hear `im_open` (`mpim_open`), as when they open it themselves, so their
/// clients list it again. Nothing is written: [`dm_is_open`] reads the DM open from the
/// message itself. Best effort, the message being stored already: a failed read is logged
/// and counted, and the DM is open all the same.
pub(crate) async fn tell_reopened(state: &AppState, channel: &Channel, msg: &Message) {
    if !is_direct(channel) || !matches!(unread_effect(msg, &Reader::NOBODY), UnreadEffect::Adds(..))
    {
        return;
    }
    match reopened_by(state, channel, msg.seq).await {
        Ok(users) => {
            let events = users
                .iter()
                .map(|user| dm_notice(channel, user, "open"))
                .collect();
            publish_all(state, events).await;
        }
        Err(e) => {
            crate::relay::dropped("store_read", 1);
            tracing::warn!(channel = %channel.id, error = ?e, "could not tell whom a message opened a DM for");
        }
    }
}

/// The members of the DM `channel` who had it closed until the message at `seq`.
async fn reopened_by(state: &AppState, channel: &Channel, seq: Seq) -> ApiResult<Vec<UserId>> {
    let mut users = Vec::new();
    for user in state.store.members(&channel.id).await? {
        let Some(closed) = state.store.dm_closed(&channel.id, &user).await? else {
            continue;
        };
        if closed < seq && first_message_after(state, channel, closed).await? == Some(seq) {
            users.push(user);
        }
    }
    Ok(users)
}

/// Clears where `user` closed the DM; `Ok(true)` when it was closed until now (not when a
/// message had opened it again meanwhile).
async fn reopen_dm(state: &AppState, channel: &Channel, user: &UserId) -> ApiResult<bool> {
    let Some(closed) = state.store.dm_closed(&channel.id, user).await? else {
        return Ok(false);
    };
    let was_closed = !message_since(state, channel, closed).await?;
    state.store.set_dm_closed(&channel.id, user, None).await?;
    Ok(was_closed)
}

/// Slack's `im_open` / `im_close` (`mpim_…` for a group DM) for `user`'s sessions alone.
fn dm_notice(channel: &Channel, user: &UserId, what: &str) -> UserEvent {
    let kind = if channel.name.starts_with(IM_PREFIX) {
        "im"
    } else {
        "mpim"
    };
    UserEvent::UserNotice {
        workspace: channel.workspace.clone(),
        user: user.clone(),
        event: json!({
            "type": format!("{kind}_{what}"),
            "user": user,
            "channel": channel.id,
            "event_ts": Ts::now().to_slack(),
        })
        .to_string(),
    }
}

/// `conversations.close`: closes a DM or group DM for the caller, where its stream ends now;
/// the caller's sessions hear `im_close` (`mpim_close`). Closing a closed one answers
/// `no_op` and `already_closed`, as Slack's does; a channel is not closed
/// (`method_not_supported_for_channel_type`).
pub(super) async fn close(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let VisibleChannel { channel, is_member } = visible_channel(state, caller, params).await?;
    if !is_direct(&channel) {
        return Err(ApiError::MethodNotSupportedForChannelType);
    }
    if !is_member {
        return Err(ApiError::ChannelNotFound);
    }
    if !dm_is_open(state, &channel, &caller.user.id).await? {
        return Ok(object(json!({ "no_op": true, "already_closed": true })));
    }
    let end = seq_before_join(state, &channel).await?;
    if !state
        .store
        .set_dm_closed(&channel.id, &caller.user.id, Some(end))
        .await?
    {
        return Err(ApiError::ChannelNotFound);
    }
    publish_all(state, vec![dm_notice(&channel, &caller.user.id, "close")]).await;
    Ok(object(json!({})))
}

/// The channel's last stored `seq` (0 before its first message), to be read before a join is
/// stored: the joining user's sessions start after it (`UserEvent::ChannelJoined::after_seq`).
/// Read after the join, a message stored in between would be skipped by them.
pub(crate) async fn seq_before_join(state: &AppState, channel: &Channel) -> ApiResult<Seq> {
    Ok(state
        .store
        .last_message(&channel.workspace, &channel.id)
        .await?
        .map_or(0, |m| m.seq))
}

/// Adds `users` to `channel`, pushing a `ChannelJoined` to `events` for each one that was not
/// a member yet (what was added before a store failure is still pushed, to be relayed).
/// Returns how many were added.
async fn add_members(
    state: &AppState,
    channel: &Channel,
    users: &[UserId],
    events: &mut Vec<UserEvent>,
) -> ApiResult<usize> {
    let after = seq_before_join(state, channel).await?;
    let mut added = 0;
    for user in users {
        if state.store.add_member(&channel.id, user).await? {
            added += 1;
            events.push(UserEvent::ChannelJoined {
                workspace: channel.workspace.clone(),
                channel: channel.id.clone(),
                user: user.clone(),
                channel_name: channel.name.clone(),
                after_seq: Some(after),
                private: channel.is_private,
            });
        }
    }
    Ok(added)
}

/// The other member of a 1:1 DM as `viewer` sees it (the viewer itself in a DM with oneself),
/// read from the DM's name (`dm-<id>[-<id>]`, the ids lower-cased: ids are upper-case letters
/// and digits, so the name gives them back exactly); `None` for any other conversation.
pub(crate) fn im_user(c: &Channel, viewer: &UserId) -> Option<UserId> {
    if !c.name.starts_with(IM_PREFIX) {
        return None;
    }
    let ids = dm_members(c)?;
    ids.iter()
        .find(|u| *u != viewer)
        .or_else(|| ids.first())
        .cloned()
}

/// The members of a direct conversation (1:1 or group), read from its name (`dm-<id>…`,
/// `mpdm-<id>-<id>…`, as [`im_user`] reads it); `None` for a channel.
pub(crate) fn dm_members(c: &Channel) -> Option<Vec<UserId>> {
    c.name
        .strip_prefix(IM_PREFIX)
        .or_else(|| c.name.strip_prefix(MPIM_PREFIX))?
        .split('-')
        .map(|part| UserId::parse(&part.to_ascii_uppercase()))
        .collect()
}

/// `conversations.invite`: a member adds users to a channel (not to a DM). As in Slack, a
/// listed user who is already a member (`already_in_channel`) or the caller
/// (`cant_invite_self`) fails the call, with each such user in `errors`, and no one is
/// invited; with `force`, the others are invited and the call answers `ok` with those
/// `errors`. When no one is left to invite, it fails even with `force`.
pub(super) async fn invite(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let channel = visible.channel;
    if !visible.is_member {
        return Err(ApiError::NotInChannel);
    }
    if is_direct(&channel) {
        return Err(ApiError::MethodNotSupportedForChannelType);
    }
    if channel.is_archived {
        return Err(ApiError::IsArchived);
    }
    let users = users_param(state, caller, params, MAX_INVITES, None).await?;
    let members: HashSet<UserId> = state
        .store
        .members(&channel.id)
        .await?
        .into_iter()
        .collect();
    let (mut invited, mut errors) = (Vec::new(), Vec::new());
    for user in users {
        let error = if user == caller.user.id {
            "cant_invite_self"
        } else if members.contains(&user) {
            "already_in_channel"
        } else {
            invited.push(user);
            continue;
        };
        errors.push(UserError { user, error });
    }
    if !errors.is_empty() && (invited.is_empty() || !params.flag("force", false)) {
        return Err(ApiError::NotInvited(errors));
    }
    let mut events = Vec::new();
    let added = add_members(state, &channel, &invited, &mut events).await;
    publish_all(state, events).await;
    added?;
    let mut out = object(json!({ "channel": channel_json(&channel, &caller.user.id, true, None) }));
    if !errors.is_empty() {
        out.insert(
            "errors".into(),
            errors.iter().map(UserError::json).collect(),
        );
    }
    Ok(out)
}

/// `conversations.members`: member ids, paged by cursor.
pub(super) async fn members(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let limit = params.limit(100, 1000)? as usize;
    let after = decode_cursor(params, "user")?;
    let all = state.store.members(&visible.channel.id).await?;
    let rest: Vec<UserId> = all
        .into_iter()
        .filter(|u| after.as_deref().is_none_or(|a| u.0.as_str() > a))
        .collect();
    let has_more = rest.len() > limit;
    let page: Vec<UserId> = rest.into_iter().take(limit).collect();
    let next = if has_more {
        page.last().map(|u| encode_cursor("user", &u.0))
    } else {
        None
    };
    Ok(object(
        json!({ "members": page, "response_metadata": response_metadata(next) }),
    ))
}
