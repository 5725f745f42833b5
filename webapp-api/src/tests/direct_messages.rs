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

/// `conversations.close`: a DM closed for the caller alone, `im_close` to its sessions, open
/// again by `conversations.open` (`im_open`) or by a message, not by a reaction or a thread
/// reply; a channel is not closed.
#[tokio::test]
async fn a_dm_is_closed_for_the_caller_until_opened_or_written_to() {
    let s = Server::start_with_cluster().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let (alice_id, bob_id, carol_id) = (s.user_id("alice"), s.user_id("bob"), s.user_id("carol"));
    let dm = s
        .ok("conversations.open", &alice, json!({"users": bob_id}))
        .await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let is_open = |token: String| {
        let s = &s;
        let dm = dm.clone();
        async move {
            s.ok("conversations.info", &token, json!({"channel": dm}))
                .await["channel"]["is_open"]
                .clone()
        }
    };
    // What Flannel caches: the snapshot lists the DMs closed for whom (its boot data then
    // says `is_open: false` to them).
    let closed_in_snapshot = || {
        let s = &s;
        async move {
            let mut closed: Vec<(String, String)> = s
                .flannel_snapshot()
                .await
                .closed_dms
                .into_iter()
                .map(|(c, u)| (c.0, u.0))
                .collect();
            closed.sort();
            closed
        }
    };
    assert_eq!(is_open(alice.clone()).await, true);
    assert!(closed_in_snapshot().await.is_empty());
    let first = s.post_ts(&bob, &dm, "hi alice").await;

    let v = s
        .ok("conversations.close", &alice, json!({"channel": dm}))
        .await;
    assert!(v.get("no_op").is_none(), "{v}");
    let closed = s.user_notices(&alice_id, "im_close", 1).await;
    assert!(!closed.is_empty());
    assert_eq!(closed[0]["channel"], dm.as_str());
    assert_eq!(closed[0]["user"], alice_id.as_str());
    assert_eq!(is_open(alice.clone()).await, false);
    assert_eq!(is_open(bob.clone()).await, true, "bob's stays open");
    assert_eq!(
        closed_in_snapshot().await,
        vec![(dm.clone(), alice_id.clone())]
    );
    let v = s
        .ok("conversations.close", &alice, json!({"channel": dm}))
        .await;
    assert_eq!(
        (&v["no_op"], &v["already_closed"]),
        (&json!(true), &json!(true))
    );

    // Reactions, or a reply in a thread, are no message the DM shows: still closed (more
    // entries than one look reads).
    for name in [
        "wave", "tada", "eyes", "rocket", "fire", "heart", "smile", "clap", "pray", "100", "star",
        "sparkles", "ok_hand", "muscle", "joy", "sob", "x", "warning", "zap", "bulb", "bell",
    ] {
        s.ok(
            "reactions.add",
            &bob,
            json!({"channel": dm, "timestamp": first, "name": name}),
        )
        .await;
    }
    s.ok(
        "chat.postMessage",
        &bob,
        json!({"channel": dm, "text": "in a thread", "thread_ts": first}),
    )
    .await;
    assert_eq!(is_open(alice.clone()).await, false);
    assert!(s.user_notices(&alice_id, "im_open", 0).await.is_empty());
    assert_eq!(closed_in_snapshot().await.len(), 1);
    // Bob writes: open again for alice, whose sessions hear `im_open` (the call answers after
    // the event is relayed), once: the next message opens nothing.
    s.post_ts(&bob, &dm, "are you there?").await;
    assert_eq!(is_open(alice.clone()).await, true);
    assert!(closed_in_snapshot().await.is_empty());
    let opened = s.user_notices(&alice_id, "im_open", 1).await;
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["channel"], dm.as_str());
    assert_eq!(opened[0]["user"], alice_id.as_str());
    s.post_ts(&bob, &dm, "hello?").await;
    assert_eq!(s.user_notices(&alice_id, "im_open", 1).await.len(), 1);
    assert!(s.user_notices(&bob_id, "im_open", 0).await.is_empty());
    // Alice's own post, from another client, opens it too.
    s.ok("conversations.close", &alice, json!({"channel": dm}))
        .await;
    assert_eq!(is_open(alice.clone()).await, false);
    s.post_ts(&alice, &dm, "back").await;
    assert_eq!(is_open(alice.clone()).await, true);
    assert_eq!(s.user_notices(&alice_id, "im_open", 2).await.len(), 2);

    // Closed again, then opened by alice: `im_open`, and not `already_open`.
    s.ok("conversations.close", &alice, json!({"channel": dm}))
        .await;
    assert_eq!(is_open(alice.clone()).await, false);
    let v = s
        .ok("conversations.open", &alice, json!({"users": bob_id}))
        .await;
    assert!(v.get("already_open").is_none(), "{v}");
    assert_eq!(v["channel"]["is_open"], true, "{v}");
    let opened = s.user_notices(&alice_id, "im_open", 3).await;
    assert_eq!(opened.len(), 3, "{opened:?}");
    assert_eq!(opened[2]["channel"], dm.as_str());
    assert_eq!(is_open(alice.clone()).await, true);
    let v = s
        .ok("conversations.open", &alice, json!({"users": bob_id}))
        .await;
    assert_eq!(v["already_open"], true, "{v}");

    // A group DM: `mpim_close`.
    let group = s
        .ok(
            "conversations.open",
            &alice,
            json!({"users": format!("{bob_id},{carol_id}")}),
        )
        .await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.ok("conversations.close", &alice, json!({"channel": group}))
        .await;
    let closed = s.user_notices(&alice_id, "mpim_close", 1).await;
    assert_eq!(closed[0]["channel"], group.as_str());
    assert_eq!(
        closed_in_snapshot().await,
        vec![(group.clone(), alice_id.clone())]
    );
    // Carol writes there: `mpim_open` to alice alone (bob never closed it).
    let carol = s.token("carol");
    s.post_ts(&carol, &group, "lunch?").await;
    let opened = s.user_notices(&alice_id, "mpim_open", 1).await;
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["channel"], group.as_str());
    assert!(s.user_notices(&bob_id, "mpim_open", 0).await.is_empty());
    assert!(s.user_notices(&carol_id, "mpim_open", 0).await.is_empty());
    assert!(closed_in_snapshot().await.is_empty());

    // Not a DM, not visible, not given: clear errors.
    let general = s.demo["general"].as_str().unwrap().to_string();
    s.err(
        "conversations.close",
        &alice,
        json!({"channel": general}),
        "method_not_supported_for_channel_type",
    )
    .await;
    s.err(
        "conversations.close",
        &carol,
        json!({"channel": dm}),
        "channel_not_found",
    )
    .await;
    s.err(
        "conversations.close",
        &alice,
        json!({}),
        "channel_not_found",
    )
    .await;
}
