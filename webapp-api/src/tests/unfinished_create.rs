//! `conversations.create` after a creation that stored the channel but not its first member
//! (that store call failed): the channel holds its name and no one sees it. The creator's
//! retry completes it; anyone else, or a different request, still gets `name_taken`.

use super::*;
use shared::ids::{ChannelId, Ts, UserId};
use shared::store::Channel;

#[tokio::test]
async fn a_retry_completes_a_channel_left_without_its_creator() {
    // With the real admin and channel servers behind it: the test posts.
    let s = Server::start_with_cluster().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let alice_id = s.user_id("alice");
    let workspace = s.signer.verify(&alice).unwrap().workspace;
    // What a create leaves when adding its creator fails: the channel, no members.
    let orphan = |name: &str, is_private: bool| Channel {
        id: ChannelId::generate(),
        workspace: workspace.clone(),
        name: name.into(),
        is_private,
        creator: UserId::from(alice_id.as_str()),
        created: Ts::now(),
        topic: String::new(),
        purpose: String::new(),
        is_archived: false,
    };
    let left = orphan("half-made", true);
    s.store.create_channel(&left).await.unwrap();

    // Someone else, or alice asking for something else, cannot take or finish it.
    s.err(
        "conversations.create",
        &bob,
        json!({"name": "half-made", "is_private": true}),
        "name_taken",
    )
    .await;
    s.err(
        "conversations.create",
        &alice,
        json!({"name": "half-made"}),
        "name_taken",
    )
    .await;

    // Alice's retry of her request completes it: the same channel, with her in it.
    let v = s
        .ok(
            "conversations.create",
            &alice,
            json!({"name": "half-made", "is_private": true}),
        )
        .await;
    assert_eq!(v["channel"]["id"], left.id.0.as_str(), "{v}");
    assert_eq!(v["channel"]["is_member"], true, "{v}");
    let members = s
        .ok(
            "conversations.members",
            &alice,
            json!({"channel": left.id.0}),
        )
        .await;
    assert_eq!(members["members"], json!([alice_id]));

    // A private channel that emptied after use is not unfinished: its creator, removed
    // or gone, does not get back in by asking for its name.
    let used = s
        .ok(
            "conversations.create",
            &alice,
            json!({"name": "used-then-empty", "is_private": true}),
        )
        .await;
    let used = channel_id(&used);
    s.ok(
        "chat.postMessage",
        &alice,
        json!({"channel": used, "text": "hi"}),
    )
    .await;
    s.ok("conversations.leave", &alice, json!({"channel": used}))
        .await;
    s.err(
        "conversations.create",
        &alice,
        json!({"name": "used-then-empty", "is_private": true}),
        "name_taken",
    )
    .await;

    // Once it has a member, it is an ordinary taken name, for alice too.
    s.err(
        "conversations.create",
        &alice,
        json!({"name": "half-made", "is_private": true}),
        "name_taken",
    )
    .await;
}
