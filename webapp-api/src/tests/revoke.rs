//! `auth.revoke`: the calling token, and only it, is refused from then on, on this node at
//! once and on another once it read the cluster's revoked tokens; its user's sessions hear
//! Slack's `tokens_revoked`.

use serde_json::json;
use shared::auth::Claims;
use shared::ids::{UserId, WorkspaceId};

use crate::admin_link::AdminLink;
use crate::api::AppState;
use crate::tests::Server;

#[tokio::test]
async fn a_revoked_token_is_refused_everywhere_and_only_it() {
    let s = Server::start_with_cluster().await;
    let bob = s.user_id("bob");
    let claims = |issued_at: u64| Claims {
        workspace: WorkspaceId(s.demo["workspace"].as_str().unwrap().into()),
        user: UserId(bob.clone()),
        admin: false,
        bot: false,
        issued_at,
        service: false,
    };
    let (one, two) = (s.signer.issue(&claims(1)), s.signer.issue(&claims(2)));

    // Only trying revokes nothing.
    let v = s.ok("auth.revoke", &one, json!({ "test": true })).await;
    assert_eq!(v["revoked"], false, "{v}");
    s.ok("auth.test", &one, json!({})).await;

    let v = s.ok("auth.revoke", &one, json!({})).await;
    assert_eq!(v["revoked"], true, "{v}");
    s.err("auth.test", &one, json!({}), "token_revoked").await;
    s.err(
        "chat.postMessage",
        &one,
        json!({ "channel": "general", "text": "still here?" }),
        "token_revoked",
    )
    .await;
    s.err("auth.revoke", &one, json!({}), "token_revoked").await;
    // The user's other token, and everyone else's, go on.
    assert_eq!(s.ok("auth.test", &two, json!({})).await["user_id"], bob);
    s.ok("auth.test", &s.token("alice"), json!({})).await;

    // The user's sessions are told, with the token's id for its own to close on.
    let told = s
        .user_notices(&bob, "tokens_revoked", 1)
        .await
        .into_iter()
        .next()
        .expect("tokens_revoked was relayed");
    assert_eq!(told["tokens"]["oauth"], json!([bob]), "{told}");
    assert_eq!(told["token_ids"], json!([claims(1).token_id()]), "{told}");

    // Another node refuses it once it read the cluster's revoked tokens.
    let other = AppState::new(
        s.store.clone(),
        s.signer.clone(),
        AdminLink::detached_for_test(),
        Vec::new(),
        1 << 20,
        "127.0.0.1:1".parse().unwrap(),
    );
    assert!(!other.revoked.contains(&claims(1)));
    let mut polled =
        crate::methods::records::PolledSet::new(shared::store::RecordKind::RevokedTokens);
    assert!(crate::revocation::refresh(&other, &mut polled)
        .await
        .unwrap());
    assert!(other.revoked.contains(&claims(1)));
    assert!(!other.revoked.contains(&claims(2)));
    // Nothing revoked since: the next look reads the set's version alone; a revocation on
    // another node makes it read the set again.
    assert!(!crate::revocation::refresh(&other, &mut polled)
        .await
        .unwrap());
    s.ok("auth.revoke", &two, json!({})).await;
    assert!(crate::revocation::refresh(&other, &mut polled)
        .await
        .unwrap());
    assert!(other.revoked.contains(&claims(2)));
    s.stop().await;
}
