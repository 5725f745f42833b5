//! HTTP-level tests of rate limiting, incoming webhooks and the served OpenAPI description:
//! the real router served by [`crate::run`] on a loopback port with a real embedded store and
//! a detached [`AdminLink`] (so a post that passes validation answers 503; the successful
//! path is covered by the multi-process `tests/e2e/hooks.rs`).

use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::auth::TokenSigner;
use shared::ids::WorkspaceId;

use crate::hooks::{sign_hook, HookClaims};

use crate::tests::Server;

impl Server {
    fn workspace(&self) -> WorkspaceId {
        WorkspaceId(self.demo["workspace"].as_str().expect("ws").to_string())
    }

    /// A JSON-body call with a bearer token: (status, headers, answer).
    async fn call_full(
        &self,
        method: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let resp = self
            .http
            .post(format!("{}/api/{method}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        (status, headers, resp.json().await.expect("json answer"))
    }

    /// POSTs `body` (with `content_type`) to a hook path: (status, Retry-After, text).
    pub(crate) async fn hook(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Option<String>, String) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, retry, resp.text().await.expect("text answer"))
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// With one call a minute and bursts of 3: the 4th call in a burst answers 429 `ratelimited`
/// with `Retry-After`, and other users and other tiers are unaffected. (The refill is slow so
/// that no token comes back while the test runs, however slow the machine; how buckets refill
/// over time is tested on an injected clock in `ratelimit`.)
#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let s = Server::start_with_cluster_and(|c| {
        c.webapp.rate_limit_per_minute = 1;
        c.webapp.rate_limit_burst = 3;
    })
    .await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    for i in 0..3 {
        let (status, _, v) = s.call_full("auth.test", &alice, json!({})).await;
        assert_eq!(
            (status, &v["ok"]),
            (StatusCode::OK, &json!(true)),
            "call {i}: {v}"
        );
    }
    let (status, headers, v) = s.call_full("auth.test", &alice, json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v, json!({"ok": false, "error": "ratelimited"}));
    assert_eq!(headers["retry-after"], "60");
    // The token in a form body counts the same as a bearer header.
    let resp = s
        .http
        .post(format!("{}/api/auth.test", s.base))
        .form(&[("token", alice.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another user, and another tier of the same user, have their own buckets.
    s.ok("auth.test", &bob, json!({})).await;
    s.ok("conversations.list", &alice, json!({})).await;
    // api.test needs no token and is not limited; a forged token is refused, not counted.
    for _ in 0..5 {
        s.ok("api.test", &alice, json!({})).await;
        s.err("auth.test", "xoxp-forged.sig", json!({}), "invalid_auth")
            .await;
    }
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(r#"switchboard_webapp_ratelimited_total{method="auth.test"}"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"switchboard_webapp_errors_total{error="ratelimited",method="auth.test"}"#),
        "{metrics}"
    );
    // Hook posts have their own bucket per creator: three are posted, the fourth is refused
    // before it reaches the mesh.
    let general = s.general().await;
    let hook = s
        .ok("hooks.create", &bob, json!({"channel": general}))
        .await;
    let path = hook["path"].as_str().unwrap().to_string();
    for i in 0..3 {
        let (status, _, text) = s
            .hook(&path, "application/json", format!(r#"{{"text":"hi {i}"}}"#))
            .await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "ok"));
    }
    let (status, retry, text) = s.hook(&path, "application/json", r#"{"text":"hi"}"#).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "ratelimited")
    );
    assert_eq!(retry.as_deref(), Some("60"));
    s.stop().await;
}

/// The default limits are far above what tests and benchmarks do in a burst.
#[tokio::test]
async fn default_limits_let_bursts_through() {
    let s = Server::start_with(|_| {}).await;
    let alice = s.token("alice");
    for _ in 0..1000 {
        s.ok("auth.test", &alice, json!({})).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn hooks_are_created_by_members_and_refuse_bad_posts_before_the_mesh() {
    let s = Server::start_with(|_| {}).await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let general = s.general().await;
    let v = s
        .ok("hooks.create", &bob, json!({"channel": "#general"}))
        .await;
    assert_eq!(v["channel"], general);
    let path = v["path"].as_str().unwrap().to_string();
    assert!(path.starts_with("/hooks/"), "{v}");
    assert_eq!(v["url"], format!("{}{path}", s.base));
    // Only members create hooks, and only where they can see the channel.
    let private = s
        .ok(
            "conversations.create",
            &alice,
            json!({"name": "secret", "is_private": true}),
        )
        .await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let public = s
        .ok("conversations.create", &alice, json!({"name": "open"}))
        .await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.err(
        "hooks.create",
        &bob,
        json!({"channel": private}),
        "channel_not_found",
    )
    .await;
    s.err(
        "hooks.create",
        &bob,
        json!({"channel": public}),
        "not_in_channel",
    )
    .await;
    s.err("hooks.create", &bob, json!({}), "channel_not_found")
        .await;
    let (status, _, v) = s
        .call_full("hooks.create", "garbage", json!({"channel": general}))
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::OK, Some("invalid_auth"))
    );

    // Forged, tampered and foreign hook tokens: 404 no_service.
    let (payload, sig) = path
        .trim_start_matches("/hooks/")
        .split_once('.')
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .unwrap();
    let foreign = sign_hook(
        &TokenSigner::new(b"another-secret"),
        &HookClaims {
            workspace: s.workspace(),
            channel: shared::ids::ChannelId(general.clone()),
            user: shared::ids::UserId(s.user_id("bob")),
            issued_at: 1,
        },
    );
    let other_channel = sign_hook(
        &TokenSigner::new(b"x"),
        &HookClaims {
            workspace: s.workspace(),
            channel: shared::ids::ChannelId(public.clone()),
            user: shared::ids::UserId(s.user_id("bob")),
            issued_at: 1,
        },
    );
    for bad in [
        "/hooks/nonsense".to_string(),
        format!("/hooks/{payload}.{}", "A".repeat(sig.len())),
        format!("/hooks/{foreign}"),
        format!("/hooks/{}.{sig}", other_channel.split_once('.').unwrap().0),
        format!("/hooks/{}", bob.trim_start_matches("xoxp-")),
    ] {
        let (status, _, text) = s.hook(&bad, "application/json", r#"{"text":"hi"}"#).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::NOT_FOUND, "no_service"),
            "{bad}"
        );
    }
    // Bad bodies: 400.
    for (body, error) in [
        ("{\"text\":", "invalid_payload"),
        ("[1,2]", "invalid_payload"),
        ("", "invalid_payload"),
        (r#"{"text":7}"#, "invalid_payload"),
        (r#"{"text":""}"#, "no_text"),
        (r#"{"username":"bot"}"#, "no_text"),
        (r#"{"text":"hi","thread_ts":"soon"}"#, "invalid_thread_ts"),
    ] {
        let (status, _, text) = s.hook(&path, "application/json", body).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::BAD_REQUEST, error),
            "{body}"
        );
    }
    let (status, _, text) = s
        .hook(
            &path,
            "application/x-www-form-urlencoded",
            "payload=%7B%22text%22%3A%22%22%7D",
        )
        .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::BAD_REQUEST, "no_text")
    );
    // A thread parent that does not exist.
    let (status, _, text) = s
        .hook(
            &path,
            "application/json",
            r#"{"text":"hi","thread_ts":"1700000000.000100"}"#,
        )
        .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::NOT_FOUND, "thread_not_found")
    );
    // A valid post, as JSON or as a form payload (with any content type), reaches the mesh,
    // which this test server does not have: 503, and nothing is stored.
    for (ct, body) in [
        (
            "application/json",
            r#"{"text":"deploy finished","username":"ci"}"#.to_string(),
        ),
        (
            "application/x-www-form-urlencoded",
            "payload=%7B%22text%22%3A%22from%20a%20form%22%7D".to_string(),
        ),
        (
            "text/plain",
            r#"{"text":"curl without a content type"}"#.to_string(),
        ),
    ] {
        let (status, _, text) = s.hook(&path, ct, body).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            "{ct}"
        );
    }
    let history = s
        .ok("conversations.history", &bob, json!({"channel": general}))
        .await;
    assert_eq!(history["messages"], json!([]));
    // Only POST.
    let resp = s
        .http
        .get(format!("{}{path}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    // An oversized body: 413.
    let big = format!("{{\"text\":\"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let (status, _, text) = s.hook(&path, "application/json", big).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large")
    );

    // The creator leaves: 403 action_prohibited. The channel is archived: 410.
    let v = s
        .ok("hooks.create", &alice, json!({"channel": public}))
        .await;
    let alice_hook = v["path"].as_str().unwrap().to_string();
    s.ok("conversations.join", &bob, json!({"channel": public}))
        .await;
    let v = s.ok("hooks.create", &bob, json!({"channel": public})).await;
    let bob_hook = v["path"].as_str().unwrap().to_string();
    s.ok("conversations.leave", &bob, json!({"channel": public}))
        .await;
    let (status, _, text) = s
        .hook(&bob_hook, "application/json", r#"{"text":"hi"}"#)
        .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::FORBIDDEN, "action_prohibited")
    );
    s.ok("conversations.archive", &alice, json!({"channel": public}))
        .await;
    let (status, _, text) = s
        .hook(&alice_hook, "application/json", r#"{"text":"hi"}"#)
        .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::GONE, "channel_is_archived")
    );
    s.err(
        "hooks.create",
        &alice,
        json!({"channel": public}),
        "is_archived",
    )
    .await;

    let metrics = s.metrics().await;
    for error in [
        "no_service",
        "invalid_payload",
        "no_text",
        "service_unavailable",
        "action_prohibited",
    ] {
        assert!(
            metrics.contains(&format!(
                r#"switchboard_webapp_hook_errors_total{{error="{error}"}}"#
            )),
            "{error}: {metrics}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn openapi_is_served_as_generated() {
    let s = Server::start_with(|_| {}).await;
    for path in ["/api/openapi.json", "/openapi.json"] {
        let resp = s
            .http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v, crate::openapi::document(), "{path}");
    }
    // The methods around it are still served.
    s.ok("api.test", "", json!({})).await;
    s.stop().await;
}
