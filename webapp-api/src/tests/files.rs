//! Files through the real admin and channel servers: announced, uploaded to their URL (as a
//! body or a multipart field), shared in a message, served to those who can see them,
//! listed, and deleted.

use super::*;

/// Starts an upload of `bytes` as `name`; returns (file id, upload URL).
async fn announce(s: &Server, token: &str, name: &str, len: usize) -> (String, String) {
    let v = s
        .ok(
            "files.getUploadURLExternal",
            token,
            json!({"filename": name, "length": len}),
        )
        .await;
    (
        v["file_id"].as_str().expect("file_id").to_string(),
        v["upload_url"].as_str().expect("upload_url").to_string(),
    )
}

async fn post_bytes(s: &Server, url: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let resp = s
        .http
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("upload");
    (resp.status().as_u16(), resp.text().await.expect("text"))
}

async fn get_file(s: &Server, url: &str, token: Option<&str>) -> (u16, Vec<u8>, String) {
    let mut req = s.http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("download");
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, resp.bytes().await.expect("bytes").to_vec(), kind)
}

/// The newest message of `channel`, as `conversations.history` gives it.
async fn latest(s: &Server, token: &str, channel: &str) -> Value {
    s.ok(
        "conversations.history",
        token,
        json!({"channel": channel, "limit": 1}),
    )
    .await["messages"][0]
        .clone()
}

/// The `file_shared` event relayed for `file`, with the channel whose sessions get it: waits
/// at most 10 s for it.
async fn file_shared(s: &Server, file: &str) -> (Option<ChannelId>, Value) {
    file_event(s, "file_shared", file).await
}

/// The event of `kind` relayed for `file`, with the channel whose sessions get it: waits at
/// most 10 s for it.
async fn file_event(s: &Server, kind: &str, file: &str) -> (Option<ChannelId>, Value) {
    for _ in 0..200 {
        for e in s.relayed_events() {
            if let shared::protocol::UserEvent::Notice {
                members_of, event, ..
            } = e
            {
                let event: Value = serde_json::from_str(&event).expect("JSON");
                if event["type"] == kind && event["file_id"] == file {
                    return (members_of, event);
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no {kind} for {file}");
}

fn ids(v: &Value) -> Vec<String> {
    v["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn files_are_uploaded_shared_served_listed_and_deleted() {
    let s = Server::start_with_cluster().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let general = s.general().await;

    // Uploaded as the body (what slack_sdk sends), shared in #general with a comment.
    let csv: Vec<u8> = b"quarter,revenue\nQ3,42\n".repeat(1000);
    let (report, url) = announce(&s, &alice, "q3 report.csv", csv.len()).await;
    assert!(url.contains("/upload/v1/"), "{url}");
    s.err(
        "files.completeUploadExternal",
        &alice,
        json!({"files": json!([{"id": report}]).to_string(), "channel_id": general}),
        "invalid_arguments",
    )
    .await;
    let (status, text) =
        post_bytes(&s, &url, "application/x-www-form-urlencoded", csv.clone()).await;
    assert_eq!(
        (status, text.as_str()),
        (200, format!("OK - {}", csv.len()).as_str())
    );
    let done = s
        .ok(
            "files.completeUploadExternal",
            &alice,
            json!({
                "files": json!([{"id": report, "title": "Q3 report"}]).to_string(),
                "channel_id": general,
                "initial_comment": "numbers are in",
            }),
        )
        .await;
    let file = &done["files"][0];
    assert_eq!(file["id"], report.as_str());
    assert_eq!(file["title"], "Q3 report");
    assert_eq!(file["name"], "q3 report.csv");
    assert_eq!(file["mimetype"], "text/csv");
    assert_eq!(file["size"], csv.len());
    assert_eq!(file["channels"], json!([general]));
    let url_private = file["url_private"].as_str().unwrap().to_string();
    // The sharing message, in history with the file.
    let history = s
        .ok(
            "conversations.history",
            &bob,
            json!({"channel": general, "limit": 1}),
        )
        .await;
    let shared = &history["messages"][0];
    assert_eq!(shared["text"], "numbers are in", "{shared}");
    assert_eq!(shared["upload"], true);
    assert_eq!(shared["subtype"], "file_share");
    assert_eq!(shared["files"][0]["id"], report.as_str(), "{shared}");
    // And `file_shared`, for the sessions that follow the channel.
    let announced = file_shared(&s, &report).await;
    assert_eq!(announced.0, Some(ChannelId(general.clone())));
    assert_eq!(announced.1["channel_id"], general.as_str());
    assert_eq!(announced.1["user_id"], s.user_id("alice"));
    assert_eq!(announced.1["file"]["id"], report.as_str());
    assert_eq!(announced.1["event_ts"], shared["ts"]);
    // Served to a reader of the channel, not without a token.
    let (status, bytes, kind) = get_file(&s, &url_private, Some(&bob)).await;
    assert_eq!((status, kind.as_str()), (200, "text/csv"));
    assert_eq!(bytes, csv);
    assert_eq!(get_file(&s, &url_private, None).await.0, 401);
    assert_eq!(get_file(&s, &url_private, Some("xoxp-nope")).await.0, 401);
    // The URL took its bytes once.
    assert_eq!(
        post_bytes(&s, &url, "text/plain", b"again".to_vec())
            .await
            .0,
        404
    );

    // Uploaded as a multipart field (as `curl -F`), shared in a private channel.
    let secret = channel_id(
        &s.ok(
            "conversations.create",
            &alice,
            json!({"name": "file-secrets", "is_private": true}),
        )
        .await,
    );
    let png: Vec<u8> = (0..5000u32).map(|n| (n * 7) as u8).collect();
    let (plan, url) = announce(&s, &alice, "plan.png", png.len()).await;
    let boundary = "XyZboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"filename\"; filename=\"plan.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&png);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (status, _) = post_bytes(
        &s,
        &url,
        &format!("multipart/form-data; boundary={boundary}"),
        body,
    )
    .await;
    assert_eq!(status, 200);
    let done = s
        .ok(
            "files.completeUploadExternal",
            &alice,
            json!({"files": json!([{"id": plan}]).to_string(), "channels": secret}),
        )
        .await;
    let plan_url = done["files"][0]["url_private"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(get_file(&s, &plan_url, Some(&alice)).await.1, png);
    // Bob is not in the private channel: the file does not exist for him.
    assert_eq!(get_file(&s, &plan_url, Some(&bob)).await.0, 404);
    s.err("files.info", &bob, json!({"file": plan}), "file_not_found")
        .await;
    let info = s.ok("files.info", &alice, json!({"file": plan})).await;
    assert_eq!(info["file"]["mimetype"], "image/png");

    // Listed: what each can see, newest first; by channel and user.
    assert_eq!(
        ids(&s.ok("files.list", &alice, json!({})).await),
        [plan.clone(), report.clone()]
    );
    assert_eq!(
        ids(&s.ok("files.list", &bob, json!({})).await),
        std::slice::from_ref(&report)
    );
    assert_eq!(
        ids(&s
            .ok("files.list", &alice, json!({"channel": general}))
            .await),
        std::slice::from_ref(&report)
    );
    assert!(ids(&s
        .ok("files.list", &alice, json!({"user": s.user_id("bob")}))
        .await)
    .is_empty());
    let page = s.ok("files.list", &alice, json!({"limit": 1})).await;
    assert_eq!(ids(&page), std::slice::from_ref(&plan));
    let cursor = page["response_metadata"]["next_cursor"].as_str().unwrap();
    assert_eq!(
        ids(&s
            .ok("files.list", &alice, json!({"limit": 1, "cursor": cursor}))
            .await),
        std::slice::from_ref(&report)
    );

    // Editing the sharing message's text keeps its files.
    let share_ts = shared["ts"].as_str().unwrap().to_string();
    let edited = s
        .ok(
            "chat.update",
            &alice,
            json!({"channel": general, "ts": share_ts, "text": "numbers are in (final)"}),
        )
        .await;
    assert_eq!(
        edited["message"]["files"][0]["id"],
        report.as_str(),
        "{edited}"
    );
    let kept = latest(&s, &bob, &general).await;
    assert_eq!(kept["text"], "numbers are in (final)");
    assert_eq!(kept["files"][0]["title"], "Q3 report", "{kept}");

    // Deleted by its uploader only.
    s.err(
        "files.delete",
        &bob,
        json!({"file": report}),
        "cant_delete_file",
    )
    .await;
    s.ok("files.delete", &alice, json!({"file": report})).await;
    assert_eq!(get_file(&s, &url_private, Some(&alice)).await.0, 404);
    // The message that shared it shows Slack's tombstone in its place, with its text, and the
    // channel's sessions hear `file_deleted`.
    let gone = latest(&s, &bob, &general).await;
    assert_eq!(gone["ts"], share_ts.as_str());
    assert_eq!(gone["text"], "numbers are in (final)");
    assert_eq!(
        gone["files"],
        json!([{"id": report, "mode": "tombstone"}]),
        "{gone}"
    );
    let deleted = file_event(&s, "file_deleted", &report).await;
    assert_eq!(deleted.0, Some(ChannelId(general.clone())));
    assert_eq!(deleted.1["channel_ids"], json!([general]));
    s.err(
        "files.info",
        &alice,
        json!({"file": report}),
        "file_not_found",
    )
    .await;
    s.err(
        "files.delete",
        &alice,
        json!({"file": "F../../x"}),
        "file_not_found",
    )
    .await;
    // Times past any date are only far bounds.
    let far = s
        .ok(
            "files.list",
            &alice,
            json!({"ts_to": u64::MAX.to_string(), "ts_from": "0"}),
        )
        .await;
    assert_eq!(ids(&far), std::slice::from_ref(&plan));
    s.stop().await;
}

#[tokio::test]
async fn uploads_are_bounded_and_their_urls_checked() {
    let s = Server::start_with_cluster_and(|c| c.webapp.max_file_bytes = 1000).await;
    let alice = s.token("alice");
    s.err(
        "files.getUploadURLExternal",
        &alice,
        json!({"filename": "big.bin", "length": 1001}),
        "file_too_large",
    )
    .await;
    for bad in [
        json!({"length": 10}),
        json!({"filename": "a/b", "length": 10}),
        json!({"filename": "a.txt", "length": "ten"}),
    ] {
        s.err(
            "files.getUploadURLExternal",
            &alice,
            bad,
            "invalid_arguments",
        )
        .await;
    }
    let (id, url) = announce(&s, &alice, "small.txt", 10).await;
    // More than announced.
    let (status, text) = post_bytes(&s, &url, "text/plain", vec![b'x'; 11]).await;
    assert_eq!(
        (status, text.as_str()),
        (413, "file_larger_than_its_length")
    );
    // A ticket that is not ours, or altered.
    let forged = format!("{}x", url);
    assert_eq!(
        post_bytes(&s, &forged, "text/plain", b"hi".to_vec())
            .await
            .0,
        403
    );
    let base = url.split("/upload/v1/").next().unwrap();
    assert_eq!(
        post_bytes(
            &s,
            &format!("{base}/upload/v1/nonsense"),
            "text/plain",
            b"hi".to_vec()
        )
        .await
        .0,
        403
    );
    // Another user's file cannot be completed by someone else.
    assert_eq!(
        post_bytes(&s, &url, "text/plain", b"0123456789".to_vec())
            .await
            .0,
        200
    );
    s.err(
        "files.completeUploadExternal",
        &s.token("bob"),
        json!({"files": json!([{"id": id}]).to_string()}),
        "file_not_found",
    )
    .await;
    s.err(
        "files.completeUploadExternal",
        &alice,
        json!({"files": "not json"}),
        "invalid_arguments",
    )
    .await;
    // Completed without a channel: the uploader's alone.
    let done = s
        .ok(
            "files.completeUploadExternal",
            &alice,
            json!({"files": json!([{"id": id}]).to_string()}),
        )
        .await;
    assert_eq!(done["files"][0]["channels"], json!([]));
    s.err(
        "files.info",
        &s.token("bob"),
        json!({"file": id}),
        "file_not_found",
    )
    .await;
    s.stop().await;
}

/// Uploads `bytes` as `name` and shares it in `channel` (if any) with `title` and `comment`;
/// returns its id.
async fn shared_file(
    s: &Server,
    token: &str,
    name: &str,
    title: &str,
    channel: Option<&str>,
    comment: &str,
) -> String {
    let bytes = format!("contents of {name}").into_bytes();
    let (id, url) = announce(s, token, name, bytes.len()).await;
    assert_eq!(post_bytes(s, &url, "text/plain", bytes).await.0, 200);
    let mut params = json!({
        "files": json!([{"id": id, "title": title}]).to_string(),
        "initial_comment": comment,
    });
    if let Some(c) = channel {
        params["channel_id"] = c.into();
    }
    s.ok("files.completeUploadExternal", token, params).await;
    id
}

/// The ids of the files `search.files` (or `search.all`'s `files`) gives for `query`.
async fn found_files(s: &Server, method: &str, token: &str, query: &str) -> Vec<String> {
    let v = s
        .ok(method, token, json!({"query": query, "sort": "timestamp"}))
        .await;
    match_ids(&v["files"]["matches"])
}

/// The ids of an array of file objects.
fn match_ids(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("matches")
        .iter()
        .map(|f| f["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn search_files_finds_shared_files_by_name_title_or_comment_where_the_caller_reads() {
    let s = Server::start_with_cluster().await;
    let (alice, bob) = (s.token("alice"), s.token("bob"));
    let general = s.general().await;
    let private = channel_id(
        &s.ok(
            "conversations.create",
            &alice,
            json!({"name": "finance", "is_private": true}),
        )
        .await,
    );
    let report = shared_file(
        &s,
        &alice,
        "q3-report.csv",
        "Quarterly revenue",
        Some(&general),
        "numbers are in",
    )
    .await;
    let plan = shared_file(
        &s,
        &alice,
        "budget-plan.xlsx",
        "Revenue plan",
        Some(&private),
        "",
    )
    .await;
    let _unshared = shared_file(&s, &alice, "revenue-draft.txt", "draft", None, "").await;
    s.post_ts(&alice, &general, "revenue is up this quarter")
        .await;
    // The words come from the index: wait for it.
    for _ in 0..100 {
        if found_files(&s, "search.files", &alice, "revenue")
            .await
            .len()
            == 2
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // By title, by name, by the sharing message's text; newest first.
    assert_eq!(
        found_files(&s, "search.files", &alice, "revenue").await,
        [plan.clone(), report.clone()]
    );
    assert_eq!(
        found_files(&s, "search.files", &alice, "report").await,
        std::slice::from_ref(&report)
    );
    assert_eq!(
        found_files(&s, "search.files", &alice, "numbers").await,
        std::slice::from_ref(&report)
    );
    // Only in conversations the caller reads; a file never shared is found by no one.
    assert_eq!(
        found_files(&s, "search.files", &bob, "revenue").await,
        std::slice::from_ref(&report)
    );
    assert!(found_files(&s, "search.files", &alice, "draft")
        .await
        .is_empty());
    // The query's modifiers apply.
    assert_eq!(
        found_files(&s, "search.files", &alice, "revenue in:#finance").await,
        std::slice::from_ref(&plan)
    );
    let file = s
        .ok("search.files", &bob, json!({"query": "quarterly"}))
        .await;
    assert_eq!(file["files"]["total"], 1);
    assert_eq!(file["files"]["matches"][0]["title"], "Quarterly revenue");
    assert_eq!(file["files"]["matches"][0]["name"], "q3-report.csv");
    assert_eq!(file["files"]["paging"]["page"], 1);

    // search.all: both, from one query. A message search reads messages' text alone.
    let all = s
        .ok(
            "search.all",
            &bob,
            json!({"query": "revenue", "sort": "timestamp"}),
        )
        .await;
    assert_eq!(all["messages"]["total"], 1, "{all}");
    assert_eq!(
        all["messages"]["matches"][0]["text"],
        "revenue is up this quarter"
    );
    assert_eq!(
        match_ids(&all["files"]["matches"]),
        std::slice::from_ref(&report)
    );
    assert_eq!(
        found_files(&s, "search.all", &alice, "revenue").await,
        [plan.clone(), report.clone()]
    );

    // A deleted file is no longer found.
    s.ok("files.delete", &alice, json!({"file": plan})).await;
    assert_eq!(
        found_files(&s, "search.files", &alice, "revenue").await,
        [report]
    );
    s.err(
        "search.files",
        &alice,
        json!({"query": ""}),
        "invalid_arguments",
    )
    .await;
}
