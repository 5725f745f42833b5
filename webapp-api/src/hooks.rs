//! Incoming webhooks for bots: `POST /hooks/<hook token>` with `{"text": "...", "thread_ts"?}`
//! (or a form body `payload=<that JSON>`, as Slack also accepts) posts into one channel as the
//! user who created the hook, through the same path as `chat.postMessage`. `blocks` and
//! `attachments` are kept and give text as they do there ([`crate::methods::content`]): alert
//! managers and CI servers often send attachments alone.
//!
//! A hook token is `base64url(JSON {w, c, u, i}) "." base64url(signature)`: workspace,
//! channel, creator and issue time, signed under the cluster secret for the purpose `"hook"`
//! ([`TokenSigner::sign_payload`]), so any Web API node verifies it without a store, and it
//! never passes for a bearer token (nor a bearer token for it). A hook is created with the
//! `hooks.create` method by a member of the channel; it stops working when its creator leaves
//! the channel (`action_prohibited`) or the channel is archived (`channel_is_archived`).
//!
//! Answers are plain text, like Slack's: `ok` (200), or the error name with its status:
//! see [`HOOK_ERRORS`].

use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use prometheus::{register_int_counter, register_int_counter_vec, IntCounter, IntCounterVec};
use serde_json::{json, Map, Value};
use shared::auth::TokenSigner;
use shared::ids::{ChannelId, Ts, UserId, WorkspaceId};
use shared::protocol::{MessageKind, NewMessage, RichContent};

use crate::api::{object, read_body, ApiError, ApiResult, AppState, Caller, Params, RequestInfo};
use crate::methods::content::{self, ContentError, Part, Parts};
use crate::ratelimit::{RetryAfter, Tier, RATELIMITED};

/// What hook signatures are made for (see [`TokenSigner::sign_payload`]).
pub const HOOK_PURPOSE: &str = "hook";
/// Where hooks are served; a hook's URL is this plus its token.
pub const HOOK_PATH_PREFIX: &str = "/hooks/";
/// Longest hook token read; longer ones are not ours.
const MAX_HOOK_TOKEN: usize = 2048;
/// Longest `client_msg_id` (or `Idempotency-Key`), as `chat.postMessage` accepts.
const MAX_CLIENT_MSG_ID: usize = 128;

/// Every answer of a hook other than `ok`, with its HTTP status.
pub const HOOK_ERRORS: &[(u16, &str, &str)] = &[
    (
        400,
        "invalid_payload",
        "the body is not a JSON object (nor a form with a `payload` holding one), or a field has the wrong type",
    ),
    (
        400,
        "no_text",
        "none of `text`, `blocks` and `attachments` gives any text",
    ),
    (
        400,
        "invalid_blocks",
        "`blocks` (read when `text` is absent) is not an array of block objects",
    ),
    (
        400,
        "invalid_attachments",
        "`attachments` is not an array of attachment objects",
    ),
    (400, "too_many_attachments", "more than 100 attachments"),
    (
        400,
        "msg_too_long",
        "the text (with that of the attachments) is longer than 40000 characters",
    ),
    (400, "invalid_thread_ts", "`thread_ts` is not a timestamp"),
    (
        403,
        "action_prohibited",
        "the hook's creator is no longer a member of the channel",
    ),
    (
        404,
        "no_service",
        "the hook token is not one this cluster signed, or its creator is gone",
    ),
    (404, "channel_not_found", "the hook's channel is gone"),
    (
        404,
        "thread_not_found",
        "`thread_ts` names no top-level message of the channel",
    ),
    (410, "channel_is_archived", "the hook's channel is archived"),
    (413, "request_too_large", "the body is larger than webapp.max_body_bytes"),
    (
        422,
        "client_msg_id_conflict",
        "the Idempotency-Key (or `client_msg_id`) already names a message of the channel posted by another user, or with another text or thread; a retry repeats its request unchanged",
    ),
    (429, "ratelimited", "too many posts by this hook's creator; see Retry-After"),
    (500, "internal_error", "a failure of the server"),
    (
        503,
        "service_unavailable",
        "the message could not be handed to its channel's owner; safe to retry with the same Idempotency-Key",
    ),
];

pub static HOOK_POSTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_webapp_hook_posts_total",
        "messages posted through incoming webhooks"
    )
    .expect("metric registers once")
});

pub static HOOK_ERRORS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_hook_errors_total",
        "incoming webhook posts refused, by error name",
        &["error"]
    )
    .expect("metric registers once")
});

/// What a hook token says: where it posts and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookClaims {
    pub workspace: WorkspaceId,
    pub channel: ChannelId,
    pub user: UserId,
    /// Seconds since the epoch; makes each created hook distinct.
    pub issued_at: u64,
}

/// The token of a hook (the last segment of its URL).
pub fn sign_hook(signer: &TokenSigner, claims: &HookClaims) -> String {
    let json = json!({
        "w": claims.workspace,
        "c": claims.channel,
        "u": claims.user,
        "i": claims.issued_at,
    });
    let payload = URL_SAFE_NO_PAD.encode(json.to_string());
    let sig = signer.sign_payload(HOOK_PURPOSE, payload.as_bytes());
    format!("{payload}.{sig}")
}

/// The claims of a hook token this cluster signed; `None` for anything else.
pub fn verify_hook(signer: &TokenSigner, token: &str) -> Option<HookClaims> {
    if token.is_empty() || token.len() > MAX_HOOK_TOKEN {
        return None;
    }
    let (payload, sig) = token.split_once('.')?;
    signer
        .verify_payload(HOOK_PURPOSE, payload.as_bytes(), sig)
        .ok()?;
    let json: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let field = |k: &str| json.get(k).and_then(Value::as_str);
    Some(HookClaims {
        workspace: WorkspaceId::parse(field("w")?)?,
        channel: ChannelId::parse(field("c")?)?,
        user: UserId::parse(field("u")?)?,
        issued_at: json.get("i").and_then(Value::as_u64)?,
    })
}

/// Creates a hook posting into `channel` (an id or name, as `chat.postMessage` takes) as
/// `caller`, who must be a member of it; returns the hook's URL path (`/hooks/<token>`).
pub async fn create_hook(state: &AppState, caller: &Caller, channel: &str) -> ApiResult<String> {
    let params = Params::from_pairs(&[("channel", channel)]);
    Ok(create_for(state, caller, &params).await?.1)
}

async fn create_for(
    state: &AppState,
    caller: &Caller,
    params: &Params,
) -> ApiResult<(ChannelId, String)> {
    let visible = crate::methods::visible_channel(state, caller, params).await?;
    if !visible.is_member {
        return Err(ApiError::NotInChannel);
    }
    if visible.channel.is_archived {
        return Err(ApiError::IsArchived);
    }
    let claims = HookClaims {
        workspace: caller.claims.workspace.clone(),
        channel: visible.channel.id.clone(),
        user: caller.user.id.clone(),
        issued_at: Ts::now().0 / 1_000_000,
    };
    let path = format!("{HOOK_PATH_PREFIX}{}", sign_hook(&state.signer, &claims));
    Ok((visible.channel.id, path))
}

/// The `hooks.create` method: `channel`; answers `url` (absolute, from the server's base URL),
/// `path` (the same, from `/hooks/`) and `channel`.
pub(crate) async fn create(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    request: &RequestInfo,
) -> ApiResult {
    let (channel, path) = create_for(state, caller, params).await?;
    let url = format!("{}{}", request.base_url(state).trim_end_matches('/'), path);
    Ok(object(
        json!({ "url": url, "path": path, "channel": channel }),
    ))
}

/// A refused hook post: its status and error name (one of [`HOOK_ERRORS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HookError {
    code: &'static str,
    retry_after: Option<u64>,
}

impl HookError {
    const fn new(code: &'static str) -> HookError {
        HookError {
            code,
            retry_after: None,
        }
    }

    fn status(&self) -> StatusCode {
        HOOK_ERRORS
            .iter()
            .find(|(_, code, _)| *code == self.code)
            .and_then(|(status, _, _)| StatusCode::from_u16(*status).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<ApiError> for HookError {
    fn from(e: ApiError) -> HookError {
        match e {
            ApiError::ServiceUnavailable(_) => HookError::new("service_unavailable"),
            ApiError::InvalidArguments(_) => HookError::new("invalid_payload"),
            ApiError::RequestTooLarge { .. } => HookError::new("request_too_large"),
            ApiError::InvalidFormData | ApiError::InvalidJson => HookError::new("invalid_payload"),
            ApiError::ClientMsgIdConflict => HookError::new("client_msg_id_conflict"),
            _ => HookError::new("internal_error"),
        }
    }
}

/// `POST /hooks/<token>`.
pub(crate) async fn handle(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let token = uri
        .path()
        .strip_prefix(HOOK_PATH_PREFIX)
        .unwrap_or_default();
    match deliver(&state, token, &headers, body).await {
        Ok(()) => {
            HOOK_POSTS.inc();
            text_response(StatusCode::OK, "ok")
        }
        Err(err) => {
            HOOK_ERRORS_TOTAL.with_label_values(&[err.code]).inc();
            let status = err.status();
            if status.is_server_error() {
                tracing::warn!(error = err.code, "incoming webhook post failed");
            } else {
                tracing::debug!(error = err.code, "incoming webhook post refused");
            }
            let mut resp = text_response(status, err.code);
            if let Some(secs) = err.retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            resp
        }
    }
}

fn text_response(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// What a hook post asks for.
#[derive(Debug)]
struct HookPost {
    text: String,
    rich: Option<Box<RichContent>>,
    thread_ts: Option<Ts>,
    client_msg_id: Option<String>,
}

/// Reads a hook body: a JSON object, or a form whose `payload` holds one.
fn parse_body(body: &[u8], headers: &HeaderMap) -> Result<HookPost, HookError> {
    const INVALID: HookError = HookError::new("invalid_payload");
    let json_text: Vec<u8> = if body.trim_ascii_start().starts_with(b"{") {
        body.to_vec()
    } else {
        url::form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned().into_bytes())
            .ok_or(INVALID)?
    };
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&json_text) else {
        return Err(INVALID);
    };
    let string = |fields: &Map<String, Value>, key: &str| match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(INVALID),
    };
    let text = string(&fields, "text")?;
    // `blocks` and `attachments` are arrays in a JSON body; some senders give JSON text.
    let part = |key: &str| match fields.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(Part::Json(s)),
        Some(v) => Some(Part::Value(v)),
    };
    let composed = content::compose(Parts {
        text: text.as_deref().filter(|t| !t.is_empty()),
        blocks: part("blocks"),
        attachments: part("attachments"),
    })
    .map_err(|e| {
        HookError::new(match e {
            ContentError::NoText => "no_text",
            ContentError::InvalidBlocks => "invalid_blocks",
            ContentError::InvalidAttachments => "invalid_attachments",
            ContentError::TooManyAttachments => "too_many_attachments",
            ContentError::TooLong => "msg_too_long",
        })
    })?;
    let (text, rich) = (composed.text.into_owned(), composed.rich);
    let thread_ts = match string(&fields, "thread_ts")?.filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => Some(Ts::parse_slack(raw.trim()).ok_or(HookError::new("invalid_thread_ts"))?),
    };
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| INVALID)?.to_string()),
    };
    let client_msg_id = header_key
        .or(string(&fields, "client_msg_id")?)
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty());
    if client_msg_id
        .as_ref()
        .is_some_and(|id| id.len() > MAX_CLIENT_MSG_ID || id.chars().any(char::is_control))
    {
        return Err(INVALID);
    }
    Ok(HookPost {
        text,
        rich,
        thread_ts,
        client_msg_id,
    })
}

async fn deliver(
    state: &AppState,
    token: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), HookError> {
    let claims = verify_hook(&state.signer, token).ok_or(HookError::new("no_service"))?;
    if let Err(RetryAfter(secs)) = state.rate_limiter.check(claims.user.as_str(), Tier::Hook) {
        RATELIMITED.with_label_values(&["hooks"]).inc();
        return Err(HookError {
            code: "ratelimited",
            retry_after: Some(secs),
        });
    }
    let body = read_body(headers, body, state.max_body_bytes).await?;
    let post = parse_body(&body, headers)?;
    let user = state
        .store
        .user(&claims.user)
        .await
        .map_err(ApiError::from)?
        .filter(|u| u.workspace == claims.workspace && !u.deleted)
        .ok_or(HookError::new("no_service"))?;
    let channel = state
        .store
        .channel(&claims.channel)
        .await
        .map_err(ApiError::from)?
        .filter(|c| c.workspace == claims.workspace)
        .ok_or(HookError::new("channel_not_found"))?;
    if channel.is_archived {
        return Err(HookError::new("channel_is_archived"));
    }
    if !state
        .store
        .is_member(&channel.id, &user.id)
        .await
        .map_err(ApiError::from)?
    {
        return Err(HookError::new("action_prohibited"));
    }
    if let Some(parent) = post.thread_ts {
        match state
            .store
            .message_view(&channel.workspace, &channel.id, parent)
            .await
            .map_err(ApiError::from)?
        {
            Some(v) if v.takes_replies() => {}
            _ => return Err(HookError::new("thread_not_found")),
        }
    }
    let new = NewMessage {
        workspace: channel.workspace.clone(),
        channel: channel.id.clone(),
        user: user.id.clone(),
        text: post.text.clone(),
        client_msg_id: post.client_msg_id,
        thread_ts: post.thread_ts,
        kind: MessageKind::Posted,
        broadcast: false,
        // A hook posts as its creator, a bot's messages marked as such.
        bot: user.is_bot,
        rich: post.rich,
    };
    let (msg, duplicate) = state.admin.post(new).await.map_err(ApiError::from)?;
    if msg.channel != channel.id || msg.workspace != channel.workspace {
        tracing::warn!(channel = %channel.id, answered = %msg.channel, "hook post answered with another channel's message");
        return Err(HookError::new("internal_error"));
    }
    if duplicate {
        crate::methods::check_repeat(
            crate::methods::Via::Hook,
            &msg,
            &user.id,
            &post.text,
            post.thread_ts,
        )?;
    } else {
        crate::methods::members::tell_reopened(state, &channel, &msg).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::content::MAX_TEXT_CHARS;

    fn claims() -> HookClaims {
        HookClaims {
            workspace: WorkspaceId::from("TDEMO"),
            channel: ChannelId::from("CGENERAL"),
            user: UserId::from("UALICE"),
            issued_at: 7,
        }
    }

    #[test]
    fn hook_tokens_round_trip_and_refuse_forgeries() {
        let s = TokenSigner::new(b"secret");
        let t = sign_hook(&s, &claims());
        assert_eq!(verify_hook(&s, &t), Some(claims()));
        assert_eq!(verify_hook(&TokenSigner::new(b"other"), &t), None);
        // Another channel under the same signature.
        let (_, sig) = t.split_once('.').unwrap();
        let mut other = claims();
        other.channel = ChannelId::from("COTHER");
        let (payload, _) = sign_hook(&TokenSigner::new(b"x"), &other)
            .split_once('.')
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .unwrap();
        assert_eq!(verify_hook(&s, &format!("{payload}.{sig}")), None);
        for garbage in ["", ".", "abc", "a.b", &"x".repeat(5000)] {
            assert_eq!(verify_hook(&s, garbage), None, "{garbage}");
        }
        // A bearer token is no hook token, and a hook token no bearer token.
        let bearer = s.issue(&shared::auth::Claims {
            workspace: WorkspaceId::from("TDEMO"),
            user: UserId::from("UALICE"),
            admin: false,
            bot: false,
            issued_at: 1,
            service: false,
        });
        assert_eq!(verify_hook(&s, bearer.trim_start_matches("xoxp-")), None);
        assert!(s.verify(&format!("xoxp-{t}")).is_err());
    }

    #[test]
    fn blocks_and_attachments_give_a_hook_post_its_text() {
        let h = HeaderMap::new();
        let text = |body: &str| parse_body(body.as_bytes(), &h).unwrap().text;
        // What Prometheus Alertmanager's Slack receiver sends: attachments, no text.
        assert_eq!(
            text(
                r##"{"channel":"#ops","username":"alertmanager","attachments":[{
                "color":"danger","fallback":"[FIRING:1] DiskFull",
                "title":"[FIRING:1] DiskFull","title_link":"http://am/#/alerts",
                "text":"/var is 97% full","footer":"am-1"}]}"##
            ),
            "<http://am/#/alerts|[FIRING:1] DiskFull>\n/var is 97% full\nam-1"
        );
        assert_eq!(
            text(
                r#"{"blocks":[{"type":"header","text":{"type":"plain_text","text":"Deployed"}}]}"#
            ),
            "Deployed"
        );
        assert_eq!(
            text(
                r#"{"blocks":"[{\"type\":\"header\",\"text\":{\"type\":\"plain_text\",\"text\":\"As JSON text\"}}]"}"#
            ),
            "As JSON text"
        );
        assert_eq!(
            text(
                r#"{"text":"Build 7 failed","attachments":[{"fields":[{"title":"branch","value":"main"}]}]}"#
            ),
            "Build 7 failed\nbranch: main"
        );
        assert_eq!(
            text(r#"{"text":"","attachments":[{"fallback":"only this"}]}"#),
            "only this"
        );
    }

    #[test]
    fn bodies_are_json_or_form_payloads() {
        let h = HeaderMap::new();
        let p = parse_body(br#" {"text":"hi","thread_ts":"1700000000.000100"}"#, &h).unwrap();
        assert_eq!(p.text, "hi");
        assert!(p.thread_ts.is_some());
        let form = format!(
            "payload={}",
            url::form_urlencoded::byte_serialize(br#"{"text":"from a form","client_msg_id":"k1"}"#)
                .collect::<String>()
        );
        let p = parse_body(form.as_bytes(), &h).unwrap();
        assert_eq!(p.text, "from a form");
        assert_eq!(p.client_msg_id.as_deref(), Some("k1"));
        let mut with_key = HeaderMap::new();
        with_key.insert("idempotency-key", HeaderValue::from_static("k2"));
        let p = parse_body(br#"{"text":"x","client_msg_id":"k1"}"#, &with_key).unwrap();
        assert_eq!(p.client_msg_id.as_deref(), Some("k2"), "the header wins");

        let code = |body: &[u8]| parse_body(body, &h).unwrap_err().code;
        assert_eq!(code(b""), "invalid_payload");
        assert_eq!(code(b"{\"text\":"), "invalid_payload");
        assert_eq!(code(b"[1]"), "invalid_payload");
        assert_eq!(code(b"payload=%5B1%5D"), "invalid_payload");
        assert_eq!(code(b"text=hi"), "invalid_payload");
        assert_eq!(code(br#"{"text":5}"#), "invalid_payload");
        assert_eq!(code(br#"{"text":""}"#), "no_text");
        assert_eq!(code(br#"{"username":"bot"}"#), "no_text");
        assert_eq!(
            code(br#"{"text":"x","thread_ts":"nope"}"#),
            "invalid_thread_ts"
        );
        let long = format!("{{\"text\":\"{}\"}}", "a".repeat(MAX_TEXT_CHARS + 1));
        assert_eq!(code(long.as_bytes()), "msg_too_long");
        assert_eq!(code(br#"{"blocks":{"type":"section"}}"#), "invalid_blocks");
        assert_eq!(code(br#"{"blocks":[{"type":"divider"}]}"#), "no_text");
        assert_eq!(code(br#"{"attachments":[5]}"#), "invalid_attachments");
        assert_eq!(code(br#"{"attachments":"[5]"}"#), "invalid_attachments");
        assert_eq!(code(br#"{"attachments":[{"color":"good"}]}"#), "no_text");
        let many = format!(r#"{{"attachments":[{}{{}}]}}"#, "{},".repeat(100));
        assert_eq!(code(many.as_bytes()), "too_many_attachments");
        let long_attachment = format!(
            r#"{{"text":"{}","attachments":[{{"text":"more"}}]}}"#,
            "a".repeat(MAX_TEXT_CHARS)
        );
        assert_eq!(code(long_attachment.as_bytes()), "msg_too_long");
        let id = format!(
            "{{\"text\":\"x\",\"client_msg_id\":\"{}\"}}",
            "k".repeat(200)
        );
        assert_eq!(code(id.as_bytes()), "invalid_payload");
    }

    #[test]
    fn every_error_has_a_status() {
        for (status, code, _) in HOOK_ERRORS {
            assert_eq!(HookError::new(code).status().as_u16(), *status, "{code}");
        }
    }
}
