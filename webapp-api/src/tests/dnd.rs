//! Do Not Disturb: a person's snooze, seen whole by them and as a DND window by others,
//! ended early or by the clock, announced to their sessions and the workspace's.

use serde_json::{json, Value};
use shared::ids::WorkspaceId;
use shared::store::{cluster_records, RecordKind, RecordSet};

use crate::tests::Server;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_snooze_is_whole_for_its_user_a_window_for_others_and_announced() {
    let s = Server::start_with_cluster().await;
    let (bob, alice) = (s.token("bob"), s.token("alice"));
    let (bob_id, alice_id) = (s.user_id("bob"), s.user_id("alice"));

    // Nobody is snoozed at first.
    let v = s.ok("dnd.info", &bob, json!({})).await;
    assert_eq!(
        (v["dnd_enabled"].clone(), v["snooze_enabled"].clone()),
        (json!(false), json!(false)),
        "{v}"
    );
    assert_eq!(
        (v["next_dnd_start_ts"].clone(), v["next_dnd_end_ts"].clone()),
        (json!(1), json!(1))
    );

    let before = unix_now();
    let v = s
        .ok("dnd.setSnooze", &bob, json!({ "num_minutes": 30 }))
        .await;
    let after = unix_now();
    assert_eq!(v["snooze_enabled"], true, "{v}");
    assert_eq!(v["snooze_is_indefinite"], false);
    let end = v["snooze_endtime"].as_i64().unwrap();
    assert!((before + 1800..=after + 1800).contains(&end), "{v}");
    assert!(
        (1795..=1800).contains(&v["snooze_remaining"].as_i64().unwrap()),
        "{v}"
    );

    // Bob sees his snooze whole.
    let v = s.ok("dnd.info", &bob, json!({})).await;
    assert_eq!(v["dnd_enabled"], true, "{v}");
    assert_eq!(v["snooze_enabled"], true);
    assert_eq!(v["snooze_endtime"], end);
    assert_eq!(v["next_dnd_end_ts"], end);
    assert!(v["next_dnd_start_ts"].as_i64().unwrap() >= before);

    // Alice sees a DND window, without the snooze's own fields.
    let v = s.ok("dnd.info", &alice, json!({ "user": bob_id })).await;
    assert_eq!(v["dnd_enabled"], true, "{v}");
    assert_eq!(v["next_dnd_end_ts"], end);
    assert!(v.get("snooze_enabled").is_none(), "{v}");
    let v = s
        .ok(
            "dnd.teamInfo",
            &alice,
            json!({ "users": format!("{bob_id}, {alice_id}") }),
        )
        .await;
    assert_eq!(v["users"][&bob_id]["dnd_enabled"], true, "{v}");
    assert_eq!(v["users"][&bob_id]["next_dnd_end_ts"], end);
    assert_eq!(v["users"][&alice_id]["dnd_enabled"], false);
    assert!(v["users"][&bob_id].get("snooze_endtime").is_none());
    // A JSON body's array names them too.
    let v = s
        .ok(
            "dnd.teamInfo",
            &alice,
            json!({ "users": [bob_id, alice_id] }),
        )
        .await;
    assert_eq!(v["users"][&bob_id]["next_dnd_end_ts"], end, "{v}");

    // His sessions hear `dnd_updated` with the snooze; the workspace `dnd_updated_user`
    // without it.
    let own = s.user_notices(&bob_id, "dnd_updated", 1).await;
    assert_eq!(own.len(), 1, "{own:?}");
    assert_eq!(own[0]["user"], bob_id.as_str());
    assert_eq!(own[0]["dnd_status"]["snooze_enabled"], true);
    assert_eq!(own[0]["dnd_status"]["snooze_endtime"], end);
    let public = s.notices("dnd_updated_user", 1).await;
    assert_eq!(public.len(), 1, "{public:?}");
    assert_eq!(public[0]["user"], bob_id.as_str());
    assert_eq!(public[0]["dnd_status"]["dnd_enabled"], true);
    assert!(public[0]["dnd_status"].get("snooze_enabled").is_none());

    // Ended early: his state says so, everyone is told, and a second end has nothing to end.
    let v = s.ok("dnd.endSnooze", &bob, json!({})).await;
    assert_eq!(
        (v["snooze_enabled"].clone(), v["dnd_enabled"].clone()),
        (json!(false), json!(false)),
        "{v}"
    );
    let v = s.ok("dnd.info", &alice, json!({ "user": bob_id })).await;
    assert_eq!(v["dnd_enabled"], false, "{v}");
    let public = s.notices("dnd_updated_user", 2).await;
    assert_eq!(public.len(), 2, "{public:?}");
    assert_eq!(public[1]["dnd_status"]["dnd_enabled"], false);
    assert_eq!(s.user_notices(&bob_id, "dnd_updated", 2).await.len(), 2);
    s.err("dnd.endSnooze", &bob, json!({}), "snooze_not_active")
        .await;
    // endDnd with nothing running is fine and tells no one.
    s.ok("dnd.endDnd", &bob, json!({})).await;

    // A new snooze replaces the one before; endDnd ends it.
    s.ok("dnd.setSnooze", &bob, json!({ "num_minutes": "5" }))
        .await;
    let v = s
        .ok("dnd.setSnooze", &bob, json!({ "num_minutes": 60 }))
        .await;
    assert!(v["snooze_remaining"].as_i64().unwrap() > 3500, "{v}");
    s.ok("dnd.endDnd", &bob, json!({})).await;
    assert_eq!(
        s.ok("dnd.info", &bob, json!({})).await["snooze_enabled"],
        false
    );
    assert_eq!(s.notices("dnd_updated_user", 5).await.len(), 5);
}

#[tokio::test]
async fn a_snooze_lapses_at_its_end() {
    let s = Server::start_with_cluster().await;
    let bob = s.token("bob");
    let bob_id = s.user_id("bob");
    let workspace = WorkspaceId(s.demo["workspace"].as_str().unwrap().into());
    // A snooze that ended a second ago, as the clock leaves one.
    let set = s
        .store
        .record_set(&workspace, &RecordKind::Dnd)
        .await
        .unwrap();
    let now = unix_now();
    let lapsed = json!({ "start": now - 600, "end": now - 1 }).to_string();
    assert!(s
        .store
        .put_record(
            &workspace,
            &RecordKind::Dnd,
            &bob_id,
            Some(&lapsed),
            set.version
        )
        .await
        .unwrap());
    let v = s.ok("dnd.info", &bob, json!({})).await;
    assert_eq!(
        (v["dnd_enabled"].clone(), v["snooze_enabled"].clone()),
        (json!(false), json!(false)),
        "{v}"
    );
    // Nothing is running to end, but the lapsed record goes, and its lapse, untold until
    // now, is told.
    s.err("dnd.endSnooze", &bob, json!({}), "snooze_not_active")
        .await;
    let set = s
        .store
        .record_set(&workspace, &RecordKind::Dnd)
        .await
        .unwrap();
    assert!(set.records.is_empty(), "{:?}", set.records);
    let public = s.notices("dnd_updated_user", 1).await;
    assert_eq!(public.len(), 1, "{public:?}");
    assert_eq!(public[0]["dnd_status"]["dnd_enabled"], false);
}

/// Writes one record of a set as it is now.
async fn put(s: &Server, workspace: &WorkspaceId, kind: &RecordKind, id: &str, json: &str) {
    let set = s.store.record_set(workspace, kind).await.unwrap();
    assert!(s
        .store
        .put_record(workspace, kind, id, Some(json), set.version)
        .await
        .unwrap());
}

/// `workspace`'s set of `kind`, once `done` says it is as awaited (at most 10 s).
async fn set_once(
    s: &Server,
    workspace: &WorkspaceId,
    kind: &RecordKind,
    done: impl Fn(&RecordSet) -> bool,
) -> RecordSet {
    for _ in 0..200 {
        let set = s.store.record_set(workspace, kind).await.unwrap();
        if done(&set) {
            return set;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    s.store.record_set(workspace, kind).await.unwrap()
}

#[tokio::test]
async fn a_lapsing_snooze_is_told_once_and_a_replaced_one_not_at_all() {
    let s = Server::start_with_cluster_and(|c| c.webapp.records_poll_ms = 50).await;
    let bob = s.token("bob");
    let bob_id = s.user_id("bob");
    let workspace = WorkspaceId(s.demo["workspace"].as_str().unwrap().into());
    let cluster = cluster_records();
    let lapse_id = format!("{workspace}/{bob_id}");

    // A snooze's end is kept for the whole cluster.
    let v = s
        .ok("dnd.setSnooze", &bob, json!({ "num_minutes": 1 }))
        .await;
    let end = v["snooze_endtime"].as_i64().unwrap();
    let lapses = s
        .store
        .record_set(&cluster, &RecordKind::DndLapses)
        .await
        .unwrap();
    assert_eq!(lapses.records.len(), 1, "{:?}", lapses.records);
    assert_eq!(lapses.records[0].0, lapse_id);
    let entry: Value = serde_json::from_str(&lapses.records[0].1).unwrap();
    assert_eq!(
        entry,
        json!({ "workspace": workspace.0, "user": bob_id, "end": end })
    );

    // The clock passes its end (the snooze first, then its end, as a minute would leave them).
    let now = unix_now();
    let lapsed = json!({ "start": now - 60, "end": now - 1 }).to_string();
    put(&s, &workspace, &RecordKind::Dnd, &bob_id, &lapsed).await;
    let entry = json!({ "workspace": workspace.0, "user": bob_id, "end": now - 1 }).to_string();
    put(&s, &cluster, &RecordKind::DndLapses, &lapse_id, &entry).await;

    // Bob's sessions and the workspace's are told, the records go.
    let own = s.user_notices(&bob_id, "dnd_updated", 2).await;
    assert_eq!(own.len(), 2, "{own:?}");
    assert_eq!(own[1]["dnd_status"]["snooze_enabled"], false, "{own:?}");
    assert_eq!(own[1]["dnd_status"]["dnd_enabled"], false);
    let public = s.notices("dnd_updated_user", 2).await;
    assert_eq!(public.len(), 2, "{public:?}");
    assert_eq!(public[1]["user"], bob_id.as_str());
    assert_eq!(public[1]["dnd_status"]["dnd_enabled"], false);
    let lapses = set_once(&s, &cluster, &RecordKind::DndLapses, |set| {
        set.records.is_empty()
    })
    .await;
    assert!(lapses.records.is_empty(), "{:?}", lapses.records);
    let dnd = s
        .store
        .record_set(&workspace, &RecordKind::Dnd)
        .await
        .unwrap();
    assert!(dnd.records.is_empty(), "{:?}", dnd.records);
    // Told once, however many looks come after (ten polls).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // (`notices` answers all there are once there are two.)
    assert_eq!(s.notices("dnd_updated_user", 2).await.len(), 2);
    s.err("dnd.endSnooze", &bob, json!({}), "snooze_not_active")
        .await;

    // An end that names a snooze since replaced is dropped, untold; the running one stays.
    let v = s
        .ok("dnd.setSnooze", &bob, json!({ "num_minutes": 10 }))
        .await;
    let running = v["snooze_endtime"].as_i64().unwrap();
    let stale = json!({ "workspace": workspace.0, "user": bob_id, "end": now - 5 }).to_string();
    put(&s, &cluster, &RecordKind::DndLapses, &lapse_id, &stale).await;
    // An end that does not parse is dropped too (and counted).
    put(&s, &cluster, &RecordKind::DndLapses, "T0/U0", "not json").await;
    let lapses = set_once(&s, &cluster, &RecordKind::DndLapses, |set| {
        set.records.is_empty()
    })
    .await;
    assert!(lapses.records.is_empty(), "{:?}", lapses.records);
    let v = s.ok("dnd.info", &bob, json!({})).await;
    assert_eq!(v["snooze_enabled"], true, "{v}");
    assert_eq!(v["snooze_endtime"], running);
    // The new snooze's own announcement, and no lapse.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let public = s.notices("dnd_updated_user", 3).await;
    assert_eq!(public.len(), 3, "{public:?}");
    assert_eq!(public[2]["dnd_status"]["dnd_enabled"], true);
    let text = s.metrics_text().await;
    for counted in [
        r#"switchboard_webapp_dnd_total{event="unreadable"} 1"#,
        r#"switchboard_webapp_dnd_total{event="lapsed"}"#,
    ] {
        assert!(text.contains(counted), "{counted} in {text}");
    }
}

#[tokio::test]
async fn bad_dnd_calls_get_clear_errors() {
    let s = Server::start_with_cluster().await;
    let bob = s.token("bob");
    let bot = s.bot_token("pager").await;
    for (method, body) in [
        ("dnd.setSnooze", json!({ "num_minutes": 10 })),
        ("dnd.endSnooze", json!({})),
        ("dnd.endDnd", json!({})),
    ] {
        s.err(method, &bot, body, "not_allowed_token_type").await;
    }
    // A bot may read.
    s.ok("dnd.info", &bot, json!({ "user": s.user_id("bob") }))
        .await;
    let many: Vec<String> = (0..51).map(|i| format!("U{i}")).collect();
    let bad_calls = [
        ("dnd.setSnooze", json!({}), "missing_argument"),
        (
            "dnd.setSnooze",
            json!({ "num_minutes": 0 }),
            "invalid_arguments",
        ),
        (
            "dnd.setSnooze",
            json!({ "num_minutes": -3 }),
            "invalid_arguments",
        ),
        (
            "dnd.setSnooze",
            json!({ "num_minutes": "ten" }),
            "invalid_arguments",
        ),
        (
            "dnd.setSnooze",
            json!({ "num_minutes": 1.5 }),
            "invalid_arguments",
        ),
        (
            "dnd.setSnooze",
            json!({ "num_minutes": 525_601 }),
            "invalid_arguments",
        ),
        ("dnd.info", json!({ "user": "U999999" }), "user_not_found"),
        ("dnd.teamInfo", json!({}), "missing_argument"),
        (
            "dnd.teamInfo",
            json!({ "users": " , " }),
            "missing_argument",
        ),
        (
            "dnd.teamInfo",
            json!({ "users": many.join(",") }),
            "invalid_arguments",
        ),
        (
            "dnd.teamInfo",
            json!({ "users": "U999999" }),
            "user_not_found",
        ),
    ];
    for (method, body, error) in bad_calls {
        s.err(method, &bob, body, error).await;
    }
    // Nothing was stored by any of them.
    assert_eq!(
        s.ok("dnd.info", &bob, json!({})).await["snooze_enabled"],
        false
    );
    let text = s.metrics_text().await;
    for counted in [
        r#"switchboard_webapp_errors_total{error="invalid_arguments",method="dnd.setSnooze"} 5"#,
        r#"switchboard_webapp_errors_total{error="not_allowed_token_type",method="dnd.endDnd"} 1"#,
        r#"switchboard_webapp_errors_total{error="user_not_found",method="dnd.teamInfo"} 1"#,
    ] {
        assert!(text.contains(counted), "{counted} in {text}");
    }
}
