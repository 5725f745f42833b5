//! Ring changes: draining a channel server through the admin API moves exactly its channels,
//! and while posts continue no subscribed client misses or repeats a message, and no client
//! socket is dropped. Adding it back moves them home the same way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const NUM_POSTS: usize = 150;
const POSTERS: usize = 3;
const DRAIN_AT: usize = 30;
const UNDRAIN_AT: usize = 80;

/// How long the posters may take to reach the next step.
const POSTS_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_channel_server_moves_its_channels_without_loss_or_duplicates() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob", "carol"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let carol = cluster.user("acme", "carol").clone();

    // Enough channels that some channel server owns several.
    let owners = cluster.channels_with_owners(&alice, "drain", 12).await;
    let mut per_owner: BTreeMap<&str, usize> = BTreeMap::new();
    for o in owners.values() {
        *per_owner.entry(o.as_str()).or_default() += 1;
    }
    let (victim, owned) = per_owner
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(o, n)| (o.to_string(), *n))
        .unwrap();
    assert!(
        owned >= 2,
        "no channel server owns two of 12 channels: {per_owner:?}"
    );
    let (moved, stayed) = split_by_owner(&owners, &victim, 4, 2);
    let watched: Vec<String> = moved.iter().chain(stayed.iter()).cloned().collect();
    for c in &watched {
        cluster.join(&bob, c).await;
        cluster.join(&carol, c).await;
    }

    let clients = [
        cluster.connect(0, &bob).await,
        cluster.connect(1, &bob).await,
        cluster.connect(1, &carol).await,
    ];
    let refs: Vec<&Client> = clients.iter().collect();
    cluster.warm_up(&alice, &watched, &refs).await;
    let warm: BTreeMap<String, u64> = clients[0].positions(&watched);

    // Posters keep posting concurrently (mostly to the victim's channels) while the victim is
    // drained and then added back. Each post carries a client_msg_id and is retried until ok.
    let count = AtomicUsize::new(0);
    let poster = |p: usize| {
        let (cluster, alice, count, moved, stayed) = (&cluster, &alice, &count, &moved, &stayed);
        async move {
            let mut acks: Vec<(String, String, Value, usize)> = Vec::new();
            for i in (p..NUM_POSTS).step_by(POSTERS) {
                let channel = if i % 5 == 4 {
                    &stayed[i % stayed.len()]
                } else {
                    &moved[i % moved.len()]
                };
                let cmid = format!("drain-post-{i}");
                let (m, failures) = cluster
                    .post_idempotent(alice, channel, &format!("post {i}"), &cmid)
                    .await;
                acks.push((channel.clone(), cmid, m, failures));
                count.fetch_add(1, Ordering::SeqCst);
            }
            acks
        }
    };
    let posters = futures_util::future::join_all((0..POSTERS).map(poster));
    let operator = async {
        wait_count(&count, DRAIN_AT, POSTS_WITHIN).await;
        let (status, v) = post_json(
            &cluster,
            &format!("{}/ring/members/{victim}/drain", cluster.admin_http),
            None,
        )
        .await;
        assert_eq!(status, 200, "drain answer: {v}");
        assert_eq!(v["ok"], true, "drain answer: {v}");
        let drained_at = Instant::now();
        for c in &moved {
            let ok = {
                let deadline = Instant::now() + WAIT;
                loop {
                    let o = cluster.owner(c).await;
                    if o != victim {
                        break true;
                    }
                    if Instant::now() > deadline {
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            assert!(ok, "{c} still owned by the drained {victim}");
        }
        let ring = cluster.ring().await;
        let member = ring["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == victim.as_str())
            .cloned()
            .unwrap();
        assert_eq!(
            member["draining"], true,
            "the drained member is marked draining: {ring}"
        );
        assert_eq!(
            member["status"], "up",
            "a drained member keeps running: {ring}"
        );
        let mut unmoved = Vec::new();
        for (c, o) in &owners {
            let now = cluster.owner(c).await;
            if o != &victim {
                assert_eq!(
                    &now, o,
                    "{c} was not on the drained server but moved from {o} to {now}"
                );
            } else {
                assert_ne!(&now, &victim, "{c} is still on the drained server");
                unmoved.push(c.clone());
            }
        }
        let drain_took = drained_at.elapsed();

        wait_count(&count, UNDRAIN_AT, POSTS_WITHIN).await;
        let victim_addr = member["mesh_addr"].as_str().unwrap().to_string();
        let (status, v) = post_json(
            &cluster,
            &format!("{}/ring/members", cluster.admin_http),
            Some(json!({ "id": victim, "mesh_addr": victim_addr })),
        )
        .await;
        assert_eq!(
            (status, v["ok"].clone()),
            (200, json!(true)),
            "re-adding the member: {v}"
        );
        cluster
            .wait_ring(WAIT, "the member back and not draining", |r| {
                r["members"].as_array().is_some_and(|ms| {
                    ms.iter().any(|m| {
                        m["id"] == victim.as_str() && m["draining"] == false && m["status"] == "up"
                    })
                })
            })
            .await;
        // Placement is deterministic: every channel goes back to where it was.
        for (c, o) in &owners {
            assert_eq!(
                &cluster.owner(c).await,
                o,
                "{c} did not return to {o} after the member came back"
            );
        }
        drain_took
    };
    let (acks, drain_took) = tokio::join!(posters, operator);
    let acks: Vec<(String, String, Value, usize)> = acks.into_iter().flatten().collect();
    assert_eq!(acks.len(), NUM_POSTS);
    let retries: usize = acks.iter().map(|a| a.3).sum();
    eprintln!("drain: {} posts, {retries} retried attempts, owners checked {drain_took:?} after the drain", acks.len());

    // The store is the authority: every acknowledged post is there once, seqs contiguous;
    // every client saw each watched channel contiguously from its warm-up to the end.
    let mut histories: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for c in &watched {
        histories.insert(c.clone(), cluster.history_all(&alice, c, 25).await);
    }
    let acks: Vec<(String, String, Value)> =
        acks.into_iter().map(|(c, id, m, _)| (c, id, m)).collect();
    assert_acks_in_history(&acks, &histories);
    assert_streams_match_history(&cluster, &alice, &refs, &histories, &warm).await;
    for (i, client) in clients.iter().enumerate() {
        assert!(
            client.closed().is_none() && !client.ended(),
            "client {i} lost its socket: {:?}",
            client.closed()
        );
    }
    // The drained server is still healthy.
    let cs = cluster
        .channel_servers
        .iter()
        .find(|c| c.id == victim)
        .unwrap();
    let (status, _) = cluster.get_text(&format!("{}/health", cs.http)).await;
    assert_eq!(status, 200, "the drained channel server stays up");
}

async fn post_json(cluster: &Cluster, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = cluster.http.post(url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}
