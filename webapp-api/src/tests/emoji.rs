//! Custom emoji through the real admin server ([`super::cluster`]): admins add, alias,
//! rename and remove them, every member lists them, and the workspace hears each change.

use super::*;

#[tokio::test]
async fn admins_keep_custom_emoji_that_every_member_lists() {
    let s = Server::start_with_cluster().await;
    let (admin, bob) = (s.admin_token(), s.token("bob"));
    let listed = |v: &Value| v["emoji"].clone();
    assert_eq!(
        listed(&s.ok("emoji.list", &bob, json!({})).await),
        json!({})
    );

    s.ok(
        "admin.emoji.add",
        &admin,
        json!({"name": ":party-parrot:", "url": "https://img.example/parrot.gif"}),
    )
    .await;
    s.ok(
        "admin.emoji.add",
        &admin,
        json!({"name": "shipit", "url": "http://img.example/shipit.png"}),
    )
    .await;
    s.ok(
        "admin.emoji.addAlias",
        &admin,
        json!({"name": "parrot", "alias_for": "party-parrot"}),
    )
    .await;
    // An alias of an alias names the emoji itself.
    s.ok(
        "admin.emoji.addAlias",
        &admin,
        json!({"name": "birb", "alias_for": ":parrot:"}),
    )
    .await;
    let all = s.ok("emoji.list", &bob, json!({})).await;
    assert_eq!(
        listed(&all),
        json!({
            "birb": "alias:party-parrot",
            "parrot": "alias:party-parrot",
            "party-parrot": "https://img.example/parrot.gif",
            "shipit": "http://img.example/shipit.png",
        })
    );
    assert!(all["cache_ts"].as_str().unwrap().ends_with(".000000"));

    // Only admins manage them; names and URLs are checked; names are unique.
    s.err(
        "admin.emoji.add",
        &bob,
        json!({"name": "mine", "url": "https://img.example/x.png"}),
        "not_allowed_token_type",
    )
    .await;
    for (params, error) in [
        (
            json!({"name": "shipit", "url": "https://img.example/y.png"}),
            "error_name_taken",
        ),
        (
            json!({"name": "ShipIt", "url": "https://img.example/y.png"}),
            "error_lower_case_names_only",
        ),
        (
            json!({"name": "ship it", "url": "https://img.example/y.png"}),
            "error_bad_name_i18n",
        ),
        (
            json!({"name": "", "url": "https://img.example/y.png"}),
            "error_missing_name",
        ),
        (json!({"name": "fresh"}), "error_no_image"),
        (
            json!({"name": "fresh", "url": "javascript:alert(1)"}),
            "error_bad_format",
        ),
        (
            json!({"name": "fresh", "url": "not a url"}),
            "error_bad_format",
        ),
    ] {
        s.err("admin.emoji.add", &admin, params, error).await;
    }
    s.err(
        "admin.emoji.addAlias",
        &admin,
        json!({"name": "ghost", "alias_for": "nothing"}),
        "emoji_not_found",
    )
    .await;

    // Renamed: its aliases follow it. Removed: its aliases go with it.
    s.ok(
        "admin.emoji.rename",
        &admin,
        json!({"name": "party-parrot", "new_name": "parrot-party"}),
    )
    .await;
    s.err(
        "admin.emoji.rename",
        &admin,
        json!({"name": "shipit", "new_name": "parrot"}),
        "error_name_taken",
    )
    .await;
    assert_eq!(
        listed(&s.ok("emoji.list", &bob, json!({})).await),
        json!({
            "birb": "alias:parrot-party",
            "parrot": "alias:parrot-party",
            "parrot-party": "https://img.example/parrot.gif",
            "shipit": "http://img.example/shipit.png",
        })
    );
    let page = s.ok("admin.emoji.list", &admin, json!({"limit": 2})).await;
    assert_eq!(page["emoji"]["birb"]["alias_for"], "parrot-party");
    assert_eq!(page["emoji"]["birb"]["uploaded_by"], s.user_id("alice"));
    let cursor = page["response_metadata"]["next_cursor"].as_str().unwrap();
    let rest = s
        .ok(
            "admin.emoji.list",
            &admin,
            json!({"limit": 2, "cursor": cursor}),
        )
        .await;
    assert_eq!(
        rest["emoji"]["shipit"]["url"],
        "http://img.example/shipit.png"
    );
    assert_eq!(rest["response_metadata"]["next_cursor"], "");
    s.ok(
        "admin.emoji.remove",
        &admin,
        json!({"name": "parrot-party"}),
    )
    .await;
    s.err(
        "admin.emoji.remove",
        &admin,
        json!({"name": "parrot-party"}),
        "emoji_not_found",
    )
    .await;
    assert_eq!(
        listed(&s.ok("emoji.list", &bob, json!({})).await),
        json!({"shipit": "http://img.example/shipit.png"})
    );

    // The workspace heard every change, as Slack's emoji_changed.
    let heard = s.notices("emoji_changed", 6).await;
    let subtypes: Vec<&str> = heard
        .iter()
        .map(|e| e["subtype"].as_str().unwrap())
        .collect();
    assert_eq!(subtypes, ["add", "add", "add", "add", "rename", "remove"]);
    assert_eq!(heard[2]["value"], "alias:party-parrot");
    assert_eq!(heard[4]["old_name"], "party-parrot");
    assert_eq!(heard[4]["new_name"], "parrot-party");
    assert_eq!(heard[5]["names"], json!(["birb", "parrot", "parrot-party"]));

    // Another workspace has its own.
    crate::create_workspace(&s.store, "acme").await.unwrap();
    let (_, mallory) = s
        .user_in("acme", "mallory", crate::UserKind::default())
        .await;
    assert_eq!(
        listed(&s.ok("emoji.list", &mallory, json!({})).await),
        json!({})
    );
}
