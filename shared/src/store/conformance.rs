//! The storage conformance suite: one set of checks that every [`MessageStore`]
//! implementation must pass, so the embedded store and the server-backed ones cannot drift
//! apart. Each implementation's tests call [`run_all`] on a fresh store.

use super::*;
use crate::ids::{ChannelId, Ts, UserId};
use crate::protocol::{ChannelSetting, Message, MessageKind, PreviousMessage, RichContent};

fn channel(ws: &WorkspaceId, creator: &UserId, name: &str, private: bool) -> Channel {
    Channel {
        id: ChannelId::generate(),
        workspace: ws.clone(),
        name: name.to_string(),
        is_private: private,
        creator: creator.clone(),
        created: Ts::now(),
        topic: String::new(),
        purpose: String::new(),
        is_archived: false,
    }
}

fn message(
    ws: &WorkspaceId,
    ch: &ChannelId,
    user: &UserId,
    seq: u64,
    cmid: Option<&str>,
) -> Message {
    Message {
        workspace: ws.clone(),
        channel: ch.clone(),
        seq,
        ts: Ts(1_700_000_000_000_000 + seq * 10),
        user: user.clone(),
        text: format!("message {seq}"),
        client_msg_id: cmid.map(str::to_string),
        thread_ts: None,
        kind: MessageKind::Posted,
        previous: None,
        broadcast: false,
        bot: false,
        rich: None,
    }
}

/// Runs every check against `store`, which must be empty.
pub async fn run_all(store: &dyn MessageStore) {
    metadata(store).await;
    appends_and_history(store).await;
    append_groups(store).await;
    repeats_in_one_burst(store).await;
    change_feed(store).await;
    edits_threads_and_reactions(store).await;
    pins(store).await;
    user_emails(store).await;
    scheduled_messages(store).await;
    reacted_messages(store).await;
    files(store).await;
    usergroups(store).await;
    deactivation(store).await;
}

/// Deactivating a user keeps it (by id, by name, in the workspace's list) with `deleted`;
/// bringing it back clears it; an unknown user is `None`.
async fn deactivation(store: &dyn MessageStore) {
    let ws = store.create_workspace("leavers").await.unwrap();
    let hal = store
        .create_user(&ws.id, "hal", "Hal", false, false)
        .await
        .unwrap();
    assert!(!hal.deleted);
    let gone = store
        .set_user_deleted(&hal.id, true)
        .await
        .unwrap()
        .unwrap();
    assert!(gone.deleted);
    assert_eq!(gone.name, "hal");
    assert!(store.user(&hal.id).await.unwrap().unwrap().deleted);
    assert!(
        store
            .user_by_name(&ws.id, "hal")
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
    let listed = store.users(&ws.id).await.unwrap();
    assert!(
        listed.iter().any(|u| u.id == hal.id && u.deleted),
        "{listed:?}"
    );
    let back = store
        .set_user_deleted(&hal.id, false)
        .await
        .unwrap()
        .unwrap();
    assert!(!back.deleted);
    assert!(!store.user(&hal.id).await.unwrap().unwrap().deleted);
    assert_eq!(
        store
            .set_user_deleted(&UserId::from("UNOBODY"), true)
            .await
            .unwrap(),
        None
    );
}

/// User groups: a workspace's set starts empty at version 0; each write that names the
/// version it read lands and moves the version on, and one that names an older version
/// writes nothing; a group is replaced whole; another workspace sees none of them.
async fn usergroups(store: &dyn MessageStore) {
    let ws = store.create_workspace("groups-ws").await.unwrap();
    let other = store.create_workspace("groups-other").await.unwrap();
    let alice = store
        .create_user(&ws.id, "alice", "Alice", false, false)
        .await
        .unwrap();
    let bob = store
        .create_user(&ws.id, "bob", "Bob", false, false)
        .await
        .unwrap();
    let empty = store.usergroups(&ws.id).await.unwrap();
    assert_eq!(empty, UserGroups::default());
    let group = |id: &str, handle: &str| UserGroup {
        id: id.to_string(),
        workspace: ws.id.clone(),
        name: format!("Team {handle}"),
        handle: handle.to_string(),
        description: "on call".into(),
        channels: vec![ChannelId::from("CONCALL")],
        users: vec![alice.id.clone()],
        created: Ts(1_800_000_000_000_000),
        created_by: alice.id.clone(),
        updated: Ts(1_800_000_000_000_000),
        updated_by: alice.id.clone(),
        disabled: None,
    };
    let (s1, s2) = (group("S1", "oncall"), group("S2", "design"));
    assert!(store.put_usergroup(&s2, 0).await.unwrap());
    // A second writer that read the empty set has lost the race.
    assert!(!store.put_usergroup(&s1, 0).await.unwrap());
    assert!(store.put_usergroup(&s1, 1).await.unwrap());
    let set = store.usergroups(&ws.id).await.unwrap();
    assert_eq!(set.version, 2);
    assert_eq!(set.groups, [s1.clone(), s2.clone()], "by id");

    let mut changed = s1.clone();
    changed.users = vec![bob.id.clone(), alice.id.clone()];
    changed.updated = Ts(1_800_000_000_000_001);
    changed.updated_by = bob.id.clone();
    changed.disabled = Some((Ts(1_800_000_000_000_002), bob.id.clone()));
    assert!(!store.put_usergroup(&changed, 1).await.unwrap(), "stale");
    assert_eq!(store.usergroups(&ws.id).await.unwrap(), set);
    assert!(store.put_usergroup(&changed, 2).await.unwrap());
    let set = store.usergroups(&ws.id).await.unwrap();
    assert_eq!(set.version, 3);
    assert_eq!(set.groups, [changed, s2]);

    assert_eq!(
        store.usergroups(&other.id).await.unwrap(),
        UserGroups::default()
    );

    // Another kind of record is a set of its own: its writes leave the groups' version, and
    // a record can be removed.
    let emoji = |set: &RecordSet| {
        set.records
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        store.record_set(&ws.id, &RecordKind::Emoji).await.unwrap(),
        RecordSet::default()
    );
    let ws_id = &ws.id;
    let version =
        |kind: RecordKind| async move { store.record_set_version(ws_id, &kind).await.unwrap() };
    assert_eq!(
        version(RecordKind::Emoji).await,
        0,
        "none before the first write"
    );
    for (n, name) in ["shipit", "parrot"].iter().enumerate() {
        let json = format!(r#"{{"url":"https://img.example/{name}.png"}}"#);
        assert!(store
            .put_record(&ws.id, &RecordKind::Emoji, name, Some(&json), n as u64)
            .await
            .unwrap());
    }
    let set = store.record_set(&ws.id, &RecordKind::Emoji).await.unwrap();
    assert_eq!(
        (set.version, emoji(&set)),
        (2, vec!["parrot".to_string(), "shipit".to_string()])
    );
    assert_eq!(
        set.records[0].1,
        r#"{"url":"https://img.example/parrot.png"}"#
    );
    assert!(!store
        .put_record(&ws.id, &RecordKind::Emoji, "parrot", None, 1)
        .await
        .unwrap());
    assert!(store
        .put_record(&ws.id, &RecordKind::Emoji, "parrot", None, 2)
        .await
        .unwrap());
    let set = store.record_set(&ws.id, &RecordKind::Emoji).await.unwrap();
    assert_eq!((set.version, emoji(&set)), (3, vec!["shipit".to_string()]));
    // The version alone, as the set gives it, also after a removal and a refused write.
    assert_eq!(version(RecordKind::Emoji).await, 3);
    assert_eq!(
        version(RecordKind::UserGroup).await,
        3,
        "the user groups' own"
    );
    assert_eq!(store.usergroups(&ws.id).await.unwrap().version, 3);
    // A channel's set is its own, apart from another channel's.
    let (c1, c2) = (ChannelId::from("CBOOK1"), ChannelId::from("CBOOK2"));
    let book = |c: &ChannelId| RecordKind::Bookmarks(c.clone());
    assert!(store
        .put_record(&ws.id, &book(&c1), "Bk1", Some("{}"), 0)
        .await
        .unwrap());
    assert_eq!(
        emoji(&store.record_set(&ws.id, &book(&c1)).await.unwrap()),
        ["Bk1"]
    );
    assert_eq!(
        store.record_set(&ws.id, &book(&c2)).await.unwrap(),
        RecordSet::default()
    );
    // The cluster's own set (the apps' Events API subscriptions) is apart from every
    // workspace's, and gives back what was kept.
    let kind = RecordKind::EventSubscriptions;
    let sub = EventSubscription {
        workspace: ws.id.clone(),
        user: UserId::from("UAPP1"),
        request_url: "https://app.example/slack/events".into(),
        signing_secret: "0123456789abcdef0123456789abcdef".into(),
        verification_token: "fedcba9876543210fedcba9876543210".into(),
        updated: Ts(1_800_000_000_000_003),
        disabled: None,
    };
    let id = EventSubscription::record_id(&sub.workspace, &sub.user);
    let before = store.record_set(&cluster_records(), &kind).await.unwrap();
    let json = serde_json::to_string(&sub).unwrap();
    assert!(store
        .put_record(&cluster_records(), &kind, &id, Some(&json), before.version)
        .await
        .unwrap());
    let set = store.record_set(&cluster_records(), &kind).await.unwrap();
    assert_eq!(set.version, before.version + 1);
    let (_, kept) = set.records.iter().find(|(rid, _)| *rid == id).unwrap();
    assert_eq!(
        serde_json::from_str::<EventSubscription>(kept).unwrap(),
        sub
    );
    assert_eq!(
        store.record_set(&ws.id, &kind).await.unwrap(),
        RecordSet::default()
    );
}

/// Files: a record is kept and replaced whole, listed newest first by workspace and paged,
/// its bytes (several chunks' worth) come back as stored, another workspace finds none of
/// it, and a deletion takes record and bytes.
async fn files(store: &dyn MessageStore) {
    let ws = store.create_workspace("files-ws").await.unwrap();
    let other = store.create_workspace("files-other").await.unwrap();
    let alice = store
        .create_user(&ws.id, "alice", "Alice", false, false)
        .await
        .unwrap();
    let record = |id: &str, created: u64| FileRecord {
        id: id.to_string(),
        workspace: ws.id.clone(),
        user: alice.id.clone(),
        name: format!("{id}.txt"),
        title: format!("{id}.txt"),
        mimetype: "text/plain".into(),
        size: 600_000,
        created: Ts(1_800_000_000_000_000 + created),
        uploaded: false,
        complete: false,
        channels: Vec::new(),
        alt_txt: String::new(),
        shares: Vec::new(),
    };
    let (f1, f2, f3) = (record("F1", 1), record("F2", 2), record("F3", 3));
    for f in [&f1, &f2, &f3] {
        store.create_file(f).await.unwrap();
    }
    let taken = store.create_file(&f1).await.unwrap_err();
    assert_eq!(taken.kind, StorageErrorKind::AlreadyExists, "{taken}");
    assert_eq!(store.file(&ws.id, "F1").await.unwrap(), Some(f1.clone()));
    assert_eq!(store.file(&other.id, "F1").await.unwrap(), None);
    assert_eq!(store.file(&ws.id, "F9").await.unwrap(), None);
    let ids = |files: Vec<FileRecord>| files.into_iter().map(|f| f.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.files(&ws.id, None, 10).await.unwrap()),
        ["F3", "F2", "F1"]
    );
    assert_eq!(
        ids(store.files(&ws.id, None, 2).await.unwrap()),
        ["F3", "F2"]
    );
    assert_eq!(
        ids(store.files(&ws.id, Some(f2.created), 10).await.unwrap()),
        ["F1"]
    );
    assert!(store.files(&other.id, None, 10).await.unwrap().is_empty());

    // Bytes: more than a chunk's worth, not a repeating pattern.
    let bytes: Vec<u8> = (0..600_000u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(store.file_content(&ws.id, "F1").await.unwrap(), None);
    store
        .put_file_content(&ws.id, "F1", bytes.clone())
        .await
        .unwrap();
    let mut done = f1.clone();
    done.uploaded = true;
    done.complete = true;
    done.size = bytes.len() as u64;
    done.title = "Quarterly numbers".into();
    done.channels = vec![ChannelId::from("CSHARED")];
    done.shares = vec![(ChannelId::from("CSHARED"), Ts(1_800_000_000_000_009))];
    store.update_file(&done).await.unwrap();
    assert_eq!(store.file(&ws.id, "F1").await.unwrap(), Some(done.clone()));
    assert_eq!(
        store.file_content(&ws.id, "F1").await.unwrap().as_deref(),
        Some(&bytes[..])
    );
    assert_eq!(store.file_content(&other.id, "F1").await.unwrap(), None);
    let mut missing = record("F8", 8);
    missing.title = "never created".into();
    assert_eq!(
        store.update_file(&missing).await.unwrap_err().kind,
        StorageErrorKind::NotFound
    );

    assert!(store.delete_file(&ws.id, "F1").await.unwrap());
    assert!(!store.delete_file(&ws.id, "F1").await.unwrap());
    assert_eq!(store.file(&ws.id, "F1").await.unwrap(), None);
    assert_eq!(store.file_content(&ws.id, "F1").await.unwrap(), None);
    assert_eq!(
        ids(store.files(&ws.id, None, 10).await.unwrap()),
        ["F3", "F2"]
    );
}

/// Messages by reaction (search's `has::name:`, `hasmy::name:`): those with the reaction,
/// newest first and bounded, by one user's when asked; a reaction taken back, or its
/// message deleted, leaves them; another workspace finds none.
async fn reacted_messages(store: &dyn MessageStore) {
    let ws = store.create_workspace("reacted-ws").await.unwrap();
    let other_ws = store.create_workspace("reacted-other").await.unwrap();
    let alice = store
        .create_user(&ws.id, "alice", "Alice", false, false)
        .await
        .unwrap();
    let bob = store
        .create_user(&ws.id, "bob", "Bob", false, false)
        .await
        .unwrap();
    let ch = channel(&ws.id, &alice.id, "votes", false);
    store.create_channel(&ch).await.unwrap();
    let mut seq = 0;
    let mut entry = |user: &UserId, kind: MessageKind| {
        seq += 1;
        let mut m = message(&ws.id, &ch.id, user, seq, None);
        m.kind = kind;
        m
    };
    let m1 = entry(&alice.id, MessageKind::Posted);
    let m2 = entry(&alice.id, MessageKind::Posted);
    let m3 = entry(&bob.id, MessageKind::Posted);
    let m4 = entry(&bob.id, MessageKind::Posted);
    let react = |target: &Message, name: &str| MessageKind::ReactionAdded {
        target: target.ts,
        reaction: name.into(),
    };
    let entries = [
        entry(&alice.id, react(&m1, "tada")),
        entry(&bob.id, react(&m1, "tada")),
        entry(&bob.id, react(&m3, "tada")),
        entry(&bob.id, react(&m2, "eyes")),
        entry(
            &bob.id,
            MessageKind::ReactionRemoved {
                target: m2.ts,
                reaction: "eyes".into(),
            },
        ),
        entry(&alice.id, react(&m4, "+1")),
        entry(&alice.id, react(&m2, "+1")),
        entry(&bob.id, MessageKind::Deleted { target: m4.ts }),
    ];
    for m in [&m1, &m2, &m3, &m4].into_iter().chain(&entries) {
        assert_eq!(store.append(m).await.unwrap(), AppendOutcome::Stored);
    }
    let reacted = |name: &'static str, user: Option<UserId>, limit: usize| {
        let (ws, ch) = (ws.id.clone(), ch.id.clone());
        async move {
            store
                .reacted(&ws, &ch, name, user.as_ref(), limit)
                .await
                .unwrap()
        }
    };
    assert_eq!(reacted("tada", None, 10).await, [m3.seq, m1.seq]);
    assert_eq!(reacted("tada", None, 1).await, [m3.seq]);
    assert_eq!(reacted("tada", Some(alice.id.clone()), 10).await, [m1.seq]);
    assert_eq!(
        reacted("tada", Some(bob.id.clone()), 10).await,
        [m3.seq, m1.seq]
    );
    assert!(reacted("eyes", None, 10).await.is_empty(), "taken back");
    assert_eq!(reacted("+1", None, 10).await, [m2.seq], "m4 was deleted");
    assert!(reacted("rocket", None, 10).await.is_empty());
    assert!(store
        .reacted(&other_ws.id, &ch.id, "tada", None, 10)
        .await
        .unwrap()
        .is_empty());

    // What each user reacted to: each message once, the latest reaction first, without what
    // was taken back or deleted; paged by `before`.
    let item = |target: &Message, entry: &Message| UserReaction {
        channel: ch.id.clone(),
        target: target.ts,
        at: entry.ts,
    };
    let of = |user: &User, before: Option<Ts>, limit: usize| {
        let (ws, user) = (ws.id.clone(), user.id.clone());
        async move {
            store
                .user_reactions(&ws, &user, before, limit)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        of(&bob, None, 10).await,
        [item(&m3, &entries[2]), item(&m1, &entries[1])]
    );
    let alices = [item(&m2, &entries[6]), item(&m1, &entries[0])];
    assert_eq!(of(&alice, None, 10).await, alices);
    assert_eq!(of(&alice, None, 1).await, alices[..1]);
    assert_eq!(of(&alice, Some(entries[6].ts), 10).await, alices[1..]);
    assert!(store
        .user_reactions(&other_ws.id, &alice.id, None, 10)
        .await
        .unwrap()
        .is_empty());
}

/// Scheduled messages: kept whole (content, thread, bot identity), listed per workspace by
/// time, found when due across workspaces and only within the window asked, removed once (a
/// second removal, another workspace's or an unknown id finds nothing), and an id is taken
/// once.
async fn scheduled_messages(store: &dyn MessageStore) {
    let a = store.create_workspace("sched-a").await.unwrap();
    let b = store.create_workspace("sched-b").await.unwrap();
    let alice = store
        .create_user(&a.id, "alice", "Alice", false, false)
        .await
        .unwrap();
    let bob = store
        .create_user(&b.id, "bob", "Bob", false, true)
        .await
        .unwrap();
    let ch_a = channel(&a.id, &alice.id, "later-a", false);
    let ch_b = channel(&b.id, &bob.id, "later-b", false);
    store.create_channel(&ch_a).await.unwrap();
    store.create_channel(&ch_b).await.unwrap();
    let base = 1_900_000_000_000_000u64;
    let scheduled =
        |id: &str, ws: &WorkspaceId, ch: &ChannelId, user: &UserId, at: u64| ScheduledMessage {
            id: id.to_string(),
            post_at: Ts(base + at),
            created: Ts(base - 1_000_000),
            message: crate::protocol::NewMessage {
                workspace: ws.clone(),
                channel: ch.clone(),
                user: user.clone(),
                text: format!("later {id}"),
                client_msg_id: Some(format!("scheduled-{id}")),
                thread_ts: None,
                kind: MessageKind::Posted,
                broadcast: false,
                bot: false,
                rich: None,
            },
        };
    let mut rich = scheduled("QA3", &a.id, &ch_a.id, &alice.id, 3_000_000);
    rich.message.thread_ts = Some(Ts(base - 5));
    rich.message.broadcast = true;
    rich.message.rich = RichContent {
        blocks: Some(r#"[{"type":"divider"}]"#.into()),
        metadata: Some(r#"{"event_type":"e","event_payload":{}}"#.into()),
        ..RichContent::default()
    }
    .boxed();
    let a1 = scheduled("QA1", &a.id, &ch_a.id, &alice.id, 1_000_000);
    let a2 = scheduled("QA2", &a.id, &ch_a.id, &alice.id, 2_000_000);
    let mut b1 = scheduled("QB1", &b.id, &ch_b.id, &bob.id, 1_500_000);
    b1.message.bot = true;
    for m in [&rich, &a2, &a1, &b1] {
        store.schedule_message(m).await.unwrap();
    }
    let taken = store
        .schedule_message(&scheduled("QA1", &a.id, &ch_a.id, &alice.id, 9_000_000))
        .await
        .unwrap_err();
    assert_eq!(taken.kind, StorageErrorKind::AlreadyExists, "{taken}");

    // Each workspace lists its own, earliest first, as they were kept.
    let listed = store.scheduled_messages(&a.id).await.unwrap();
    assert_eq!(listed, vec![a1.clone(), a2.clone(), rich.clone()]);
    assert_eq!(
        store.scheduled_messages(&b.id).await.unwrap(),
        vec![b1.clone()]
    );

    // Due: across workspaces, in the window, earliest first, at most `limit`.
    let ids = |found: Vec<ScheduledMessage>| found.into_iter().map(|m| m.id).collect::<Vec<_>>();
    let due = |from: u64, to: u64, limit: u32| {
        store.due_scheduled_messages(Ts(base + from), Ts(base + to), limit)
    };
    assert!(due(0, 999_999, 10).await.unwrap().is_empty());
    assert_eq!(ids(due(0, 1_500_000, 10).await.unwrap()), ["QA1", "QB1"]);
    assert_eq!(ids(due(0, 5_000_000, 2).await.unwrap()), ["QA1", "QB1"]);
    assert_eq!(
        ids(due(1_500_001, 5_000_000, 10).await.unwrap()),
        ["QA2", "QA3"]
    );
    assert_eq!(
        due(2_500_000, 3_000_000, 10).await.unwrap(),
        vec![rich.clone()]
    );

    // Found by id in its own workspace only.
    assert_eq!(
        store.scheduled_message(&a.id, "QA3").await.unwrap(),
        Some(rich.clone())
    );
    assert_eq!(store.scheduled_message(&b.id, "QA3").await.unwrap(), None);
    assert_eq!(store.scheduled_message(&a.id, "QA9").await.unwrap(), None);

    // Removed once, by its own workspace only.
    assert_eq!(store.unschedule_message(&b.id, "QA1").await.unwrap(), None);
    assert_eq!(
        store.unschedule_message(&a.id, "QA1").await.unwrap(),
        Some(a1.clone())
    );
    assert_eq!(store.unschedule_message(&a.id, "QA1").await.unwrap(), None);
    assert_eq!(
        store.unschedule_message(&a.id, "Q-none").await.unwrap(),
        None
    );
    assert_eq!(
        ids(due(0, 5_000_000, 10).await.unwrap()),
        ["QB1", "QA2", "QA3"]
    );
    assert_eq!(
        ids(store.scheduled_messages(&a.id).await.unwrap()),
        ["QA2", "QA3"]
    );
    for (ws, id) in [(&a.id, "QA2"), (&a.id, "QA3"), (&b.id, "QB1")] {
        assert!(store.unschedule_message(ws, id).await.unwrap().is_some());
    }
    assert!(due(0, u64::MAX / 2, 10).await.unwrap().is_empty());
    assert!(store.scheduled_messages(&a.id).await.unwrap().is_empty());
}

/// Pins: an entry pins a message (not a deleted or missing one), views say by whom and when,
/// the channel's list is the most recently pinned first and bounded, an unpin or the
/// message's deletion takes it off; the pin entries are in the stream, not in history.
async fn pins(store: &dyn MessageStore) {
    let ws = store.create_workspace("pins-ws").await.unwrap();
    let alice = store
        .create_user(&ws.id, "alice", "Alice", false, false)
        .await
        .unwrap();
    let ch = channel(&ws.id, &alice.id, "pins", false);
    store.create_channel(&ch).await.unwrap();
    let mut seq = 0;
    let mut entry = |kind: MessageKind| {
        seq += 1;
        let mut m = message(&ws.id, &ch.id, &alice.id, seq, None);
        m.kind = kind;
        m
    };
    let first = entry(MessageKind::Posted);
    let second = entry(MessageKind::Posted);
    let third = entry(MessageKind::Posted);
    let pin_second = entry(MessageKind::Pinned { target: second.ts });
    let pin_first = entry(MessageKind::Pinned { target: first.ts });
    let pin_third = entry(MessageKind::Pinned { target: third.ts });
    // A message that is not there is not pinned.
    let pin_missing = entry(MessageKind::Pinned { target: Ts(7) });
    for m in [
        &first,
        &second,
        &third,
        &pin_second,
        &pin_first,
        &pin_third,
        &pin_missing,
    ] {
        assert_eq!(store.append(m).await.unwrap(), AppendOutcome::Stored);
    }
    let view = store
        .message_view(&ws.id, &ch.id, second.ts)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        view.pinned,
        Some(Pin {
            by: alice.id.clone(),
            at: pin_second.ts
        })
    );
    let (ws_id, ch_id) = (&ws.id, &ch.id);
    let listed = |limit| async move {
        store
            .pins(ws_id, ch_id, limit)
            .await
            .unwrap()
            .iter()
            .map(|v| v.message.ts)
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(10).await, vec![third.ts, first.ts, second.ts]);
    assert_eq!(listed(2).await, vec![third.ts, first.ts], "the latest pins");
    assert_eq!(store.pin_count(&ws.id, &ch.id).await.unwrap(), 3);
    // History's views carry pins as well.
    let views = store
        .message_views(
            &ws.id,
            &ch.id,
            &HistoryQuery {
                limit: 100,
                ..HistoryQuery::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(views.len(), 3, "pin entries are not messages: {views:?}");
    assert!(views.iter().all(|v| v.pinned.is_some()));
    // Unpinned, or deleted: off the list.
    let unpin = entry(MessageKind::Unpinned { target: first.ts });
    let delete = entry(MessageKind::Deleted { target: third.ts });
    for m in [&unpin, &delete] {
        assert_eq!(store.append(m).await.unwrap(), AppendOutcome::Stored);
    }
    assert_eq!(listed(10).await, vec![second.ts]);
    assert_eq!(store.pin_count(&ws.id, &ch.id).await.unwrap(), 1);
    let first_view = store
        .message_view(&ws.id, &ch.id, first.ts)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first_view.pinned, None);
    // A deleted message cannot be pinned again.
    let pin_deleted = entry(MessageKind::Pinned { target: third.ts });
    assert_eq!(
        store.append(&pin_deleted).await.unwrap(),
        AppendOutcome::Stored
    );
    assert_eq!(listed(10).await, vec![second.ts]);
    // The entries are the channel's stream, in order.
    let stream = store
        .history(
            &ws.id,
            &ch.id,
            &HistoryQuery {
                limit: 100,
                ..HistoryQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        stream.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=pin_deleted.seq).collect::<Vec<_>>()
    );
    assert_eq!(stream.last().map(|m| &m.kind), Some(&pin_deleted.kind));
}

/// Emails: found without case, one user per address in a workspace (another workspace may
/// have it too), changed and cleared, and given back when their user goes.
async fn user_emails(store: &dyn MessageStore) {
    let ws = store.create_workspace("mail").await.unwrap();
    let other = store.create_workspace("mail-other").await.unwrap();
    let erin = store
        .create_user(&ws.id, "erin", "Erin", false, false)
        .await
        .unwrap();
    let finn = store
        .create_user(&ws.id, "finn", "Finn", false, false)
        .await
        .unwrap();
    let stranger = store
        .create_user(&other.id, "gus", "Gus", false, false)
        .await
        .unwrap();
    assert_eq!(erin.email, "");
    assert!(store.user_by_email(&ws.id, "").await.unwrap().is_none());
    let set = store
        .set_user_email(&erin.id, " Erin@Example.COM ")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.email, "erin@example.com");
    assert_eq!(
        store.user(&erin.id).await.unwrap().unwrap().email,
        set.email
    );
    let found = store
        .user_by_email(&ws.id, "ERIN@example.com")
        .await
        .unwrap()
        .expect("found without case");
    assert_eq!(found.id, erin.id);
    assert!(store
        .user_by_email(&other.id, "erin@example.com")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store
            .set_user_email(&finn.id, "erin@example.com")
            .await
            .unwrap_err()
            .kind,
        StorageErrorKind::AlreadyExists
    );
    assert_eq!(store.user(&finn.id).await.unwrap().unwrap().email, "");
    // Another workspace may have the address; setting it again changes nothing.
    store
        .set_user_email(&stranger.id, "erin@example.com")
        .await
        .unwrap();
    store
        .set_user_email(&erin.id, "erin@example.com")
        .await
        .unwrap();
    // A change gives the old address back, and clearing gives the address back.
    store
        .set_user_email(&erin.id, "erin@work.example")
        .await
        .unwrap();
    assert!(store
        .user_by_email(&ws.id, "erin@example.com")
        .await
        .unwrap()
        .is_none());
    store
        .set_user_email(&finn.id, "erin@example.com")
        .await
        .unwrap();
    store.set_user_email(&finn.id, "").await.unwrap();
    assert!(store
        .user_by_email(&ws.id, "erin@example.com")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store
            .users(&ws.id)
            .await
            .unwrap()
            .iter()
            .map(|u| (u.name.as_str(), u.email.as_str()))
            .collect::<std::collections::BTreeMap<_, _>>(),
        [("erin", "erin@work.example"), ("finn", "")].into()
    );
    // A deleted user's address is free again.
    assert!(store.delete_user(&erin.id).await.unwrap());
    assert!(store
        .user_by_email(&ws.id, "erin@work.example")
        .await
        .unwrap()
        .is_none());
    store
        .set_user_email(&finn.id, "erin@work.example")
        .await
        .unwrap();
    assert!(store
        .set_user_email(&UserId::from("UNOBODY"), "x@example.com")
        .await
        .unwrap()
        .is_none());
}

async fn metadata(store: &dyn MessageStore) {
    let ws = store.create_workspace("acme").await.unwrap();
    assert_eq!(
        store.create_workspace("acme").await.unwrap_err().kind,
        StorageErrorKind::AlreadyExists
    );
    assert_eq!(store.workspace(&ws.id).await.unwrap().unwrap(), ws);
    assert_eq!(store.workspace_by_name("acme").await.unwrap().unwrap(), ws);
    assert!(store.workspace_by_name("nope").await.unwrap().is_none());

    let alice = store
        .create_user(&ws.id, "alice", "Alice", true, false)
        .await
        .unwrap();
    let bob = store
        .create_user(&ws.id, "bob", "Bob", false, false)
        .await
        .unwrap();
    assert_eq!(
        store
            .create_user(&ws.id, "bob", "Bob 2", false, false)
            .await
            .unwrap_err()
            .kind,
        StorageErrorKind::AlreadyExists
    );
    assert_eq!(store.user(&alice.id).await.unwrap().unwrap(), alice);
    assert_eq!(
        store.user_by_name(&ws.id, "bob").await.unwrap().unwrap(),
        bob
    );
    assert_eq!(store.users(&ws.id).await.unwrap().len(), 2);

    let general = channel(&ws.id, &alice.id, "general", false);
    store.create_channel(&general).await.unwrap();
    assert_eq!(
        store
            .create_channel(&channel(&ws.id, &alice.id, "general", false))
            .await
            .unwrap_err()
            .kind,
        StorageErrorKind::AlreadyExists
    );
    let secret = channel(&ws.id, &alice.id, "secret", true);
    store.create_channel(&secret).await.unwrap();
    assert_eq!(store.channel(&general.id).await.unwrap().unwrap(), general);
    assert_eq!(
        store
            .channel_by_name(&ws.id, "secret")
            .await
            .unwrap()
            .unwrap(),
        secret
    );

    assert!(store.add_member(&general.id, &alice.id).await.unwrap());
    assert!(
        !store.add_member(&general.id, &alice.id).await.unwrap(),
        "second add is a no-op"
    );
    assert!(store.add_member(&general.id, &bob.id).await.unwrap());
    assert!(store.add_member(&secret.id, &alice.id).await.unwrap());
    assert!(store.is_member(&secret.id, &alice.id).await.unwrap());
    assert!(!store.is_member(&secret.id, &bob.id).await.unwrap());
    // Read positions: 0 until marked, then the mark; none for a non-member.
    assert_eq!(
        store.last_read(&secret.id, &alice.id).await.unwrap(),
        Some(0)
    );
    assert_eq!(store.last_read(&secret.id, &bob.id).await.unwrap(), None);
    assert!(store.set_last_read(&secret.id, &alice.id, 7).await.unwrap());
    assert!(!store.set_last_read(&secret.id, &bob.id, 7).await.unwrap());
    assert_eq!(
        store.last_read(&secret.id, &alice.id).await.unwrap(),
        Some(7)
    );
    assert_eq!(
        store.last_read(&general.id, &alice.id).await.unwrap(),
        Some(0)
    );
    assert_eq!(store.last_read(&secret.id, &bob.id).await.unwrap(), None);
    // Closing a DM: open until closed, closed where it was, open again; a non-member's
    // neither.
    assert_eq!(store.dm_closed(&secret.id, &alice.id).await.unwrap(), None);
    assert!(store
        .set_dm_closed(&secret.id, &alice.id, Some(9))
        .await
        .unwrap());
    assert_eq!(
        store.dm_closed(&secret.id, &alice.id).await.unwrap(),
        Some(9)
    );
    // The workspace's memberships say it too (what Flannel's snapshot reads).
    let closed: Vec<_> = store
        .workspace_members(&ws.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.channel == secret.id || m.channel == general.id)
        .map(|m| (m.channel, m.user, m.last_read, m.closed))
        .collect();
    let mut expected = vec![
        (general.id.clone(), alice.id.clone(), 0, None),
        (general.id.clone(), bob.id.clone(), 0, None),
        (secret.id.clone(), alice.id.clone(), 7, Some(9)),
    ];
    expected.sort();
    assert_eq!(closed, expected);
    assert_eq!(
        store.last_read(&secret.id, &alice.id).await.unwrap(),
        Some(7),
        "the read position stays"
    );
    assert!(store
        .set_dm_closed(&secret.id, &alice.id, None)
        .await
        .unwrap());
    assert_eq!(store.dm_closed(&secret.id, &alice.id).await.unwrap(), None);
    assert!(!store
        .set_dm_closed(&secret.id, &bob.id, Some(1))
        .await
        .unwrap());
    assert_eq!(store.dm_closed(&secret.id, &bob.id).await.unwrap(), None);
    assert_eq!(store.members(&general.id).await.unwrap().len(), 2);
    assert_eq!(store.user_channels(&alice.id).await.unwrap().len(), 2);
    assert_eq!(store.user_channels(&bob.id).await.unwrap().len(), 1);
    assert!(store.remove_member(&general.id, &bob.id).await.unwrap());
    assert!(!store.remove_member(&general.id, &bob.id).await.unwrap());

    // Deleting a user (undoing a creation) takes its memberships and gives its name back.
    let carl = store
        .create_user(&ws.id, "carl", "Carl", false, false)
        .await
        .unwrap();
    assert!(store.add_member(&general.id, &carl.id).await.unwrap());
    assert!(store.delete_user(&carl.id).await.unwrap());
    assert!(store.user(&carl.id).await.unwrap().is_none());
    assert!(store.user_by_name(&ws.id, "carl").await.unwrap().is_none());
    assert!(!store.is_member(&general.id, &carl.id).await.unwrap());
    assert!(store.user_channels(&carl.id).await.unwrap().is_empty());
    assert_eq!(
        store.members(&general.id).await.unwrap(),
        vec![alice.id.clone()]
    );
    assert!(!store.delete_user(&carl.id).await.unwrap(), "already gone");
    let carl_again = store
        .create_user(&ws.id, "carl", "Carl", false, false)
        .await
        .expect("the name is free again");
    assert_ne!(carl_again.id, carl.id);
    assert!(store.delete_user(&carl_again.id).await.unwrap());
    assert_eq!(store.users(&ws.id).await.unwrap().len(), 2);

    // Cursor pagination over channels, in id order.
    let first = store.channels(&ws.id, None, 1).await.unwrap();
    let rest = store
        .channels(&ws.id, Some(&first[0].id), 10)
        .await
        .unwrap();
    assert_eq!(first.len() + rest.len(), 2);
    assert!(rest.iter().all(|c| c.id > first[0].id));

    // Another workspace sees none of it.
    let other = store.create_workspace("globex").await.unwrap();
    assert!(store
        .channels(&other.id, None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .channel_by_name(&other.id, "general")
        .await
        .unwrap()
        .is_none());
}

async fn append_groups(store: &dyn MessageStore) {
    let ws = store.create_workspace("group-ws").await.unwrap();
    let user = store
        .create_user(&ws.id, "grouper", "Grouper", false, false)
        .await
        .unwrap();
    let ch = channel(&ws.id, &user.id, "groups", false);
    store.create_channel(&ch).await.unwrap();
    for seq in 1..=30 {
        let cmid = format!("cmid-{seq}");
        store
            .append(&message(&ws.id, &ch.id, &user.id, seq, Some(&cmid)))
            .await
            .unwrap();
    }
    // A group with a repeated client_msg_id writes none of its messages and names the repeat.
    let group = vec![
        message(&ws.id, &ch.id, &user.id, 31, Some("cmid-new")),
        message(&ws.id, &ch.id, &user.id, 32, Some("cmid-5")),
        message(&ws.id, &ch.id, &user.id, 33, None),
    ];
    match store.append_new(group).await.unwrap() {
        GroupAppend::Repeated(found) => {
            assert_eq!(found.len(), 1);
            assert_eq!(found[0].0, 1);
            assert_eq!(found[0].1.seq, 5);
        }
        other => panic!("expected a repeat, got {other:?}"),
    }
    assert_eq!(last_seq(store, &ws.id, &ch.id).await, 30);
    // Without one, each message is appended.
    let group = vec![
        message(&ws.id, &ch.id, &user.id, 31, Some("cmid-31")),
        message(&ws.id, &ch.id, &user.id, 32, None),
    ];
    match store.append_new(group).await.unwrap() {
        GroupAppend::Appended(outcomes) => {
            assert_eq!(outcomes.len(), 2);
            for outcome in outcomes {
                assert_eq!(outcome.unwrap(), AppendOutcome::Stored);
            }
        }
        other => panic!("expected appends, got {other:?}"),
    }
    assert_eq!(last_seq(store, &ws.id, &ch.id).await, 32);
}

/// Appends sent at once may be written as one group. A message that repeats the
/// `client_msg_id` of an earlier one in the burst is answered with what became of that one:
/// never `Duplicate` of a message that the store does not hold.
async fn repeats_in_one_burst(store: &dyn MessageStore) {
    let ws = store.create_workspace("burst-ws").await.unwrap();
    let user = store
        .create_user(&ws.id, "burster", "Burster", false, false)
        .await
        .unwrap();
    let ch = channel(&ws.id, &user.id, "burst", false);
    store.create_channel(&ch).await.unwrap();
    for seq in 1..=3 {
        store
            .append(&message(&ws.id, &ch.id, &user.id, seq, None))
            .await
            .unwrap();
    }
    // Seq 3 is taken, so the first fails; the repeat comes right behind it.
    let burst = [
        message(&ws.id, &ch.id, &user.id, 3, Some("burst-1")),
        message(&ws.id, &ch.id, &user.id, 4, Some("burst-1")),
    ];
    let outcomes = futures_util::future::join_all(burst.iter().map(|m| store.append(m))).await;
    assert_eq!(
        outcomes[0].as_ref().map_err(|e| e.kind).err(),
        Some(StorageErrorKind::SeqConflict),
        "{outcomes:?}"
    );
    let stored = store
        .message_by_client_msg_id(&ws.id, &ch.id, "burst-1")
        .await
        .unwrap();
    match &outcomes[1] {
        Ok(AppendOutcome::Duplicate(m)) => assert_eq!(
            stored.map(|s| s.seq),
            Some(m.seq),
            "the repeat was told seq {} is stored",
            m.seq
        ),
        Ok(AppendOutcome::Stored) => assert_eq!(stored.map(|s| s.seq), Some(4)),
        Err(_) => assert!(stored.is_none(), "{stored:?}"),
    }
}

async fn appends_and_history(store: &dyn MessageStore) {
    let ws = store.create_workspace("history-ws").await.unwrap();
    let user = store
        .create_user(&ws.id, "poster", "Poster", false, false)
        .await
        .unwrap();
    let ch = channel(&ws.id, &user.id, "log", false);
    store.create_channel(&ch).await.unwrap();
    assert!(store.last_message(&ws.id, &ch.id).await.unwrap().is_none());

    for seq in 1..=30 {
        let cmid = format!("cmid-{seq}");
        assert_eq!(
            store
                .append(&message(&ws.id, &ch.id, &user.id, seq, Some(&cmid)))
                .await
                .unwrap(),
            AppendOutcome::Stored
        );
    }
    // A taken sequence is refused, whatever the content.
    let mut clash = message(&ws.id, &ch.id, &user.id, 30, None);
    clash.ts = Ts(9_999_999_999_999_999);
    assert_eq!(
        store.append(&clash).await.unwrap_err().kind,
        StorageErrorKind::SeqConflict
    );
    // A repeated client_msg_id returns the stored message and writes nothing.
    let repeat = message(&ws.id, &ch.id, &user.id, 31, Some("cmid-7"));
    match store.append(&repeat).await.unwrap() {
        AppendOutcome::Duplicate(m) => assert_eq!(m.seq, 7),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(last_seq(store, &ws.id, &ch.id).await, 30);
    assert_eq!(
        store
            .message_by_client_msg_id(&ws.id, &ch.id, "cmid-12")
            .await
            .unwrap()
            .unwrap()
            .seq,
        12
    );
    assert!(store
        .message_by_client_msg_id(&ws.id, &ch.id, "nope")
        .await
        .unwrap()
        .is_none());

    let seqs = |v: Vec<Message>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    let newest = store
        .history(
            &ws.id,
            &ch.id,
            &HistoryQuery {
                limit: 5,
                newest_first: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(newest), vec![30, 29, 28, 27, 26]);
    let page = store
        .history(
            &ws.id,
            &ch.id,
            &HistoryQuery {
                before_seq: Some(26),
                limit: 3,
                newest_first: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(page), vec![25, 24, 23]);
    let after = store
        .history(
            &ws.id,
            &ch.id,
            &HistoryQuery {
                after_seq: Some(27),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(after), vec![28, 29, 30]);
    let by_ts = store
        .history(
            &ws.id,
            &ch.id,
            &HistoryQuery {
                oldest: Some(Ts(1_700_000_000_000_000 + 100)),
                latest: Some(Ts(1_700_000_000_000_000 + 140)),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        seqs(by_ts),
        vec![11, 12, 13],
        "oldest and latest are exclusive"
    );
    // Another workspace cannot read the channel's messages by guessing its id.
    let other = store.create_workspace("history-other").await.unwrap();
    assert!(store
        .history(
            &other.id,
            &ch.id,
            &HistoryQuery {
                limit: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .is_empty());
}

/// Waits until changes written so far may be read from the feed.
/// The `seq` of a channel's last stored message.
async fn last_seq(store: &dyn MessageStore, ws: &WorkspaceId, ch: &ChannelId) -> Seq {
    store.last_message(ws, ch).await.unwrap().unwrap().seq
}

async fn settle(store: &dyn MessageStore) {
    let delay = store.change_feed_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay + std::time::Duration::from_millis(50)).await;
    }
}

async fn change_feed(store: &dyn MessageStore) {
    let ws = store.create_workspace("feed-ws").await.unwrap();
    let user = store
        .create_user(&ws.id, "feeder", "Feeder", false, false)
        .await
        .unwrap();
    let ch = channel(&ws.id, &user.id, "feed", false);
    store.create_channel(&ch).await.unwrap();
    let shard = store.shard_of(&ws.id, &ch.id);
    let before = store
        .changes_since(shard, 0, 100_000)
        .await
        .unwrap()
        .last()
        .map(|c| c.id)
        .unwrap_or(0);
    for seq in 1..=5 {
        store
            .append(&message(&ws.id, &ch.id, &user.id, seq, None))
            .await
            .unwrap();
    }
    settle(store).await;
    let changes = store.changes_since(shard, before, 100).await.unwrap();
    let mine: Vec<_> = changes
        .iter()
        .filter(|c| c.message.channel == ch.id)
        .collect();
    assert_eq!(
        mine.iter().map(|c| c.message.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(
        changes.windows(2).all(|w| w[0].id < w[1].id),
        "change ids increase"
    );
    let last = changes.last().unwrap().id;
    assert!(store
        .changes_since(shard, last, 100)
        .await
        .unwrap()
        .is_empty());
    let limited = store.changes_since(shard, before, 2).await.unwrap();
    assert_eq!(limited.len(), 2);
    // An edit and a deletion show up as changes of the posted message.
    let target = message(&ws.id, &ch.id, &user.id, 2, None).ts;
    let mut edit = message(&ws.id, &ch.id, &user.id, 6, None);
    edit.kind = MessageKind::Edited { target };
    edit.text = "edited".into();
    store.append(&edit).await.unwrap();
    let mut delete = message(&ws.id, &ch.id, &user.id, 7, None);
    delete.kind = MessageKind::Deleted {
        target: message(&ws.id, &ch.id, &user.id, 3, None).ts,
    };
    delete.text = String::new();
    store.append(&delete).await.unwrap();
    settle(store).await;
    let later = store.changes_since(shard, last, 100).await.unwrap();
    assert_eq!(later.len(), 2);
    assert_eq!(
        (
            later[0].message.seq,
            later[0].message.text.as_str(),
            later[0].deleted
        ),
        (2, "edited", false)
    );
    assert_eq!((later[1].message.seq, later[1].deleted), (3, true));
}

async fn edits_threads_and_reactions(store: &dyn MessageStore) {
    let ws = store.create_workspace("views-ws").await.unwrap();
    let alice = store
        .create_user(&ws.id, "alice", "Alice", false, false)
        .await
        .unwrap();
    let bob = store
        .create_user(&ws.id, "bob", "Bob", false, false)
        .await
        .unwrap();
    let ch = channel(&ws.id, &alice.id, "views", false);
    store.create_channel(&ch).await.unwrap();
    let mut seq = 0;
    let mut entry = |user: &UserId, text: &str, kind: MessageKind, thread: Option<Ts>| {
        seq += 1;
        let mut m = message(&ws.id, &ch.id, user, seq, None);
        m.text = text.into();
        m.kind = kind;
        m.thread_ts = thread;
        m
    };
    let parent = entry(&alice.id, "parent", MessageKind::Posted, None);
    let reply1 = entry(&bob.id, "reply one", MessageKind::Posted, Some(parent.ts));
    let reply2 = entry(&alice.id, "reply two", MessageKind::Posted, Some(parent.ts));
    let other = entry(&bob.id, "other", MessageKind::Posted, None);
    let mut edit = entry(
        &bob.id,
        "other, edited",
        MessageKind::Edited { target: other.ts },
        None,
    );
    // What the channel's owner records of the message before the change.
    edit.previous = Some(Box::new(PreviousMessage {
        user: bob.id.clone(),
        text: "other".into(),
        thread_ts: None,
        edited: None,
        rich: RichContent {
            blocks: Some(r#"[{"type":"divider"}]"#.into()),
            ..RichContent::default()
        }
        .boxed(),
    }));
    let react_a = entry(
        &alice.id,
        "",
        MessageKind::ReactionAdded {
            target: parent.ts,
            reaction: "tada".into(),
        },
        None,
    );
    let react_b = entry(
        &bob.id,
        "",
        MessageKind::ReactionAdded {
            target: parent.ts,
            reaction: "tada".into(),
        },
        None,
    );
    let react_c = entry(
        &bob.id,
        "",
        MessageKind::ReactionAdded {
            target: parent.ts,
            reaction: "eyes".into(),
        },
        None,
    );
    let unreact = entry(
        &bob.id,
        "",
        MessageKind::ReactionRemoved {
            target: parent.ts,
            reaction: "eyes".into(),
        },
        None,
    );
    let doomed = entry(&alice.id, "oops", MessageKind::Posted, None);
    let mut delete = entry(
        &alice.id,
        "",
        MessageKind::Deleted { target: doomed.ts },
        None,
    );
    delete.previous = Some(Box::new(PreviousMessage {
        user: alice.id.clone(),
        text: "oops".into(),
        thread_ts: Some(parent.ts),
        edited: Some(Ts(1)),
        rich: None,
    }));
    for m in [
        &parent, &reply1, &reply2, &other, &edit, &react_a, &react_b, &react_c, &unreact, &doomed,
        &delete,
    ] {
        assert_eq!(store.append(m).await.unwrap(), AppendOutcome::Stored);
    }
    // The raw stream keeps every entry, in order.
    let stream = store
        .history(
            &ws.id,
            &ch.id,
            &HistoryQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(stream.len(), 11);
    assert_eq!(stream[4].kind, MessageKind::Edited { target: other.ts });
    // Changes keep what their message was before them; other entries have nothing there.
    assert_eq!(stream[4], edit);
    assert_eq!(stream[10], delete);
    assert!(stream[..4].iter().all(|m| m.previous.is_none()));
    // The views of the channel: top-level (`None`) or one thread's (`Some(parent)`).
    let (ws_id, ch_id) = (&ws.id, &ch.id);
    let views_of = |thread: Option<Ts>| async move {
        store
            .message_views(
                ws_id,
                ch_id,
                &HistoryQuery {
                    limit: 100,
                    ..Default::default()
                },
                thread,
            )
            .await
            .unwrap()
    };
    // The view shows top-level, undeleted messages with their state.
    let top = views_of(None).await;
    assert_eq!(
        top.iter()
            .map(|v| v.message.text.as_str())
            .collect::<Vec<_>>(),
        vec!["parent", "other, edited"]
    );
    assert_eq!(top[0].reply_count, 2);
    assert_eq!(top[0].latest_reply, Some(reply2.ts));
    assert_eq!(top[0].reactions.len(), 1, "eyes was taken back");
    assert_eq!(top[0].reactions[0].name, "tada");
    assert_eq!(
        top[0].reactions[0].users,
        vec![alice.id.clone(), bob.id.clone()]
    );
    assert_eq!(top[1].edited, Some(edit.ts));
    // A thread: its parent and replies, oldest first.
    let thread_of = |parent: Ts| views_of(Some(parent));
    let thread = thread_of(parent.ts).await;
    assert_eq!(
        thread
            .iter()
            .map(|v| v.message.text.as_str())
            .collect::<Vec<_>>(),
        vec!["parent", "reply one", "reply two"]
    );
    // One message by ts, deleted ones flagged.
    assert!(
        store
            .message_view(&ws.id, &ch.id, doomed.ts)
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
    assert_eq!(
        store
            .message_view(&ws.id, &ch.id, other.ts)
            .await
            .unwrap()
            .unwrap()
            .message
            .text,
        "other, edited"
    );
    assert!(
        store
            .message_view(&ws.id, &ch.id, edit.ts)
            .await
            .unwrap()
            .is_none(),
        "an edit entry is not a message"
    );
    // Deleted replies leave their thread: the parent counts the rest, and its latest reply
    // is the latest one left (a second delete of the same reply changes nothing).
    let reply3 = entry(&bob.id, "reply three", MessageKind::Posted, Some(parent.ts));
    assert_eq!(store.append(&reply3).await.unwrap(), AppendOutcome::Stored);
    let parent_state = || async {
        let v = store
            .message_view(&ws.id, &ch.id, parent.ts)
            .await
            .unwrap()
            .unwrap();
        (v.reply_count, v.latest_reply)
    };
    assert_eq!(parent_state().await, (3, Some(reply3.ts)));
    for (target, expected) in [
        (reply3.ts, (2, Some(reply2.ts))),
        (reply1.ts, (1, Some(reply2.ts))),
        (reply1.ts, (1, Some(reply2.ts))),
        (reply2.ts, (0, None)),
    ] {
        let delete = entry(&alice.id, "", MessageKind::Deleted { target }, None);
        assert_eq!(store.append(&delete).await.unwrap(), AppendOutcome::Stored);
        assert_eq!(parent_state().await, expected, "after deleting {target:?}");
    }
    assert_eq!(
        thread_of(parent.ts).await.len(),
        1,
        "only the parent is left"
    );

    // A deleted parent whose replies remain stays, flagged, above them (Slack's tombstone),
    // and goes with its last reply.
    let parent2 = entry(&alice.id, "doomed parent", MessageKind::Posted, None);
    let reply4 = entry(
        &bob.id,
        "reply to the doomed",
        MessageKind::Posted,
        Some(parent2.ts),
    );
    // As `chat.delete` writes it: the deletion of a parent with replies names its thread.
    let delete_parent = entry(
        &alice.id,
        "",
        MessageKind::Deleted { target: parent2.ts },
        Some(parent2.ts),
    );
    for m in [&parent2, &reply4, &delete_parent] {
        assert_eq!(store.append(m).await.unwrap(), AppendOutcome::Stored);
    }
    let tombstone = views_of(None)
        .await
        .into_iter()
        .find(|v| v.message.ts == parent2.ts)
        .expect("a deleted parent with replies is shown");
    assert!(tombstone.deleted);
    assert_eq!(
        (tombstone.reply_count, tombstone.latest_reply),
        (1, Some(reply4.ts))
    );
    let thread = thread_of(parent2.ts).await;
    assert_eq!(
        thread
            .iter()
            .map(|v| (v.message.ts, v.deleted))
            .collect::<Vec<_>>(),
        vec![(parent2.ts, true), (reply4.ts, false)]
    );
    let delete_reply = entry(
        &bob.id,
        "",
        MessageKind::Deleted { target: reply4.ts },
        None,
    );
    assert_eq!(
        store.append(&delete_reply).await.unwrap(),
        AppendOutcome::Stored
    );
    assert!(
        views_of(None)
            .await
            .iter()
            .all(|v| v.message.ts != parent2.ts),
        "the tombstone outlived its last reply"
    );
    assert!(thread_of(parent2.ts).await.is_empty());
    // Then `chat.delete` tells clients the tombstone went, with a second deletion of the
    // parent: stored, and nothing else changes.
    let delete_tombstone = entry(
        &bob.id,
        "",
        MessageKind::Deleted { target: parent2.ts },
        None,
    );
    assert_eq!(
        store.append(&delete_tombstone).await.unwrap(),
        AppendOutcome::Stored
    );
    assert!(views_of(None)
        .await
        .iter()
        .all(|v| v.message.ts != parent2.ts));
    assert!(thread_of(parent2.ts).await.is_empty());

    // A reply also shown in the channel (`reply_broadcast`): in the top level and in its
    // thread, flagged so, and in the stream as stored; plain replies stay in their thread.
    let mut broadcast = entry(
        &alice.id,
        "also to the channel",
        MessageKind::Posted,
        Some(parent.ts),
    );
    broadcast.broadcast = true;
    assert_eq!(
        store.append(&broadcast).await.unwrap(),
        AppendOutcome::Stored
    );
    let top = views_of(None).await;
    let shown = top
        .iter()
        .find(|v| v.message.ts == broadcast.ts)
        .expect("a broadcast reply is shown in the channel");
    assert_eq!(shown.message, broadcast);
    assert!(
        top.iter()
            .all(|v| v.message.broadcast || v.message.thread_ts.is_none_or(|t| t == v.message.ts)),
        "plain replies stay in their thread"
    );
    let thread = thread_of(parent.ts).await;
    assert_eq!(
        thread
            .last()
            .map(|v| (&v.message.text, v.message.broadcast)),
        Some((&broadcast.text, true))
    );
    assert!(thread[..thread.len() - 1]
        .iter()
        .all(|v| !v.message.broadcast));
    let stream = store
        .history(
            &ws.id,
            &ch.id,
            &HistoryQuery {
                limit: 1,
                newest_first: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(stream, vec![broadcast]);

    // Blocks and attachments are kept as given; an edit replaces them with its whole new set
    // (none: gone), and a deletion takes them away.
    let mut rich = entry(&bob.id, "rich", MessageKind::Posted, None);
    rich.rich = RichContent {
        blocks: Some(r#"[{"type":"divider"}]"#.into()),
        attachments: Some(r#"[{"fallback":"f","color":"good"}]"#.into()),
        sets: None,
        // A bot's own name and icon for the message are kept with it too.
        identity: Some(crate::protocol::Identity {
            username: Some("Build: main".into()),
            icon_emoji: Some(":rocket:".into()),
            icon_url: None,
        }),
        // And an app's metadata.
        metadata: Some(r#"{"event_type":"deploy_done","event_payload":{"id":7}}"#.into()),
        bot_name: Some("ci".into()),
        me: false,
        // And the files shared with it.
        files: Some(r#"[{"id":"F1","name":"build.log"}]"#.into()),
    }
    .boxed();
    assert_eq!(store.append(&rich).await.unwrap(), AppendOutcome::Stored);
    let rich_view = |ts: Ts| async move {
        store
            .message_view(ws_id, ch_id, ts)
            .await
            .unwrap()
            .expect("the message")
    };
    assert_eq!(rich_view(rich.ts).await.message, rich);
    let mut reshaped = entry(
        &bob.id,
        "rich, edited",
        MessageKind::Edited { target: rich.ts },
        None,
    );
    reshaped.rich = RichContent {
        blocks: None,
        attachments: Some(r#"[{"fallback":"g"}]"#.into()),
        sets: None,
        identity: None,
        metadata: None,
        bot_name: None,
        me: false,
        files: None,
    }
    .boxed();
    assert_eq!(
        store.append(&reshaped).await.unwrap(),
        AppendOutcome::Stored
    );
    let v = rich_view(rich.ts).await;
    assert_eq!(
        (v.message.text.as_str(), &v.message.rich),
        ("rich, edited", &reshaped.rich)
    );
    let plain = entry(
        &bob.id,
        "plain now",
        MessageKind::Edited { target: rich.ts },
        None,
    );
    assert_eq!(store.append(&plain).await.unwrap(), AppendOutcome::Stored);
    assert_eq!(rich_view(rich.ts).await.message.rich, None);
    let mut again = entry(&bob.id, "rich again", MessageKind::Posted, None);
    again.rich = RichContent {
        blocks: Some("[{\"type\":\"divider\"}]".into()),
        attachments: None,
        sets: None,
        identity: None,
        metadata: None,
        bot_name: None,
        me: false,
        files: None,
    }
    .boxed();
    let gone = entry(&bob.id, "", MessageKind::Deleted { target: again.ts }, None);
    for m in [&again, &gone] {
        assert_eq!(store.append(m).await.unwrap(), AppendOutcome::Stored);
    }
    let v = rich_view(again.ts).await;
    assert!(v.deleted && v.message.rich.is_none(), "{v:?}");

    // A channel's topic announcement keeps what it set.
    let mut topic = entry(
        &bob.id,
        "set the channel topic: launch",
        MessageKind::Posted,
        None,
    );
    topic.rich = RichContent {
        sets: Some(ChannelSetting::Topic("launch".into())),
        ..RichContent::default()
    }
    .boxed();
    assert_eq!(store.append(&topic).await.unwrap(), AppendOutcome::Stored);
    assert_eq!(rich_view(topic.ts).await.message, topic);

    // A bot's message stays one.
    let mut from_bot = entry(&bob.id, "deployed", MessageKind::Posted, None);
    from_bot.bot = true;
    assert_eq!(
        store.append(&from_bot).await.unwrap(),
        AppendOutcome::Stored
    );
    assert!(rich_view(from_bot.ts).await.message.bot);
    assert!(!rich_view(topic.ts).await.message.bot);

    let stranger = store.create_workspace("views-other").await.unwrap();
    assert!(store
        .message_view(&stranger.id, &ch.id, other.ts)
        .await
        .unwrap()
        .is_none());
}
