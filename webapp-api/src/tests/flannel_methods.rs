//! The methods Flannel needs: profile and channel changes, read positions, and the
//! service-token-only `internal.flannel.snapshot`.

use super::*;

fn service_token(s: &Server, workspace: &str) -> String {
    s.signer
        .issue(&Claims::service(WorkspaceId(workspace.to_string()), 1))
}

#[tokio::test]
async fn profiles_are_set_and_read_back() {
    let s = Server::start().await;
    let (bob, alice_admin) = (s.token("bob"), s.admin_token());
    let v = s
        .ok(
            "users.profile.set",
            &bob,
            json!({"profile": {"real_name": "Robert", "display_name": "bobby"}}),
        )
        .await;
    assert_eq!(v["profile"]["real_name"], "Robert");
    assert_eq!(v["profile"]["display_name"], "bobby");
    // Form style: name/value pair, and the profile as a JSON string.
    let (_, v) = s
        .call_form(
            "users.profile.set",
            &[("token", &bob), ("name", "real_name"), ("value", "Bob B")],
        )
        .await;
    assert_eq!(v["profile"]["real_name"], "Bob B", "{v}");
    assert_eq!(v["profile"]["display_name"], "bobby", "{v}");
    let v = s
        .ok("users.info", &bob, json!({"user": s.user_id("bob")}))
        .await;
    assert_eq!(v["user"]["real_name"], "Bob B");
    assert_eq!(v["user"]["profile"]["display_name"], "bobby");
    let v = s.ok("users.profile.get", &bob, json!({})).await;
    assert_eq!(v["profile"]["display_name"], "bobby");

    s.err(
        "users.profile.set",
        &bob,
        json!({"profile": {"display_name": "x".repeat(81)}}),
        "too_long",
    )
    .await;
    s.err(
        "users.profile.set",
        &bob,
        json!({"profile": "not json"}),
        "invalid_arguments",
    )
    .await;
    s.err("users.profile.set", &bob, json!({}), "invalid_arguments")
        .await;
    // Another user's profile needs an admin token.
    s.err(
        "users.profile.set",
        &bob,
        json!({"user": s.user_id("carol"), "profile": {"real_name": "C"}}),
        "not_allowed_token_type",
    )
    .await;
    let v = s
        .ok(
            "users.profile.set",
            &alice_admin,
            json!({"user": s.user_id("carol"), "profile": {"real_name": "Caroline"}}),
        )
        .await;
    assert_eq!(v["profile"]["real_name"], "Caroline");
}

#[tokio::test]
async fn channels_are_renamed_archived_and_given_topics_by_members() {
    // A topic or purpose change posts its announcement: the mesh acknowledges it.
    let s = Server::start_with_cluster().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let v = s
        .ok("conversations.create", &alice, json!({"name": "eng"}))
        .await;
    let id = v["channel"]["id"].as_str().unwrap().to_string();
    s.err(
        "conversations.rename",
        &bob,
        json!({"channel": id, "name": "x"}),
        "not_in_channel",
    )
    .await;
    let v = s
        .ok(
            "conversations.rename",
            &alice,
            json!({"channel": id, "name": "engineering"}),
        )
        .await;
    assert_eq!(v["channel"]["name"], "engineering");
    s.err(
        "conversations.rename",
        &alice,
        json!({"channel": id, "name": "general"}),
        "name_taken",
    )
    .await;
    s.err(
        "conversations.rename",
        &alice,
        json!({"channel": id, "name": "Bad Name"}),
        "invalid_name_specials",
    )
    .await;
    let v = s
        .ok(
            "conversations.setTopic",
            &alice,
            json!({"channel": id, "topic": "shipping"}),
        )
        .await;
    assert_eq!(v["channel"]["topic"]["value"], "shipping");
    // A missing parameter is refused and clears nothing; an empty one clears.
    for method in ["conversations.setTopic", "conversations.setPurpose"] {
        s.err(method, &alice, json!({"channel": id}), "invalid_arguments")
            .await;
    }
    let v = s
        .ok("conversations.info", &alice, json!({"channel": id}))
        .await;
    assert_eq!(v["channel"]["topic"]["value"], "shipping");
    let v = s
        .ok(
            "conversations.setTopic",
            &alice,
            json!({"channel": id, "topic": ""}),
        )
        .await;
    assert_eq!(v["channel"]["topic"]["value"], "");
    s.ok(
        "conversations.setPurpose",
        &alice,
        json!({"channel": id, "purpose": "ship it"}),
    )
    .await;
    // Each change was announced in the channel by its author, as Slack's `channel_topic` and
    // `channel_purpose` messages (newest first).
    let history = s
        .ok(
            "conversations.history",
            &alice,
            json!({"channel": id, "limit": 10}),
        )
        .await;
    let said: Vec<(String, String, String, String)> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let field = if m["subtype"] == "channel_topic" {
                "topic"
            } else {
                "purpose"
            };
            (
                m["subtype"].as_str().unwrap_or_default().to_string(),
                m["text"].as_str().unwrap_or_default().to_string(),
                m[field].as_str().unwrap_or("(absent)").to_string(),
                m["user"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let alice_id = s.user_id("alice");
    let expected: Vec<(String, String, String, String)> = [
        (
            "channel_purpose",
            "set the channel purpose: ship it",
            "ship it",
        ),
        ("channel_topic", "cleared the channel topic", ""),
        (
            "channel_topic",
            "set the channel topic: shipping",
            "shipping",
        ),
    ]
    .iter()
    .map(|(a, b, c)| {
        (
            a.to_string(),
            b.to_string(),
            c.to_string(),
            alice_id.clone(),
        )
    })
    .collect();
    assert_eq!(said, expected, "{history}");
    // They say what was set: not editable, even by their author.
    let announcement = history["messages"][0]["ts"].as_str().unwrap().to_string();
    s.err(
        "chat.update",
        &alice,
        json!({"channel": id, "ts": announcement, "text": "something else"}),
        "cant_update_message",
    )
    .await;
    s.err(
        "conversations.setPurpose",
        &alice,
        json!({"channel": id, "purpose": "p".repeat(251)}),
        "too_long",
    )
    .await;
    s.ok("conversations.archive", &alice, json!({"channel": id}))
        .await;
    s.err(
        "conversations.archive",
        &alice,
        json!({"channel": id}),
        "already_archived",
    )
    .await;
    let v = s
        .ok("conversations.info", &alice, json!({"channel": id}))
        .await;
    assert_eq!(v["channel"]["is_archived"], true);
    assert_eq!(v["channel"]["name"], "engineering");
    s.ok("conversations.unarchive", &alice, json!({"channel": id}))
        .await;
    s.err(
        "conversations.unarchive",
        &alice,
        json!({"channel": id}),
        "not_archived",
    )
    .await;
    let general = s.general().await;
    s.err(
        "conversations.archive",
        &alice,
        json!({"channel": general}),
        "cant_archive_general",
    )
    .await;
}

#[tokio::test]
async fn read_positions_are_marked_by_ts_or_seq() {
    let s = Server::start().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let general = s.general().await;
    let ws = s.demo["workspace"].as_str().unwrap().to_string();
    for seq in 1..=3 {
        s.store
            .append(&message(&ws, &general, seq, &s.user_id("bob")))
            .await
            .unwrap();
    }
    let second = Ts(1_700_000_000_000_000 + 2 * 1_000).to_slack();
    s.ok(
        "conversations.mark",
        &alice,
        json!({"channel": general, "ts": second}),
    )
    .await;
    s.ok(
        "conversations.mark",
        &bob,
        json!({"channel": general, "seq": 3}),
    )
    .await;
    s.err(
        "conversations.mark",
        &alice,
        json!({"channel": general, "ts": "1.000001"}),
        "invalid_timestamp",
    )
    .await;
    s.err(
        "conversations.mark",
        &alice,
        json!({"channel": general, "ts": "soon"}),
        "invalid_timestamp",
    )
    .await;
    s.err(
        "conversations.mark",
        &alice,
        json!({"channel": general}),
        "invalid_timestamp",
    )
    .await;
    let members = s
        .store
        .workspace_members(&WorkspaceId(ws.clone()))
        .await
        .unwrap();
    let pos = |user: &str| {
        members
            .iter()
            .find(|m| m.user.0 == s.user_id(user))
            .unwrap()
            .last_read
    };
    assert_eq!((pos("alice"), pos("bob"), pos("carol")), (2, 3, 0));

    // A channel the caller is not in.
    let v = s
        .ok("conversations.create", &alice, json!({"name": "solo"}))
        .await;
    let solo = v["channel"]["id"].as_str().unwrap().to_string();
    s.err(
        "conversations.mark",
        &bob,
        json!({"channel": solo, "seq": 1}),
        "not_in_channel",
    )
    .await;
}

#[tokio::test]
async fn the_snapshot_needs_a_service_token_of_its_workspace() {
    let s = Server::start().await;
    let ws = s.demo["workspace"].as_str().unwrap().to_string();
    let service = s.service_token();
    let snap = s.flannel_snapshot().await;
    assert_eq!(snap.workspace.0, ws);
    assert_eq!(snap.workspace_name, "demo");
    assert_eq!(snap.users.len(), 3);
    assert_eq!(snap.channels.len(), 1);
    assert_eq!(snap.members.len(), 3);

    // User tokens cannot call internal methods; service tokens can call nothing else.
    s.err(
        "internal.flannel.snapshot",
        &s.token("alice"),
        json!({}),
        "not_allowed_token_type",
    )
    .await;
    s.err(
        "internal.flannel.snapshot",
        &s.admin_token(),
        json!({}),
        "not_allowed_token_type",
    )
    .await;
    s.err("auth.test", &service, json!({}), "not_allowed_token_type")
        .await;
    s.err("users.list", &service, json!({}), "not_allowed_token_type")
        .await;
    let (_, v) = s.call("internal.flannel.snapshot", None, json!({})).await;
    assert_eq!(v["error"], "not_authed");
    let forged = TokenSigner::new(b"other").issue(&Claims::service(WorkspaceId(ws.clone()), 1));
    s.err(
        "internal.flannel.snapshot",
        &forged,
        json!({}),
        "invalid_auth",
    )
    .await;
    // Another workspace than the token's, and a workspace that does not exist.
    s.err(
        "internal.flannel.snapshot",
        &service,
        json!({"workspace": "TOTHER"}),
        "team_access_not_granted",
    )
    .await;
    s.err(
        "internal.flannel.snapshot",
        &service_token(&s, "TNOSUCH"),
        json!({}),
        "team_not_found",
    )
    .await;
    s.stop().await;
}
