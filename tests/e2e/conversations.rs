//! Conversations beyond public channels, end to end: DMs (`conversations.open`), invitations to
//! private channels, member lists; sessions start receiving a conversation the moment its
//! membership changes, and non-members never read it.

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_and_invites_reach_exactly_their_members() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob", "carol"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let carol = cluster.user("acme", "carol").clone();
    // Where carol keeps receiving messages: the sentinel that her session is live.
    let lobby = cluster.create_channel(&alice, "lobby").await;
    cluster.join(&carol, &lobby).await;
    let bob_ws = cluster.connect(0, &bob).await;
    let carol_ws = cluster.connect(1, &carol).await;
    // alice on carol's gateway: a member of the DM there, so that gateway takes the DM too
    // and her session is the witness that it handed the DM's message to every session it
    // was going to.
    let alice_1 = cluster.connect(1, &alice).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&lobby), &[&carol_ws])
        .await;

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
    for ws in [&bob_ws, &alice_1] {
        ws.wait_event(0, WAIT, "channel_joined", |e| {
            e["type"] == "channel_joined" && e["channel"]["id"] == dm_id.as_str()
        })
        .await;
    }
    cluster
        .warm_up(&alice, std::slice::from_ref(&dm_id), &[&bob_ws, &alice_1])
        .await;
    let m = cluster.post(&alice, &dm_id, "psst, bob").await;
    bob_ws.wait_seq(&dm_id, seq_of(&m), WAIT).await;
    // Carol is not in it: not readable, not postable, not delivered. Sentinels, no sleep:
    // once alice's session on carol's gateway has the DM's message, that gateway has handed
    // it to every session it was going to; a lobby message posted after that reaches carol
    // behind anything leaked (one queue per session).
    alice_1.wait_seq(&dm_id, seq_of(&m), WAIT).await;
    let sentinel = seq_of(&cluster.post(&alice, &lobby, "lobby sentinel").await);
    carol_ws.wait_seq(&lobby, sentinel, WAIT).await;
    assert_hidden_from(&cluster, &carol, &dm_id).await;
    assert!(
        carol_ws
            .events()
            .iter()
            .all(|e| !e.to_string().contains(dm_id.as_str())),
        "carol got an event of a DM she is not in"
    );
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

    // A post right after a join, with no warm-up and no wait for `channel_joined`, reaches
    // the new member live: its gateway may hear of the post before the join, and the join
    // carries where the channel was, so the session fetches what it missed.
    for round in 0..3 {
        let fresh = cluster
            .api_ok(
                "conversations.create",
                &alice.token,
                json!({ "name": format!("launch-{round}"), "is_private": true }),
            )
            .await;
        let fresh_id = fresh["channel"]["id"].as_str().unwrap().to_string();
        cluster
            .api_ok(
                "conversations.invite",
                &alice.token,
                json!({ "channel": fresh_id, "users": carol.id }),
            )
            .await;
        let first = cluster
            .post(&alice, &fresh_id, "right after the invite")
            .await;
        carol_ws.wait_seq(&fresh_id, seq_of(&first), WAIT).await;
        cluster
            .api_ok(
                "conversations.invite",
                &alice.token,
                json!({ "channel": fresh_id, "users": bob.id }),
            )
            .await;
        let second = cluster
            .post(&carol, &fresh_id, "and after the next one")
            .await;
        bob_ws.wait_seq(&fresh_id, seq_of(&second), WAIT).await;
    }

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

/// `conversations.kick` takes a member out the way `conversations.leave` does: the kicked
/// user's sessions are told `channel_left` and stop receiving the channel while the others go
/// on receiving it, and a private channel is gone for them (`channel_not_found`, as Slack
/// answers a non-member). A member may remove another from a private channel; on a public one
/// only a workspace admin may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_member_stops_receiving_the_channel() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob", "carol"])).await;
    // The first user of a workspace is its admin.
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let carol = cluster.user("acme", "carol").clone();
    let secret = cluster
        .create_private(&alice, "kick-secret", &[&bob, &carol])
        .await;
    let open = cluster.create_channel(&alice, "kick-open").await;
    cluster.join(&bob, &open).await;
    cluster.join(&carol, &open).await;
    // Where each kicked user keeps receiving messages, to show their sessions are live.
    let lobby = cluster.create_channel(&alice, "kick-lobby").await;
    cluster.join(&bob, &lobby).await;
    cluster.join(&carol, &lobby).await;

    // carol and bob on different gateways, alice on both: the witness that each gateway
    // handed a message to every session it was going to.
    let carol_ws = cluster.connect(1, &carol).await;
    let bob_ws = cluster.connect(0, &bob).await;
    let alice_0 = cluster.connect(0, &alice).await;
    let alice_1 = cluster.connect(1, &alice).await;
    let everyone = [&carol_ws, &bob_ws, &alice_0, &alice_1];
    cluster
        .warm_up(
            &alice,
            &[secret.clone(), open.clone(), lobby.clone()],
            &everyone,
        )
        .await;

    // A member removes another from a private channel.
    kick_and_check(
        &cluster,
        &bob,
        &carol,
        &carol_ws,
        &secret,
        &lobby,
        &[&bob_ws, &alice_0, &alice_1],
    )
    .await;
    assert_hidden_from(&cluster, &carol, &secret).await;

    // On a public channel a member may not; the workspace admin may.
    let v = cluster
        .api(
            "conversations.kick",
            &carol.token,
            json!({ "channel": open, "user": bob.id }),
        )
        .await;
    assert_eq!(v["error"], "restricted_action", "{v}");
    kick_and_check(
        &cluster,
        &alice,
        &bob,
        &bob_ws,
        &open,
        &lobby,
        &[&carol_ws, &alice_0, &alice_1],
    )
    .await;
    // A public channel stays readable, as by anyone of the workspace, but no longer joined.
    let v = cluster
        .api_ok("conversations.info", &bob.token, json!({ "channel": open }))
        .await;
    assert_eq!(v["channel"]["is_member"], false);
    let v = cluster
        .api_ok(
            "conversations.history",
            &bob.token,
            json!({ "channel": open }),
        )
        .await;
    assert!(
        v["messages"].as_array().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    // Rejoining, bob is told `channel_joined`, and every session in the channel, his own
    // included, `member_joined_channel`.
    let joined_from: Vec<usize> = everyone.iter().map(|c| c.num_events()).collect();
    cluster.join(&bob, &open).await;
    for (client, from) in everyone.iter().zip(joined_from) {
        client
            .wait_event(from, WAIT, "member_joined_channel", |e| {
                e["type"] == "member_joined_channel"
                    && e["channel"] == open.as_str()
                    && e["user"] == bob.id.as_str()
                    && e["team"] == bob.workspace.as_str()
                    && e["channel_type"] == "C"
            })
            .await;
    }
}

/// `kicker` removes `kicked` (whose session is `kicked_ws`) from `channel`; the sessions of
/// `others` are told `member_left_channel`; then the kicker's next message of `channel` reaches
/// every session of `others` but not `kicked_ws`, which still receives `lobby` (where the
/// kicker is too).
async fn kick_and_check(
    cluster: &Cluster,
    kicker: &TestUser,
    kicked: &TestUser,
    kicked_ws: &Client,
    channel: &str,
    lobby: &str,
    others: &[&Client],
) {
    let from = kicked_ws.num_events();
    let others_from: Vec<usize> = others.iter().map(|c| c.num_events()).collect();
    let v = cluster
        .api_ok(
            "conversations.kick",
            &kicker.token,
            json!({ "channel": channel, "user": kicked.id }),
        )
        .await;
    assert_eq!(v, json!({ "ok": true }));
    kicked_ws
        .wait_event(from, WAIT, "channel_left", |e| {
            e["type"] == "channel_left" && e["channel"] == channel
        })
        .await;
    // The members left are told who went (Slack's `member_left_channel`).
    for (client, from) in others.iter().zip(others_from) {
        client
            .wait_event(from, WAIT, "member_left_channel", |e| {
                e["type"] == "member_left_channel"
                    && e["channel"] == channel
                    && e["user"] == kicked.id.as_str()
            })
            .await;
    }
    let before = kicked_ws.messages(channel).len();
    let after = cluster.post(kicker, channel, "after the kick").await;
    // The sentinel reaching the others means both gateways handed "after the kick" to every
    // session they were going to; a message of the lobby posted after that reaches the kicked
    // user's session behind it (one queue per session).
    cluster.settle(kicker, channel, others).await;
    for client in others {
        assert!(
            client
                .messages(channel)
                .iter()
                .any(|m| m["ts"] == after["ts"]),
            "a member missed the message posted after the kick"
        );
    }
    let sentinel = seq_of(&cluster.post(kicker, lobby, "lobby sentinel").await);
    kicked_ws.wait_seq(lobby, sentinel, WAIT).await;
    assert_eq!(
        kicked_ws.messages(channel).len(),
        before,
        "{} got a message of a channel they were removed from",
        kicked.name
    );
    let v = cluster
        .api(
            "conversations.kick",
            &kicker.token,
            json!({ "channel": channel, "user": kicked.id }),
        )
        .await;
    assert_eq!(v["error"], "not_in_channel", "kicking again: {v}");
}

/// `user` can neither read `channel` (history, info, members) nor post to it: to them it
/// does not exist (`channel_not_found`), as a private conversation is to a non-member.
async fn assert_hidden_from(cluster: &Cluster, user: &TestUser, channel: &str) {
    for method in [
        "conversations.history",
        "conversations.info",
        "conversations.members",
    ] {
        let v = cluster
            .api(method, &user.token, json!({ "channel": channel }))
            .await;
        assert_eq!(v["error"], "channel_not_found", "{method}: {v}");
    }
    let v = cluster
        .api(
            "chat.postMessage",
            &user.token,
            json!({ "channel": channel, "text": "still here?" }),
        )
        .await;
    assert_eq!(v["error"], "channel_not_found", "{v}");
}

/// The workspace's changes reach its sessions as Slack's events: a public channel created,
/// renamed, archived and unarchived to everyone; a private channel's rename only to its
/// members (as `group_rename`); a new user (`team_join`) and a changed profile
/// (`user_change`) to everyone; a topic change to the channel's members, as its `channel_topic`
/// message. Each on both gateways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_changes_reach_every_session_and_private_ones_only_members() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob", "carol"])).await;
    // The first user of a workspace is its admin.
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let carol = cluster.user("acme", "carol").clone();
    let bob_ws = cluster.connect(0, &bob).await;
    let carol_ws = cluster.connect(1, &carol).await;
    let everyone = [&bob_ws, &carol_ws];

    let launch = cluster.create_channel(&alice, "launch").await;
    for ws in everyone {
        let e = ws
            .wait_event(0, WAIT, "channel_created", |e| {
                e["type"] == "channel_created" && e["channel"]["name"] == "launch"
            })
            .await;
        assert_eq!(e["channel"]["id"], launch.as_str(), "{e}");
        assert_eq!(e["channel"]["creator"], alice.id.as_str(), "{e}");
    }
    cluster
        .api_ok(
            "conversations.rename",
            &alice.token,
            json!({ "channel": launch, "name": "launched" }),
        )
        .await;
    for kind in ["channel_archive", "channel_unarchive"] {
        let method = kind.replace("channel_", "conversations.");
        cluster
            .api_ok(&method, &alice.token, json!({ "channel": launch }))
            .await;
    }
    for ws in everyone {
        let e = ws
            .wait_event(0, WAIT, "channel_rename", |e| {
                e["type"] == "channel_rename" && e["channel"]["name"] == "launched"
            })
            .await;
        assert_eq!(e["channel"]["id"], launch.as_str(), "{e}");
        for kind in ["channel_archive", "channel_unarchive"] {
            let channel = launch.clone();
            let e = ws
                .wait_event(0, WAIT, kind, move |e| {
                    e["type"] == kind && e["channel"] == channel.as_str()
                })
                .await;
            assert_eq!(e["user"], alice.id.as_str(), "{e}");
        }
    }

    // A topic change is announced in the channel (Slack's `channel_topic` message), so its
    // members' clients learn of it as it happens.
    for user in [&bob, &carol] {
        cluster.join(user, &launch).await;
    }
    cluster
        .api_ok(
            "conversations.setTopic",
            &alice.token,
            json!({ "channel": launch, "topic": "T-minus 3" }),
        )
        .await;
    for ws in everyone {
        let e = ws
            .wait_event(0, WAIT, "channel_topic", |e| {
                e["type"] == "message" && e["subtype"] == "channel_topic"
            })
            .await;
        assert_eq!(e["topic"], "T-minus 3", "{e}");
        assert_eq!(e["text"], "set the channel topic: T-minus 3", "{e}");
        assert_eq!(
            (&e["user"], &e["channel"]),
            (&json!(alice.id), &json!(launch)),
            "{e}"
        );
    }

    // A private channel of alice and carol: its rename reaches carol, not bob.
    let secret = cluster.create_private(&alice, "secret", &[&carol]).await;
    cluster
        .api_ok(
            "conversations.rename",
            &alice.token,
            json!({ "channel": secret, "name": "secret-2" }),
        )
        .await;
    carol_ws
        .wait_event(0, WAIT, "group_rename", |e| {
            e["type"] == "group_rename" && e["channel"]["name"] == "secret-2"
        })
        .await;

    // A new user, then a changed profile: everyone hears. What bob hears after them shows
    // that he never heard of the private channel.
    let created = cluster
        .api_ok(
            "admin.users.create",
            &alice.token,
            json!({ "name": "dave" }),
        )
        .await;
    let dave = created["user"]["id"].as_str().expect("user id").to_string();
    cluster
        .api_ok(
            "users.profile.set",
            &carol.token,
            json!({ "profile": { "display_name": "Carol C." } }),
        )
        .await;
    for ws in everyone {
        let who = dave.clone();
        let e = ws
            .wait_event(0, WAIT, "team_join", move |e| {
                e["type"] == "team_join" && e["user"]["id"] == who.as_str()
            })
            .await;
        assert_eq!(e["user"]["name"], "dave", "{e}");
        let carol_id = carol.id.clone();
        let e = ws
            .wait_event(0, WAIT, "user_change", move |e| {
                e["type"] == "user_change" && e["user"]["id"] == carol_id.as_str()
            })
            .await;
        assert_eq!(e["user"]["profile"]["display_name"], "Carol C.", "{e}");
    }
    let private_to_bob: Vec<_> = bob_ws
        .events()
        .into_iter()
        .filter(|e| {
            e.to_string().contains(secret.as_str())
                || e["type"].as_str().is_some_and(|t| t.starts_with("group_"))
        })
        .collect();
    assert!(private_to_bob.is_empty(), "{private_to_bob:?}");
}
