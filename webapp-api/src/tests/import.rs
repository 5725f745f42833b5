//! `switchboard admin import-slack`: a Slack export's people, channels, history, threads and
//! reactions, read through the Web API afterwards; an import run again stores nothing twice.

use std::path::Path;

use super::*;
use crate::import::import_slack_export;

fn write(dir: &Path, file: &str, v: Value) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// A small export as Slack writes one: three people and a bot, two public channels and a
/// private one, a DM, and two days of #general.
fn export(dir: &Path) {
    write(
        dir,
        "users.json",
        json!([
            {"id": "U0ANN", "name": "ann", "is_admin": true, "real_name": "Ann Lee",
             "profile": {"real_name": "Ann Lee", "display_name": "annie", "email": "ann@example.com"}},
            {"id": "U0BOB", "name": "Bob.Smith", "profile": {"real_name": "Bob Smith", "email": "bob@example.com"}},
            {"id": "U0CAT", "name": "cat", "profile": {}},
            {"id": "U0BOT", "name": "deploybot", "is_bot": true, "profile": {"real_name": "Deploy Bot"}},
        ]),
    );
    write(
        dir,
        "channels.json",
        json!([
            {"id": "C0GEN", "name": "general", "created": 1_600_000_000, "creator": "U0ANN",
             "is_general": true, "members": ["U0ANN", "U0BOB", "U0CAT", "U0BOT"],
             "topic": {"value": "company-wide"}, "purpose": {"value": "announcements"}},
            {"id": "C0RND", "name": "random", "created": 1_600_000_100, "creator": "U0BOB",
             "members": ["U0BOB", "U0CAT"], "is_archived": true},
        ]),
    );
    write(
        dir,
        "groups.json",
        json!([{"id": "G0SEC", "name": "leads", "created": 1_600_000_200, "creator": "U0ANN",
                "members": ["U0ANN", "U0BOB"]}]),
    );
    write(
        dir,
        "dms.json",
        json!([{"id": "D0AB", "members": ["U0ANN", "U0BOB"]}]),
    );
    write(
        dir,
        "general/2024-01-01.json",
        json!([
            {"type": "message", "subtype": "channel_join", "user": "U0CAT", "ts": "1704100000.000100",
             "text": "<@U0CAT> has joined the channel"},
            {"type": "message", "user": "U0ANN", "ts": "1704100100.000200", "client_msg_id": "aa-1",
             "text": "welcome <@U0BOB>, the roadmap is in <#C0RND|random>",
             "reactions": [{"name": "wave", "users": ["U0BOB", "U0CAT"], "count": 2}]},
            {"type": "message", "user": "U0BOB", "ts": "1704100200.000300", "thread_ts": "1704100100.000200",
             "text": "thanks!", "parent_user_id": "U0ANN"},
            {"type": "message", "subtype": "thread_broadcast", "user": "U0CAT", "ts": "1704100300.000400",
             "thread_ts": "1704100100.000200", "text": "me too, sharing with everyone"},
        ]),
    );
    write(
        dir,
        "general/2024-01-02.json",
        json!([
            {"type": "message", "subtype": "bot_message", "bot_id": "B0BOT", "user": "U0BOT",
             "ts": "1704186400.000100", "text": "",
             "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "deployed v2"}}]},
            {"type": "message", "subtype": "me_message", "user": "U0BOB", "ts": "1704186500.000200",
             "text": "is out for lunch"},
            {"type": "message", "user": "U0ANN", "ts": "1704186600.000300", "text": "the slides",
             "files": [{"id": "F1", "name": "slides.pdf"}]},
            {"type": "message", "user": "U0GONE", "ts": "1704186700.000400", "text": "from a stranger"},
            {"type": "message", "subtype": "channel_topic", "user": "U0ANN", "ts": "1704186800.000500",
             "text": "set the channel topic: company-wide", "topic": "company-wide"},
            {"type": "message", "user": "U0CAT", "ts": "1704186900.000600",
             "text": "reply to a thread from before the export", "thread_ts": "1703000000.000100"},
        ]),
    );
    write(
        dir,
        "leads/2024-01-01.json",
        json!([{"type": "message", "user": "U0ANN", "ts": "1704100000.000900", "text": "leads only"}]),
    );
}

#[tokio::test]
async fn a_slack_export_is_imported_and_read_back_through_the_web_api() {
    let s = Server::start_with_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    export(dir.path());
    let report = import_slack_export(&s.store, dir.path(), "acme")
        .await
        .expect("import");
    assert_eq!(report.users_created, 4, "{report:?}");
    assert_eq!(report.channels_created, 3, "{report:?}");
    assert_eq!(report.memberships, 8, "{report:?}");
    // #general: 8 of 10 (a join and a stranger's left out); #leads: 1.
    assert_eq!(report.messages, 9, "{report:?}");
    assert_eq!(report.reactions, 2, "{report:?}");
    assert_eq!(report.replies_at_top_level, 1, "{report:?}");
    for (why, n) in [
        ("channel_join", 1),
        ("unknown_user", 1),
        ("files", 1),
        ("direct_message_conversation", 1),
    ] {
        assert_eq!(report.skipped.get(why), Some(&n), "{why}: {report:?}");
    }

    let ann = crate::seed::issue_token(&s.store, &s.signer, "acme", "ann")
        .await
        .unwrap();
    let cat = crate::seed::issue_token(&s.store, &s.signer, "acme", "cat")
        .await
        .unwrap();
    let ws = s.store.workspace_by_name("acme").await.unwrap().unwrap();
    let user = |name: &'static str| {
        let (store, ws) = (s.store.clone(), ws.id.clone());
        async move { store.user_by_name(&ws, name).await.unwrap().unwrap() }
    };
    let bob = user("bob.smith").await;
    assert_eq!(bob.real_name, "Bob Smith");
    assert_eq!(bob.email, "bob@example.com");
    assert!(user("ann").await.is_admin);
    assert_eq!(user("ann").await.display_name, "annie");
    assert!(user("deploybot").await.is_bot);

    // Slack's channel ids are kept.
    let info = s
        .ok("conversations.info", &ann, json!({"channel": "C0GEN"}))
        .await;
    assert_eq!(info["channel"]["name"], "general");
    assert_eq!(info["channel"]["topic"]["value"], "company-wide");
    let random = s
        .ok("conversations.info", &ann, json!({"channel": "C0RND"}))
        .await;
    assert_eq!(random["channel"]["is_archived"], true);
    // The private channel only for its members.
    let leads_of = |token: &String| {
        let s = &s;
        let token = token.clone();
        async move {
            s.ok(
                "conversations.list",
                &token,
                json!({"types": "private_channel"}),
            )
            .await["channels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(leads_of(&ann).await, ["leads"]);
    assert!(leads_of(&cat).await.is_empty());

    let history = s
        .ok(
            "conversations.history",
            &ann,
            json!({"channel": "C0GEN", "limit": 100}),
        )
        .await;
    let messages = history["messages"].as_array().unwrap();
    let texts: Vec<&str> = messages
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "reply to a thread from before the export",
            "set the channel topic: company-wide",
            "the slides",
            "is out for lunch",
            "deployed v2",
            "me too, sharing with everyone",
            &format!("welcome <@{}>, the roadmap is in <#C0RND|random>", bob.id),
        ],
        "{history}"
    );
    let by_text = |t: &str| messages.iter().find(|m| m["text"] == t).unwrap();
    assert_eq!(by_text("is out for lunch")["subtype"], "me_message");
    assert_eq!(
        by_text("me too, sharing with everyone")["subtype"],
        "thread_broadcast"
    );
    assert_eq!(
        by_text("set the channel topic: company-wide")["subtype"],
        "channel_topic"
    );
    let bot = by_text("deployed v2");
    assert!(bot["bot_id"].is_string(), "{bot}");
    assert!(bot["blocks"].is_array(), "{bot}");
    let welcome = messages.last().unwrap();
    assert_eq!(welcome["ts"], "1704100100.000200", "Slack's ts is kept");
    assert_eq!(welcome["reply_count"], 2, "{welcome}");
    assert_eq!(welcome["reactions"][0]["name"], "wave");
    assert_eq!(welcome["reactions"][0]["count"], 2);
    let replies = s
        .ok(
            "conversations.replies",
            &ann,
            json!({"channel": "C0GEN", "ts": "1704100100.000200"}),
        )
        .await;
    let thread: Vec<&str> = replies["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(thread[1..], ["thanks!", "me too, sharing with everyone"]);
    // The channel goes on: a new post takes the next sequence number.
    let last_seq = messages
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .max()
        .unwrap();
    let posted = s
        .ok(
            "chat.postMessage",
            &ann,
            json!({"channel": "C0GEN", "text": "first post after the move"}),
        )
        .await;
    assert!(
        posted["message"]["seq"].as_u64().unwrap() > last_seq,
        "{posted}"
    );
    // Search reads the imported history from the change feed.
    let mut found = Value::Null;
    for _ in 0..100 {
        found = s
            .ok("search.messages", &ann, json!({"query": "roadmap"}))
            .await;
        if found["messages"]["total"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(found["messages"]["total"], 1, "{found}");

    // Again: nothing new.
    let again = import_slack_export(&s.store, dir.path(), "acme")
        .await
        .expect("import again");
    assert_eq!(
        (
            again.users_created,
            again.users_existing,
            again.channels_created
        ),
        (0, 4, 0),
        "{again:?}"
    );
    assert_eq!((again.messages, again.reactions), (0, 0), "{again:?}");
    assert_eq!(again.messages_existing, 9, "{again:?}");
    let after = s
        .ok(
            "conversations.history",
            &ann,
            json!({"channel": "C0GEN", "limit": 100}),
        )
        .await;
    assert_eq!(
        after["messages"].as_array().unwrap().len(),
        messages.len() + 1
    );
    s.stop().await;
}

#[tokio::test]
async fn a_directory_that_is_not_an_export_is_refused_clearly() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let err = import_slack_export(&s.store, dir.path(), "acme")
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("no users.json"), "{err:#}");
    write(dir.path(), "users.json", json!({"not": "an array"}));
    let err = import_slack_export(&s.store, dir.path(), "acme")
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("not a JSON array"), "{err:#}");
    std::fs::write(dir.path().join("users.json"), b"[{\"id\": ").unwrap();
    let err = import_slack_export(&s.store, dir.path(), "acme")
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("not valid JSON"), "{err:#}");
    s.stop().await;
}
