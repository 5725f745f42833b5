//! `conversations.*` and `users.conversations`.

use std::collections::HashSet;

use serde_json::json;
use shared::ids::{ChannelId, Seq, Ts, UserId, WorkspaceId};
use shared::protocol::client::{Reader, UnreadCount};
use shared::protocol::{ChannelSetting, MessageKind, NewMessage, RichContent, UserEvent};
use shared::store::{Channel, HistoryQuery, SharedStore, StorageErrorKind};

use super::{
    channel_json, channel_summary, memberships, publish, publish_all, response_metadata,
    user_in_workspace, visible_channel, Types, VisibleChannel,
};
use crate::api::{
    decode_cursor, encode_cursor, object, ApiError, ApiResult, AppState, Caller, Params,
};

/// Longest channel name, as in Slack.
pub const MAX_CHANNEL_NAME: usize = 80;
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// Slack's rule: 1 to 80 of lower-case letters, digits, `-` and `_`.
pub fn validate_channel_name(name: &str) -> ApiResult<()> {
    if name.is_empty() {
        return Err(ApiError::InvalidNameRequired);
    }
    // Reserved for direct messages (conversations.open).
    if name.starts_with(super::members::IM_PREFIX) || name.starts_with(super::members::MPIM_PREFIX)
    {
        return Err(ApiError::InvalidNameSpecials);
    }
    if name.chars().count() > MAX_CHANNEL_NAME {
        return Err(ApiError::InvalidNameMaxlength {
            max: MAX_CHANNEL_NAME,
        });
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(ApiError::InvalidNameSpecials);
    }
    Ok(())
}

/// Creates a channel with the caller as its first member.
pub(super) async fn create(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let name = params.get("name").map(str::trim).unwrap_or_default();
    validate_channel_name(name)?;
    let channel = Channel {
        id: ChannelId::generate(),
        workspace: caller.claims.workspace.clone(),
        name: name.to_string(),
        is_private: params.flag("is_private", false),
        creator: caller.user.id.clone(),
        created: Ts::now(),
        topic: String::new(),
        purpose: String::new(),
        is_archived: false,
    };
    let channel = match state.store.create_channel(&channel).await {
        Ok(()) => channel,
        Err(e) if e.kind == StorageErrorKind::AlreadyExists => {
            unfinished_creation(state, caller, &channel)
                .await?
                .ok_or(ApiError::NameTaken)?
        }
        Err(e) => return Err(e.into()),
    };
    state.store.add_member(&channel.id, &caller.user.id).await?;
    // Announced before its member: a cache that learned of a join to a channel it does not
    // know would reload the whole workspace.
    let mut events = vec![
        UserEvent::ChannelCreated {
            workspace: channel.workspace.clone(),
            channel: channel_summary(&channel),
        },
        UserEvent::ChannelJoined {
            workspace: channel.workspace.clone(),
            channel: channel.id.clone(),
            user: caller.user.id.clone(),
            channel_name: channel.name.clone(),
            // A new channel (or an unfinished one, which has no messages either).
            after_seq: Some(0),
            private: channel.is_private,
        },
    ];
    // As in Slack, the workspace hears of a public channel (a private one's creator hears
    // `channel_joined`).
    if !channel.is_private {
        events.push(super::channel_notice(
            &channel,
            "channel_created",
            json!({ "channel": {
                "id": channel.id,
                "name": channel.name,
                "created": channel.created.0 / 1_000_000,
                "creator": channel.creator,
                "is_channel": true,
            } }),
        ));
    }
    publish_all(state, events).await;
    Ok(object(
        json!({ "channel": channel_json(&channel, &caller.user.id, true, Some(1)) }),
    ))
}

/// The caller's own channel named like `wanted` whose creation never finished: stored, but
/// its first member (the creator) never added, because that store call failed after the
/// channel's (so it has no members and no messages). Such a channel is seen by no one and holds its name; the creator's retry of the
/// same request (same name, same privacy) completes it instead of answering `name_taken`.
/// (Two requests racing to create the same channel for one user both end with it, as the
/// same call made twice.)
async fn unfinished_creation(
    state: &AppState,
    caller: &Caller,
    wanted: &Channel,
) -> ApiResult<Option<Channel>> {
    let Some(existing) = state
        .store
        .channel_by_name(&wanted.workspace, &wanted.name)
        .await?
    else {
        return Ok(None);
    };
    if existing.creator != caller.user.id
        || existing.is_private != wanted.is_private
        || existing.is_archived
    {
        return Ok(None);
    }
    // No members and no messages. A channel that was used and emptied later (its members
    // left, or the creator was removed) has messages, and its creator does not get back in
    // by name. (One emptied before anyone posted cannot be told apart, and holds nothing.)
    if !state.store.members(&existing.id).await?.is_empty()
        || state
            .store
            .last_message(&existing.workspace, &existing.id)
            .await?
            .is_some()
    {
        return Ok(None);
    }
    tracing::info!(channel = %existing.id, "completing a channel creation that stopped before its first member");
    Ok(Some(existing))
}

/// Joins a public channel. Joining again answers `ok` with Slack's `already_in_channel`
/// warning (and relays the membership again, which is harmless and heals a lost relay).
pub(super) async fn join(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let channel = visible.channel;
    if channel.is_private {
        return Err(ApiError::MethodNotSupportedForChannelType);
    }
    if channel.is_archived {
        return Err(ApiError::IsArchived);
    }
    let after = super::members::seq_before_join(state, &channel).await?;
    let added = state.store.add_member(&channel.id, &caller.user.id).await?;
    publish(
        state,
        UserEvent::ChannelJoined {
            workspace: channel.workspace.clone(),
            channel: channel.id.clone(),
            user: caller.user.id.clone(),
            channel_name: channel.name.clone(),
            after_seq: Some(after),
            private: channel.is_private,
        },
    )
    .await;
    let mut out = object(json!({ "channel": channel_json(&channel, &caller.user.id, true, None) }));
    if !added {
        out.insert("warning".into(), json!("already_in_channel"));
        out.insert(
            "response_metadata".into(),
            json!({ "warnings": ["already_in_channel"] }),
        );
    }
    Ok(out)
}

/// Leaves a channel (not a direct message: its members are fixed).
pub(super) async fn leave(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let channel = visible.channel;
    if !visible.is_member {
        return Err(ApiError::NotInChannel);
    }
    refuse_direct(&channel)?;
    if channel.name == crate::seed::GENERAL {
        return Err(ApiError::CantLeaveGeneral);
    }
    remove_member(state, &channel, &caller.user.id).await?;
    Ok(object(json!({})))
}

/// Takes `user` out of `channel` and relays it (`ChannelLeft`) to the gateways, which stop
/// delivering the channel to the user's sessions and tell them `channel_left`, and to the
/// Flannels: the one way out of a channel, whether the user left (`conversations.leave`) or
/// was removed (`conversations.kick`). `not_in_channel` when the user was not a member.
async fn remove_member(state: &AppState, channel: &Channel, user: &UserId) -> ApiResult<()> {
    if !state.store.remove_member(&channel.id, user).await? {
        return Err(ApiError::NotInChannel);
    }
    publish(
        state,
        UserEvent::ChannelLeft {
            workspace: channel.workspace.clone(),
            channel: channel.id.clone(),
            user: user.clone(),
        },
    )
    .await;
    Ok(())
}

/// Removes `user` from a channel, with Slack's default permissions: a workspace admin may
/// remove anyone from any channel it can see (every public one, the private ones it is in);
/// other members only from a private channel they are in (`restricted_action` on a public
/// one). Not from a direct message (its members are fixed), not from #general (everyone is in
/// it), and not oneself (`conversations.leave` is for that).
pub(super) async fn kick(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let channel = visible.channel;
    refuse_direct(&channel)?;
    let target = user_in_workspace(state, caller, params.non_empty("user")).await?;
    if target.id == caller.user.id {
        return Err(ApiError::CantKickSelf);
    }
    if channel.name == crate::seed::GENERAL {
        return Err(ApiError::CantKickFromGeneral);
    }
    if !caller.user.is_admin {
        // A private channel is only visible to its members, so a caller who got this far on
        // one is in it; said again here so the rule does not hang on that.
        if !channel.is_private {
            return Err(ApiError::RestrictedAction);
        }
        if !visible.is_member {
            return Err(ApiError::NotInChannel);
        }
    }
    remove_member(state, &channel, &target.id).await?;
    Ok(object(json!({})))
}

/// One channel.
pub(super) async fn info(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let num_members = if params.flag("include_num_members", false) {
        Some(state.store.members(&visible.channel.id).await?.len())
    } else {
        None
    };
    let mut channel = channel_json(
        &visible.channel,
        &caller.user.id,
        visible.is_member,
        num_members,
    );
    if visible.is_member {
        if let Some(read) = state
            .store
            .last_read(&visible.channel.id, &caller.user.id)
            .await?
        {
            let (last_read, unread) =
                read_state(state, &visible.channel, &caller.user.id, read).await?;
            channel["last_read"] = last_read.into();
            channel["unread_count"] = unread.messages.into();
            channel["unread_count_display"] = unread.messages.into();
            channel["mention_count"] = unread.mentions.into();
            channel["mention_count_display"] = unread.mentions.into();
        }
        if super::members::is_direct(&visible.channel) {
            channel["is_open"] =
                super::members::dm_is_open(state, &visible.channel, &caller.user.id)
                    .await?
                    .into();
        }
    }
    Ok(object(json!({ "channel": channel })))
}

/// Most unread messages `conversations.info` counts (one read of that many).
pub const MAX_UNREAD_COUNT: u32 = 1000;

/// A member's read position as Slack shows it (the `ts` of the entry at `read`, zeros before
/// any) and its unread messages after it, as the gateway's `hello` counts them: the others'
/// messages shown in the channel that are still there, at most [`MAX_UNREAD_COUNT`], and
/// those of them that mention the reader as they read now (its id, `<!channel>`,
/// `<!here>`, `<!everyone>`, or a user group it is in; in a DM or group DM every one).
async fn read_state(
    state: &AppState,
    channel: &Channel,
    reader: &UserId,
    read: Seq,
) -> ApiResult<(String, UnreadCount)> {
    let at = if read == 0 {
        None
    } else {
        let query = HistoryQuery {
            after_seq: Some(read - 1),
            before_seq: Some(read.saturating_add(1)),
            limit: 1,
            ..HistoryQuery::default()
        };
        let entry = state
            .store
            .history(&channel.workspace, &channel.id, &query)
            .await?;
        entry.first().map(|m| m.ts.to_slack())
    };
    let query = HistoryQuery {
        after_seq: Some(read),
        limit: MAX_UNREAD_COUNT,
        ..HistoryQuery::default()
    };
    let unread: Vec<_> = state
        .store
        .message_views(&channel.workspace, &channel.id, &query, None)
        .await?
        .into_iter()
        .filter(|v| !v.deleted && v.message.user != *reader)
        .collect();
    let mentions = if super::members::is_direct(channel) || unread.is_empty() {
        unread.len()
    } else {
        let groups: Vec<String> = state
            .store
            .usergroups(&channel.workspace)
            .await?
            .groups
            .into_iter()
            .filter(|g| g.disabled.is_none() && g.users.contains(reader))
            .map(|g| g.id)
            .collect();
        let reader = Reader {
            user: &reader.0,
            groups: &groups,
        };
        unread
            .iter()
            .filter(|v| reader.is_mentioned_in(&v.message.text))
            .count()
    };
    let count = UnreadCount {
        messages: unread.len() as u64,
        mentions: mentions as u64,
    };
    Ok((at.unwrap_or_else(|| "0000000000.000000".into()), count))
}

fn channel_cursor(params: &Params) -> ApiResult<Option<ChannelId>> {
    decode_cursor(params, "channel")?
        .map(|raw| ChannelId::parse(&raw).ok_or(ApiError::InvalidCursor))
        .transpose()
}

/// One page of `channels` (ordered by id) and the cursor of the next.
fn page(mut channels: Vec<Channel>, limit: u32) -> (Vec<Channel>, Option<String>) {
    let limit = limit as usize;
    if channels.len() <= limit {
        return (channels, None);
    }
    channels.truncate(limit);
    let next = channels
        .last()
        .map(|c| encode_cursor("channel", c.id.as_str()));
    (channels, next)
}

fn channel_list(
    channels: &[Channel],
    viewer: &UserId,
    member_of: &HashSet<ChannelId>,
    next_cursor: Option<String>,
) -> crate::api::Object {
    let list: Vec<_> = channels
        .iter()
        .map(|c| channel_json(c, viewer, member_of.contains(&c.id), None))
        .collect();
    object(json!({
        "channels": list,
        "response_metadata": response_metadata(next_cursor),
    }))
}

/// The workspace's channels the caller may see: every public one, and the private ones (direct
/// messages included) it is a member of, of the requested `types`.
pub(super) async fn list(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let types = Types::parse(params)?;
    let exclude_archived = params.flag("exclude_archived", false);
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = channel_cursor(params)?;
    let member_of = memberships(state, &caller.user.id).await?;
    let keep = |c: &Channel| {
        types.includes(c)
            && !(exclude_archived && c.is_archived)
            && (!c.is_private || member_of.contains(&c.id))
    };
    let scan = scan_channels(
        &state.store,
        &caller.claims.workspace,
        after,
        limit as usize,
        LIST_SCAN,
        keep,
    )
    .await?;
    tracing::debug!(
        rows_read = scan.rows_read,
        batches = scan.batches,
        listed = scan.channels.len(),
        "conversations.list scanned"
    );
    let next = scan.next.map(|c| encode_cursor("channel", c.as_str()));
    Ok(channel_list(
        &scan.channels,
        &caller.user.id,
        &member_of,
        next,
    ))
}

/// How `conversations.list` reads a workspace's channels.
#[derive(Clone, Copy, Debug)]
struct ScanBounds {
    /// Rows per store call, whatever the page size, so that a small `limit` over many channels
    /// the caller cannot see does not become many small reads.
    batch: u32,
    /// Rows read per call at most (rounded up to whole batches). Past it the call answers what
    /// it found, fewer than `limit` or none, with a cursor to continue (as Slack may), so a
    /// filter that matches little never walks a whole large workspace in one call.
    max_rows: usize,
}

const LIST_SCAN: ScanBounds = ScanBounds {
    batch: 1000,
    max_rows: 10_000,
};

/// A page of [`scan_channels`].
#[derive(Debug)]
struct ChannelScan {
    channels: Vec<Channel>,
    /// Where the next page starts (after this id); `None` when the workspace was read to its
    /// end.
    next: Option<ChannelId>,
    rows_read: usize,
    batches: usize,
}

/// Up to `limit` of the workspace's channels after `after` (in id order) that `keep` accepts,
/// reading whole batches and at most `bounds.max_rows` rows. The cursor it returns is the last
/// row read (every row up to it was listed or filtered out): after a full page it is given
/// unless that batch was the workspace's last, so a page may be followed by an empty one.
async fn scan_channels(
    store: &SharedStore,
    workspace: &WorkspaceId,
    mut after: Option<ChannelId>,
    limit: usize,
    bounds: ScanBounds,
    keep: impl Fn(&Channel) -> bool,
) -> ApiResult<ChannelScan> {
    let limit = limit.max(1);
    let mut scan = ChannelScan {
        channels: Vec::new(),
        next: None,
        rows_read: 0,
        batches: 0,
    };
    loop {
        let batch = store
            .channels(workspace, after.as_ref(), bounds.batch)
            .await?;
        scan.batches += 1;
        let exhausted = batch.len() < bounds.batch as usize;
        for c in batch {
            if keep(&c) {
                if scan.channels.len() == limit {
                    // One beyond a full page: the next page starts with it.
                    scan.next = after;
                    return Ok(scan);
                }
                after = Some(c.id.clone());
                scan.channels.push(c);
            } else {
                after = Some(c.id);
            }
            scan.rows_read += 1;
        }
        if exhausted {
            return Ok(scan);
        }
        if scan.channels.len() == limit || scan.rows_read >= bounds.max_rows {
            scan.next = after;
            return Ok(scan);
        }
    }
}

/// The channels a user (the caller unless `user` is given) is a member of. Gateways call this
/// with a user's token and every type when a session connects, to learn which channels to
/// deliver.
pub(super) async fn user_conversations(
    state: &AppState,
    caller: &Caller,
    params: &Params,
) -> ApiResult {
    let types = Types::parse(params)?;
    let exclude_archived = params.flag("exclude_archived", false);
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = channel_cursor(params)?;
    let target = match params.non_empty("user") {
        Some(raw) if raw.trim() != caller.user.id.as_str() => {
            Some(user_in_workspace(state, caller, Some(raw)).await?)
        }
        _ => None,
    };
    let (channels, member_of) = match &target {
        None => {
            let channels = state.store.user_channels(&caller.user.id).await?;
            let ids = channels.iter().map(|c| c.id.clone()).collect();
            (channels, ids)
        }
        // Another user's channels: the public ones, and the private ones the caller shares.
        Some(user) => (
            state.store.user_channels(&user.id).await?,
            memberships(state, &caller.user.id).await?,
        ),
    };
    let selected: Vec<Channel> = channels
        .into_iter()
        .filter(|c| c.workspace == caller.claims.workspace)
        .filter(|c| after.as_ref().is_none_or(|a| &c.id > a))
        .filter(|c| types.includes(c) && !(exclude_archived && c.is_archived))
        .filter(|c| !c.is_private || member_of.contains(&c.id))
        .collect();
    let (channels, next) = page(selected, limit);
    Ok(channel_list(&channels, &caller.user.id, &member_of, next))
}

fn ts_param(params: &Params, key: &str, err: fn() -> ApiError) -> ApiResult<Option<Ts>> {
    params
        .non_empty(key)
        .map(|raw| Ts::parse_slack(raw).ok_or_else(err))
        .transpose()
}

/// A channel's messages, newest first, a page at a time. Public channels of the caller's
/// workspace are readable without joining (as in Slack); private ones only by members.
pub(super) async fn history(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let channel = visible.channel;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let before_seq: Option<Seq> = decode_cursor(params, "seq")?
        .map(|raw| {
            raw.parse::<Seq>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or(ApiError::InvalidCursor)
        })
        .transpose()?;
    let oldest = ts_param(params, "oldest", || ApiError::InvalidTsOldest)?;
    let latest = ts_param(params, "latest", || ApiError::InvalidTsLatest)?;
    let inclusive = params.flag("inclusive", false);
    // The store's bounds are exclusive; timestamps are whole microseconds, so an inclusive
    // bound is the exclusive one a microsecond further out.
    let (oldest, latest) = if inclusive {
        (
            oldest.and_then(|t| t.0.checked_sub(1)).map(Ts),
            latest.map(|t| Ts(t.0.saturating_add(1))),
        )
    } else {
        (oldest, latest)
    };
    let query = HistoryQuery {
        after_seq: None,
        before_seq,
        oldest,
        latest,
        limit: limit + 1,
        newest_first: true,
    };
    let mut messages = state
        .store
        .message_views(&channel.workspace, &channel.id, &query, None)
        .await?;
    let has_more = messages.len() > limit as usize;
    messages.truncate(limit as usize);
    let next = if has_more {
        messages
            .last()
            .map(|m| encode_cursor("seq", &m.message.seq.to_string()))
    } else {
        None
    };
    let list = super::without_metadata_unless_asked(messages.iter().map(super::view_json), params);
    Ok(object(json!({
        "messages": list,
        "has_more": has_more,
        "pin_count": state.store.pin_count(&channel.workspace, &channel.id).await?,
        "channel_actions_count": 0,
        "response_metadata": response_metadata(next),
    })))
}

/// Longest topic or purpose, as in Slack.
pub const MAX_TOPIC: usize = 250;

/// A channel the caller is a member of, for the methods that change it.
async fn member_channel(
    state: &AppState,
    caller: &Caller,
    params: &Params,
) -> ApiResult<VisibleChannel> {
    let visible = visible_channel(state, caller, params).await?;
    if !visible.is_member {
        return Err(ApiError::NotInChannel);
    }
    Ok(visible)
}

/// Stores a changed channel and tells the caches, and with `notice` the clients.
async fn store_channel_change(
    state: &AppState,
    channel: &Channel,
    notice: Option<UserEvent>,
) -> ApiResult<()> {
    match state.store.update_channel(channel).await {
        Ok(()) => {}
        Err(e) if e.kind == StorageErrorKind::AlreadyExists => return Err(ApiError::NameTaken),
        Err(e) if e.kind == StorageErrorKind::NotFound => return Err(ApiError::ChannelNotFound),
        Err(e) => return Err(e.into()),
    }
    let changed = UserEvent::ChannelChanged {
        workspace: channel.workspace.clone(),
        channel: channel_summary(channel),
    };
    publish_all(state, [changed].into_iter().chain(notice).collect()).await;
    Ok(())
}

/// `method_not_supported_for_channel_type` for a direct message, as Slack answers the methods
/// that change a channel's name, state or members. A DM's members are fixed and its name is
/// derived from them: renamed, it would be an ordinary private channel that members could be
/// invited to, and they would read the DM's history.
fn refuse_direct(channel: &Channel) -> ApiResult<()> {
    if super::members::is_direct(channel) {
        return Err(ApiError::MethodNotSupportedForChannelType);
    }
    Ok(())
}

/// Renames a channel (members only; not #general, not archived ones, not direct messages).
pub(super) async fn rename(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let mut channel = member_channel(state, caller, params).await?.channel;
    refuse_direct(&channel)?;
    let name = params.get("name").map(str::trim).unwrap_or_default();
    let name = name.strip_prefix('#').unwrap_or(name);
    validate_channel_name(name)?;
    if channel.is_archived {
        return Err(ApiError::IsArchived);
    }
    if channel.name == crate::seed::GENERAL && name != channel.name {
        return Err(ApiError::MethodNotSupportedForChannelType);
    }
    if channel.name != name {
        channel.name = name.to_string();
        let notice = super::channel_notice(
            &channel,
            "channel_rename",
            json!({ "channel": {
                "id": channel.id,
                "name": channel.name,
                "created": channel.created.0 / 1_000_000,
            } }),
        );
        store_channel_change(state, &channel, Some(notice)).await?;
    }
    Ok(object(
        json!({ "channel": channel_json(&channel, &caller.user.id, true, None) }),
    ))
}

/// Archives (`archive`) or unarchives a channel (members only; not direct messages).
pub(super) async fn archive(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    archive: bool,
) -> ApiResult {
    let mut channel = member_channel(state, caller, params).await?.channel;
    refuse_direct(&channel)?;
    match (archive, channel.is_archived) {
        (true, true) => return Err(ApiError::AlreadyArchived),
        (false, false) => return Err(ApiError::NotArchived),
        _ => {}
    }
    if archive && channel.name == crate::seed::GENERAL {
        return Err(ApiError::CantArchiveGeneral);
    }
    channel.is_archived = archive;
    let kind = if archive {
        "channel_archive"
    } else {
        "channel_unarchive"
    };
    let notice = super::channel_notice(
        &channel,
        kind,
        json!({ "channel": channel.id, "user": caller.user.id }),
    );
    store_channel_change(state, &channel, Some(notice)).await?;
    Ok(object(json!({})))
}

/// Which text `conversations.setTopic` / `setPurpose` set.
#[derive(Clone, Copy, Debug)]
pub(super) enum TextField {
    Topic,
    Purpose,
}

/// Sets a channel's topic or purpose (members only, not archived channels). The parameter
/// must be given; an empty value clears the text. As in Slack, the change is announced in the
/// channel by a message from the caller (subtype `channel_topic` or `channel_purpose`, with
/// the new text), which is how members' clients learn of it. The text is stored first: a
/// failed announcement fails the call, and calling again repeats both.
pub(super) async fn set_text(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    field: TextField,
) -> ApiResult {
    let mut channel = member_channel(state, caller, params).await?.channel;
    if channel.is_archived {
        return Err(ApiError::IsArchived);
    }
    let key = match field {
        TextField::Topic => "topic",
        TextField::Purpose => "purpose",
    };
    // Absent is a mistake (a misspelled key would otherwise clear the text); an explicit
    // empty value clears it, as in Slack.
    let text = params
        .get(key)
        .ok_or_else(|| ApiError::InvalidArguments(format!("{key} is required")))?
        .trim()
        .to_string();
    if text.chars().count() > MAX_TOPIC {
        return Err(ApiError::TooLong { max: MAX_TOPIC });
    }
    let sets = match field {
        TextField::Topic => {
            channel.topic = text.clone();
            ChannelSetting::Topic(text)
        }
        TextField::Purpose => {
            channel.purpose = text.clone();
            ChannelSetting::Purpose(text)
        }
    };
    store_channel_change(state, &channel, None).await?;
    let announcement = NewMessage {
        workspace: channel.workspace.clone(),
        channel: channel.id.clone(),
        user: caller.user.id.clone(),
        text: sets.text(),
        client_msg_id: None,
        thread_ts: None,
        kind: MessageKind::Posted,
        broadcast: false,
        bot: caller.is_bot(),
        rich: RichContent {
            sets: Some(sets),
            ..RichContent::default()
        }
        .boxed(),
    };
    state.admin.post(announcement).await?;
    Ok(object(
        json!({ "channel": channel_json(&channel, &caller.user.id, true, None) }),
    ))
}

/// Records where the caller stopped reading a channel: `ts` of a message of the channel (as in
/// Slack), or Switchboard's `seq` directly.
pub(super) async fn mark(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let channel = member_channel(state, caller, params).await?.channel;
    let seq = match (params.non_empty("seq"), params.non_empty("ts")) {
        (Some(raw), _) => raw
            .trim()
            .parse::<Seq>()
            .map_err(|_| ApiError::InvalidArguments("seq must be a non-negative integer".into()))?,
        (None, Some(raw)) => {
            let ts = Ts::parse_slack(raw.trim()).ok_or(ApiError::InvalidTimestamp)?;
            // Bounds are exclusive and timestamps whole microseconds: this window holds
            // exactly the message at `ts`, if there is one.
            let query = HistoryQuery {
                oldest: Some(Ts(ts.0.saturating_sub(1))),
                latest: Some(Ts(ts.0.saturating_add(1))),
                limit: 1,
                ..HistoryQuery::default()
            };
            state
                .store
                .history(&channel.workspace, &channel.id, &query)
                .await?
                .first()
                .map(|m| m.seq)
                .ok_or(ApiError::InvalidTimestamp)?
        }
        (None, None) => return Err(ApiError::InvalidTimestamp),
    };
    if !state
        .store
        .set_last_read(&channel.id, &caller.user.id, seq)
        .await?
    {
        return Err(ApiError::NotInChannel);
    }
    // The user's sessions hear Slack's `channel_marked` (`group_marked` for a private channel
    // or a group DM, `im_marked` for a DM), so that the others clear their unread marks too.
    let kind = if channel.name.starts_with(super::members::IM_PREFIX) {
        "im_marked"
    } else if channel.is_private {
        "group_marked"
    } else {
        "channel_marked"
    };
    let (ts, unread) = read_state(state, &channel, &caller.user.id, seq).await?;
    let marked = json!({
        "type": kind,
        "channel": channel.id,
        "ts": ts,
        "seq": seq,
        "unread_count": unread.messages,
        "unread_count_display": unread.messages,
        "mention_count": unread.mentions,
        "mention_count_display": unread.mentions,
        "event_ts": Ts::now().to_slack(),
    });
    publish_all(
        state,
        vec![
            UserEvent::ReadMarked {
                workspace: channel.workspace.clone(),
                channel: channel.id.clone(),
                user: caller.user.id.clone(),
                seq,
            },
            UserEvent::UserNotice {
                workspace: channel.workspace.clone(),
                user: caller.user.id.clone(),
                event: marked.to_string(),
            },
        ],
    )
    .await;
    Ok(object(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real embedded store holding one workspace with `n` channels (ids are random, so their
    /// order is too), of which those with `shown(i)` are named `shown-<i>`, the rest
    /// `hidden-<i>`.
    async fn workspace_with_channels(
        dir: &std::path::Path,
        n: usize,
        shown: impl Fn(usize) -> bool,
    ) -> (SharedStore, WorkspaceId) {
        let store: SharedStore = std::sync::Arc::new(
            shared::store::sqlite::SqliteStore::open(&dir.join("store"), 1).expect("store"),
        );
        let ws = store.create_workspace("acme").await.expect("workspace").id;
        for i in 0..n {
            let name = if shown(i) {
                format!("shown-{i}")
            } else {
                format!("hidden-{i}")
            };
            let channel = Channel {
                id: ChannelId::generate(),
                workspace: ws.clone(),
                name,
                is_private: false,
                creator: shared::ids::UserId::from("UALICE"),
                created: Ts::now(),
                topic: String::new(),
                purpose: String::new(),
                is_archived: false,
            };
            store.create_channel(&channel).await.expect("channel");
        }
        (store, ws)
    }

    const SMALL: ScanBounds = ScanBounds {
        batch: 4,
        max_rows: 10,
    };

    /// Walks every page from the start: each call's scan, in order.
    async fn walk(store: &SharedStore, ws: &WorkspaceId, limit: usize) -> Vec<ChannelScan> {
        let mut scans = Vec::new();
        let mut after = None;
        loop {
            let keep = |c: &Channel| c.name.starts_with("shown-");
            let scan = scan_channels(store, ws, after, limit, SMALL, keep)
                .await
                .expect("scan");
            after = scan.next.clone();
            scans.push(scan);
            if after.is_none() {
                return scans;
            }
            assert!(scans.len() < 100, "the walk does not end");
        }
    }

    #[tokio::test]
    async fn a_filter_matching_nothing_reads_a_bounded_number_of_rows_per_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, ws) = workspace_with_channels(dir.path(), 25, |_| false).await;
        // Whatever the page size: batches of 4, at most 10 rows (3 batches) per call, and a
        // cursor to go on (with an empty page) until the workspace is read to its end.
        for limit in [1, 1000] {
            let scans = walk(&store, &ws, limit).await;
            let read: Vec<(usize, usize, bool)> = scans
                .iter()
                .map(|s| {
                    assert!(s.channels.is_empty());
                    (s.rows_read, s.batches, s.next.is_some())
                })
                .collect();
            assert_eq!(
                read,
                vec![(12, 3, true), (12, 3, true), (1, 1, false)],
                "limit {limit}"
            );
        }
    }

    #[tokio::test]
    async fn scanned_pages_list_every_match_once_within_the_bounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, ws) = workspace_with_channels(dir.path(), 30, |i| i % 4 == 0).await;
        let mut expected: Vec<String> = (0..30)
            .filter(|i| i % 4 == 0)
            .map(|i| format!("shown-{i}"))
            .collect();
        expected.sort();
        for limit in [1, 2, 3, 1000] {
            let scans = walk(&store, &ws, limit).await;
            let mut listed: Vec<String> = Vec::new();
            for s in &scans {
                assert!(s.channels.len() <= limit, "limit {limit}: {s:?}");
                assert!(s.batches <= 3, "limit {limit}: {s:?}");
                listed.extend(s.channels.iter().map(|c| c.name.clone()));
            }
            listed.sort();
            assert_eq!(listed, expected, "limit {limit}");
            let rows: usize = scans.iter().map(|s| s.rows_read).sum();
            assert_eq!(rows, 30, "limit {limit}: each row is scanned once");
        }
    }

    #[test]
    fn channel_names_follow_slack_rules() {
        assert!(validate_channel_name("general").is_ok());
        assert!(validate_channel_name("a-b_c9").is_ok());
        assert!(matches!(
            validate_channel_name(""),
            Err(ApiError::InvalidNameRequired)
        ));
        assert!(matches!(
            validate_channel_name("General"),
            Err(ApiError::InvalidNameSpecials)
        ));
        assert!(matches!(
            validate_channel_name("a b"),
            Err(ApiError::InvalidNameSpecials)
        ));
        assert!(matches!(
            validate_channel_name("é"),
            Err(ApiError::InvalidNameSpecials)
        ));
        assert!(validate_channel_name(&"a".repeat(80)).is_ok());
        assert!(matches!(
            validate_channel_name(&"a".repeat(81)),
            Err(ApiError::InvalidNameMaxlength { .. })
        ));
    }
}
