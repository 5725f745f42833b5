//! Failures: a channel server that dies (SIGKILL) hands its channels to the others once the
//! admin server notices, and clients neither miss nor repeat a message; a gateway that dies
//! leaves its clients to reconnect elsewhere with `resume`, and they get exactly what they
//! missed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

const NUM_POSTS: usize = 80;
const KILL_AT: usize = 20;
const POSTERS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_channel_servers_channels_move_without_loss_or_duplicates() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob", "carol"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let carol = cluster.user("acme", "carol").clone();

    let owners = cluster.channels_with_owners(&alice, "failover", 9).await;
    let victim = owners.values().next().unwrap().clone();
    let (moved, stayed) = split_by_owner(&owners, &victim, 3, 1);
    let watched: Vec<String> = moved.iter().chain(stayed.iter()).cloned().collect();
    for c in &watched {
        cluster.join(&bob, c).await;
        cluster.join(&carol, c).await;
    }
    let clients = [
        cluster.connect(0, &bob).await,
        cluster.connect(1, &carol).await,
    ];
    let refs: Vec<&Client> = clients.iter().collect();
    cluster.warm_up(&alice, &watched, &refs).await;
    let warm: BTreeMap<String, u64> = clients[0].positions(&watched);

    let count = AtomicUsize::new(0);
    let operator = async {
        wait_count(&count, KILL_AT, Duration::from_secs(30)).await;
        cluster.kill(&victim);
        let killed_at = Instant::now();
        cluster
            .wait_ring(
                Duration::from_secs(15),
                "the dead channel server down",
                |r| {
                    r["members"].as_array().is_some_and(|ms| {
                        ms.iter()
                            .any(|m| m["id"] == victim.as_str() && m["status"] == "down")
                    })
                },
            )
            .await;
        let noticed = killed_at.elapsed();
        for (c, o) in &owners {
            let now = cluster.owner(c).await;
            if *o == victim {
                assert_ne!(now, victim, "{c} is still owned by the dead {victim}");
            } else {
                assert_eq!(
                    &now, o,
                    "{c} was not on the dead server but moved from {o} to {now}"
                );
            }
        }
        noticed
    };
    let channel_of = |i: usize| watched[i % watched.len()].clone();
    let ((acks, retried), noticed) = tokio::join!(
        cluster.post_concurrently(&alice, NUM_POSTS, POSTERS, "failover", &channel_of, &count),
        operator
    );
    assert_eq!(acks.len(), NUM_POSTS);
    eprintln!("failover: {victim} marked down {noticed:?} after the kill; {retried} failed attempts were retried");

    let mut histories = BTreeMap::new();
    for c in &watched {
        histories.insert(c.clone(), cluster.history_all(&alice, c, 30).await);
    }
    assert_acks_in_history(&acks, &histories);
    assert_streams_match_history(&cluster, &alice, &refs, &histories, &warm).await;
    for (i, client) in clients.iter().enumerate() {
        assert!(
            client.closed().is_none() && !client.ended(),
            "client {i} lost its socket: {:?}",
            client.closed()
        );
    }
    let exited = cluster.exited();
    assert!(exited.is_empty(), "other processes died: {exited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_dead_gateway_resume_on_the_other_without_loss() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let mut channels = Vec::new();
    for i in 0..3 {
        let c = cluster
            .create_channel(&alice, &format!("gw-failover-{i}"))
            .await;
        cluster.join(&bob, &c).await;
        channels.push(c);
    }
    let bob_1 = cluster.connect(0, &bob).await;
    let alice_2 = cluster.connect(1, &alice).await;
    cluster
        .warm_up(&alice, &channels, &[&bob_1, &alice_2])
        .await;
    for i in 0..3 {
        for c in &channels {
            cluster.post(&alice, c, &format!("before {i}")).await;
        }
    }
    // Posting continues while the gateway dies.
    let count = AtomicUsize::new(0);
    let poster = async {
        let mut last = BTreeMap::new();
        for i in 0..30 {
            let c = &channels[i % channels.len()];
            let (m, _) = cluster
                .post_idempotent(
                    &alice,
                    c,
                    &format!("around the crash {i}"),
                    &format!("gwf-{i}"),
                )
                .await;
            last.insert(c.clone(), seq_of(&m));
            count.fetch_add(1, Ordering::SeqCst);
        }
        last
    };
    let crash = async {
        wait_count(&count, 10, WAIT).await;
        cluster.kill(&cluster.gateways[0].id);
        assert!(
            eventually(WAIT, || bob_1.ended()).await,
            "bob's socket outlived its gateway"
        );
        // What bob saw before the crash: contiguous, and his resume point.
        let seen: BTreeMap<String, u64> = channels
            .iter()
            .map(|c| {
                assert_contiguous(&bob_1.messages(c), "bob before the crash");
                (c.clone(), bob_1.max_seq(c).unwrap())
            })
            .collect();
        let bob_2 = cluster.connect_resume(1, &bob, &seen).await;
        (seen, bob_2)
    };
    let (last, (seen, bob_2)) = tokio::join!(poster, crash);
    let mut live = BTreeMap::new();
    for c in &channels {
        live.insert(
            c.clone(),
            seq_of(&cluster.post(&alice, c, "after the crash").await),
        );
    }
    for c in &channels {
        assert!(live[c] > last[c]);
        // Settled: both streams contiguous up to a sentinel, nothing still in flight.
        let end = seq_of(&cluster.settle(&alice, c, &[&bob_2, &alice_2]).await);
        assert_eq!(end, live[c] + 1);
        let history = cluster.history_all(&alice, c, 20).await;
        let got = bob_2.messages(c);
        assert_eq!(
            seqs(&got),
            (seen[c] + 1..=end).collect::<Vec<_>>(),
            "{c}: after resuming, exactly the rest"
        );
        for m in &got {
            let h = &history[seq_of(m) as usize - 1];
            assert_eq!(
                (&m["ts"], &m["text"]),
                (&h["ts"], &h["text"]),
                "{c}: seq {} matches history",
                seq_of(m)
            );
        }
    }
    let (status, _) = cluster
        .get_text(&format!("{}/health", cluster.gateways[1].http))
        .await;
    assert_eq!(status, 200, "the surviving gateway is healthy");
}
