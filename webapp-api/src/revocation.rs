//! Revoked tokens (`auth.revoke`).
//!
//! Tokens are signed claims that no store holds, so a revoked one is remembered instead: the
//! cluster's [`RecordKind::RevokedTokens`] set, by [`Claims::token_id`], which every Web API
//! node keeps in memory ([`RevokedTokens`]) and reads again every `webapp.records_poll_ms`
//! ([`spawn`]). The node that revokes a token refuses it at once, the others within that
//! poll. Every method checks it (`token_revoked`), and with it the gateways, which list a new
//! session's channels through the Web API with the session's token; a live session of the
//! token is told `tokens_revoked` and closed by its gateway (`gateway::session`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use serde_json::json;
use shared::auth::Claims;
use shared::ids::Ts;
use shared::protocol::UserEvent;
use shared::shutdown::{Every, Shutdown};
use shared::store::{cluster_records, RecordKind, RevokedToken};

use crate::api::{object, ApiResult, AppState, Caller, Params};
use crate::methods::records::{change_records, PolledSet};
use crate::metrics as m;

/// The revoked tokens' ids, as this node last read them (and those it revoked since).
#[derive(Debug, Default)]
pub struct RevokedTokens {
    ids: RwLock<HashSet<String>>,
    /// Whether `ids` holds any, so that a request touches no lock while none was revoked
    /// (every request asks, on every core).
    any: AtomicBool,
}

impl RevokedTokens {
    /// Whether the token with `claims` was revoked. Costs an atomic load while none was.
    pub fn contains(&self, claims: &Claims) -> bool {
        self.any.load(Ordering::Acquire)
            && self
                .ids
                .read()
                .expect("revoked tokens")
                .contains(&claims.token_id())
    }

    fn insert(&self, id: String) {
        self.ids.write().expect("revoked tokens").insert(id);
        self.any.store(true, Ordering::Release);
    }

    /// Takes what the store holds, keeping what this node revoked meanwhile: a revocation
    /// is never undone, so the union is right.
    fn extend(&self, ids: impl IntoIterator<Item = String>) -> usize {
        let mut set = self.ids.write().expect("revoked tokens");
        set.extend(ids);
        if !set.is_empty() {
            self.any.store(true, Ordering::Release);
        }
        set.len()
    }
}

/// Reads the revoked tokens now, then every `poll` until `shutdown` (each time only the
/// set's version unless it moved).
pub fn spawn(state: AppState, poll: Duration, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut polled = PolledSet::new(RecordKind::RevokedTokens);
        let mut every = Every::new(poll, shutdown);
        while every.next().await {
            if let Err(e) = refresh(&state, &mut polled).await {
                tracing::warn!(error = %e, "could not read the revoked tokens; trying again later");
            }
        }
    });
}

/// One look at the revoked tokens, taken into `state` when they changed since `polled` last
/// read them; whether they were read again.
pub(crate) async fn refresh(
    state: &AppState,
    polled: &mut PolledSet,
) -> shared::store::StorageResult<bool> {
    let (set, fresh) = polled.look(&state.store).await?;
    if fresh {
        let n = state
            .revoked
            .extend(set.records.iter().map(|(id, _)| id.clone()));
        m::REVOKED_TOKENS.set(n as i64);
    }
    Ok(fresh)
}

/// `auth.revoke`: the calling token is refused from now on (with `test`, it is not: the
/// answer says `revoked: false`). Its live sessions hear Slack's `tokens_revoked` and close.
pub async fn auth_revoke(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    if params.flag("test", false) {
        return Ok(object(json!({ "revoked": false })));
    }
    let id = caller.claims.token_id();
    let record = serde_json::to_string(&RevokedToken {
        workspace: caller.claims.workspace.clone(),
        user: caller.claims.user.clone(),
        revoked: Ts::now(),
    })
    .map_err(|e| crate::api::ApiError::Internal(e.to_string()))?;
    change_records(
        state,
        &cluster_records(),
        &RecordKind::RevokedTokens,
        || m::TOKENS_REVOKED.with_label_values(&["raced"]).inc(),
        |set| {
            let had = set.records.iter().any(|(rid, _)| *rid == id);
            let writes = if had {
                vec![]
            } else {
                vec![(id.clone(), Some(record.clone()))]
            };
            async move { Ok((writes, ())) }
        },
    )
    .await?;
    state.revoked.insert(id.clone());
    m::TOKENS_REVOKED.with_label_values(&["revoked"]).inc();
    // Slack's event for it, to the user's own sessions; the one of this token closes on it.
    let kind = if caller.claims.bot { "bot" } else { "oauth" };
    let event = json!({
        "type": "tokens_revoked",
        "tokens": { kind: [caller.claims.user] },
        "token_ids": [id],
        "event_ts": Ts::now().to_slack(),
    });
    let notice = UserEvent::UserNotice {
        workspace: caller.claims.workspace.clone(),
        user: caller.claims.user.clone(),
        event: event.to_string(),
    };
    crate::methods::publish(state, notice).await;
    Ok(object(json!({ "revoked": true })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::{UserId, WorkspaceId};

    fn claims(issued_at: u64, bot: bool) -> Claims {
        Claims {
            workspace: WorkspaceId::from("T1"),
            user: UserId::from("U1"),
            admin: false,
            bot,
            issued_at,
            service: false,
        }
    }

    #[test]
    fn a_revoked_token_is_that_token_only() {
        let revoked = RevokedTokens::default();
        assert!(!revoked.contains(&claims(5, false)));
        revoked.insert(claims(5, false).token_id());
        assert!(revoked.contains(&claims(5, false)));
        assert!(
            !revoked.contains(&claims(6, false)),
            "another token of the user"
        );
        assert!(!revoked.contains(&claims(5, true)), "its bot token");
        // What the store gives back adds to what this node revoked, never removes it.
        assert_eq!(revoked.extend([claims(7, false).token_id()]), 2);
        assert!(revoked.contains(&claims(5, false)) && revoked.contains(&claims(7, false)));
    }
}
