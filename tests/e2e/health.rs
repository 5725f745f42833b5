//! Invariant 8: every role (a Flannel included) serves `/health` (200 when ready) and
//! `/metrics` in the Prometheus text format with Switchboard's metrics.

use crate::common::*;
use std::time::Duration;

use serde_json::json;
use shared::telemetry::metrics::LaneStage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_serves_health_and_prometheus_metrics() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice"])).await;
    let alice = cluster.user("acme", "alice").clone();
    // The standard cluster has no Flannel: start one, so that every role is checked.
    let flannel = cluster.spawn_flannel("fl-1", &[]).await;
    // Some traffic, so the per-role counters have samples.
    let c = cluster.create_channel(&alice, "metrics").await;
    let ws = cluster.connect(0, &alice).await;
    cluster
        .warm_up(&alice, std::slice::from_ref(&c), &[&ws])
        .await;
    ws.ping(1).await;
    let (status, boot) = cluster
        .get_json_status(&flannel, "/boot", Some(&alice.token))
        .await;
    assert_eq!((status, &boot["ok"]), (200, &json!(true)), "boot: {boot}");

    let mut roles = vec![("admin-server", cluster.admin_http.clone())];
    roles.extend(
        cluster
            .channel_servers
            .iter()
            .map(|c| ("channel-server", c.http.clone())),
    );
    roles.push(("webapp", cluster.webapp.clone()));
    roles.extend(cluster.gateways.iter().map(|g| ("gateway", g.http.clone())));
    roles.push(("flannel", flannel.clone()));
    for (role, url) in &roles {
        let r = cluster
            .http
            .get(format!("{url}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{role} {url}/health");
        let body: serde_json::Value = r.json().await.expect("health answers JSON");
        assert_eq!(body["ok"], true, "{role} health: {body}");
        assert_eq!(body["role"], *role, "{url}/health is the {role}'s: {body}");

        let r = cluster
            .http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{role} {url}/metrics");
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            ct.starts_with("text/plain"),
            "{role} metrics content type {ct:?}"
        );
        let text = r.text().await.unwrap();
        assert!(
            text.lines().any(|l| l.starts_with("switchboard_")),
            "{role} exposes no switchboard_ sample:\n{text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("# TYPE switchboard_")),
            "{role} metrics lack TYPE lines"
        );
        // Every sample line is `name{labels} value` with a numeric value.
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let value = line.rsplit_once(' ').map(|(_, v)| v).unwrap_or_default();
            assert!(
                value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                "{role}: not a Prometheus sample: {line:?}"
            );
        }
    }
    // Role-specific counters moved with the traffic above.
    let gw = &cluster.gateways[0].http;
    assert!(
        cluster
            .metric(gw, "switchboard_gateway_sessions_opened_total", &[])
            .await
            >= 1.0
    );
    assert!(
        cluster
            .metric(
                gw,
                "switchboard_gateway_client_events_total",
                &[("type", "ping")]
            )
            .await
            >= 1.0
    );
    assert!(
        cluster
            .metric(
                &cluster.webapp,
                "switchboard_webapp_requests_total",
                &[("method", "chat.postMessage")]
            )
            .await
            >= 1.0
    );
    assert!(
        cluster
            .metric(
                &flannel,
                "switchboard_flannel_requests_total",
                &[("method", "boot")]
            )
            .await
            >= 1.0
    );
    // The post path's two hops are timed where they start: each post that went through the
    // warm-up is one observation at the Web API (to the admin server) and one at the admin
    // server (to the owning channel server).
    let posts = cluster
        .metric(
            &cluster.webapp,
            "switchboard_webapp_requests_total",
            &[("method", "chat.postMessage")],
        )
        .await;
    let to_admin = cluster
        .metric(
            &cluster.webapp,
            "switchboard_webapp_admin_request_duration_seconds_count",
            &[("request", "post")],
        )
        .await;
    assert!(
        to_admin >= 1.0 && to_admin <= posts,
        "{to_admin} timed requests for {posts} posts"
    );
    let to_owner = cluster
        .metric(
            &cluster.admin_http,
            "switchboard_admin_owner_post_duration_seconds_count",
            &[],
        )
        .await;
    assert!(
        to_owner >= 1.0 && to_owner <= to_admin,
        "{to_owner} timed owner posts for {to_admin} posts routed"
    );
    // The admin server both serves a lane (the Web API's calls) and calls on one (to the
    // owner): each routed post was a call started there and an answer handed back to it.
    for stage in LaneStage::ALL {
        let n = cluster
            .metric(
                &cluster.admin_http,
                "switchboard_mesh_lane_wait_seconds_count",
                &[("stage", stage.as_str())],
            )
            .await;
        assert!(n >= 1.0, "lane stage {stage:?} observed {n} times");
        if matches!(stage, LaneStage::CallStarted | LaneStage::AnswerHanded) {
            assert!(
                n >= to_owner,
                "lane stage {stage:?}: {n} for {to_owner} posts"
            );
        }
    }
    // Its QUIC paths are listed: the Web API's connection to it, and its own to the owner.
    for side in ["accepted", "connected"] {
        for family in [
            "switchboard_mesh_path_sent_packets_total",
            "switchboard_mesh_path_rtt_seconds",
        ] {
            let v = cluster
                .metric_sample(&cluster.admin_http, family, &[("side", side)])
                .await;
            assert!(v.is_some_and(|v| v > 0.0), "{side} path {family}: {v:?}");
        }
    }
    let ring = cluster.ring().await;
    assert_eq!(ring["ok"], true);
    assert!(ring["epoch"].as_u64().unwrap() >= 1, "{ring}");
    assert!(ring["vnodes"].as_u64().unwrap() >= 1, "{ring}");

    // A Web API call that needs no cluster state.
    let v = cluster
        .api_ok("api.test", "", json!({ "foo": "bar" }))
        .await;
    assert_eq!(v["args"]["foo"], "bar");
    let v = cluster.api_ok("auth.test", &alice.token, json!({})).await;
    assert_eq!(v["user_id"], alice.id.as_str());
    assert_eq!(v["team_id"], alice.workspace.as_str());

    // Every node follows the ring: the Web API learned the current epoch too.
    let epoch = cluster.ring().await["epoch"].as_f64().unwrap();
    let mut seen = 0.0;
    for _ in 0..100 {
        seen = cluster
            .metric(&cluster.webapp, "switchboard_webapp_ring_epoch", &[])
            .await;
        if seen >= epoch {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen >= epoch,
        "the Web API follows the ring: epoch {seen}, admin {epoch}"
    );
}

/// The store's files removed under running servers (a data directory deleted, a restore gone
/// wrong): the Web API and the channel servers, which write to it, answer `/health` 503 and
/// say why, before any write finds it, so a load balancer stops sending them traffic. The
/// roles that hold no store stay ready, and a post is refused rather than acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roles_whose_store_was_removed_are_not_ready() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let c = cluster.create_channel(&alice, "doomed").await;
    std::fs::remove_dir_all(cluster.data_dir.join("store")).unwrap();

    let mut writers = vec![("webapp", cluster.webapp.clone())];
    writers.extend(
        cluster
            .channel_servers
            .iter()
            .map(|c| ("channel-server", c.http.clone())),
    );
    for (role, url) in &writers {
        let (status, body) = cluster.get_json_status(url, "/health", None).await;
        assert_eq!(status, 503, "{role}: {body}");
        assert_eq!(body["ok"], false, "{role}: {body}");
        let why = body["failing"][0].as_str().unwrap_or_default();
        assert!(
            why.starts_with("store: ") && why.contains("deleted or replaced"),
            "{role} says why: {body}"
        );
    }
    let mut others = vec![("admin-server", cluster.admin_http.clone())];
    others.extend(cluster.gateways.iter().map(|g| ("gateway", g.http.clone())));
    for (role, url) in &others {
        let (status, body) = cluster.get_json_status(url, "/health", None).await;
        assert_eq!((status, &body["ok"]), (200, &json!(true)), "{role}: {body}");
    }
    let (_, v) = cluster
        .api_status(
            "chat.postMessage",
            &alice.token,
            json!({ "channel": c, "text": "into the void" }),
        )
        .await;
    assert_eq!(v["ok"], false, "not acknowledged: {v}");
}
