//! The HTTP layer: the router, reading a call's parameters and token, the error type with
//! Slack's error names, and the answer envelope.
//!
//! A call is `GET|POST /api/<method>`. Its parameters come from the query string and from the
//! body (`application/json` or `application/x-www-form-urlencoded`; the body wins where both
//! name a key). The token comes from `Authorization: Bearer …` or a `token` parameter.
//! Every answer is JSON: `{"ok":true,...}` or `{"ok":false,"error":"<name>"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use shared::auth::{Claims, TokenError, TokenSigner};
use shared::store::{SharedStore, StorageError, User};
use shared::telemetry::Health;
use tracing::Instrument;

use crate::admin_link::{AdminLink, PostError};
use crate::methods;
use crate::metrics as m;
use crate::ratelimit::{RateLimiter, RetryAfter};

/// A JSON object: the fields of an answer besides `ok`.
pub type Object = Map<String, Value>;
pub type ApiResult<T = Object> = Result<T, ApiError>;

/// `webapp.max_file_bytes` unless [`crate::run`] sets it from the config.
pub const DEFAULT_MAX_FILE_BYTES: usize = 64 * 1024 * 1024;

/// A call's failure, as Slack names it. The name is part of the API: never rename or reuse one.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no token was given")]
    NotAuthed,
    #[error("the token is invalid or its user is gone")]
    InvalidAuth,
    #[error("the token's user was deactivated")]
    AccountInactive,
    /// An error Slack names with nothing more to say (custom emoji's `error_name_taken`,
    /// `emoji_not_found`, bookmarks' `invalid_link`, …).
    #[error("{0}")]
    Named(&'static str),
    /// A request URL did not answer the `url_verification` challenge; why, as `detail`.
    #[error("the request URL did not pass verification: {0}")]
    UrlVerificationFailed(String),
    #[error("this method needs an admin token of the workspace")]
    NotAllowedTokenType,
    #[error("no such channel (or not visible to the caller)")]
    ChannelNotFound,
    #[error("no such user (or not in the caller's workspace)")]
    UserNotFound,
    #[error("the caller is not a member of the channel")]
    NotInChannel,
    #[error("the user named is not a member of the channel")]
    UserNotInChannel,
    #[error("the channel is archived")]
    IsArchived,
    #[error("the message has no text")]
    NoText,
    #[error("blocks must be a JSON array of block objects")]
    InvalidBlocks,
    #[error("attachments must be a JSON array of attachment objects")]
    InvalidAttachments,
    #[error("not an email address")]
    InvalidEmail,
    #[error("another user of the workspace has this email")]
    EmailTaken,
    #[error("no user of the workspace has this email")]
    UsersNotFound,
    #[error("no bot of the workspace has this id")]
    BotNotFound,
    #[error("a message has at most 100 attachments")]
    TooManyAttachments,
    #[error("the message is already pinned to the channel")]
    AlreadyPinned,
    #[error("the message is not pinned to the channel")]
    NoPin,
    #[error("metadata must be a JSON object")]
    InvalidMetadataFormat,
    #[error("metadata must hold exactly event_type (a string of 1 to 255 characters) and event_payload (an object)")]
    InvalidMetadataSchema,
    #[error("metadata is larger than {max} bytes")]
    MetadataTooLarge { max: usize },
    #[error("only an app (a bot token) posts or updates message metadata")]
    MetadataMustBeSentFromApp,
    #[error("the message text is longer than {max} characters")]
    MsgTooLong { max: usize },
    #[error("the name is taken")]
    NameTaken,
    #[error("a name is required")]
    InvalidNameRequired,
    #[error("names may only hold lower-case letters, digits, '-' and '_'")]
    InvalidNameSpecials,
    #[error("the name is longer than {max} characters")]
    InvalidNameMaxlength { max: usize },
    #[error("this method does not apply to this kind of channel")]
    MethodNotSupportedForChannelType,
    #[error("members cannot leave #general")]
    CantLeaveGeneral,
    #[error("the cursor is not one this server handed out")]
    InvalidCursor,
    #[error("limit must be a non-negative integer")]
    InvalidLimit,
    #[error("types must be a list of public_channel, private_channel, mpim, im")]
    InvalidTypes,
    #[error("oldest is not a timestamp")]
    InvalidTsOldest,
    #[error("latest is not a timestamp")]
    InvalidTsLatest,
    #[error("thread_ts is not a timestamp")]
    InvalidThreadTs,
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error("the body is not valid JSON (or not a JSON object)")]
    InvalidJson,
    #[error("the body is not valid form data")]
    InvalidFormData,
    #[error("the body is larger than {max} bytes")]
    RequestTooLarge { max: usize },
    #[error("no such method")]
    UnknownMethod,
    #[error("this path does not take this HTTP method")]
    MethodNotAllowed,
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("ts names no message of the channel")]
    InvalidTimestamp,
    #[error("the channel is already archived")]
    AlreadyArchived,
    #[error("the channel is not archived")]
    NotArchived,
    #[error("#general cannot be archived")]
    CantArchiveGeneral,
    #[error("the value is longer than {max} characters")]
    TooLong { max: usize },
    #[error("no such workspace")]
    TeamNotFound,
    #[error("the token is not for this workspace")]
    TeamAccessNotGranted,
    #[error("no message with that ts in the channel")]
    MessageNotFound,
    #[error("only the author can edit the message")]
    CantUpdateMessage,
    #[error("only the author or an admin can delete the message")]
    CantDeleteMessage,
    #[error("no thread with that ts in the channel")]
    ThreadNotFound,
    #[error("the caller already added this reaction")]
    AlreadyReacted,
    #[error("the caller has not added this reaction")]
    NoReaction,
    #[error("invalid reaction name")]
    InvalidReactionName,
    #[error("no message was named")]
    NoItemSpecified,
    #[error("no file with that id that the caller can see")]
    FileNotFound,
    #[error("only the file's uploader or a workspace admin deletes it")]
    CantDeleteFile,
    #[error("a file is at most {max} bytes")]
    FileTooLarge { max: u64 },
    #[error("post_at must be a Unix time in seconds")]
    InvalidTime,
    #[error("post_at is not in the future")]
    TimeInPast,
    #[error("post_at is more than 120 days ahead")]
    TimeTooFar,
    #[error(
        "too many messages are scheduled (30 within 5 minutes in a channel, 10000 in a workspace)"
    )]
    RestrictedTooMany,
    #[error("no message the caller scheduled in the channel has this id, or it is due within 60 seconds")]
    InvalidScheduledMessageId,
    #[error("the {0} argument is required")]
    MissingArgument(&'static str),
    #[error("another user group of the workspace has this name")]
    NameAlreadyExists,
    #[error("another user group, a user or a channel of the workspace has this handle")]
    HandleAlreadyExists,
    #[error("no user group of the workspace has this id")]
    NoSuchSubteam,
    #[error("users names no one (usergroups.disable empties a group's mentions instead)")]
    NoUsersProvided,
    #[error("users must name people of the workspace (not bots)")]
    InvalidUsers,
    /// The `client_msg_id` (or a hook's `Idempotency-Key`) already names a message of the
    /// channel that is not this request's: another user's, or the same user's with another
    /// text or thread. Answering that message as if it were this one would drop this text.
    #[error("client_msg_id already names another message of the channel")]
    ClientMsgIdConflict,
    #[error("a member cannot remove themselves (conversations.leave does)")]
    CantKickSelf,
    #[error("no one can be removed from #general")]
    CantKickFromGeneral,
    #[error("the caller may not do this here")]
    RestrictedAction,
    /// `conversations.invite` invited no one: each listed user, with why (`already_in_channel`,
    /// `cant_invite_self`). The first reason is the error; all are listed in `errors`.
    #[error("no user could be invited")]
    NotInvited(Vec<UserError>),
    #[error("a dependency is unavailable: {0}")]
    ServiceUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The Slack error name sent to the client.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotAuthed => "not_authed",
            ApiError::InvalidAuth => "invalid_auth",
            ApiError::AccountInactive => "account_inactive",
            ApiError::Named(code) => code,
            ApiError::UrlVerificationFailed(_) => "url_verification_failed",
            ApiError::NotAllowedTokenType => "not_allowed_token_type",
            ApiError::ChannelNotFound => "channel_not_found",
            ApiError::UserNotFound => "user_not_found",
            ApiError::NotInChannel => "not_in_channel",
            ApiError::UserNotInChannel => "user_not_in_channel",
            ApiError::IsArchived => "is_archived",
            ApiError::NoText => "no_text",
            ApiError::InvalidBlocks => "invalid_blocks",
            ApiError::InvalidAttachments => "invalid_attachments",
            ApiError::InvalidEmail => "invalid_email",
            ApiError::EmailTaken => "email_taken",
            ApiError::UsersNotFound => "users_not_found",
            ApiError::BotNotFound => "bot_not_found",
            ApiError::TooManyAttachments => "too_many_attachments",
            ApiError::AlreadyPinned => "already_pinned",
            ApiError::NoPin => "no_pin",
            ApiError::InvalidMetadataFormat => "invalid_metadata_format",
            ApiError::InvalidMetadataSchema => "invalid_metadata_schema",
            ApiError::MetadataTooLarge { .. } => "metadata_too_large",
            ApiError::MetadataMustBeSentFromApp => "metadata_must_be_sent_from_app",
            ApiError::MsgTooLong { .. } => "msg_too_long",
            ApiError::NameTaken => "name_taken",
            ApiError::InvalidNameRequired => "invalid_name_required",
            ApiError::InvalidNameSpecials => "invalid_name_specials",
            ApiError::InvalidNameMaxlength { .. } => "invalid_name_maxlength",
            ApiError::MethodNotSupportedForChannelType => "method_not_supported_for_channel_type",
            ApiError::CantLeaveGeneral => "cant_leave_general",
            ApiError::InvalidCursor => "invalid_cursor",
            ApiError::InvalidLimit => "invalid_limit",
            ApiError::InvalidTypes => "invalid_types",
            ApiError::InvalidTsOldest => "invalid_ts_oldest",
            ApiError::InvalidTsLatest => "invalid_ts_latest",
            ApiError::InvalidThreadTs => "invalid_thread_ts",
            ApiError::InvalidArguments(_) => "invalid_arguments",
            ApiError::InvalidJson => "invalid_json",
            ApiError::InvalidFormData => "invalid_form_data",
            ApiError::RequestTooLarge { .. } => "request_too_large",
            ApiError::UnknownMethod => "unknown_method",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::RateLimited { .. } => "ratelimited",
            ApiError::InvalidTimestamp => "invalid_timestamp",
            ApiError::AlreadyArchived => "already_archived",
            ApiError::NotArchived => "not_archived",
            ApiError::CantArchiveGeneral => "cant_archive_general",
            ApiError::TooLong { .. } => "too_long",
            ApiError::TeamNotFound => "team_not_found",
            ApiError::TeamAccessNotGranted => "team_access_not_granted",
            ApiError::MessageNotFound => "message_not_found",
            ApiError::CantUpdateMessage => "cant_update_message",
            ApiError::CantDeleteMessage => "cant_delete_message",
            ApiError::ThreadNotFound => "thread_not_found",
            ApiError::AlreadyReacted => "already_reacted",
            ApiError::NoReaction => "no_reaction",
            ApiError::InvalidReactionName => "invalid_name",
            ApiError::NoItemSpecified => "no_item_specified",
            ApiError::FileNotFound => "file_not_found",
            ApiError::CantDeleteFile => "cant_delete_file",
            ApiError::FileTooLarge { .. } => "file_too_large",
            ApiError::InvalidTime => "invalid_time",
            ApiError::TimeInPast => "time_in_past",
            ApiError::TimeTooFar => "time_too_far",
            ApiError::RestrictedTooMany => "restricted_too_many",
            ApiError::InvalidScheduledMessageId => "invalid_scheduled_message_id",
            ApiError::MissingArgument(_) => "missing_argument",
            ApiError::NameAlreadyExists => "name_already_exists",
            ApiError::HandleAlreadyExists => "handle_already_exists",
            ApiError::NoSuchSubteam => "no_such_subteam",
            ApiError::NoUsersProvided => "no_users_provided",
            ApiError::InvalidUsers => "invalid_users",
            ApiError::ClientMsgIdConflict => "client_msg_id_conflict",
            ApiError::CantKickSelf => "cant_kick_self",
            ApiError::CantKickFromGeneral => "cant_kick_from_general",
            ApiError::RestrictedAction => "restricted_action",
            ApiError::NotInvited(errors) => errors.first().map_or("invalid_arguments", |e| e.error),
            ApiError::ServiceUnavailable(_) => "service_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The HTTP status. Like Slack, logical errors of a well-formed call answer 200; a body
    /// that cannot be read, an unknown method and throttling get 4xx; our own failures 5xx.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson | ApiError::InvalidFormData => StatusCode::BAD_REQUEST,
            ApiError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnknownMethod => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        }
    }
}

/// One user's failure in a call that acts on several users, as Slack lists it in `errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserError {
    pub user: shared::ids::UserId,
    /// A Slack error name.
    pub error: &'static str,
}

impl UserError {
    pub fn json(&self) -> Value {
        json!({ "user": self.user, "ok": false, "error": self.error })
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Missing => ApiError::NotAuthed,
            TokenError::Malformed | TokenError::BadSignature => ApiError::InvalidAuth,
        }
    }
}

impl From<PostError> for ApiError {
    fn from(e: PostError) -> Self {
        use shared::protocol::MeshError;
        match e {
            PostError::Mesh(MeshError::BadRequest(reason)) => ApiError::InvalidArguments(reason),
            PostError::Mesh(MeshError::Store(reason)) => ApiError::Internal(reason),
            PostError::UnexpectedAnswer(what) => ApiError::Internal(what),
            other => ApiError::ServiceUnavailable(other.to_string()),
        }
    }
}

/// How long a gateway's reachability is trusted before it is tried again.
pub const GATEWAY_PROBE_TTL: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a gateway has to accept a connection.
const GATEWAY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a plain (`ws://`) gateway has to answer `/health` once connected; one that does
/// not answer in time counts as up (it accepted the connection).
const GATEWAY_HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(300);

/// Whether a gateway that accepted `stream` says it is not taking sessions: `/health`
/// answering 503 (stopping, or without its admin link). Anything else (200, a 404 from a
/// proxy that forwards only `/rtm`, no answer in time) counts as up.
async fn answers_unavailable(mut stream: tokio::net::TcpStream, host: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let request = format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        // The status line is in the first bytes: `HTTP/1.1 503 …`.
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout(GATEWAY_HEALTH_TIMEOUT, ask).await {
        Ok(Ok(head)) => head.starts_with(b"HTTP/1.") && &head[9..12] == b"503",
        _ => false,
    }
}

/// Everything a handler needs. Plain data: tests build it with a detached [`AdminLink`].
#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub signer: TokenSigner,
    pub admin: AdminLink,
    /// WebSocket URLs that `rtm.connect` hands out, round-robin.
    pub gateway_urls: Arc<Vec<String>>,
    /// Position of the round-robin over `gateway_urls`.
    pub next_gateway: Arc<AtomicUsize>,
    /// Whether each gateway accepted a connection when last tried, and when (see
    /// [`AppState::gateway_for_app`]).
    pub gateway_probes: Arc<std::sync::Mutex<HashMap<String, (Instant, bool)>>>,
    /// Largest request body read; larger ones are refused with `request_too_large`.
    pub max_body_bytes: usize,
    /// Largest file taken (`webapp.max_file_bytes`).
    pub max_file_bytes: usize,
    /// The listener's own URL: the base of links when neither `webapp.public_url` nor the
    /// request's `Host` gives one.
    pub base_url: String,
    /// `webapp.public_url`, ending in `/`, when set: the base of every link in answers.
    pub public_url: Option<String>,
    /// The search indexes; `None` where this node does not serve search.
    pub search: Option<Arc<crate::search::Search>>,
    /// The ring as this node last learned it from the admin server.
    pub ring: Option<tokio::sync::watch::Receiver<Arc<shared::ring::Ring>>>,
    /// Per-user rate limits (off unless set; [`crate::run`] sets them from the config).
    pub rate_limiter: Arc<RateLimiter>,
    /// The tokens revoked with `auth.revoke`, as this node knows them.
    pub revoked: Arc<crate::revocation::RevokedTokens>,
    /// `webapp.private_request_urls`: whether apps' request URLs may reach non-public
    /// addresses (off unless [`crate::run`] sets it from the config).
    pub private_request_urls: bool,
}

impl AppState {
    pub fn new(
        store: SharedStore,
        signer: TokenSigner,
        admin: AdminLink,
        gateway_urls: Vec<String>,
        max_body_bytes: usize,
        local_addr: SocketAddr,
    ) -> AppState {
        AppState {
            store,
            signer,
            admin,
            gateway_urls: Arc::new(gateway_urls),
            next_gateway: Arc::new(AtomicUsize::new(0)),
            gateway_probes: Arc::default(),
            max_body_bytes,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            base_url: format!("http://{local_addr}/"),
            public_url: None,
            search: None,
            ring: None,
            rate_limiter: Arc::new(RateLimiter::disabled()),
            revoked: Arc::default(),
            private_request_urls: false,
        }
    }

    /// The next gateway URL, round-robin; `None` when none is configured.
    pub fn next_gateway_url(&self) -> Option<&str> {
        if self.gateway_urls.is_empty() {
            return None;
        }
        let i = self.next_gateway.fetch_add(1, Ordering::Relaxed) % self.gateway_urls.len();
        Some(&self.gateway_urls[i])
    }

    /// The gateway for `app`'s Socket Mode connections: the first in the app's own order of
    /// the gateways ([`shared::ring::rendezvous`], alike in every Web API process) that accepts
    /// a connection. All of an app's connections then meet on one gateway, which gives each
    /// event to one of them. When the app's gateway is down its connections move to the next
    /// in its order, and back once it is up; when none answers (or they cannot be reached
    /// from here) the first is given. `None` when no gateway is configured.
    pub async fn gateway_for_app(&self, app: &str) -> Option<String> {
        let ranked = shared::ring::rendezvous(&self.gateway_urls, app.as_bytes());
        let first = ranked.first()?.to_string();
        for url in ranked {
            if self.gateway_reachable(url).await {
                return Some(url.to_string());
            }
        }
        Some(first)
    }

    /// Whether `url`'s host accepts a TCP connection and, for a plain `ws://` gateway, does not
    /// answer `/health` with 503 (a stopping gateway refuses new sessions while it drains),
    /// remembered for [`GATEWAY_PROBE_TTL`]. A URL this cannot judge counts as reachable.
    async fn gateway_reachable(&self, url: &str) -> bool {
        let now = Instant::now();
        if let Some((at, up)) = self.gateway_probes.lock().expect("probes").get(url) {
            if now.duration_since(*at) < GATEWAY_PROBE_TTL {
                return *up;
            }
        }
        let Ok(parsed) = url::Url::parse(url) else {
            return true;
        };
        let Some(port) = parsed.port_or_known_default() else {
            return true;
        };
        let connect = async {
            match parsed.host() {
                Some(url::Host::Domain(d)) => tokio::net::TcpStream::connect((d, port)).await,
                Some(url::Host::Ipv4(a)) => tokio::net::TcpStream::connect((a, port)).await,
                Some(url::Host::Ipv6(a)) => tokio::net::TcpStream::connect((a, port)).await,
                None => Err(std::io::ErrorKind::InvalidInput.into()),
            }
        };
        let up = match tokio::time::timeout(GATEWAY_PROBE_TIMEOUT, connect).await {
            Ok(Ok(stream)) if parsed.scheme() == "ws" => {
                let host = parsed.host_str().unwrap_or_default();
                let draining = answers_unavailable(stream, host).await;
                if draining {
                    tracing::warn!(
                        gateway = url,
                        "gateway is not taking sessions (/health 503); Socket Mode apps go to their next"
                    );
                }
                !draining
            }
            Ok(Ok(_)) => true,
            _ => {
                tracing::warn!(
                    gateway = url,
                    "gateway refused a connection; Socket Mode apps go to their next"
                );
                false
            }
        };
        if !up {
            crate::metrics::GATEWAY_UNREACHABLE.inc();
        }
        self.gateway_probes
            .lock()
            .expect("probes")
            .insert(url.to_string(), (now, up));
        up
    }
}

/// The Web API router plus incoming webhooks (`/hooks/<token>`), the OpenAPI description
/// (`/api/openapi.json`, `/openapi.json`), `/metrics` and `/health`.
pub fn router(state: AppState, health: Health) -> Router {
    Router::new()
        .route("/api/openapi.json", get(crate::openapi::serve))
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/hooks/{token}", post(crate::hooks::handle))
        .route("/upload/v1/{ticket}", post(crate::methods::files::upload))
        .route("/files/{id}/{name}", get(crate::methods::files::download))
        .route("/api/{method}", any(handle))
        .fallback(|| async { refused(ApiError::UnknownMethod) })
        .with_state(state)
        .merge(shared::telemetry::ops_router("webapp", health))
        // Last, so it covers every route above: `GET /hooks/<token>`, `POST /metrics`, ...
        .method_not_allowed_fallback(|| async { refused(ApiError::MethodNotAllowed) })
}

/// The answer to a request no method serves (an unknown path, or a known one with the wrong
/// HTTP method), counted like a refused call under the method label `unknown`.
fn refused(err: ApiError) -> Response {
    m::REQUESTS.with_label_values(&["unknown"]).inc();
    m::ERRORS.with_label_values(&["unknown", err.code()]).inc();
    tracing::debug!(error = %err, "request to no method refused");
    error_response(&err)
}

/// A call's parameters, as strings (JSON scalars are rendered; arrays and objects are kept
/// as JSON text, the way Slack's form-encoded `blocks` arrive).
#[derive(Debug, Default, Clone)]
pub struct Params {
    values: HashMap<String, String>,
}

impl Params {
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Params {
        Params {
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Every parameter, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The parameter, or `None` when absent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The parameter, or `None` when absent or empty.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// Slack's booleans: `true`/`1` are true, anything else (or absence) is `default`.
    pub fn flag(&self, key: &str, default: bool) -> bool {
        match self.non_empty(key) {
            Some(v) => matches!(v.trim(), "true" | "1" | "TRUE" | "True"),
            None => default,
        }
    }

    /// `limit`: absent, empty or 0 means `default`; at most `max`.
    pub fn limit(&self, default: u32, max: u32) -> ApiResult<u32> {
        match self.non_empty("limit") {
            None => Ok(default),
            Some(raw) => {
                let n: u64 = raw.trim().parse().map_err(|_| ApiError::InvalidLimit)?;
                Ok(if n == 0 {
                    default
                } else {
                    n.min(u64::from(max)) as u32
                })
            }
        }
    }

    fn merge_query(&mut self, query: &str) {
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            self.values.insert(k.into_owned(), v.into_owned());
        }
    }

    fn merge_form(&mut self, body: &[u8]) -> ApiResult<()> {
        let text = std::str::from_utf8(body).map_err(|_| ApiError::InvalidFormData)?;
        for (k, v) in url::form_urlencoded::parse(text.as_bytes()) {
            self.values.insert(k.into_owned(), v.into_owned());
        }
        Ok(())
    }

    fn merge_json(&mut self, body: &[u8]) -> ApiResult<()> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let value: Value = serde_json::from_slice(body).map_err(|_| ApiError::InvalidJson)?;
        let Value::Object(fields) = value else {
            return Err(ApiError::InvalidJson);
        };
        for (k, v) in fields {
            let v = match v {
                Value::Null => continue,
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other @ (Value::Array(_) | Value::Object(_)) => other.to_string(),
            };
            self.values.insert(k, v);
        }
        Ok(())
    }
}

/// Who is calling: a verified token whose user exists in the token's workspace.
#[derive(Debug, Clone)]
pub struct Caller {
    pub claims: Claims,
    pub user: User,
    /// The token as presented, for `rtm.connect` to hand on to the gateway.
    pub token: String,
}

impl Caller {
    /// A bot's token, or a bot user's: its messages carry `bot_id`.
    pub fn is_bot(&self) -> bool {
        self.claims.bot || self.user.is_bot
    }
}

/// Verifies `token` and checks its user still exists in the claimed workspace.
pub async fn authenticate(state: &AppState, token: Option<&str>) -> ApiResult<Caller> {
    let (claims, token) = verify_user_token(state, token)?;
    let user = state.store.user(&claims.user).await?;
    caller(claims, user, token)
}

/// The first half of [`authenticate`], which reads nothing: the trimmed token and its claims,
/// refusing a missing token, a bad one and a service token.
pub fn verify_user_token<'t>(
    state: &AppState,
    token: Option<&'t str>,
) -> ApiResult<(Claims, &'t str)> {
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(ApiError::NotAuthed);
    };
    let claims = state.signer.verify(token)?;
    if claims.service {
        // Service tokens speak for no user: they may call `internal.*` and nothing else.
        return Err(ApiError::NotAllowedTokenType);
    }
    if state.revoked.contains(&claims) {
        return Err(ApiError::Named("token_revoked"));
    }
    Ok((claims, token))
}

/// The second half of [`authenticate`]: the caller, given the stored user that `claims` names
/// (`None` when there is none), which must be in the token's workspace.
pub fn caller(claims: Claims, user: Option<User>, token: &str) -> ApiResult<Caller> {
    let user = user.ok_or(ApiError::InvalidAuth)?;
    if user.workspace != claims.workspace {
        return Err(ApiError::InvalidAuth);
    }
    // A deactivated user's tokens (its bot tokens too) are refused, as Slack refuses them.
    if user.deleted {
        return Err(ApiError::AccountInactive);
    }
    Ok(Caller {
        claims,
        user,
        token: token.to_string(),
    })
}

/// Verifies a service token (for `internal.*` methods); user tokens are refused.
pub fn authenticate_service(state: &AppState, token: Option<&str>) -> ApiResult<Claims> {
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(ApiError::NotAuthed);
    };
    let claims = state.signer.verify(token)?;
    if !claims.service {
        return Err(ApiError::NotAllowedTokenType);
    }
    Ok(claims)
}

/// The `cursor` of a paginated call: base64 of `<kind>:<value>`, like Slack's.
pub fn encode_cursor(kind: &str, value: &str) -> String {
    STANDARD.encode(format!("{kind}:{value}"))
}

/// Decodes a cursor made by [`encode_cursor`] with the same `kind`; `None` when absent.
pub fn decode_cursor(params: &Params, kind: &str) -> ApiResult<Option<String>> {
    let Some(raw) = params.non_empty("cursor") else {
        return Ok(None);
    };
    let bytes = STANDARD
        .decode(raw.trim())
        .map_err(|_| ApiError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| ApiError::InvalidCursor)?;
    let value = text
        .strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix(':'))
        .ok_or(ApiError::InvalidCursor)?;
    Ok(Some(value.to_string()))
}

async fn handle(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    // The method name as sent, not percent-decoded: every served name is plain ASCII, and
    // reading it from the path cannot fail the way a `Path` extractor can.
    let method = uri.path().strip_prefix("/api/").unwrap_or_default();
    let label = methods::canonical_name(method).unwrap_or("unknown");
    m::REQUESTS.with_label_values(&[label]).inc();
    let span = tracing::debug_span!("api_call", method = label);
    let result = call(&state, method, &uri, &headers, body)
        .instrument(span)
        .await;
    let response = match result {
        Ok(fields) => ok_response(fields),
        Err(err) => {
            m::ERRORS.with_label_values(&[label, err.code()]).inc();
            match &err {
                ApiError::Internal(_) | ApiError::ServiceUnavailable(_) => {
                    tracing::warn!(method = label, error = %err, "web api call failed")
                }
                _ => tracing::debug!(method = label, error = %err, "web api call refused"),
            }
            error_response(&err)
        }
    };
    m::REQUEST_DURATION
        .with_label_values(&[label])
        .observe(start.elapsed().as_secs_f64());
    response
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let Some(name) = methods::canonical_name(method) else {
        return Err(ApiError::UnknownMethod);
    };
    let body = read_body(headers, body, state.max_body_bytes).await?;
    let mut params = Params::default();
    if let Some(q) = uri.query() {
        params.merge_query(q);
    }
    if !body.is_empty() {
        match body_kind(headers) {
            BodyKind::Json => params.merge_json(&body)?,
            BodyKind::Form => params.merge_form(&body)?,
            BodyKind::Unsupported => return Err(ApiError::InvalidFormData),
        }
    }
    // An unreadable `Authorization` header fails only the methods that need a token.
    let token = match headers.get(header::AUTHORIZATION) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(shared::auth::bearer)
            .map(Some)
            .ok_or(ApiError::InvalidAuth),
        None => Ok(params.get("token")),
    };
    check_rate_limit(state, name, &token)?;
    let request = RequestInfo {
        host: request_host(headers, uri),
    };
    methods::dispatch(state, name, &params, token, &request).await
}

/// What a method may need of the HTTP request besides its parameters and token.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The host (and port) the client addressed, from `Host` (or the request line's
    /// authority), when it is a plain `host[:port]`: without `webapp.public_url`, links in
    /// answers point where the client reached this server.
    pub host: Option<String>,
}

impl RequestInfo {
    /// The base of links in answers, ending in `/`: `webapp.public_url` when set (the
    /// address behind a proxy), else the Web API as the client addressed it
    /// (`http://<host>/`), else [`AppState::base_url`] (the listener's address).
    pub fn base_url(&self, state: &AppState) -> String {
        match (&state.public_url, &self.host) {
            (Some(public), _) => public.clone(),
            (None, Some(host)) => format!("http://{host}/"),
            (None, None) => state.base_url.clone(),
        }
    }
}

/// The `Host` a request was addressed to, lower-cased, when it parses as an authority without
/// user info; `None` otherwise (a link is then built on the listener's address rather than on
/// whatever the client sent).
fn request_host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let raw = match headers.get(header::HOST) {
        Some(value) => value.to_str().ok()?,
        None => uri.authority()?.as_str(),
    };
    let authority: axum::http::uri::Authority = raw.trim().parse().ok()?;
    // Exactly a host and an optional numeric port: no user info, no empty or named port.
    let plain = match authority.port_u16() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_string(),
    };
    if authority.host().is_empty() || plain != authority.as_str() {
        return None;
    }
    Some(plain.to_ascii_lowercase())
}

/// Takes one call from the caller's bucket of the method's tier. Only a validly signed user
/// token is counted (the signature is checked here, the user later by the method): calls
/// without one fail authentication without touching the store, and service tokens are the
/// cluster's own traffic.
fn check_rate_limit(
    state: &AppState,
    method: &'static str,
    token: &ApiResult<Option<&str>>,
) -> ApiResult<()> {
    if !state.rate_limiter.is_enabled() {
        return Ok(());
    }
    let Some(tier) = crate::ratelimit::tier(method) else {
        return Ok(());
    };
    let Ok(Some(token)) = token else {
        return Ok(());
    };
    let Ok(claims) = state.signer.verify(token) else {
        return Ok(());
    };
    if claims.service {
        return Ok(());
    }
    match state.rate_limiter.check(claims.user.as_str(), tier) {
        Ok(()) => Ok(()),
        Err(RetryAfter(retry_after_secs)) => {
            crate::ratelimit::RATELIMITED
                .with_label_values(&[method])
                .inc();
            Err(ApiError::RateLimited { retry_after_secs })
        }
    }
}

enum BodyKind {
    Json,
    Form,
    Unsupported,
}

fn body_kind(headers: &HeaderMap) -> BodyKind {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return BodyKind::Form;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => BodyKind::Json,
        "" | "application/x-www-form-urlencoded" => BodyKind::Form,
        _ if mime.ends_with("+json") => BodyKind::Json,
        _ => BodyKind::Unsupported,
    }
}

/// Reads the whole body, refusing one over `max` bytes from its `Content-Length` or as soon
/// as it grows past `max`, so an oversized body is never buffered whole.
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> ApiResult<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|len| len > max as u64) {
        drain(&mut stream, max).await;
        return Err(ApiError::RequestTooLarge { max });
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::InvalidFormData)?;
        if buf.len() + chunk.len() > max {
            drain(&mut stream, max).await;
            return Err(ApiError::RequestTooLarge { max });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads and drops what is left of a refused body (up to a bound), so the client reads our
/// 413 instead of a connection reset from unread bytes.
async fn drain(stream: &mut axum::body::BodyDataStream, max: usize) {
    let cap = max.saturating_mul(8).max(8 * 1024 * 1024);
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while seen < cap {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => seen += chunk.len(),
            _ => break,
        }
    }
}

fn ok_response(fields: Object) -> Response {
    let mut body = Object::new();
    body.insert("ok".into(), Value::Bool(true));
    body.extend(fields);
    (StatusCode::OK, axum::Json(Value::Object(body))).into_response()
}

fn error_response(err: &ApiError) -> Response {
    let mut body = json!({ "ok": false, "error": err.code() });
    if let ApiError::NotInvited(errors) = err {
        body["errors"] = errors.iter().map(UserError::json).collect();
    }
    if let ApiError::UrlVerificationFailed(detail) = err {
        body["detail"] = detail.as_str().into();
    }
    let mut resp = (err.status(), axum::Json(body)).into_response();
    if let ApiError::RateLimited { retry_after_secs } = err {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    resp
}

/// Builds an answer's fields from a `json!({...})` object literal.
pub fn object(value: Value) -> Object {
    match value {
        Value::Object(map) => map,
        _ => Object::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_scalars_become_strings() {
        let mut p = Params::default();
        p.merge_json(br#"{"channel":"C1","limit":5,"is_private":true,"x":null,"blocks":[1]}"#)
            .unwrap();
        assert_eq!(p.get("channel"), Some("C1"));
        assert_eq!(p.limit(100, 1000).unwrap(), 5);
        assert!(p.flag("is_private", false));
        assert_eq!(p.get("x"), None);
        assert_eq!(p.get("blocks"), Some("[1]"));
    }

    #[test]
    fn bad_bodies_are_refused_not_panicked_on() {
        let mut p = Params::default();
        assert!(matches!(
            p.merge_json(b"{\"a\":"),
            Err(ApiError::InvalidJson)
        ));
        assert!(matches!(p.merge_json(b"[1,2]"), Err(ApiError::InvalidJson)));
        assert!(matches!(
            p.merge_json(b"{\"a\":\"\xff\"}"),
            Err(ApiError::InvalidJson)
        ));
        assert!(matches!(
            p.merge_form(b"a=\xff\xfe"),
            Err(ApiError::InvalidFormData)
        ));
    }

    #[test]
    fn limits_default_and_clamp() {
        let p = Params::from_pairs(&[("limit", "5000")]);
        assert_eq!(p.limit(100, 1000).unwrap(), 1000);
        let p = Params::from_pairs(&[("limit", "0")]);
        assert_eq!(p.limit(100, 1000).unwrap(), 100);
        let p = Params::from_pairs(&[("limit", "-1")]);
        assert!(matches!(p.limit(100, 1000), Err(ApiError::InvalidLimit)));
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = encode_cursor("channel", "CABC");
        let p = Params::from_pairs(&[("cursor", &c)]);
        assert_eq!(
            decode_cursor(&p, "channel").unwrap().as_deref(),
            Some("CABC")
        );
        assert!(matches!(
            decode_cursor(&p, "seq"),
            Err(ApiError::InvalidCursor)
        ));
        let p = Params::from_pairs(&[("cursor", "!!!")]);
        assert!(matches!(
            decode_cursor(&p, "channel"),
            Err(ApiError::InvalidCursor)
        ));
        assert_eq!(decode_cursor(&Params::default(), "channel").unwrap(), None);
    }

    #[test]
    fn links_use_a_well_formed_host_only() {
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(value).unwrap());
            request_host(&headers, &Uri::from_static("/api/chat.getPermalink"))
        };
        assert_eq!(
            host("chat.example.com").as_deref(),
            Some("chat.example.com")
        );
        assert_eq!(
            host("Chat.Example.com:8080").as_deref(),
            Some("chat.example.com:8080")
        );
        assert_eq!(host("[::1]:8080").as_deref(), Some("[::1]:8080"));
        for bad in [
            "",
            "user@evil.example",
            "a b",
            "host/path",
            "host:port",
            "host:",
        ] {
            assert_eq!(host(bad), None, "{bad:?}");
        }
        // No Host header: the request line's authority (HTTP/2), else nothing.
        let uri: Uri = "http://api.example.com:81/api/x".parse().unwrap();
        assert_eq!(
            request_host(&HeaderMap::new(), &uri).as_deref(),
            Some("api.example.com:81")
        );
        assert_eq!(
            request_host(&HeaderMap::new(), &Uri::from_static("/api/x")),
            None
        );
    }

    #[test]
    fn error_names_and_statuses_follow_slack() {
        assert_eq!(ApiError::ChannelNotFound.status(), StatusCode::OK);
        assert_eq!(ApiError::InvalidJson.status(), StatusCode::BAD_REQUEST);
        assert_eq!(ApiError::UnknownMethod.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ApiError::RequestTooLarge { max: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let limited = ApiError::RateLimited {
            retry_after_secs: 3,
        };
        assert_eq!(limited.code(), "ratelimited");
        let resp = error_response(&limited);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }
}
