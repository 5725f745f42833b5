//! Web API end to end: workspace isolation (over HTTP and on the WebSocket) and idempotent
//! posts (`client_msg_id`).

use crate::common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_one_workspace_cannot_reach_another_workspaces_channels() {
    let cluster =
        Cluster::start(ClusterOpts::standard(&["alice"]).workspace("globex", &["bob", "bert"]))
            .await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("globex", "bob").clone();
    let bert = cluster.user("globex", "bert").clone();
    assert_ne!(alice.workspace, bob.workspace);

    // Users made by `switchboard admin create-user --email` are found by that email, only in
    // their own workspace.
    let found = cluster
        .api_ok(
            "users.lookupByEmail",
            &bob.token,
            json!({ "email": bert.email() }),
        )
        .await;
    assert_eq!(found["user"]["id"], bert.id.as_str(), "{found}");
    let (_, across) = cluster
        .api_status(
            "users.lookupByEmail",
            &alice.token,
            json!({ "email": bob.email() }),
        )
        .await;
    assert_eq!(across["error"], "users_not_found", "{across}");

    let a_chan = cluster.create_channel(&alice, "acme-talk").await;
    // Same name in the other workspace is fine: names are per workspace.
    let b_chan = cluster.create_channel(&bob, "acme-talk").await;
    let b_secret = cluster.create_channel(&bob, "globex-only").await;
    cluster.join(&bert, &b_chan).await;
    let b_first = cluster.post(&bob, &b_chan, "globex internal 1").await;

    // alice's token on B's channels: as if they did not exist.
    for (method, body) in [
        ("conversations.history", json!({ "channel": b_chan })),
        ("conversations.info", json!({ "channel": b_chan })),
        (
            "chat.postMessage",
            json!({ "channel": b_chan, "text": "intrusion" }),
        ),
        ("conversations.join", json!({ "channel": b_chan })),
        ("conversations.leave", json!({ "channel": b_chan })),
        ("conversations.history", json!({ "channel": b_secret })),
        (
            "chat.postMessage",
            json!({ "channel": b_secret, "text": "intrusion", "client_msg_id": "x-1" }),
        ),
    ] {
        let (status, v) = cluster.api_status(method, &alice.token, body.clone()).await;
        assert_eq!(
            v["ok"], false,
            "{method} {body} with a foreign token succeeded: {v}"
        );
        assert_eq!(v["error"], "channel_not_found", "{method} {body}: {v}");
        assert!(status < 500, "{method}: status {status}");
    }
    // The same calls by name resolve in alice's own workspace only.
    let v = cluster
        .api_ok(
            "conversations.info",
            &alice.token,
            json!({ "channel": "acme-talk" }),
        )
        .await;
    assert_eq!(
        v["channel"]["id"],
        a_chan.as_str(),
        "a name resolves in the caller's workspace"
    );
    let v = cluster
        .api(
            "conversations.info",
            &alice.token,
            json!({ "channel": "globex-only" }),
        )
        .await;
    assert_eq!(v["error"], "channel_not_found", "{v}");

    // Listings never show the other workspace.
    for method in ["conversations.list", "users.conversations"] {
        let v = cluster.api_ok(method, &alice.token, json!({})).await;
        let ids: Vec<&str> = v["channels"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["id"].as_str())
            .collect();
        assert!(
            ids.contains(&a_chan.as_str()),
            "{method} misses alice's own channel: {v}"
        );
        assert!(
            !ids.contains(&b_chan.as_str()) && !ids.contains(&b_secret.as_str()),
            "{method} leaks: {ids:?}"
        );
    }
    // Nothing of alice's attempts reached B's history.
    let h = cluster.history_all(&bob, &b_chan, 10).await;
    assert_eq!(
        seqs(&h),
        vec![1],
        "B's channel holds only bob's message: {h:?}"
    );
    assert_eq!(h[0]["ts"], b_first["ts"]);

    // On the WebSocket: alice never receives B's messages, whatever she asks for.
    let mut resume = std::collections::BTreeMap::new();
    resume.insert(b_chan.clone(), 0);
    resume.insert(a_chan.clone(), 0);
    let alice_ws = cluster.connect_resume(0, &alice, &resume).await;
    assert!(
        alice_ws.hello["seq"].get(&b_chan).is_none(),
        "hello shows a foreign channel: {}",
        alice_ws.hello
    );
    let alice_ws2 = cluster.connect(1, &alice).await;
    let bob_ws = cluster.connect(1, &bob).await;
    // A member of B's channel on each gateway: witnesses that the gateway delivered B's posts.
    let bert_ws = cluster.connect(0, &bert).await;
    cluster
        .warm_up(
            &alice,
            std::slice::from_ref(&a_chan),
            &[&alice_ws, &alice_ws2],
        )
        .await;
    cluster
        .warm_up(&bob, std::slice::from_ref(&b_chan), &[&bob_ws, &bert_ws])
        .await;

    let from = alice_ws.num_events();
    alice_ws
        .send_json(&json!({ "id": 5, "type": "resume", "channels": { b_chan.clone(): 0 } }))
        .await;
    let answer = alice_ws
        .wait_event(from, WAIT, "resumed", |e| e["reply_to"] == 5)
        .await;
    assert_eq!(
        answer["channels"],
        json!([]),
        "a foreign channel must not be resumed: {answer}"
    );
    assert_eq!(answer["rejected"][0]["error"], "not_in_channel", "{answer}");
    let gw0 = &cluster.gateways[0].http;
    let not_in_channel = [("kind", "not_in_channel")];
    let refused_before = cluster
        .metric(gw0, "switchboard_gateway_bad_input_total", &not_in_channel)
        .await;
    let from = alice_ws.num_events();
    alice_ws
        .send_json(&json!({ "id": 6, "type": "typing", "channel": b_chan }))
        .await;
    let answer = alice_ws
        .wait_event(from, WAIT, "error for typing", |e| e["reply_to"] == 6)
        .await;
    assert_eq!(
        (&answer["type"], &answer["error"]["code"]),
        (&json!("error"), &json!(4)),
        "typing in a foreign channel is NOT_IN_CHANNEL: {answer}"
    );
    assert_eq!(
        cluster
            .metric_sample(gw0, "switchboard_gateway_bad_input_total", &not_in_channel)
            .await,
        Some(refused_before + 1.0),
        "the refused typing is counted"
    );

    let mut last_chan = 0;
    for i in 0..5 {
        last_chan = seq_of(
            &cluster
                .post(&bob, &b_chan, &format!("globex internal {}", i + 2))
                .await,
        );
    }
    // Bert joins a channel of B while alice is connected: only B's sessions hear of it.
    cluster.join(&bert, &b_secret).await;
    let last_b = seq_of(&cluster.post(&bob, &b_secret, "secret").await);
    // Sentinels, no sleep: once B's sessions on both gateways have B's posts, each gateway has
    // handed them to every session it was going to, and an acme message posted after that
    // reaches alice's sessions behind anything leaked (one queue per session).
    bob_ws.wait_seq(&b_chan, last_chan, WAIT).await;
    bert_ws.wait_seq(&b_chan, last_chan, WAIT).await;
    bob_ws.wait_seq(&b_secret, last_b, WAIT).await;
    let sentinel = seq_of(&cluster.post(&alice, &a_chan, "acme sentinel").await);
    alice_ws.wait_seq(&a_chan, sentinel, WAIT).await;
    alice_ws2.wait_seq(&a_chan, sentinel, WAIT).await;
    for (i, ws) in [&alice_ws, &alice_ws2].into_iter().enumerate() {
        for e in ws.events() {
            let text = e.to_string();
            assert!(
                !text.contains(b_chan.as_str()) || e["type"] == "resumed" || e["type"] == "error",
                "alice's session {i} got an event of B's channel: {e}"
            );
            assert!(
                !text.contains(b_secret.as_str()),
                "alice's session {i} got an event of B's channel: {e}"
            );
            assert!(
                !text.contains(bob.workspace.as_str()),
                "alice's session {i} got an event of B's workspace: {e}"
            );
        }
        let foreign: Vec<Value> = ws
            .all_messages()
            .into_iter()
            .filter(|m| m["channel"] != a_chan.as_str())
            .collect();
        assert!(
            foreign.is_empty(),
            "alice's session {i} got foreign messages: {foreign:?}"
        );
    }
    // And bob's session sees none of alice's.
    assert!(
        bob_ws.messages(&a_chan).is_empty(),
        "bob got acme's messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posting_twice_with_one_client_msg_id_stores_one_message() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let c = cluster.create_channel(&alice, "idempotent").await;
    cluster.join(&bob, &c).await;
    let bob_ws = cluster.connect(1, &bob).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&c), &[&bob_ws])
        .await;

    let body = json!({ "channel": c, "text": "exactly once", "client_msg_id": "5f1e2a3b-0000-4000-8000-000000000001" });
    let first = cluster
        .api_ok("chat.postMessage", &alice.token, body.clone())
        .await;
    let second = cluster
        .api_ok("chat.postMessage", &alice.token, body.clone())
        .await;
    assert_eq!(
        first["ts"], second["ts"],
        "a repeat answers the stored ts: {first} / {second}"
    );
    assert_eq!(
        first["message"]["seq"], second["message"]["seq"],
        "a repeat answers the stored seq"
    );
    assert_eq!(
        first["message"]["client_msg_id"],
        "5f1e2a3b-0000-4000-8000-000000000001"
    );
    // The id reused for another text, or by another user, is refused: answering the stored
    // message would drop the new text while saying ok.
    let mut other = body.clone();
    other["text"] = "different text".into();
    let third = cluster.api("chat.postMessage", &alice.token, other).await;
    assert_eq!(third["ok"], false, "{third}");
    assert_eq!(third["error"], "client_msg_id_conflict", "{third}");
    let fourth = cluster
        .api("chat.postMessage", &bob.token, body.clone())
        .await;
    assert_eq!(fourth["error"], "client_msg_id_conflict", "{fourth}");

    // Concurrent repeats of a fresh id all get one message.
    let body2 = json!({ "channel": c, "text": "raced", "client_msg_id": "race-1" });
    let answers = futures_util::future::join_all(
        (0..6).map(|_| cluster.api_ok("chat.postMessage", &alice.token, body2.clone())),
    )
    .await;
    for a in &answers {
        assert_eq!(
            a["ts"], answers[0]["ts"],
            "concurrent repeats disagree: {answers:?}"
        );
        assert_eq!(a["message"]["seq"], answers[0]["message"]["seq"]);
    }
    // A different id is a different message.
    let fresh = cluster
        .api_ok(
            "chat.postMessage",
            &alice.token,
            json!({ "channel": c, "text": "exactly once", "client_msg_id": "other" }),
        )
        .await;
    let last = seq_of(&fresh["message"]);
    assert_eq!(last, seq_of(&answers[0]["message"]) + 1);
    assert_eq!(
        seq_of(&answers[0]["message"]),
        seq_of(&first["message"]) + 1
    );

    let history = cluster.history_all(&alice, &c, 3).await;
    let once: Vec<&Value> = history
        .iter()
        .filter(|m| m["client_msg_id"] == "5f1e2a3b-0000-4000-8000-000000000001")
        .collect();
    assert_eq!(once.len(), 1, "history holds the message once: {history:?}");
    assert_eq!(once[0]["ts"], first["ts"]);
    assert_eq!(
        history
            .iter()
            .filter(|m| m["client_msg_id"] == "race-1")
            .count(),
        1
    );
    assert_eq!(seqs(&history), (1..=last).collect::<Vec<_>>());

    // Settled: bob's stream is contiguous up to a sentinel, so no repeat is still in flight.
    let end = seq_of(&cluster.settle(&alice, &c, &[&bob_ws]).await);
    assert_eq!(end, last + 1);
    let got = bob_ws.messages(&c);
    assert_eq!(
        got.iter()
            .filter(|m| m["client_msg_id"] == "5f1e2a3b-0000-4000-8000-000000000001")
            .count(),
        1
    );
    assert_eq!(
        got.iter()
            .filter(|m| m["client_msg_id"] == "race-1")
            .count(),
        1
    );
}

/// A bot user made with `switchboard admin create-user --bot` holds a bot token, and its
/// messages reach sessions with its `bot_id` (what `auth.test` gives it), which bots check
/// to ignore themselves and each other; a person's carry none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_user_s_messages_carry_its_bot_id() {
    let cluster =
        Cluster::start(ClusterOpts::standard(&["alice", "bob"]).bot("acme", "ci-bot")).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let bot = cluster.user("acme", "ci-bot").clone();
    assert!(bot.token.starts_with("xoxb-"), "{}", bot.token);
    let me = cluster.api_ok("auth.test", &bot.token, json!({})).await;
    assert_eq!(me["bot_id"], bot.id.as_str(), "{me}");

    let channel = cluster.create_channel(&alice, "builds").await;
    for user in [&bob, &bot] {
        cluster.join(user, &channel).await;
    }
    let ws = cluster.connect(1, &bob).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&channel), &[&ws])
        .await;
    cluster.post(&bot, &channel, "build 42 passed").await;
    cluster.post(&alice, &channel, "nice").await;
    let from_bot = ws
        .wait_event(0, WAIT, "the bot's message", |e| {
            e["text"] == "build 42 passed"
        })
        .await;
    assert_eq!(from_bot["bot_id"], bot.id.as_str(), "{from_bot}");
    assert_eq!(from_bot["user"], bot.id.as_str(), "{from_bot}");
    let from_alice = ws
        .wait_event(0, WAIT, "alice's message", |e| e["text"] == "nice")
        .await;
    assert!(from_alice.get("bot_id").is_none(), "{from_alice}");
    // A name and icon of its own for one message reach the session too (through the mesh's
    // tagged rich fields).
    cluster
        .api_ok(
            "chat.postMessage",
            &bot.token,
            json!({ "channel": channel, "text": "build 43 passed", "username": "Build: main",
                    "icon_url": "https://ci.example.com/green.png" }),
        )
        .await;
    let named = ws
        .wait_event(0, WAIT, "the named message", |e| {
            e["text"] == "build 43 passed"
        })
        .await;
    assert_eq!(named["username"], "Build: main", "{named}");
    assert_eq!(
        named["icons"]["image_48"], "https://ci.example.com/green.png",
        "{named}"
    );
    assert_eq!(named["bot_id"], bot.id.as_str(), "{named}");
}

/// A scheduled message is kept in the store, not in the Web API: scheduled, then the Web API
/// killed before it is due and started again after, it is posted once, as its poster, and
/// reaches a connected client like any post.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_scheduled_before_the_web_api_went_down_is_posted_when_it_is_back() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let channel = cluster.create_channel(&alice, "later").await;
    cluster.join(&bob, &channel).await;
    let watcher = cluster.connect(0, &bob).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&channel), &[&watcher])
        .await;
    let from = watcher.num_events();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let post_at = now + 3;
    let scheduled = cluster
        .api_ok(
            "chat.scheduleMessage",
            &alice.token,
            json!({ "channel": channel, "text": "while you were out", "post_at": post_at }),
        )
        .await;
    let id = scheduled["scheduled_message_id"]
        .as_str()
        .unwrap()
        .to_string();
    cluster.kill("webapp");
    // Down until a second past its time.
    let due = std::time::UNIX_EPOCH + std::time::Duration::from_secs(post_at + 1);
    if let Ok(wait) = due.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    assert!(
        !watcher.events()[from..]
            .iter()
            .any(|e| e["text"] == "while you were out"),
        "posted while no Web API ran"
    );
    cluster.restart_webapp().await;
    let event = watcher
        .wait_event(
            from,
            std::time::Duration::from_secs(20),
            "the scheduled message",
            |e| e["type"] == "message" && e["text"] == "while you were out",
        )
        .await;
    assert_eq!(event["user"], alice.id.as_str(), "{event}");
    assert_eq!(event["channel"], channel.as_str(), "{event}");
    let history = cluster.history_all(&alice, &channel, 100).await;
    let posted: Vec<&Value> = history
        .iter()
        .filter(|m| m["text"] == "while you were out")
        .collect();
    assert_eq!(posted.len(), 1, "posted once: {history:?}");
    assert_eq!(posted[0]["client_msg_id"], id.as_str());
    let waiting = cluster
        .api_ok("chat.scheduledMessages.list", &alice.token, json!({}))
        .await;
    assert_eq!(waiting["scheduled_messages"], json!([]), "{waiting}");
    let posted_metric = cluster
        .metric(
            &cluster.webapp,
            "switchboard_webapp_scheduled_messages_total",
            &[("outcome", "posted")],
        )
        .await;
    assert_eq!(posted_metric, 1.0);
}

/// A file shared in a channel reaches a connected client as Slack's `file_share` message,
/// and its `url_private` serves the bytes to that client's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_file_reaches_clients_and_is_served_to_them() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let channel = cluster.create_channel(&alice, "shared-files").await;
    cluster.join(&bob, &channel).await;
    let watcher = cluster.connect(1, &bob).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&channel), &[&watcher])
        .await;
    let from = watcher.num_events();
    let bytes: Vec<u8> = (0..70_000u32).map(|n| (n % 251) as u8).collect();
    let started = cluster
        .api_ok(
            "files.getUploadURLExternal",
            &alice.token,
            json!({ "filename": "trace.bin", "length": bytes.len() }),
        )
        .await;
    let upload = cluster
        .http
        .post(started["upload_url"].as_str().unwrap())
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status().as_u16(), 200);
    let file_id = started["file_id"].as_str().unwrap();
    let done = cluster
        .api_ok(
            "files.completeUploadExternal",
            &alice.token,
            json!({
                "files": json!([{ "id": file_id, "title": "the trace" }]).to_string(),
                "channel_id": channel,
                "initial_comment": "here it is",
            }),
        )
        .await;
    let event = watcher
        .wait_event(
            from,
            std::time::Duration::from_secs(10),
            "the file_share message",
            |e| e["type"] == "message" && e["subtype"] == "file_share",
        )
        .await;
    assert_eq!(event["text"], "here it is", "{event}");
    assert_eq!(event["files"][0]["id"], file_id, "{event}");
    assert_eq!(event["files"][0]["title"], "the trace");
    // And Slack's `file_shared`, which upload-handling apps wait for.
    let shared = watcher
        .wait_event(
            from,
            std::time::Duration::from_secs(10),
            "file_shared",
            |e| e["type"] == "file_shared",
        )
        .await;
    assert_eq!(shared["file_id"], file_id, "{shared}");
    assert_eq!(shared["channel_id"], channel.as_str(), "{shared}");
    assert_eq!(shared["event_ts"], event["ts"], "{shared}");
    let url = done["files"][0]["url_private"].as_str().unwrap();
    assert_eq!(event["files"][0]["url_private"], url);
    let got = cluster
        .http
        .get(url)
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
}

/// An admin deactivates a user: the user's live session hears `user_change` (deleted), then
/// a goodbye, and is closed with `account_inactive`; the others' sessions only hear it; the
/// user cannot come back, through the Web API or with its old gateway URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_user_s_sessions_end_and_stay_out() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let watcher = cluster.connect(0, &alice).await;
    let leaver = cluster.connect(1, &bob).await;
    let (from_watcher, from_leaver) = (watcher.num_events(), leaver.num_events());

    let v = cluster
        .api_ok(
            "admin.users.setInactive",
            &alice.token,
            json!({ "user": bob.id }),
        )
        .await;
    assert_eq!(v["user"]["deleted"], true, "{v}");
    let wait = std::time::Duration::from_secs(10);
    let deleted = |e: &Value| {
        e["type"] == "user_change"
            && e["user"]["id"] == bob.id.as_str()
            && e["user"]["deleted"] == true
    };
    leaver
        .wait_event(from_leaver, wait, "user_change (deleted)", deleted)
        .await;
    let goodbye = leaver
        .wait_event(from_leaver, wait, "goodbye", |e| e["type"] == "goodbye")
        .await;
    assert_eq!(goodbye["source"], "account_inactive");
    for _ in 0..200 {
        if leaver.ended() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        leaver.closed(),
        Some((4004, "account_inactive".to_string()))
    );
    watcher
        .wait_event(from_watcher, wait, "user_change (deleted)", deleted)
        .await;
    assert!(!watcher.ended(), "only the deactivated user's sessions end");
    assert!(watcher.ping(7).await["reply_to"] == 7);

    let (_, refused) = cluster
        .api_status("rtm.connect", &bob.token, json!({}))
        .await;
    assert_eq!(refused["error"], "account_inactive", "{refused}");
    match Client::connect(&cluster.gateways[1].ws_url, &bob.token, None).await {
        Err(ConnectError::Http(401, body)) => assert!(body.contains("account_inactive"), "{body}"),
        Err(other) => panic!("refused otherwise: {other:?}"),
        Ok(_) => panic!("a deactivated user's token opened a session"),
    }
}

/// `auth.revoke` on real processes: the session opened with the token hears Slack's
/// `tokens_revoked`, then `goodbye`, and closes with code 4005; another user's session stays;
/// the Web API and the gateways refuse the token from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_s_session_ends_and_the_token_stays_out() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let watcher = cluster.connect(0, &alice).await;
    let revoked = cluster.connect(1, &bob).await;
    let from = revoked.num_events();

    let v = cluster.api_ok("auth.revoke", &bob.token, json!({})).await;
    assert_eq!(v["revoked"], true, "{v}");
    let wait = std::time::Duration::from_secs(10);
    let told = revoked
        .wait_event(from, wait, "tokens_revoked", |e| {
            e["type"] == "tokens_revoked"
        })
        .await;
    assert_eq!(told["tokens"]["oauth"], json!([bob.id]), "{told}");
    let goodbye = revoked
        .wait_event(from, wait, "goodbye", |e| e["type"] == "goodbye")
        .await;
    assert_eq!(goodbye["source"], "token_revoked");
    for _ in 0..200 {
        if revoked.ended() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(revoked.closed(), Some((4005, "token_revoked".to_string())));
    assert!(!watcher.ended(), "another user's session stays");
    assert!(watcher.ping(8).await["reply_to"] == 8);

    let (_, refused) = cluster
        .api_status("rtm.connect", &bob.token, json!({}))
        .await;
    assert_eq!(refused["error"], "token_revoked", "{refused}");
    match Client::connect(&cluster.gateways[1].ws_url, &bob.token, None).await {
        Err(ConnectError::Http(401, body)) => assert!(body.contains("token_revoked"), "{body}"),
        Err(other) => panic!("refused otherwise: {other:?}"),
        Ok(_) => panic!("a revoked token opened a session"),
    }
    cluster.api_ok("auth.test", &alice.token, json!({})).await;
}
