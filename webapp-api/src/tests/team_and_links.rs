//! `team.info`, `rtm.start` (answered as `rtm.connect`) and `chat.getPermalink`, whose messages
//! are posted through the real admin and channel servers ([`super::cluster`]).

use super::*;

#[tokio::test]
async fn team_info_describes_the_callers_workspace_only() {
    let s = Server::start().await;
    let bob = s.token("bob");
    let ws = s.demo["workspace"].as_str().unwrap().to_string();
    let v = s.ok("team.info", &bob, json!({})).await;
    let team = &v["team"];
    assert_eq!(team["id"], ws.as_str());
    assert_eq!(team["name"], "demo");
    assert_eq!(team["domain"], "demo");
    assert_eq!(team["icon"]["image_default"], true);
    assert!(team["url"].as_str().unwrap().starts_with("http://"), "{v}");
    // Naming its own workspace is the same; any other is not found, existing or not.
    assert_eq!(
        s.ok("team.info", &bob, json!({"team": ws})).await["team"],
        v["team"]
    );
    let acme = crate::create_workspace(&s.store, "acme").await.unwrap();
    for other in [acme.id.0.as_str(), "T0NOSUCHTEAM", "not a team"] {
        s.err("team.info", &bob, json!({"team": other}), "team_not_found")
            .await;
    }
    let (_, mallory) = s
        .user_in("acme", "mallory", crate::UserKind::default())
        .await;
    let v = s.ok("team.info", &mallory, json!({})).await;
    assert_eq!(v["team"]["id"], acme.id.0.as_str());
    assert_eq!(v["team"]["name"], "acme");
    s.err("team.info", &mallory, json!({"team": ws}), "team_not_found")
        .await;
    let (status, v) = s.call("team.info", None, json!({})).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::OK, Some("not_authed"))
    );
    s.stop().await;
}

#[tokio::test]
async fn rtm_start_answers_like_rtm_connect() {
    let s = Server::start().await;
    let bob = s.token("bob");
    let connect = s.ok("rtm.connect", &bob, json!({})).await;
    let start = s.ok("rtm.start", &bob, json!({})).await;
    // The gateways are handed out round-robin, so the URLs differ in their gateway only.
    let url = |v: &Value| v["url"].as_str().unwrap().to_string();
    assert_ne!(url(&connect), url(&start));
    for v in [&connect, &start] {
        assert!(url(v).ends_with(&format!("/rtm?token={bob}")), "{v}");
    }
    let rest = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("url");
        v
    };
    assert_eq!(rest(&connect), rest(&start));
    assert_eq!(start["self"]["id"], s.user_id("bob"));
    assert_eq!(start["team"]["id"], s.demo["workspace"]);
    // Slack's presence_sub option reaches the gateway on the URL.
    for method in ["rtm.connect", "rtm.start"] {
        let v = s.ok(method, &bob, json!({ "presence_sub": true })).await;
        assert!(
            url(&v).ends_with(&format!("/rtm?token={bob}&presence_sub=1")),
            "{v}"
        );
    }
    s.stop().await;
}

/// `chat.getPermalink` as `token`, with `host` as the `Host` header when given.
async fn permalink(s: &Server, token: &str, host: Option<&str>, body: Value) -> Value {
    let mut req = s
        .http
        .post(format!("{}/api/chat.getPermalink", s.base))
        .bearer_auth(token)
        .json(&body);
    if let Some(host) = host {
        req = req.header("host", host);
    }
    let resp = req.send().await.expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("json answer")
}

fn bare(ts: &Value) -> String {
    ts.as_str().unwrap().replace('.', "")
}

#[tokio::test]
async fn permalinks_point_at_messages_the_caller_can_read() {
    let s = Server::start_with_cluster().await;
    let (alice, bob, carol) = (s.token("alice"), s.token("bob"), s.token("carol"));
    let general = s.general().await;
    let posted = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "link me"}),
        )
        .await;
    let ts = posted["ts"].clone();

    // The base is the Web API as the client addressed it.
    let v = permalink(
        &s,
        &bob,
        None,
        json!({"channel": general, "message_ts": ts}),
    )
    .await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["channel"], general.as_str());
    assert_eq!(
        v["permalink"],
        format!("{}/archives/{general}/p{}", s.base, bare(&ts))
    );
    let v = permalink(
        &s,
        &bob,
        Some("Chat.Example.com:8443"),
        json!({"channel": general, "message_ts": ts}),
    )
    .await;
    assert_eq!(
        v["permalink"],
        format!(
            "http://chat.example.com:8443/archives/{general}/p{}",
            bare(&ts)
        )
    );
    // The channel by name, as the other channel methods take it; the answer names its id.
    let v = permalink(
        &s,
        &bob,
        None,
        json!({"channel": "#general", "message_ts": ts}),
    )
    .await;
    assert_eq!(v["channel"], general.as_str());

    // A reply links into its thread.
    let reply = s
        .ok(
            "chat.postMessage",
            &bob,
            json!({"channel": general, "text": "a reply", "thread_ts": ts}),
        )
        .await;
    let v = permalink(
        &s,
        &carol,
        None,
        json!({"channel": general, "message_ts": reply["ts"]}),
    )
    .await;
    assert_eq!(
        v["permalink"],
        format!(
            "{}/archives/{general}/p{}?thread_ts={}&cid={general}",
            s.base,
            bare(&reply["ts"]),
            ts.as_str().unwrap()
        )
    );

    // Public channels are readable without joining; private ones and DMs by members only.
    let open = channel_id(
        &s.ok("conversations.create", &alice, json!({"name": "open"}))
            .await,
    );
    let secret = channel_id(
        &s.ok(
            "conversations.create",
            &alice,
            json!({"name": "secret", "is_private": true}),
        )
        .await,
    );
    let dm = channel_id(
        &s.ok(
            "conversations.open",
            &alice,
            json!({"users": s.user_id("bob")}),
        )
        .await,
    );
    for channel in [&open, &secret, &dm] {
        let m = s
            .ok(
                "chat.postMessage",
                &alice,
                json!({"channel": channel, "text": "here"}),
            )
            .await;
        let body = json!({"channel": channel, "message_ts": m["ts"]});
        let v = permalink(&s, &alice, None, body.clone()).await;
        assert_eq!(v["ok"], true, "{v}");
        let v = permalink(&s, &carol, None, body.clone()).await;
        if channel == &open {
            assert_eq!(v["ok"], true, "{v}");
        } else {
            assert_eq!(v["error"], "channel_not_found", "{v}");
        }
        let v = permalink(&s, &bob, None, body).await;
        assert_eq!(v["ok"], channel != &secret, "{v}");
    }

    // Missing, malformed, unknown and deleted messages.
    let doomed = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "doomed"}),
        )
        .await;
    s.ok(
        "chat.delete",
        &alice,
        json!({"channel": general, "ts": doomed["ts"]}),
    )
    .await;
    for (body, error) in [
        (json!({"channel": general}), "invalid_arguments"),
        (
            json!({"channel": general, "message_ts": ""}),
            "invalid_arguments",
        ),
        (
            json!({"channel": general, "message_ts": "yesterday"}),
            "message_not_found",
        ),
        (
            json!({"channel": general, "message_ts": "1.000001"}),
            "message_not_found",
        ),
        (
            json!({"channel": general, "message_ts": doomed["ts"]}),
            "message_not_found",
        ),
        (
            json!({"channel": open, "message_ts": ts}),
            "message_not_found",
        ),
        (json!({"message_ts": ts}), "channel_not_found"),
        (
            json!({"channel": "C0NOSUCHONE", "message_ts": ts}),
            "channel_not_found",
        ),
    ] {
        let v = permalink(&s, &bob, None, body.clone()).await;
        assert_eq!(v["error"], error, "{body} -> {v}");
    }
    s.stop().await;
}

/// With `webapp.public_url` (the address behind a proxy), every link in answers starts there,
/// whatever `Host` the request carried: permalinks (and search's, the same for a reply as
/// `chat.getPermalink`'s), `auth.test`'s and `team.info`'s `url`, webhook URLs.
#[tokio::test]
async fn links_start_at_the_public_url_when_one_is_set() {
    let s = Server::start_with_cluster_and(|c| {
        c.webapp.public_url = "https://chat.example.com/slack".into();
    })
    .await;
    let alice = s.token("alice");
    let general = s.general().await;
    let parent = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "proxied parent"}),
        )
        .await;
    let reply = s
        .ok(
            "chat.postMessage",
            &alice,
            json!({"channel": general, "text": "proxied reply", "thread_ts": parent["ts"]}),
        )
        .await;
    let base = "https://chat.example.com/slack/";
    let want = format!(
        "{base}archives/{general}/p{}?thread_ts={}&cid={general}",
        bare(&reply["ts"]),
        parent["ts"].as_str().unwrap()
    );
    let v = permalink(
        &s,
        &alice,
        Some("internal-host:8080"),
        json!({"channel": general, "message_ts": reply["ts"]}),
    )
    .await;
    assert_eq!(v["permalink"], want.as_str(), "{v}");
    assert_eq!(s.ok("auth.test", &alice, json!({})).await["url"], base);
    assert_eq!(
        s.ok("team.info", &alice, json!({})).await["team"]["url"],
        base
    );
    let hook = s
        .ok("hooks.create", &alice, json!({"channel": general}))
        .await;
    assert!(
        hook["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{base}hooks/")),
        "{hook}"
    );
    // Search finds the reply (once indexed) with the same link as chat.getPermalink's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = s
            .ok("search.messages", &alice, json!({"query": "proxied reply"}))
            .await;
        let hit = found["messages"]["matches"]
            .as_array()
            .and_then(|m| m.iter().find(|h| h["ts"] == reply["ts"]).cloned());
        if let Some(hit) = hit {
            assert_eq!(hit["permalink"], want.as_str(), "{hit}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never indexed: {found}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    s.stop().await;
}
