//! Slack's Events API over HTTP end to end, on real processes: an app sets its request URL
//! (`apps.eventSubscriptions.set`), which must answer the `url_verification` challenge;
//! then the Web API POSTs each event of the app's channels there, signed as Slack signs,
//! sends an event again when the app failed it (with `X-Slack-Retry-Num` and
//! `X-Slack-Retry-Reason`) unless it said `X-Slack-No-Retry`, stops once the URL is
//! deleted, and stops for a URL that fails everything until it is set again. The app here
//! is a real HTTP server in the test process that checks each request's signature itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// One request the app's server received.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    raw: Vec<u8>,
    body: Value,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Whether `X-Slack-Signature` is the HMAC Slack's guide says, under `secret`.
    fn signed_with(&self, secret: &str) -> bool {
        let (Some(ts), Some(sig)) = (
            self.header("X-Slack-Request-Timestamp"),
            self.header("X-Slack-Signature"),
        ) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:").as_bytes());
        mac.update(&self.raw);
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        sig == format!("v0={want}")
    }

    fn event_text(&self) -> Option<&str> {
        self.body["event"]["text"].as_str()
    }
}

/// The app: answers the challenge on `/events`, fails each message whose text is in
/// `failing` as many times as it says (HTTP 500), declines `decline` with
/// `X-Slack-No-Retry: 1`, answers `/wrong` without the challenge, and `/down` with the
/// challenge but fails every event there.
#[derive(Clone, Default)]
struct App {
    received: Arc<Mutex<Vec<Received>>>,
    failing: Arc<Mutex<HashMap<String, usize>>>,
    /// How long it takes over each request, in milliseconds.
    slow_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl App {
    async fn serve(&self) -> String {
        let app = self.clone();
        let router = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let app = app.clone();
                async move {
                    let slow = app.slow_ms.load(std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(slow)).await;
                    app.handle(uri.path().to_string(), headers, body)
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    fn handle(&self, path: String, headers: HeaderMap, raw: axum::body::Bytes) -> Response {
        let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let got = Received {
            path: path.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            raw: raw.to_vec(),
            body: body.clone(),
        };
        self.received.lock().unwrap().push(got);
        if path == "/wrong" {
            return (StatusCode::OK, "nope").into_response();
        }
        if path == "/huge" {
            // The challenge, buried after more than anyone should read.
            let mut answer = "x".repeat(1 << 20);
            answer.push_str(body["challenge"].as_str().unwrap_or_default());
            return (StatusCode::OK, answer).into_response();
        }
        if body["type"] == "url_verification" {
            return axum::Json(json!({ "challenge": body["challenge"] })).into_response();
        }
        if path == "/down" {
            return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
        }
        let text = body["event"]["text"].as_str().unwrap_or_default();
        if text == "decline" {
            return (StatusCode::BAD_REQUEST, [("X-Slack-No-Retry", "1")], "").into_response();
        }
        if let Some(left) = self.failing.lock().unwrap().get_mut(text) {
            if *left > 0 {
                *left -= 1;
                return (StatusCode::INTERNAL_SERVER_ERROR, "busy").into_response();
            }
        }
        StatusCode::OK.into_response()
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The event deliveries whose message text is `text`, in arrival order.
    fn deliveries(&self, text: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.event_text() == Some(text))
            .collect()
    }

    /// Posts `<prefix> <i>` as `poster` until one reaches the app (its session goes live in
    /// the background), bounded: the first delivery.
    async fn post_until_delivered(
        &self,
        cluster: &Cluster,
        poster: &TestUser,
        channel: &str,
        prefix: &str,
    ) -> Received {
        for i in 0..40 {
            let text = format!("{prefix} {i}");
            cluster.post(poster, channel, &text).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Some(r) = self.deliveries(&text).into_iter().next() {
                return r;
            }
        }
        panic!(
            "no {prefix:?} event reached the request URL: {:?}",
            self.received()
        );
    }

    /// Waits (up to [`WAIT`]) until `n` deliveries of `text` arrived.
    async fn wait_deliveries(&self, text: &str, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.deliveries(text);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} deliveries of {text:?} never came; got {}: {:?}",
                got.len(),
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_request_url_gets_its_events_signed_and_retried() {
    let cluster = Cluster::start(
        ClusterOpts::standard(&["alice"])
            .bot("acme", "deploybot")
            .set("webapp", "webapp.records_poll_ms=100")
            // The app's server listens on 127.0.0.1.
            .set("webapp", "webapp.private_request_urls=true")
            // A URL failing everything for 2 s (not an hour) is disabled.
            .set("webapp", "webapp.events_failure_window_secs=2"),
    )
    .await;
    let alice = cluster.user("acme", "alice").clone();
    let bot = cluster.user("acme", "deploybot").clone();
    let app = App::default();
    let base = app.serve().await;
    let set = |url: String| {
        let token = bot.token.clone();
        let cluster = &cluster;
        async move {
            cluster
                .api(
                    "apps.eventSubscriptions.set",
                    &token,
                    json!({ "request_url": url }),
                )
                .await
        }
    };

    // Bad input: a clear error each, nothing kept.
    let v = cluster
        .api("apps.eventSubscriptions.set", &bot.token, json!({}))
        .await;
    assert_eq!(v["error"], "missing_argument", "{v}");
    for bad in ["ftp://127.0.0.1/events", "not a url", "https://"] {
        let v = set(bad.to_string()).await;
        assert_eq!(v["error"], "invalid_url", "{bad}: {v}");
    }
    let v = set(format!("{base}/wrong")).await;
    assert_eq!(v["error"], "url_verification_failed", "{v}");
    assert_eq!(
        v["detail"], "the answer did not give the challenge back",
        "{v}"
    );
    let v = set(format!("{base}/huge")).await;
    assert_eq!(v["error"], "url_verification_failed", "{v}");
    // A port nothing listens on: refused, said so.
    let v = set("http://127.0.0.1:9/events".to_string()).await;
    assert_eq!(v["error"], "url_verification_failed", "{v}");
    // Before any URL the app has its secrets, as a Slack app has from its creation.
    let before = cluster
        .api_ok("apps.eventSubscriptions.info", &bot.token, json!({}))
        .await;
    assert_eq!(before["request_url"], "", "{before}");
    let secret = before["signing_secret"]
        .as_str()
        .expect("signing_secret")
        .to_string();
    let token = before["verification_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(secret.len(), 32, "{before}");
    let v = cluster
        .api("apps.eventSubscriptions.delete", &bot.token, json!({}))
        .await;
    assert_eq!(v["error"], "no_request_url", "{v}");

    // The URL answers the challenge, signed with that secret.
    let v = set(format!("{base}/events")).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["signing_secret"], secret.as_str(), "{v}");
    assert_eq!(v["verification_token"], token.as_str(), "{v}");
    assert_eq!(v["request_url"], format!("{base}/events"));
    let challenge = app
        .received()
        .into_iter()
        .rfind(|r| r.path == "/events" && r.body["type"] == "url_verification")
        .expect("the challenge reached the URL");
    assert!(challenge.signed_with(&secret), "{challenge:?}");
    assert_eq!(challenge.body["token"], token.as_str());
    assert_eq!(challenge.header("Content-Type"), Some("application/json"));
    // Setting it again keeps the secret.
    let again = set(format!("{base}/events")).await;
    assert_eq!(again["signing_secret"], secret.as_str(), "{again}");
    let info = cluster
        .api_ok("apps.eventSubscriptions.info", &bot.token, json!({}))
        .await;
    assert_eq!(info["request_url"], format!("{base}/events"));

    // A message in the app's channel arrives as Slack's event_callback. The app's session
    // goes live in the background: post until the first arrives (bounded).
    let channel = cluster.create_channel(&alice, "deploys").await;
    cluster.join(&bot, &channel).await;
    let first = app
        .post_until_delivered(&cluster, &alice, &channel, "warm-up")
        .await;
    assert!(first.signed_with(&secret), "{first:?}");
    let payload = &first.body;
    assert_eq!(payload["type"], "event_callback", "{payload}");
    assert_eq!(payload["token"], token.as_str());
    assert_eq!(payload["team_id"], alice.workspace.as_str());
    assert_eq!(payload["event"]["type"], "message");
    assert_eq!(payload["event"]["channel"], channel.as_str());
    assert_eq!(payload["event"]["user"], alice.id.as_str());
    assert!(
        payload["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("Ev")),
        "{payload}"
    );
    assert!(first.header("X-Slack-Retry-Num").is_none());

    // A burst past the events one node keeps in flight per app, to an app that takes its
    // time over each: each arrives once (no acknowledgement waits behind the full slots
    // long enough for its event to come again).
    app.slow_ms.store(400, std::sync::atomic::Ordering::Relaxed);
    let burst: Vec<String> = (0..80).map(|i| format!("burst {i}")).collect();
    for text in &burst {
        cluster.post(&alice, &channel, text).await;
    }
    for text in &burst {
        app.wait_deliveries(text, 1).await;
    }
    app.slow_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    for text in &burst {
        assert_eq!(app.deliveries(text).len(), 1, "{text}");
    }

    // The app fails an event once: it comes again, saying so, with the same event id.
    app.failing.lock().unwrap().insert("flaky".into(), 1);
    let posted = cluster.post(&alice, &channel, "flaky").await;
    let got = app.wait_deliveries("flaky", 2).await;
    assert_eq!(got[0].body["event"]["ts"], posted["ts"]);
    assert_eq!(got[0].body["event_id"], got[1].body["event_id"]);
    assert_eq!(
        got[1].header("X-Slack-Retry-Num"),
        Some("1"),
        "{:?}",
        got[1]
    );
    assert_eq!(
        got[1].header("X-Slack-Retry-Reason"),
        Some("http_error"),
        "{:?}",
        got[1]
    );
    assert!(got[1].signed_with(&secret));

    // `X-Slack-No-Retry: 1`: not sent again, even past the acknowledgement timeout.
    cluster.post(&alice, &channel, "decline").await;
    app.wait_deliveries("decline", 1).await;
    cluster.post(&alice, &channel, "after decline").await;
    app.wait_deliveries("after decline", 1).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(app.deliveries("decline").len(), 1, "{:?}", app.received());
    for (outcome, at_least) in [
        ("delivered", 3.0),
        ("http_error", 1.0),
        ("refused_no_retry", 1.0),
    ] {
        let v = cluster
            .metric(
                &cluster.webapp,
                "switchboard_webapp_events_http_total",
                &[("outcome", outcome)],
            )
            .await;
        assert!(v >= at_least, "{outcome}: {v}");
    }

    // Deleted: nothing more is sent.
    cluster
        .api_ok("apps.eventSubscriptions.delete", &bot.token, json!({}))
        .await;
    let v = cluster
        .api("apps.eventSubscriptions.delete", &bot.token, json!({}))
        .await;
    assert_eq!(v["error"], "no_request_url", "{v}");
    let after = cluster
        .api_ok("apps.eventSubscriptions.info", &bot.token, json!({}))
        .await;
    assert_eq!(after["request_url"], "", "{after}");
    assert_eq!(after["signing_secret"], secret.as_str(), "the secret stays");
    cluster
        .wait_metric(
            &cluster.webapp,
            "switchboard_webapp_events_http_apps",
            &[],
            "no app left",
            |v| v == 0.0,
        )
        .await;
    cluster.post(&alice, &channel, "after delete").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(app.deliveries("after delete").is_empty());

    // A URL that fails every event for a whole window (2 s here, Slack's hour by default)
    // is disabled: said by `info`, counted, and sent nothing more until it is set again.
    let v = set(format!("{base}/down")).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["disabled"], false, "{v}");
    let deadline = Instant::now() + WAIT;
    let mut posted = 0;
    let disabled = loop {
        cluster
            .post(&alice, &channel, &format!("down {posted}"))
            .await;
        posted += 1;
        let info = cluster
            .api_ok("apps.eventSubscriptions.info", &bot.token, json!({}))
            .await;
        if info["disabled"] == true {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "not disabled after {posted} posts: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tried = |app: &App| app.received().iter().filter(|r| r.path == "/down").count();
    // The challenge, then at least the ten failed tries a verdict needs.
    assert!(tried(&app) > 10, "{}", tried(&app));
    assert_eq!(
        disabled["request_url"],
        format!("{base}/down"),
        "{disabled}"
    );
    let reason = disabled["disabled_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("failed") && reason.contains("last 2 s"),
        "{disabled}"
    );
    assert!(
        disabled["disabled_at"]
            .as_str()
            .is_some_and(|ts| ts.contains('.')),
        "{disabled}"
    );
    let count = cluster
        .metric(
            &cluster.webapp,
            "switchboard_webapp_event_subscriptions_total",
            &[("event", "disabled")],
        )
        .await;
    assert_eq!(count, 1.0);
    cluster
        .wait_metric(
            &cluster.webapp,
            "switchboard_webapp_events_http_apps",
            &[],
            "the disabled app stopped",
            |v| v == 0.0,
        )
        .await;
    let before = tried(&app);
    cluster.post(&alice, &channel, "while disabled").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(tried(&app), before, "nothing sent to a disabled URL");
    assert!(app.deliveries("while disabled").is_empty());

    // Set again (it answers the challenge): enabled, its events come again.
    let v = set(format!("{base}/events")).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["disabled"], false, "{v}");
    assert!(v.get("disabled_reason").is_none(), "{v}");
    let back = app
        .post_until_delivered(&cluster, &alice, &channel, "enabled again")
        .await;
    assert!(back.signed_with(&secret), "{back:?}");
    cluster.assert_running();
}
