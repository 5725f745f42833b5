//! Flannel end to end: real `switchboard` processes on 127.0.0.1 (admin server, a channel
//! server, the Web API from the shared harness; Flannel instances and gateways started here,
//! each gateway pointed at its own Flannel).
//!
//! - A change made through the Web API (profile, channel created, joined, renamed, read
//!   position) is seen in the boot data of both Flannels within a bounded wait.
//! - The gateway's `hello` carries the boot data of its Flannel; without a reachable Flannel
//!   it goes without, and the session still works.
//! - A restarted Flannel loses nothing (it reloads lazily, changes made while it was down
//!   included); a Flannel over its memory budget evicts and reloads correctly.
//! - Bad and foreign-workspace queries get clear Slack-style errors, counted in metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

/// How long a change may take to show at a Flannel in these tests (the target is 100 ms at
/// p99; a loaded CI machine gets slack).
const FRESH_WITHIN: Duration = Duration::from_secs(5);

/// Starts a Flannel on `addr`, which must be free (a restart on the port the test's own
/// Flannel just left); returns its base URL. A new Flannel goes on a port picked by
/// [`Cluster::spawn_flannel`], which starts it again elsewhere if the port was taken.
fn flannel_at(cluster: &Cluster, name: &str, addr: SocketAddr, extra: &[&str]) -> String {
    let mut sets = vec![
        format!("flannel.http_addr={}", quoted(&addr.to_string())),
        format!("flannel.webapp_url={}", quoted(&cluster.webapp)),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    cluster.spawn_extra(name, "flannel", &sets);
    format!("http://{addr}")
}

/// Starts a gateway whose boot data comes from `flannel_url` on a free port (see
/// [`Cluster::spawn_extra_http`]), with `extra` settings; returns (ws URL, base URL).
async fn gateway(
    cluster: &Cluster,
    name: &str,
    flannel_url: &str,
    extra: &[&str],
) -> (String, String) {
    let base = cluster
        .spawn_extra_http(name, "gateway", |addr| {
            let mut settings = vec![
                format!("gateway.http_addr={}", quoted(&addr.to_string())),
                format!("gateway.webapp_url={}", quoted(&cluster.webapp)),
                format!("gateway.flannel_urls=[{}]", quoted(flannel_url)),
            ];
            settings.extend(extra.iter().map(|s| s.to_string()));
            settings
        })
        .await;
    let ws_url = format!("{}/rtm", base.replacen("http://", "ws://", 1));
    (ws_url, base)
}

/// Waits until the Flannel at `base` is healthy and follows the admin server (its change
/// events flow).
async fn wait_flannel_linked(cluster: &Cluster, base: &str) {
    cluster.wait_healthy(base).await;
    cluster
        .wait_metric(
            base,
            "switchboard_flannel_admin_link_up",
            &[],
            "the link to the admin server up",
            |v| v == 1.0,
        )
        .await;
}

async fn boot(cluster: &Cluster, base: &str, token: &str) -> Value {
    let (status, v) = cluster.get_json_status(base, "/boot", Some(token)).await;
    assert_eq!(status, 200, "boot at {base}: {v}");
    assert_eq!(v["ok"], true, "boot at {base}: {v}");
    v
}

fn find<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x["id"] == id)
}

fn ids(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Polls the boot data of `token` at every Flannel until `pred` holds at all of them;
/// returns how long it took.
async fn wait_boot(
    cluster: &Cluster,
    flannels: &[String],
    token: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    for base in flannels {
        loop {
            let v = boot(cluster, base, token).await;
            if pred(&v) {
                break;
            }
            assert!(
                start.elapsed() < FRESH_WITHIN,
                "{base} never showed {what} within {FRESH_WITHIN:?}; boot: {v}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let took = start.elapsed();
    eprintln!("flannel: {what} visible at every flannel after {took:?}");
    took
}

fn opts(workspaces: &[(&str, &[&str])]) -> ClusterOpts {
    ClusterOpts {
        num_gateways: 0,
        num_channel_servers: 1,
        workspaces: workspaces
            .iter()
            .map(|(w, users)| (w.to_string(), users.iter().map(|u| u.to_string()).collect()))
            .collect(),
        sets: Vec::new(),
        cql: None,
        bots: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_api_changes_reach_both_flannels_and_the_gateway_hello() {
    let cluster = Cluster::start(opts(&[
        ("acme", &["alice", "bob", "carol"]),
        ("globex", &["gina"]),
    ]))
    .await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let carol = cluster.user("acme", "carol").clone();
    let gina = cluster.user("globex", "gina").clone();

    let flannels = vec![
        cluster.spawn_flannel("fl-1", &[]).await,
        cluster.spawn_flannel("fl-2", &[]).await,
    ];
    let gateways = [
        gateway(&cluster, "gw-1", &flannels[0], &[]).await,
        // Sessions on threads of their own (as on 8 cores or more), whose hello counts unread
        // messages through the process's sockets all the same.
        gateway(
            &cluster,
            "gw-2",
            &flannels[1],
            &["gateway.session_threads=2"],
        )
        .await,
    ];
    for f in &flannels {
        wait_flannel_linked(&cluster, f).await;
    }
    for (_, base) in &gateways {
        cluster.wait_healthy(base).await;
    }

    // A channel everyone is in, and a private one only alice is in.
    let town = cluster.create_channel(&alice, "town").await;
    cluster.join(&bob, &town).await;
    cluster.join(&carol, &town).await;
    let private = cluster
        .api_ok(
            "conversations.create",
            &alice.token,
            json!({"name": "plans", "is_private": true}),
        )
        .await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let globex_chan = cluster.create_channel(&gina, "globex-only").await;

    // First boots load the workspace at each Flannel; sized to the user.
    for base in &flannels {
        let v = boot(&cluster, base, &alice.token).await;
        assert_eq!(v["self"]["id"], alice.id.as_str());
        assert_eq!(v["team"]["id"], alice.workspace.as_str());
        assert_eq!(v["team"]["name"], "acme");
        assert_eq!(ids(&v["channels"]), {
            let mut c = vec![town.clone(), private.clone()];
            c.sort();
            c
        });
        let mut users = vec![alice.id.clone(), bob.id.clone(), carol.id.clone()];
        users.sort();
        assert_eq!(ids(&v["users"]), users, "{v}");
        // Each with the email `switchboard admin create-user --email` gave it.
        assert_eq!(
            find(&v["users"], &bob.id).map(|u| &u["email"]),
            Some(&json!(bob.email())),
            "{v}"
        );
        assert!(
            !v.to_string().contains(&gina.id),
            "no other workspace's user"
        );
    }

    // A profile change.
    cluster
        .api_ok(
            "users.profile.set",
            &bob.token,
            json!({"profile": {"real_name": "Bob Builder", "display_name": "bobby"}}),
        )
        .await;
    wait_boot(
        &cluster,
        &flannels,
        &alice.token,
        "bob's new profile",
        |v| {
            find(&v["users"], &bob.id)
                .is_some_and(|u| u["real_name"] == "Bob Builder" && u["display_name"] == "bobby")
        },
    )
    .await;

    // A new channel (its creator is in it), a join, a rename.
    let launch = cluster.create_channel(&alice, "launch").await;
    wait_boot(
        &cluster,
        &flannels,
        &alice.token,
        "the created channel",
        |v| find(&v["channels"], &launch).is_some_and(|c| c["name"] == "launch"),
    )
    .await;
    cluster.join(&carol, &launch).await;
    wait_boot(&cluster, &flannels, &carol.token, "carol's join", |v| {
        find(&v["channels"], &launch).is_some()
    })
    .await;
    cluster
        .api_ok(
            "conversations.rename",
            &alice.token,
            json!({"channel": launch, "name": "launch-v2"}),
        )
        .await;
    wait_boot(&cluster, &flannels, &carol.token, "the rename", |v| {
        find(&v["channels"], &launch).is_some_and(|c| c["name"] == "launch-v2")
    })
    .await;
    // A user group, then bob in it: every Flannel's boot lists it, and among bob's own.
    let v = cluster
        .api_ok(
            "usergroups.create",
            &alice.token,
            json!({"name": "On call", "handle": "oncall"}),
        )
        .await;
    let group = v["usergroup"]["id"].as_str().unwrap().to_string();
    wait_boot(&cluster, &flannels, &bob.token, "the new group", |v| {
        v["subteams"]["all"]
            .as_array()
            .is_some_and(|all| all.iter().any(|g| g["id"] == group.as_str()))
    })
    .await;
    cluster
        .api_ok(
            "usergroups.users.update",
            &alice.token,
            json!({"usergroup": group, "users": bob.id}),
        )
        .await;
    wait_boot(&cluster, &flannels, &bob.token, "bob in the group", |v| {
        v["subteams"]["self"] == json!([group])
    })
    .await;
    let v = boot(&cluster, &flannels[0], &carol.token).await;
    assert_eq!(v["subteams"]["self"], json!([]), "carol is in none: {v}");

    // bob is in none of these: his boot does not show them.
    let v = boot(&cluster, &flannels[1], &bob.token).await;
    assert_eq!(ids(&v["channels"]), vec![town.clone()]);

    // A read position.
    let posted = cluster.post(&alice, &town, "hello town").await;
    let ts = posted["ts"].as_str().unwrap().to_string();
    let seq = seq_of(&posted);
    cluster
        .api_ok(
            "conversations.mark",
            &bob.token,
            json!({"channel": town, "ts": ts}),
        )
        .await;
    wait_boot(
        &cluster,
        &flannels,
        &bob.token,
        "bob's read position",
        |v| find(&v["channels"], &town).is_some_and(|c| c["last_read"] == seq),
    )
    .await;

    // A DM alice closes says `is_open: false` in her boot alone, until carol writes to it
    // (and a message opens it again); a channel carries no `is_open`.
    let dm = cluster
        .api_ok(
            "conversations.open",
            &alice.token,
            json!({"users": carol.id}),
        )
        .await["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dm_open = |v: &Value| find(&v["channels"], &dm).map(|c| c["is_open"].clone());
    wait_boot(&cluster, &flannels, &alice.token, "the DM, open", |v| {
        dm_open(v) == Some(json!(true))
            && find(&v["channels"], &town).is_some_and(|c| c.get("is_open").is_none())
    })
    .await;
    cluster
        .api_ok("conversations.close", &alice.token, json!({"channel": dm}))
        .await;
    wait_boot(&cluster, &flannels, &alice.token, "the DM closed", |v| {
        dm_open(v) == Some(json!(false))
    })
    .await;
    wait_boot(&cluster, &flannels, &carol.token, "carol's DM open", |v| {
        dm_open(v) == Some(json!(true))
    })
    .await;
    cluster.post(&carol, &dm, "still there?").await;
    wait_boot(
        &cluster,
        &flannels,
        &alice.token,
        "the DM opened by a message",
        |v| dm_open(v) == Some(json!(true)),
    )
    .await;

    // Lookups answer from the same data.
    let (_, v) = cluster
        .get_json_status(
            &flannels[1],
            "/users.lookup?prefix=BOB&limit=5",
            Some(&alice.token),
        )
        .await;
    assert_eq!(ids(&v["users"]), vec![bob.id.clone()], "{v}");
    let (_, v) = cluster
        .get_json_status(
            &flannels[0],
            "/users.lookup?prefix=build",
            Some(&alice.token),
        )
        .await;
    assert_eq!(ids(&v["users"]), vec![bob.id.clone()], "{v}");
    let (_, v) = cluster
        .get_json_status(
            &flannels[0],
            "/channels.lookup?prefix=launch",
            Some(&carol.token),
        )
        .await;
    assert_eq!(v["channels"][0]["name"], "launch-v2", "{v}");
    let (_, v) = cluster
        .get_json_status(
            &flannels[0],
            &format!("/users.info?user={}&token={}", carol.id, alice.token),
            None,
        )
        .await;
    assert_eq!(v["user"]["name"], "carol", "token as a parameter: {v}");

    // The gateway's hello carries its Flannel's boot data.
    for (ws_url, _) in &gateways {
        let client = Client::connect(ws_url, &alice.token, None)
            .await
            .expect("connect");
        let b = &client.hello["boot"];
        assert_eq!(
            b["self"]["id"],
            alice.id.as_str(),
            "hello: {}",
            client.hello
        );
        assert!(find(&b["channels"], &launch).is_some_and(|c| c["name"] == "launch-v2"));
        assert!(find(&b["users"], &bob.id).is_some_and(|u| u["display_name"] == "bobby"));
        assert!(b.get("ok").is_none());
        client.close().await;
    }
    // ... with `unread` where the read position and the channel's position are both known:
    // bob marked #town read at `seq`; a first session of his makes the gateway follow #town
    // and sees a few more posts, then a second session's hello has them unread. Unread are
    // the messages others posted to the channel that are still there (as history lists
    // them), not the reactions, edits, thread replies, deletions or bob's own posts that
    // also moved the channel's position.
    for (ws_url, _) in &gateways {
        let first = Client::connect(ws_url, &bob.token, None)
            .await
            .expect("connect");
        cluster
            .warm_up(&alice, std::slice::from_ref(&town), &[&first])
            .await;
        let gone = cluster
            .post(&alice, &town, "unread by bob, then deleted")
            .await;
        let kept = cluster.post(&alice, &town, "also unread by bob").await;
        cluster
            .api_ok(
                "reactions.add",
                &alice.token,
                json!({"channel": town, "timestamp": kept["ts"], "name": "eyes"}),
            )
            .await;
        cluster
            .api_ok(
                "chat.update",
                &alice.token,
                json!({"channel": town, "ts": kept["ts"], "text": format!("still unread by <@{}>", bob.id)}),
            )
            .await;
        cluster
            .api_ok(
                "chat.postMessage",
                &alice.token,
                json!({"channel": town, "text": "a reply", "thread_ts": kept["ts"]}),
            )
            .await;
        cluster.post(&bob, &town, "bob's own").await;
        cluster
            .api_ok(
                "chat.delete",
                &alice.token,
                json!({"channel": town, "ts": gone["ts"]}),
            )
            .await;
        let head = seq_of(&cluster.post(&alice, &town, "last unread by bob").await);
        first.wait_seq(&town, head, WAIT).await;
        let history = cluster
            .api_ok(
                "conversations.history",
                &bob.token,
                json!({"channel": town, "oldest": ts, "limit": 1000}),
            )
            .await;
        let others: Vec<&Value> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["user"] != bob.id.as_str())
            .collect();
        let expected = others.len() as u64;
        // Those that mention bob as they read now (the edit made one do).
        let mentions = others
            .iter()
            .filter(|m| {
                m["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(&format!("<@{}>", bob.id)))
            })
            .count() as u64;
        let second = Client::connect(ws_url, &bob.token, None)
            .await
            .expect("connect");
        assert_eq!(
            second.hello["seq"][&town], head,
            "hello reports #town's position: {}",
            second.hello
        );
        let channel = find(&second.hello["boot"]["channels"], &town)
            .unwrap_or_else(|| panic!("#town in bob's boot: {}", second.hello))
            .clone();
        assert_eq!(channel["last_read"], seq, "bob's read position: {channel}");
        let unread = channel
            .get("unread")
            .unwrap_or_else(|| panic!("no unread on #town in hello: {channel}"));
        assert_eq!(
            unread.as_u64(),
            Some(expected),
            "unread are the messages others posted since: {channel}; {history}"
        );
        assert!(expected >= 2, "some messages are unread: {channel}");
        assert_eq!(
            channel["mention_count"].as_u64(),
            Some(mentions),
            "the unread messages that mention bob: {channel}; {history}"
        );
        assert!(mentions >= 1, "{channel}");
        assert!(
            head - seq >= expected + 6,
            "the entries that are not messages to read moved the position: {channel}"
        );
        second.close().await;
        first.close().await;
    }
    // Each gateway counted (from its recent entries or a page from the owner), none fell
    // back to the entries.
    for (_, base) in &gateways {
        let metric = "switchboard_gateway_unread_counts_total";
        let mut counted = 0.0;
        for source in ["window", "owner"] {
            counted += cluster.metric(base, metric, &[("source", source)]).await;
        }
        assert!(counted >= 1.0, "{base}: {counted}");
        for source in ["failed", "late"] {
            let v = cluster.metric(base, metric, &[("source", source)]).await;
            assert_eq!(v, 0.0, "{base}: {source}");
        }
    }

    // Bad and foreign-workspace queries.
    let fl = &flannels[0];
    let (status, v) = cluster.get_json_status(fl, "/boot", None).await;
    assert_eq!((status, v["error"].as_str()), (200, Some("not_authed")));
    let (_, v) = cluster
        .get_json_status(fl, "/boot", Some("xoxp-garbage.sig"))
        .await;
    assert_eq!(v["error"], "invalid_auth");
    let (_, v) = cluster
        .get_json_status(
            fl,
            &format!("/users.info?user={}", gina.id),
            Some(&alice.token),
        )
        .await;
    assert_eq!(v["error"], "user_not_found", "another workspace's user");
    let (_, v) = cluster
        .get_json_status(
            fl,
            &format!("/channels.info?channel={globex_chan}"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        v["error"], "channel_not_found",
        "another workspace's channel"
    );
    let (_, v) = cluster
        .get_json_status(
            fl,
            &format!("/channels.info?channel={private}"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(
        v["error"], "channel_not_found",
        "a private channel bob is not in"
    );
    let (_, v) = cluster
        .get_json_status(
            fl,
            &format!("/channels.info?channel={private}"),
            Some(&carol.token),
        )
        .await;
    assert_eq!(v["error"], "channel_not_found");
    let (_, v) = cluster
        .get_json_status(fl, "/users.lookup", Some(&alice.token))
        .await;
    assert_eq!(v["error"], "invalid_prefix");
    let (_, v) = cluster
        .get_json_status(fl, "/users.lookup?prefix=a&limit=x", Some(&alice.token))
        .await;
    assert_eq!(v["error"], "invalid_limit");
    let (status, v) = cluster
        .get_json_status(fl, "/nope", Some(&alice.token))
        .await;
    assert_eq!((status, v["error"].as_str()), (404, Some("unknown_method")));
    // gina's own queries see only globex.
    let v = boot(&cluster, fl, &gina.token).await;
    assert_eq!(ids(&v["users"]), vec![gina.id.clone()]);
    assert_eq!(ids(&v["channels"]), vec![globex_chan.clone()]);
    assert!(
        cluster
            .metric(fl, "switchboard_flannel_errors_total", &[])
            .await
            >= 8.0
    );
    assert!(
        cluster
            .metric(fl, "switchboard_flannel_cache_hits_total", &[])
            .await
            > 0.0
    );
    assert!(
        cluster
            .metric(fl, "switchboard_flannel_events_applied_total", &[])
            .await
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flannel_restarts_and_evictions_lose_nothing() {
    let cluster = Cluster::start(opts(&[
        ("acme", &["alice", "bob"]),
        ("globex", &["gina"]),
        ("initech", &["ian"]),
    ]))
    .await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let gina = cluster.user("globex", "gina").clone();
    let ian = cluster.user("initech", "ian").clone();
    let general = cluster.create_channel(&alice, "general").await;
    cluster.join(&bob, &general).await;

    // Room for two workspaces only.
    let small = cluster
        .spawn_flannel("fl-small", &["flannel.max_workspaces=2"])
        .await;
    let addr: SocketAddr = small
        .trim_start_matches("http://")
        .parse()
        .expect("a Flannel's address");
    wait_flannel_linked(&cluster, &small).await;

    // Three workspaces: the least recently used leaves.
    for user in [&alice, &gina, &ian] {
        let v = boot(&cluster, &small, &user.token).await;
        assert_eq!(v["self"]["id"], user.id.as_str());
    }
    assert!(
        cluster
            .metric(&small, "switchboard_flannel_cache_evictions_total", &[])
            .await
            >= 1.0
    );
    assert_eq!(
        cluster
            .metric_sample(&small, "switchboard_flannel_cached_workspaces", &[])
            .await,
        Some(2.0),
        "the budget of two workspaces is full"
    );
    // acme was evicted; it reloads with what changed meanwhile (an event for an evicted
    // workspace is dropped: the reload must bring the change).
    cluster
        .api_ok(
            "users.profile.set",
            &bob.token,
            json!({"profile": {"display_name": "evicted-bob"}}),
        )
        .await;
    let misses = cluster
        .metric(&small, "switchboard_flannel_cache_misses_total", &[])
        .await;
    let v = boot(&cluster, &small, &alice.token).await;
    assert!(
        find(&v["users"], &bob.id).is_some_and(|u| u["display_name"] == "evicted-bob"),
        "{v}"
    );
    assert!(
        cluster
            .metric(&small, "switchboard_flannel_cache_misses_total", &[])
            .await
            > misses
    );
    assert_eq!(
        cluster
            .metric_sample(&small, "switchboard_flannel_cached_workspaces", &[])
            .await,
        Some(2.0),
        "acme came back in and another workspace went out"
    );

    // A restart loses nothing, changes made while it was down included: alice closes her DM
    // with bob and the one with herself; while Flannel is down bob writes to the first, which
    // opens it again, so the reloaded boot has it open and the other closed.
    let dm_id = |v: Value| v["channel"]["id"].as_str().unwrap().to_string();
    let with_bob = dm_id(
        cluster
            .api_ok("conversations.open", &alice.token, json!({"users": bob.id}))
            .await,
    );
    let with_self = dm_id(
        cluster
            .api_ok(
                "conversations.open",
                &alice.token,
                json!({"users": alice.id}),
            )
            .await,
    );
    for dm in [&with_bob, &with_self] {
        cluster
            .api_ok("conversations.close", &alice.token, json!({"channel": dm}))
            .await;
    }
    cluster.kill("fl-small");
    cluster
        .api_ok(
            "users.profile.set",
            &bob.token,
            json!({"profile": {"display_name": "while-down"}}),
        )
        .await;
    cluster.post(&bob, &with_bob, "back online?").await;
    let renamed = cluster.create_channel(&alice, "made-while-down").await;
    let small = flannel_at(&cluster, "fl-small", addr, &["flannel.max_workspaces=2"]);
    cluster.wait_healthy(&small).await;
    let v = boot(&cluster, &small, &alice.token).await;
    assert!(
        find(&v["users"], &bob.id).is_some_and(|u| u["display_name"] == "while-down"),
        "{v}"
    );
    assert!(find(&v["channels"], &renamed).is_some(), "{v}");
    let is_open = |id: &str| find(&v["channels"], id).map(|c| c["is_open"].clone());
    assert_eq!(
        is_open(&with_bob),
        Some(json!(true)),
        "opened by bob's message: {v}"
    );
    assert_eq!(is_open(&with_self), Some(json!(false)), "still closed: {v}");
    let v = boot(&cluster, &small, &gina.token).await;
    assert_eq!(v["self"]["id"], gina.id.as_str());

    // A gateway whose Flannel is unreachable still connects; hello just has no boot data.
    let dead = format!("http://{}", free_tcp());
    let (ws_url, gw_base) = gateway(&cluster, "gw-dead", &dead, &[]).await;
    cluster.wait_healthy(&gw_base).await;
    let client = Client::connect(&ws_url, &alice.token, None)
        .await
        .expect("connect");
    assert!(client.hello.get("boot").is_none(), "{}", client.hello);
    assert_eq!(client.hello["user"], alice.id.as_str());
    client.ping(1).await;
    client.close().await;
    assert!(
        cluster
            .metric(&gw_base, "switchboard_gateway_boot_failures_total", &[])
            .await
            >= 1.0
    );
}
