//! `conversations.kick` with the real admin server behind the Web API ([`super::cluster`]), so
//! the change it relays is recorded: Slack's default permissions (workspace admins anywhere
//! they can see; members from private channels only), its refusals, and a removal relayed
//! exactly as `conversations.leave` relays a member leaving.

use shared::protocol::UserEvent;

use super::*;
use crate::metrics as m;

/// The users relayed as having left `channel`, in relay order, once there are `n` (waits at
/// most 10 s, then returns what came).
async fn left_when(s: &Server, channel: &str, n: usize) -> Vec<String> {
    let left = || -> Vec<String> {
        s.relayed_events()
            .iter()
            .filter_map(|e| match e {
                UserEvent::ChannelLeft {
                    workspace,
                    channel: c,
                    user,
                } if c.as_str() == channel => {
                    assert_eq!(workspace.as_str(), s.demo["workspace"], "{e:?}");
                    Some(user.0.clone())
                }
                _ => None,
            })
            .collect()
    };
    for _ in 0..200 {
        let seen = left();
        if seen.len() >= n {
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    left()
}

async fn members(s: &Server, token: &str, channel: &str) -> Vec<String> {
    let v = s
        .ok("conversations.members", token, json!({"channel": channel}))
        .await;
    let mut ids: Vec<String> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|u| u.as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

fn kick_errors(error: &str) -> u64 {
    m::ERRORS
        .with_label_values(&["conversations.kick", error])
        .get()
}

#[tokio::test]
async fn kick_removes_like_leave_with_slacks_default_permissions() {
    let s = Server::start_with_cluster().await;
    // alice is the demo workspace's admin; bob and carol are not.
    let (alice, bob, carol) = (s.token("alice"), s.token("bob"), s.token("carol"));
    let (alice_id, bob_id, carol_id) = (s.user_id("alice"), s.user_id("bob"), s.user_id("carol"));

    // A public channel: members may not remove each other, the admin may.
    let open = channel_id(
        &s.ok("conversations.create", &bob, json!({"name": "open"}))
            .await,
    );
    for token in [&alice, &carol] {
        s.ok("conversations.join", token, json!({"channel": open}))
            .await;
    }
    s.err(
        "conversations.kick",
        &bob,
        json!({"channel": open, "user": carol_id}),
        "restricted_action",
    )
    .await;
    s.err(
        "conversations.kick",
        &bob,
        json!({"channel": open, "user": bob_id}),
        "cant_kick_self",
    )
    .await;
    // Bob leaves and carol is kicked: one and the same relayed change.
    s.ok("conversations.leave", &bob, json!({"channel": open}))
        .await;
    let v = s
        .ok(
            "conversations.kick",
            &alice,
            json!({"channel": open, "user": carol_id}),
        )
        .await;
    assert_eq!(v, json!({"ok": true}));
    assert_eq!(
        left_when(&s, &open, 2).await,
        vec![bob_id.clone(), carol_id.clone()]
    );
    assert_eq!(members(&s, &alice, &open).await, vec![alice_id.clone()]);
    let v = s
        .ok("conversations.info", &carol, json!({"channel": open}))
        .await;
    assert_eq!(v["channel"]["is_member"], false);
    // A public channel stays readable by a removed member, as by any of the workspace.
    s.ok("conversations.history", &carol, json!({"channel": open}))
        .await;
    s.err(
        "conversations.kick",
        &alice,
        json!({"channel": open, "user": carol_id}),
        "not_in_channel",
    )
    .await;
    // The admin removes from a public channel it is not in.
    s.ok("conversations.join", &carol, json!({"channel": open}))
        .await;
    s.ok("conversations.leave", &alice, json!({"channel": open}))
        .await;
    s.ok(
        "conversations.kick",
        &alice,
        json!({"channel": open, "user": carol_id}),
    )
    .await;
    assert!(members(&s, &bob, &open).await.is_empty());

    // A private channel: any member may remove another; it is gone for the one removed.
    let secret = channel_id(
        &s.ok(
            "conversations.create",
            &bob,
            json!({"name": "secret", "is_private": true}),
        )
        .await,
    );
    s.ok(
        "conversations.invite",
        &bob,
        json!({"channel": secret, "users": carol_id}),
    )
    .await;
    s.ok(
        "conversations.kick",
        &carol,
        json!({"channel": secret, "user": bob_id}),
    )
    .await;
    assert_eq!(left_when(&s, &secret, 1).await, vec![bob_id.clone()]);
    assert_eq!(members(&s, &carol, &secret).await, vec![carol_id.clone()]);
    for method in ["conversations.history", "conversations.info"] {
        s.err(
            method,
            &bob,
            json!({"channel": secret}),
            "channel_not_found",
        )
        .await;
    }
    // Neither a removed member nor an admin outside it can see it to remove anyone.
    for token in [&bob, &alice] {
        s.err(
            "conversations.kick",
            token,
            json!({"channel": secret, "user": carol_id}),
            "channel_not_found",
        )
        .await;
    }
    s.err(
        "conversations.kick",
        &carol,
        json!({"channel": secret, "user": alice_id}),
        "not_in_channel",
    )
    .await;

    // Nobody leaves #general or a direct message this way.
    let general = s.general().await;
    s.err(
        "conversations.kick",
        &alice,
        json!({"channel": general, "user": bob_id}),
        "cant_kick_from_general",
    )
    .await;
    let dm = s.open_dm(&alice, &[&bob_id]).await;
    let group = s.open_dm(&alice, &[&bob_id, &carol_id]).await;
    for channel in [&dm, &group] {
        s.err(
            "conversations.kick",
            &alice,
            json!({"channel": channel, "user": bob_id}),
            "method_not_supported_for_channel_type",
        )
        .await;
        assert!(members(&s, &alice, channel).await.contains(&bob_id));
    }
    // A refusal relays nothing: by the time a later removal's change has come, none came
    // about the DMs, and every earlier one came once.
    let sentinel = channel_id(
        &s.ok("conversations.create", &alice, json!({"name": "sentinel"}))
            .await,
    );
    s.ok("conversations.join", &bob, json!({"channel": sentinel}))
        .await;
    s.ok(
        "conversations.kick",
        &alice,
        json!({"channel": sentinel, "user": bob_id}),
    )
    .await;
    assert_eq!(left_when(&s, &sentinel, 1).await, vec![bob_id.clone()]);
    for channel in [&dm, &group] {
        assert!(left_when(&s, channel, 0).await.is_empty());
    }
    assert_eq!(
        left_when(&s, &open, 4).await,
        vec![bob_id.clone(), carol_id.clone(), alice_id, carol_id]
    );
    assert_eq!(left_when(&s, &secret, 1).await, vec![bob_id]);
    s.stop().await;
}

/// Missing and malformed ids get Slack's errors, and are counted like other refusals.
#[tokio::test]
async fn kick_refuses_bad_ids() {
    let s = Server::start().await;
    let alice = s.token("alice");
    crate::create_workspace(&s.store, "acme").await.unwrap();
    let (mallory, _) = s
        .user_in("acme", "mallory", crate::UserKind::default())
        .await;
    let channel = channel_id(
        &s.ok("conversations.create", &alice, json!({"name": "room"}))
            .await,
    );
    let bob_id = s.user_id("bob");
    let (users_before, channels_before) = (
        kick_errors("user_not_found"),
        kick_errors("channel_not_found"),
    );
    let bad_users = [
        json!({"channel": channel}),
        json!({"channel": channel, "user": ""}),
        json!({"channel": channel, "user": "nobody"}),
        json!({"channel": channel, "user": "U0NOSUCHUSER"}),
        json!({"channel": channel, "user": channel}),
        json!({"channel": channel, "user": mallory.id.0}),
    ];
    for body in &bad_users {
        s.err("conversations.kick", &alice, body.clone(), "user_not_found")
            .await;
    }
    let bad_channels = [
        json!({"user": bob_id}),
        json!({"channel": "", "user": bob_id}),
        json!({"channel": "C0NOSUCHONE", "user": bob_id}),
        json!({"channel": "not a channel", "user": bob_id}),
        json!({"channel": bob_id, "user": bob_id}),
    ];
    for body in &bad_channels {
        s.err(
            "conversations.kick",
            &alice,
            body.clone(),
            "channel_not_found",
        )
        .await;
    }
    let (status, v) = s
        .call(
            "conversations.kick",
            None,
            json!({"channel": channel, "user": bob_id}),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::OK, Some("not_authed"))
    );
    // Other tests share the process's metrics; only this one kicks with bad ids.
    assert_eq!(
        kick_errors("user_not_found") - users_before,
        bad_users.len() as u64
    );
    assert_eq!(
        kick_errors("channel_not_found") - channels_before,
        bad_channels.len() as u64
    );
    let text = s.metrics_text().await;
    assert!(
        text.contains(
            r#"switchboard_webapp_errors_total{error="user_not_found",method="conversations.kick"}"#
        ),
        "{text}"
    );
    s.stop().await;
}
