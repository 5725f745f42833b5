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
