//! Invariant 7: bad input gets a clear error (HTTP 4xx with a Slack-style body, a WebSocket
//! error event or close code), never a crash, a hang or lost data. After all of it the
//! cluster still delivers, and the metrics counted it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// POSTs raw bytes to a Web API method; returns (status, JSON body).
async fn raw_post(
    cluster: &Cluster,
    method: &str,
    token: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let url = format!("{}/api/{method}", cluster.webapp);
    let mut req = cluster
        .http
        .post(&url)
        .header("content-type", content_type)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method}: error answer is not JSON ({e}): {text:?}"));
    (status, v)
}

fn assert_error(answer: &(u16, Value), status: u16, error: &str, what: &str) {
    assert_eq!(answer.1["ok"], false, "{what}: {answer:?}");
    assert_eq!(answer.1["error"], error, "{what}: {answer:?}");
    assert_eq!(answer.0, status, "{what}: HTTP status: {answer:?}");
}

/// Sends a raw HTTP/1.1 request: `head` (request line and headers), then `body` piece by
/// piece, while reading the answer. The server may answer and close before the body is all
/// sent (that is the point of a size limit), so sending stops at the first answer byte and
/// write errors are ignored. Returns the raw answer.
async fn raw_http(base: &str, head: String, body: Vec<Vec<u8>>) -> String {
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let answered = Arc::new(AtomicBool::new(false));
    let reader = {
        let answered = answered.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        answered.store(true, Ordering::SeqCst);
                        out.extend_from_slice(&buf[..n]);
                    }
                }
            }
            out
        })
    };
    let _ = w.write_all(head.as_bytes()).await;
    for piece in body {
        if answered.load(Ordering::SeqCst) || w.write_all(&piece).await.is_err() {
            break;
        }
    }
    let out = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the server answered in time")
        .expect("reader task");
    String::from_utf8_lossy(&out).into_owned()
}

/// A request's head for `POST /api/{method}` with extra header lines.
fn post_head(base: &str, method: &str, token: &str, headers: &str) -> String {
    let host = base.trim_start_matches("http://");
    format!(
        "POST /api/{method} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nConnection: close\r\n{headers}\r\n"
    )
}

/// Flips one character of the token's signature part.
fn forge(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() - 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_breaks_nothing() {
    let cluster = Cluster::start(ClusterOpts::standard(&["alice", "bob"])).await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let channel = cluster.create_channel(&alice, "bad-input").await;
    cluster.join(&bob, &channel).await;
    let gw = cluster.gateways[0].http.clone();
    let webapp = cluster.webapp.clone();
    let bad_before = cluster
        .metric(&gw, "switchboard_gateway_bad_input_total", &[])
        .await;
    let rejected_before = cluster
        .metric(&gw, "switchboard_gateway_rejected_connections_total", &[])
        .await;
    let errors_before = cluster
        .metric(&webapp, "switchboard_webapp_errors_total", &[])
        .await;

    // ---- HTTP ----
    let json_ct = "application/json";
    let t = Some(alice.token.as_str());
    let a = raw_post(
        &cluster,
        "chat.postMessage",
        t,
        json_ct,
        br#"{"channel":"#.to_vec(),
    )
    .await;
    assert_error(&a, 400, "invalid_json", "truncated JSON");
    let a = raw_post(
        &cluster,
        "chat.postMessage",
        t,
        json_ct,
        b"[1,2,3]".to_vec(),
    )
    .await;
    assert_error(&a, 400, "invalid_json", "a JSON array body");
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let a = raw_post(&cluster, "chat.postMessage", t, json_ct, deep.into_bytes()).await;
    assert_error(&a, 400, "invalid_json", "deeply nested JSON");
    let mut bad_utf8 = br#"{"channel":""#.to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    bad_utf8.extend_from_slice(br#"","text":"x"}"#);
    let a = raw_post(&cluster, "chat.postMessage", t, json_ct, bad_utf8).await;
    assert_error(&a, 400, "invalid_json", "invalid UTF-8 in a JSON body");
    let a = raw_post(
        &cluster,
        "chat.postMessage",
        t,
        "application/x-www-form-urlencoded",
        b"channel=\xff\xfe&text=x".to_vec(),
    )
    .await;
    assert_error(&a, 400, "invalid_form_data", "invalid UTF-8 in a form body");
    // Over 1 MiB by its Content-Length: refused from the header, before any body is sent
    // (sending it would race the server's close).
    let head = post_head(
        &cluster.webapp,
        "chat.postMessage",
        &alice.token,
        "Content-Length: 1048677\r\n",
    );
    let answer = raw_http(&cluster.webapp, head, Vec::new()).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "a body over 1 MiB by Content-Length: {answer:.300}"
    );
    assert!(
        answer.contains("\"request_too_large\""),
        "a body over 1 MiB: {answer:.400}"
    );
    // Over 1 MiB with no Content-Length (chunked): refused as it grows.
    let chunk = [b"10000\r\n".to_vec(), vec![b' '; 0x10000], b"\r\n".to_vec()].concat();
    let mut chunks = vec![b"{\"text\":\"".to_vec()];
    chunks[0] = [b"9\r\n".to_vec(), chunks[0].clone(), b"\r\n".to_vec()].concat();
    chunks.extend(std::iter::repeat_n(chunk, 20));
    chunks.push(b"0\r\n\r\n".to_vec());
    let head = post_head(
        &cluster.webapp,
        "chat.postMessage",
        &alice.token,
        "Transfer-Encoding: chunked\r\n",
    );
    let answer = raw_http(&cluster.webapp, head, chunks).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "a chunked body over 1 MiB: {answer:.300}"
    );
    assert!(
        answer.contains("\"request_too_large\""),
        "a chunked body over 1 MiB: {answer:.400}"
    );
    let a = raw_post(&cluster, "auth.test", None, json_ct, b"{}".to_vec()).await;
    assert_error(&a, 200, "not_authed", "no token");
    let forged = forge(&alice.token);
    let a = raw_post(
        &cluster,
        "auth.test",
        Some(&forged),
        json_ct,
        b"{}".to_vec(),
    )
    .await;
    assert_error(&a, 200, "invalid_auth", "a forged token");
    let a = raw_post(
        &cluster,
        "chat.postMessage",
        Some("xoxp-not-a-token"),
        json_ct,
        br#"{"channel":"C1","text":"x"}"#.to_vec(),
    )
    .await;
    assert_error(&a, 200, "invalid_auth", "a garbage token");
    let a = raw_post(
        &cluster,
        "chat.deleteEverything",
        t,
        json_ct,
        b"{}".to_vec(),
    )
    .await;
    assert_error(&a, 404, "unknown_method", "an unknown method");
    let a = raw_post(&cluster, "../../etc/passwd", t, json_ct, b"{}".to_vec()).await;
    assert!(
        a.0 == 404 && a.1["ok"] == false,
        "a path-like method: {a:?}"
    );
    let long_id = "C".repeat(10_000);
    for bad_channel in [
        "C!!!",
        "c123",
        "",
        "../C1",
        "C1'; DROP TABLE messages;--",
        long_id.as_str(),
    ] {
        for method in [
            "conversations.history",
            "chat.postMessage",
            "conversations.info",
            "conversations.join",
        ] {
            let a = cluster
                .api_status(
                    method,
                    &alice.token,
                    json!({ "channel": bad_channel, "text": "x" }),
                )
                .await;
            assert_error(
                &a,
                200,
                "channel_not_found",
                &format!("{method} on channel {bad_channel:.20}"),
            );
        }
    }
    let a = cluster
        .api_status(
            "conversations.history",
            &alice.token,
            json!({ "channel": channel, "cursor": "%%%" }),
        )
        .await;
    assert_error(&a, 200, "invalid_cursor", "a garbage cursor");
    let a = cluster
        .api_status(
            "conversations.history",
            &alice.token,
            json!({ "channel": channel, "limit": "-3" }),
        )
        .await;
    assert_error(&a, 200, "invalid_limit", "a negative limit");
    // The admin API refuses garbage too.
    let r = cluster
        .http
        .post(format!("{}/ring/members", cluster.admin_http))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "admin API with malformed JSON");
    let (status, _) = cluster
        .get_text(&format!("{}/ring/owner/%FF%FE", cluster.admin_http))
        .await;
    assert_eq!(status, 400, "admin API owner of a malformed channel id");

    // ---- WebSocket ----
    let ws_url = cluster.gateways[0].ws_url.clone();
    match Client::connect(&ws_url, &forged, None).await {
        Err(ConnectError::Http(status, body)) => {
            assert_eq!(status, 401, "forged token: {body}");
            assert!(body.contains("invalid_auth"), "forged token answer: {body}");
        }
        Err(other) => panic!("forged token: expected HTTP 401, got {other:?}"),
        Ok(_) => panic!("a forged token opened a session"),
    }
    match Client::connect(&ws_url, "", None).await {
        Err(ConnectError::Http(status, _)) => assert_eq!(status, 401, "no token"),
        other => panic!("no token: expected HTTP 401, got {:?}", other.err()),
    }
    let mut bad_resume = std::collections::BTreeMap::new();
    bad_resume.insert("not-a-channel".to_string(), 1);
    match Client::connect(&ws_url, &alice.token, Some(&bad_resume)).await {
        Err(ConnectError::Http(status, _)) => assert_eq!(status, 400, "malformed resume"),
        other => panic!("malformed resume: expected HTTP 400, got {:?}", other.err()),
    }
    let plain = cluster
        .http
        .get(format!(
            "{}/rtm?token={}",
            cluster.gateways[0].http, alice.token
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        plain.status().as_u16(),
        400,
        "a plain GET of /rtm is not an upgrade"
    );

    let alice_ws = cluster.connect(0, &alice).await;
    let bob_ws = cluster.connect(1, &bob).await;
    cluster
        .warm_up(
            &alice,
            std::slice::from_ref(&channel),
            &[&alice_ws, &bob_ws],
        )
        .await;

    let from = alice_ws.num_events();
    alice_ws
        .send_text("{\"type\": \"ping\", \"id\": ".into())
        .await;
    let e = alice_ws
        .wait_event(from, WAIT, "error for malformed JSON", |e| {
            e["type"] == "error"
        })
        .await;
    assert_eq!(e["error"]["code"], 1, "malformed JSON: {e}");
    assert!(e["error"]["msg"].is_string(), "{e}");
    alice_ws.ping(1).await;

    let from = alice_ws.num_events();
    alice_ws
        .send_json(&json!({ "id": 2, "type": "dance" }))
        .await;
    let e = alice_ws
        .wait_event(from, WAIT, "error for an unknown event", |e| {
            e["type"] == "error"
        })
        .await;
    assert_eq!(e["error"]["code"], 2, "unknown event: {e}");
    assert_eq!(e["reply_to"], 2, "unknown event: {e}");
    alice_ws.ping(3).await;

    let from = alice_ws.num_events();
    alice_ws
        .send_json(&json!({ "id": 4, "type": "typing" }))
        .await;
    let e = alice_ws
        .wait_event(from, WAIT, "error for an invalid typing event", |e| {
            e["reply_to"] == 4
        })
        .await;
    assert_eq!(e["type"], "error", "typing without a channel: {e}");

    let from = alice_ws.num_events();
    alice_ws.send_json(&json!(["not", "an", "object"])).await;
    alice_ws
        .wait_event(from, WAIT, "error for a JSON array", |e| {
            e["type"] == "error"
        })
        .await;

    let from = alice_ws.num_events();
    assert!(
        alice_ws
            .try_send(WsMessage::Binary(vec![0u8, 159, 146, 150, 255].into()))
            .await
    );
    let e = alice_ws
        .wait_event(from, WAIT, "error for a binary frame", |e| {
            e["type"] == "error"
        })
        .await;
    assert!(e["error"]["code"].is_u64(), "binary frame: {e}");
    alice_ws.ping(5).await;

    let from = alice_ws.num_events();
    alice_ws
        .send_text(format!("{}{}", "[".repeat(5000), "]".repeat(5000)))
        .await;
    alice_ws
        .wait_event(from, WAIT, "error for deeply nested JSON", |e| {
            e["type"] == "error"
        })
        .await;
    alice_ws.ping(6).await;

    // Oversized frame: the gateway closes that session with 1009, and only that one.
    let victim = cluster.connect(0, &bob).await;
    let huge = format!(
        "{{\"type\":\"ping\",\"id\":9,\"pad\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let _ = victim.try_send(WsMessage::Text(huge.into())).await;
    let closed = eventually(WAIT, || victim.ended() || victim.closed().is_some()).await;
    assert!(closed, "a 70 KiB frame did not end the session");
    assert_eq!(
        victim.closed().map(|c| c.0),
        Some(1009),
        "close code for an oversized frame"
    );
    alice_ws.ping(7).await;

    // ---- garbage bytes at the HTTP ports ----
    for url in &cluster.role_http_urls() {
        let addr = url.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 GARBAGE \r\n\r\n\xff\xfe")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    }

    // ---- garbage datagrams at the mesh ports ----
    let mut targets: Vec<_> = cluster
        .channel_servers
        .iter()
        .map(|c| c.mesh_addr)
        .collect();
    targets.push(cluster.admin_mesh);
    for (i, addr) in targets.iter().enumerate() {
        send_garbage_udp(*addr, 300, 0x9e37_79b9_7f4a_7c15 ^ i as u64);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // ---- nothing broke ----
    let exited = cluster.exited();
    assert!(exited.is_empty(), "processes died: {exited:?}");
    for url in cluster.role_http_urls() {
        let (status, body) = cluster.get_text(&format!("{url}/health")).await;
        assert_eq!(status, 200, "{url}/health after bad input: {body}");
    }
    let ring = cluster.ring().await;
    let up = ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["status"] == "up")
        .count();
    assert_eq!(
        up,
        cluster.channel_servers.len(),
        "ring after garbage: {ring}"
    );
    // New channels (possibly owned by any channel server) still work, and old ones deliver.
    let mut last = 0;
    for i in 0..5 {
        last = seq_of(
            &cluster
                .post(&alice, &channel, &format!("still works {i}"))
                .await,
        );
    }
    alice_ws.wait_seq(&channel, last, WAIT).await;
    bob_ws.wait_seq(&channel, last, WAIT).await;
    assert_contiguous(&alice_ws.messages(&channel), "alice after bad input");
    assert_contiguous(&bob_ws.messages(&channel), "bob after bad input");
    for i in 0..6 {
        let c = cluster
            .create_channel(&alice, &format!("after-garbage-{i}"))
            .await;
        cluster.post(&alice, &c, "hello").await;
    }
    let fresh = cluster.connect(1, &alice).await;
    fresh.ping(8).await;
    assert!(
        alice_ws.garbage().is_empty() && bob_ws.garbage().is_empty(),
        "non-JSON frames from the gateway"
    );
    assert!(
        alice_ws.closed().is_none(),
        "the session that sent bad frames was closed: {:?}",
        alice_ws.closed()
    );

    // ---- counted ----
    let bad_after = cluster
        .metric(&gw, "switchboard_gateway_bad_input_total", &[])
        .await;
    assert!(
        bad_after >= bad_before + 6.0,
        "gateway bad input counted: {bad_before} -> {bad_after}"
    );
    for kind in ["malformed_json", "unknown_event", "binary", "too_big"] {
        let n = cluster
            .metric(
                &gw,
                "switchboard_gateway_bad_input_total",
                &[("kind", kind)],
            )
            .await;
        assert!(
            n >= 1.0,
            "switchboard_gateway_bad_input_total{{kind=\"{kind}\"}} = {n}"
        );
    }
    let rejected_after = cluster
        .metric(&gw, "switchboard_gateway_rejected_connections_total", &[])
        .await;
    assert!(
        rejected_after >= rejected_before + 3.0,
        "gateway rejected connections: {rejected_before} -> {rejected_after}"
    );
    let errors_after = cluster
        .metric(&webapp, "switchboard_webapp_errors_total", &[])
        .await;
    assert!(
        errors_after >= errors_before + 30.0,
        "web API errors counted: {errors_before} -> {errors_after}"
    );
    for (method, error) in [
        ("chat.postMessage", "invalid_json"),
        ("chat.postMessage", "request_too_large"),
        ("auth.test", "not_authed"),
        ("auth.test", "invalid_auth"),
        ("unknown", "unknown_method"),
        ("conversations.history", "channel_not_found"),
    ] {
        let n = cluster
            .metric(
                &webapp,
                "switchboard_webapp_errors_total",
                &[("method", method), ("error", error)],
            )
            .await;
        assert!(
            n >= 1.0,
            "switchboard_webapp_errors_total{{method=\"{method}\",error=\"{error}\"}} = {n}"
        );
    }
    cluster.assert_running();
}
