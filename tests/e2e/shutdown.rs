//! Graceful shutdown: a gateway asked to stop (SIGTERM) tells its clients `goodbye` and closes
//! their sockets with 1001 (going away) so they reconnect elsewhere, and exits 0; its clients
//! resume on the other gateway without loss. While it drains, its `/health` answers 503. With
//! `gateway.goodbye_spread_ms` the goodbyes are spread over that span, and each session is
//! served until its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// How long a gateway may take from SIGTERM to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_with_sigterm_says_goodbye_and_exits_cleanly() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let channel = cluster.create_channel(&alice, "shutdown").await;
    cluster.join(&bob, &channel).await;
    let leaving = cluster.gateways[0].clone();
    let alice_1 = cluster.connect(0, &alice).await;
    let bob_1 = cluster.connect(0, &bob).await;
    let bob_elsewhere = cluster.connect(1, &bob).await;
    cluster
        .warm_up(
            &alice,
            std::slice::from_ref(&channel),
            &[&alice_1, &bob_1, &bob_elsewhere],
        )
        .await;
    cluster.terminate(&leaving.id);

    // Every session of the gateway: `goodbye`, then close 1001.
    for (who, client) in [("alice", &alice_1), ("bob", &bob_1)] {
        let goodbye = client
            .wait_event(0, WAIT, "goodbye", |e| e["type"] == "goodbye")
            .await;
        assert_eq!(goodbye["source"], "gateway_shutdown", "{who}: {goodbye}");
        assert!(
            eventually(WAIT, || client.closed().is_some() || client.ended()).await,
            "{who}: the socket stayed open after goodbye"
        );
        assert_eq!(
            client.closed().map(|c| c.0),
            Some(1001),
            "{who}: close code after goodbye (going away)"
        );
        let events = client.events();
        let at = events
            .iter()
            .position(|e| e["type"] == "goodbye")
            .expect("goodbye seen");
        assert!(
            events[at + 1..].is_empty(),
            "{who}: events after goodbye: {:?}",
            &events[at + 1..]
        );
    }

    let status = cluster.wait_exit(&leaving.id, EXIT_WITHIN).await;
    assert!(status.success(), "the gateway exited with {status}");
    let log = cluster.log(&leaving.id);
    assert!(
        !log.contains("panicked"),
        "the gateway panicked on the way out:\n{log}"
    );

    // The other gateway's session never noticed; alice resumes there without loss.
    let missed = seq_of(&cluster.post(&alice, &channel, "while alice moved").await);
    let resume: BTreeMap<String, u64> = alice_1.positions(std::slice::from_ref(&channel));
    let alice_2 = cluster.connect_resume(1, &alice, &resume).await;
    let end = seq_of(
        &cluster
            .settle(&alice, &channel, &[&alice_2, &bob_elsewhere])
            .await,
    );
    assert_eq!(end, missed + 1);
    assert_eq!(
        seqs(&alice_2.messages(&channel)),
        (resume[&channel] + 1..=end).collect::<Vec<_>>(),
        "alice resumed on the other gateway with exactly what she missed"
    );
    assert!(bob_elsewhere.closed().is_none() && !bob_elsewhere.ended());
    let exited = cluster.exited();
    assert!(exited.is_empty(), "other processes exited: {exited:?}");
}

/// Polls `base/health` until the listener is gone (bounded); returns every answer.
async fn health_until_closed(cluster: &Cluster, base: &str) -> Vec<(u16, Value)> {
    let mut answers = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        match cluster.http.get(format!("{base}/health")).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                answers.push((status, r.json().await.unwrap_or(Value::Null)));
            }
            Err(_) => return answers,
        }
        assert!(
            Instant::now() < deadline,
            "{base} still answers /health {WAIT:?} after the signal: {:?}",
            answers.last()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How long the gateways of [`a_draining_gateway_answers_health_503`] drain: long enough that
/// a probe sent once the goodbye arrived reaches each of four gateways stopping at once on a
/// loaded host (the default, 200 ms, is not), and short enough to exit within
/// [`EXIT_WITHIN`] and stop answering within the probes' [`WAIT`].
const TEST_DRAIN_MS: u64 = 3000;

/// Once a gateway has said goodbye it is draining: it answers `/health` (at least once: the
/// drain lasts [`TEST_DRAIN_MS`]), and every answer until its listener closes is 503.
/// Several gateways, since the defect this guards against is a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_answers_health_503() {
    let mut opts = ClusterOpts::standard(&["alice"])
        .set("gateway", &format!("gateway.drain_ms={TEST_DRAIN_MS}"));
    opts.num_gateways = 4;
    opts.num_channel_servers = 1;
    let cluster = Cluster::start(opts).await;
    let alice = cluster.user("acme", "alice").clone();
    let mut clients = Vec::new();
    for i in 0..cluster.gateways.len() {
        clients.push(cluster.connect(i, &alice).await);
    }
    for gw in &cluster.gateways {
        cluster.terminate(&gw.id);
    }
    // All at once.
    let checks = cluster.gateways.iter().zip(&clients).map(|(gw, client)| {
        let cluster = &cluster;
        async move {
            // The goodbye shows the gateway has begun to drain.
            client
                .wait_event(0, WAIT, "goodbye", |e| e["type"] == "goodbye")
                .await;
            (gw.id.clone(), health_until_closed(cluster, &gw.http).await)
        }
    });
    for (id, answers) in futures_util::future::join_all(checks).await {
        assert!(
            !answers.is_empty(),
            "{id}: /health never answered after goodbye, though it drains for {TEST_DRAIN_MS} ms"
        );
        for (status, body) in &answers {
            assert_eq!(
                (*status, &body["ok"], &body["role"]),
                (503, &Value::Bool(false), &Value::from("gateway")),
                "{id}: /health after goodbye: {answers:?}"
            );
        }
        let status = cluster.wait_exit(&id, EXIT_WITHIN).await;
        assert!(status.success(), "{id} exited with {status}");
    }
}

/// With `gateway.goodbye_spread_ms`, a stopping gateway tells its sessions goodbye over that
/// span, each at its own point (so their clients do not all reconnect elsewhere at once), and
/// serves each until then: a message posted after the first goodbye still reaches the
/// sessions not yet told. A new connection meanwhile is refused (503 `gateway_draining`), so
/// the client goes to another gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_spreads_its_goodbyes_and_serves_each_session_until_its_own() {
    const SPREAD_MS: u64 = 3000;
    let opts = ClusterOpts::standard(&["alice", "bob"])
        .set("gateway", &format!("gateway.goodbye_spread_ms={SPREAD_MS}"));
    let cluster = Cluster::start(opts).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let channel = cluster.create_channel(&alice, "spread").await;
    cluster.join(&bob, &channel).await;
    let leaving = cluster.gateways[0].clone();
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(cluster.connect(0, &bob).await);
    }
    let all: Vec<&Client> = clients.iter().collect();
    cluster
        .warm_up(&alice, std::slice::from_ref(&channel), &all)
        .await;
    let signal = Instant::now();
    cluster.terminate(&leaving.id);

    // When each client hears its goodbye (polled; bounded).
    let mut told: Vec<Option<Duration>> = vec![None; clients.len()];
    let mut posted_after_first = None;
    let mut refused = None;
    let deadline = signal + WAIT;
    while told.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "goodbyes still missing {WAIT:?} after the signal: {told:?}"
        );
        for (client, at) in clients.iter().zip(told.iter_mut()) {
            if at.is_none() && client.events().iter().any(|e| e["type"] == "goodbye") {
                *at = Some(signal.elapsed());
            }
        }
        if posted_after_first.is_none() && told.iter().any(Option::is_some) {
            let m = cluster
                .post(&alice, &channel, "after the first goodbye")
                .await;
            posted_after_first = Some(seq_of(&m));
            // And a newcomer is sent elsewhere.
            refused = Some(Client::connect(&leaving.ws_url, &bob.token, None).await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let told: Vec<Duration> = told.into_iter().flatten().collect();
    let (first, last) = (told.iter().min().unwrap(), told.iter().max().unwrap());
    assert!(
        *last - *first >= Duration::from_millis(SPREAD_MS / 3),
        "the goodbyes came together (from {first:?} to {last:?} after the signal), not over {SPREAD_MS} ms"
    );
    match refused.expect("a connection was tried") {
        Err(ConnectError::Http(503, body)) => {
            assert!(body.contains("gateway_draining"), "{body}")
        }
        Err(e) => panic!("a connection to the stopping gateway: {e:?}"),
        Ok(_) => panic!("the stopping gateway took a new session"),
    }
    // Served until its goodbye: the later sessions got the message posted after the first.
    let seq = posted_after_first.expect("posted");
    let served = clients
        .iter()
        .filter(|c| seqs(&c.messages(&channel)).contains(&seq))
        .count();
    assert!(
        served >= 1,
        "no session heard a message posted after the first goodbye"
    );
    for client in &clients {
        let events = client.events();
        let at = events.iter().position(|e| e["type"] == "goodbye").unwrap();
        assert!(
            events[at + 1..].is_empty(),
            "events after goodbye: {:?}",
            &events[at + 1..]
        );
    }
    let status = cluster.wait_exit(&leaving.id, EXIT_WITHIN).await;
    assert!(status.success(), "the gateway exited with {status}");
    let exited = cluster.exited();
    assert!(exited.is_empty(), "other processes exited: {exited:?}");
}

/// With `gateway.max_new_sessions_per_second`, a gateway admits a crowd of new sessions (the
/// clients of a gateway that stopped) at that pace: past a second's worth, an upgrade is
/// refused with 503 `ratelimited` and `Retry-After`, counted, and a client that comes back
/// when told is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_admits_new_sessions_at_its_pace() {
    const RATE: u32 = 3;
    let opts = ClusterOpts::standard(&["alice"]).set(
        "gateway",
        &format!("gateway.max_new_sessions_per_second={RATE}"),
    );
    let cluster = Cluster::start(opts).await;
    let alice = cluster.user("acme", "alice").clone();
    let gw = cluster.gateways[0].clone();
    let url = format!(
        "{}?token={}",
        gw.ws_url.replacen("ws://", "http://", 1),
        alice.token
    );
    // Upgrades back to back, as a crowd's: the first second's worth is admitted (101), then
    // they are refused (bounded: a refusal comes within a few more).
    let mut admitted = 0;
    let refusal = loop {
        assert!(
            admitted <= 2 * RATE,
            "{admitted} upgrades admitted at {RATE} a second"
        );
        let r = cluster
            .http
            .get(&url)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .expect("the gateway answers");
        match r.status().as_u16() {
            101 => admitted += 1,
            503 => break r,
            other => panic!("an upgrade answered {other}"),
        }
    };
    assert!(
        admitted >= 1,
        "none of the first second's worth was admitted"
    );
    let retry_after: u64 = refusal.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    let body: Value = refusal.json().await.unwrap();
    assert_eq!(body["error"], "ratelimited", "{body}");
    assert!(
        cluster
            .metric(
                &gw.http,
                "switchboard_gateway_rejected_connections_total",
                &[("reason", "ratelimited")]
            )
            .await
            >= 1.0
    );
    // Told when to come back, it is admitted then.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let client = cluster.connect(0, &alice).await;
    assert_eq!(client.hello["type"], "hello");
}

/// A Socket Mode app whose gateway is stopping is given the next gateway by
/// `apps.connections.open` while the stopping one drains: the Web API's probe reads its
/// `/health` (503), so the app's reconnection does not wait for the port to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_apps_move_off_a_stopping_gateway() {
    // Long enough to outlast the Web API's 3 s probe cache with room to spare.
    const SPREAD_MS: u64 = 8000;
    let opts = ClusterOpts::standard(&["alice"])
        .bot("acme", "helper")
        .set("gateway", &format!("gateway.goodbye_spread_ms={SPREAD_MS}"));
    let cluster = Cluster::start(opts).await;
    let bot = cluster.user("acme", "helper").clone();
    let open = || async {
        cluster
            .api_ok("apps.connections.open", &bot.token, serde_json::json!({}))
            .await["url"]
            .as_str()
            .expect("url")
            .to_string()
    };
    let first = open().await;
    let g = cluster
        .gateways
        .iter()
        .position(|gw| first.starts_with(&format!("{}?", gw.ws_url)))
        .expect("a gateway of the cluster");
    let other = cluster.gateways[1 - g].ws_url.clone();
    cluster.terminate(&cluster.gateways[g].id.clone());
    // Bounded: well inside the drain, whose listener stays open for the spread.
    let deadline = Instant::now() + Duration::from_millis(SPREAD_MS - 2000);
    let moved = loop {
        let url = open().await;
        if url.starts_with(&format!("{other}?")) {
            break url;
        }
        assert!(
            Instant::now() < deadline,
            "apps.connections.open still gives the stopping gateway: {url}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let app = Client::connect_url(&moved)
        .await
        .expect("the app connects to the other gateway");
    assert_eq!(app.hello["type"], "hello");
    assert!(
        cluster
            .metric(
                &cluster.webapp,
                "switchboard_webapp_gateway_unreachable_total",
                &[]
            )
            .await
            >= 1.0
    );
}
