//! Message changes end to end: edits, deletions, reactions and thread replies posted over
//! HTTP reach clients on both gateways as RTM events, in the channel's one contiguous
//! sequence; a resuming client gets them replayed; history, replies, reactions.get and search
//! show the resulting state.

use std::collections::BTreeMap;

use crate::common::*;
use serde_json::{json, Value};

/// Every entry of a channel on a client, whatever its type, in arrival order.
fn entries(client: &Client, channel: &str) -> Vec<Value> {
    client
        .events()
        .into_iter()
        .filter(|e| e["channel"] == channel && e["seq"].is_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletions_reactions_and_threads_flow_in_order_and_replay() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let channel = cluster.create_channel(&alice, "changes").await;
    cluster.join(&bob, &channel).await;
    let watcher = cluster.connect(1, &bob).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&channel), &[&watcher])
        .await;
    let start_seq = watcher.max_seq(&channel).unwrap();

    let parent = cluster.post(&alice, &channel, "ship it on friday").await;
    let parent_ts = parent["ts"].as_str().unwrap().to_string();
    let v = cluster
        .api_ok(
            "chat.update",
            &alice.token,
            json!({ "channel": channel, "ts": parent_ts, "text": "ship it on monday" }),
        )
        .await;
    assert_eq!(v["text"], "ship it on monday");
    // Only the author edits; a missing message is clear.
    let v = cluster
        .api(
            "chat.update",
            &bob.token,
            json!({ "channel": channel, "ts": parent_ts, "text": "no" }),
        )
        .await;
    assert_eq!(v["error"], "cant_update_message", "{v}");
    let v = cluster
        .api(
            "chat.update",
            &alice.token,
            json!({ "channel": channel, "ts": "1.000001", "text": "no" }),
        )
        .await;
    assert_eq!(v["error"], "message_not_found", "{v}");

    let reply = cluster
        .api_ok(
            "chat.postMessage",
            &bob.token,
            json!({ "channel": channel, "text": "monday works", "thread_ts": parent_ts }),
        )
        .await;
    let v = cluster
        .api(
            "chat.postMessage",
            &bob.token,
            json!({ "channel": channel, "text": "x", "thread_ts": "1.000001" }),
        )
        .await;
    assert_eq!(v["error"], "thread_not_found", "{v}");
    cluster
        .api_ok(
            "reactions.add",
            &bob.token,
            json!({ "channel": channel, "timestamp": parent_ts, "name": "tada" }),
        )
        .await;
    let v = cluster
        .api(
            "reactions.add",
            &bob.token,
            json!({ "channel": channel, "timestamp": parent_ts, "name": "tada" }),
        )
        .await;
    assert_eq!(v["error"], "already_reacted", "{v}");
    cluster
        .api_ok(
            "reactions.add",
            &alice.token,
            json!({ "channel": channel, "timestamp": parent_ts, "name": ":eyes:" }),
        )
        .await;
    cluster
        .api_ok(
            "reactions.remove",
            &alice.token,
            json!({ "channel": channel, "timestamp": parent_ts, "name": "eyes" }),
        )
        .await;
    let v = cluster
        .api(
            "reactions.remove",
            &alice.token,
            json!({ "channel": channel, "timestamp": parent_ts, "name": "eyes" }),
        )
        .await;
    assert_eq!(v["error"], "no_reaction", "{v}");
    let v = cluster
        .api(
            "reactions.add",
            &alice.token,
            json!({ "channel": channel, "timestamp": parent_ts, "name": "Bad Name!" }),
        )
        .await;
    assert_eq!(v["error"], "invalid_name", "{v}");
    let doomed = cluster.post(&alice, &channel, "typo mesage").await;
    let doomed_ts = doomed["ts"].as_str().unwrap().to_string();
    // Indexed before it is deleted, so that "not found" below means the deletion reached the
    // index, not that the post never did.
    let v = cluster
        .wait_search(&alice.token, "mesage", "the doomed post", |v| {
            v["messages"]["total"] == 1
        })
        .await;
    assert_eq!(
        v["messages"]["matches"][0]["ts"],
        doomed_ts.as_str(),
        "the one hit is the doomed post: {v}"
    );
    let v = cluster
        .api(
            "chat.delete",
            &bob.token,
            json!({ "channel": channel, "ts": doomed_ts }),
        )
        .await;
    assert_eq!(
        v["error"], "cant_delete_message",
        "bob is neither the author nor an admin: {v}"
    );
    cluster
        .api_ok(
            "chat.delete",
            &alice.token,
            json!({ "channel": channel, "ts": doomed_ts }),
        )
        .await;

    // Bob pins the parent: Slack's `pin_added`, with the message as it is.
    cluster
        .api_ok(
            "pins.add",
            &bob.token,
            json!({ "channel": channel, "timestamp": parent_ts }),
        )
        .await;

    // post, edit, reply, reaction, reaction, unreaction, post, delete, pin: 9 entries.
    let last = start_seq + 9;
    watcher
        .wait_event(0, WAIT, "the pin", |e| {
            e["channel"] == channel.as_str() && e["seq"] == last
        })
        .await;
    let got = entries(&watcher, &channel);
    let tail: Vec<&Value> = got
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() > start_seq)
        .collect();
    let seqs: Vec<u64> = tail.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (start_seq + 1..=last).collect::<Vec<_>>(),
        "one contiguous sequence for every kind of entry"
    );
    let kinds: Vec<String> = tail
        .iter()
        .map(|e| {
            format!(
                "{}{}",
                e["type"].as_str().unwrap(),
                e["subtype"]
                    .as_str()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "message",
            "message/message_changed",
            "message",
            "reaction_added",
            "reaction_added",
            "reaction_removed",
            "message",
            "message/message_deleted",
            "pin_added"
        ]
    );
    let pin = tail[8];
    assert_eq!(pin["user"], bob.id.as_str(), "{pin}");
    assert_eq!(pin["channel_id"], channel.as_str());
    assert_eq!(pin["item"]["type"], "message");
    assert_eq!(pin["item"]["created_by"], bob.id.as_str());
    assert_eq!(pin["item"]["message"]["ts"], parent_ts.as_str());
    assert_eq!(pin["item"]["message"]["text"], "ship it on monday");
    assert_eq!(pin["item"]["message"]["pinned_to"], json!([channel]));
    assert_eq!(tail[1]["message"]["text"], "ship it on monday");
    assert_eq!(tail[1]["message"]["ts"], parent_ts.as_str());
    // Edits and deletions say what the message was (Slack's `previous_message`).
    assert_eq!(
        tail[1]["previous_message"],
        json!({ "type": "message", "user": alice.id, "text": "ship it on friday", "ts": parent_ts }),
        "{}",
        tail[1]
    );
    assert_eq!(
        tail[7]["previous_message"]["text"], "typo mesage",
        "{}",
        tail[7]
    );
    assert_eq!(tail[7]["previous_message"]["ts"], doomed_ts.as_str());
    assert_eq!(tail[2]["thread_ts"], parent_ts.as_str());
    assert_eq!(tail[3]["item"]["ts"], parent_ts.as_str());
    assert_eq!(tail[7]["deleted_ts"], doomed_ts.as_str());

    // History shows the resulting state; replies show the thread.
    let history = cluster
        .api_ok(
            "conversations.history",
            &alice.token,
            json!({ "channel": channel, "limit": 10 }),
        )
        .await;
    let top: Vec<&Value> = history["messages"].as_array().unwrap().iter().collect();
    assert!(
        top.iter().all(|m| m["ts"] != doomed_ts.as_str()),
        "deleted message is gone from history"
    );
    assert!(
        top.iter().all(|m| m["ts"] != reply["ts"]),
        "replies stay in their thread"
    );
    let p = top
        .iter()
        .find(|m| m["ts"] == parent_ts.as_str())
        .expect("parent in history");
    assert_eq!(p["text"], "ship it on monday");
    assert!(p["edited"]["ts"].is_string());
    assert_eq!(p["pinned_to"], json!([channel]));
    assert_eq!(history["pin_count"], 1);
    assert_eq!(p["reply_count"], 1);
    assert_eq!(
        p["reactions"],
        json!([{ "name": "tada", "users": [bob.id], "count": 1 }])
    );
    let replies = cluster
        .api_ok(
            "conversations.replies",
            &bob.token,
            json!({ "channel": channel, "ts": parent_ts }),
        )
        .await;
    let texts: Vec<&str> = replies["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["ship it on monday", "monday works"]);
    let got = cluster
        .api_ok(
            "reactions.get",
            &alice.token,
            json!({ "channel": channel, "timestamp": parent_ts }),
        )
        .await;
    assert_eq!(got["message"]["reactions"][0]["name"], "tada");

    // Search sees the edit and not the deleted message.
    cluster
        .wait_search(
            &alice.token,
            "monday in:#changes",
            "the edited parent and the reply",
            |v| v["messages"]["total"] == 2,
        )
        .await;
    cluster
        .wait_search(&alice.token, "mesage", "the deleted post gone", |v| {
            v["messages"]["total"] == 0
        })
        .await;

    // A client that missed all of it gets every entry replayed on resume, in order.
    let resume: BTreeMap<String, u64> = [(channel.clone(), start_seq)].into_iter().collect();
    let late = cluster.connect_resume(0, &alice, &resume).await;
    late.wait_event(0, WAIT, "the pin, replayed", |e| {
        e["channel"] == channel.as_str() && e["seq"] == last
    })
    .await;
    let replayed: Vec<u64> = entries(&late, &channel)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(replayed, (start_seq + 1..=last).collect::<Vec<_>>());
    let replayed_tail: Vec<Value> = entries(&late, &channel)
        .into_iter()
        .filter(|e| e["seq"].as_u64().unwrap() > start_seq)
        .collect();
    assert_eq!(
        replayed_tail.iter().collect::<Vec<_>>(),
        tail,
        "a resume replays the same events, previous messages included"
    );
    let replayed_kinds: Vec<String> = entries(&late, &channel)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        replayed_kinds
            .iter()
            .filter(|k| k.starts_with("reaction"))
            .count(),
        3
    );
    // A deleted parent whose replies remain leaves Slack's tombstone above them: in history
    // and in its thread, without its text, author or reactions; the thread still takes
    // replies, and the tombstone goes with the last of them. Clients see the parent change
    // into the tombstone.
    let seen = watcher.events().len();
    cluster
        .api_ok(
            "chat.delete",
            &alice.token,
            json!({ "channel": channel, "ts": parent_ts }),
        )
        .await;
    let changed = watcher
        .wait_event(seen, WAIT, "tombstone", |e| {
            e["channel"] == channel.as_str() && e["message"]["ts"] == parent_ts.as_str()
        })
        .await;
    assert_eq!(changed["subtype"], "message_changed", "{changed}");
    assert_eq!(changed["message"]["subtype"], "tombstone", "{changed}");
    assert_eq!(
        changed["previous_message"]["text"], "ship it on monday",
        "{changed}"
    );
    assert!(
        changed["previous_message"]["edited"]["ts"].is_string(),
        "{changed}"
    );
    assert_eq!(
        changed["message"]["thread_ts"],
        parent_ts.as_str(),
        "{changed}"
    );
    let tombstone = json!({
        "type": "message", "subtype": "tombstone", "text": "This message was deleted.",
        "user": "USLACKBOT", "hidden": true, "ts": parent_ts, "thread_ts": parent_ts,
        "reply_count": 1, "latest_reply": reply["ts"], "team": alice.workspace,
        "seq": p["seq"],
    });
    let history = || {
        let body = json!({ "channel": channel, "limit": 10 });
        let (cluster, token) = (&cluster, &alice.token);
        async move { cluster.api_ok("conversations.history", token, body).await }
    };
    let top = history().await;
    let shown = top["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["ts"] == parent_ts.as_str())
        .expect("the deleted parent's tombstone is in history");
    assert_eq!(shown, &tombstone);
    let thread = |token: String| {
        let body = json!({ "channel": channel, "ts": parent_ts });
        let cluster = &cluster;
        async move { cluster.api("conversations.replies", &token, body).await }
    };
    let replies = thread(bob.token.clone()).await;
    assert_eq!(replies["messages"][0], tombstone, "{replies}");
    assert_eq!(replies["messages"][1]["text"], "monday works", "{replies}");
    let late_reply = cluster
        .api_ok(
            "chat.postMessage",
            &bob.token,
            json!({ "channel": channel, "text": "still here", "thread_ts": parent_ts }),
        )
        .await;
    let replies = thread(bob.token.clone()).await;
    assert_eq!(replies["messages"][0]["reply_count"], 2, "{replies}");
    assert_eq!(
        replies["messages"].as_array().unwrap().len(),
        3,
        "{replies}"
    );
    // The parent's text left the index with it; the reply that says "monday" is still found.
    cluster
        .wait_search(&alice.token, "monday in:#changes", "the reply alone", |v| {
            v["messages"]["total"] == 1 && v["messages"]["matches"][0]["ts"] == reply["ts"]
        })
        .await;
    let seen = watcher.events().len();
    for ts in [&reply["ts"], &late_reply["ts"]] {
        cluster
            .api_ok(
                "chat.delete",
                &bob.token,
                json!({ "channel": channel, "ts": ts }),
            )
            .await;
    }
    // Clients are told the tombstone went with the last reply.
    watcher
        .wait_event(seen, WAIT, "the tombstone's deletion", |e| {
            e["subtype"] == "message_deleted" && e["deleted_ts"] == parent_ts.as_str()
        })
        .await;
    let top = history().await;
    assert!(
        top["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["ts"] != parent_ts.as_str()),
        "the tombstone outlived its replies: {top}"
    );
    assert_eq!(thread(bob.token.clone()).await["error"], "thread_not_found");
}

/// An edit's and a deletion's `previous_message` carry the blocks the message had, as Slack's
/// do: a client that draws the change draws what it replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_messages_keep_their_blocks() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let channel = cluster.create_channel(&alice, "blocks").await;
    cluster.join(&bob, &channel).await;
    let ws = cluster.connect(1, &bob).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&channel), &[&ws])
        .await;
    let section =
        |text: &str| json!([{ "type": "section", "text": { "type": "mrkdwn", "text": text } }]);
    let posted = cluster
        .api_ok(
            "chat.postMessage",
            &alice.token,
            json!({ "channel": channel, "text": "v1", "blocks": section("v1") }),
        )
        .await;
    let ts = posted["ts"].as_str().expect("ts").to_string();
    cluster
        .api_ok(
            "chat.update",
            &alice.token,
            json!({ "channel": channel, "ts": ts, "text": "v2", "blocks": section("v2") }),
        )
        .await;
    cluster
        .api_ok(
            "chat.delete",
            &alice.token,
            json!({ "channel": channel, "ts": ts }),
        )
        .await;
    let changed = ws
        .wait_event(0, WAIT, "message_changed", |e| {
            e["subtype"] == "message_changed"
        })
        .await;
    assert_eq!(changed["message"]["blocks"], section("v2"), "{changed}");
    assert_eq!(
        changed["previous_message"]["blocks"],
        section("v1"),
        "{changed}"
    );
    let deleted = ws
        .wait_event(0, WAIT, "message_deleted", |e| {
            e["subtype"] == "message_deleted"
        })
        .await;
    assert_eq!(deleted["previous_message"]["text"], "v2", "{deleted}");
    assert_eq!(
        deleted["previous_message"]["blocks"],
        section("v2"),
        "{deleted}"
    );
}
