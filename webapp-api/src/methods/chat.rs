//! `chat.postMessage`: validate here, then post through the admin server to the channel's
//! owner, which appends durably before it answers. The call answers `ok` only after that.

use serde_json::json;
use shared::ids::Ts;
use shared::protocol::NewMessage;

use super::{message_json, visible_channel};
use crate::api::{object, ApiError, ApiResult, AppState, Caller, Params};

/// Longest message text in characters, as in Slack.
pub const MAX_TEXT_CHARS: usize = 40_000;
/// Longest `client_msg_id` accepted (Slack's are UUIDs, 36 characters).
pub const MAX_CLIENT_MSG_ID: usize = 128;

pub(super) async fn post_message(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = visible_channel(state, caller, params).await?;
    let channel = visible.channel;
    let text = params.get("text").unwrap_or_default();
    if text.is_empty() {
        return Err(ApiError::NoText);
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::MsgTooLong {
            max: MAX_TEXT_CHARS,
        });
    }
    let client_msg_id = match params.non_empty("client_msg_id") {
        Some(id) if id.len() > MAX_CLIENT_MSG_ID || id.chars().any(char::is_control) => {
            return Err(ApiError::InvalidArguments(format!(
                "client_msg_id must be at most {MAX_CLIENT_MSG_ID} bytes without control characters"
            )));
        }
        other => other.map(str::to_string),
    };
    let thread_ts = params
        .non_empty("thread_ts")
        .map(|raw| Ts::parse_slack(raw).ok_or(ApiError::InvalidThreadTs))
        .transpose()?;
    if !visible.is_member {
        return Err(ApiError::NotInChannel);
    }
    if channel.is_archived {
        return Err(ApiError::IsArchived);
    }
    let new = NewMessage {
        workspace: caller.claims.workspace.clone(),
        channel: channel.id.clone(),
        user: caller.user.id.clone(),
        text: text.to_string(),
        client_msg_id,
        thread_ts,
    };
    let (msg, duplicate) = state.admin.post(new).await?;
    if msg.channel != channel.id || msg.workspace != channel.workspace {
        return Err(ApiError::Internal(format!(
            "post to {} was answered with a message of {}",
            channel.id, msg.channel
        )));
    }
    if duplicate {
        tracing::debug!(channel = %msg.channel, ts = %msg.ts, "repeated client_msg_id: answering the stored message");
    }
    Ok(object(json!({
        "channel": channel.id,
        "ts": msg.ts.to_slack(),
        "message": message_json(&msg),
    })))
}
