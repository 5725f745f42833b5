//! The queries Flannel answers, independent of HTTP: the boot call and lookups by id or
//! prefix. Each authenticates the caller's token locally (signature, then the user must exist
//! in the cached workspace the token names) and answers from memory once the workspace is
//! loaded. Answers are JSON text with Slack's `{"ok":true,...}` envelope.

use std::sync::Arc;

use shared::auth::{Claims, TokenError, TokenSigner};
use shared::ids::{ChannelId, UserId};

use crate::cache::{Cache, SharedWorkspace};
use crate::loader::LoadError;
use crate::workspace::{normalize_prefix, LookupError, MAX_PREFIX_CHARS};

/// Lookup results when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 20;
/// Most lookup results.
pub const MAX_LIMIT: usize = 1000;

/// A query's failure, as Slack names it. Names are part of the API: never rename or reuse one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("no token was given")]
    NotAuthed,
    #[error("the token is invalid or its user is not in its workspace")]
    InvalidAuth,
    #[error("service tokens cannot query flannel")]
    NotAllowedTokenType,
    #[error("no such user in the caller's workspace")]
    UserNotFound,
    #[error("no such channel visible to the caller")]
    ChannelNotFound,
    #[error("prefix is missing, too long or holds control characters")]
    InvalidPrefix,
    #[error("limit must be a non-negative integer")]
    InvalidLimit,
    #[error("no such method")]
    UnknownMethod,
    #[error("queries take GET only")]
    MethodNotAllowed,
    #[error("workspace could not be loaded: {0}")]
    ServiceUnavailable(String),
}

impl QueryError {
    /// The Slack error name sent to the client.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::NotAuthed => "not_authed",
            QueryError::InvalidAuth => "invalid_auth",
            QueryError::NotAllowedTokenType => "not_allowed_token_type",
            QueryError::UserNotFound => "user_not_found",
            QueryError::ChannelNotFound => "channel_not_found",
            QueryError::InvalidPrefix => "invalid_prefix",
            QueryError::InvalidLimit => "invalid_limit",
            QueryError::UnknownMethod => "unknown_method",
            QueryError::MethodNotAllowed => "method_not_allowed",
            QueryError::ServiceUnavailable(_) => "service_unavailable",
        }
    }
}

impl From<LookupError> for QueryError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::UserNotFound => QueryError::UserNotFound,
            LookupError::ChannelNotFound => QueryError::ChannelNotFound,
        }
    }
}

pub type QueryResult = Result<String, QueryError>;

/// Flannel's query side: the cache plus the token signer.
pub struct Flannel {
    cache: Arc<Cache>,
    signer: TokenSigner,
}

/// An authenticated caller and its workspace.
struct Caller {
    claims: Claims,
    workspace: SharedWorkspace,
}

impl Flannel {
    pub fn new(cache: Arc<Cache>, signer: TokenSigner) -> Arc<Flannel> {
        Arc::new(Flannel { cache, signer })
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    async fn caller(&self, token: Option<&str>) -> Result<Caller, QueryError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let token = token.ok_or(QueryError::NotAuthed)?;
        let claims = self.signer.verify(token).map_err(|e| match e {
            TokenError::Missing => QueryError::NotAuthed,
            TokenError::Malformed | TokenError::BadSignature => QueryError::InvalidAuth,
        })?;
        if claims.service {
            return Err(QueryError::NotAllowedTokenType);
        }
        let load = |r: Result<SharedWorkspace, LoadError>| match r {
            Ok(ws) => Ok(ws),
            Err(LoadError::NoSuchWorkspace) => Err(QueryError::InvalidAuth),
            Err(LoadError::Unavailable(e)) => Err(QueryError::ServiceUnavailable(e)),
        };
        let mut workspace = load(self.cache.get(&claims.workspace).await)?;
        if !workspace.read().has_user(&claims.user) {
            // A valid signature for a user this copy does not know: the user may have been
            // created since (behind the events' back), so look again, at a bounded rate.
            let Some(reloaded) = self.cache.refresh(&claims.workspace).await else {
                return Err(QueryError::InvalidAuth);
            };
            workspace = load(reloaded)?;
            if !workspace.read().has_user(&claims.user) {
                return Err(QueryError::InvalidAuth);
            }
        }
        Ok(Caller { claims, workspace })
    }

    /// The boot data of the token's user: itself, its workspace, its channels with read
    /// positions, and the users and bots it shares a channel with.
    pub async fn boot(&self, token: Option<&str>) -> QueryResult {
        let caller = self.caller(token).await?;
        let json = caller.workspace.read().boot_json(&caller.claims.user)?;
        Ok(json)
    }

    /// Users of the caller's workspace matching a prefix (mention autocomplete).
    pub async fn users_lookup(
        &self,
        token: Option<&str>,
        prefix: Option<&str>,
        limit: Option<&str>,
    ) -> QueryResult {
        let prefix = parse_prefix(prefix)?;
        let limit = parse_limit(limit)?;
        let caller = self.caller(token).await?;
        let ws = caller.workspace.read();
        Ok(list_answer(
            "users",
            ws.users_lookup(&prefix, limit).into_iter(),
        ))
    }

    /// One user of the caller's workspace.
    pub async fn users_info(&self, token: Option<&str>, user: Option<&str>) -> QueryResult {
        let caller = self.caller(token).await?;
        let id = user
            .map(str::trim)
            .and_then(UserId::parse)
            .ok_or(QueryError::UserNotFound)?;
        let ws = caller.workspace.read();
        Ok(format!("{{\"ok\":true,\"user\":{}}}", ws.user_json(&id)?))
    }

    /// Channels the caller may see matching a prefix.
    pub async fn channels_lookup(
        &self,
        token: Option<&str>,
        prefix: Option<&str>,
        limit: Option<&str>,
    ) -> QueryResult {
        let prefix = parse_prefix(prefix)?;
        let prefix = prefix.strip_prefix('#').unwrap_or(&prefix).to_string();
        let limit = parse_limit(limit)?;
        let caller = self.caller(token).await?;
        let ws = caller.workspace.read();
        let found = ws.channels_lookup(&caller.claims.user, &prefix, limit)?;
        Ok(list_answer("channels", found.iter().map(String::as_str)))
    }

    /// One channel as the caller sees it.
    pub async fn channels_info(&self, token: Option<&str>, channel: Option<&str>) -> QueryResult {
        let caller = self.caller(token).await?;
        let id = channel
            .map(str::trim)
            .and_then(ChannelId::parse)
            .ok_or(QueryError::ChannelNotFound)?;
        let ws = caller.workspace.read();
        Ok(format!(
            "{{\"ok\":true,\"channel\":{}}}",
            ws.channel_info(&caller.claims.user, &id)?
        ))
    }
}

fn parse_prefix(prefix: Option<&str>) -> Result<String, QueryError> {
    let prefix = prefix.ok_or(QueryError::InvalidPrefix)?;
    if prefix.chars().count() > MAX_PREFIX_CHARS || prefix.chars().any(char::is_control) {
        return Err(QueryError::InvalidPrefix);
    }
    Ok(normalize_prefix(prefix))
}

fn parse_limit(limit: Option<&str>) -> Result<usize, QueryError> {
    match limit.map(str::trim).filter(|l| !l.is_empty()) {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => {
            let n: u64 = raw.parse().map_err(|_| QueryError::InvalidLimit)?;
            Ok(if n == 0 {
                DEFAULT_LIMIT
            } else {
                n.min(MAX_LIMIT as u64) as usize
            })
        }
    }
}

fn list_answer<'a>(key: &str, items: impl Iterator<Item = &'a str>) -> String {
    let mut out = format!("{{\"ok\":true,\"{key}\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    //! The workspace loads from the real Web API over HTTP ([`WebApi`]).

    use super::*;
    use crate::cache::Budget;
    use crate::test_web_api::WebApi;
    use serde_json::Value;
    use shared::ids::WorkspaceId;

    /// The real Web API's demo workspace (alice, bob, carol in #general) plus a private
    /// #secret of alice and carol, and a Flannel loading from it.
    struct Setup {
        api: WebApi,
        flannel: Arc<Flannel>,
        ws: WorkspaceId,
        secret: ChannelId,
    }

    async fn setup() -> Setup {
        let api = WebApi::start().await;
        let ws = api.demo_workspace();
        let (alice, carol) = (api.demo_user("alice"), api.demo_user("carol"));
        let secret = api
            .add_channel(&ws, "secret", true, &[&alice, &carol])
            .await;
        let cache = Cache::new(
            api.source(),
            Budget {
                max_workspaces: 10,
                max_users: 1000,
                max_age: None,
                ..Budget::from_config(&shared::config::Config::defaults().flannel)
            },
        );
        cache.link_changed(true);
        let flannel = Flannel::new(cache, api.signer.clone());
        Setup {
            api,
            flannel,
            ws,
            secret,
        }
    }

    fn token(signer: &TokenSigner, ws: &WorkspaceId, user: &UserId) -> String {
        signer.issue(&Claims {
            workspace: ws.clone(),
            user: user.clone(),
            admin: false,
            bot: false,
            issued_at: 1,
            service: false,
        })
    }

    fn parse(r: QueryResult) -> Value {
        serde_json::from_str(&r.unwrap()).unwrap()
    }

    /// Requests that name no query get Slack-style JSON and are counted: an unknown path
    /// (404 `unknown_method`), a query path with another method than GET (405
    /// `method_not_allowed`).
    #[tokio::test]
    async fn requests_to_no_query_get_json_and_are_counted() {
        let Setup { flannel, .. } = setup().await;
        let app = crate::http::router(flannel, shared::telemetry::Health::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        let errors = |name: &str| crate::metrics::ERRORS.with_label_values(&[name]).get();
        let (not_allowed, unknown) = (errors("method_not_allowed"), errors("unknown_method"));
        for (method, path, status, error) in [
            (reqwest::Method::POST, "/boot", 405, "method_not_allowed"),
            (
                reqwest::Method::DELETE,
                "/users.info",
                405,
                "method_not_allowed",
            ),
            (reqwest::Method::GET, "/nowhere", 404, "unknown_method"),
        ] {
            let resp = http
                .request(method.clone(), format!("{base}{path}"))
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status().as_u16(), status, "{method} {path}");
            let v: Value = resp.json().await.expect("json body");
            assert_eq!(v, serde_json::json!({"ok": false, "error": error}));
        }
        assert!(errors("method_not_allowed") >= not_allowed + 2);
        assert!(errors("unknown_method") > unknown);
        server.abort();
    }

    #[tokio::test]
    async fn queries_answer_and_bad_ones_get_clear_errors() {
        let Setup {
            api,
            flannel: f,
            ws,
            secret,
        } = setup().await;
        let signer = &api.signer;
        let (alice_id, bob_id) = (api.demo_user("alice"), api.demo_user("bob"));
        let carol_id = api.demo_user("carol");
        let general = api.demo_general();
        let alice = token(signer, &ws, &alice_id);
        let bob = token(signer, &ws, &bob_id);
        let t = Some(alice.as_str());

        let boot = parse(f.boot(t).await);
        assert_eq!(boot["self"]["name"], "alice");
        let found = parse(f.users_lookup(t, Some("Car"), None).await);
        assert_eq!(found["users"][0]["id"], carol_id.as_str());
        let info = parse(f.users_info(t, Some(bob_id.as_str())).await);
        assert_eq!(info["user"]["name"], "bob");
        let chans = parse(f.channels_lookup(t, Some("#sec"), Some("5")).await);
        assert_eq!(chans["channels"][0]["id"], secret.as_str());
        let info = parse(f.channels_info(t, Some(general.as_str())).await);
        assert_eq!(info["channel"]["name"], "general");

        assert_eq!(f.boot(None).await, Err(QueryError::NotAuthed));
        assert_eq!(f.boot(Some("  ")).await, Err(QueryError::NotAuthed));
        assert_eq!(
            f.boot(Some("xoxp-garbage")).await,
            Err(QueryError::InvalidAuth)
        );
        let forged = token(&TokenSigner::new(b"other"), &ws, &alice_id);
        assert_eq!(f.boot(Some(&forged)).await, Err(QueryError::InvalidAuth));
        // A validly signed token of a user or workspace Flannel's source does not know.
        let ghost = token(signer, &ws, &UserId::from("UGHOST"));
        assert_eq!(f.boot(Some(&ghost)).await, Err(QueryError::InvalidAuth));
        let foreign_ws = token(signer, &WorkspaceId::from("TOTHER"), &alice_id);
        assert_eq!(
            f.boot(Some(&foreign_ws)).await,
            Err(QueryError::InvalidAuth)
        );
        let service = signer.issue(&Claims::service(ws.clone(), 1));
        assert_eq!(
            f.boot(Some(&service)).await,
            Err(QueryError::NotAllowedTokenType)
        );

        assert_eq!(
            f.users_info(t, Some("UNOBODY")).await,
            Err(QueryError::UserNotFound)
        );
        assert_eq!(
            f.users_info(t, Some("bob")).await,
            Err(QueryError::UserNotFound)
        );
        assert_eq!(f.users_info(t, None).await, Err(QueryError::UserNotFound));
        // bob is not in #secret: it does not exist for him.
        assert_eq!(
            f.channels_info(Some(&bob), Some(secret.as_str())).await,
            Err(QueryError::ChannelNotFound)
        );
        assert_eq!(
            f.channels_info(t, Some("general")).await,
            Err(QueryError::ChannelNotFound)
        );
        assert_eq!(
            f.users_lookup(t, None, None).await,
            Err(QueryError::InvalidPrefix)
        );
        assert_eq!(
            f.users_lookup(t, Some("a\u{1}"), None).await,
            Err(QueryError::InvalidPrefix)
        );
        assert_eq!(
            f.users_lookup(t, Some(&"a".repeat(201)), None).await,
            Err(QueryError::InvalidPrefix)
        );
        assert_eq!(
            f.users_lookup(t, Some("a"), Some("-1")).await,
            Err(QueryError::InvalidLimit)
        );
        assert_eq!(
            f.channels_lookup(t, Some("a"), Some("ten")).await,
            Err(QueryError::InvalidLimit)
        );
    }
}
