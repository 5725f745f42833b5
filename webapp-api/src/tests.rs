//! HTTP-level tests: the real router served by [`crate::run`] on a loopback port and a real
//! embedded store in a temporary directory. Most servers have an [`AdminLink`] with no mesh
//! behind it (what is answered before the mesh call); those started with
//! [`Server::start_with_cluster`] have the real admin and channel servers behind it, in this
//! process. Posting through gateways and separate processes is covered by the multi-process
//! tests.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::auth::{Claims, TokenSigner};
use shared::config::Config;
use shared::ids::{ChannelId, Seq, Ts, UserId, WorkspaceId};
use shared::protocol::Message;
use shared::shutdown::Shutdown;
use shared::store::sqlite::SqliteStore;
use shared::store::SharedStore;
use shared::telemetry::Health;

use crate::{AdminLink, WebappDeps};

const MAX_BODY: usize = 256 * 1024;

pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) store: SharedStore,
    pub(crate) signer: TokenSigner,
    pub(crate) http: reqwest::Client,
    pub(crate) shutdown: Shutdown,
    pub(crate) task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub(crate) dir: tempfile::TempDir,
    /// The seeded demo workspace (`tokens.json`).
    pub(crate) demo: Value,
    /// The real admin and channel servers behind the Web API, for servers started with them.
    pub(crate) cluster: Option<cluster::Cluster>,
}

/// What a test server's admin link reaches.
enum Admin {
    /// Nothing: every request fails at once.
    Detached,
    /// The real admin and channel servers ([`cluster::Cluster`]).
    Cluster,
    /// The link given.
    Link(AdminLink),
}

impl Server {
    pub(crate) async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// A server over the seeded demo workspace, with `configure` applied to its config.
    pub(crate) async fn start_with(configure: impl FnOnce(&mut Config)) -> Server {
        Server::start_inner(configure, Admin::Detached).await
    }

    /// A server whose admin link reaches a real admin server and channel server
    /// ([`cluster::Cluster`]), so posts are acknowledged (stored on this server's store) and
    /// relayed user events are recorded.
    pub(crate) async fn start_with_cluster() -> Server {
        Server::start_inner(|_| {}, Admin::Cluster).await
    }

    /// A server whose admin link is `link` (one to an admin server that does not answer, say).
    pub(crate) async fn start_with_admin_link(link: AdminLink) -> Server {
        Server::start_inner(|_| {}, Admin::Link(link)).await
    }

    /// [`Server::start_with_cluster`], with `configure` applied to the Web API's config.
    pub(crate) async fn start_with_cluster_and(configure: impl FnOnce(&mut Config)) -> Server {
        Server::start_inner(configure, Admin::Cluster).await
    }

    /// The workspace notices (`UserEvent::Notice`) of `kind` relayed so far, as JSON, once
    /// there are `n` of them: waits at most 10 s, then returns what came.
    pub(crate) async fn notices(&self, kind: &str, n: usize) -> Vec<Value> {
        self.relayed_of(kind, n, |e| match e {
            shared::protocol::UserEvent::Notice { event, .. } => Some(event),
            _ => None,
        })
        .await
    }

    /// The events of `kind` relayed to `user`'s sessions alone (`UserEvent::UserNotice`), as
    /// JSON, once there are `n` of them: waits at most 10 s, then returns what came.
    pub(crate) async fn user_notices(&self, user: &str, kind: &str, n: usize) -> Vec<Value> {
        self.relayed_of(kind, n, |e| match e {
            shared::protocol::UserEvent::UserNotice {
                user: to, event, ..
            } if to.0 == user => Some(event),
            _ => None,
        })
        .await
    }

    /// The relayed events that `pick` renders, of `kind`, once there are `n`.
    async fn relayed_of(
        &self,
        kind: &str,
        n: usize,
        pick: impl Fn(shared::protocol::UserEvent) -> Option<String>,
    ) -> Vec<Value> {
        let find = || -> Vec<Value> {
            self.relayed_events()
                .into_iter()
                .filter_map(&pick)
                .filter_map(|event| serde_json::from_str::<Value>(&event).ok())
                .filter(|e| e["type"] == kind)
                .collect()
        };
        for _ in 0..200 {
            if find().len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        find()
    }

    /// The user events the admin server relayed so far, oldest first.
    pub(crate) fn relayed_events(&self) -> Vec<shared::protocol::UserEvent> {
        self.cluster
            .as_ref()
            .expect("started with a cluster")
            .events()
    }

    async fn start_inner(configure: impl FnOnce(&mut Config), admin: Admin) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: SharedStore =
            Arc::new(SqliteStore::open(&dir.path().join("store"), 2).expect("store"));
        let signer = TokenSigner::new(b"test-secret");
        let demo = crate::seed_demo(&store, &signer, dir.path())
            .await
            .expect("seed");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let mut config = Config::defaults();
        config.node.data_dir = dir.path().to_path_buf();
        config.webapp.max_body_bytes = MAX_BODY;
        config.webapp.gateway_urls =
            vec!["ws://127.0.0.1:1/rtm".into(), "ws://127.0.0.2:2/rtm".into()];
        configure(&mut config);
        let shutdown = Shutdown::new();
        let cluster = match admin {
            Admin::Cluster => Some(cluster::Cluster::start(store.clone()).await),
            _ => None,
        };
        let admin = match (&cluster, admin) {
            (Some(cluster), _) => cluster.link.clone(),
            (None, Admin::Link(link)) => link,
            (None, _) => AdminLink::detached_for_test(),
        };
        let deps = WebappDeps {
            store: store.clone(),
            signer: signer.clone(),
            admin,
            health: Health::default(),
        };
        let task = tokio::spawn(crate::run(config, listener, deps, shutdown.clone()));
        Server {
            base,
            store,
            signer,
            // Bounded, so a request the server never answers fails its test instead of
            // hanging the suite.
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("http client"),
            shutdown,
            task,
            dir,
            demo,
            cluster,
        }
    }

    pub(crate) fn token(&self, user: &str) -> String {
        self.demo["users"][user]["token"]
            .as_str()
            .expect("seeded token")
            .to_string()
    }

    /// Makes bot user `name` through `admin.users.create`; returns its (bot) token.
    pub(crate) async fn bot_token(&self, name: &str) -> String {
        let made = self
            .ok(
                "admin.users.create",
                &self.admin_token(),
                json!({"name": name, "is_bot": true}),
            )
            .await;
        made["token"].as_str().expect("a bot token").to_string()
    }

    /// The server's `/metrics` page.
    pub(crate) async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    pub(crate) fn user_id(&self, user: &str) -> String {
        self.demo["users"][user]["id"]
            .as_str()
            .expect("seeded id")
            .to_string()
    }

    pub(crate) fn admin_token(&self) -> String {
        self.demo["admin"]
            .as_str()
            .expect("admin token")
            .to_string()
    }

    /// A JSON-body call with a bearer token.
    pub(crate) async fn call(
        &self,
        method: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}/api/{method}", self.base))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        (status, resp.json().await.expect("json answer"))
    }

    /// A form-body call, the token among the parameters (as Slack SDKs send it).
    pub(crate) async fn call_form(
        &self,
        method: &str,
        params: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}/api/{method}", self.base))
            .form(params)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        (status, resp.json().await.expect("json answer"))
    }

    /// A call with a raw body and content type.
    pub(crate) async fn call_raw(
        &self,
        method: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}/api/{method}", self.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        (status, resp.json().await.expect("json answer"))
    }

    /// Calls and expects `ok: true`.
    pub(crate) async fn ok(&self, method: &str, token: &str, body: Value) -> Value {
        let (status, v) = self.call(method, Some(token), body).await;
        assert_eq!(status, StatusCode::OK, "{method}: {v}");
        assert_eq!(v["ok"], true, "{method}: {v}");
        v
    }

    /// Posts `text` to `channel` with `token`; returns the message's ts.
    pub(crate) async fn post_ts(&self, token: &str, channel: &str, text: &str) -> String {
        self.ok(
            "chat.postMessage",
            token,
            json!({"channel": channel, "text": text}),
        )
        .await["ts"]
            .as_str()
            .expect("ts")
            .to_string()
    }

    /// Posts `text` to `channel` with `token` and the further parameters in `extra` (an
    /// object); returns the message's ts.
    pub(crate) async fn post_with(
        &self,
        token: &str,
        channel: &str,
        text: &str,
        extra: Value,
    ) -> String {
        let mut params = json!({"channel": channel, "text": text});
        for (k, v) in extra.as_object().expect("extra parameters") {
            params[k] = v.clone();
        }
        self.ok("chat.postMessage", token, params).await["ts"]
            .as_str()
            .expect("ts")
            .to_string()
    }

    /// A service token of the demo workspace (what Flannel calls `internal.*` with).
    pub(crate) fn service_token(&self) -> String {
        let ws = self.demo["workspace"].as_str().expect("workspace");
        self.signer
            .issue(&Claims::service(WorkspaceId(ws.to_string()), 1))
    }

    /// The demo workspace's `internal.flannel.snapshot`, as Flannel reads it.
    pub(crate) async fn flannel_snapshot(&self) -> shared::protocol::WorkspaceSnapshot {
        let ws = self.demo["workspace"].as_str().expect("workspace");
        let v = self
            .ok(
                "internal.flannel.snapshot",
                &self.service_token(),
                json!({"workspace": ws}),
            )
            .await;
        serde_json::from_value(v).expect("a snapshot")
    }

    /// The ts of what `search.messages` finds for `query`, newest first.
    pub(crate) async fn search_ts(&self, token: &str, query: &str) -> Vec<String> {
        let v = self
            .ok(
                "search.messages",
                token,
                json!({"query": query, "sort": "timestamp"}),
            )
            .await;
        v["messages"]["matches"]
            .as_array()
            .expect("matches")
            .iter()
            .map(|m| m["ts"].as_str().expect("ts").to_string())
            .collect()
    }

    /// Calls and expects `ok: false` with `error`, returning the status.
    pub(crate) async fn err(
        &self,
        method: &str,
        token: &str,
        body: Value,
        error: &str,
    ) -> StatusCode {
        let (status, v) = self.call(method, Some(token), body).await;
        assert_eq!(v["ok"], false, "{method}: {v}");
        assert_eq!(v["error"], error, "{method}: {v}");
        status
    }

    /// Opens (or finds) the DM of the token's user with `users`; returns its id.
    pub(crate) async fn open_dm(&self, token: &str, users: &[&str]) -> String {
        channel_id(
            &self
                .ok(
                    "conversations.open",
                    token,
                    json!({"users": users.join(",")}),
                )
                .await,
        )
    }

    /// Makes user `name` of `kind` in workspace `ws` (by name), as the `admin` commands do;
    /// returns it with its token.
    pub(crate) async fn user_in(
        &self,
        ws: &str,
        name: &str,
        kind: crate::UserKind<'_>,
    ) -> (shared::store::User, String) {
        crate::create_user(&self.store, &self.signer, ws, name, kind)
            .await
            .unwrap_or_else(|e| panic!("user {name} in {ws}: {e}"))
    }

    pub(crate) async fn general(&self) -> String {
        let ws = WorkspaceId(self.demo["workspace"].as_str().expect("ws").to_string());
        self.store
            .channel_by_name(&ws, "general")
            .await
            .expect("store")
            .expect("general")
            .id
            .0
    }

    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(30), self.task)
            .await
            .expect("the Web API stopped")
            .expect("join")
            .expect("run");
        if let Some(cluster) = self.cluster {
            tokio::time::timeout(std::time::Duration::from_secs(30), cluster.stop())
                .await
                .expect("the admin and channel servers stopped");
        }
    }
}

/// The channel id of an answer that carries a channel (`conversations.create`, `.open`).
fn channel_id(v: &Value) -> String {
    v["channel"]["id"].as_str().expect("channel id").to_string()
}

fn message(ws: &str, channel: &str, seq: Seq, user: &str) -> Message {
    Message {
        workspace: WorkspaceId(ws.to_string()),
        channel: ChannelId(channel.to_string()),
        seq,
        ts: Ts(1_700_000_000_000_000 + seq * 1_000),
        user: UserId(user.to_string()),
        text: format!("message {seq}"),
        client_msg_id: Some(format!("cmid-{seq}")),
        thread_ts: None,
        kind: shared::protocol::MessageKind::Posted,
        previous: None,
        broadcast: false,
        bot: false,
        rich: None,
    }
}

#[tokio::test]
async fn api_test_echoes_without_auth_and_health_is_ready() {
    let s = Server::start().await;
    let (status, v) = s.call_form("api.test", &[("foo", "bar")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v, json!({"ok": true, "args": {"foo": "bar"}}));
    let resp = s
        .http
        .get(format!("{}/api/api.test?x=1", s.base))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["args"]["x"], "1");
    let health = s
        .http
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn auth_test_identifies_the_caller_by_header_or_param() {
    let s = Server::start().await;
    let v = s.ok("auth.test", &s.token("bob"), json!({})).await;
    assert_eq!(v["user"], "bob");
    assert_eq!(v["team"], "demo");
    assert_eq!(v["user_id"], s.user_id("bob"));
    assert_eq!(v["team_id"], s.demo["workspace"]);
    // RTM clients need a bot id from auth.test; a person's is derived from the user id.
    assert_eq!(
        v["bot_id"].as_str().unwrap().strip_prefix('B'),
        v["user_id"].as_str().unwrap().strip_prefix('U')
    );
    let token = s.token("carol");
    let (status, v) = s.call_form("auth.test", &[("token", &token)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["user"], "carol");
    s.stop().await;
}

#[tokio::test]
async fn missing_forged_and_stale_tokens_are_refused() {
    let s = Server::start().await;
    let (status, v) = s.call("auth.test", None, json!({})).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::OK, Some("not_authed"))
    );
    s.err("auth.test", "garbage", json!({}), "invalid_auth")
        .await;
    s.err("auth.test", "xoxp-abc.def", json!({}), "invalid_auth")
        .await;
    // Signed with another cluster's secret.
    let claims = Claims {
        workspace: WorkspaceId(s.demo["workspace"].as_str().unwrap().into()),
        user: UserId(s.user_id("bob")),
        admin: false,
        bot: false,
        issued_at: 1,
        service: false,
    };
    let foreign = TokenSigner::new(b"another-secret").issue(&claims);
    s.err("auth.test", &foreign, json!({}), "invalid_auth")
        .await;
    // Validly signed, but the user does not exist.
    let ghost = s.signer.issue(&Claims {
        user: UserId("UNOSUCHUSER".into()),
        ..claims.clone()
    });
    s.err("auth.test", &ghost, json!({}), "invalid_auth").await;
    // Validly signed, but naming another workspace than the user's.
    let other_ws = crate::create_workspace(&s.store, "acme").await.unwrap();
    let misplaced = s.signer.issue(&Claims {
        workspace: other_ws.id.clone(),
        ..claims.clone()
    });
    s.err("auth.test", &misplaced, json!({}), "invalid_auth")
        .await;
    // An Authorization header that is not a bearer token.
    let resp = s
        .http
        .post(format!("{}/api/auth.test", s.base))
        .header("authorization", "Basic Ym9iOmJvYg==")
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_auth");
    s.stop().await;
}

#[tokio::test]
async fn unreadable_bodies_and_unknown_methods_get_4xx() {
    let s = Server::start().await;
    let bob = s.token("bob");
    let (status, v) = s
        .call_raw("auth.test", &bob, "application/json", b"{\"a\":".to_vec())
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    let (status, v) = s
        .call_raw("auth.test", &bob, "application/json", b"[1,2,3]".to_vec())
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    let (status, v) = s
        .call_raw(
            "auth.test",
            &bob,
            "application/json; charset=utf-8",
            b"{\"text\":\"\xff\xfe\"}".to_vec(),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    let (status, v) = s
        .call_raw(
            "auth.test",
            &bob,
            "application/x-www-form-urlencoded",
            b"text=\xff\xfe".to_vec(),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_form_data"))
    );
    let (status, v) = s
        .call_raw(
            "auth.test",
            &bob,
            "multipart/form-data; boundary=x",
            b"--x--".to_vec(),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_form_data"))
    );
    let big = format!("{{\"text\":\"{}\"}}", "a".repeat(MAX_BODY + 1));
    let (status, v) = s
        .call_raw(
            "chat.postMessage",
            &bob,
            "application/json",
            big.into_bytes(),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("request_too_large"))
    );
    // A chunked body (no length given) is cut off as soon as it passes the limit.
    assert!(raw_chunked_post(&s.base, &bob, MAX_BODY * 2)
        .await
        .starts_with("HTTP/1.1 413"));
    let (status, v) = s.call("no.such.method", Some(&bob), json!({})).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_method"))
    );
    for path in ["/nowhere", "/api/", "/api/%FF%FE", "/api/auth.test/extra"] {
        let resp = s
            .http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "unknown_method", "{path}");
    }
    // Still serving after all of that.
    s.ok("auth.test", &bob, json!({})).await;
    s.stop().await;
}

/// Requests that reach no method are counted and answered in Slack's JSON: an unknown path
/// (404 `unknown_method`), a path with the wrong HTTP method (405 `method_not_allowed`).
#[tokio::test]
async fn requests_to_no_method_are_counted_and_answered_in_json() {
    use crate::metrics::{ERRORS, REQUESTS};
    let s = Server::start().await;
    let errors = |name: &str| ERRORS.with_label_values(&["unknown", name]).get();
    let (unknown, not_allowed) = (errors("unknown_method"), errors("method_not_allowed"));
    let requests = REQUESTS.with_label_values(&["unknown"]).get();
    let hook = format!("/hooks/{}", "x".repeat(20));
    for (method, path, status, error) in [
        (reqwest::Method::GET, "/api/", 404, "unknown_method"),
        (reqwest::Method::POST, "/api/a/b", 404, "unknown_method"),
        (reqwest::Method::POST, "/hooks/", 404, "unknown_method"),
        (
            reqwest::Method::GET,
            hook.as_str(),
            405,
            "method_not_allowed",
        ),
        (
            reqwest::Method::POST,
            "/openapi.json",
            405,
            "method_not_allowed",
        ),
    ] {
        let resp = s
            .http
            .request(method.clone(), format!("{}{path}", s.base))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let v: Value = resp.json().await.expect("json body");
        assert_eq!(v, json!({"ok": false, "error": error}), "{method} {path}");
    }
    assert!(errors("unknown_method") >= unknown + 3);
    assert!(errors("method_not_allowed") >= not_allowed + 2);
    assert!(REQUESTS.with_label_values(&["unknown"]).get() >= requests + 5);
    s.stop().await;
}

/// Posts `len` bytes of chunked body over a raw connection and returns the answer's text.
async fn raw_chunked_post(base: &str, token: &str, len: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/auth.test HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 8192];
    let mut sent = 0;
    // The server may answer and close before the whole body is sent: stop writing then.
    while sent < len {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if conn.write_all(&frame).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn create_join_leave_keep_membership() {
    let s = Server::start().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    for (name, error) in [
        ("", "invalid_name_required"),
        ("Has Caps", "invalid_name_specials"),
        ("no#hash", "invalid_name_specials"),
    ] {
        s.err("conversations.create", &alice, json!({"name": name}), error)
            .await;
    }
    s.err(
        "conversations.create",
        &alice,
        json!({"name": "a".repeat(81)}),
        "invalid_name_maxlength",
    )
    .await;
    s.err(
        "conversations.create",
        &alice,
        json!({"name": "general"}),
        "name_taken",
    )
    .await;

    let v = s
        .ok("conversations.create", &alice, json!({"name": "eng"}))
        .await;
    let ch = &v["channel"];
    let id = ch["id"].as_str().unwrap().to_string();
    assert!(ChannelId::is_well_formed(&id));
    assert_eq!(ch["name"], "eng");
    assert_eq!(ch["is_channel"], true);
    assert_eq!(ch["is_private"], false);
    assert_eq!(ch["is_member"], true);
    assert_eq!(ch["creator"], s.user_id("alice"));
    assert_eq!(ch["topic"]["value"], "");
    assert!(ch["created"].as_u64().unwrap() > 1_600_000_000);

    let v = s
        .ok("conversations.join", &bob, json!({"channel": id}))
        .await;
    assert_eq!(v["channel"]["is_member"], true);
    assert!(v.get("warning").is_none());
    let v = s
        .ok("conversations.join", &bob, json!({"channel": id}))
        .await;
    assert_eq!(v["warning"], "already_in_channel");
    let v = s
        .ok(
            "conversations.info",
            &bob,
            json!({"channel": id, "include_num_members": true}),
        )
        .await;
    assert_eq!(v["channel"]["num_members"], 2);

    let v = s.ok("users.conversations", &bob, json!({})).await;
    let names: Vec<_> = v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.contains(&"eng".to_string()) && names.contains(&"general".to_string()),
        "{names:?}"
    );

    s.ok("conversations.leave", &bob, json!({"channel": id}))
        .await;
    s.err(
        "conversations.leave",
        &bob,
        json!({"channel": id}),
        "not_in_channel",
    )
    .await;
    let v = s
        .ok("conversations.info", &bob, json!({"channel": id}))
        .await;
    assert_eq!(v["channel"]["is_member"], false);
    let general = s.general().await;
    s.err(
        "conversations.leave",
        &bob,
        json!({"channel": general}),
        "cant_leave_general",
    )
    .await;

    // A private channel is invisible to non-members and cannot be joined.
    let v = s
        .ok(
            "conversations.create",
            &alice,
            json!({"name": "secret", "is_private": true}),
        )
        .await;
    assert_eq!(v["channel"]["is_private"], true);
    let secret = v["channel"]["id"].as_str().unwrap().to_string();
    for method in [
        "conversations.join",
        "conversations.info",
        "conversations.history",
        "conversations.leave",
    ] {
        s.err(
            method,
            &bob,
            json!({"channel": secret}),
            "channel_not_found",
        )
        .await;
    }
    s.err(
        "conversations.join",
        &alice,
        json!({"channel": secret}),
        "method_not_supported_for_channel_type",
    )
    .await;

    // Malformed or unknown ids.
    for bad in ["", "not-an-id", "C", "Cnope", "U123ABC", "CNOSUCHCHANNEL"] {
        s.err(
            "conversations.info",
            &bob,
            json!({"channel": bad}),
            "channel_not_found",
        )
        .await;
    }
    s.err("conversations.info", &bob, json!({}), "channel_not_found")
        .await;
    s.stop().await;
}

/// A direct message keeps its kind and its members: it cannot be renamed into an ordinary
/// private channel (which could then be invited into, exposing the DM's history), archived,
/// unarchived or left, as in Slack (`method_not_supported_for_channel_type`).
#[tokio::test]
async fn direct_messages_keep_their_kind_and_members() {
    let s = Server::start().await;
    let (alice, carol) = (s.token("alice"), s.token("carol"));
    let (bob_id, carol_id) = (s.user_id("bob"), s.user_id("carol"));
    let dm = s
        .ok("conversations.open", &alice, json!({"users": bob_id}))
        .await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let group = s
        .ok(
            "conversations.open",
            &alice,
            json!({"users": format!("{bob_id},{carol_id}")}),
        )
        .await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let unsupported = "method_not_supported_for_channel_type";
    let info = |channel: String| {
        let (s, alice) = (&s, &alice);
        async move {
            s.ok(
                "conversations.info",
                alice,
                json!({"channel": channel, "include_num_members": true}),
            )
            .await["channel"]
                .clone()
        }
    };
    for channel in [&dm, &group] {
        let before = info(channel.clone()).await;
        s.err(
            "conversations.rename",
            &alice,
            json!({"channel": channel, "name": "notes"}),
            unsupported,
        )
        .await;
        for method in [
            "conversations.archive",
            "conversations.unarchive",
            "conversations.leave",
        ] {
            s.err(method, &alice, json!({"channel": channel}), unsupported)
                .await;
        }
        s.err(
            "conversations.invite",
            &alice,
            json!({"channel": channel, "users": carol_id}),
            unsupported,
        )
        .await;
        assert_eq!(
            info(channel.clone()).await,
            before,
            "the conversation changed"
        );
    }
    // Still a DM by name, so carol stays out of the 1:1.
    assert_eq!(
        s.ok("conversations.info", &alice, json!({"channel": dm}))
            .await["channel"]["is_im"],
        true
    );
    s.err(
        "conversations.history",
        &carol,
        json!({"channel": dm}),
        "channel_not_found",
    )
    .await;
    s.stop().await;
}

/// Walks every page of a listing and returns the ids, checking pages are at most `limit`.
async fn walk(s: &Server, method: &str, token: &str, mut body: Value, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let v = s.ok(method, token, body.clone()).await;
        let page = v["channels"].as_array().unwrap();
        assert!(page.len() <= limit, "{v}");
        ids.extend(page.iter().map(|c| c["id"].as_str().unwrap().to_string()));
        let next = v["response_metadata"]["next_cursor"].as_str().unwrap();
        pages += 1;
        assert!(pages < 100, "pagination does not end");
        if next.is_empty() {
            break;
        }
        body["cursor"] = next.into();
    }
    ids
}

#[tokio::test]
async fn listings_paginate_and_show_private_channels_to_members_only() {
    let s = Server::start().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let mut public = vec![s.general().await];
    for i in 0..7 {
        let v = s
            .ok(
                "conversations.create",
                &alice,
                json!({"name": format!("pub-{i}")}),
            )
            .await;
        public.push(v["channel"]["id"].as_str().unwrap().to_string());
    }
    let mut private = Vec::new();
    for i in 0..3 {
        let v = s
            .ok(
                "conversations.create",
                &alice,
                json!({"name": format!("priv-{i}"), "is_private": true}),
            )
            .await;
        private.push(v["channel"]["id"].as_str().unwrap().to_string());
    }
    public.sort();
    let mut everything: Vec<String> = public.iter().chain(&private).cloned().collect();
    everything.sort();

    // Bob sees every public channel once, whatever the page size, and no private one.
    for limit in [1, 3, 8, 100] {
        let ids = walk(
            &s,
            "conversations.list",
            &bob,
            json!({"limit": limit}),
            limit,
        )
        .await;
        assert_eq!(ids, public, "limit {limit}");
    }
    // Alice, a member of the private ones, sees them too; `types` filters.
    let ids = walk(&s, "conversations.list", &alice, json!({"limit": 4}), 4).await;
    assert_eq!(ids, everything);
    let ids = walk(
        &s,
        "conversations.list",
        &alice,
        json!({"types": "private_channel", "limit": 2}),
        2,
    )
    .await;
    let mut sorted_private = private.clone();
    sorted_private.sort();
    assert_eq!(ids, sorted_private);
    let ids = walk(
        &s,
        "conversations.list",
        &alice,
        json!({"types": "public_channel"}),
        100,
    )
    .await;
    assert_eq!(ids, public);
    s.err(
        "conversations.list",
        &alice,
        json!({"types": "bogus"}),
        "invalid_types",
    )
    .await;
    s.err(
        "conversations.list",
        &alice,
        json!({"cursor": "%%%"}),
        "invalid_cursor",
    )
    .await;
    s.err(
        "conversations.list",
        &alice,
        json!({"limit": "many"}),
        "invalid_limit",
    )
    .await;

    // users.conversations: the caller's channels, paginated, private ones included.
    let ids = walk(&s, "users.conversations", &alice, json!({"limit": 3}), 3).await;
    assert_eq!(ids, everything);
    let ids = walk(&s, "users.conversations", &bob, json!({"limit": 3}), 3).await;
    assert_eq!(ids, vec![s.general().await]);
    // Another user's channels, as bob sees them: alice's public ones only.
    let ids = walk(
        &s,
        "users.conversations",
        &bob,
        json!({"user": s.user_id("alice")}),
        100,
    )
    .await;
    assert_eq!(ids, public);
    s.err(
        "users.conversations",
        &bob,
        json!({"user": "nobody"}),
        "user_not_found",
    )
    .await;
    s.stop().await;
}

/// `types=im` lists 1:1 DMs and `types=mpim` group DMs (of which the caller is a member), as
/// Slack does; `private_channel` lists private channels, not DMs, in `conversations.list` and
/// in `users.conversations` (gateways ask for every type).
#[tokio::test]
async fn direct_messages_are_listed_as_im_and_mpim() {
    let s = Server::start().await;
    let (alice, carol) = (s.token("alice"), s.token("carol"));
    let (bob_id, carol_id) = (s.user_id("bob"), s.user_id("carol"));
    let id = |v: Value| v["channel"]["id"].as_str().unwrap().to_string();
    let dm = id(s
        .ok("conversations.open", &alice, json!({"users": bob_id}))
        .await);
    let group = id(s
        .ok(
            "conversations.open",
            &alice,
            json!({"users": format!("{bob_id},{carol_id}")}),
        )
        .await);
    let secret = id(s
        .ok(
            "conversations.create",
            &alice,
            json!({"name": "secret", "is_private": true}),
        )
        .await);
    let general = s.general().await;
    let list = |method: &'static str, token: String, types: Option<&'static str>| {
        let s = &s;
        async move {
            let mut body = json!({"limit": 1000});
            if let Some(t) = types {
                body["types"] = t.into();
            }
            let v = s.ok(method, &token, body).await;
            let mut ids: Vec<String> = v["channels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            ids
        }
    };
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<String>>()
    };
    let l = "conversations.list";
    assert_eq!(list(l, alice.clone(), Some("im")).await, vec![dm.clone()]);
    assert_eq!(
        list(l, alice.clone(), Some("mpim")).await,
        vec![group.clone()]
    );
    assert_eq!(
        list(l, alice.clone(), Some("mpim,im")).await,
        sorted(vec![&dm, &group])
    );
    assert_eq!(
        list(l, alice.clone(), Some("private_channel")).await,
        vec![secret.clone()]
    );
    for types in [None, Some("public_channel,private_channel")] {
        assert_eq!(
            list(l, alice.clone(), types).await,
            sorted(vec![&general, &secret]),
            "{types:?}"
        );
    }
    assert_eq!(
        list(
            l,
            alice.clone(),
            Some("public_channel,private_channel,mpim,im")
        )
        .await,
        sorted(vec![&general, &secret, &dm, &group])
    );
    // Carol is in the group DM only.
    assert_eq!(
        list(l, carol.clone(), Some("im,mpim")).await,
        vec![group.clone()]
    );

    // users.conversations selects the same way (gateways ask it for every type).
    let u = "users.conversations";
    for (token, types, expected) in [
        (&alice, "im", vec![dm.clone()]),
        (&carol, "mpim", vec![group.clone()]),
        (
            &alice,
            "public_channel,private_channel",
            sorted(vec![&general, &secret]),
        ),
        (
            &alice,
            "public_channel,private_channel,mpim,im",
            sorted(vec![&general, &secret, &dm, &group]),
        ),
    ] {
        assert_eq!(
            list(u, token.clone(), Some(types)).await,
            expected,
            "{types}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn history_is_newest_first_and_pages_by_seq() {
    let s = Server::start().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let ws = s.demo["workspace"].as_str().unwrap().to_string();
    let v = s
        .ok("conversations.create", &alice, json!({"name": "history"}))
        .await;
    let ch = v["channel"]["id"].as_str().unwrap().to_string();
    for seq in 1..=25 {
        s.store
            .append(&message(&ws, &ch, seq, &s.user_id("alice")))
            .await
            .unwrap();
    }
    // Bob is not a member: a public channel of his workspace is still readable.
    let v = s
        .ok(
            "conversations.history",
            &bob,
            json!({"channel": ch, "limit": 10}),
        )
        .await;
    let seqs: Vec<u64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (16..=25).rev().collect::<Vec<_>>());
    assert_eq!(v["has_more"], true);
    let m = &v["messages"][0];
    assert_eq!(m["type"], "message");
    assert_eq!(m["user"], s.user_id("alice"));
    assert_eq!(m["text"], "message 25");
    assert_eq!(m["ts"], Ts(1_700_000_000_000_000 + 25_000).to_slack());
    assert_eq!(m["client_msg_id"], "cmid-25");
    assert_eq!(m["team"], ws);

    let mut all = Vec::new();
    let mut body = json!({"channel": ch, "limit": 10});
    loop {
        let v = s.ok("conversations.history", &bob, body.clone()).await;
        all.extend(
            v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_u64().unwrap()),
        );
        let next = v["response_metadata"]["next_cursor"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(v["has_more"], !next.is_empty());
        if next.is_empty() {
            break;
        }
        body["cursor"] = next.into();
    }
    assert_eq!(all, (1..=25).rev().collect::<Vec<_>>());

    // oldest/latest are exclusive unless `inclusive`.
    let ts = |seq: u64| Ts(1_700_000_000_000_000 + seq * 1_000).to_slack();
    let v = s
        .ok(
            "conversations.history",
            &bob,
            json!({"channel": ch, "oldest": ts(5), "latest": ts(9)}),
        )
        .await;
    let seqs: Vec<u64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![8, 7, 6]);
    assert_eq!(v["has_more"], false);
    let v = s
        .ok(
            "conversations.history",
            &bob,
            json!({"channel": ch, "oldest": ts(5), "latest": ts(9), "inclusive": true}),
        )
        .await;
    let seqs: Vec<u64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![9, 8, 7, 6, 5]);
    s.err(
        "conversations.history",
        &bob,
        json!({"channel": ch, "oldest": "yesterday"}),
        "invalid_ts_oldest",
    )
    .await;
    s.err(
        "conversations.history",
        &bob,
        json!({"channel": ch, "latest": "-1"}),
        "invalid_ts_latest",
    )
    .await;
    s.err(
        "conversations.history",
        &bob,
        json!({"channel": ch, "cursor": "bm9wZQ=="}),
        "invalid_cursor",
    )
    .await;
    s.err(
        "conversations.history",
        &bob,
        json!({"channel": "bad id"}),
        "channel_not_found",
    )
    .await;
    // An empty channel.
    let v = s
        .ok(
            "conversations.history",
            &bob,
            json!({"channel": s.general().await}),
        )
        .await;
    assert_eq!(v["messages"], json!([]));
    assert_eq!(v["has_more"], false);
    s.stop().await;
}

#[tokio::test]
async fn a_token_of_one_workspace_never_reaches_another() {
    let s = Server::start().await;
    let alice = s.token("alice");
    crate::create_workspace(&s.store, "acme").await.unwrap();
    let (mallory, mallory_token) = s
        .user_in("acme", "mallory", crate::UserKind::default())
        .await;
    let demo_general = s.general().await;
    let ws = s.demo["workspace"].as_str().unwrap().to_string();
    s.store
        .append(&message(&ws, &demo_general, 1, &s.user_id("alice")))
        .await
        .unwrap();
    let v = s
        .ok(
            "conversations.create",
            &mallory_token,
            json!({"name": "general"}),
        )
        .await;
    let acme_general = v["channel"]["id"].as_str().unwrap().to_string();

    for method in [
        "conversations.info",
        "conversations.history",
        "conversations.join",
        "conversations.leave",
        "conversations.kick",
        "chat.postMessage",
        "chat.getPermalink",
    ] {
        s.err(
            method,
            &mallory_token,
            json!({"channel": demo_general, "text": "hi"}),
            "channel_not_found",
        )
        .await;
        s.err(
            method,
            &alice,
            json!({"channel": acme_general, "text": "hi"}),
            "channel_not_found",
        )
        .await;
    }
    s.err(
        "users.info",
        &mallory_token,
        json!({"user": s.user_id("bob")}),
        "user_not_found",
    )
    .await;
    s.err(
        "users.info",
        &alice,
        json!({"user": mallory.id.0}),
        "user_not_found",
    )
    .await;
    s.err(
        "users.conversations",
        &mallory_token,
        json!({"user": s.user_id("bob")}),
        "user_not_found",
    )
    .await;

    let ids = walk(&s, "conversations.list", &mallory_token, json!({}), 100).await;
    assert_eq!(ids, vec![acme_general.clone()]);
    let ids = walk(&s, "conversations.list", &alice, json!({}), 100).await;
    assert!(!ids.contains(&acme_general));
    let v = s.ok("users.list", &mallory_token, json!({})).await;
    let names: Vec<_> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["mallory"]);
    // Mallory is not in demo's #general, and demo's messages never show.
    let demo_ids = walk(&s, "users.conversations", &mallory_token, json!({}), 100).await;
    assert_eq!(demo_ids, vec![acme_general]);
    s.stop().await;
}

#[tokio::test]
async fn post_message_validates_before_reaching_the_mesh() {
    let s = Server::start().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let general = s.general().await;
    let v = s
        .ok(
            "conversations.create",
            &alice,
            json!({"name": "alice-only"}),
        )
        .await;
    let alice_only = v["channel"]["id"].as_str().unwrap().to_string();

    s.err(
        "chat.postMessage",
        &bob,
        json!({"channel": general}),
        "no_text",
    )
    .await;
    s.err(
        "chat.postMessage",
        &bob,
        json!({"channel": general, "text": ""}),
        "no_text",
    )
    .await;
    let long = "é".repeat(40_001);
    s.err(
        "chat.postMessage",
        &bob,
        json!({"channel": general, "text": long}),
        "msg_too_long",
    )
    .await;
    s.err(
        "chat.postMessage",
        &bob,
        json!({"channel": alice_only, "text": "hi"}),
        "not_in_channel",
    )
    .await;
    for bad in ["", "CNOSUCHCHANNEL", "nosuch", "#nosuch", "../etc"] {
        s.err(
            "chat.postMessage",
            &bob,
            json!({"channel": bad, "text": "hi"}),
            "channel_not_found",
        )
        .await;
    }
    s.err(
        "chat.postMessage",
        &bob,
        json!({"channel": general, "text": "hi", "thread_ts": "x"}),
        "invalid_thread_ts",
    )
    .await;
    let status = s
        .err(
            "chat.postMessage",
            &bob,
            json!({"channel": general, "text": "hi", "client_msg_id": "x".repeat(200)}),
            "invalid_arguments",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Exactly 40000 characters passes validation; with no admin server behind this test
    // server the post then fails as unavailable (and nothing is stored).
    let text = "é".repeat(40_000);
    let status = s
        .err(
            "chat.postMessage",
            &bob,
            json!({"channel": general, "text": text}),
            "service_unavailable",
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let v = s
        .ok("conversations.history", &bob, json!({"channel": general}))
        .await;
    assert_eq!(v["messages"], json!([]));
    s.stop().await;
}

/// A new user that cannot join #general is removed again: the call fails, and the same call
/// made again creates the user, rather than answering `name_taken` for a user whose token was
/// never given out.
#[tokio::test]
async fn a_user_that_cannot_join_general_is_not_left_behind() {
    let s = Server::start().await;
    let admin = s.admin_token();
    let general = s.general().await;
    // The store refuses new members of #general, as a failing disk would.
    let meta = rusqlite::Connection::open(s.dir.path().join("store").join("meta.sqlite")).unwrap();
    meta.execute_batch(&format!(
        "CREATE TRIGGER refuse_general BEFORE INSERT ON members WHEN NEW.channel = '{general}'
         BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;"
    ))
    .unwrap();
    let (status, v) = s
        .call("admin.users.create", Some(&admin), json!({"name": "erin"}))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(v["error"], "internal_error", "{v}");
    let users = s.ok("users.list", &admin, json!({})).await;
    assert!(
        !users.to_string().contains("\"erin\""),
        "no user is left without a token: {users}"
    );
    meta.execute_batch("DROP TRIGGER refuse_general").unwrap();
    let v = s
        .ok("admin.users.create", &admin, json!({"name": "erin"}))
        .await;
    let erin = v["token"].as_str().unwrap().to_string();
    let v = s.ok("users.conversations", &erin, json!({})).await;
    assert_eq!(v["channels"][0]["id"], general.as_str());
    s.stop().await;
}

/// A bot user (`admin.users.create` with `is_bot`): a bot token, `auth.test`'s `bot_id`, and
/// that id on its messages (in the post's answer and history), which bots check to ignore
/// other bots; a person's messages carry none. A bot cannot be an admin.
#[tokio::test]
async fn a_bot_user_has_a_bot_token_and_its_messages_carry_its_bot_id() {
    let s = Server::start_with_cluster().await;
    let admin = s.admin_token();
    s.err(
        "admin.users.create",
        &admin,
        json!({"name": "rogue", "is_bot": true, "is_admin": true}),
        "invalid_arguments",
    )
    .await;
    let v = s
        .ok(
            "admin.users.create",
            &admin,
            json!({"name": "deploybot", "is_bot": true}),
        )
        .await;
    assert_eq!(v["user"]["is_bot"], true, "{v}");
    let bot_id = v["user"]["id"].as_str().unwrap().to_string();
    assert_eq!(v["user"]["profile"]["bot_id"], bot_id.as_str(), "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("xoxb-"), "{token}");
    let me = s.ok("auth.test", &token, json!({})).await;
    assert_eq!(me["bot_id"], bot_id.as_str(), "{me}");
    // A client that sees the id asks who it is.
    let info = s
        .ok("bots.info", &s.token("bob"), json!({"bot": bot_id}))
        .await;
    assert_eq!(
        (&info["bot"]["name"], &info["bot"]["user_id"]),
        (&json!("deploybot"), &json!(bot_id)),
        "{info}"
    );
    // A person is not a bot, and another workspace's bot is not found either.
    for not_a_bot in [s.user_id("bob"), "UNOSUCHBOT".to_string()] {
        s.err(
            "bots.info",
            &s.token("alice"),
            json!({"bot": not_a_bot}),
            "bot_not_found",
        )
        .await;
    }
    let general = s.general().await;
    let posted = s
        .ok(
            "chat.postMessage",
            &token,
            json!({"channel": general, "text": "deployed"}),
        )
        .await;
    assert_eq!(posted["message"]["bot_id"], bot_id.as_str(), "{posted}");
    s.ok(
        "chat.postMessage",
        &s.token("bob"),
        json!({"channel": general, "text": "thanks"}),
    )
    .await;
    let history = s
        .ok(
            "conversations.history",
            &s.token("bob"),
            json!({"channel": general, "limit": 2}),
        )
        .await;
    let seen: Vec<(&str, Option<&str>)> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["text"].as_str().unwrap(), m["bot_id"].as_str()))
        .collect();
    assert_eq!(
        seen,
        [("thanks", None), ("deployed", Some(bot_id.as_str()))],
        "{history}"
    );
    s.stop().await;
}

/// A bot may give one message a name and an icon of its own (`username`, `icon_emoji`,
/// `icon_url`), as Slack's `chat:write.customize` allows: the message carries Slack's
/// `username` and `icons` in the answer, history and after an edit. A person's message is
/// always drawn as theirs; a malformed name or icon is refused.
#[tokio::test]
async fn a_bot_may_give_a_message_its_own_name_and_icon() {
    let s = Server::start_with_cluster().await;
    let bot = s.bot_token("ci").await;
    let general = s.general().await;
    s.ok("conversations.join", &bot, json!({"channel": general}))
        .await;
    let posted = s
        .ok(
            "chat.postMessage",
            &bot,
            json!({"channel": general, "text": "build 41 passed", "username": "Build: main",
                   "icon_emoji": "white_check_mark"}),
        )
        .await;
    let message = &posted["message"];
    assert_eq!(message["username"], "Build: main", "{posted}");
    // Slack's `bot_profile`: the bot behind the message, whatever name it gave it.
    assert_eq!(message["bot_profile"]["name"], "ci", "{posted}");
    assert_eq!(message["bot_profile"]["id"], message["bot_id"]);
    assert_eq!(message["icons"], json!({"emoji": ":white_check_mark:"}));
    let ts = posted["ts"].as_str().unwrap().to_string();
    let by_url = s
        .ok(
            "chat.postMessage",
            &bot,
            json!({"channel": general, "text": "build 42 failed",
                   "icon_url": "https://ci.example.com/red.png"}),
        )
        .await;
    assert!(by_url["message"].get("username").is_none(), "{by_url}");
    assert_eq!(
        by_url["message"]["icons"]["image_48"],
        "https://ci.example.com/red.png"
    );
    // An edit keeps them.
    let edited = s
        .ok(
            "chat.update",
            &bot,
            json!({"channel": general, "ts": ts, "text": "build 41 passed (retried)"}),
        )
        .await;
    assert_eq!(edited["message"]["username"], "Build: main", "{edited}");
    let history = s
        .ok(
            "conversations.history",
            &s.token("bob"),
            json!({"channel": general, "limit": 2}),
        )
        .await;
    let older = &history["messages"][1];
    assert_eq!(older["text"], "build 41 passed (retried)", "{history}");
    assert_eq!(
        older["bot_profile"]["name"], "ci",
        "kept by the edit: {older}"
    );
    assert_eq!(older["username"], "Build: main");
    assert_eq!(older["icons"]["emoji"], ":white_check_mark:");
    // A person's message is theirs, whatever it asks.
    let by_person = s
        .ok(
            "chat.postMessage",
            &s.token("bob"),
            json!({"channel": general, "text": "hi", "username": "Not Bob"}),
        )
        .await;
    assert!(
        by_person["message"].get("username").is_none()
            && by_person["message"].get("bot_profile").is_none(),
        "{by_person}"
    );
    for (field, value) in [
        ("username", "   "),
        ("username", &"x".repeat(81)),
        ("icon_emoji", "not an emoji!"),
        ("icon_url", "ftp://example.com/i.png"),
        ("icon_url", "not a url"),
    ] {
        s.err(
            "chat.postMessage",
            &bot,
            json!({"channel": general, "text": "x", field: value}),
            "invalid_arguments",
        )
        .await;
    }
    s.stop().await;
}

/// An app attaches metadata to a message (`{"event_type", "event_payload"}`), as Slack's
/// apps tell each other what a message stands for: given back in the answer, in history with
/// `include_all_metadata` (not without, as in Slack), kept by an edit that does not replace
/// it. A person's token may not; a malformed one is refused with Slack's error names.
#[tokio::test]
async fn an_app_attaches_metadata_to_a_message() {
    let s = Server::start_with_cluster().await;
    let bot = s.bot_token("crm").await;
    let general = s.general().await;
    s.ok("conversations.join", &bot, json!({"channel": general}))
        .await;
    let metadata = json!({"event_type": "customer_created",
                          "event_payload": {"crm_id": "123456ABCD", "step": 2}});
    // As a JSON object in a JSON body, and as its text in a form.
    let posted = s
        .ok(
            "chat.postMessage",
            &bot,
            json!({"channel": general, "text": "A new customer record", "metadata": metadata}),
        )
        .await;
    assert_eq!(posted["message"]["metadata"], metadata, "{posted}");
    let ts = posted["ts"].as_str().unwrap().to_string();
    let history = |include: bool| {
        let s = &s;
        let general = general.clone();
        async move {
            s.ok(
                "conversations.history",
                &s.token("bob"),
                json!({"channel": general, "limit": 1, "include_all_metadata": include}),
            )
            .await["messages"][0]
                .clone()
        }
    };
    assert_eq!(history(true).await["metadata"], metadata);
    assert!(
        history(false).await.get("metadata").is_none(),
        "only when asked"
    );
    // An edit keeps it, or replaces it.
    let edited = s
        .ok(
            "chat.update",
            &bot,
            json!({"channel": general, "ts": ts, "text": "A new customer record (updated)"}),
        )
        .await;
    assert_eq!(edited["message"]["metadata"], metadata, "{edited}");
    let replaced =
        json!({"event_type": "customer_updated", "event_payload": {"crm_id": "123456ABCD"}});
    s.ok(
        "chat.update",
        &bot,
        json!({"channel": general, "ts": ts, "text": "updated", "metadata": replaced.to_string()}),
    )
    .await;
    assert_eq!(history(true).await["metadata"], replaced);
    // A thread's replies carry it the same way.
    let replies = s
        .ok(
            "conversations.replies",
            &bot,
            json!({"channel": general, "ts": ts, "include_all_metadata": "true"}),
        )
        .await;
    assert_eq!(replies["messages"][0]["metadata"], replaced, "{replies}");
    // Only an app's.
    s.err(
        "chat.postMessage",
        &s.token("bob"),
        json!({"channel": general, "text": "x", "metadata": metadata}),
        "metadata_must_be_sent_from_app",
    )
    .await;
    let big = json!({"event_type": "blob", "event_payload": {"data": "x".repeat(9000)}});
    for (bad, error) in [
        (json!("not json"), "invalid_metadata_format"),
        (json!([1, 2]), "invalid_metadata_format"),
        (json!({"event_payload": {}}), "invalid_metadata_schema"),
        (
            json!({"event_type": "", "event_payload": {}}),
            "invalid_metadata_schema",
        ),
        (
            json!({"event_type": "x", "event_payload": "text"}),
            "invalid_metadata_schema",
        ),
        (
            json!({"event_type": "x", "event_payload": {}, "extra": 1}),
            "invalid_metadata_schema",
        ),
        (big, "metadata_too_large"),
    ] {
        s.err(
            "chat.postMessage",
            &bot,
            json!({"channel": general, "text": "x", "metadata": bad}),
            error,
        )
        .await;
    }
    s.stop().await;
}

/// Search by reaction: `has::name:` finds messages with that reaction, `hasmy::name:` those
/// the caller reacted to so; each narrows the others (and `has:pin`) and the words; a
/// reaction taken back leaves them.
#[tokio::test]
async fn search_finds_messages_by_their_reactions() {
    let s = Server::start_with_cluster().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let general = s.general().await;
    let a = s.post_ts(&alice, &general, "vote: ship on friday").await;
    let b = s.post_ts(&alice, &general, "vote: ship on monday").await;
    let lunch = s.post_ts(&alice, &general, "lunch at noon").await;
    let react = |token: &String, ts: &String, name: &str, add: bool| {
        let s = &s;
        let body = json!({"channel": general, "timestamp": ts, "name": name});
        let method = if add {
            "reactions.add"
        } else {
            "reactions.remove"
        };
        let token = token.clone();
        async move {
            s.ok(method, &token, body).await;
        }
    };
    react(&bob, &a, "tada", true).await;
    react(&bob, &b, "tada", true).await;
    react(&alice, &b, "tada", true).await;
    react(&alice, &lunch, "eyes", true).await;
    // The words come from the index: wait for it.
    for _ in 0..100 {
        let (_, v) = s
            .call("search.messages", Some(&alice), json!({"query": "vote"}))
            .await;
        if v["messages"]["total"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let found = |token: &String, query: &'static str| {
        let (s, token) = (&s, token.clone());
        async move { s.search_ts(&token, query).await }
    };
    assert_eq!(found(&alice, "has::tada:").await, [b.clone(), a.clone()]);
    assert_eq!(
        found(&alice, "hasmy::tada:").await,
        std::slice::from_ref(&b)
    );
    assert_eq!(found(&bob, "hasmy::tada:").await, [b.clone(), a.clone()]);
    assert_eq!(
        found(&alice, "has::tada: friday").await,
        std::slice::from_ref(&a)
    );
    assert_eq!(
        found(&alice, "has::eyes:").await,
        std::slice::from_ref(&lunch)
    );
    assert!(found(&alice, "has::tada: has::eyes:").await.is_empty());
    assert!(found(&alice, "has::rocket:").await.is_empty());
    s.ok(
        "pins.add",
        &alice,
        json!({"channel": general, "timestamp": a}),
    )
    .await;
    assert_eq!(
        found(&alice, "has::tada: has:pin").await,
        std::slice::from_ref(&a)
    );
    react(&bob, &a, "tada", false).await;
    assert_eq!(found(&alice, "has::tada:").await, std::slice::from_ref(&b));
    let (_, v) = s
        .call(
            "search.messages",
            Some(&alice),
            json!({"query": "hasmy:tada vote"}),
        )
        .await;
    assert_eq!(v["error"], "invalid_arguments", "{v}");
    s.stop().await;
}

/// `reactions.list`: what a user reacted to, the latest first, each message once with its
/// reactions; another user sees only what it can read; paged by cursor; a reaction taken
/// back or a deleted message leaves the list.
#[tokio::test]
async fn reactions_list_gives_what_a_user_reacted_to_that_the_caller_can_read() {
    let s = Server::start_with_cluster().await;
    let (alice, bob, carol) = (s.token("alice"), s.token("bob"), s.token("carol"));
    let general = s.general().await;
    let secret = channel_id(
        &s.ok(
            "conversations.create",
            &alice,
            json!({"name": "reactions-secret", "is_private": true}),
        )
        .await,
    );
    s.ok(
        "conversations.invite",
        &alice,
        json!({"channel": secret, "users": s.user_id("bob")}),
    )
    .await;
    let public = s.post_ts(&alice, &general, "public news").await;
    let private = s.post_ts(&alice, &secret, "private news").await;
    let doomed = s.post_ts(&alice, &general, "soon gone").await;
    for (channel, ts, name) in [
        (&general, &public, "tada"),
        (&general, &public, "eyes"),
        (&secret, &private, "eyes"),
        (&general, &doomed, "wave"),
    ] {
        s.ok(
            "reactions.add",
            &bob,
            json!({"channel": channel, "timestamp": ts, "name": name}),
        )
        .await;
    }
    s.ok(
        "chat.delete",
        &alice,
        json!({"channel": general, "ts": doomed}),
    )
    .await;
    let listed = |token: &String, params: Value| {
        let s = &s;
        let token = token.clone();
        async move { s.ok("reactions.list", &token, params).await }
    };
    let ts_of = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["message"]["ts"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let mine = listed(&bob, json!({})).await;
    assert_eq!(ts_of(&mine), [private.clone(), public.clone()], "{mine}");
    let first = &mine["items"][1];
    assert_eq!(first["type"], "message");
    assert_eq!(first["channel"], general.as_str());
    let names: Vec<&str> = first["message"]["reactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tada", "eyes"], "{first}");
    // Carol is not in the private channel.
    let seen = listed(&carol, json!({"user": s.user_id("bob")})).await;
    assert_eq!(ts_of(&seen), std::slice::from_ref(&public), "{seen}");
    // Paged.
    let page = listed(&bob, json!({"limit": 1})).await;
    assert_eq!(ts_of(&page), std::slice::from_ref(&private));
    let cursor = page["response_metadata"]["next_cursor"].as_str().unwrap();
    assert!(!cursor.is_empty(), "{page}");
    let next = listed(&bob, json!({"limit": 1, "cursor": cursor})).await;
    assert_eq!(ts_of(&next), std::slice::from_ref(&public));
    // Taken back: both of bob's reactions on the public message.
    for name in ["tada", "eyes"] {
        s.ok(
            "reactions.remove",
            &bob,
            json!({"channel": general, "timestamp": public, "name": name}),
        )
        .await;
    }
    assert_eq!(ts_of(&listed(&bob, json!({})).await), [private]);
    assert!(ts_of(&listed(&alice, json!({})).await).is_empty());
    s.err(
        "reactions.list",
        &bob,
        json!({"user": "UNOBODY"}),
        "user_not_found",
    )
    .await;
    s.err(
        "reactions.list",
        &bob,
        json!({"cursor": "bm9wZQ=="}),
        "invalid_cursor",
    )
    .await;
    s.stop().await;
}

/// Pins: a member pins a message (`pins.add`), history shows it (`pinned_to`, `pin_count`),
/// `pins.list` gives the channel's pins newest first with who pinned them, `pins.remove`
/// takes one off, and a deleted message leaves the list. Slack's errors for the rest.
#[tokio::test]
async fn members_pin_messages_to_a_channel() {
    let s = Server::start_with_cluster().await;
    let alice = s.token("alice");
    let bob = s.token("bob");
    let general = s.general().await;
    let post = |text: &'static str| {
        let s = &s;
        let (alice, general) = (alice.clone(), general.clone());
        async move {
            s.ok(
                "chat.postMessage",
                &alice,
                json!({"channel": general, "text": text}),
            )
            .await["ts"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let rules = post("house rules: be kind").await;
    let wiki = post("the wiki is at https://wiki.example.com").await;
    let lunch = post("lunch?").await;
    for ts in [&rules, &wiki] {
        s.ok(
            "pins.add",
            &bob,
            json!({"channel": general, "timestamp": ts}),
        )
        .await;
    }
    s.err(
        "pins.add",
        &alice,
        json!({"channel": general, "timestamp": rules}),
        "already_pinned",
    )
    .await;
    let listed = s.ok("pins.list", &alice, json!({"channel": general})).await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    assert_eq!(items[0]["message"]["ts"], wiki.as_str(), "newest pin first");
    assert_eq!(items[1]["message"]["text"], "house rules: be kind");
    assert_eq!(items[0]["type"], "message");
    assert_eq!(items[0]["channel"], general.as_str());
    assert_eq!(items[0]["created_by"], s.user_id("bob"));
    assert!(items[0]["created"]
        .as_u64()
        .is_some_and(|t| t > 1_700_000_000));
    assert_eq!(items[0]["message"]["pinned_to"], json!([general]));
    let history = s
        .ok(
            "conversations.history",
            &alice,
            json!({"channel": general, "limit": 3}),
        )
        .await;
    assert_eq!(history["pin_count"], 2, "{history}");
    let by_ts = |ts: &str| {
        history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["ts"] == ts)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_ts(&rules)["pinned_to"], json!([general]));
    assert!(by_ts(&lunch).get("pinned_to").is_none());
    // Search finds the pinned ones with `has:pin` (pins are read from the store, the words
    // from the index: wait for the index).
    for _ in 0..50 {
        let (_, v) = s
            .call("search.messages", Some(&alice), json!({"query": "wiki"}))
            .await;
        if v["messages"]["total"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pinned = |query: &'static str| {
        let (s, alice) = (&s, alice.clone());
        async move { s.search_ts(&alice, query).await }
    };
    assert_eq!(pinned("has:pin").await, [wiki.clone(), rules.clone()]);
    assert_eq!(pinned("has:pin wiki").await, std::slice::from_ref(&wiki));
    assert_eq!(pinned("has:pin lunch").await, Vec::<String>::new());
    // Off again: removed, or deleted.
    s.ok(
        "pins.remove",
        &alice,
        json!({"channel": general, "timestamp": rules}),
    )
    .await;
    s.err(
        "pins.remove",
        &alice,
        json!({"channel": general, "timestamp": rules}),
        "no_pin",
    )
    .await;
    s.ok(
        "chat.delete",
        &alice,
        json!({"channel": general, "ts": wiki}),
    )
    .await;
    let listed = s.ok("pins.list", &bob, json!({"channel": general})).await;
    assert_eq!(listed["items"], json!([]), "{listed}");
    for (params, error) in [
        (json!({"channel": general}), "no_item_specified"),
        (
            json!({"channel": general, "timestamp": wiki}),
            "message_not_found",
        ),
        (
            json!({"channel": general, "timestamp": "1.000001"}),
            "message_not_found",
        ),
        (
            json!({"channel": "CNOPE", "timestamp": lunch}),
            "channel_not_found",
        ),
    ] {
        s.err("pins.add", &alice, params, error).await;
    }
    // Only members pin (bob is not in alice's #ops).
    let ops = s
        .ok("conversations.create", &alice, json!({"name": "ops"}))
        .await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deploy = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": ops, "text": "deploy at 5"}),
        )
        .await["ts"]
        .as_str()
        .unwrap()
        .to_string();
    s.err(
        "pins.add",
        &bob,
        json!({"channel": ops, "timestamp": deploy}),
        "not_in_channel",
    )
    .await;
    s.stop().await;
}

/// `chat.meMessage`: a `/me` message, Slack's subtype `me_message`, in history and after an
/// edit; its text only, and the answer names where and when.
#[tokio::test]
async fn me_messages_are_their_own_subtype() {
    let s = Server::start_with_cluster().await;
    let alice = s.token("alice");
    let general = s.general().await;
    let answer = s
        .ok(
            "chat.meMessage",
            &alice,
            json!({"channel": general, "text": "is out for lunch"}),
        )
        .await;
    assert_eq!(answer["channel"], general.as_str(), "{answer}");
    assert!(answer.get("message").is_none(), "{answer}");
    let ts = answer["ts"].as_str().unwrap().to_string();
    let newest = || {
        let (s, general, alice) = (&s, general.clone(), alice.clone());
        async move {
            s.ok(
                "conversations.history",
                &alice,
                json!({"channel": general, "limit": 1}),
            )
            .await["messages"][0]
                .clone()
        }
    };
    let m = newest().await;
    assert_eq!(
        (m["subtype"].as_str(), m["ts"].as_str()),
        (Some("me_message"), Some(ts.as_str())),
        "{m}"
    );
    assert_eq!(m["text"], "is out for lunch");
    s.ok(
        "chat.update",
        &alice,
        json!({"channel": general, "ts": ts, "text": "is back"}),
    )
    .await;
    let m = newest().await;
    assert_eq!(
        (m["subtype"].as_str(), m["text"].as_str()),
        (Some("me_message"), Some("is back")),
        "{m}"
    );
    s.err(
        "chat.meMessage",
        &alice,
        json!({"channel": general}),
        "no_text",
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn admin_users_create_needs_an_admin_token() {
    let s = Server::start().await;
    s.err(
        "admin.users.create",
        &s.token("bob"),
        json!({"name": "dave"}),
        "not_allowed_token_type",
    )
    .await;
    // Alice is an admin, but her user token is not an admin token.
    s.err(
        "admin.users.create",
        &s.token("alice"),
        json!({"name": "dave"}),
        "not_allowed_token_type",
    )
    .await;
    let admin = s.admin_token();
    s.err(
        "admin.users.create",
        &admin,
        json!({"name": "Dave!"}),
        "invalid_name_specials",
    )
    .await;
    s.err(
        "admin.users.create",
        &admin,
        json!({"name": "bob"}),
        "name_taken",
    )
    .await;
    let v = s
        .ok(
            "admin.users.create",
            &admin,
            json!({"name": "dave", "real_name": "Dave D"}),
        )
        .await;
    assert_eq!(v["user"]["name"], "dave");
    assert_eq!(v["user"]["real_name"], "Dave D");
    assert_eq!(v["user"]["is_admin"], false);
    let dave = v["token"].as_str().unwrap().to_string();
    let me = s.ok("auth.test", &dave, json!({})).await;
    assert_eq!(me["user"], "dave");
    // New users join #general.
    let v = s.ok("users.conversations", &dave, json!({})).await;
    assert_eq!(v["channels"][0]["name"], "general");
    let v = s
        .ok("users.info", &dave, json!({"user": s.user_id("alice")}))
        .await;
    assert_eq!(v["user"]["is_admin"], true);
    assert_eq!(v["user"]["profile"]["real_name"], "Alice");
    let v = s.ok("users.list", &dave, json!({"limit": 2})).await;
    assert_eq!(v["members"].as_array().unwrap().len(), 2);
    assert!(!v["response_metadata"]["next_cursor"]
        .as_str()
        .unwrap()
        .is_empty());
    s.stop().await;
}

/// An admin deactivates a user: its tokens (user and bot alike) are refused with
/// `account_inactive`, its hooks post nothing, it stays listed as `deleted`, and the
/// workspace hears `user_change`; brought back, its tokens work again.
#[tokio::test]
async fn an_admin_deactivates_and_reactivates_a_user() {
    let s = Server::start_with_cluster().await;
    let admin = s.admin_token();
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let bob_id = s.user_id("bob");
    let general = s.general().await;
    let hook = s
        .ok("hooks.create", &bob, json!({"channel": general}))
        .await["path"]
        .as_str()
        .unwrap()
        .to_string();
    let made = s
        .ok(
            "admin.users.create",
            &admin,
            json!({"name": "deploy-bot", "is_bot": true}),
        )
        .await;
    let (bot, bot_id) = (
        made["token"].as_str().unwrap().to_string(),
        made["user"]["id"].as_str().unwrap().to_string(),
    );

    // Only with an admin token, never oneself, only users of the workspace.
    for token in [&bob, &alice] {
        s.err(
            "admin.users.setInactive",
            token,
            json!({"user": bob_id}),
            "not_allowed_token_type",
        )
        .await;
    }
    s.err(
        "admin.users.setInactive",
        &admin,
        json!({"user": s.user_id("alice")}),
        "invalid_arguments",
    )
    .await;
    for nobody in ["UNOBODY", "not-a-user", ""] {
        s.err(
            "admin.users.setInactive",
            &admin,
            json!({"user": nobody}),
            "user_not_found",
        )
        .await;
    }

    let before = crate::metrics::USERS_DEACTIVATED
        .with_label_values(&["deactivated"])
        .get();
    for (token, id) in [(&bob, &bob_id), (&bot, &bot_id)] {
        let v = s
            .ok("admin.users.setInactive", &admin, json!({"user": id}))
            .await;
        assert_eq!(v["user"]["deleted"], true, "{v}");
        for method in [
            "auth.test",
            "conversations.list",
            "rtm.connect",
            "apps.connections.open",
        ] {
            s.err(method, token, json!({}), "account_inactive").await;
        }
        s.err(
            "chat.postMessage",
            token,
            json!({"channel": general, "text": "still here?"}),
            "account_inactive",
        )
        .await;
    }
    assert_eq!(
        crate::metrics::USERS_DEACTIVATED
            .with_label_values(&["deactivated"])
            .get(),
        before + 2
    );
    // Again is no error.
    s.ok("admin.users.setInactive", &admin, json!({"user": bob_id}))
        .await;
    let (status, _, text) = s
        .hook(
            &hook,
            "application/json",
            r#"{"text":"from a leaver's hook"}"#,
        )
        .await;
    assert_eq!((status.as_u16(), text.as_str()), (404, "no_service"));
    // Still listed, as deleted.
    let info = s.ok("users.info", &alice, json!({"user": bob_id})).await;
    assert_eq!(info["user"]["deleted"], true);
    let listed = s.ok("users.list", &alice, json!({})).await;
    assert!(listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["id"] == bob_id.as_str() && u["deleted"] == true));
    // The workspace (and the gateways, which end the user's sessions) heard it.
    let mut heard = false;
    for _ in 0..200 {
        heard = s.relayed_events().iter().any(|e| match e {
            shared::protocol::UserEvent::Notice { event, .. } => {
                let v: Value = serde_json::from_str(event).unwrap();
                v["type"] == "user_change"
                    && v["user"]["id"] == bob_id.as_str()
                    && v["user"]["deleted"] == true
            }
            _ => false,
        });
        if heard {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(heard, "no user_change with deleted");
    // Flannel's caches hear it too: the profile they keep says deleted.
    assert!(s.relayed_events().iter().any(|e| matches!(
        e,
        shared::protocol::UserEvent::UserChanged { user, .. } if user.id.0 == bob_id && user.deleted
    )));

    // Back: the same tokens work again.
    let v = s
        .ok("admin.users.setActive", &admin, json!({"user": bob_id}))
        .await;
    assert_eq!(v["user"]["deleted"], false);
    assert_eq!(
        s.ok("auth.test", &bob, json!({})).await["user_id"],
        bob_id.as_str()
    );
    let (status, _, text) = s
        .hook(&hook, "application/json", r#"{"text":"back again"}"#)
        .await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "ok"));
    s.stop().await;
}

#[tokio::test]
async fn rtm_connect_hands_out_gateways_round_robin() {
    let s = Server::start().await;
    let bob = s.token("bob");
    let a = s.ok("rtm.connect", &bob, json!({})).await;
    let b = s.ok("rtm.connect", &bob, json!({})).await;
    let urls = [a["url"].as_str().unwrap(), b["url"].as_str().unwrap()];
    assert!(
        urls.iter()
            .any(|u| u.starts_with("ws://127.0.0.1:1/rtm?token=")),
        "{urls:?}"
    );
    assert!(
        urls.iter()
            .any(|u| u.starts_with("ws://127.0.0.2:2/rtm?token=")),
        "{urls:?}"
    );
    assert!(urls[0].ends_with(&bob));
    assert_eq!(a["self"]["id"], s.user_id("bob"));
    assert_eq!(a["self"]["name"], "bob");
    assert_eq!(a["team"]["id"], s.demo["workspace"]);
    assert_eq!(a["team"]["name"], "demo");
    s.stop().await;
}

/// Socket Mode: the same gateways, with `mode=socket`; the bot's own token is its app token.
#[tokio::test]
async fn apps_connections_open_hands_out_socket_mode_urls() {
    let s = Server::start().await;
    let bob = s.token("bob");
    let v = s.ok("apps.connections.open", &bob, json!({})).await;
    let url = v["url"].as_str().unwrap();
    assert!(url.starts_with("ws://127.0.0."), "{url}");
    assert!(url.contains(&format!("token={bob}")), "{url}");
    assert!(url.ends_with("&mode=socket"), "{url}");
    s.err(
        "apps.connections.open",
        "xapp-1-nonsense",
        json!({}),
        "invalid_auth",
    )
    .await;
    s.stop().await;
}

/// Socket Mode: all of an app's connections go to one gateway (the first of the app's own
/// order that accepts a connection), so that gateway can give each event to one of them.
#[tokio::test]
async fn apps_connections_open_sends_an_app_s_connections_to_one_gateway_that_is_up() {
    // Two gateways that accept connections (listening sockets) and one that refuses them.
    let up_a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_url = format!("ws://{}/rtm", down.local_addr().unwrap());
    drop(down);
    let urls = vec![
        format!("ws://{}/rtm", up_a.local_addr().unwrap()),
        format!("ws://{}/rtm", up_b.local_addr().unwrap()),
        down_url.clone(),
    ];
    let configured = urls.clone();
    let s = Server::start_with(move |c| c.webapp.gateway_urls = configured).await;
    let unreachable = crate::metrics::GATEWAY_UNREACHABLE.get();
    let mut given = std::collections::HashSet::new();
    let mut moved = 0;
    // Many bots, so that some rank the refusing gateway first (all of 30 miss it once in
    // 200,000 runs).
    for i in 0..30 {
        let token = s.bot_token(&format!("bot{i}")).await;
        let me = s.ok("auth.test", &token, json!({})).await;
        let user = me["user_id"].as_str().unwrap();
        let ranked = shared::ring::rendezvous(&urls, user.as_bytes());
        let expected = ranked.iter().find(|u| **u != down_url).unwrap();
        if ranked[0] == down_url {
            moved += 1;
        }
        for _ in 0..3 {
            let v = s.ok("apps.connections.open", &token, json!({})).await;
            let url = v["url"].as_str().unwrap();
            assert!(
                url.starts_with(&format!("{expected}?token=")),
                "{url}: {expected}"
            );
            assert!(url.ends_with("&mode=socket"), "{url}");
            given.insert(expected.to_string());
        }
    }
    assert!(moved > 0, "some bot ranked the refusing gateway first");
    assert!(
        crate::metrics::GATEWAY_UNREACHABLE.get() > unreachable,
        "the refusal is counted"
    );
    assert_eq!(given.len(), 2, "apps spread over the gateways that are up");
    // RTM sessions are still spread round-robin, over every gateway.
    let bob = s.token("bob");
    let mut rtm = std::collections::HashSet::new();
    for _ in 0..3 {
        let v = s.ok("rtm.connect", &bob, json!({})).await;
        rtm.insert(
            v["url"]
                .as_str()
                .unwrap()
                .split('?')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(rtm.len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn errors_and_requests_are_counted() {
    let s = Server::start().await;
    let bob = s.token("bob");
    s.err(
        "conversations.info",
        &bob,
        json!({"channel": "nope"}),
        "channel_not_found",
    )
    .await;
    s.call("made.up", Some(&bob), json!({})).await;
    let text = s.metrics_text().await;
    assert!(text.contains(r#"switchboard_webapp_errors_total{error="channel_not_found",method="conversations.info"}"#), "{text}");
    assert!(text.contains(r#"switchboard_webapp_requests_total{method="conversations.info"}"#));
    assert!(text.contains(r#"switchboard_webapp_requests_total{method="unknown"}"#));
    assert!(text.contains("switchboard_webapp_request_duration_seconds_bucket"));
    assert!(!text.contains("made.up"));
    s.stop().await;
}

#[tokio::test]
async fn seeding_twice_keeps_ids_and_tokens() {
    let s = Server::start().await;
    let again = crate::seed_demo(&s.store, &s.signer, s.dir.path())
        .await
        .unwrap();
    assert_eq!(again, s.demo);
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(s.dir.path().join("tokens.json")).unwrap()).unwrap();
    assert_eq!(on_disk, s.demo);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.dir.path().join("tokens.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "tokens readable by their owner only");
    }
    let ws = WorkspaceId(s.demo["workspace"].as_str().unwrap().into());
    assert_eq!(s.store.users(&ws).await.unwrap().len(), 3);
    let general = s.general().await;
    assert_eq!(s.store.members(&ChannelId(general)).await.unwrap().len(), 3);
    let admin = s.signer.verify(&s.admin_token()).unwrap();
    assert!(admin.admin);
    assert_eq!(admin.user.0, s.user_id("alice"));
    // Tokens signed with a rotated secret are re-issued.
    let rotated = TokenSigner::new(b"rotated");
    let fresh = crate::seed_demo(&s.store, &rotated, s.dir.path())
        .await
        .unwrap();
    assert_eq!(fresh["workspace"], s.demo["workspace"]);
    assert_eq!(fresh["users"]["bob"]["id"], s.demo["users"]["bob"]["id"]);
    assert_ne!(
        fresh["users"]["bob"]["token"],
        s.demo["users"]["bob"]["token"]
    );
    assert!(rotated
        .verify(fresh["users"]["bob"]["token"].as_str().unwrap())
        .is_ok());
    s.stop().await;
}

#[tokio::test]
async fn admin_helpers_work_on_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(dir.path(), 1).unwrap());
    let signer = TokenSigner::new(b"s");
    let ws = crate::create_workspace(&store, "acme").await.unwrap();
    assert!(crate::create_workspace(&store, "acme").await.is_err());
    assert!(crate::create_workspace(&store, "Bad Name").await.is_err());
    let (boss, token) = crate::create_user(
        &store,
        &signer,
        "acme",
        "boss",
        crate::UserKind {
            admin: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let claims = signer.verify(&token).unwrap();
    assert!(claims.admin && claims.user == boss.id && claims.workspace == ws.id);
    assert!(
        crate::create_user(&store, &signer, "acme", "boss", crate::UserKind::default())
            .await
            .is_err()
    );
    assert!(
        crate::create_user(&store, &signer, "nope", "x", crate::UserKind::default())
            .await
            .is_err()
    );
    // An email is checked, kept as stored (lower case), and unique in the workspace; a
    // refused one leaves no user behind.
    let (ann, _) = crate::create_user(
        &store,
        &signer,
        "acme",
        "ann",
        crate::UserKind {
            email: Some("Ann@Example.COM"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(ann.email, "ann@example.com");
    let found = store
        .user_by_email(&ws.id, "ann@example.com")
        .await
        .unwrap()
        .expect("found by email");
    assert_eq!(found.id, ann.id);
    for (name, email, says) in [
        ("ann2", "ANN@example.com", "is another user's"),
        ("bad", "not an address", "invalid email"),
    ] {
        let err = crate::create_user(
            &store,
            &signer,
            "acme",
            name,
            crate::UserKind {
                email: Some(email),
                ..Default::default()
            },
        )
        .await
        .expect_err(email)
        .to_string();
        assert!(err.contains(says), "{email}: {err}");
        assert!(
            store.user_by_name(&ws.id, name).await.unwrap().is_none(),
            "{name} was left"
        );
    }
    let t = crate::issue_token(&store, &signer, "acme", "boss")
        .await
        .unwrap();
    assert_eq!(signer.verify(&t).unwrap().user, boss.id);
    assert!(crate::issue_token(&store, &signer, "acme", "ghost")
        .await
        .is_err());
}

#[tokio::test]
async fn search_finds_acknowledged_messages_with_slack_modifiers_and_permissions() {
    let s = Server::start().await;
    let alice = s.token("alice");
    let bob = s.token("bob");
    let ws = WorkspaceId(s.demo["workspace"].as_str().unwrap().to_string());
    let general = ChannelId(s.demo["general"].as_str().unwrap().to_string());
    let (_, v) = s
        .call(
            "conversations.create",
            Some(&alice),
            json!({"name": "secret", "is_private": true}),
        )
        .await;
    let secret = ChannelId(v["channel"]["id"].as_str().unwrap().to_string());
    let append = |channel: &ChannelId, seq: Seq, user: &str, text: &str| {
        stored(&ws, channel, seq, UserId(s.user_id(user)), text)
    };
    s.store
        .append(&append(
            &general,
            1,
            "alice",
            "The release train leaves at noon",
        ))
        .await
        .unwrap();
    s.store
        .append(&append(
            &general,
            2,
            "bob",
            "release notes at https://example.com",
        ))
        .await
        .unwrap();
    s.store
        .append(&append(&general, 3, "bob", "lunch?"))
        .await
        .unwrap();
    s.store
        .append(&append(&secret, 1, "alice", "secret release plans"))
        .await
        .unwrap();

    // Indexed from the change feed within a bounded wait.
    let mut found = Value::Null;
    for _ in 0..50 {
        let (_, v) = s
            .call("search.messages", Some(&alice), json!({"query": "release"}))
            .await;
        if v["messages"]["total"] == 3 {
            found = v;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(found["ok"], true, "{found}");
    assert_eq!(found["messages"]["total"], 3);
    // Bob is not in #secret: he finds only the public ones.
    let (_, v) = s
        .call("search.messages", Some(&bob), json!({"query": "release"}))
        .await;
    assert_eq!(v["messages"]["total"], 2, "{v}");
    let (_, v) = s
        .call(
            "search.messages",
            Some(&bob),
            json!({"query": "release in:#secret"}),
        )
        .await;
    assert_eq!(v["messages"]["total"], 0, "{v}");
    // Modifiers.
    let (_, v) = s
        .call(
            "search.messages",
            Some(&alice),
            json!({"query": "release from:@bob has:link"}),
        )
        .await;
    assert_eq!(v["messages"]["total"], 1, "{v}");
    assert_eq!(v["messages"]["matches"][0]["username"], "bob");
    let (_, v) = s
        .call(
            "search.messages",
            Some(&alice),
            json!({"query": "\"release train\" in:#general", "highlight": true}),
        )
        .await;
    assert_eq!(v["messages"]["total"], 1, "{v}");
    assert!(v["messages"]["matches"][0]["text"]
        .as_str()
        .unwrap()
        .contains('\u{e000}'));
    let (_, v) = s
        .call(
            "search.messages",
            Some(&alice),
            json!({"query": "release -train", "sort": "timestamp", "count": 1}),
        )
        .await;
    assert_eq!(v["messages"]["total"], 2, "{v}");
    assert_eq!(v["messages"]["paging"]["pages"], 2);
    assert_eq!(v["messages"]["matches"][0]["seq"], 2, "newest first");
    // `during:` a day, month or year (UTC): alice's two releases are of 2026-11-25.
    for (period, total) in [
        ("2026-11-25", 2),
        ("2026-11", 2),
        ("2026", 2),
        ("2026-11-24", 0),
        ("2026-10", 0),
        ("2025", 0),
    ] {
        let (_, v) = s
            .call(
                "search.messages",
                Some(&alice),
                json!({"query": format!("release from:@alice during:{period}")}),
            )
            .await;
        assert_eq!(v["messages"]["total"], total, "during:{period}: {v}");
    }
    // Bad queries are clear errors.
    for bad in [
        json!({}),
        json!({"query": "x during:someday"}),
        json!({"query": "x before:tomorrowish"}),
        json!({"query": "x", "count": "zero"}),
        json!({"query": "\"open"}),
    ] {
        let (status, v) = s.call("search.messages", Some(&alice), bad.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["error"], "invalid_arguments", "{bad} -> {v}");
    }
    let _ = &s.signer;
}

/// A posted message as the channel's owner would store it, written straight to the store by
/// the search tests (at a fixed time: 2026-11-25).
pub(crate) fn stored(
    ws: &WorkspaceId,
    channel: &ChannelId,
    seq: Seq,
    user: UserId,
    text: &str,
) -> Message {
    Message {
        workspace: ws.clone(),
        channel: channel.clone(),
        seq,
        ts: Ts(1_795_600_000_000_000 + seq),
        user,
        text: text.into(),
        client_msg_id: None,
        thread_ts: None,
        kind: shared::protocol::MessageKind::Posted,
        previous: None,
        broadcast: false,
        bot: false,
        rich: None,
    }
}

/// `in:@user`, `to:@user` / `to:me`, `from:me` and `is:thread`: direct messages and threads.
#[tokio::test]
async fn search_finds_direct_messages_and_thread_replies() {
    let s = Server::start().await;
    let alice = s.token("alice");
    let bob = s.token("bob");
    let ws = WorkspaceId(s.demo["workspace"].as_str().unwrap().to_string());
    let general = ChannelId(s.demo["general"].as_str().unwrap().to_string());
    let open = |token: String, users: String| {
        let s = &s;
        async move {
            let (_, v) = s
                .call(
                    "conversations.open",
                    Some(&token),
                    json!({ "users": users }),
                )
                .await;
            ChannelId(v["channel"]["id"].as_str().expect("a DM").to_string())
        }
    };
    let (bob_id, carol_id) = (s.user_id("bob"), s.user_id("carol"));
    let with_bob = open(alice.clone(), bob_id.clone()).await;
    let with_carol = open(alice.clone(), carol_id.clone()).await;
    let group = open(alice.clone(), format!("{bob_id},{carol_id}")).await;
    let message = |channel: &ChannelId, seq: Seq, user: &str, text: &str| {
        stored(&ws, channel, seq, UserId(s.user_id(user)), text)
    };
    let root = message(&general, 1, "alice", "deploy plan for friday");
    let mut reply = message(&general, 2, "bob", "deploy looks fine to me");
    reply.thread_ts = Some(root.ts);
    for m in [
        root,
        reply,
        message(&with_bob, 1, "alice", "deploy: can you review?"),
        message(&with_bob, 2, "bob", "deploy reviewed"),
        message(&with_carol, 1, "carol", "deploy question"),
        message(&group, 1, "carol", "deploy party"),
        message(&group, 2, "bob", "deploy cake"),
    ] {
        s.store.append(&m).await.unwrap();
    }
    let search = |token: &str, query: &str| {
        let s = &s;
        let (token, query) = (token.to_string(), query.to_string());
        async move {
            let (_, v) = s
                .call(
                    "search.messages",
                    Some(&token),
                    json!({ "query": query, "sort": "timestamp" }),
                )
                .await;
            assert_eq!(v["ok"], true, "{query}: {v}");
            let mut texts: Vec<String> = v["messages"]["matches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["text"].as_str().unwrap().to_string())
                .collect();
            texts.sort();
            texts
        }
    };
    // Indexed from the change feed within a bounded wait.
    for _ in 0..50 {
        if search(&alice, "deploy").await.len() == 7 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(search(&alice, "deploy").await.len(), 7);
    assert_eq!(
        search(&alice, "deploy in:@bob").await,
        ["deploy reviewed", "deploy: can you review?"],
        "the 1:1 with bob, not the group"
    );
    assert_eq!(
        search(&alice, &format!("in:<@{carol_id}>")).await,
        ["deploy question"]
    );
    assert_eq!(
        search(&alice, "deploy to:me").await,
        [
            "deploy cake",
            "deploy party",
            "deploy question",
            "deploy reviewed"
        ],
        "direct messages by the others"
    );
    assert_eq!(
        search(&alice, "to:@bob").await,
        ["deploy party", "deploy: can you review?"],
        "in bob's direct conversations, not by him"
    );
    assert_eq!(
        search(&alice, "deploy from:me").await,
        ["deploy plan for friday", "deploy: can you review?"]
    );
    assert_eq!(
        search(&alice, "is:thread").await,
        ["deploy looks fine to me"]
    );
    assert_eq!(
        search(&alice, "deploy is:thread from:@bob").await,
        ["deploy looks fine to me"]
    );
    // Bob reads his own: not alice's 1:1 with carol, whatever he names.
    assert_eq!(search(&bob, "in:@carol").await, Vec::<String>::new());
    assert_eq!(
        search(&bob, "deploy to:me").await,
        ["deploy party", "deploy: can you review?"]
    );
    assert_eq!(search(&bob, "to:@nobody-here").await, Vec::<String>::new());
    // What is not supported says so.
    let (_, v) = s
        .call(
            "search.messages",
            Some(&alice),
            json!({ "query": "deploy is:saved" }),
        )
        .await;
    assert_eq!(v["error"], "invalid_arguments", "{v}");
}

/// Profile, channel and read-position methods, and the Flannel snapshot.
mod flannel_methods;

/// A stand-in admin server on the real mesh, for tests whose posts must be acknowledged.
mod cluster;

/// Posting with `client_msg_id` (and hooks with `Idempotency-Key`) through an acknowledging
/// admin server.
mod posts;

/// The order of the changes relayed to gateways and caches.
mod relays;

/// `conversations.kick`: who may remove whom, and that a removal is relayed as a leave is.
mod kick;

/// `team.info`, `rtm.start` and `chat.getPermalink`.
mod team_and_links;

/// Direct messages: the other member of a 1:1, group sizes, posting to a user id.
mod direct_messages;

/// A call's relays are bounded in time: an unreachable admin server delays a call by at most
/// the relay deadline.
mod relay_deadline;

/// `conversations.invite` of users who cannot be invited.
mod invites;

/// Edits and deletions by the author or an admin from outside the channel.
mod outside_changes;

/// A channel whose creation stopped before its first member is completed by a retry.
mod unfinished_create;

/// `chat.scheduleMessage`, `chat.scheduledMessages.list`, `chat.deleteScheduledMessage` and
/// the scheduler that posts when due.
mod scheduled;

/// Importing a Slack export.
mod import;

/// Files: upload URLs, sharing, serving, listing, deleting.
mod files;

/// User groups: unique names and handles, disabling, members, events, races.
mod usergroups;

/// Custom emoji: added, aliased, renamed and removed by admins, listed by all.
mod emoji;

/// Channel bookmarks: kept by members, listed by readers, announced to the channel.
mod bookmarks;

/// `auth.revoke`: one token refused, on every node, its sessions told.
mod revoke;

/// Do Not Disturb: snoozes set, seen, ended and lapsed; `dnd_updated` and `dnd_updated_user`.
mod dnd;

/// `search.messages` by `cursor`, and what its matches carry of their messages.
mod search_messages;

/// An app's request URL that is not a public address is refused (unless
/// `webapp.private_request_urls`): the Web API does not call into its own network for an app.
#[tokio::test]
async fn request_urls_that_are_not_public_addresses_are_refused() {
    let s = Server::start().await;
    let bot = s.bot_token("pager").await;
    for url in [
        "http://127.0.0.1:3000/slack/events",
        "http://localhost:3000/slack/events",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/events",
        "http://192.168.0.10/events",
    ] {
        let (_, v) = s
            .call(
                "apps.eventSubscriptions.set",
                Some(&bot),
                json!({ "request_url": url }),
            )
            .await;
        assert_eq!(v["error"], "url_verification_failed", "{url}: {v}");
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("public address") && detail.contains("webapp.private_request_urls"),
            "{url}: {v}"
        );
    }
    // Nothing was kept.
    let v = s.ok("apps.eventSubscriptions.info", &bot, json!({})).await;
    assert_eq!(v["request_url"], "", "{v}");
    let text = s.metrics_text().await;
    let counted = r#"switchboard_webapp_event_subscriptions_total{event="address_refused"} 5"#;
    assert!(text.contains(counted), "{counted} in {text}");
}

/// `conversations.info` gives a member its read position and unread messages as Slack does:
/// others' messages shown in the channel (broadcast replies too) that are still there, not
/// reactions, edits, thread replies or the member's own posts.
#[tokio::test]
async fn conversations_info_counts_a_members_unread_messages() {
    let s = Server::start_with_cluster().await;
    let (alice, bob, carol) = (s.token("alice"), s.token("bob"), s.token("carol"));
    let v = s
        .ok("conversations.create", &alice, json!({"name": "unread"}))
        .await;
    let ch = v["channel"]["id"].as_str().unwrap().to_string();
    s.ok("conversations.join", &bob, json!({"channel": ch}))
        .await;
    let info = |token: &str| {
        let (s, token, ch) = (&s, token.to_string(), ch.clone());
        async move {
            s.ok("conversations.info", &token, json!({"channel": ch}))
                .await["channel"]
                .clone()
        }
    };
    let v = info(&bob).await;
    assert_eq!(v["last_read"], "0000000000.000000", "{v}");
    assert_eq!(v["unread_count"], 0, "{v}");
    let post = |token: &str, extra: Value| {
        let (s, token, ch) = (&s, token.to_string(), ch.clone());
        async move { s.post_with(&token, &ch, "a message", extra).await }
    };
    let first = post(&alice, json!({})).await;
    let second = post(&alice, json!({})).await;
    s.ok(
        "reactions.add",
        &bob,
        json!({"channel": ch, "timestamp": first, "name": "eyes"}),
    )
    .await;
    s.ok(
        "chat.update",
        &alice,
        json!({"channel": ch, "ts": second, "text": "edited"}),
    )
    .await;
    post(&alice, json!({"thread_ts": first})).await;
    post(&alice, json!({"thread_ts": first, "reply_broadcast": true})).await;
    post(&bob, json!({})).await;
    let third = post(&alice, json!({})).await;
    s.ok("chat.delete", &alice, json!({"channel": ch, "ts": third}))
        .await;

    // bob: the two messages and the broadcast reply.
    let v = info(&bob).await;
    assert_eq!(v["unread_count"], 3, "{v}");
    assert_eq!(v["unread_count_display"], 3, "{v}");
    // alice: bob's message.
    let v = info(&alice).await;
    assert_eq!(v["unread_count"], 1, "{v}");
    // Marked read at the second message: the broadcast reply is left.
    s.ok(
        "conversations.mark",
        &bob,
        json!({"channel": ch, "ts": second}),
    )
    .await;
    let v = info(&bob).await;
    assert_eq!(v["last_read"], second.as_str(), "{v}");
    assert_eq!(v["unread_count"], 1, "{v}");
    // bob's sessions hear it, to clear the channel's unread mark on his other clients.
    let bob_id = s.user_id("bob");
    let marked = s.user_notices(&bob_id, "channel_marked", 1).await;
    let marked = marked.first().expect("channel_marked was relayed");
    assert_eq!(marked["channel"], ch.as_str(), "{marked}");
    assert_eq!(marked["ts"], second.as_str(), "{marked}");
    assert_eq!(marked["unread_count_display"], 1, "{marked}");
    assert!(marked["seq"].as_u64().is_some(), "{marked}");
    // A DM's mark is `im_marked`.
    let carol_id = s.user_id("carol");
    let dm = s
        .ok("conversations.open", &bob, json!({"users": carol_id}))
        .await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let said = s
        .ok(
            "chat.postMessage",
            &carol,
            json!({"channel": dm, "text": "hi"}),
        )
        .await;
    s.ok(
        "conversations.mark",
        &bob,
        json!({"channel": dm, "ts": said["ts"]}),
    )
    .await;
    let marked = s.user_notices(&bob_id, "im_marked", 1).await;
    let marked = marked.first().expect("im_marked was relayed");
    assert_eq!(marked["channel"], dm.as_str(), "{marked}");
    assert_eq!(marked["unread_count"], 0, "{marked}");
    // Not a member: no read position.
    let v = info(&carol).await;
    assert_eq!(v["is_member"], false, "{v}");
    assert!(
        v.get("last_read").is_none() && v.get("unread_count").is_none(),
        "{v}"
    );
}

/// `conversations.info` and `channel_marked` count the unread messages that mention the
/// member (`mention_count`, Slack's badge): its id, `<!channel>` / `<!here>` /
/// `<!everyone>`, an enabled user group it is in, as each message reads now; in a DM every
/// unread message.
#[tokio::test]
async fn unread_mentions_are_counted_as_the_messages_read_now() {
    let s = Server::start_with_cluster().await;
    let (alice, bob, carol) = (s.token("alice"), s.token("bob"), s.token("carol"));
    let (bob_id, carol_id) = (s.user_id("bob"), s.user_id("carol"));
    let ch = s
        .ok("conversations.create", &alice, json!({"name": "mentions"}))
        .await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.ok("conversations.join", &bob, json!({"channel": ch}))
        .await;
    let group = |name: &str, users: &str| {
        let (s, alice, name, users) = (&s, alice.clone(), name.to_string(), users.to_string());
        async move {
            let id = s
                .ok("usergroups.create", &alice, json!({"name": name}))
                .await["usergroup"]["id"]
                .as_str()
                .unwrap()
                .to_string();
            s.ok(
                "usergroups.users.update",
                &alice,
                json!({"usergroup": id, "users": users}),
            )
            .await;
            id
        }
    };
    let oncall = group("On call", &bob_id).await;
    let design = group("Design", &carol_id).await;
    let post = |token: &str, text: String, extra: Value| {
        let (s, token, ch) = (&s, token.to_string(), ch.clone());
        async move { s.post_with(&token, &ch, &text, extra).await }
    };
    let counts = |token: &str| {
        let (s, token, ch) = (&s, token.to_string(), ch.clone());
        async move {
            let v = s
                .ok("conversations.info", &token, json!({"channel": ch}))
                .await["channel"]
                .clone();
            assert_eq!(v["mention_count"], v["mention_count_display"], "{v}");
            (
                v["unread_count"].as_u64().unwrap(),
                v["mention_count"].as_u64().unwrap(),
            )
        }
    };
    assert_eq!(counts(&bob).await, (0, 0));
    post(&alice, "hi all".into(), json!({})).await;
    post(&alice, format!("<@{bob_id}> look"), json!({})).await;
    let everyone = post(&alice, "<!channel> standup".into(), json!({})).await;
    let paged = post(
        &alice,
        format!("<!subteam^{oncall}|@oncall> paged"),
        json!({}),
    )
    .await;
    post(
        &alice,
        format!("<!subteam^{design}|@design> review"),
        json!({}),
    )
    .await;
    let later = post(&alice, "later".into(), json!({})).await;
    s.ok(
        "chat.update",
        &alice,
        json!({"channel": ch, "ts": later, "text": format!("<@{bob_id}|bob> now")}),
    )
    .await;
    let gone = post(&alice, format!("<@{bob_id}> never mind"), json!({})).await;
    s.ok("chat.delete", &alice, json!({"channel": ch, "ts": gone}))
        .await;
    post(
        &alice,
        format!("<@{bob_id}> in a thread"),
        json!({"thread_ts": everyone}),
    )
    .await;
    post(
        &bob,
        format!("<@{bob_id}> notes to self, <@{carol_id}>"),
        json!({}),
    )
    .await;
    // bob: six unread; mentioned by id, <!channel>, his group, and the edit.
    assert_eq!(counts(&bob).await, (6, 4));
    // alice: bob's message, which mentions others.
    assert_eq!(counts(&alice).await, (1, 0));
    // A disabled group mentions nobody.
    s.ok("usergroups.disable", &alice, json!({"usergroup": oncall}))
        .await;
    assert_eq!(counts(&bob).await, (6, 3));
    // Marked read at the page: the design review and the edited one are left.
    s.ok(
        "conversations.mark",
        &bob,
        json!({"channel": ch, "ts": paged}),
    )
    .await;
    let marked = s.user_notices(&bob_id, "channel_marked", 1).await;
    let marked = marked.first().expect("channel_marked was relayed");
    assert_eq!(
        (&marked["unread_count"], &marked["mention_count"]),
        (&json!(2), &json!(1)),
        "{marked}"
    );
    assert_eq!(marked["mention_count_display"], 1, "{marked}");
    assert_eq!(counts(&bob).await, (2, 1));

    // A DM: every unread message is a mention.
    let dm = s.open_dm(&carol, &[&bob_id]).await;
    for text in ["hey", "are you there?"] {
        s.ok(
            "chat.postMessage",
            &carol,
            json!({"channel": dm, "text": text}),
        )
        .await;
    }
    let v = s
        .ok("conversations.info", &bob, json!({"channel": dm}))
        .await["channel"]
        .clone();
    assert_eq!(
        (&v["unread_count"], &v["mention_count"]),
        (&json!(2), &json!(2)),
        "{v}"
    );
}

/// A failing request URL's subscription is disabled only while it is still the one the node
/// was sending to: not after the app set its URL again, and once.
#[tokio::test]
async fn a_subscription_is_disabled_only_while_unchanged() {
    use shared::store::{cluster_records, EventSubscription, RecordKind};
    let s = Server::start().await;
    let bot = s.bot_token("pager").await;
    let v = s.ok("apps.eventSubscriptions.info", &bot, json!({})).await;
    assert_eq!(v["disabled"], false, "{v}");
    assert!(v.get("disabled_reason").is_none(), "{v}");
    let set = s
        .store
        .record_set(&cluster_records(), &RecordKind::EventSubscriptions)
        .await
        .unwrap();
    let [(_, record)] = set.records.as_slice() else {
        panic!("one subscription: {set:?}");
    };
    let sub: EventSubscription = serde_json::from_str(record).unwrap();
    let state = crate::api::AppState::new(
        s.store.clone(),
        s.signer.clone(),
        AdminLink::detached_for_test(),
        vec![],
        MAX_BODY,
        "127.0.0.1:1".parse().unwrap(),
    );
    let disable = |sub: EventSubscription, reason: &str| {
        let (state, reason) = (state.clone(), reason.to_string());
        async move {
            crate::methods::apps::disable(&state, &sub, reason)
                .await
                .unwrap()
        }
    };
    // A node still sending to an older setting of the URL: not disabled.
    let older = EventSubscription {
        request_url: "https://old.example/events".into(),
        updated: Ts(sub.updated.0 - 1),
        ..sub.clone()
    };
    assert!(!disable(older, "the old URL failed").await);
    let v = s.ok("apps.eventSubscriptions.info", &bot, json!({})).await;
    assert_eq!(v["disabled"], false, "{v}");
    // The one the cluster holds: disabled, with why and when.
    assert!(disable(sub.clone(), "the request URL failed 12 of the 12 tries").await);
    let v = s.ok("apps.eventSubscriptions.info", &bot, json!({})).await;
    assert_eq!(v["disabled"], true, "{v}");
    assert_eq!(
        v["disabled_reason"],
        "the request URL failed 12 of the 12 tries"
    );
    let at = Ts::parse_slack(v["disabled_at"].as_str().unwrap()).expect("a Slack timestamp");
    assert!(at.0 >= sub.updated.0, "{v}");
    // Another node's verdict on the same setting: already disabled, not again.
    assert!(!disable(sub, "again").await);
    let v = s.ok("apps.eventSubscriptions.info", &bot, json!({})).await;
    assert_eq!(
        v["disabled_reason"],
        "the request URL failed 12 of the 12 tries"
    );
}

/// A request URL set while private addresses were allowed, found when they are not (the
/// operator turned `webapp.private_request_urls` off): not called, and its subscription
/// disabled, so that the app sees why its events stopped.
#[tokio::test]
async fn a_kept_private_request_url_is_disabled_when_private_urls_are_off() {
    use shared::store::{cluster_records, EventSubscription, RecordKind};
    let s = Server::start_with(|c| c.webapp.records_poll_ms = 50).await;
    let bot = s.bot_token("pager").await;
    s.ok("apps.eventSubscriptions.info", &bot, json!({})).await;
    let set = s
        .store
        .record_set(&cluster_records(), &RecordKind::EventSubscriptions)
        .await
        .unwrap();
    let [(id, record)] = set.records.as_slice() else {
        panic!("one subscription: {set:?}");
    };
    let mut sub: EventSubscription = serde_json::from_str(record).unwrap();
    sub.request_url = "http://10.1.2.3/slack/events".into();
    let record = serde_json::to_string(&sub).unwrap();
    assert!(s
        .store
        .put_record(
            &cluster_records(),
            &RecordKind::EventSubscriptions,
            id,
            Some(&record),
            set.version
        )
        .await
        .unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let v = loop {
        let v = s.ok("apps.eventSubscriptions.info", &bot, json!({})).await;
        if v["disabled"] == true {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "never disabled: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(v["request_url"], "http://10.1.2.3/slack/events", "{v}");
    let reason = v["disabled_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not a public address") && reason.contains("private_request_urls"),
        "{v}"
    );
}

/// Emails: set at creation or by an admin's `users.profile.set`, unique in the workspace,
/// found by `users.lookupByEmail` without case, shown in the profile; a creation whose email
/// is taken leaves no user behind.
#[tokio::test]
async fn users_are_found_by_their_email_which_only_admins_set() {
    let s = Server::start().await;
    let admin = s.admin_token();
    let bob = s.token("bob");
    let v = s
        .ok(
            "admin.users.create",
            &admin,
            json!({"name": "dave", "email": " Dave@Example.com"}),
        )
        .await;
    assert_eq!(v["user"]["profile"]["email"], "dave@example.com", "{v}");
    let dave = v["user"]["id"].as_str().unwrap().to_string();
    let found = s
        .ok(
            "users.lookupByEmail",
            &bob,
            json!({"email": "DAVE@example.COM"}),
        )
        .await;
    assert_eq!(found["user"]["id"], dave.as_str());
    assert_eq!(found["user"]["name"], "dave");
    s.err(
        "users.lookupByEmail",
        &bob,
        json!({"email": "nobody@example.com"}),
        "users_not_found",
    )
    .await;
    for bad in [
        "",
        "dave",
        "dave@",
        "@example.com",
        "da ve@example.com",
        "dave@example",
        "a@b@c.d",
    ] {
        s.err(
            "users.lookupByEmail",
            &bob,
            json!({ "email": bad }),
            "invalid_email",
        )
        .await;
    }
    // Taken: refused before or after the user is made, and no "erin" is left either way.
    s.err(
        "admin.users.create",
        &admin,
        json!({"name": "erin", "email": "dave@example.com"}),
        "email_taken",
    )
    .await;
    let users = s.ok("users.list", &admin, json!({})).await;
    assert!(!users.to_string().contains("\"erin\""), "{users}");

    // Only an admin token sets an email, for anyone; an empty one clears it.
    s.err(
        "users.profile.set",
        &bob,
        json!({"profile": {"email": "bob@example.com"}}),
        "not_allowed_token_type",
    )
    .await;
    let bob_id = s.user_id("bob");
    let v = s
        .ok(
            "users.profile.set",
            &admin,
            json!({"user": bob_id, "profile": {"email": "bob@example.com"}}),
        )
        .await;
    assert_eq!(v["profile"]["email"], "bob@example.com");
    s.err(
        "users.profile.set",
        &admin,
        json!({"user": bob_id, "name": "email", "value": "dave@example.com"}),
        "email_taken",
    )
    .await;
    let found = s
        .ok(
            "users.lookupByEmail",
            &bob,
            json!({"email": "bob@example.com"}),
        )
        .await;
    assert_eq!(found["user"]["id"], bob_id.as_str());
    let v = s
        .ok(
            "users.profile.set",
            &admin,
            json!({"user": bob_id, "profile": {"email": ""}}),
        )
        .await;
    assert!(v["profile"].get("email").is_none(), "{v}");
    s.err(
        "users.lookupByEmail",
        &bob,
        json!({"email": "bob@example.com"}),
        "users_not_found",
    )
    .await;
    s.stop().await;
}
