//! `search.messages` by `cursor`: every match once, in order, whatever the page size, with
//! Slack's `response_metadata.next_cursor`; cursors it did not make are `invalid_cursor`.
//! And a match carries its message's blocks, attachments and thread, and a bot's marks.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use shared::ids::{ChannelId, UserId, WorkspaceId};

use crate::tests::{stored, Server};

/// Follows `search.messages` pages from `cursor: *` to the last: each page's matches
/// (channel, seq, ts) and its `pagination`.
async fn walk(s: &Server, token: &str, params: Value) -> Vec<(Vec<(String, u64, String)>, Value)> {
    let mut pages = Vec::new();
    let mut cursor = "*".to_string();
    loop {
        let mut p = params.clone();
        p["cursor"] = cursor.clone().into();
        let v = s.ok("search.messages", token, p).await;
        let matches = v["messages"]["matches"]
            .as_array()
            .expect("matches")
            .iter()
            .map(|m| {
                (
                    m["channel"]["id"].as_str().unwrap().to_string(),
                    m["seq"].as_u64().unwrap(),
                    m["ts"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        pages.push((matches, v["messages"]["pagination"].clone()));
        cursor = v["response_metadata"]["next_cursor"]
            .as_str()
            .expect("a cursor call answers next_cursor")
            .to_string();
        if cursor.is_empty() {
            return pages;
        }
        assert!(pages.len() < 200, "the pages end");
    }
}

#[tokio::test]
async fn search_cursors_read_every_match_once_in_order() {
    let s = Server::start().await;
    let alice = s.token("alice");
    let ws = WorkspaceId(s.demo["workspace"].as_str().unwrap().to_string());
    let general = ChannelId(s.demo["general"].as_str().unwrap().to_string());
    let (_, v) = s
        .call("conversations.create", Some(&alice), json!({"name": "ops"}))
        .await;
    let ops = ChannelId(v["channel"]["id"].as_str().unwrap().to_string());
    // 23 matches in each channel, the same seq (so the same ts) in both: every ts is a tie
    // of two channels; and messages that do not match between them.
    let user = UserId(s.user_id("alice"));
    for seq in 1..=30 {
        for channel in [&general, &ops] {
            let text = if seq % 4 == 0 { "lunch" } else { "deploy log" };
            s.store
                .append(&stored(&ws, channel, seq, user.clone(), text))
                .await
                .unwrap();
        }
    }
    let total = 2 * (30 - 30 / 4);
    for _ in 0..100 {
        let v = s
            .ok("search.messages", &alice, json!({"query": "deploy"}))
            .await;
        if v["messages"]["total"] == total {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    for count in [1, 3, 5, 7, 100] {
        for dir in ["desc", "asc"] {
            let params =
                json!({"query": "deploy", "sort": "timestamp", "sort_dir": dir, "count": count});
            let pages = walk(&s, &alice, params).await;
            let all: Vec<_> = pages.iter().flat_map(|(m, _)| m.clone()).collect();
            let unique: BTreeSet<_> = all.iter().map(|(c, seq, _)| (c.clone(), *seq)).collect();
            assert_eq!(
                (all.len(), unique.len()),
                (total as usize, total as usize),
                "count {count} {dir}"
            );
            let ts: Vec<f64> = all.iter().map(|(_, _, ts)| ts.parse().unwrap()).collect();
            let ordered = ts.windows(2).all(|w| {
                if dir == "desc" {
                    w[0] >= w[1]
                } else {
                    w[0] <= w[1]
                }
            });
            assert!(ordered, "count {count} {dir}: {ts:?}");
            // `pagination` counts the pages as `page` would.
            let mut given = 0;
            for (matches, p) in &pages {
                if matches.is_empty() {
                    continue;
                }
                assert_eq!(p["first"], given + 1, "{p}");
                given += matches.len() as u64;
                assert_eq!(p["last"], given, "{p}");
                assert_eq!(p["total_count"], total);
                assert_eq!(p["page"], (given - matches.len() as u64) / count + 1);
            }
        }
    }
    // By score, the cursor carries the offset: every match once too.
    let pages = walk(&s, &alice, json!({"query": "deploy", "count": 9})).await;
    let all: BTreeSet<_> = pages
        .iter()
        .flat_map(|(m, _)| m.iter().map(|(c, seq, _)| (c.clone(), *seq)))
        .collect();
    assert_eq!(all.len(), total as usize);
    assert_eq!(
        pages.iter().map(|(m, _)| m.len()).sum::<usize>(),
        total as usize
    );

    // Highlights as on any page.
    let v = s
        .ok(
            "search.messages",
            &alice,
            json!({"query": "deploy", "sort": "timestamp", "count": 2, "cursor": "*", "highlight": true}),
        )
        .await;
    let text = v["messages"]["matches"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("\u{e000}deploy\u{e001}"), "{text:?}");
    // Pages by `page` are as they were: no `response_metadata`.
    let v = s
        .ok(
            "search.messages",
            &alice,
            json!({"query": "deploy", "page": 2}),
        )
        .await;
    assert!(v.get("response_metadata").is_none(), "{v}");
    assert_eq!(v["messages"]["pagination"]["first"], 21);
    // `search.files` and `search.all` page by `page` only, as Slack's do.
    let v = s
        .ok(
            "search.all",
            &alice,
            json!({"query": "deploy", "cursor": "*"}),
        )
        .await;
    assert!(v.get("response_metadata").is_none(), "{v}");

    // Cursors this API did not make, or made for the other sort, are refused.
    let first = s
        .ok(
            "search.messages",
            &alice,
            json!({"query": "deploy", "sort": "timestamp", "count": 2, "cursor": "*"}),
        )
        .await;
    let by_time = first["response_metadata"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = s
        .ok("conversations.list", &alice, json!({"limit": 1}))
        .await;
    let list_cursor = listed["response_metadata"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!list_cursor.is_empty());
    use base64::Engine as _;
    let forged = |v: &str| base64::engine::general_purpose::STANDARD.encode(format!("search:{v}"));
    for (cursor, sort) in [
        ("not base64!".to_string(), "timestamp"),
        (list_cursor, "timestamp"),
        (by_time.clone(), "score"),
        (forged("t;0;;CX/1;"), "timestamp"),
        (forged("t;0;12;C1/x;"), "timestamp"),
        (forged("t;zero;12;;"), "timestamp"),
        (forged("t;0;12;;"), "score"),
        (forged("s;10000"), "score"),
        (forged("s;-1"), "score"),
        (
            forged(&format!("t;0;12;;{}", vec!["C1/1"; 1001].join(","))),
            "timestamp",
        ),
    ] {
        s.err(
            "search.messages",
            &alice,
            json!({"query": "deploy", "sort": sort, "cursor": cursor}),
            "invalid_cursor",
        )
        .await;
    }
    assert!(s.metrics_text().await.lines().any(|l| l.starts_with(
        "switchboard_webapp_errors_total{error=\"invalid_cursor\",method=\"search.messages\"}"
    )));
    // A cursor that claims more matches given than there are still pages sanely.
    let v = s
        .ok(
            "search.messages",
            &alice,
            json!({"query": "deploy", "sort": "timestamp", "cursor": forged(&format!("t;{};;;", u32::MAX))}),
        )
        .await;
    assert_eq!(v["messages"]["total"], total, "{v}");
    // The cursor made for one sort goes on with it.
    let v = s
        .ok(
            "search.messages",
            &alice,
            json!({"query": "deploy", "sort": "timestamp", "count": 2, "cursor": by_time}),
        )
        .await;
    assert_eq!(v["messages"]["pagination"]["first"], 3, "{v}");
}

#[tokio::test]
async fn search_matches_carry_their_messages_blocks_attachments_and_thread() {
    let s = Server::start_with_cluster().await;
    let alice = s.token("alice");
    let bot = s.bot_token("wombatbot").await;
    let general = s.demo["general"].as_str().unwrap().to_string();
    let blocks =
        json!([{"type": "section", "text": {"type": "mrkdwn", "text": "*wombat* report"}}]);
    let with_blocks = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "wombat report", "blocks": blocks}),
        )
        .await["ts"]
        .as_str()
        .unwrap()
        .to_string();
    let attachments =
        json!([{"fallback": "wombat alert", "text": "wombat alert", "color": "#ff0000"}]);
    let from_bot = s
        .ok(
            "chat.postMessage",
            &bot,
            json!({"channel": general, "text": "wombat alert", "attachments": attachments}),
        )
        .await["ts"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "wombat reply", "thread_ts": with_blocks}),
        )
        .await["ts"]
        .as_str()
        .unwrap()
        .to_string();
    let mut found = Value::Null;
    for _ in 0..100 {
        found = s
            .ok(
                "search.messages",
                &alice,
                json!({"query": "wombat", "sort": "timestamp"}),
            )
            .await;
        if found["messages"]["total"] == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let matches = found["messages"]["matches"]
        .as_array()
        .expect("matches")
        .clone();
    assert_eq!(matches.len(), 3, "{found}");
    let by_ts = |ts: &str| matches.iter().find(|m| m["ts"] == ts).unwrap().clone();
    let m = by_ts(&with_blocks);
    assert_eq!(m["blocks"], blocks, "{m}");
    assert!(
        m.get("attachments").is_none() && m.get("bot_id").is_none(),
        "{m}"
    );
    let m = by_ts(&from_bot);
    assert_eq!(m["attachments"][0]["text"], "wombat alert", "{m}");
    assert_eq!(m["attachments"][0]["color"], "#ff0000", "{m}");
    assert!(m["bot_id"].is_string(), "a bot's match says so: {m}");
    let m = by_ts(&reply);
    assert_eq!(m["thread_ts"], with_blocks.as_str(), "{m}");
    assert!(
        m["permalink"].as_str().unwrap().contains("thread_ts="),
        "{m}"
    );
}
