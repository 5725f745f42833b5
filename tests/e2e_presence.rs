//! Presence end to end: aggregated over gateways by the admin server, debounced (a reconnect
//! to another gateway within the debounce produces no away/active flap), readable with
//! `users.getPresence`, settable with `users.setPresence`, and never leaving the workspace.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// Whether `e` is a `presence_change` about `id` (alone, or in a batch's `users`).
fn about(e: &Value, id: &str) -> bool {
    e["type"] == "presence_change"
        && (e["user"] == id
            || e["users"]
                .as_array()
                .is_some_and(|u| u.iter().any(|x| x == id)))
}

fn presence_of(id: &str, p: &'static str) -> impl Fn(&Value) -> bool {
    let id = id.to_string();
    move |e: &Value| about(e, &id) && e["presence"] == p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_debounced_across_gateways_and_settable() {
    let cluster = Cluster::start(
        ClusterOpts::standard(&["alice", "bob"])
            .workspace("globex", &["gus"])
            .set("admin-server", "admin.presence_debounce_ms=1500"),
    )
    .await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let gus = cluster.user("globex", "gus").clone();
    let watcher = cluster.connect(0, &alice).await;
    let outsider = cluster.connect(1, &gus).await;
    let v = cluster
        .api_ok("users.getPresence", &alice.token, json!({ "user": bob.id }))
        .await;
    assert_eq!(v["presence"], "away", "{v}");

    let from = watcher.num_events();
    let bob_ws = cluster.connect(1, &bob).await;
    watcher
        .wait_event(from, WAIT, "bob active", presence_of(&bob.id, "active"))
        .await;
    let v = cluster
        .api_ok("users.getPresence", &alice.token, json!({ "user": bob.id }))
        .await;
    assert_eq!(v["presence"], "active", "{v}");

    // bob drops and comes back on the other gateway well within the debounce: nothing.
    let from = watcher.num_events();
    bob_ws.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bob_ws = cluster.connect(0, &bob).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let flaps: Vec<Value> = watcher.events()[from..]
        .iter()
        .filter(|e| about(e, &bob.id))
        .cloned()
        .collect();
    assert!(
        flaps.is_empty(),
        "a quick reconnect flapped presence: {flaps:?}"
    );

    // bob goes for good: away once the debounce has passed.
    let from = watcher.num_events();
    bob_ws.close().await;
    let away = watcher
        .wait_event(from, WAIT, "bob away", presence_of(&bob.id, "away"))
        .await;
    assert_eq!(away["presence"], "away");
    let v = cluster
        .api_ok("users.getPresence", &bob.token, json!({}))
        .await;
    assert_eq!(
        (v["presence"].as_str(), v["online"].as_bool()),
        (Some("away"), Some(false)),
        "{v}"
    );

    // Manual away while connected, then back to auto.
    let bob_ws = cluster.connect(1, &bob).await;
    let from = watcher.num_events();
    watcher
        .wait_event(
            from.saturating_sub(5),
            WAIT,
            "bob active again",
            presence_of(&bob.id, "active"),
        )
        .await;
    cluster
        .api_ok(
            "users.setPresence",
            &bob.token,
            json!({ "presence": "away" }),
        )
        .await;
    watcher
        .wait_event(from, WAIT, "bob manual away", presence_of(&bob.id, "away"))
        .await;
    let v = cluster
        .api_ok("users.getPresence", &bob.token, json!({}))
        .await;
    assert_eq!(
        (v["presence"].as_str(), v["manual_away"].as_bool()),
        (Some("away"), Some(true)),
        "{v}"
    );
    let from = watcher.num_events();
    cluster
        .api_ok(
            "users.setPresence",
            &bob.token,
            json!({ "presence": "auto" }),
        )
        .await;
    watcher
        .wait_event(from, WAIT, "bob auto", presence_of(&bob.id, "active"))
        .await;
    let v = cluster
        .api(
            "users.setPresence",
            &bob.token,
            json!({ "presence": "busy" }),
        )
        .await;
    assert_eq!(v["error"], "invalid_arguments", "{v}");
    drop(bob_ws);

    // Another workspace hears nothing of acme's people, and cannot ask.
    assert!(
        outsider
            .events()
            .iter()
            .all(|e| !about(e, &alice.id) && !about(e, &bob.id)),
        "globex saw acme presence: {:?}",
        outsider.events()
    );
    let v = cluster
        .api("users.getPresence", &gus.token, json!({ "user": bob.id }))
        .await;
    assert_eq!(v["error"], "user_not_found", "{v}");
}
