//! Posting through the real admin and channel servers ([`super::cluster`], storing posts on the
//! real store): a `client_msg_id`, or a hook's `Idempotency-Key`, names one request of one
//! user. A retry answers the stored message; the same key from another user, or reused for
//! another text or thread, answers `client_msg_id_conflict` instead of that message, which
//! would silently drop the new text.

use super::*;
use crate::metrics::CLIENT_MSG_ID_CONFLICTS;

fn conflicts(via: &str, reason: &str) -> u64 {
    CLIENT_MSG_ID_CONFLICTS
        .with_label_values(&[via, reason])
        .get()
}

/// The texts of a channel's history, newest first.
async fn texts(s: &Server, token: &str, channel: &str) -> Vec<String> {
    let v = s
        .ok("conversations.history", token, json!({"channel": channel}))
        .await;
    v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_string())
        .collect()
}

#[tokio::test]
async fn a_client_msg_id_names_one_request_of_one_user() {
    let s = Server::start_with_cluster().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let general = s.general().await;
    let other_user = conflicts("api", "other_user");
    let other_request = conflicts("api", "other_request");

    let post = json!({"channel": general, "text": "ship it", "client_msg_id": "cmid-1"});
    let first = s.ok("chat.postMessage", &alice, post.clone()).await;
    assert_eq!(first["message"]["text"], "ship it");
    assert_eq!(first["message"]["client_msg_id"], "cmid-1");
    // A retry: the same user, the same request. Answered with the stored message.
    let retry = s.ok("chat.postMessage", &alice, post.clone()).await;
    assert_eq!(retry["ts"], first["ts"]);
    assert_eq!(retry["message"]["seq"], first["message"]["seq"]);

    // Another user with the same id is refused, not answered with alice's message.
    s.err(
        "chat.postMessage",
        &bob,
        json!({"channel": general, "text": "bob's own words", "client_msg_id": "cmid-1"}),
        "client_msg_id_conflict",
    )
    .await;
    // The same user reusing the id for another text, or for the same text in a thread.
    s.err(
        "chat.postMessage",
        &alice,
        json!({"channel": general, "text": "something else", "client_msg_id": "cmid-1"}),
        "client_msg_id_conflict",
    )
    .await;
    s.err(
        "chat.postMessage",
        &alice,
        json!({"channel": general, "text": "ship it", "client_msg_id": "cmid-1",
               "thread_ts": first["ts"]}),
        "client_msg_id_conflict",
    )
    .await;
    assert_eq!(conflicts("api", "other_user") - other_user, 1);
    assert_eq!(conflicts("api", "other_request") - other_request, 2);

    // With an id of its own, bob's text is stored.
    let bobs = s
        .ok(
            "chat.postMessage",
            &bob,
            json!({"channel": general, "text": "bob's own words", "client_msg_id": "cmid-2"}),
        )
        .await;
    assert_ne!(bobs["ts"], first["ts"]);
    assert_eq!(
        texts(&s, &alice, &general).await,
        vec!["bob's own words", "ship it"]
    );
    s.stop().await;
}

/// POSTs a JSON body to a hook path with an `Idempotency-Key`: (status, text).
async fn hook_post(s: &Server, path: &str, key: &str, body: Value) -> (u16, String) {
    let resp = s
        .http
        .post(format!("{}{path}", s.base))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("text answer"))
}

#[tokio::test]
async fn a_hook_idempotency_key_names_one_request_of_one_user() {
    let s = Server::start_with_cluster().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let general = s.general().await;
    let hook_of = |v: Value| v["path"].as_str().expect("hook path").to_string();
    let alice_hook = hook_of(
        s.ok("hooks.create", &alice, json!({"channel": general}))
            .await,
    );
    let bob_hook = hook_of(
        s.ok("hooks.create", &bob, json!({"channel": general}))
            .await,
    );
    let other_user = conflicts("hook", "other_user");
    let other_request = conflicts("hook", "other_request");

    let deployed = json!({"text": "deployed 7"});
    let ok = (200, "ok".to_string());
    assert_eq!(
        hook_post(&s, &alice_hook, "deploy-7", deployed.clone()).await,
        ok
    );
    // A retry.
    assert_eq!(
        hook_post(&s, &alice_hook, "deploy-7", deployed.clone()).await,
        ok
    );
    let conflict = (422, "client_msg_id_conflict".to_string());
    // Another user's hook with the same key, and the key reused for another text.
    assert_eq!(
        hook_post(&s, &bob_hook, "deploy-7", json!({"text": "bob deployed"})).await,
        conflict
    );
    assert_eq!(
        hook_post(&s, &alice_hook, "deploy-7", json!({"text": "deployed 8"})).await,
        conflict
    );
    assert_eq!(conflicts("hook", "other_user") - other_user, 1);
    assert_eq!(conflicts("hook", "other_request") - other_request, 1);
    assert_eq!(texts(&s, &alice, &general).await, vec!["deployed 7"]);
    s.stop().await;
}

/// As in Slack, a post with `blocks` needs no `text`: the blocks' text is the message's.
#[tokio::test]
async fn a_post_with_blocks_and_no_text_keeps_the_blocks_text() {
    let s = Server::start_with_cluster().await;
    let alice = s.token("alice");
    let general = s.general().await;
    let blocks = json!([
        {"type": "header", "text": {"type": "plain_text", "text": "Deploy"}},
        {"type": "divider"},
        {"type": "section", "text": {"type": "mrkdwn", "text": "*prod* is green"}},
    ]);
    let v = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "blocks": blocks}),
        )
        .await;
    assert_eq!(v["message"]["text"], "Deploy\n*prod* is green", "{v}");
    // Form style: blocks as JSON text.
    let (_, v) = s
        .call_form(
            "chat.postMessage",
            &[
                ("token", alice.as_str()),
                ("channel", general.as_str()),
                ("blocks", &blocks.to_string()),
            ],
        )
        .await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        texts(&s, &alice, &general).await[..2],
        ["Deploy\n*prod* is green", "Deploy\n*prod* is green"]
    );
    // Given text wins; blocks without text, or not blocks at all, are refused.
    let v = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "fallback", "blocks": blocks}),
        )
        .await;
    assert_eq!(v["message"]["text"], "fallback");
    s.err(
        "chat.postMessage",
        &alice,
        json!({"channel": general, "blocks": [{"type": "divider"}]}),
        "no_text",
    )
    .await;
    s.err(
        "chat.postMessage",
        &alice,
        json!({"channel": general, "blocks": "not json"}),
        "invalid_blocks",
    )
    .await;
    s.stop().await;
}

/// Bots send Slack's legacy `attachments`, often with no `text` (Alertmanager, CI servers):
/// their text follows the message's text, through `chat.postMessage`, `chat.update` and
/// hooks alike, and malformed ones are refused by name and counted.
#[tokio::test]
async fn attachments_give_their_text_to_posts_edits_and_hook_posts() {
    let s = Server::start_with_cluster().await;
    let alice = s.token("alice");
    let general = s.general().await;
    let alert = json!([{
        "color": "danger",
        "fallback": "[FIRING:1] DiskFull",
        "title": "[FIRING:1] DiskFull",
        "title_link": "http://am.example/#/alerts",
        "text": "/var is 97% full",
        "fields": [{"title": "severity", "value": "page", "short": true}],
    }]);
    let shown =
        "<http://am.example/#/alerts|[FIRING:1] DiskFull>\n/var is 97% full\nseverity: page";
    let v = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "attachments": alert}),
        )
        .await;
    assert_eq!(v["message"]["text"], shown, "{v}");
    let ts = v["ts"].as_str().unwrap().to_string();
    // Form style (the SDKs' default): attachments as JSON text, after a text of its own.
    let (_, v) = s
        .call_form(
            "chat.postMessage",
            &[
                ("token", alice.as_str()),
                ("channel", general.as_str()),
                ("text", "Build 7 failed"),
                ("attachments", r#"[{"fallback":"see the log"}]"#),
            ],
        )
        .await;
    assert_eq!(v["message"]["text"], "Build 7 failed\nsee the log", "{v}");
    let v = s
        .ok(
            "chat.update",
            &alice,
            json!({"channel": general, "ts": ts, "attachments": [{"title": "[RESOLVED] DiskFull"}]}),
        )
        .await;
    assert_eq!(v["text"], "[RESOLVED] DiskFull", "{v}");
    let hook = s
        .ok("hooks.create", &alice, json!({"channel": general}))
        .await["path"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, answer) = hook_post(
        &s,
        &hook,
        "alert-1",
        json!({"username": "alertmanager", "attachments": alert}),
    )
    .await;
    assert_eq!((status, answer.as_str()), (200, "ok"));
    assert_eq!(
        texts(&s, &alice, &general).await[..3],
        [shown, "Build 7 failed\nsee the log", "[RESOLVED] DiskFull"]
    );

    let errors = |error: &str| {
        crate::metrics::ERRORS
            .with_label_values(&["chat.postMessage", error])
            .get()
    };
    let (invalid, too_many) = (
        errors("invalid_attachments"),
        errors("too_many_attachments"),
    );
    for bad in [json!({"color": "good"}), json!("not json"), json!([[1]])] {
        s.err(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "x", "attachments": bad}),
            "invalid_attachments",
        )
        .await;
    }
    s.err(
        "chat.postMessage",
        &alice,
        json!({"channel": general, "attachments": [{"color": "good"}]}),
        "no_text",
    )
    .await;
    let many: Vec<Value> = (0..101).map(|i| json!({"text": i.to_string()})).collect();
    s.err(
        "chat.postMessage",
        &alice,
        json!({"channel": general, "attachments": many}),
        "too_many_attachments",
    )
    .await;
    assert_eq!(errors("invalid_attachments") - invalid, 3);
    assert_eq!(errors("too_many_attachments") - too_many, 1);
    let (status, answer) = hook_post(&s, &hook, "alert-2", json!({"attachments": {}})).await;
    assert_eq!((status, answer.as_str()), (400, "invalid_attachments"));
    assert_eq!(
        texts(&s, &alice, &general).await.len(),
        3,
        "nothing refused was stored"
    );
    s.stop().await;
}

/// Each message's text and subtype, in an answer's `messages`.
fn texts_and_subtypes(answer: &Value) -> Vec<(&str, Option<&str>)> {
    answer["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["text"].as_str().expect("text"), m["subtype"].as_str()))
        .collect()
}

/// Slack's `reply_broadcast`: a reply also shown in the channel, as `thread_broadcast`, in
/// the channel's history and in its thread; without a thread it is an ordinary message.
#[tokio::test]
async fn a_broadcast_reply_is_shown_in_the_channel_and_its_thread() {
    let s = Server::start_with_cluster().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let general = s.general().await;
    let parent = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "release 3.1?"}),
        )
        .await["ts"]
        .as_str()
        .unwrap()
        .to_string();
    s.ok(
        "chat.postMessage",
        &bob,
        json!({"channel": general, "text": "checking", "thread_ts": parent}),
    )
    .await;
    // Form style, as the SDKs send it: the flag as text.
    let (_, v) = s
        .call_form(
            "chat.postMessage",
            &[
                ("token", bob.as_str()),
                ("channel", general.as_str()),
                ("text", "shipped"),
                ("thread_ts", parent.as_str()),
                ("reply_broadcast", "true"),
            ],
        )
        .await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["message"]["subtype"], "thread_broadcast", "{v}");
    assert_eq!(v["message"]["thread_ts"], parent.as_str());
    // Slack's `root`: the thread's start, which clients show above the reply.
    let root = &v["message"]["root"];
    assert_eq!(root["ts"], parent.as_str(), "{v}");
    assert_eq!(root["text"], "release 3.1?");
    assert_eq!(root["user"], s.user_id("alice").as_str());
    let v = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "no thread", "reply_broadcast": true}),
        )
        .await;
    assert!(v["message"].get("subtype").is_none(), "{v}");

    let history = s
        .ok("conversations.history", &alice, json!({"channel": general}))
        .await;
    assert_eq!(
        texts_and_subtypes(&history),
        [
            ("no thread", None),
            ("shipped", Some("thread_broadcast")),
            ("release 3.1?", None)
        ]
    );
    assert_eq!(history["messages"][2]["reply_count"], 2);
    assert_eq!(history["messages"][1]["root"]["text"], "release 3.1?");
    assert!(history["messages"][2].get("root").is_none());
    let replies = s
        .ok(
            "conversations.replies",
            &alice,
            json!({"channel": general, "ts": parent}),
        )
        .await;
    assert_eq!(
        texts_and_subtypes(&replies),
        [
            ("release 3.1?", None),
            ("checking", None),
            ("shipped", Some("thread_broadcast"))
        ]
    );
    s.stop().await;
}

/// The channel's newest message as history shows it.
async fn newest(s: &Server, token: &str, channel: &str) -> Value {
    s.ok(
        "conversations.history",
        token,
        json!({"channel": channel, "limit": 1}),
    )
    .await["messages"][0]
        .clone()
}

/// Blocks and attachments are kept as posted: history and the post's answer give
/// them back. `chat.update` keeps what it is not given and removes what it gets as `[]`.
#[tokio::test]
async fn blocks_and_attachments_are_kept_and_updates_keep_or_replace_them() {
    let s = Server::start_with_cluster().await;
    let alice = s.token("alice");
    let general = s.general().await;
    let blocks = json!([
        {"type": "header", "text": {"type": "plain_text", "text": "Deploy 9"}},
        {"type": "actions", "elements": [{"type": "button", "action_id": "ack",
            "text": {"type": "plain_text", "text": "Ack"}}]},
    ]);
    let attachments = json!([{"color": "good", "fallback": "all green", "text": "all green"}]);
    let v = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "deploy 9", "blocks": blocks, "attachments": attachments}),
        )
        .await;
    assert_eq!(v["message"]["blocks"], blocks, "{v}");
    assert_eq!(v["message"]["attachments"], attachments, "{v}");
    assert_eq!(v["message"]["text"], "deploy 9\nall green");
    let ts = v["ts"].as_str().unwrap().to_string();
    let m = newest(&s, &alice, &general).await;
    assert_eq!((&m["blocks"], &m["attachments"]), (&blocks, &attachments));

    // Text only: blocks and attachments stay, and their text with them.
    let v = s
        .ok(
            "chat.update",
            &alice,
            json!({"channel": general, "ts": ts, "text": "deploy 9 (done)"}),
        )
        .await;
    assert_eq!(v["message"]["blocks"], blocks, "{v}");
    assert_eq!(v["text"], "deploy 9 (done)\nall green");
    let m = newest(&s, &alice, &general).await;
    assert_eq!((&m["blocks"], &m["attachments"]), (&blocks, &attachments));
    assert_eq!(m["text"], "deploy 9 (done)\nall green");
    // An empty array removes them; new ones replace them.
    let new_blocks = json!([{"type": "section", "text": {"type": "mrkdwn", "text": "*done*"}}]);
    let v = s
        .ok(
            "chat.update",
            &alice,
            json!({"channel": general, "ts": ts, "blocks": new_blocks, "attachments": []}),
        )
        .await;
    assert_eq!(v["text"], "*done*", "{v}");
    let m = newest(&s, &alice, &general).await;
    assert_eq!(m["blocks"], new_blocks);
    assert!(m.get("attachments").is_none(), "{m}");
    assert_eq!(m["text"], "*done*");
    // Blocks are checked even beside text.
    s.err(
        "chat.postMessage",
        &alice,
        json!({"channel": general, "text": "x", "blocks": [1]}),
        "invalid_blocks",
    )
    .await;
    s.stop().await;
}
