//! Direct messages and channel membership by others: `conversations.open` (1:1 and group
//! DMs), `conversations.invite`, `conversations.members`.
//!
//! A DM is a private channel whose members are fixed and whose name is derived from its
//! members (`dm-…`, `mpdm-…`, reserved for this): opening the same set of users again finds
//! the same conversation, and every path that checks private-channel membership protects it.

use serde_json::json;
use shared::ids::{ChannelId, Ts, UserId};
use shared::protocol::UserEvent;
use shared::store::{Channel, StorageErrorKind};

use super::{channel_json, channel_summary, publish, response_metadata, visible_channel};
use crate::api::{
    decode_cursor, encode_cursor, object, ApiError, ApiResult, AppState, Caller, Params,
};

pub const IM_PREFIX: &str = "dm-";
pub const MPIM_PREFIX: &str = "mpdm-";
/// Slack allows group DMs of up to 9 people, the caller included.
const MAX_DM_USERS: usize = 9;
const MAX_INVITES: usize = 1000;

pub fn is_direct(c: &Channel) -> bool {
    c.name.starts_with(IM_PREFIX) || c.name.starts_with(MPIM_PREFIX)
}

/// Users named in a comma-separated `users` parameter, each checked to be in the caller's
/// workspace.
async fn users_param(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    max: usize,
) -> ApiResult<Vec<UserId>> {
    let raw = params.non_empty("users").ok_or(ApiError::UserNotFound)?;
    let mut out: Vec<UserId> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id = UserId::parse(part).ok_or(ApiError::UserNotFound)?;
        let user = state
            .store
            .user(&id)
            .await?
            .filter(|u| u.workspace == caller.claims.workspace)
            .ok_or(ApiError::UserNotFound)?;
        if !out.contains(&user.id) {
            out.push(user.id);
        }
        if out.len() > max {
            return Err(ApiError::InvalidArguments(format!("at most {max} users")));
        }
    }
    if out.is_empty() {
        return Err(ApiError::UserNotFound);
    }
    Ok(out)
}

/// `conversations.open`: finds or creates the DM between the caller and `users`.
pub(super) async fn open(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let mut members = users_param(state, caller, params, MAX_DM_USERS - 1).await?;
    if !members.contains(&caller.user.id) {
        members.push(caller.user.id.clone());
    }
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
    if created {
        publish(
            state,
            UserEvent::ChannelCreated {
                workspace: ws.clone(),
                channel: channel_summary(&channel),
            },
        )
        .await;
    }
    for user in &members {
        if state.store.add_member(&channel.id, user).await? {
            publish(
                state,
                UserEvent::ChannelJoined {
                    workspace: ws.clone(),
                    channel: channel.id.clone(),
                    user: user.clone(),
                    channel_name: channel.name.clone(),
                },
            )
            .await;
        }
    }
    let mut body = channel_json(&channel, true, Some(members.len()));
    if members.len() == 2 {
        if let Some(other) = members.iter().find(|u| **u != caller.user.id) {
            body["user"] = json!(other);
        }
    }
    let mut out = object(json!({ "channel": body }));
    if !created {
        out.insert("already_open".into(), json!(true));
        out.insert("no_op".into(), json!(true));
    }
    Ok(out)
}

/// `conversations.invite`: a member adds users to a channel (not to a DM).
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
    let users = users_param(state, caller, params, MAX_INVITES).await?;
    let mut added = 0;
    for user in users {
        if state.store.add_member(&channel.id, &user).await? {
            added += 1;
            publish(
                state,
                UserEvent::ChannelJoined {
                    workspace: channel.workspace.clone(),
                    channel: channel.id.clone(),
                    user,
                    channel_name: channel.name.clone(),
                },
            )
            .await;
        }
    }
    let mut out = object(json!({ "channel": channel_json(&channel, true, None) }));
    if added == 0 {
        out.insert("warning".into(), json!("already_in_channel"));
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
