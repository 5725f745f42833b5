//! `chat.*`, `reactions.*` and `conversations.replies`. `chat.postMessage`: validate here, then
//! post through the admin server to the channel's owner, which appends durably before it
//! answers. The call answers `ok` only after that. Edits, deletions and reactions go the same
//! way, as entries of the channel's stream; `chat.getPermalink` only reads.

use serde_json::json;
use shared::ids::{ChannelId, Ts};
use shared::protocol::{Identity, MessageKind, NewMessage, RichContent, UserEvent};
use shared::store::{HistoryQuery, MessageView};

use super::content::{self, Composed, ContentError, Part, Parts, MAX_TEXT_CHARS};
use super::{message_json, view_json, visible_channel, VisibleChannel};
use crate::api::{object, ApiError, ApiResult, AppState, Caller, Params, RequestInfo};

/// Longest `client_msg_id` accepted (Slack's are UUIDs, 36 characters).
pub const MAX_CLIENT_MSG_ID: usize = 128;

/// `chat.postMessage`, or with `me` `chat.meMessage` (a `/me` message: its text only, subtype
/// `me_message`); `visible` is the `channel` parameter as [`visible_channel`] finds it.
pub(super) async fn post_message(
    state: &AppState,
    caller: &Caller,
    visible: VisibleChannel,
    params: &Params,
    me: bool,
) -> ApiResult {
    let new = compose_post(state, caller, &visible, params, me).await?;
    let channel = visible.channel;
    // Only a post with a `client_msg_id` can be answered with a stored message, which
    // `check_repeat` then compares with this one's text and thread.
    let request = new
        .client_msg_id
        .is_some()
        .then(|| (new.text.clone(), new.thread_ts));
    let (msg, duplicate) = state.admin.post(new).await?;
    if msg.channel != channel.id || msg.workspace != channel.workspace {
        return Err(ApiError::Internal(format!(
            "post to {} was answered with a message of {}",
            channel.id, msg.channel
        )));
    }
    if duplicate {
        let (text, thread_ts) = request
            .as_ref()
            .map_or(("", None), |(text, ts)| (text.as_str(), *ts));
        check_repeat(Via::Api, &msg, &caller.user.id, text, thread_ts)?;
    } else {
        super::members::tell_reopened(state, &channel, &msg).await;
    }
    if me {
        // Slack's answer to chat.meMessage: where and when, no message.
        return Ok(object(
            json!({ "channel": channel.id, "ts": msg.ts.to_slack() }),
        ));
    }
    Ok(object(json!({
        "channel": channel.id,
        "ts": msg.ts.to_slack(),
        "message": message_json(&msg),
    })))
}

/// The message that `chat.postMessage` (or `chat.meMessage`, or `chat.scheduleMessage`)
/// would post, from its parameters, once every check a post needs has passed: its content,
/// a bot's identity and metadata, the caller in the channel and the channel open, and the
/// thread there.
pub(super) async fn compose_post(
    state: &AppState,
    caller: &Caller,
    visible: &VisibleChannel,
    params: &Params,
    me: bool,
) -> ApiResult<NewMessage> {
    let channel = &visible.channel;
    let Composed { text, rich } = if me {
        compose_parts(Parts {
            text: params.non_empty("text"),
            blocks: None,
            attachments: None,
        })?
    } else {
        message_content(params)?
    };
    let rich = reshaped(rich, |r| r.me = me);
    let rich = with_identity(rich, bot_identity(caller, params)?);
    let rich = with_metadata(rich, message_metadata(caller, params)?);
    // A bot's messages carry its name, for Slack's `bot_profile`.
    let rich = reshaped(rich, |r| {
        r.bot_name = caller.is_bot().then(|| caller.user.name.clone())
    });
    let linked = linked_text(state, caller, params, &text).await?;
    let text = linked.as_deref().unwrap_or(&text);
    let client_msg_id = match params.non_empty("client_msg_id") {
        Some(id) if id.len() > MAX_CLIENT_MSG_ID || id.chars().any(char::is_control) => {
            return Err(ApiError::InvalidArguments(format!(
                "client_msg_id must be at most {MAX_CLIENT_MSG_ID} bytes without control characters"
            )));
        }
        other => other.map(str::to_string),
    };
    let thread_ts = thread_ts_param(params)?;
    may_post(visible.is_member, channel)?;
    check_thread(state, channel, thread_ts).await?;
    let new = NewMessage {
        workspace: caller.claims.workspace.clone(),
        channel: channel.id.clone(),
        user: caller.user.id.clone(),
        text: text.to_string(),
        client_msg_id,
        thread_ts,
        kind: MessageKind::Posted,
        // Slack's `reply_broadcast`: a reply also shown in the channel (ignored, as there,
        // for a message that is not a reply).
        broadcast: thread_ts.is_some() && params.flag("reply_broadcast", false),
        bot: caller.is_bot(),
        rich,
    };
    Ok(new)
}

/// The text with Slack's `link_names` applied ([`super::usergroups::link_names`]) when the
/// call asks for it and that changes something.
async fn linked_text(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    text: &str,
) -> ApiResult<Option<String>> {
    if !params.flag("link_names", false) {
        return Ok(None);
    }
    super::usergroups::link_names(state, caller, text).await
}

/// Where a post with a `client_msg_id` came in, for the conflict metric.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Via {
    Api,
    Hook,
}

/// Checks that `stored`, the message a channel server answered for a post whose
/// `client_msg_id` it already held, is this request's: the same user posting the same text
/// in the same thread, i.e. a retry. The store and channel servers key the id by channel
/// alone, so it may instead be another user's message, or the same user's key reused for
/// another text; answering `ok` with it would silently drop this post's text, so that
/// answers `client_msg_id_conflict` (and is counted).
pub(crate) fn check_repeat(
    via: Via,
    stored: &shared::protocol::Message,
    user: &shared::ids::UserId,
    text: &str,
    thread_ts: Option<Ts>,
) -> ApiResult<()> {
    let reason = if &stored.user != user {
        "other_user"
    } else if stored.text != text
        || stored.thread_ts != thread_ts
        || stored.kind != MessageKind::Posted
    {
        "other_request"
    } else {
        tracing::debug!(channel = %stored.channel, ts = %stored.ts, "repeated client_msg_id: answering the stored message");
        return Ok(());
    };
    let via = match via {
        Via::Api => "api",
        Via::Hook => "hook",
    };
    crate::metrics::CLIENT_MSG_ID_CONFLICTS
        .with_label_values(&[via, reason])
        .inc();
    tracing::debug!(channel = %stored.channel, ts = %stored.ts, via, reason, "client_msg_id names another message");
    Err(ApiError::ClientMsgIdConflict)
}

/// The message named by `ts_key` in a channel the caller is in: it must exist and not be
/// deleted.
async fn target_message(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    ts_key: &str,
) -> ApiResult<(VisibleChannel, MessageView)> {
    let visible = visible_channel(state, caller, params).await?;
    let raw = params.non_empty(ts_key).ok_or(ApiError::NoItemSpecified)?;
    let ts = Ts::parse_slack(raw).ok_or(ApiError::MessageNotFound)?;
    let view = state
        .store
        .message_view(&visible.channel.workspace, &visible.channel.id, ts)
        .await?
        .filter(|v| !v.deleted)
        .ok_or(ApiError::MessageNotFound)?;
    Ok((visible, view))
}

/// That `thread_ts`, when given, names a thread of `channel` that takes replies: a top-level
/// message that still exists (or its tombstone).
pub(super) async fn check_thread(
    state: &AppState,
    channel: &shared::store::Channel,
    thread_ts: Option<Ts>,
) -> ApiResult<()> {
    let Some(parent) = thread_ts else {
        return Ok(());
    };
    match state
        .store
        .message_view(&channel.workspace, &channel.id, parent)
        .await?
    {
        Some(v) if v.takes_replies() => Ok(()),
        _ => Err(ApiError::ThreadNotFound),
    }
}

/// The `thread_ts` parameter, when given: a well-formed ts.
pub(super) fn thread_ts_param(params: &Params) -> ApiResult<Option<Ts>> {
    params
        .non_empty("thread_ts")
        .map(|raw| Ts::parse_slack(raw).ok_or(ApiError::InvalidThreadTs))
        .transpose()
}

/// Whether the caller may post to `channel`: a member, and the channel not archived.
pub(super) fn may_post(is_member: bool, channel: &shared::store::Channel) -> ApiResult<()> {
    if !is_member {
        return Err(ApiError::NotInChannel);
    }
    if channel.is_archived {
        return Err(ApiError::IsArchived);
    }
    Ok(())
}

/// A message from its `text`, `blocks` and `attachments` parameters ([`super::content`]):
/// text that is not empty, at most [`MAX_TEXT_CHARS`] characters, and the blocks and
/// attachments to keep.
fn message_content(params: &Params) -> ApiResult<Composed<'_>> {
    compose_parts(Parts {
        text: params.non_empty("text"),
        blocks: params.non_empty("blocks").map(Part::Json),
        attachments: params.non_empty("attachments").map(Part::Json),
    })
}

/// Longest `username` a bot may give a message, in characters.
const MAX_USERNAME_CHARS: usize = 80;
/// Longest `icon_url`, in bytes.
const MAX_ICON_URL_BYTES: usize = 2000;

/// The name and icon a bot gives one message: `username`, `icon_emoji` (`:name:`, the colons
/// optional) and `icon_url` (`http` or `https`). As in Slack, only a bot's; a person's
/// message is always drawn as theirs, so the parameters are ignored on a person's token.
fn bot_identity(caller: &Caller, params: &Params) -> ApiResult<Option<Identity>> {
    if !caller.is_bot() {
        return Ok(None);
    }
    let bad = |what: &str| Err(ApiError::InvalidArguments(what.into()));
    let username = match params.non_empty("username").map(str::trim) {
        Some(name)
            if name.is_empty()
                || name.chars().count() > MAX_USERNAME_CHARS
                || name.chars().any(char::is_control) =>
        {
            return bad("username must be 1 to 80 characters, without control characters");
        }
        other => other.map(str::to_string),
    };
    let icon_emoji = match params.non_empty("icon_emoji").map(str::trim) {
        Some(raw) => {
            let name = raw.trim_matches(':');
            if !shared::protocol::is_emoji_name(name, true) {
                return bad("icon_emoji must be an emoji name, such as :robot_face:");
            }
            Some(format!(":{name}:"))
        }
        None => None,
    };
    let icon_url = match params.non_empty("icon_url").map(str::trim) {
        Some(raw) => {
            let ok = raw.len() <= MAX_ICON_URL_BYTES
                && url::Url::parse(raw)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !ok {
                return bad("icon_url must be an http or https URL of at most 2000 bytes");
            }
            Some(raw.to_string())
        }
        None => None,
    };
    Ok(Identity {
        username,
        icon_emoji,
        icon_url,
    }
    .some())
}

/// Longest message metadata, in bytes of its JSON.
pub const MAX_METADATA_BYTES: usize = 8192;
/// Longest metadata `event_type`, in characters.
const MAX_EVENT_TYPE_CHARS: usize = 255;

/// Slack's message metadata from `metadata` (a JSON object, or its text in a form):
/// `event_type` and `event_payload`, kept as their JSON. Only an app's (a bot token's), as in
/// Slack. Given back in live events always, and in history with `include_all_metadata`.
fn message_metadata(caller: &Caller, params: &Params) -> ApiResult<Option<String>> {
    let Some(raw) = params.non_empty("metadata") else {
        return Ok(None);
    };
    if !caller.is_bot() {
        return Err(ApiError::MetadataMustBeSentFromApp);
    }
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(raw) else {
        return Err(ApiError::InvalidMetadataFormat);
    };
    let event_type = match fields.remove("event_type") {
        Some(serde_json::Value::String(t))
            if !t.trim().is_empty()
                && t.chars().count() <= MAX_EVENT_TYPE_CHARS
                && !t.chars().any(char::is_control) =>
        {
            t
        }
        _ => return Err(ApiError::InvalidMetadataSchema),
    };
    let payload = match fields.remove("event_payload") {
        Some(p @ serde_json::Value::Object(_)) => p,
        _ => return Err(ApiError::InvalidMetadataSchema),
    };
    if !fields.is_empty() {
        return Err(ApiError::InvalidMetadataSchema);
    }
    let text = json!({ "event_type": event_type, "event_payload": payload }).to_string();
    if text.len() > MAX_METADATA_BYTES {
        return Err(ApiError::MetadataTooLarge {
            max: MAX_METADATA_BYTES,
        });
    }
    Ok(Some(text))
}

/// `rich` changed by `set`, and `None` when it then holds nothing.
fn reshaped(
    rich: Option<Box<RichContent>>,
    set: impl FnOnce(&mut RichContent),
) -> Option<Box<RichContent>> {
    let mut rich = rich.map(|r| *r).unwrap_or_default();
    set(&mut rich);
    rich.boxed()
}

/// `rich` with `metadata` set (or left out when `None`).
fn with_metadata(
    rich: Option<Box<RichContent>>,
    metadata: Option<String>,
) -> Option<Box<RichContent>> {
    reshaped(rich, |r| r.metadata = metadata)
}

/// `rich` with `identity` set (or left out when `None`).
fn with_identity(
    rich: Option<Box<RichContent>>,
    identity: Option<Identity>,
) -> Option<Box<RichContent>> {
    reshaped(rich, |r| r.identity = identity)
}

/// [`content::compose`], its errors as the Web API's.
fn compose_parts(parts: Parts<'_>) -> ApiResult<Composed<'_>> {
    content::compose(parts).map_err(|e| match e {
        ContentError::NoText => ApiError::NoText,
        ContentError::InvalidBlocks => ApiError::InvalidBlocks,
        ContentError::InvalidAttachments => ApiError::InvalidAttachments,
        ContentError::TooManyAttachments => ApiError::TooManyAttachments,
        ContentError::TooLong => ApiError::MsgTooLong {
            max: MAX_TEXT_CHARS,
        },
    })
}

/// `chat.postEphemeral`: `text` from the caller, shown to `user` alone in a channel both are
/// in, as Slack's "Only visible to you" messages. Not stored, not sequenced, not searchable:
/// it goes straight to the user's connected sessions (through the admin server to every
/// gateway, which writes it to the user's sessions in the channel) as an RTM `message` with
/// `is_ephemeral: true` and no `seq`. Answers `message_ts`, the ts it carries.
pub(super) async fn post_ephemeral(
    state: &AppState,
    caller: &Caller,
    params: &Params,
) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let channel = visible.channel;
    let Composed { text, rich } = message_content(params)?;
    let rich = with_identity(rich, bot_identity(caller, params)?);
    let text = &*text;
    let thread_ts = thread_ts_param(params)?;
    may_post(visible.is_member, &channel)?;
    let target = super::user_in_workspace(state, caller, params.non_empty("user")).await?;
    if !state.store.is_member(&channel.id, &target.id).await? {
        return Err(ApiError::UserNotInChannel);
    }
    let ts = Ts::now();
    let mut event = json!({
        "type": "message",
        "channel": channel.id,
        "user": caller.user.id,
        "text": text,
        "ts": ts.to_slack(),
        "team": channel.workspace,
        "is_ephemeral": true,
    });
    if let Some(parent) = thread_ts {
        event["thread_ts"] = parent.to_slack().into();
    }
    if let Some(rich) = &rich {
        rich.add_to(&mut event);
    }
    // Unlike a membership change, an ephemeral message lives only in this relay: one that
    // cannot be handed on is the caller's failure to know of, not a warning in a log.
    state
        .admin
        .publish_user_event(UserEvent::Ephemeral {
            workspace: channel.workspace.clone(),
            channel: channel.id.clone(),
            user: target.id,
            event: event.to_string(),
        })
        .await?;
    Ok(object(json!({ "message_ts": ts.to_slack() })))
}

/// Who may make a change to a message of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Acting {
    /// Members only (reactions).
    AsMember,
    /// The message's author (edit, delete) or a workspace admin (delete), who may act from
    /// outside the channel, as long as they can see it (`visible_channel` keeps workspace
    /// isolation and private channels to their members).
    AsAuthorOrAdmin,
}

/// What a change entry carries: an edit's new text, blocks and attachments; nothing for the
/// other changes.
#[derive(Default)]
struct Body {
    text: String,
    rich: Option<Box<RichContent>>,
}

/// Sends a change entry through the channel's owner, like a post.
async fn post_change(
    state: &AppState,
    caller: &Caller,
    visible: &VisibleChannel,
    acting: Acting,
    body: Body,
    kind: MessageKind,
    thread_ts: Option<Ts>,
) -> ApiResult<shared::protocol::Message> {
    if acting == Acting::AsMember && !visible.is_member {
        return Err(ApiError::NotInChannel);
    }
    if visible.channel.is_archived {
        return Err(ApiError::IsArchived);
    }
    let new = NewMessage {
        workspace: caller.claims.workspace.clone(),
        channel: visible.channel.id.clone(),
        user: caller.user.id.clone(),
        text: body.text,
        client_msg_id: None,
        thread_ts,
        kind,
        broadcast: false,
        bot: caller.is_bot(),
        rich: body.rich,
    };
    let (msg, _) = state.admin.post(new).await?;
    Ok(msg)
}

/// `chat.update`: the author edits a message's text, even after leaving the channel (if it
/// can still see it).
pub(super) async fn update(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let (visible, view) = target_message(state, caller, params, "ts").await?;
    // A channel's topic or purpose announcement is not edited (as in Slack): it says what was
    // set.
    if view.message.rich.as_ref().is_some_and(|r| r.sets.is_some()) {
        return Err(ApiError::CantUpdateMessage);
    }
    // As in Slack, blocks or attachments not given are kept (an empty array removes them);
    // the new text is composed from what the message will have.
    let kept = view.message.rich.as_deref();
    let part = |name: &str, kept: Option<&'_ String>| -> Option<String> {
        match params.non_empty(name) {
            Some(given) => Some(given.to_string()),
            None => kept.cloned(),
        }
    };
    let blocks = part("blocks", kept.and_then(|r| r.blocks.as_ref()));
    let attachments = part("attachments", kept.and_then(|r| r.attachments.as_ref()));
    let Composed { text, rich } = compose_parts(Parts {
        text: params.non_empty("text"),
        blocks: blocks.as_deref().map(Part::Json),
        attachments: attachments.as_deref().map(Part::Json),
    })?;
    // The name and icon the bot gave the message stay with it; its metadata too, unless the
    // edit gives new metadata.
    let rich = with_identity(rich, kept.and_then(|r| r.identity.clone()));
    let metadata = match message_metadata(caller, params)? {
        Some(given) => Some(given),
        None => kept.and_then(|r| r.metadata.clone()),
    };
    let rich = with_metadata(rich, metadata);
    let rich = reshaped(rich, |r| {
        r.bot_name = kept.and_then(|k| k.bot_name.clone());
        // A `/me` message stays one, and the files a message shared stay with it.
        r.me = kept.is_some_and(|k| k.me);
        r.files = kept.and_then(|k| k.files.clone());
    });
    let linked = linked_text(state, caller, params, &text).await?;
    let text = linked.as_deref().unwrap_or(&text);
    if view.message.user != caller.user.id {
        return Err(ApiError::CantUpdateMessage);
    }
    let target = view.message.ts;
    let body = Body {
        text: text.to_string(),
        rich: rich.clone(),
    };
    let entry = post_change(
        state,
        caller,
        &visible,
        Acting::AsAuthorOrAdmin,
        body,
        MessageKind::Edited { target },
        None,
    )
    .await?;
    let mut message = view_json(&view);
    message["text"] = text.into();
    if let Some(object) = message.as_object_mut() {
        object.remove("blocks");
        object.remove("attachments");
        object.remove("metadata");
    }
    if let Some(rich) = &rich {
        rich.add_to(&mut message);
    }
    message["edited"] = json!({ "user": caller.user.id, "ts": entry.ts.to_slack() });
    Ok(object(json!({
        "channel": visible.channel.id,
        "ts": target.to_slack(),
        "text": text,
        "message": message,
    })))
}

/// `chat.delete`: the author (or a workspace admin) deletes a message, in or out of the
/// channel, as long as the caller can see the channel: a private one only by its members,
/// another workspace's never.
pub(super) async fn delete(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let (visible, view) = target_message(state, caller, params, "ts").await?;
    if view.message.user != caller.user.id && !caller.user.is_admin {
        return Err(ApiError::CantDeleteMessage);
    }
    let target = view.message.ts;
    // A thread parent whose replies remain stays as Slack's tombstone. The deletion names its
    // thread, so the gateways tell clients it changed into one rather than that it went.
    let tombstone = (view.reply_count > 0).then_some(target);
    post_change(
        state,
        caller,
        &visible,
        Acting::AsAuthorOrAdmin,
        Body::default(),
        MessageKind::Deleted { target },
        tombstone,
    )
    .await?;
    // The last reply under a tombstone takes the tombstone with it (history no longer shows
    // it): clients are told the parent went too.
    if let Some(parent) = view.message.thread_ts.filter(|p| *p != target) {
        let (workspace, channel) = (&visible.channel.workspace, &visible.channel.id);
        let emptied = state
            .store
            .message_view(workspace, channel, parent)
            .await?
            .is_some_and(|p| p.deleted && p.reply_count == 0);
        if emptied {
            let gone = MessageKind::Deleted { target: parent };
            let acting = Acting::AsAuthorOrAdmin;
            post_change(state, caller, &visible, acting, Body::default(), gone, None).await?;
        }
    }
    Ok(object(
        json!({ "channel": visible.channel.id, "ts": target.to_slack() }),
    ))
}

/// `chat.getPermalink`: a link to a message of a conversation the caller can read (the rules
/// of `conversations.history`), Slack's `<base>/archives/<channel>/p<ts without the dot>`,
/// with `?thread_ts=<parent>&cid=<channel>` for a reply. The base is `webapp.public_url` when
/// set, else the Web API as the client addressed it (its `Host`): [`RequestInfo::base_url`].
/// A deleted message has none, unless it is the tombstone of a thread that remains.
pub(super) async fn get_permalink(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    request: &RequestInfo,
) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let raw = params
        .non_empty("message_ts")
        .ok_or_else(|| ApiError::InvalidArguments("message_ts is required".into()))?;
    let ts = Ts::parse_slack(raw.trim()).ok_or(ApiError::MessageNotFound)?;
    let channel = &visible.channel;
    let view = state
        .store
        .message_view(&channel.workspace, &channel.id, ts)
        .await?
        .filter(|v| !v.deleted || v.reply_count > 0)
        .ok_or(ApiError::MessageNotFound)?;
    let base = request.base_url(state);
    Ok(object(json!({
        "channel": channel.id,
        "permalink": permalink(&base, &channel.id, view.message.ts, view.message.thread_ts),
    })))
}

/// Slack's link to a message: `<base>archives/<channel>/p<ts without the dot>`, with
/// `?thread_ts=<parent>&cid=<channel>` for a reply (`thread_ts` other than its own ts).
pub(crate) fn permalink(base: &str, channel: &ChannelId, ts: Ts, thread_ts: Option<Ts>) -> String {
    let mut link = format!("{base}archives/{channel}/{}", permalink_id(ts));
    if let Some(parent) = thread_ts.filter(|p| *p != ts) {
        link.push_str(&format!("?thread_ts={}&cid={channel}", parent.to_slack()));
    }
    link
}

/// A message's id in a permalink: `p` and its ts without the dot.
fn permalink_id(ts: Ts) -> String {
    format!("p{}", ts.to_slack().replace('.', ""))
}

/// Reaction names as Slack accepts them: lower-case emoji names, optionally `name::skin-tone-2`.
fn reaction_name(params: &Params) -> ApiResult<String> {
    let name = params
        .non_empty("name")
        .ok_or(ApiError::InvalidReactionName)?
        .trim()
        .trim_matches(':');
    if shared::protocol::is_emoji_name(name, false) {
        Ok(name.to_string())
    } else {
        Err(ApiError::InvalidReactionName)
    }
}

/// `reactions.add` / `reactions.remove` on a message (`channel` + `timestamp`).
pub(super) async fn react(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    add: bool,
) -> ApiResult {
    let (visible, view) = target_message(state, caller, params, "timestamp").await?;
    let name = reaction_name(params)?;
    let has = view
        .reactions
        .iter()
        .any(|r| r.name == name && r.users.contains(&caller.user.id));
    let target = view.message.ts;
    let kind = match (add, has) {
        (true, true) => return Err(ApiError::AlreadyReacted),
        (false, false) => return Err(ApiError::NoReaction),
        (true, false) => MessageKind::ReactionAdded {
            target,
            reaction: name,
        },
        (false, true) => MessageKind::ReactionRemoved {
            target,
            reaction: name,
        },
    };
    member_change(state, caller, &visible, kind).await
}

/// A member's change with no body (a reaction, a pin), answered with an empty `ok`.
async fn member_change(
    state: &AppState,
    caller: &Caller,
    visible: &VisibleChannel,
    kind: MessageKind,
) -> ApiResult {
    post_change(
        state,
        caller,
        visible,
        Acting::AsMember,
        Body::default(),
        kind,
        None,
    )
    .await?;
    Ok(object(json!({})))
}

/// Most pinned messages `pins.list` gives: the most recently pinned.
pub const MAX_PINS_LISTED: usize = 1000;

/// `pins.add` / `pins.remove` on a message (`channel` + `timestamp`): a member pins a message
/// of the channel (not a deleted one), which every member's session hears (`pin_added`,
/// `pin_removed`) and history shows (`pinned_to`). Like a reaction, an entry of the channel's
/// stream, so it is ordered with the messages and replayed on resume.
pub(super) async fn pin(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    add: bool,
) -> ApiResult {
    let (visible, view) = target_message(state, caller, params, "timestamp").await?;
    let target = view.message.ts;
    let kind = match (add, view.pinned.is_some()) {
        (true, true) => return Err(ApiError::AlreadyPinned),
        (false, false) => return Err(ApiError::NoPin),
        (true, false) => MessageKind::Pinned { target },
        (false, true) => MessageKind::Unpinned { target },
    };
    member_change(state, caller, &visible, kind).await
}

/// `pins.list`: the channel's pinned messages, the most recently pinned first, each with
/// when and by whom (at most [`MAX_PINS_LISTED`]).
pub(super) async fn pins_list(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let channel = &visible.channel;
    let views = state
        .store
        .pins(&channel.workspace, &channel.id, MAX_PINS_LISTED)
        .await?;
    let items: Vec<_> = views
        .iter()
        .filter_map(|v| {
            let pin = v.pinned.as_ref()?;
            Some(json!({
                "type": "message",
                "channel": channel.id,
                "created": pin.at.0 / 1_000_000,
                "created_by": pin.by,
                "message": view_json(v),
            }))
        })
        .collect();
    Ok(object(json!({ "items": items })))
}

/// `reactions.get`: a message with its reactions.
pub(super) async fn reactions_get(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let (visible, view) = target_message(state, caller, params, "timestamp").await?;
    Ok(object(json!({
        "type": "message",
        "channel": visible.channel.id,
        "message": view_json(&view),
    })))
}

/// `reactions.list`'s page: default and most.
const REACTIONS_LIST_DEFAULT: u32 = 100;
const REACTIONS_LIST_MAX: u32 = 1000;

/// `reactions.list`: the messages `user` (the caller by default) reacted to, the latest
/// reaction first, each with its reactions; only those in conversations the caller can read.
/// Paged by cursor (the last item's reaction time).
pub(super) async fn reactions_list(
    state: &AppState,
    caller: &Caller,
    params: &Params,
) -> ApiResult {
    let user = match params.non_empty("user") {
        Some(raw) => super::user_in_workspace(state, caller, Some(raw)).await?.id,
        None => caller.user.id.clone(),
    };
    let limit = params.limit(REACTIONS_LIST_DEFAULT, REACTIONS_LIST_MAX)? as usize;
    let before = crate::api::decode_cursor(params, "reacted")?
        .map(|raw| {
            raw.parse::<u64>()
                .map(Ts)
                .map_err(|_| ApiError::InvalidCursor)
        })
        .transpose()?;
    let ws = &caller.claims.workspace;
    let mut found = state
        .store
        .user_reactions(ws, &user, before, limit + 1)
        .await?;
    let next = (found.len() > limit).then(|| {
        found.truncate(limit);
        crate::api::encode_cursor("reacted", &found[limit - 1].at.0.to_string())
    });
    // Which of their conversations the caller can read: public ones of the workspace, and
    // private ones (direct messages too) it is in.
    let mut readable: std::collections::HashMap<ChannelId, bool> = Default::default();
    let mut items = Vec::with_capacity(found.len());
    for r in &found {
        let can_read = match readable.get(&r.channel) {
            Some(known) => *known,
            None => {
                let read = state
                    .store
                    .user_channel_membership(&caller.user.id, &r.channel)
                    .await?;
                let ok = read
                    .channel
                    .is_some_and(|c| &c.workspace == ws && (!c.is_private || read.is_member));
                readable.insert(r.channel.clone(), ok);
                ok
            }
        };
        if !can_read {
            continue;
        }
        let Some(view) = state
            .store
            .message_view(ws, &r.channel, r.target)
            .await?
            .filter(|v| !v.deleted)
        else {
            continue;
        };
        items.push(json!({
            "type": "message",
            "channel": r.channel,
            "message": view_json(&view),
        }));
    }
    Ok(object(json!({
        "items": items,
        "response_metadata": super::response_metadata(next),
    })))
}

/// `conversations.replies`: a thread's parent and replies, oldest first, paged by cursor.
pub(super) async fn replies(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let raw = params
        .non_empty("ts")
        .ok_or_else(|| ApiError::InvalidArguments("ts is required".into()))?;
    let parent = Ts::parse_slack(raw).ok_or(ApiError::ThreadNotFound)?;
    let limit = params.limit(100, 1000)?;
    let after_seq = crate::api::decode_cursor(params, "seq")?
        .map(|raw| raw.parse::<u64>().map_err(|_| ApiError::InvalidCursor))
        .transpose()?;
    let query = HistoryQuery {
        after_seq,
        limit: limit + 1,
        newest_first: false,
        ..HistoryQuery::default()
    };
    let mut views = state
        .store
        .message_views(
            &visible.channel.workspace,
            &visible.channel.id,
            &query,
            Some(parent),
        )
        .await?;
    if after_seq.is_none() && views.first().is_none_or(|v| v.message.ts != parent) {
        return Err(ApiError::ThreadNotFound);
    }
    let has_more = views.len() > limit as usize;
    views.truncate(limit as usize);
    let next = if has_more {
        views
            .last()
            .map(|v| crate::api::encode_cursor("seq", &v.message.seq.to_string()))
    } else {
        None
    };
    let list = super::without_metadata_unless_asked(views.iter().map(view_json), params);
    Ok(object(json!({
        "messages": list,
        "has_more": has_more,
        "response_metadata": super::response_metadata(next),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permalink_names_the_ts_without_its_dot() {
        assert_eq!(
            permalink_id(Ts::parse_slack("1358546515.000008").unwrap()),
            "p1358546515000008"
        );
        assert_eq!(permalink_id(Ts(1_700_000_000_123_456)), "p1700000000123456");
    }
}
