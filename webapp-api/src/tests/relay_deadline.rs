//! A call relays its stored changes before answering, within a deadline ([`crate::relay`]):
//! with the admin server unreachable, a call that stores changes answers once the deadline
//! passes (not after the link's retries per event, one after another), and the relays that
//! could not be made are counted as dropped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shared::mesh::{Mesh, MeshTls, PeerPool};

use super::*;
use crate::metrics::USER_EVENTS_DROPPED;

/// Events dropped at their call's deadline, in this process (only a link that hangs, as
/// here, makes those: a detached one fails at once).
fn dropped_at_deadline() -> u64 {
    USER_EVENTS_DROPPED.with_label_values(&["deadline"]).get()
}

#[tokio::test]
async fn an_admin_server_that_never_answers_delays_a_call_by_the_deadline_at_most() {
    shared::mesh::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = MeshTls::dev(dir.path()).expect("tls");
    // The production connect timeout: each relay attempt waits this long on the hole.
    let mesh = Mesh::client(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &tls,
        1024 * 1024,
        Duration::from_secs(3),
    )
    .expect("mesh");
    // A socket that takes every datagram and answers none: a QUIC handshake with it hangs
    // until the connect timeout, like a partitioned admin server.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    let link = AdminLink::new(
        Arc::new(PeerPool::new(Arc::new(mesh))),
        hole.local_addr().expect("addr"),
    );
    let s = Server::start_with_admin_link(link).await;
    let alice = s.token("alice");
    let (bob_id, carol_id) = (s.user_id("bob"), s.user_id("carol"));
    let before = dropped_at_deadline();

    // Each call waits for its relays up to the deadline, no longer: waiting on the link's
    // retries instead took 3 tries of 3 s per event, one event after another (a call of 4
    // events, 36 s). The bound leaves a loaded machine a second of room.
    let bound = crate::relay::RELAY_DEADLINE + Duration::from_secs(1);
    let timed = |started: Instant, call: &str| {
        let took = started.elapsed();
        assert!(took < bound, "{call} took {took:?}");
    };
    let started = Instant::now();
    let created = s
        .ok("conversations.create", &alice, json!({"name": "plans"}))
        .await;
    timed(started, "conversations.create");
    let plans = channel_id(&created);
    let started = Instant::now();
    s.ok(
        "conversations.invite",
        &alice,
        json!({"channel": plans, "users": format!("{bob_id},{carol_id}")}),
    )
    .await;
    timed(started, "conversations.invite");
    let started = Instant::now();
    s.ok(
        "conversations.open",
        &alice,
        json!({"users": format!("{bob_id},{carol_id}")}),
    )
    .await;
    timed(started, "conversations.open");

    // Nothing was relayed: every event (2 + 2 + 4) is counted as dropped, by the time its
    // call answered. (A topic change also posts its announcement, which, as any post, needs
    // the admin server's answer.)
    let dropped = dropped_at_deadline() - before;
    assert!(dropped >= 8, "dropped {dropped}");
    drop(hole);
    s.stop().await;
}
