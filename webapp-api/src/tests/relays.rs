//! What the Web API relays through the real admin server (recorded by [`super::cluster`]), and in
//! which order: a Flannel cache that hears of a join to a channel it does not know reloads the
//! whole workspace snapshot, so a new channel is announced before its members.

use shared::protocol::UserEvent;

use super::*;

/// The relayed events about `channel`, as `created` / `joined <user>`.
fn about(events: &[UserEvent], channel: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            UserEvent::ChannelCreated { channel: c, .. } if c.id.as_str() == channel => {
                Some("created".to_string())
            }
            UserEvent::ChannelJoined {
                channel: c, user, ..
            } if c.as_str() == channel => Some(format!("joined {user}")),
            _ => None,
        })
        .collect()
}

/// `events` with the joins after the first event sorted: joins to one channel are relayed
/// concurrently ([`crate::relay`]), so only the announcement's place is fixed.
fn joins_sorted(mut events: Vec<String>) -> Vec<String> {
    if let Some(joins) = events.get_mut(1..) {
        joins.sort();
    }
    events
}

/// The relayed events about `channel` once there are `n` of them (they reach the follower
/// after the admin server answered the relay): waits at most 10 s, then returns what came.
async fn about_when(s: &Server, channel: &str, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let seen = about(&s.relayed_events(), channel);
        if seen.len() >= n {
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    about(&s.relayed_events(), channel)
}

#[tokio::test]
async fn a_new_conversation_is_announced_before_its_members() {
    let s = Server::start_with_cluster().await;
    let alice = s.token("alice");
    let (alice_id, bob_id, carol_id) = (s.user_id("alice"), s.user_id("bob"), s.user_id("carol"));
    let id = |v: &Value| v["channel"]["id"].as_str().expect("channel id").to_string();

    let created = id(&s
        .ok("conversations.create", &alice, json!({"name": "plans"}))
        .await);
    assert_eq!(
        about_when(&s, &created, 2).await,
        vec!["created".to_string(), format!("joined {alice_id}")]
    );

    // The announcement comes first; the members' joins in any order.
    let mut pair = [alice_id.clone(), bob_id.clone()];
    pair.sort();
    let dm = id(&s
        .ok("conversations.open", &alice, json!({"users": bob_id}))
        .await);
    let mut expected = vec!["created".to_string()];
    expected.extend(pair.iter().map(|u| format!("joined {u}")));
    assert_eq!(
        joins_sorted(about_when(&s, &dm, expected.len()).await),
        expected
    );

    let mut three = [alice_id.clone(), bob_id.clone(), carol_id.clone()];
    three.sort();
    let group = id(&s
        .ok(
            "conversations.open",
            &alice,
            json!({"users": format!("{bob_id},{carol_id}")}),
        )
        .await);
    let mut expected = vec!["created".to_string()];
    expected.extend(three.iter().map(|u| format!("joined {u}")));
    assert_eq!(
        joins_sorted(about_when(&s, &group, expected.len()).await),
        expected
    );

    // Opening it again announces nothing new: by the time a later channel's announcement
    // has come, nothing more about the DM came before it.
    let again = s
        .ok("conversations.open", &alice, json!({"users": bob_id}))
        .await;
    assert_eq!(id(&again), dm);
    let sentinel = id(&s
        .ok("conversations.create", &alice, json!({"name": "sentinel"}))
        .await);
    assert_eq!(about_when(&s, &sentinel, 2).await.len(), 2);
    assert_eq!(about(&s.relayed_events(), &dm).len(), 1 + pair.len());
    s.stop().await;
}

/// The channel's seq from before the join, as each joined event of `user` to `channel` carries it.
fn join_seqs(events: &[UserEvent], channel: &str, user: &str) -> Vec<Option<u64>> {
    events
        .iter()
        .filter_map(|e| match e {
            UserEvent::ChannelJoined {
                channel: c,
                user: u,
                after_seq,
                ..
            } if c.as_str() == channel && u.as_str() == user => Some(*after_seq),
            _ => None,
        })
        .collect()
}

/// A join carries the channel's last seq from before it, so that the joiner's gateway starts
/// the joiner's sessions there: a message posted right after the join may reach the gateway
/// before the join does, and must not be skipped.
#[tokio::test]
async fn a_join_carries_the_seq_of_the_channel_before_it() {
    let s = Server::start_with_cluster().await;
    let (alice, bob, carol) = (s.token("alice"), s.token("bob"), s.token("carol"));
    let (bob_id, carol_id) = (s.user_id("bob"), s.user_id("carol"));
    let created = s
        .ok("conversations.create", &alice, json!({"name": "seqs"}))
        .await;
    let channel = created["channel"]["id"].as_str().expect("id").to_string();
    // A new channel has no messages: its creator starts from 0.
    let alice_id = s.user_id("alice");
    for _ in 0..200 {
        if !join_seqs(&s.relayed_events(), &channel, &alice_id).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        join_seqs(&s.relayed_events(), &channel, &alice_id),
        vec![Some(0)]
    );
    for text in ["one", "two"] {
        s.ok(
            "chat.postMessage",
            &alice,
            json!({"channel": channel, "text": text}),
        )
        .await;
    }
    // conversations.join and conversations.invite both read it before storing the member.
    s.ok("conversations.join", &bob, json!({"channel": channel}))
        .await;
    s.ok(
        "chat.postMessage",
        &bob,
        json!({"channel": channel, "text": "three"}),
    )
    .await;
    s.ok(
        "conversations.invite",
        &alice,
        json!({"channel": channel, "users": carol_id}),
    )
    .await;
    let mut seen = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let events = s.relayed_events();
        seen = (
            join_seqs(&events, &channel, &bob_id),
            join_seqs(&events, &channel, &carol_id),
        );
        if !seen.0.is_empty() && !seen.1.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, (vec![Some(2)], vec![Some(3)]));
    // Carol can read what was posted before she came (history), and is a member now.
    let history = s
        .ok("conversations.history", &carol, json!({"channel": channel}))
        .await;
    assert_eq!(history["messages"].as_array().expect("messages").len(), 3);
    s.stop().await;
}
