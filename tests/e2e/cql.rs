//! The whole mesh on the CQL store (a real Cassandra started by `deploy/cassandra/start.sh`):
//! posts and history, edits, reactions and search, reconnect-with-resume from the store, and
//! a channel server killed with SIGKILL while posts continue, without an acknowledged message
//! lost or duplicated.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const NUM_POSTS: usize = 60;
const KILL_AT: usize = 15;
const POSTERS: usize = 2;
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_on_the_cql_store_survives_a_killed_channel_server() {
    let opts = ClusterOpts::standard(&["alice", "bob", "carol"])
        // A small window, so resume has to read the store.
        .set("channel-server", "channel_server.window=8")
        .cql_store();
    let (node, prefix) = opts.cql.clone().unwrap();
    let cluster = Cluster::start(opts).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let carol = cluster.user("acme", "carol").clone();

    // Channels on every channel server; one server will die.
    let owners = cluster.channels_with_owners(&alice, "cql", 9).await;
    let victim = owners.values().next().unwrap().clone();
    let (moved, stayed) = split_by_owner(&owners, &victim, 2, 1);
    let watched: Vec<String> = moved.iter().chain(stayed.iter()).cloned().collect();
    for c in &watched {
        cluster.join(&bob, c).await;
        cluster.join(&carol, c).await;
    }

    // Edits, reactions, threads and search go through the CQL store too (in a channel of
    // their own: the watched ones must hold plain posts only, seq 1..=n).
    let first = &cluster.create_channel(&alice, "cql-extras").await;
    cluster.join(&bob, first).await;
    let parent = cluster
        .post(&alice, first, "the quarterly zeppelin report")
        .await;
    let parent_ts = parent["ts"].as_str().unwrap().to_string();
    cluster
        .api_ok(
            "chat.postMessage",
            &bob.token,
            json!({ "channel": first, "text": "a reply", "thread_ts": parent_ts }),
        )
        .await;
    cluster
        .api_ok(
            "chat.update",
            &alice.token,
            json!({ "channel": first, "ts": parent_ts, "text": "the quarterly zeppelin report, final" }),
        )
        .await;
    cluster
        .api_ok(
            "reactions.add",
            &bob.token,
            json!({ "channel": first, "timestamp": parent_ts, "name": "tada" }),
        )
        .await;
    let history = cluster
        .api_ok(
            "conversations.history",
            &alice.token,
            json!({ "channel": first, "limit": 10 }),
        )
        .await;
    let shown = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["ts"] == parent_ts.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("the parent is in history: {history}"));
    assert_eq!(shown["text"], "the quarterly zeppelin report, final");
    assert_eq!(shown["reply_count"], 1, "{shown}");
    assert_eq!(shown["reactions"][0]["name"], "tada", "{shown}");
    let mut found = Value::Null;
    for _ in 0..100 {
        found = cluster
            .api_ok(
                "search.messages",
                &alice.token,
                json!({ "query": "zeppelin final" }),
            )
            .await;
        if found["messages"]["total"].as_u64() == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        found["messages"]["total"], 1,
        "the edit reached the search index through the CQL change feed: {found}"
    );

    let clients = [
        cluster.connect(0, &bob).await,
        cluster.connect(1, &carol).await,
    ];
    let refs: Vec<&Client> = clients.iter().collect();
    cluster.warm_up(&alice, &watched, &refs).await;
    let warm: BTreeMap<String, u64> = clients[0].positions(&watched);

    // Posts continue while a channel server is killed.
    let count = AtomicUsize::new(0);
    let operator = async {
        wait_count(&count, KILL_AT, Duration::from_secs(60)).await;
        cluster.kill(&victim);
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
    };
    let channel_of = |i: usize| watched[i % watched.len()].clone();
    let ((acks, _), ()) = tokio::join!(
        cluster.post_concurrently(&alice, NUM_POSTS, POSTERS, "cql", &channel_of, &count),
        operator
    );
    assert_eq!(acks.len(), NUM_POSTS);
    let mut histories = BTreeMap::new();
    for c in &watched {
        histories.insert(c.clone(), cluster.history_all(&alice, c, 7).await);
    }
    assert_acks_in_history(&acks, &histories);
    assert_streams_match_history(&cluster, &alice, &refs, &histories, &warm).await;

    // bob leaves, misses many more than the window, and resumes on the other gateway: the
    // gap is read from Cassandra.
    let resume_point: BTreeMap<String, u64> = clients[0].positions(&watched);
    let [bob_1, carol_1] = clients;
    bob_1.close().await;
    let mut missed = BTreeMap::new();
    for i in 0..20 {
        for c in &watched {
            let m = cluster.post(&alice, c, &format!("while away {i}")).await;
            missed.insert(c.clone(), seq_of(&m));
        }
    }
    let bob_2 = cluster.connect_resume(1, &bob, &resume_point).await;
    // The gap comes from Cassandra: this file's longer bound.
    for (c, s) in &missed {
        bob_2.wait_seq(c, *s, WAIT).await;
    }
    for c in &watched {
        // Settle before judging (a sentinel behind whatever was still in flight, a
        // straggling duplicate included), as the other resume tests do.
        let end = seq_of(&cluster.settle(&alice, c, &[&bob_2]).await);
        assert_eq!(
            end,
            missed[c] + 1,
            "{c}: the sentinel follows the missed posts"
        );
        let history = cluster.history_all(&alice, c, 25).await;
        let got = bob_2.messages(c);
        assert_eq!(
            seqs(&got),
            (resume_point[c] + 1..=end).collect::<Vec<_>>(),
            "{c}: exactly the missed messages after a resume, then the sentinel"
        );
        for m in &got {
            let h = history.iter().find(|h| seq_of(h) == seq_of(m)).unwrap();
            assert_eq!(m["text"], h["text"]);
        }
    }
    carol_1.close().await;
    let exited = cluster.exited();
    assert!(exited.is_empty(), "other processes died: {exited:?}");
    drop(cluster);
    shared::store::cql::testing::drop_keyspaces_with_prefix(&node, &prefix).await;
}
