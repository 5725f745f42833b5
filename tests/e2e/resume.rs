//! No silent loss: a client that reconnects (to the other gateway) with the last `seq` it saw
//! per channel gets exactly what it missed, in order, without duplicates, then live messages.

use std::collections::BTreeMap;

use crate::common::*;
use serde_json::json;

/// Posts `n` messages to each channel, interleaved; returns the last seq per channel.
async fn post_round(
    cluster: &Cluster,
    user: &TestUser,
    channels: &[String],
    n: usize,
    tag: &str,
) -> BTreeMap<String, u64> {
    let mut last = BTreeMap::new();
    for i in 0..n {
        for c in channels {
            let m = cluster.post(user, c, &format!("{tag} {i}")).await;
            last.insert(c.clone(), seq_of(&m));
        }
    }
    last
}

/// Asserts that `client` got exactly the seqs `after+1 ..= up_to` of `channel`, in order, and
/// that their text matches history.
fn assert_exactly(
    client: &Client,
    channel: &str,
    after: u64,
    up_to: u64,
    history: &[serde_json::Value],
    what: &str,
) {
    let got = client.messages(channel);
    assert_eq!(
        seqs(&got),
        (after + 1..=up_to).collect::<Vec<_>>(),
        "{what}: {channel} must hold exactly seqs {after}+1..={up_to}"
    );
    for m in &got {
        let h = history
            .iter()
            .find(|h| seq_of(h) == seq_of(m))
            .expect("in history");
        assert_eq!(
            m["text"],
            h["text"],
            "{what}: text of {channel} seq {}",
            seq_of(m)
        );
        assert_eq!(
            m["ts"],
            h["ts"],
            "{what}: ts of {channel} seq {}",
            seq_of(m)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_resume_gets_exactly_the_missed_messages() {
    // A small channel server window, so the second resume has to read the store. The
    // sessions run on session threads, which have no reactor: what they fetch, the hub's
    // runtime fetches for them.
    let cluster = Cluster::start(
        ClusterOpts::standard(&["alice", "bob"])
            .set("channel-server", "channel_server.window=8")
            .set("gateway", "gateway.session_threads=2"),
    )
    .await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let mut channels = Vec::new();
    for i in 0..2 {
        let c = cluster.create_channel(&alice, &format!("resume-{i}")).await;
        cluster.join(&bob, &c).await;
        channels.push(c);
    }

    // bob on gateway 1, alice watching on gateway 2.
    let bob_1 = cluster.connect(0, &bob).await;
    let alice_2 = cluster.connect(1, &alice).await;
    cluster
        .warm_up(&alice, &channels, &[&bob_1, &alice_2])
        .await;
    let seen = post_round(&cluster, &alice, &channels, 5, "before").await;
    for (c, s) in &seen {
        bob_1.wait_seq(c, *s, WAIT).await;
        assert_contiguous(&bob_1.messages(c), "bob before disconnecting");
    }
    let last_seen: BTreeMap<String, u64> = bob_1.positions(&channels);
    assert_eq!(last_seen, seen);
    bob_1.close().await;

    // Missed while away.
    let missed = post_round(&cluster, &alice, &channels, 10, "while away").await;

    // Reconnect to the OTHER gateway with the last seq per channel.
    let bob_2 = cluster.connect_resume(1, &bob, &last_seen).await;
    for (c, s) in &last_seen {
        assert_eq!(
            bob_2.hello["seq"][c], *s,
            "hello reports the resume point of {c}: {}",
            bob_2.hello
        );
    }
    for (c, s) in &missed {
        bob_2.wait_seq(c, *s, WAIT).await;
    }
    // Then live ones.
    let live = post_round(&cluster, &alice, &channels, 5, "live").await;
    let mut ends = BTreeMap::new();
    for c in &channels {
        let end = seq_of(&cluster.settle(&alice, c, &[&bob_2, &alice_2]).await);
        assert_eq!(end, live[c] + 1);
        let history = cluster.history_all(&alice, c, 50).await;
        assert_exactly(
            &bob_2,
            c,
            last_seen[c],
            end,
            &history,
            "resume on the other gateway",
        );
        ends.insert(c.clone(), end);
    }
    let alice_seen = alice_2.positions(&channels);
    assert_eq!(alice_seen, ends, "the watcher got everything live");

    // Everyone leaves; many more messages than the channel servers' window are posted; bob
    // resumes on the first gateway, which has no subscription to these channels any more:
    // the gap comes from the store.
    let resume_point: BTreeMap<String, u64> = bob_2.positions(&channels);
    bob_2.close().await;
    alice_2.close().await;
    // The gateways drop subscriptions that no session wants.
    cluster.wait_gateway_unsubscribed(0).await;
    cluster.wait_gateway_unsubscribed(1).await;
    let missed = post_round(&cluster, &alice, &channels, 30, "long away").await;
    let bob_3 = cluster.connect_resume(0, &bob, &resume_point).await;
    for (c, s) in &missed {
        bob_3.wait_seq(c, *s, WAIT).await;
    }
    let live = post_round(&cluster, &alice, &channels, 3, "live again").await;
    for c in &channels {
        let end = seq_of(&cluster.settle(&alice, c, &[&bob_3]).await);
        assert_eq!(end, live[c] + 1);
        let history = cluster.history_all(&alice, c, 100).await;
        assert_exactly(
            &bob_3,
            c,
            resume_point[c],
            end,
            &history,
            "resume from the store",
        );
    }
    let resume_point: BTreeMap<String, u64> = bob_3.positions(&channels);
    bob_3.close().await;

    // The same through the `resume` event, sent right after hello on a plain connection.
    let missed = post_round(&cluster, &alice, &channels, 4, "event away").await;
    let bob_4 = cluster.connect(1, &bob).await;
    let from = bob_4.num_events();
    bob_4
        .send_json(&json!({ "id": 7, "type": "resume", "channels": resume_point }))
        .await;
    let answer = bob_4
        .wait_event(from, WAIT, "resumed", |e| e["reply_to"] == 7)
        .await;
    assert_eq!(answer["type"], "resumed", "answer to resume: {answer}");
    let mut resumed: Vec<String> = answer["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    resumed.sort();
    let mut want = channels.clone();
    want.sort();
    assert_eq!(resumed, want, "every channel resumed: {answer}");
    for (c, s) in &missed {
        bob_4.wait_seq(c, *s, WAIT).await;
    }
    let live = post_round(&cluster, &alice, &channels, 3, "live after event").await;
    for c in &channels {
        let end = seq_of(&cluster.settle(&alice, c, &[&bob_4]).await);
        assert_eq!(end, live[c] + 1);
        let history = cluster.history_all(&alice, c, 100).await;
        assert_exactly(&bob_4, c, resume_point[c], end, &history, "resume event");
    }
}

/// A resume followed at once by a post: the message lands while the gateway is still
/// subscribing and backfilling. It must arrive anyway, exactly once, in order (the client gave
/// its position, so nothing after it may be skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_right_after_a_resume_is_not_lost() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let channel = cluster.create_channel(&alice, "resume-race").await;
    cluster.join(&bob, &channel).await;
    let mut position = BTreeMap::new();
    position.insert(
        channel.clone(),
        seq_of(&cluster.post(&alice, &channel, "first").await),
    );

    for round in 0..8 {
        let gateway = round % 2;
        // Alternate between a gateway that has just dropped the subscription and one that
        // has never had it, with the post racing the hello or just after it.
        if round % 4 >= 2 {
            cluster.wait_gateway_unsubscribed(gateway).await;
        }
        let missed = seq_of(
            &cluster
                .post(&alice, &channel, &format!("missed {round}"))
                .await,
        );
        let bob_ws = cluster.connect_resume(gateway, &bob, &position).await;
        let live = seq_of(
            &cluster
                .post(&alice, &channel, &format!("live {round}"))
                .await,
        );
        assert_eq!(live, missed + 1);
        let end = seq_of(&cluster.settle(&alice, &channel, &[&bob_ws]).await);
        assert_eq!(end, live + 1);
        assert_eq!(
            seqs(&bob_ws.messages(&channel)),
            (position[&channel] + 1..=end).collect::<Vec<_>>(),
            "round {round} on gateway {gateway}: exactly the messages after the resume point"
        );
        position.insert(channel.clone(), end);
        bob_ws.close().await;
    }
}
