//! Slack's Socket Mode end to end, on real processes: `apps.connections.open` hands out a
//! gateway URL with `mode=socket`; the session says Socket Mode's `hello`, sends the events
//! the Events API would (messages, reactions) in `events_api` envelopes and nothing that is
//! RTM's own (typing, presence), counts the client's acknowledgements, refuses anything else,
//! and says `disconnect` when its gateway stops.

use crate::common::*;
use serde_json::{json, Value};

/// The `events_api` envelope of the event of `kind` whose `key` is `value`, from `from` on.
async fn envelope(app: &Client, from: usize, kind: &str, key: &str, value: &str) -> Value {
    app.wait_event(from, WAIT, kind, |e| {
        e["type"] == "events_api"
            && e["payload"]["event"]["type"] == kind
            && e["payload"]["event"][key] == value
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_sessions_get_events_api_envelopes_and_acknowledge_them() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let channel = cluster.create_channel(&alice, "apps").await;
    cluster.join(&bob, &channel).await;

    // Bob's app: the URL from `apps.connections.open`, as the SDKs take it.
    let (app, g) = open_connection(&cluster, &bob).await;
    let gw_http = cluster.gateways[g].http.clone();
    let hello = &app.hello;
    assert_eq!(hello["num_connections"], 1, "{hello}");
    assert_eq!(
        hello["connection_info"]["app_id"],
        format!("A{}", bob.id.strip_prefix('U').expect("a user id")),
        "{hello}"
    );
    assert!(hello.get("seq").is_none(), "RTM's hello fields: {hello}");

    // Alice, on RTM on the same gateway, will type there: Socket Mode must not hear it.
    let alice_rtm = cluster.connect(g, &alice).await;
    assert_eq!(alice_rtm.hello["type"], "hello");
    // The app's subscription goes live in the background.
    warm_up(&cluster, &alice, &channel, &[&app]).await;

    // A message: its envelope, its event id naming the channel's entry.
    let from = app.num_events();
    alice_rtm
        .send_json(&json!({ "id": 1, "type": "typing", "channel": channel }))
        .await;
    let blocks =
        json!([{ "type": "section", "text": { "type": "mrkdwn", "text": "deploy *finished*" } }]);
    let posted = cluster
        .api_ok(
            "chat.postMessage",
            &alice.token,
            json!({ "channel": channel, "text": "deploy finished", "blocks": blocks }),
        )
        .await["message"]
        .clone();
    let env = envelope(&app, from, "message", "text", "deploy finished").await;
    let payload = &env["payload"];
    assert_eq!(payload["type"], "event_callback", "{env}");
    assert_eq!(payload["team_id"], alice.workspace.as_str(), "{env}");
    assert_eq!(payload["authorizations"][0]["user_id"], bob.id.as_str());
    let event = &payload["event"];
    assert_eq!(event["channel"], channel.as_str());
    assert_eq!(event["user"], alice.id.as_str());
    assert_eq!(event["ts"], posted["ts"]);
    assert_eq!(event["event_ts"], posted["ts"]);
    assert_eq!(
        event["blocks"], blocks,
        "the blocks reach the app as posted"
    );
    assert_eq!(event["channel_type"], "channel", "{env}");
    assert_eq!(
        payload["event_id"],
        format!("Ev{channel}-{}", seq_of(&posted)),
        "{env}"
    );
    let envelope_id = env["envelope_id"]
        .as_str()
        .expect("envelope_id")
        .to_string();

    // The acknowledgement is counted and needs no answer.
    let acks = ("type", "ack");
    let before = cluster
        .metric(&gw_http, "switchboard_gateway_client_events_total", &[acks])
        .await;
    app.send_json(&json!({ "envelope_id": envelope_id })).await;
    cluster
        .wait_metric(
            &gw_http,
            "switchboard_gateway_client_events_total",
            &[acks],
            "the acknowledgement",
            |v| v >= before + 1.0,
        )
        .await;

    // A reaction: its envelope too.
    let ts = posted["ts"].as_str().expect("ts");
    cluster
        .api_ok(
            "reactions.add",
            &alice.token,
            json!({ "channel": channel, "timestamp": ts, "name": "tada" }),
        )
        .await;
    let env = envelope(&app, from, "reaction_added", "reaction", "tada").await;
    assert_eq!(env["payload"]["event"]["item"]["ts"], ts, "{env}");

    // A direct message opened after the app connected: its messages say `im`, which apps
    // route direct messages by (Bolt's `{"type": "message", "channel_type": "im"}`).
    let dm = cluster
        .api_ok(
            "conversations.open",
            &alice.token,
            json!({ "users": bob.id }),
        )
        .await["channel"]["id"]
        .as_str()
        .expect("dm id")
        .to_string();
    let posted = cluster
        .api_ok(
            "chat.postMessage",
            &alice.token,
            json!({ "channel": dm, "text": "can you deploy?" }),
        )
        .await;
    assert_eq!(posted["ok"], true);
    let env = envelope(&app, from, "message", "text", "can you deploy?").await;
    assert_eq!(env["payload"]["event"]["channel"], dm.as_str(), "{env}");
    assert_eq!(env["payload"]["event"]["channel_type"], "im", "{env}");
    // A private channel the app is invited to afterwards: `group`.
    let private = cluster
        .api_ok(
            "conversations.create",
            &alice.token,
            json!({ "name": "incidents", "is_private": true }),
        )
        .await["channel"]["id"]
        .as_str()
        .expect("private channel id")
        .to_string();
    cluster
        .api_ok(
            "conversations.invite",
            &alice.token,
            json!({ "channel": private, "users": bob.id }),
        )
        .await;
    cluster.post(&alice, &private, "sev2 open").await;
    let env = envelope(&app, from, "message", "text", "sev2 open").await;
    assert_eq!(env["payload"]["event"]["channel_type"], "group", "{env}");

    // Nothing but envelopes came: not alice's typing, not her presence.
    cluster.post(&alice, &channel, "last").await;
    envelope(&app, from, "message", "text", "last").await;
    let others: Vec<Value> = app.events()[from..]
        .iter()
        .filter(|e| e["type"] != "events_api")
        .cloned()
        .collect();
    assert!(
        others.is_empty(),
        "RTM events reached Socket Mode: {others:?}"
    );

    // Anything but an acknowledgement is refused, and counted.
    let bad = ("kind", "not_an_ack");
    let before = cluster
        .metric(&gw_http, "switchboard_gateway_bad_input_total", &[bad])
        .await;
    let from = app.num_events();
    app.send_json(&json!({ "type": "message", "channel": channel, "text": "x" }))
        .await;
    let error = app
        .wait_event(from, WAIT, "error", |e| e["type"] == "error")
        .await;
    assert!(
        error["error"]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("envelope_id")),
        "{error}"
    );
    assert_eq!(
        cluster
            .metric(&gw_http, "switchboard_gateway_bad_input_total", &[bad])
            .await,
        before + 1.0
    );

    // An unknown mode is refused at the upgrade.
    match Client::connect(
        &format!("{}?mode=events", cluster.gateways[g].ws_url),
        &bob.token,
        None,
    )
    .await
    {
        Err(ConnectError::Http(400, body)) => assert!(body.contains("invalid_mode"), "{body}"),
        Err(e) => panic!("mode=events: {e:?}"),
        Ok(_) => panic!("mode=events was accepted"),
    }

    // A gateway that stops says Socket Mode's `disconnect`, after which SDKs reconnect.
    let from = app.num_events();
    cluster.terminate(&cluster.gateways[g].id.clone());
    let bye = app
        .wait_event(from, WAIT, "disconnect", |e| e["type"] == "disconnect")
        .await;
    assert_eq!(bye["reason"], "warning", "{bye}");
}

/// What `apps.connections.open` gives `app`, and the index of the gateway it names.
async fn open_connection(cluster: &Cluster, app: &TestUser) -> (Client, usize) {
    let open = cluster
        .api_ok("apps.connections.open", &app.token, json!({}))
        .await;
    let url = open["url"].as_str().expect("url").to_string();
    assert!(url.ends_with("&mode=socket"), "{url}");
    let g = cluster
        .gateways
        .iter()
        .position(|gw| url.starts_with(&format!("{}?", gw.ws_url)))
        .unwrap_or_else(|| panic!("{url} names no gateway of the cluster"));
    let client = Client::connect_url(&url)
        .await
        .expect("socket mode connect");
    (client, g)
}

/// Posts (bounded) into `channel` until one of `apps` hears it: their subscription goes live
/// in the background after `hello`.
async fn warm_up(cluster: &Cluster, poster: &TestUser, channel: &str, apps: &[&Client]) {
    for attempt in 0..20 {
        let text = format!("warm-up {attempt}");
        cluster.post(poster, channel, &text).await;
        let heard = eventually(std::time::Duration::from_millis(500), || {
            apps.iter().any(|app| texts(app).contains(&text))
        })
        .await;
        if heard {
            return;
        }
    }
    panic!("the app heard no warm-up message");
}

/// The texts of the `message` events in `app`'s envelopes.
fn texts(app: &Client) -> Vec<String> {
    app.events()
        .iter()
        .filter(|e| e["type"] == "events_api" && e["payload"]["event"]["type"] == "message")
        .filter_map(|e| e["payload"]["event"]["text"].as_str().map(str::to_string))
        .collect()
}

/// An app with several connections (for redundancy, or several instances of it) gets each
/// event on one of them, as Slack's Socket Mode gives it; an envelope left unacknowledged by
/// a connection that closes is sent again, on another, with `retry_attempt` 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_s_connections_share_its_events_and_take_over_unacknowledged_ones() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice"]).bot("acme", "helper")).await;
    let alice = cluster.user("acme", "alice").clone();
    let bot = cluster.user("acme", "helper").clone();
    let channel = cluster.create_channel(&alice, "ops").await;
    cluster.join(&bot, &channel).await;

    // Two connections of the app: both sent to one gateway.
    let (a, g) = open_connection(&cluster, &bot).await;
    let (b, g2) = open_connection(&cluster, &bot).await;
    assert_eq!(g, g2, "an app's connections meet on one gateway");
    // Each acknowledges what it gets at once, as the SDKs do (a late one would be sent again).
    a.auto_ack(true);
    b.auto_ack(true);
    assert_eq!(b.hello["num_connections"], 2, "{}", b.hello);
    let gw_http = cluster.gateways[g].http.clone();

    warm_up(&cluster, &alice, &channel, &[&a, &b]).await;

    // Each message reaches exactly one of the two connections.
    let elsewhere = "switchboard_gateway_socket_mode_claimed_elsewhere_total";
    let before = cluster.metric(&gw_http, elsewhere, &[]).await;
    let sent: Vec<String> = (0..20).map(|i| format!("task {i}")).collect();
    for text in &sent {
        cluster.post(&alice, &channel, text).await;
    }
    let all = eventually(WAIT, || {
        let (ta, tb) = (texts(&a), texts(&b));
        sent.iter().all(|t| ta.contains(t) || tb.contains(t))
    })
    .await;
    assert!(all, "some message reached neither connection");
    // Each was also offered to the other connection, which dropped it (counted).
    cluster
        .wait_metric(
            &gw_http,
            elsewhere,
            &[],
            "the other connection's drops",
            |v| v >= before + sent.len() as f64,
        )
        .await;
    let (ta, tb) = (texts(&a), texts(&b));
    for text in &sent {
        let times = ta.iter().chain(&tb).filter(|t| *t == text).count();
        assert_eq!(times, 1, "{text} reached the app {times} times");
    }

    // A connection that closes with an envelope unacknowledged: another one gets it again.
    b.close().await;
    cluster
        .wait_metric(
            &gw_http,
            "switchboard_gateway_sessions",
            &[],
            "the closed connection to go",
            |v| v <= 1.0,
        )
        .await;
    let from = a.num_events();
    // The instance hangs: it acknowledges nothing more.
    a.auto_ack(false);
    cluster.post(&alice, &channel, "restart the worker").await;
    let first = envelope(&a, from, "message", "text", "restart the worker").await;
    assert_eq!(first["retry_attempt"], 0, "{first}");
    // Not acknowledged: the instance is stopped, and another starts.
    let (c, g3) = open_connection(&cluster, &bot).await;
    assert_eq!(g3, g);
    a.close().await;
    let again = envelope(&c, 0, "message", "text", "restart the worker").await;
    // 1 unless `a` let it time out (three seconds) before `c` opened, and got it again itself.
    assert!(
        again["retry_attempt"].as_u64().is_some_and(|n| n >= 1),
        "{again}"
    );
    assert_eq!(again["retry_reason"], "timeout", "{again}");
    assert_eq!(again["payload"]["event_id"], first["payload"]["event_id"]);
    assert_ne!(again["envelope_id"], first["envelope_id"]);
    assert!(
        cluster
            .metric(
                &gw_http,
                "switchboard_gateway_socket_mode_redelivered_total",
                &[]
            )
            .await
            >= 1.0
    );
}

/// An envelope not acknowledged within three seconds is sent again, with `retry_attempt` one
/// higher and `retry_reason` `timeout` (here on the app's only connection, which may be slow
/// rather than gone); one acknowledged is not. An app that revokes its token is told, then
/// disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_left_unacknowledged_is_sent_again_after_three_seconds() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice"]).bot("acme", "helper")).await;
    let alice = cluster.user("acme", "alice").clone();
    let bot = cluster.user("acme", "helper").clone();
    let channel = cluster.create_channel(&alice, "builds").await;
    cluster.join(&bot, &channel).await;
    let (app, g) = open_connection(&cluster, &bot).await;
    let gw_http = cluster.gateways[g].http.clone();
    app.auto_ack(true);
    warm_up(&cluster, &alice, &channel, &[&app]).await;
    let timeouts = "switchboard_gateway_socket_mode_ack_timeouts_total";
    let before = cluster.metric(&gw_http, timeouts, &[]).await;

    // Busy: this one is not acknowledged.
    app.auto_ack(false);
    let from = app.num_events();
    cluster.post(&alice, &channel, "build 41 failed").await;
    let first = envelope(&app, from, "message", "text", "build 41 failed").await;
    assert_eq!(first["retry_attempt"], 0, "{first}");
    let again = app
        .wait_event(from, WAIT, "the retry", |e| {
            e["type"] == "events_api"
                && e["payload"]["event"]["text"] == "build 41 failed"
                && e["retry_attempt"] == 1
        })
        .await;
    assert_eq!(again["retry_reason"], "timeout", "{again}");
    assert_eq!(again["payload"]["event_id"], first["payload"]["event_id"]);
    assert_ne!(again["envelope_id"], first["envelope_id"]);
    assert!(cluster.metric(&gw_http, timeouts, &[]).await > before);

    // Acknowledged from here on (the retry too): the next message goes out once.
    app.send_json(&json!({ "envelope_id": again["envelope_id"] }))
        .await;
    app.auto_ack(true);
    cluster.post(&alice, &channel, "build 42 passed").await;
    envelope(&app, from, "message", "text", "build 42 passed").await;
    let acked = cluster.metric(&gw_http, timeouts, &[]).await;
    // Past its deadline: still one sending, and no more timeouts.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let sendings = texts(&app)
        .iter()
        .filter(|t| *t == "build 42 passed")
        .count();
    assert_eq!(sendings, 1, "an acknowledged envelope was sent again");
    assert_eq!(cluster.metric(&gw_http, timeouts, &[]).await, acked);

    // The app revokes its token: it hears Slack's `tokens_revoked` as an event like the
    // others, then `disconnect`, and the connection closes with code 4005.
    let from = app.num_events();
    let v = cluster.api_ok("auth.revoke", &bot.token, json!({})).await;
    assert_eq!(v["revoked"], true, "{v}");
    let told = app
        .wait_event(from, WAIT, "tokens_revoked", |e| {
            e["type"] == "events_api" && e["payload"]["event"]["type"] == "tokens_revoked"
        })
        .await;
    assert_eq!(
        told["payload"]["event"]["tokens"]["bot"],
        json!([bot.id]),
        "{told}"
    );
    let bye = app
        .wait_event(from, WAIT, "disconnect", |e| e["type"] == "disconnect")
        .await;
    assert_eq!(bye["reason"], "link_disabled", "{bye}");
    assert!(
        eventually(WAIT, || app.ended()).await,
        "the revoked token's connection stayed open"
    );
    assert_eq!(app.closed(), Some((4005, "token_revoked".to_string())));
}
