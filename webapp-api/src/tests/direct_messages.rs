//! Direct messages as Slack clients use them: a 1:1 DM names its other member (`user`) in
//! every answer that carries it, a group DM holds up to 9 people with the caller, and
//! `chat.postMessage` to a user id posts to the DM with that user.

use super::*;

/// Creates users `name-0`.. `name-<n-1>` in the demo workspace; their ids.
async fn more_users(s: &Server, name: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let (user, _) = s
            .user_in("demo", &format!("{name}-{i}"), crate::UserKind::default())
            .await;
        ids.push(user.id.0);
    }
    ids
}

#[tokio::test]
async fn a_group_dm_holds_nine_people_the_caller_included() {
    let s = Server::start().await;
    let alice = s.token("alice");
    let mut others = vec![s.user_id("bob"), s.user_id("carol")];
    others.extend(more_users(&s, "guest", 7).await);
    // Eight others and the caller, listed or not: nine people.
    for with_caller in [false, true] {
        let mut users = others[..8].to_vec();
        if with_caller {
            users.push(s.user_id("alice"));
        }
        let v = s
            .ok(
                "conversations.open",
                &alice,
                json!({"users": users.join(",")}),
            )
            .await;
        assert_eq!(v["channel"]["is_mpim"], true, "{v}");
        assert_eq!(v["channel"]["num_members"], 9, "{v}");
    }
    // Nine others make ten.
    s.err(
        "conversations.open",
        &alice,
        json!({"users": others.join(",")}),
        "invalid_arguments",
    )
    .await;
    // A DM with oneself is still one.
    let me = s.user_id("alice");
    let v = s
        .ok("conversations.open", &alice, json!({"users": me}))
        .await;
    assert_eq!(v["channel"]["is_im"], true, "{v}");
    assert_eq!(v["channel"]["user"], me, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn a_dm_names_its_other_member_wherever_it_is_shown() {
    let s = Server::start().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let (alice_id, bob_id, carol_id) = (s.user_id("alice"), s.user_id("bob"), s.user_id("carol"));
    let dm = s.open_dm(&alice, &[&bob_id]).await;
    let group = s.open_dm(&alice, &[&bob_id, &carol_id]).await;
    for (token, other) in [(&alice, &bob_id), (&bob, &alice_id)] {
        let v = s
            .ok("conversations.info", token, json!({"channel": dm}))
            .await;
        assert_eq!(v["channel"]["user"], *other, "{v}");
        for method in ["conversations.list", "users.conversations"] {
            let v = s.ok(method, token, json!({"types": "im,mpim"})).await;
            for c in v["channels"].as_array().expect("channels") {
                if c["id"] == dm.as_str() {
                    assert_eq!(c["user"], *other, "{method}: {c}");
                } else {
                    assert_eq!(c["id"], group.as_str(), "{method}: {c}");
                    assert!(c.get("user").is_none(), "{method}: {c}");
                }
            }
        }
    }
    // Channels have no `user`.
    let v = s
        .ok(
            "conversations.info",
            &alice,
            json!({"channel": s.general().await}),
        )
        .await;
    assert!(v["channel"].get("user").is_none(), "{v}");
    s.stop().await;
}

#[tokio::test]
async fn posting_to_a_user_id_posts_to_the_dm_with_that_user() {
    let s = Server::start_with_cluster().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let (alice_id, bob_id) = (s.user_id("alice"), s.user_id("bob"));
    // The DM does not exist yet: the post opens it.
    let v = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": bob_id, "text": "psst"}),
        )
        .await;
    let dm = v["channel"].as_str().expect("channel").to_string();
    let opened = s
        .ok("conversations.open", &bob, json!({"users": alice_id}))
        .await;
    assert_eq!(channel_id(&opened), dm);
    assert_eq!(opened["already_open"], true);
    let history = s
        .ok("conversations.history", &bob, json!({"channel": dm}))
        .await;
    assert_eq!(history["messages"][0]["text"], "psst", "{history}");
    // Bob answers to alice's id: the same DM.
    let v = s
        .ok(
            "chat.postMessage",
            &bob,
            json!({"channel": alice_id, "text": "hi"}),
        )
        .await;
    assert_eq!(v["channel"], dm.as_str());
    // A user of another workspace is a channel the caller cannot see.
    crate::create_workspace(&s.store, "acme").await.expect("ws");
    let (mallory, _) = s
        .user_in("acme", "mallory", crate::UserKind::default())
        .await;
    for channel in [mallory.id.0.as_str(), "UNOSUCHUSER"] {
        s.err(
            "chat.postMessage",
            &alice,
            json!({"channel": channel, "text": "hi"}),
            "channel_not_found",
        )
        .await;
    }
    s.stop().await;
}
