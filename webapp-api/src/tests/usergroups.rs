//! User groups through the real admin server ([`super::cluster`]): `usergroups.*` keep names
//! and handles unique, disable and enable a group as it was, replace its members, tell the
//! workspace's sessions of each change, and never let two changes at once both land on one
//! stale set.

use super::*;
use crate::metrics::USERGROUPS;

/// The handles `usergroups.list` gives with these parameters.
async fn handles(s: &Server, token: &str, params: Value) -> Vec<String> {
    s.ok("usergroups.list", token, params).await["usergroups"]
        .as_array()
        .expect("usergroups")
        .iter()
        .map(|g| g["handle"].as_str().expect("handle").to_string())
        .collect()
}

#[tokio::test]
async fn a_user_group_is_created_changed_disabled_and_enabled_with_unique_names() {
    let s = Server::start_with_cluster().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let general = s.general().await;
    let created_before = USERGROUPS.with_label_values(&["created"]).get();

    let made = s
        .ok(
            "usergroups.create",
            &bob,
            json!({"name": "On Call", "description": "who answers pages",
                   "channels": general, "include_count": true}),
        )
        .await["usergroup"]
        .clone();
    let id = made["id"].as_str().expect("id").to_string();
    assert!(id.starts_with('S'), "{made}");
    assert_eq!(made["handle"], "on-call", "made from the name");
    assert_eq!(made["name"], "On Call");
    assert_eq!(made["description"], "who answers pages");
    assert_eq!(made["team_id"], s.demo["workspace"]);
    assert_eq!(made["is_usergroup"], true);
    assert_eq!(made["created_by"], s.user_id("bob"));
    assert_eq!(made["prefs"]["channels"], json!([general]));
    assert_eq!(made["user_count"], 0);
    assert_eq!(made["date_delete"], 0);
    assert!(
        made["date_create"].as_u64().unwrap() > 1_700_000_000,
        "{made}"
    );
    assert!(USERGROUPS.with_label_values(&["created"]).get() > created_before);
    let created = s.notices("subteam_created", 1).await;
    let announced = created
        .iter()
        .find(|e| e["subteam"]["id"] == id.as_str())
        .expect("subteam_created");
    assert_eq!(announced["subteam"]["handle"], "on-call");

    let design = s
        .ok(
            "usergroups.create",
            &alice,
            json!({"name": "Design", "handle": "@design"}),
        )
        .await["usergroup"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        handles(&s, &alice, json!({})).await,
        ["design", "on-call"],
        "by name"
    );

    // Names are unique among groups, ignoring case; handles among groups, users and
    // channels.
    for (params, error) in [
        (json!({"name": "on call"}), "name_already_exists"),
        (
            json!({"name": "Pager", "handle": "on-call"}),
            "handle_already_exists",
        ),
        (
            json!({"name": "Pager", "handle": "alice"}),
            "handle_already_exists",
        ),
        (
            json!({"name": "Pager", "handle": "general"}),
            "handle_already_exists",
        ),
        (
            json!({"name": "Pager", "handle": "Pager Duty"}),
            "invalid_arguments",
        ),
        (json!({"name": "  "}), "missing_argument"),
        (json!({"name": "x".repeat(81)}), "invalid_arguments"),
        (
            json!({"name": "Pager", "channels": "CNOSUCH"}),
            "channel_not_found",
        ),
        (
            json!({"name": "Pager", "description": "d".repeat(1001)}),
            "invalid_arguments",
        ),
    ] {
        s.err("usergroups.create", &alice, params, error).await;
    }

    // A change keeps what it does not name; it may not take another group's handle.
    let changed = s
        .ok(
            "usergroups.update",
            &alice,
            json!({"usergroup": id, "handle": "oncall", "description": "pages, day and night"}),
        )
        .await["usergroup"]
        .clone();
    assert_eq!(changed["handle"], "oncall");
    assert_eq!(changed["name"], "On Call");
    assert_eq!(changed["description"], "pages, day and night");
    assert_eq!(changed["prefs"]["channels"], json!([general]));
    assert_eq!(changed["updated_by"], s.user_id("alice"));
    s.err(
        "usergroups.update",
        &alice,
        json!({"usergroup": id, "handle": "design"}),
        "handle_already_exists",
    )
    .await;
    s.err(
        "usergroups.update",
        &alice,
        json!({"usergroup": design, "name": "ON CALL"}),
        "name_already_exists",
    )
    .await;
    // Its own name again, in other letters, is no conflict.
    s.ok(
        "usergroups.update",
        &alice,
        json!({"usergroup": id, "name": "On call"}),
    )
    .await;
    for bad in ["SNOSUCH", "nonsense", ""] {
        s.err(
            "usergroups.update",
            &alice,
            json!({"usergroup": bad, "description": "x"}),
            "no_such_subteam",
        )
        .await;
    }
    let updated = s.notices("subteam_updated", 2).await;
    assert!(
        updated.iter().any(|e| e["subteam"]["handle"] == "oncall"),
        "{updated:?}"
    );

    // Disabled: out of the list unless asked for, its members hidden unless asked for;
    // twice is no error. Enabled again: as it was.
    s.ok(
        "usergroups.users.update",
        &alice,
        json!({"usergroup": id, "users": s.user_id("bob")}),
    )
    .await;
    let off = s
        .ok("usergroups.disable", &bob, json!({"usergroup": id}))
        .await["usergroup"]
        .clone();
    assert!(off["date_delete"].as_u64().unwrap() > 0, "{off}");
    assert_eq!(off["deleted_by"], s.user_id("bob"));
    s.ok("usergroups.disable", &alice, json!({"usergroup": id}))
        .await;
    assert_eq!(handles(&s, &alice, json!({})).await, ["design"]);
    assert_eq!(
        handles(&s, &alice, json!({"include_disabled": true})).await,
        ["design", "oncall"]
    );
    s.err(
        "usergroups.users.list",
        &alice,
        json!({"usergroup": id}),
        "no_such_subteam",
    )
    .await;
    let members = s
        .ok(
            "usergroups.users.list",
            &alice,
            json!({"usergroup": id, "include_disabled": true}),
        )
        .await;
    assert_eq!(members["users"], json!([s.user_id("bob")]));
    let on = s
        .ok(
            "usergroups.enable",
            &alice,
            json!({"usergroup": id, "include_count": true}),
        )
        .await["usergroup"]
        .clone();
    assert_eq!(on["date_delete"], 0);
    assert_eq!(on["deleted_by"], Value::Null);
    assert_eq!(on["user_count"], 1);
    assert_eq!(on["handle"], "oncall");
    assert_eq!(handles(&s, &alice, json!({})).await, ["design", "oncall"]);
}

#[tokio::test]
async fn a_group_s_members_are_replaced_whole_and_the_change_is_announced() {
    let s = Server::start_with_cluster().await;
    let alice = s.token("alice");
    let (alice_id, bob_id, carol_id) = (s.user_id("alice"), s.user_id("bob"), s.user_id("carol"));
    let id = s
        .ok("usergroups.create", &alice, json!({"name": "SRE"}))
        .await["usergroup"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let first = s
        .ok(
            "usergroups.users.update",
            &alice,
            json!({"usergroup": id, "users": format!("{alice_id}, {bob_id},{alice_id}")}),
        )
        .await["usergroup"]
        .clone();
    assert_eq!(first["users"], json!([alice_id, bob_id]), "without repeats");
    // A JSON body's array, as SDKs send lists.
    let second = s
        .ok(
            "usergroups.users.update",
            &alice,
            json!({"usergroup": id, "users": [bob_id, carol_id], "include_count": true}),
        )
        .await["usergroup"]
        .clone();
    assert_eq!(second["users"], json!([bob_id, carol_id]));
    assert_eq!(second["user_count"], 2);
    let listed = s
        .ok("usergroups.users.list", &alice, json!({"usergroup": id}))
        .await;
    assert_eq!(listed["users"], json!([bob_id, carol_id]));
    let with_users = s
        .ok("usergroups.list", &alice, json!({"include_users": true}))
        .await;
    assert_eq!(
        with_users["usergroups"][0]["users"],
        json!([bob_id, carol_id])
    );
    let without = s.ok("usergroups.list", &alice, json!({})).await;
    assert!(without["usergroups"][0].get("users").is_none(), "{without}");

    let changes = s.notices("subteam_members_changed", 2).await;
    let changes: Vec<&Value> = changes
        .iter()
        .filter(|e| e["subteam_id"] == id.as_str())
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0]["added_users"], json!([alice_id, bob_id]));
    assert_eq!(changes[0]["removed_users_count"], 0);
    assert_eq!(changes[1]["added_users"], json!([carol_id]));
    assert_eq!(changes[1]["removed_users"], json!([alice_id]));
    assert_eq!(changes[1]["removed_users_count"], 1);
    assert_eq!(changes[1]["team_id"], s.demo["workspace"]);
    // Each user added or removed heard it in its own sessions.
    let own = |kind: &'static str| {
        let id = id.clone();
        s.relayed_events()
            .into_iter()
            .filter_map(move |e| match e {
                shared::protocol::UserEvent::UserNotice { user, event, .. }
                    if event.contains(kind) && event.contains(&id) =>
                {
                    Some(user.0)
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    for _ in 0..200 {
        if !own("subteam_self_removed").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        own("subteam_self_added"),
        [alice_id.clone(), bob_id.clone(), carol_id.clone()]
    );
    assert_eq!(own("subteam_self_removed"), std::slice::from_ref(&alice_id));
    let updated = s.notices("subteam_updated", 2).await;
    assert!(
        updated
            .iter()
            .any(|e| e["subteam"]["users"] == json!([bob_id, carol_id])
                && e["subteam"]["user_count"] == 2),
        "{updated:?}"
    );

    // Bad member lists change nothing.
    let bot = s.bot_token("pager-bot").await;
    let bot_id = s.ok("auth.test", &bot, json!({})).await["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    crate::create_workspace(&s.store, "acme").await.unwrap();
    let (mallory, _) = s
        .user_in("acme", "mallory", crate::UserKind::default())
        .await;
    for (users, error) in [
        (json!(""), "no_users_provided"),
        (json!([]), "no_users_provided"),
        (json!(" , "), "no_users_provided"),
        (json!(bot_id), "invalid_users"),
        (json!(mallory.id), "invalid_users"),
        (json!("not-a-user"), "invalid_users"),
        (json!("[1, 2]"), "invalid_users"),
    ] {
        s.err(
            "usergroups.users.update",
            &alice,
            json!({"usergroup": id, "users": users}),
            error,
        )
        .await;
    }
    s.err(
        "usergroups.users.update",
        &alice,
        json!({"usergroup": id}),
        "no_users_provided",
    )
    .await;
    let listed = s
        .ok("usergroups.users.list", &alice, json!({"usergroup": id}))
        .await;
    assert_eq!(listed["users"], json!([bob_id, carol_id]));
}

#[tokio::test]
async fn changes_at_once_never_both_land_on_one_set_and_workspaces_stay_apart() {
    let s = Server::start_with_cluster().await;
    let alice = s.token("alice");

    // Eight creations at once, one handle: exactly one takes it.
    let same = (0..8).map(|n| {
        s.call(
            "usergroups.create",
            Some(&alice),
            json!({"name": format!("Team {n}"), "handle": "team"}),
        )
    });
    let answers = futures_util::future::join_all(same).await;
    let ok = answers.iter().filter(|(_, v)| v["ok"] == true).count();
    assert_eq!(ok, 1, "{answers:?}");
    for (_, v) in answers.iter().filter(|(_, v)| v["ok"] != true) {
        assert_eq!(v["error"], "handle_already_exists", "{v}");
    }

    // Eight creations at once with their own names: all land, none overwrites another.
    let apart = (0..8).map(|n| {
        s.call(
            "usergroups.create",
            Some(&alice),
            json!({"name": format!("Squad {n}")}),
        )
    });
    for (_, v) in futures_util::future::join_all(apart).await {
        assert_eq!(v["ok"], true, "{v}");
    }
    let mut listed = handles(&s, &alice, json!({})).await;
    listed.sort();
    let mut expected: Vec<String> = (0..8).map(|n| format!("squad-{n}")).collect();
    expected.push("team".into());
    assert_eq!(
        listed, expected,
        "a write that lost a race read again and landed"
    );

    // Another workspace sees none of them and reaches none by id.
    let id = s.ok("usergroups.list", &alice, json!({})).await["usergroups"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    crate::create_workspace(&s.store, "acme").await.unwrap();
    let (_, mallory) = s
        .user_in("acme", "mallory", crate::UserKind::default())
        .await;
    assert!(handles(&s, &mallory, json!({"include_disabled": true}))
        .await
        .is_empty());
    for method in [
        "usergroups.users.list",
        "usergroups.disable",
        "usergroups.update",
    ] {
        s.err(
            method,
            &mallory,
            json!({"usergroup": id}),
            "no_such_subteam",
        )
        .await;
    }
    // Its own group may use a handle the first workspace has.
    s.ok(
        "usergroups.create",
        &mallory,
        json!({"name": "Team", "handle": "team"}),
    )
    .await;
}

#[tokio::test]
async fn link_names_turns_a_group_s_handle_into_its_mention() {
    let s = Server::start_with_cluster().await;
    let alice = s.token("alice");
    let general = s.general().await;
    let id = s
        .ok(
            "usergroups.create",
            &alice,
            json!({"name": "On call", "handle": "oncall"}),
        )
        .await["usergroup"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mention = format!("<!subteam^{id}|@oncall>");

    let linked = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "@oncall the build is red, @here", "link_names": true}),
        )
        .await;
    assert_eq!(
        linked["message"]["text"],
        format!("{mention} the build is red, <!here>")
    );
    let plain = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "@oncall as typed"}),
        )
        .await;
    assert_eq!(plain["message"]["text"], "@oncall as typed");
    let edited = s
        .ok(
            "chat.update",
            &alice,
            json!({"channel": general, "ts": plain["ts"], "text": "@oncall now", "link_names": "1"}),
        )
        .await;
    assert_eq!(edited["text"], format!("{mention} now"));

    let history = s
        .ok(
            "conversations.history",
            &alice,
            json!({"channel": general, "limit": 2}),
        )
        .await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            format!("{mention} now"),
            format!("{mention} the build is red, <!here>")
        ]
    );

    // A disabled group is no longer linked.
    s.ok("usergroups.disable", &alice, json!({"usergroup": id}))
        .await;
    let after = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "@oncall anyone?", "link_names": true}),
        )
        .await;
    assert_eq!(after["message"]["text"], "@oncall anyone?");
}
