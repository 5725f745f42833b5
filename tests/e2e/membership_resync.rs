//! Membership changes that a gateway never heard of, because its stream from the admin server
//! was down (the admin server restarted, or closed the stream when the gateway fell behind),
//! are found when the stream comes back: the gateway asks the Web API for its users' channels.
//! Without that, a member removed from a private channel meanwhile would go on receiving it.

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_the_admin_server_was_down_reach_open_sessions() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let secret = cluster
        .create_private(&alice, "resync-secret", &[&bob])
        .await;
    let open = cluster.create_channel(&alice, "resync-open").await;
    let bob_ws = cluster.connect(0, &bob).await;
    // Alice, on the same gateway and in both channels, witnesses what that gateway hands out.
    let alice_ws = cluster.connect(0, &alice).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&secret), &[&bob_ws])
        .await;

    // While the admin server is down, bob is removed from the secret channel and joins the
    // open one: the Web API stores both, and no event reaches the gateway.
    cluster.kill("admin-server");
    cluster
        .api_ok(
            "conversations.kick",
            &alice.token,
            json!({ "channel": secret, "user": bob.id }),
        )
        .await;
    cluster
        .api_ok("conversations.join", &bob.token, json!({ "channel": open }))
        .await;
    let from = bob_ws.num_events();
    cluster.restart_admin().await;

    // The gateway's stream comes back and it resyncs bob's session.
    bob_ws
        .wait_event(from, WAIT, "channel_left", |e| {
            e["type"] == "channel_left" && e["channel"] == secret.as_str()
        })
        .await;
    bob_ws
        .wait_event(from, WAIT, "channel_joined", |e| {
            e["type"] == "channel_joined" && e["channel"]["id"] == open.as_str()
        })
        .await;
    cluster
        .wait_metric(
            &cluster.gateways[0].http,
            "switchboard_gateway_membership_resyncs_total",
            &[("result", "changed")],
            "a changed resync",
            |v| v >= 1.0,
        )
        .await;

    // And the messages follow: the open channel's reach bob, the secret's no longer do.
    cluster
        .warm_up(&alice, std::slice::from_ref(&open), &[&bob_ws, &alice_ws])
        .await;
    let hidden = cluster.post(&alice, &secret, "not for bob").await;
    // Once alice's session on the same gateway has it, the gateway has offered it to every
    // session it was going to; a message posted after that reaches bob's session behind
    // anything leaked (one queue per session), so no sleep is needed before judging.
    alice_ws.wait_seq(&secret, seq_of(&hidden), WAIT).await;
    let seen = cluster.post(&alice, &open, "for bob").await;
    bob_ws.wait_seq(&open, seq_of(&seen), WAIT).await;
    let leaked: Vec<_> = bob_ws
        .messages(&secret)
        .into_iter()
        .filter(|m| seq_of(m) >= seq_of(&hidden))
        .collect();
    assert!(leaked.is_empty(), "bob still receives {secret}: {leaked:?}");
}
