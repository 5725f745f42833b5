//! `conversations.invite` answers as Slack's does when listed users cannot be invited.

use super::*;

#[tokio::test]
async fn inviting_members_again_fails_with_already_in_channel() {
    let s = Server::start().await;
    let alice = s.token("alice");
    let (alice_id, bob_id, carol_id) = (s.user_id("alice"), s.user_id("bob"), s.user_id("carol"));
    let plans = channel_id(
        &s.ok(
            "conversations.create",
            &alice,
            json!({"name": "plans", "is_private": true}),
        )
        .await,
    );
    s.ok(
        "conversations.invite",
        &alice,
        json!({"channel": plans, "users": bob_id}),
    )
    .await;
    let members = || async {
        let v = s
            .ok("conversations.members", &alice, json!({"channel": plans}))
            .await;
        let mut m: Vec<String> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_string())
            .collect();
        m.sort();
        m
    };
    let error_of = |user: &str, error: &str| json!({"user": user, "ok": false, "error": error});

    // Everyone listed is in already.
    let (status, v) = s
        .call(
            "conversations.invite",
            Some(&alice),
            json!({"channel": plans, "users": bob_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"], "already_in_channel", "{v}");
    assert_eq!(
        v["errors"],
        json!([error_of(&bob_id, "already_in_channel")])
    );
    let (_, v) = s
        .call(
            "conversations.invite",
            Some(&alice),
            json!({"channel": plans, "users": alice_id}),
        )
        .await;
    assert_eq!(v["error"], "cant_invite_self", "{v}");

    // One in, one not: without `force` no one is invited.
    let both = format!("{bob_id},{carol_id}");
    let (_, v) = s
        .call(
            "conversations.invite",
            Some(&alice),
            json!({"channel": plans, "users": both}),
        )
        .await;
    assert_eq!(v["error"], "already_in_channel", "{v}");
    assert_eq!(
        v["errors"],
        json!([error_of(&bob_id, "already_in_channel")])
    );
    let mut expected = vec![alice_id.clone(), bob_id.clone()];
    expected.sort();
    assert_eq!(members().await, expected);

    // With `force` the rest are invited, and the others reported.
    let v = s
        .ok(
            "conversations.invite",
            &alice,
            json!({"channel": plans, "users": both, "force": true}),
        )
        .await;
    assert_eq!(
        v["errors"],
        json!([error_of(&bob_id, "already_in_channel")])
    );
    expected.push(carol_id.clone());
    expected.sort();
    assert_eq!(members().await, expected);
    // `force` invites no one when no one is left.
    s.err(
        "conversations.invite",
        &alice,
        json!({"channel": plans, "users": both, "force": true}),
        "already_in_channel",
    )
    .await;
    s.stop().await;
}
