//! Messages posted over HTTP reach clients on both gateways in one order with contiguous
//! `seq`, and `conversations.history` returns the same messages.

use std::collections::BTreeMap;

use crate::common::*;
use serde_json::{json, Value};

const POSTS_PER_USER: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_reach_clients_on_both_gateways_in_order_and_match_history() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob", "carol"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let carol = cluster.user("acme", "carol").clone();

    let mut channels = Vec::new();
    for i in 0..3 {
        let c = cluster
            .create_channel(&alice, &format!("delivery-{i}"))
            .await;
        assert!(
            c.starts_with('C')
                && c[1..]
                    .chars()
                    .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit()),
            "channel id {c:?} is not C + uppercase alphanumerics"
        );
        cluster.join(&bob, &c).await;
        cluster.join(&carol, &c).await;
        channels.push(c);
    }

    // alice and carol on gateway 1, bob and carol on gateway 2.
    let clients = vec![
        cluster.connect(0, &alice).await,
        cluster.connect(1, &bob).await,
        cluster.connect(0, &carol).await,
        cluster.connect(1, &carol).await,
    ];
    for (c, (gw, user)) in clients
        .iter()
        .zip([(0, &alice), (1, &bob), (0, &carol), (1, &carol)])
    {
        assert_eq!(c.hello["type"], "hello");
        assert_eq!(
            c.hello["user"],
            user.id.as_str(),
            "hello names the user: {}",
            c.hello
        );
        assert_eq!(
            c.hello["team"],
            user.workspace.as_str(),
            "hello names the workspace: {}",
            c.hello
        );
        assert_eq!(
            c.hello["gateway"],
            cluster.gateways[gw].id.as_str(),
            "hello names the gateway: {}",
            c.hello
        );
        assert!(
            c.hello["seq"].is_object(),
            "hello carries per-channel positions: {}",
            c.hello
        );
    }
    let refs: Vec<&Client> = clients.iter().collect();
    cluster.warm_up(&alice, &channels, &refs).await;
    let warm: BTreeMap<String, u64> = clients[0].positions(&channels);

    // Three users post concurrently, round-robin over the channels.
    let posters = [&alice, &bob, &carol].map(|user| {
        let cluster = &cluster;
        let channels = &channels;
        async move {
            let mut out = Vec::new();
            for i in 0..POSTS_PER_USER {
                let channel = &channels[i % channels.len()];
                let text = format!("{} says {i} in {channel} ✓", user.name);
                let m = cluster.post(user, channel, &text).await;
                assert_eq!(m["text"], text.as_str(), "the answer echoes the text");
                assert_eq!(m["user"], user.id.as_str());
                out.push((channel.clone(), m));
            }
            out
        }
    });
    let posted: Vec<(String, Value)> = futures_util::future::join_all(posters)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(posted.len(), 3 * POSTS_PER_USER);

    let mut by_channel: BTreeMap<String, BTreeMap<u64, Value>> = BTreeMap::new();
    for (channel, m) in &posted {
        let prev = by_channel
            .entry(channel.clone())
            .or_default()
            .insert(seq_of(m), m.clone());
        assert!(
            prev.is_none(),
            "two acknowledged posts got seq {} in {channel}",
            seq_of(m)
        );
    }
    for (channel, msgs) in &by_channel {
        let first = *msgs.keys().next().unwrap();
        let last = *msgs.keys().last().unwrap();
        assert_eq!(
            first,
            warm[channel] + 1,
            "{channel}: posts continue right after the warm-up"
        );
        assert_eq!(
            last - first + 1,
            msgs.len() as u64,
            "{channel}: acknowledged seqs have no holes: {:?}",
            msgs.keys()
        );
    }

    // Every client gets every message of every channel, in order, each once: settled with a
    // sentinel after the posts, so nothing is still in flight when the streams are judged.
    let mut sentinels = BTreeMap::new();
    for channel in &channels {
        let sentinel = seq_of(&cluster.settle(&alice, channel, &refs).await);
        let last = *by_channel[channel].keys().last().unwrap();
        assert_eq!(
            sentinel,
            last + 1,
            "{channel}: the sentinel follows the posts"
        );
        sentinels.insert(channel.clone(), sentinel);
    }

    for channel in &channels {
        let history = cluster.history_all(&bob, channel, 7).await;
        let last = sentinels[channel];
        assert_eq!(
            seqs(&history),
            (1..=last).collect::<Vec<_>>(),
            "{channel}: history holds every seq once"
        );
        let history_by_seq: BTreeMap<u64, &Value> =
            history.iter().map(|m| (seq_of(m), m)).collect();
        for (seq, m) in &by_channel[channel] {
            let h = history_by_seq[seq];
            assert_eq!(
                h["ts"], m["ts"],
                "{channel} seq {seq}: history ts matches the post answer"
            );
            assert_eq!(
                h["text"], m["text"],
                "{channel} seq {seq}: history text matches the post answer"
            );
            assert_eq!(
                h["user"], m["user"],
                "{channel} seq {seq}: history user matches the post answer"
            );
        }
        let mut ts_prev = String::new();
        for h in &history {
            let ts = h["ts"].as_str().unwrap().to_string();
            assert!(
                ts_cmp(&ts, &ts_prev),
                "{channel}: ts increases with seq ({ts_prev} then {ts})"
            );
            ts_prev = ts;
        }

        for (i, client) in clients.iter().enumerate() {
            let got = client.messages(channel);
            assert!(!got.is_empty(), "client {i} got nothing of {channel}");
            assert_contiguous(&got, &format!("client {i} on {channel}"));
            assert!(
                seq_of(&got[0]) <= warm[channel],
                "client {i}: stream of {channel} starts by the warm-up"
            );
            assert_eq!(
                seq_of(got.last().unwrap()),
                last,
                "client {i}: nothing past the sentinel on {channel}"
            );
            for m in &got {
                let h = history_by_seq
                    .get(&seq_of(m))
                    .unwrap_or_else(|| panic!("client {i} got {m} which history lacks"));
                assert_eq!(
                    m["ts"],
                    h["ts"],
                    "client {i}: ts of {channel} seq {} matches history",
                    seq_of(m)
                );
                assert_eq!(
                    m["text"],
                    h["text"],
                    "client {i}: text of {channel} seq {} matches history",
                    seq_of(m)
                );
                assert_eq!(
                    m["user"],
                    h["user"],
                    "client {i}: user of {channel} seq {}",
                    seq_of(m)
                );
                assert_eq!(
                    m["team"],
                    alice.workspace.as_str(),
                    "client {i}: team of a message"
                );
            }
        }
        // Both gateways (and both of carol's sessions) saw the same stream.
        let reference: Vec<(u64, Value)> = clients[0]
            .messages(channel)
            .iter()
            .map(|m| (seq_of(m), m["ts"].clone()))
            .collect();
        for client in &clients[1..] {
            let mine: Vec<(u64, Value)> = client
                .messages(channel)
                .iter()
                .map(|m| (seq_of(m), m["ts"].clone()))
                .collect();
            let overlap: Vec<&(u64, Value)> = mine
                .iter()
                .filter(|(s, _)| reference.iter().any(|(r, _)| r == s))
                .collect();
            let theirs: Vec<&(u64, Value)> = reference
                .iter()
                .filter(|(s, _)| mine.iter().any(|(r, _)| r == s))
                .collect();
            assert_eq!(
                overlap, theirs,
                "{channel}: two clients disagree on the order"
            );
        }
    }
    for client in &clients {
        assert!(
            client.garbage().is_empty(),
            "non-JSON frames: {:?}",
            client.garbage()
        );
        assert!(
            client.closed().is_none(),
            "a session was closed: {:?}",
            client.closed()
        );
    }

    // A channel joined after connecting: channel_joined, then its messages.
    let late = cluster.create_channel(&alice, "delivery-late").await;
    let from = clients[1].num_events();
    cluster.join(&bob, &late).await;
    let joined = clients[1]
        .wait_event(from, WAIT, "channel_joined", |e| {
            e["type"] == "channel_joined" && e["channel"]["id"] == late.as_str()
        })
        .await;
    assert_eq!(joined["channel"]["name"], "delivery-late");
    clients[0]
        .wait_event(0, WAIT, "channel_joined (creator)", |e| {
            e["type"] == "channel_joined" && e["channel"]["id"] == late.as_str()
        })
        .await;
    // alice on bob's gateway too: the witness that it delivers the late channel.
    let alice_on_1 = cluster.connect(1, &alice).await;
    cluster
        .warm_up(
            &alice,
            std::slice::from_ref(&late),
            &[&clients[0], &clients[1], &alice_on_1],
        )
        .await;
    for i in 0..5 {
        cluster.post(&alice, &late, &format!("late {i}")).await;
    }
    // bob's stream of the channel joined late: contiguous, up to a sentinel.
    let last = seq_of(
        &cluster
            .settle(&alice, &late, &[&clients[0], &clients[1], &alice_on_1])
            .await,
    );
    assert!(
        clients[2].messages(&late).is_empty(),
        "carol is not in the late channel but got its messages"
    );

    // Leaving: channel_left, and no more messages of it.
    let from = clients[1].num_events();
    cluster
        .api_ok(
            "conversations.leave",
            &bob.token,
            json!({ "channel": late }),
        )
        .await;
    clients[1]
        .wait_event(from, WAIT, "channel_left", |e| {
            e["type"] == "channel_left" && e["channel"] == late.as_str()
        })
        .await;
    let before = clients[1].messages(&late).len();
    cluster.post(&alice, &late, "after bob left").await;
    // Sentinels, no sleep: the late channel's sentinel reaching alice's session on bob's
    // gateway means that gateway has handed "after bob left" to every session it was going
    // to; a message of another channel posted after that then reaches bob's session behind
    // it (one queue per session).
    let s = seq_of(
        &cluster
            .settle(&alice, &late, &[&clients[0], &alice_on_1])
            .await,
    );
    assert_eq!(s, last + 2);
    let sentinel = seq_of(&cluster.post(&alice, &channels[0], "sentinel").await);
    clients[1].wait_seq(&channels[0], sentinel, WAIT).await;
    assert_eq!(
        clients[1].messages(&late).len(),
        before,
        "bob got a message of a channel he left"
    );
}

/// `a` is a later Slack timestamp than `b` (or `b` is empty).
fn ts_cmp(a: &str, b: &str) -> bool {
    if b.is_empty() {
        return true;
    }
    let parse = |s: &str| {
        let (secs, micros) = s.split_once('.').unwrap_or((s, "0"));
        (secs.parse::<u64>().unwrap(), micros.parse::<u64>().unwrap())
    };
    parse(a) > parse(b)
}

/// Ephemeral events: typing reaches the channel's other members on every gateway (not the
/// typist), and a user's first and last sessions announce `presence_change` to the sessions of
/// the workspace, whichever gateway the user connects to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence_reach_the_other_members() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob", "carol"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let carol = cluster.user("acme", "carol").clone();
    let c = cluster.create_channel(&alice, "ephemeral").await;
    cluster.join(&bob, &c).await;
    let elsewhere = cluster.create_channel(&carol, "elsewhere").await;

    let alice_ws = cluster.connect(0, &alice).await;
    let carol_ws = cluster.connect(1, &carol).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&c), &[&alice_ws])
        .await;
    cluster
        .warm_up(&carol, std::slice::from_ref(&elsewhere), &[&carol_ws])
        .await;
    let presence = |user: &TestUser, p: &'static str| {
        let id = user.id.clone();
        move |e: &Value| {
            e["type"] == "presence_change"
                && e["presence"] == p
                && (e["user"] == id.as_str()
                    || e["users"]
                        .as_array()
                        .is_some_and(|u| u.iter().any(|x| x == id.as_str())))
        }
    };

    // bob comes online on alice's gateway, which already follows the channel.
    let from = alice_ws.num_events();
    let bob_ws = cluster.connect(0, &bob).await;
    alice_ws
        .wait_event(
            from,
            WAIT,
            "presence_change (bob active, same gateway)",
            presence(&bob, "active"),
        )
        .await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&c), &[&alice_ws, &bob_ws])
        .await;

    let from_alice = alice_ws.num_events();
    let from_bob = bob_ws.num_events();
    bob_ws
        .send_json(&json!({ "id": 1, "type": "typing", "channel": c }))
        .await;
    let typing = alice_ws
        .wait_event(from_alice, WAIT, "user_typing", |e| {
            e["type"] == "user_typing"
        })
        .await;
    assert_eq!(typing["channel"], c.as_str(), "{typing}");
    assert_eq!(typing["user"], bob.id.as_str(), "{typing}");
    // A message after the typing event: by then the typist would have had it too.
    let sentinel = seq_of(&cluster.post(&alice, &c, "sentinel").await);
    bob_ws.wait_seq(&c, sentinel, WAIT).await;
    let bob_events = bob_ws.events();
    assert!(
        bob_events[from_bob..]
            .iter()
            .all(|e| e["type"] != "user_typing" && e["type"] != "error"),
        "the typist got his own typing event or an error: {:?}",
        &bob_events[from_bob..]
    );

    // bob's last session goes: away.
    let from = alice_ws.num_events();
    bob_ws.close().await;
    alice_ws
        .wait_event(
            from,
            WAIT,
            "presence_change (bob away)",
            presence(&bob, "away"),
        )
        .await;

    // carol is in none of bob's channels: no typing of his reached her. (Presence is
    // workspace-wide, as in Slack's RTM: she may see bob come and go.)
    let s = seq_of(&cluster.post(&carol, &elsewhere, "sentinel").await);
    carol_ws.wait_seq(&elsewhere, s, WAIT).await;
    for e in carol_ws.events() {
        assert!(
            e["type"] != "user_typing",
            "carol got typing of a channel she is not in: {e}"
        );
    }

    // bob comes back on the other gateway, which does not follow the channel yet: alice must
    // hear of it all the same.
    let from = alice_ws.num_events();
    let _bob_ws = cluster.connect(1, &bob).await;
    alice_ws
        .wait_event(
            from,
            WAIT,
            "presence_change (bob active, other gateway)",
            presence(&bob, "active"),
        )
        .await;
}

/// Messages a client sends over its socket (Slack's RTM `message` event) are posted through
/// the Web API with the session's token: answered with their `ts` in the order sent, relayed
/// to the channel's members in that order, stored, deduplicated by `client_msg_id`, and
/// refused with the Web API's own error when it refuses them. The gateways run their sessions
/// on session threads of their own (`gateway.session_threads`), reading and writing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_over_rtm_are_posted_answered_and_relayed_in_order() {
    let cluster = Cluster::start(
        ClusterOpts::standard(&["alice", "bob"]).set("gateway", "gateway.session_threads=2"),
    )
    .await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let c = cluster.create_channel(&alice, "rtm-send").await;
    cluster.join(&bob, &c).await;
    let bobs_only = cluster.create_channel(&bob, "bobs-only").await;
    let alice_ws = cluster.connect(0, &alice).await;
    let bob_ws = cluster.connect(1, &bob).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&c), &[&alice_ws, &bob_ws])
        .await;
    let reply = |id: u64| move |e: &Value| e["reply_to"] == id && e["type"] != "pong";

    // Sent back to back: the gateway posts them one at a time, in the order sent.
    const N: u64 = 25;
    for id in 1..=N {
        alice_ws
            .send_json(
                &json!({ "id": id, "type": "message", "channel": c, "text": format!("rtm {id}") }),
            )
            .await;
    }
    let mut replies = Vec::new();
    for id in 1..=N {
        let r = alice_ws.wait_event(0, WAIT, "RTM reply", reply(id)).await;
        assert_eq!(r["ok"], true, "message {id} refused: {r}");
        assert_eq!(r["text"], format!("rtm {id}"), "{r}");
        assert_eq!(r["channel"], c.as_str(), "{r}");
        replies.push(r);
    }
    let seqs: Vec<u64> = replies.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the messages were not sequenced in the order sent: {seqs:?}"
    );

    // bob, on the other gateway, gets them in that order, as alice's.
    bob_ws.wait_seq(&c, *seqs.last().unwrap(), WAIT).await;
    let got: Vec<(String, String)> = bob_ws
        .messages(&c)
        .into_iter()
        .filter(|m| m["text"].as_str().is_some_and(|t| t.starts_with("rtm ")))
        .map(|m| {
            assert_eq!(m["user"], alice.id.as_str(), "{m}");
            (
                m["text"].as_str().unwrap().into(),
                m["ts"].as_str().unwrap().into(),
            )
        })
        .collect();
    let sent: Vec<(String, String)> = replies
        .iter()
        .map(|r| {
            (
                r["text"].as_str().unwrap().into(),
                r["ts"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(got, sent, "bob's stream differs from the answers");
    let history = cluster.history_all(&alice, &c, 100).await;
    for (text, ts) in &sent {
        assert!(
            history
                .iter()
                .any(|m| m["ts"] == ts.as_str() && m["text"] == text.as_str()),
            "{text} ({ts}) is not in the history"
        );
    }

    // The same client_msg_id twice (a client retrying over a new socket, say): one message.
    let cmid = "5f0c2b3a-7d4e-4c1a-9b8e-2f6d1e0a9c47";
    for id in [100, 101] {
        alice_ws
            .send_json(&json!({ "id": id, "type": "message", "channel": c, "text": "once", "client_msg_id": cmid }))
            .await;
    }
    let first = alice_ws.wait_event(0, WAIT, "RTM reply", reply(100)).await;
    let second = alice_ws.wait_event(0, WAIT, "RTM reply", reply(101)).await;
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["ts"], second["ts"], "a retry made a second message");
    let history = cluster.history_all(&alice, &c, 100).await;
    assert_eq!(history.iter().filter(|m| m["text"] == "once").count(), 1);

    // What the Web API refuses is answered with its error, as Slack's RTM does.
    let refusals = [
        (
            200,
            json!({ "channel": bobs_only, "text": "not mine" }),
            4,
            "not_in_channel",
        ),
        (201, json!({ "channel": c, "text": "" }), 8, "no_text"),
        (
            202,
            json!({ "channel": "CNOSUCHONE", "text": "hi" }),
            3,
            "channel_not_found",
        ),
    ];
    for (id, mut body, code, error) in refusals {
        body["id"] = id.into();
        body["type"] = "message".into();
        alice_ws.send_json(&body).await;
        let r = alice_ws.wait_event(0, WAIT, "RTM refusal", reply(id)).await;
        assert_eq!(
            r,
            json!({ "ok": false, "reply_to": id, "error": { "code": code, "msg": error } })
        );
    }
    // A message event without text is bad input, refused by the gateway itself.
    let frame = json!({ "id": 203, "type": "message", "channel": c });
    let r = cluster
        .refused_frame(0, &alice_ws, frame, 203, "invalid_event")
        .await;
    assert_eq!(r["error"]["msg"], "invalid message event", "{r}");
    let gw = &cluster.gateways[0].http;

    let outcome = |o: &'static str| [("outcome", o)];
    let rtm = "switchboard_gateway_rtm_posts_total";
    assert_eq!(
        cluster.metric(gw, rtm, &outcome("ok")).await,
        (N + 2) as f64
    );
    assert_eq!(cluster.metric(gw, rtm, &outcome("refused")).await, 3.0);
    assert!(bob_ws.garbage().is_empty() && alice_ws.garbage().is_empty());
}

/// `chat.postEphemeral`: the message reaches the named user's sessions in the channel, on
/// every gateway, and nobody else's; it takes no `seq` (the channel's stream goes on without
/// a hole) and is not stored; what Slack refuses is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_message_reaches_its_user_alone_and_is_not_stored() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob", "carol", "dave"])).await;
    let user = |n: &str| cluster.user("acme", n).clone();
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    let c = cluster.create_channel(&alice, "ephemeral-msgs").await;
    cluster.join(&bob, &c).await;
    cluster.join(&carol, &c).await;
    let bob_a = cluster.connect(0, &bob).await;
    let bob_b = cluster.connect(1, &bob).await;
    let carol_ws = cluster.connect(0, &carol).await;
    let clients = [&bob_a, &bob_b, &carol_ws];
    let before = seq_of(&cluster.settle(&alice, &c, &clients).await);
    let from: Vec<usize> = clients.iter().map(|c| c.num_events()).collect();

    let v = cluster
        .api_ok(
            "chat.postEphemeral",
            &alice.token,
            json!({ "channel": c, "user": bob.id, "text": "only bob sees this" }),
        )
        .await;
    let ts = v["message_ts"].as_str().expect("message_ts").to_string();
    for (ws, from) in [(&bob_a, from[0]), (&bob_b, from[1])] {
        let e = ws
            .wait_event(from, WAIT, "the ephemeral message", |e| {
                e["is_ephemeral"] == true
            })
            .await;
        assert_eq!(e["type"], "message", "{e}");
        assert_eq!(e["channel"], c.as_str(), "{e}");
        assert_eq!(e["user"], alice.id.as_str(), "{e}");
        assert_eq!(e["text"], "only bob sees this", "{e}");
        assert_eq!(e["ts"], ts.as_str(), "{e}");
        assert!(
            e.get("seq").is_none(),
            "an ephemeral message is not in the stream: {e}"
        );
    }
    // The next post takes the next seq, and by then carol would have had the ephemeral one.
    let after = seq_of(&cluster.settle(&alice, &c, &clients).await);
    assert_eq!(after, before + 1, "the ephemeral message took a seq");
    assert!(
        carol_ws.events()[from[2]..]
            .iter()
            .all(|e| e["is_ephemeral"] != true),
        "carol got bob's ephemeral message"
    );
    let history = cluster.history_all(&alice, &c, 100).await;
    assert!(history.iter().all(|m| m["text"] != "only bob sees this"));
    let gw = |i: usize| cluster.gateways[i].http.clone();
    for i in [0, 1] {
        let n = cluster
            .metric(&gw(i), "switchboard_gateway_ephemeral_messages_total", &[])
            .await;
        assert_eq!(n, 1.0, "gateway {i} wrote it to one session");
    }

    // Refusals, as Slack's.
    let refusals = [
        (
            &alice,
            json!({ "channel": c, "user": dave.id, "text": "x" }),
            "user_not_in_channel",
        ),
        (
            &dave,
            json!({ "channel": c, "user": bob.id, "text": "x" }),
            "not_in_channel",
        ),
        (
            &alice,
            json!({ "channel": c, "user": bob.id, "text": "" }),
            "no_text",
        ),
        (
            &alice,
            json!({ "channel": c, "user": "UNOSUCHUSER", "text": "x" }),
            "user_not_found",
        ),
        (
            &alice,
            json!({ "channel": "CNOSUCHONE", "user": bob.id, "text": "x" }),
            "channel_not_found",
        ),
    ];
    for (who, body, error) in refusals {
        let v = cluster
            .api("chat.postEphemeral", &who.token, body.clone())
            .await;
        assert_eq!(v["error"], error, "{body}: {v}");
    }
}
