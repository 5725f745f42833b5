//! Channel bookmarks through the real admin server ([`super::cluster`]): members add, edit
//! and remove them, readers list them, and the channel's sessions hear each change.

use super::*;

/// The ids `bookmarks.list` gives for the channel, in order.
async fn listed(s: &Server, token: &str, channel: &str) -> Vec<String> {
    s.ok("bookmarks.list", token, json!({"channel_id": channel}))
        .await["bookmarks"]
        .as_array()
        .expect("bookmarks")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn members_keep_a_channel_s_bookmarks_and_its_sessions_hear_of_them() {
    let s = Server::start_with_cluster().await;
    let (alice, bob, carol) = (s.token("alice"), s.token("bob"), s.token("carol"));
    let incident = channel_id(
        &s.ok("conversations.create", &alice, json!({"name": "inc-42"}))
            .await,
    );
    s.ok("conversations.join", &bob, json!({"channel": incident}))
        .await;

    let runbook = s
        .ok(
            "bookmarks.add",
            &alice,
            json!({"channel_id": incident, "title": "Runbook", "type": "link",
                   "link": "https://runbooks.example/db", "emoji": ":book:"}),
        )
        .await["bookmark"]
        .clone();
    let runbook_id = runbook["id"].as_str().unwrap().to_string();
    assert!(runbook_id.starts_with("Bk"), "{runbook}");
    assert_eq!(runbook["channel_id"], incident.as_str());
    assert_eq!(runbook["title"], "Runbook");
    assert_eq!(runbook["link"], "https://runbooks.example/db");
    assert_eq!(runbook["emoji"], ":book:");
    assert_eq!(runbook["type"], "link");
    assert_eq!(runbook["last_updated_by_user_id"], s.user_id("alice"));
    let dashboard_id = s
        .ok(
            "bookmarks.add",
            &bob,
            json!({"channel_id": incident, "title": "Dashboard", "type": "link",
                   "link": "https://grafana.example/d/db"}),
        )
        .await["bookmark"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Listed, the oldest first, by anyone who reads the channel.
    assert_eq!(
        listed(&s, &carol, &incident).await,
        [runbook_id.clone(), dashboard_id.clone()]
    );

    // Kept by members only, with checked titles, links and emoji.
    s.err(
        "bookmarks.add",
        &carol,
        json!({"channel_id": incident, "title": "Mine", "link": "https://x.example"}),
        "not_in_channel",
    )
    .await;
    for (params, error) in [
        (
            json!({"title": "", "link": "https://x.example"}),
            "invalid_title",
        ),
        (
            json!({"title": "X", "link": "ftp://x.example"}),
            "invalid_link",
        ),
        (
            json!({"title": "X", "link": "https://x.example", "type": "folder"}),
            "invalid_bookmark_type",
        ),
        (
            json!({"title": "X", "link": "https://x.example", "emoji": "no way"}),
            "invalid_emoji",
        ),
    ] {
        let mut params = params;
        params["channel_id"] = incident.clone().into();
        s.err("bookmarks.add", &alice, params, error).await;
    }
    s.err(
        "bookmarks.add",
        &alice,
        json!({"channel_id": "CNOSUCH", "title": "X", "link": "https://x.example"}),
        "channel_not_found",
    )
    .await;

    // Edited: what is given changes, the rest stays.
    let edited = s
        .ok(
            "bookmarks.edit",
            &bob,
            json!({"channel_id": incident, "bookmark_id": runbook_id, "title": "DB runbook"}),
        )
        .await["bookmark"]
        .clone();
    assert_eq!(edited["title"], "DB runbook");
    assert_eq!(edited["link"], "https://runbooks.example/db");
    assert_eq!(edited["last_updated_by_user_id"], s.user_id("bob"));
    assert!(edited["date_updated"].as_u64().unwrap() > 0);
    s.err(
        "bookmarks.edit",
        &bob,
        json!({"channel_id": incident, "bookmark_id": "BkNOSUCH", "title": "X"}),
        "not_found",
    )
    .await;

    // Removed.
    s.ok(
        "bookmarks.remove",
        &alice,
        json!({"channel_id": incident, "bookmark_id": dashboard_id}),
    )
    .await;
    s.err(
        "bookmarks.remove",
        &alice,
        json!({"channel_id": incident, "bookmark_id": dashboard_id}),
        "not_found",
    )
    .await;
    assert_eq!(
        listed(&s, &bob, &incident).await,
        std::slice::from_ref(&runbook_id)
    );

    // The channel's sessions heard each change, in order.
    let added = s.notices("bookmark_added", 2).await;
    assert_eq!(added.len(), 2);
    assert_eq!(added[0]["bookmark"]["id"], runbook_id.as_str());
    assert_eq!(added[0]["channel_id"], incident.as_str());
    let updated = s.notices("bookmark_updated", 1).await;
    assert_eq!(updated[0]["bookmark"]["title"], "DB runbook");
    let removed = s.notices("bookmark_removed", 1).await;
    assert_eq!(removed[0]["bookmark"]["id"], dashboard_id.as_str());
    let aimed = s.relayed_events().into_iter().any(|e| {
        matches!(e, shared::protocol::UserEvent::Notice { members_of: Some(c), event, .. }
            if c.0 == incident && event.contains("bookmark_removed"))
    });
    assert!(aimed, "to the channel's sessions, not the whole workspace");

    // A private channel's bookmarks are its members' only; another channel has its own.
    let secret = channel_id(
        &s.ok(
            "conversations.create",
            &alice,
            json!({"name": "secret-plans", "is_private": true}),
        )
        .await,
    );
    s.ok(
        "bookmarks.add",
        &alice,
        json!({"channel_id": secret, "title": "Plan", "link": "https://plans.example"}),
    )
    .await;
    s.err(
        "bookmarks.list",
        &bob,
        json!({"channel_id": secret}),
        "channel_not_found",
    )
    .await;
    assert_eq!(listed(&s, &alice, &secret).await.len(), 1);
    assert_eq!(listed(&s, &alice, &incident).await, [runbook_id]);
}
