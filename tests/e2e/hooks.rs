//! Incoming webhooks end to end: a hook created with `hooks.create` posts (JSON or a form
//! `payload`) into its channel as its creator, through the same path as `chat.postMessage`:
//! WebSocket clients receive the message, history and threads show it, an `Idempotency-Key`
//! makes a retried post land once, and the hook stops working when its creator leaves.

use crate::common::*;
use serde_json::{json, Value};

/// POSTs to a hook URL; returns (status, text).
async fn hook_post(
    cluster: &Cluster,
    url: &str,
    content_type: &str,
    body: String,
    idempotency_key: Option<&str>,
) -> (u16, String) {
    let mut req = cluster
        .http
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(key) = idempotency_key {
        req = req.header("idempotency-key", key);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_webhooks_post_into_their_channel_as_their_creator() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let channel = cluster.create_channel(&alice, "deploys").await;
    cluster.join(&bob, &channel).await;
    let watcher = cluster.connect(1, &bob).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&channel), &[&watcher])
        .await;

    let hook = cluster
        .api_ok("hooks.create", &alice.token, json!({ "channel": channel }))
        .await;
    let path = hook["path"].as_str().expect("hook path").to_string();
    let url = format!("{}{path}", cluster.webapp);
    assert_eq!(hook["url"], url, "{hook}");
    assert_eq!(hook["channel"], channel);

    // A JSON post, with fields Slack's hooks take that Switchboard ignores.
    let from = watcher.num_events();
    let body = json!({ "text": "deploy 42 finished", "username": "ci", "icon_emoji": ":rocket:" });
    let (status, text) = hook_post(
        &cluster,
        &url,
        "application/json",
        body.to_string(),
        Some("deploy-42"),
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    let event = watcher
        .wait_event(from, WAIT, "hook message", |e| {
            e["type"] == "message" && e["channel"] == channel && e["text"] == "deploy 42 finished"
        })
        .await;
    assert_eq!(event["user"], alice.id.as_str(), "{event}");
    let parent_ts = event["ts"].as_str().expect("ts").to_string();

    // The same Idempotency-Key again (a retry): answered ok, stored once.
    let (status, text) = hook_post(
        &cluster,
        &url,
        "application/json",
        body.to_string(),
        Some("deploy-42"),
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "ok"));

    // A form post (`payload=<json>`), as a thread reply.
    let payload = json!({ "text": "logs: all green", "thread_ts": parent_ts }).to_string();
    let from = watcher.num_events();
    let resp = cluster
        .http
        .post(&url)
        .form(&[("payload", payload.as_str())])
        .send()
        .await
        .expect("form post");
    let status = resp.status().as_u16();
    assert_eq!(
        (status, resp.text().await.unwrap_or_default().as_str()),
        (200, "ok")
    );
    let reply = watcher
        .wait_event(from, WAIT, "hook thread reply", |e| {
            e["type"] == "message" && e["channel"] == channel && e["text"] == "logs: all green"
        })
        .await;
    assert_eq!(reply["thread_ts"], parent_ts.as_str(), "{reply}");

    // History has the post once, by alice; the thread has the reply.
    let history = cluster.history_all(&bob, &channel, 50).await;
    let posts: Vec<&Value> = history
        .iter()
        .filter(|m| m["text"] == "deploy 42 finished")
        .collect();
    assert_eq!(
        posts.len(),
        1,
        "the retried post is stored once: {history:?}"
    );
    assert_eq!(posts[0]["user"], alice.id.as_str());
    assert_eq!(posts[0]["client_msg_id"], "deploy-42");
    let replies = cluster
        .api_ok(
            "conversations.replies",
            &bob.token,
            json!({ "channel": channel, "ts": parent_ts }),
        )
        .await;
    let texts: Vec<&str> = replies["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["deploy 42 finished", "logs: all green"],
        "{replies}"
    );
    // The webhook's messages are searchable like any other.
    cluster
        .wait_search(&bob.token, "\"deploy 42\"", "the hook's message", |v| {
            v["messages"]["matches"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["ts"] == parent_ts.as_str()))
        })
        .await;

    // Refusals: a forged token, an empty text, and a creator who left the channel.
    let (status, text) = hook_post(
        &cluster,
        &format!("{}/hooks/forged.token", cluster.webapp),
        "application/json",
        json!({ "text": "x" }).to_string(),
        None,
    )
    .await;
    assert_eq!((status, text.as_str()), (404, "no_service"));
    let (status, text) = hook_post(
        &cluster,
        &url,
        "application/json",
        json!({ "text": "" }).to_string(),
        None,
    )
    .await;
    assert_eq!((status, text.as_str()), (400, "no_text"));
    cluster
        .api_ok(
            "conversations.leave",
            &alice.token,
            json!({ "channel": channel }),
        )
        .await;
    let (status, text) = hook_post(
        &cluster,
        &url,
        "application/json",
        json!({ "text": "after leaving" }).to_string(),
        None,
    )
    .await;
    assert_eq!((status, text.as_str()), (403, "action_prohibited"));
    let posted = cluster
        .metric(&cluster.webapp, "switchboard_webapp_hook_posts_total", &[])
        .await;
    assert_eq!(posted, 3.0, "two posts and one retry answered ok");
    cluster.assert_running();
}
