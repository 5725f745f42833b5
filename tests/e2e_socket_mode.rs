//! Slack's Socket Mode end to end, on real processes: `apps.connections.open` hands out a
//! gateway URL with `mode=socket`; the session says Socket Mode's `hello`, sends the events
//! the Events API would (messages, reactions) in `events_api` envelopes and nothing that is
//! RTM's own (typing, presence), counts the client's acknowledgements, refuses anything else,
//! and says `disconnect` when its gateway stops.

mod common;

use common::*;
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
    let open = cluster
        .api_ok("apps.connections.open", &bob.token, json!({}))
        .await;
    let url = open["url"].as_str().expect("url").to_string();
    assert!(url.ends_with("&mode=socket"), "{url}");
    let g = cluster
        .gateways
        .iter()
        .position(|gw| url.starts_with(&format!("{}?", gw.ws_url)))
        .unwrap_or_else(|| panic!("{url} names no gateway of the cluster"));
    let gw_http = cluster.gateways[g].http.clone();
    let app = Client::connect_url(&url)
        .await
        .expect("socket mode connect");
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
    // The app's subscription goes live in the background: post until it hears one (bounded).
    let mut live = false;
    for attempt in 0..20 {
        let text = format!("warm-up {attempt}");
        cluster.post(&alice, &channel, &text).await;
        let heard = eventually(std::time::Duration::from_millis(500), || {
            app.events()
                .iter()
                .any(|e| e["payload"]["event"]["text"] == text.as_str())
        })
        .await;
        if heard {
            live = true;
            break;
        }
    }
    assert!(live, "the app heard no warm-up message");

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
