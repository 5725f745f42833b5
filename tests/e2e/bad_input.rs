//! Invariant 7: bad input gets a clear error (HTTP 4xx with a Slack-style body, a WebSocket
//! error event or close code), never a crash, a hang or lost data. After all of it the
//! cluster still delivers, and the metrics counted it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::*;
use serde_json::{json, Value};
use shared::mesh::tls::MeshTls;
use shared::mesh::Mesh;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The gateway's `switchboard_gateway_bad_input_total` by kind.
const BAD_INPUT: &str = "switchboard_gateway_bad_input_total";
/// The kinds of WebSocket bad input this test sends, and how many of each.
const BAD_INPUT_KINDS: [(&str, f64); 8] = [
    ("malformed_json", 2.0),
    ("unknown_event", 1.0),
    ("invalid_event", 1.0),
    ("missing_type", 1.0),
    ("not_in_channel", 1.0),
    ("binary", 1.0),
    ("invalid_utf8", 1.0),
    ("too_big", 1.0),
];

/// A mesh endpoint of the test's own that connects like a gateway does, with the certificates
/// in `dir` (`ca.pem`, `node.pem`, `node.key`).
fn mesh_client(dir: &Path) -> Mesh {
    shared::mesh::tls::install_crypto_provider();
    let tls = MeshTls::load(
        &dir.join("ca.pem"),
        &dir.join("node.pem"),
        &dir.join("node.key"),
    )
    .expect("load mesh certificates");
    Mesh::client("127.0.0.1:0".parse().unwrap(), &tls, 1 << 20, WAIT).expect("mesh endpoint")
}

/// The mesh counters of one process: (bad frames, failed handshakes).
async fn mesh_counters(cluster: &Cluster, base: &str) -> (f64, f64) {
    (
        cluster
            .metric(base, "switchboard_mesh_bad_frames_total", &[])
            .await,
        cluster
            .metric(base, "switchboard_mesh_handshake_failures_total", &[])
            .await,
    )
}

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
/// write errors are ignored. Returns the raw answer. The whole exchange (connect, send, answer
/// up to the close) is bounded by [`WAIT`]: a server that neither reads nor answers fails the
/// test instead of hanging it.
async fn raw_http(base: &str, head: String, body: Vec<Vec<u8>>) -> String {
    let addr = base.trim_start_matches("http://");
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let (mut r, mut w) = stream.into_split();
        let answered = AtomicBool::new(false);
        let read = async {
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
        };
        let write = async {
            let _ = w.write_all(head.as_bytes()).await;
            for piece in body {
                if answered.load(Ordering::SeqCst) || w.write_all(&piece).await.is_err() {
                    break;
                }
            }
            // Keep the write half open: a half-close could end the exchange early.
            w
        };
        let (out, _w) = tokio::join!(read, write);
        out
    };
    let out = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{base}: no complete answer within {WAIT:?} (the request was not read, or the \
             answer never ended)"
            )
        });
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
    // A Flannel too, so that every role's HTTP port gets the garbage below
    // (`role_http_urls` lists it).
    let flannel = cluster.spawn_flannel("fl-1", &[]).await;
    assert!(cluster.role_http_urls().contains(&flannel));
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let channel = cluster.create_channel(&alice, "bad-input").await;
    cluster.join(&bob, &channel).await;
    let gw = cluster.gateways[0].http.clone();
    let webapp = cluster.webapp.clone();
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
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (status, &body["ok"], &body["error"]),
        (400, &json!(false), &json!("invalid_json")),
        "admin API with malformed JSON: {body}"
    );
    // Not UTF-8 once decoded: refused by the path's decoding, answered the same way.
    let (status, body) = cluster
        .get_text(&format!("{}/ring/owner/%FF%FE", cluster.admin_http))
        .await;
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(
        (status, &body["ok"], &body["error"]),
        (400, &json!(false), &json!("invalid_channel")),
        "admin API owner of an undecodable channel id: {body}"
    );
    let (status, body) = cluster
        .get_text(&format!("{}/ring/owner/not-a-channel", cluster.admin_http))
        .await;
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(
        (status, &body["ok"], &body["error"]),
        (400, &json!(false), &json!("invalid_channel")),
        "admin API owner of a malformed channel id: {body}"
    );
    for (reason, count) in [("invalid_json", 1.0), ("invalid_channel", 2.0)] {
        assert_eq!(
            cluster
                .metric_sample(
                    &cluster.admin_http,
                    "switchboard_admin_bad_requests_total",
                    &[("reason", reason)],
                )
                .await,
            Some(count),
            "switchboard_admin_bad_requests_total{{reason=\"{reason}\"}}"
        );
    }

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

    let bad_input_before: Vec<f64> = {
        let mut v = Vec::new();
        for (kind, _) in BAD_INPUT_KINDS {
            v.push(cluster.metric(&gw, BAD_INPUT, &[("kind", kind)]).await);
        }
        v
    };
    // A channel alice is not in.
    let bobs_own = cluster.create_channel(&bob, "bob-only").await;
    let alice_ws = cluster.connect(0, &alice).await;
    let bob_ws = cluster.connect(1, &bob).await;
    cluster
        .warm_up(
            &alice,
            std::slice::from_ref(&channel),
            &[&alice_ws, &bob_ws],
        )
        .await;

    // Each bad event gets an error event with its code (and `reply_to` where the event had
    // an id), and the session goes on.
    let answer_to = |reply_to: Option<u64>| {
        move |e: &Value| match reply_to {
            Some(id) => e["reply_to"] == id,
            None => e["type"] == "error",
        }
    };
    let cases: Vec<(&str, WsMessage, Option<u64>, u64)> = vec![
        (
            "malformed JSON",
            WsMessage::Text("{\"type\": \"ping\", \"id\": ".into()),
            None,
            1,
        ),
        (
            "an unknown event",
            WsMessage::Text(json!({ "id": 2, "type": "dance" }).to_string().into()),
            Some(2),
            2,
        ),
        (
            "a typing event without a channel",
            WsMessage::Text(json!({ "id": 4, "type": "typing" }).to_string().into()),
            Some(4),
            1,
        ),
        (
            "a JSON array",
            WsMessage::Text(json!(["not", "an", "object"]).to_string().into()),
            None,
            2,
        ),
        (
            "a typing event in a channel alice is not in",
            WsMessage::Text(
                json!({ "id": 5, "type": "typing", "channel": bobs_own })
                    .to_string()
                    .into(),
            ),
            Some(5),
            4,
        ),
        (
            "a binary frame",
            WsMessage::Binary(vec![0u8, 159, 146, 150, 255].into()),
            None,
            5,
        ),
        (
            "deeply nested JSON",
            WsMessage::Text(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into()),
            None,
            1,
        ),
    ];
    for (n, (what, frame, reply_to, code)) in cases.into_iter().enumerate() {
        let from = alice_ws.num_events();
        assert!(alice_ws.try_send(frame).await, "{what}: send");
        let e = alice_ws
            .wait_event(from, WAIT, what, answer_to(reply_to))
            .await;
        assert_eq!(e["type"], "error", "{what}: {e}");
        assert_eq!(e["error"]["code"], code, "{what}: error code: {e}");
        assert!(
            e["error"]["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: error message: {e}"
        );
        match reply_to {
            Some(id) => assert_eq!(e["reply_to"], id, "{what}: {e}"),
            None => assert!(e.get("reply_to").is_none(), "{what}: {e}"),
        }
        alice_ws.ping(100 + n as u64).await;
    }

    // Text that is not UTF-8 (a raw frame; no client API sends one): closed with 1007, that
    // session only.
    let victim = cluster.connect(0, &bob).await;
    let raw = Frame::message(
        vec![b'{', 0xff, 0xfe, 0xc3, 0x28, b'}'],
        OpCode::Data(Data::Text),
        true,
    );
    assert!(victim.try_send(WsMessage::Frame(raw)).await);
    let closed = eventually(WAIT, || victim.ended() || victim.closed().is_some()).await;
    assert!(
        closed,
        "a text frame of invalid UTF-8 did not end the session"
    );
    assert_eq!(
        victim.closed().map(|c| c.0),
        Some(1007),
        "close code for invalid UTF-8"
    );
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
    // Each kind counted once per bad frame (the counters moved before the answers went out).
    for ((kind, n), before) in BAD_INPUT_KINDS.iter().zip(&bad_input_before) {
        assert_eq!(
            cluster
                .metric_sample(&gw, BAD_INPUT, &[("kind", kind)])
                .await,
            Some(before + n),
            "{BAD_INPUT}{{kind=\"{kind}\"}}"
        );
    }

    // ---- garbage bytes at the HTTP ports: 400, then the connection closes ----
    for url in &cluster.role_http_urls() {
        let addr = url.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 GARBAGE \r\n\r\n\xff\xfe")
            .await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "{url}: the connection stayed open after garbage: {read:?}"
        );
        let answer = String::from_utf8_lossy(&buf);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{url}: answer to garbage: {answer:.300}"
        );
    }

    // ---- the mesh ports ----
    // Garbage datagrams never become a connection, so they can reach neither a handshake's
    // end nor the frame decoder. A peer with a certificate of another CA fails its handshake
    // (counted); its attempt, sent after the garbage, is also the sign that the garbage was
    // read. A peer of the cluster that sends a frame that does not decode has it refused
    // (counted) and the process goes on.
    let foreign_dir = tempfile::tempdir().expect("temp dir");
    shared::mesh::tls::generate_dev_certs(foreign_dir.path()).expect("foreign certificates");
    let foreign = mesh_client(foreign_dir.path());
    let member = mesh_client(&cluster.data_dir.join("tls"));
    let mut targets: Vec<(String, SocketAddr, String)> = cluster
        .channel_servers
        .iter()
        .map(|c| (c.id.clone(), c.mesh_addr, c.http.clone()))
        .collect();
    targets.push((
        "admin-server".into(),
        cluster.admin_mesh,
        cluster.admin_http.clone(),
    ));
    for (i, (name, addr, base)) in targets.iter().enumerate() {
        let (bad_frames, failures) = mesh_counters(&cluster, base).await;
        send_garbage_udp(*addr, 300, 0x9e37_79b9_7f4a_7c15 ^ i as u64);
        let refused = tokio::time::timeout(WAIT, foreign.connect(*addr)).await;
        assert!(
            matches!(refused, Ok(Err(_))),
            "{name}: a peer of another CA got a connection (or no answer)"
        );
        cluster
            .wait_metric(
                base,
                "switchboard_mesh_handshake_failures_total",
                &[],
                "the foreign handshake counted",
                |n| n >= failures + 1.0,
            )
            .await;
        let (bad_after, failures_after) = mesh_counters(&cluster, base).await;
        assert_eq!(
            (bad_after, failures_after),
            (bad_frames, failures + 1.0),
            "{name}: garbage datagrams counted as bad frames or handshakes"
        );

        let conn = tokio::time::timeout(WAIT, member.connect(*addr))
            .await
            .unwrap_or_else(|_| panic!("{name}: mesh connect timed out"))
            .unwrap_or_else(|e| panic!("{name}: mesh connect: {e}"));
        let (mut w, _r) = conn.open().await.expect("open a mesh stream");
        // Length 6, protocol version 1, then bytes that are no frame.
        let garbage = tokio_tungstenite::tungstenite::Bytes::from_static(&[
            0, 0, 0, 6, 0, 1, 0xff, 0xff, 0xff, 0xff,
        ]);
        w.send_bytes(&garbage).await.expect("send a bad frame");
        w.finish();
        cluster
            .wait_metric(
                base,
                "switchboard_mesh_bad_frames_total",
                &[],
                "the bad frame counted",
                |n| n == bad_frames + 1.0,
            )
            .await;
        conn.close("done");
    }

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
