//! Conversations beyond public channels, end to end: DMs (`conversations.open`), invitations to
//! private channels, member lists; sessions start receiving a conversation the moment its
//! membership changes, and non-members never read it.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_and_invites_reach_exactly_their_members() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob", "carol"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let carol = cluster.user("acme", "carol").clone();
    let bob_ws = cluster.connect(0, &bob).await;
    let carol_ws = cluster.connect(1, &carol).await;

    // A 1:1 DM: opening it again finds the same conversation.
    let dm = cluster
        .api_ok(
            "conversations.open",
            &alice.token,
            json!({ "users": bob.id }),
        )
        .await;
    let dm_id = dm["channel"]["id"].as_str().unwrap().to_string();
    assert_eq!(dm["channel"]["is_im"], true);
    assert_eq!(dm["channel"]["user"], bob.id.as_str());
    let again = cluster
        .api_ok(
            "conversations.open",
            &bob.token,
            json!({ "users": alice.id }),
        )
        .await;
    assert_eq!(again["channel"]["id"], dm_id.as_str());
    assert_eq!(again["already_open"], true);
    bob_ws
        .wait_event(0, WAIT, "channel_joined", |e| {
            e["type"] == "channel_joined" && e["channel"]["id"] == dm_id.as_str()
        })
        .await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&dm_id), &[&bob_ws])
        .await;
    let m = cluster.post(&alice, &dm_id, "psst, bob").await;
    bob_ws.wait_seq(&dm_id, seq_of(&m), WAIT).await;
    // Carol is not in it: not readable, not postable, not delivered.
    for method in [
        "conversations.history",
        "conversations.members",
        "conversations.info",
    ] {
        let v = cluster
            .api(method, &carol.token, json!({ "channel": dm_id }))
            .await;
        assert_eq!(v["error"], "channel_not_found", "{method}: {v}");
    }
    let v = cluster
        .api(
            "chat.postMessage",
            &carol.token,
            json!({ "channel": dm_id, "text": "hi" }),
        )
        .await;
    assert_eq!(v["error"], "channel_not_found", "{v}");
    assert!(carol_ws.messages(&dm_id).is_empty());
    // A DM cannot be joined or invited into, and its name is reserved.
    let v = cluster
        .api(
            "conversations.invite",
            &alice.token,
            json!({ "channel": dm_id, "users": carol.id }),
        )
        .await;
    assert_eq!(v["error"], "method_not_supported_for_channel_type", "{v}");
    let v = cluster
        .api(
            "conversations.create",
            &alice.token,
            json!({ "name": "dm-sneaky" }),
        )
        .await;
    assert_eq!(v["error"], "invalid_name_specials", "{v}");

    // A group DM of three.
    let group = cluster
        .api_ok(
            "conversations.open",
            &carol.token,
            json!({ "users": format!("{},{}", alice.id, bob.id) }),
        )
        .await;
    assert_eq!(group["channel"]["is_mpim"], true);

    // A private channel: carol sees it only once invited, and from then on receives it live.
    let secret = cluster
        .api_ok(
            "conversations.create",
            &alice.token,
            json!({ "name": "plans", "is_private": true }),
        )
        .await;
    let secret_id = secret["channel"]["id"].as_str().unwrap().to_string();
    let v = cluster
        .api(
            "conversations.history",
            &carol.token,
            json!({ "channel": secret_id }),
        )
        .await;
    assert_eq!(v["error"], "channel_not_found", "{v}");
    let v = cluster
        .api(
            "conversations.invite",
            &carol.token,
            json!({ "channel": secret_id, "users": bob.id }),
        )
        .await;
    assert_eq!(
        v["error"], "channel_not_found",
        "a non-member cannot invite: {v}"
    );
    cluster
        .api_ok(
            "conversations.invite",
            &alice.token,
            json!({ "channel": secret_id, "users": format!("{},{}", carol.id, bob.id) }),
        )
        .await;
    carol_ws
        .wait_event(0, WAIT, "channel_joined", |e| {
            e["type"] == "channel_joined" && e["channel"]["id"] == secret_id.as_str()
        })
        .await;
    cluster
        .warm_up(
            &alice,
            std::slice::from_ref(&secret_id),
            &[&carol_ws, &bob_ws],
        )
        .await;
    let m = cluster.post(&alice, &secret_id, "welcome").await;
    carol_ws.wait_seq(&secret_id, seq_of(&m), WAIT).await;
    bob_ws.wait_seq(&secret_id, seq_of(&m), WAIT).await;

    // Members, a page at a time.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..5 {
        let v = cluster
            .api_ok(
                "conversations.members",
                &carol.token,
                json!({ "channel": secret_id, "limit": 1, "cursor": cursor }),
            )
            .await;
        seen.extend(
            v["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_string()),
        );
        cursor = v["response_metadata"]["next_cursor"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if cursor.is_empty() {
            break;
        }
    }
    let mut expected = vec![alice.id.clone(), bob.id.clone(), carol.id.clone()];
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected);
    let v = cluster
        .api(
            "conversations.open",
            &alice.token,
            json!({ "users": "U0NOBODY" }),
        )
        .await;
    assert_eq!(v["error"], "user_not_found", "{v}");
}
