//! Scheduled messages through the real admin and channel servers ([`super::cluster`]):
//! `chat.scheduleMessage` checks what a post checks, the scheduler posts the message when due
//! (its id as its `client_msg_id`) and drops one that can no longer be posted,
//! `chat.scheduledMessages.list` pages through the caller's own, and
//! `chat.deleteScheduledMessage` takes back the caller's own until 60 s before it is due.

use super::*;
use crate::metrics::SCHEDULED;

fn scheduled(outcome: &str) -> u64 {
    SCHEDULED.with_label_values(&[outcome]).get()
}

fn now_secs() -> u64 {
    Ts::now().0 / 1_000_000
}

/// A Web API with the real cluster behind it, looking for due messages every 50 ms.
async fn server() -> Server {
    Server::start_with_cluster_and(|c| c.webapp.scheduled_poll_ms = 50).await
}

/// The channel's history, newest first.
async fn history(s: &Server, token: &str, channel: &str) -> Vec<Value> {
    s.ok("conversations.history", token, json!({"channel": channel}))
        .await["messages"]
        .as_array()
        .expect("messages")
        .clone()
}

/// Waits (at most 20 s) until `done` holds for the channel's history; returns that history.
async fn history_until(
    s: &Server,
    token: &str,
    channel: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    for _ in 0..200 {
        let messages = history(s, token, channel).await;
        if done(&messages) {
            return messages;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "history of {channel} never got there: {:?}",
        history(s, token, channel).await
    );
}

/// The ids the caller has waiting, as `chat.scheduledMessages.list` gives them.
async fn waiting(s: &Server, token: &str, params: Value) -> Vec<String> {
    s.ok("chat.scheduledMessages.list", token, params).await["scheduled_messages"]
        .as_array()
        .expect("scheduled_messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn a_scheduled_message_is_posted_when_due_and_leaves_the_list() {
    let s = server().await;
    let alice = s.token("alice");
    let bot = s.bot_token("reminder-bot").await;
    let general = s.general().await;
    s.ok("conversations.join", &bot, json!({"channel": general}))
        .await;
    let posted_before = scheduled("posted");

    let soon = s
        .ok(
            "chat.scheduleMessage",
            &alice,
            json!({"channel": general, "text": "standup in 5", "post_at": now_secs() + 2}),
        )
        .await;
    let soon_id = soon["scheduled_message_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(soon_id.starts_with('Q'), "{soon}");
    assert_eq!(soon["channel"], general.as_str());
    assert!(
        soon["post_at"].is_string(),
        "Slack answers post_at as a string: {soon}"
    );
    assert_eq!(soon["message"]["type"], "delayed_message");
    assert_eq!(soon["message"]["text"], "standup in 5");
    assert_eq!(soon["message"]["user"], s.user_id("alice").as_str());
    assert!(soon["message"].get("ts").is_none(), "{soon}");
    // A bot's, with its own name and blocks, as a form body with a fractional time.
    let at = (now_secs() + 2).to_string() + ".5";
    let (status, bot_soon) = s
        .call_form(
            "chat.scheduleMessage",
            &[
                ("token", bot.as_str()),
                ("channel", general.as_str()),
                ("post_at", at.as_str()),
                ("username", "Reminders"),
                (
                    "blocks",
                    r#"[{"type":"section","text":{"type":"mrkdwn","text":"*lunch* time"}}]"#,
                ),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bot_soon["ok"], true, "{bot_soon}");
    assert!(bot_soon["message"]["bot_id"].is_string(), "{bot_soon}");
    let later = s
        .ok(
            "chat.scheduleMessage",
            &alice,
            json!({"channel": general, "text": "retro tomorrow", "post_at": now_secs() + 86_400}),
        )
        .await;
    let later_id = later["scheduled_message_id"]
        .as_str()
        .expect("id")
        .to_string();
    // Each caller lists its own, earliest first.
    assert_eq!(
        waiting(&s, &alice, json!({})).await,
        [soon_id.clone(), later_id.clone()]
    );
    assert_eq!(waiting(&s, &bot, json!({})).await.len(), 1);
    assert!(waiting(&s, &s.token("bob"), json!({})).await.is_empty());

    // Posted when due, as alice and the bot, each once, with its id as its client_msg_id.
    let messages = history_until(&s, &alice, &general, |m| {
        m.iter().any(|m| m["text"] == "standup in 5")
            && m.iter().any(|m| m["username"] == "Reminders")
    })
    .await;
    let standup: Vec<_> = messages
        .iter()
        .filter(|m| m["text"] == "standup in 5")
        .collect();
    assert_eq!(standup.len(), 1, "{messages:?}");
    assert_eq!(standup[0]["user"], s.user_id("alice").as_str());
    assert_eq!(standup[0]["client_msg_id"], soon_id.as_str());
    let lunch = messages
        .iter()
        .find(|m| m["username"] == "Reminders")
        .expect("the bot's");
    assert_eq!(lunch["text"], "*lunch* time");
    assert!(lunch["blocks"].is_array(), "{lunch}");
    assert!(lunch["bot_id"].is_string(), "{lunch}");
    assert!(scheduled("posted") >= posted_before + 2);
    // Gone from the lists; the later one still waits.
    assert_eq!(waiting(&s, &alice, json!({})).await, [later_id]);
    assert!(waiting(&s, &bot, json!({})).await.is_empty());
    // A posted message can no longer be deleted.
    s.err(
        "chat.deleteScheduledMessage",
        &alice,
        json!({"channel": general, "scheduled_message_id": soon_id}),
        "invalid_scheduled_message_id",
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn scheduling_checks_what_a_post_checks_and_when() {
    let s = server().await;
    let (alice, carol) = (s.token("alice"), s.token("carol"));
    let general = s.general().await;
    let secret = channel_id(
        &s.ok(
            "conversations.create",
            &alice,
            json!({"name": "secret-plans", "is_private": true}),
        )
        .await,
    );
    let at = now_secs() + 600;
    let schedule = |params: Value, error: &'static str| {
        let (s, alice) = (&s, alice.clone());
        async move {
            s.err("chat.scheduleMessage", &alice, params, error).await;
        }
    };
    schedule(json!({"channel": general, "text": "x"}), "invalid_time").await;
    schedule(
        json!({"channel": general, "text": "x", "post_at": "tomorrow"}),
        "invalid_time",
    )
    .await;
    schedule(
        json!({"channel": general, "text": "x", "post_at": "-5"}),
        "invalid_time",
    )
    .await;
    schedule(
        json!({"channel": general, "text": "x", "post_at": now_secs() - 10}),
        "time_in_past",
    )
    .await;
    schedule(
        json!({"channel": general, "text": "x", "post_at": now_secs() + 121 * 86_400}),
        "time_too_far",
    )
    .await;
    schedule(json!({"channel": general, "post_at": at}), "no_text").await;
    schedule(
        json!({"channel": "CNOPE", "text": "x", "post_at": at}),
        "channel_not_found",
    )
    .await;
    schedule(
        json!({"channel": general, "text": "x", "post_at": at, "thread_ts": "1.000001"}),
        "thread_not_found",
    )
    .await;
    schedule(
        json!({"channel": general, "text": "x", "post_at": at, "metadata": {"event_type": "e", "event_payload": {}}}),
        "metadata_must_be_sent_from_app",
    )
    .await;
    // A private channel is not found by an outsider; a public one refuses a non-member.
    s.err(
        "chat.scheduleMessage",
        &carol,
        json!({"channel": secret, "text": "x", "post_at": at}),
        "channel_not_found",
    )
    .await;
    let open = channel_id(
        &s.ok(
            "conversations.create",
            &alice,
            json!({"name": "open-plans"}),
        )
        .await,
    );
    s.err(
        "chat.scheduleMessage",
        &carol,
        json!({"channel": open, "text": "x", "post_at": at}),
        "not_in_channel",
    )
    .await;
    assert!(waiting(&s, &alice, json!({})).await.is_empty());
    assert!(waiting(&s, &carol, json!({})).await.is_empty());

    // 30 within 5 minutes in one channel; the 31st is refused, one 10 minutes on is not.
    let restricted = scheduled("restricted");
    for n in 0..30 {
        s.ok(
            "chat.scheduleMessage",
            &alice,
            json!({"channel": open, "text": format!("reminder {n}"), "post_at": at + n}),
        )
        .await;
    }
    schedule(
        json!({"channel": open, "text": "one more", "post_at": at + 100}),
        "restricted_too_many",
    )
    .await;
    assert!(scheduled("restricted") > restricted);
    s.ok(
        "chat.scheduleMessage",
        &alice,
        json!({"channel": open, "text": "later on", "post_at": at + 600}),
    )
    .await;
    s.ok(
        "chat.scheduleMessage",
        &alice,
        json!({"channel": general, "text": "elsewhere", "post_at": at + 100}),
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn the_list_pages_and_filters_the_callers_own() {
    let s = server().await;
    let alice = s.token("alice");
    let general = s.general().await;
    let side = channel_id(
        &s.ok("conversations.create", &alice, json!({"name": "side-room"}))
            .await,
    );
    let base = now_secs() + 3_600;
    let mut ids = Vec::new();
    for (n, channel) in [&general, &side, &general, &side, &general]
        .iter()
        .enumerate()
    {
        let v = s
            .ok(
                "chat.scheduleMessage",
                &alice,
                json!({"channel": channel, "text": format!("note {n}"), "post_at": base + 60 * n as u64}),
            )
            .await;
        ids.push(v["scheduled_message_id"].as_str().expect("id").to_string());
    }
    let first = s
        .ok("chat.scheduledMessages.list", &alice, json!({"limit": 2}))
        .await;
    let items = first["scheduled_messages"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], ids[0].as_str());
    assert_eq!(items[0]["channel_id"], general.as_str());
    assert_eq!(items[0]["post_at"], base);
    assert_eq!(items[0]["text"], "note 0");
    assert!(items[0]["date_created"].as_u64().expect("date_created") <= now_secs());
    let mut all = vec![ids[0].clone(), ids[1].clone()];
    let mut cursor = first["response_metadata"]["next_cursor"]
        .as_str()
        .expect("cursor")
        .to_string();
    while !cursor.is_empty() {
        let page = s
            .ok(
                "chat.scheduledMessages.list",
                &alice,
                json!({"limit": 2, "cursor": cursor}),
            )
            .await;
        for m in page["scheduled_messages"].as_array().expect("items") {
            all.push(m["id"].as_str().expect("id").to_string());
        }
        cursor = page["response_metadata"]["next_cursor"]
            .as_str()
            .expect("cursor")
            .to_string();
    }
    assert_eq!(all, ids);
    assert_eq!(
        waiting(&s, &alice, json!({"channel": side})).await,
        [ids[1].clone(), ids[3].clone()]
    );
    assert_eq!(
        waiting(
            &s,
            &alice,
            json!({"oldest": base + 60, "latest": base + 180})
        )
        .await,
        ids[1..4]
    );
    for (params, error) in [
        (json!({"oldest": "soon"}), "invalid_ts_oldest"),
        (json!({"latest": "later"}), "invalid_ts_latest"),
        (json!({"cursor": "bm9wZQ=="}), "invalid_cursor"),
        (json!({"channel": "CNOPE"}), "channel_not_found"),
    ] {
        s.err("chat.scheduledMessages.list", &alice, params, error)
            .await;
    }
    s.stop().await;
}

#[tokio::test]
async fn only_the_scheduler_deletes_and_not_in_the_last_minute() {
    let s = server().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let general = s.general().await;
    let schedule = |post_at: u64| {
        let (s, alice, general) = (&s, alice.clone(), general.clone());
        async move {
            s.ok(
                "chat.scheduleMessage",
                &alice,
                json!({"channel": general, "text": "take me back", "post_at": post_at}),
            )
            .await["scheduled_message_id"]
                .as_str()
                .expect("id")
                .to_string()
        }
    };
    let later = schedule(now_secs() + 3_600).await;
    let imminent = schedule(now_secs() + 30).await;
    let other = channel_id(
        &s.ok("conversations.create", &alice, json!({"name": "elsewhere"}))
            .await,
    );
    for (token, params) in [
        // Another user's, the wrong channel, a malformed or unknown id, none at all.
        (
            &bob,
            json!({"channel": general, "scheduled_message_id": later}),
        ),
        (
            &alice,
            json!({"channel": other, "scheduled_message_id": later}),
        ),
        (
            &alice,
            json!({"channel": general, "scheduled_message_id": "Qno such"}),
        ),
        (
            &alice,
            json!({"channel": general, "scheduled_message_id": "Q0000000000"}),
        ),
        (&alice, json!({"channel": general})),
        // Due within 60 seconds: the scheduler may be posting it.
        (
            &alice,
            json!({"channel": general, "scheduled_message_id": imminent}),
        ),
    ] {
        s.err(
            "chat.deleteScheduledMessage",
            token,
            params,
            "invalid_scheduled_message_id",
        )
        .await;
    }
    let deleted = scheduled("deleted");
    s.ok(
        "chat.deleteScheduledMessage",
        &alice,
        json!({"channel": general, "scheduled_message_id": later}),
    )
    .await;
    assert!(scheduled("deleted") > deleted);
    assert_eq!(waiting(&s, &alice, json!({})).await, [imminent]);
    s.err(
        "chat.deleteScheduledMessage",
        &alice,
        json!({"channel": general, "scheduled_message_id": later}),
        "invalid_scheduled_message_id",
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn a_message_whose_poster_left_is_dropped_when_due() {
    let s = server().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let room = channel_id(
        &s.ok(
            "conversations.create",
            &alice,
            json!({"name": "short-stay"}),
        )
        .await,
    );
    s.ok("conversations.join", &bob, json!({"channel": room}))
        .await;
    let dropped = scheduled("dropped_not_in_channel");
    s.ok(
        "chat.scheduleMessage",
        &bob,
        json!({"channel": room, "text": "bob was here", "post_at": now_secs() + 2}),
    )
    .await;
    s.ok(
        "chat.scheduleMessage",
        &alice,
        json!({"channel": room, "text": "alice stayed", "post_at": now_secs() + 2}),
    )
    .await;
    s.ok("conversations.leave", &bob, json!({"channel": room}))
        .await;
    let messages = history_until(&s, &alice, &room, |m| {
        m.iter().any(|m| m["text"] == "alice stayed")
    })
    .await;
    // Bob's went with him: not posted, not waiting, counted.
    for _ in 0..100 {
        if waiting(&s, &bob, json!({})).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(waiting(&s, &bob, json!({})).await.is_empty());
    assert!(scheduled("dropped_not_in_channel") > dropped);
    let messages = history(&s, &alice, &room).await.into_iter().chain(messages);
    assert!(!messages.into_iter().any(|m| m["text"] == "bob was here"));
    s.stop().await;
}

/// With no admin server to take it, a due message stays scheduled and is tried again.
#[tokio::test]
async fn a_message_that_cannot_be_posted_yet_waits_for_the_next_look() {
    let s = Server::start_with(|c| c.webapp.scheduled_poll_ms = 50).await;
    let alice = s.token("alice");
    let general = s.general().await;
    let retried = scheduled("retried");
    let id = s
        .ok(
            "chat.scheduleMessage",
            &alice,
            json!({"channel": general, "text": "when the mesh is back", "post_at": now_secs() + 1}),
        )
        .await["scheduled_message_id"]
        .as_str()
        .expect("id")
        .to_string();
    for _ in 0..100 {
        if scheduled("retried") >= retried + 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        scheduled("retried") >= retried + 2,
        "the due message was tried again"
    );
    assert_eq!(waiting(&s, &alice, json!({})).await, [id]);
    s.stop().await;
}

/// A backlog larger than a batch (what a node finds when it starts after a long stop;
/// batches are of 8 in unit tests) is posted whole and in order by one look: later batches
/// start where the first did, not at the present.
#[tokio::test]
async fn a_backlog_larger_than_a_batch_is_posted_whole_and_in_order() {
    // This server's own scheduler looks once, at its start, before the backlog is there.
    let s = Server::start_with_cluster_and(|c| c.webapp.scheduled_poll_ms = 3_600_000).await;
    let alice = s.token("alice");
    let general = s.general().await;
    let ws = WorkspaceId(s.demo["workspace"].as_str().unwrap().to_string());
    let alice_id = UserId(s.user_id("alice"));
    let two_hours_ago = Ts::now().0 - 2 * 3600 * 1_000_000;
    for n in 0..30u64 {
        let id = format!("QBACKLOG{n:04}");
        s.store
            .schedule_message(&shared::store::ScheduledMessage {
                id: id.clone(),
                post_at: Ts(two_hours_ago + n * 1_000),
                created: Ts(two_hours_ago - 1_000_000),
                message: shared::protocol::NewMessage {
                    workspace: ws.clone(),
                    channel: ChannelId(general.clone()),
                    user: alice_id.clone(),
                    text: format!("backlog {n}"),
                    client_msg_id: Some(id),
                    thread_ts: None,
                    kind: shared::protocol::MessageKind::Posted,
                    broadcast: false,
                    bot: false,
                    rich: None,
                },
            })
            .await
            .unwrap();
    }
    // A scheduler as a node starting now has it.
    let state = crate::api::AppState::new(
        s.store.clone(),
        s.signer.clone(),
        s.cluster.as_ref().unwrap().link.clone(),
        Vec::new(),
        MAX_BODY,
        "127.0.0.1:1".parse().unwrap(),
    );
    crate::scheduler::look_once(state).await.unwrap();
    assert!(
        waiting(&s, &alice, json!({})).await.is_empty(),
        "all posted"
    );
    let history = s
        .ok(
            "conversations.history",
            &alice,
            json!({"channel": general, "limit": 100}),
        )
        .await;
    let mut texts: Vec<String> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_string))
        .filter(|t| t.starts_with("backlog "))
        .collect();
    texts.reverse();
    let expected: Vec<String> = (0..30).map(|n| format!("backlog {n}")).collect();
    assert_eq!(texts, expected, "each once, in their order");
    s.stop().await;
}
