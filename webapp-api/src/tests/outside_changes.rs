//! Who may edit or delete a message from outside its channel: its author (edit, delete) and
//! a workspace admin (delete), as README says, within what they can see: never a private
//! channel they are not in, never another workspace.

use super::*;

#[tokio::test]
async fn authors_and_admins_change_messages_from_outside_the_channel() {
    let s = Server::start_with_cluster().await;
    let (alice, bob, carol) = (s.token("alice"), s.token("bob"), s.token("carol"));
    let create = |token: String, name: &'static str, private: bool| {
        let s = &s;
        async move {
            channel_id(
                &s.ok(
                    "conversations.create",
                    &token,
                    json!({"name": name, "is_private": private}),
                )
                .await,
            )
        }
    };
    let post = |token: String, channel: String, text: &'static str| {
        let s = &s;
        async move {
            s.ok(
                "chat.postMessage",
                &token,
                json!({"channel": channel, "text": text}),
            )
            .await["ts"]
                .as_str()
                .expect("ts")
                .to_string()
        }
    };

    // bob posts twice in carol's channel, then leaves it.
    let open = create(carol.clone(), "carols", false).await;
    s.ok("conversations.join", &bob, json!({"channel": open}))
        .await;
    let first = post(bob.clone(), open.clone(), "one").await;
    let second = post(bob.clone(), open.clone(), "two").await;
    let by_carol = post(carol.clone(), open.clone(), "three").await;
    s.ok("conversations.leave", &bob, json!({"channel": open}))
        .await;
    let v = s
        .ok(
            "chat.update",
            &bob,
            json!({"channel": open, "ts": first, "text": "one, edited"}),
        )
        .await;
    assert_eq!(v["text"], "one, edited");
    s.ok("chat.delete", &bob, json!({"channel": open, "ts": first}))
        .await;
    // Not someone else's message, and reactions stay for members.
    s.err(
        "chat.delete",
        &bob,
        json!({"channel": open, "ts": by_carol}),
        "cant_delete_message",
    )
    .await;
    s.err(
        "reactions.add",
        &bob,
        json!({"channel": open, "timestamp": second, "name": "eyes"}),
        "not_in_channel",
    )
    .await;
    // alice, an admin outside the channel, deletes anyone's message in it.
    s.ok(
        "chat.delete",
        &alice,
        json!({"channel": open, "ts": second}),
    )
    .await;
    let history = s
        .ok("conversations.history", &carol, json!({"channel": open}))
        .await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, ["three"]);

    // A private channel stays invisible to an admin outside it.
    let hidden = create(carol.clone(), "hidden", true).await;
    let secret = post(carol.clone(), hidden.clone(), "secret").await;
    s.err(
        "chat.delete",
        &alice,
        json!({"channel": hidden, "ts": secret}),
        "channel_not_found",
    )
    .await;
    // And an admin of another workspace never reaches this one.
    crate::create_workspace(&s.store, "acme").await.expect("ws");
    let (_, acme_admin) = s
        .user_in(
            "acme",
            "boss",
            crate::UserKind {
                admin: true,
                ..Default::default()
            },
        )
        .await;
    s.err(
        "chat.delete",
        &acme_admin,
        json!({"channel": open, "ts": by_carol}),
        "channel_not_found",
    )
    .await;
    s.stop().await;
}
