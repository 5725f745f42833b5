//! An app's Events API request URL: `apps.eventSubscriptions.set`, `.info` and `.delete`.
//!
//! Slack sets the request URL in an app's settings page (or its manifest); Switchboard, whose
//! apps are their bot (or person) users as in Socket Mode, lets the app set its own with its
//! token. The URL must answer Slack's `url_verification` challenge before it is kept
//! ([`verify_url`]). The app's signing secret and verification token, which the SDKs'
//! request verifiers take, are made at its first `info` (or `set`) and kept, so that its
//! server can check the challenge's signature too. From then on every Web API node sends the
//! app's events there ([`crate::events_http`]).

use serde_json::json;
use shared::ids::Ts;
use shared::store::{
    cluster_records, EventSubscription, RecordKind, RecordSet, SubscriptionDisabled,
};

use super::records::{change_records, Write};
use crate::api::{object, ApiError, ApiResult, AppState, Caller, Params};
use crate::events_http::{self, new_secret, valid_request_url, verify_url};
use crate::metrics as m;

/// The caller's subscription in `set`, if it has one.
fn subscription_of(set: &RecordSet, id: &str) -> ApiResult<Option<EventSubscription>> {
    set.records
        .iter()
        .find(|(rid, _)| rid == id)
        .map(|(_, json)| {
            serde_json::from_str(json)
                .map_err(|e| ApiError::Internal(format!("stored subscription {id}: {e}")))
        })
        .transpose()
}

fn answer(sub: &EventSubscription) -> ApiResult {
    let mut out = json!({
        "app_id": format!("A{}", sub.user.0.strip_prefix('U').unwrap_or(&sub.user.0)),
        "request_url": sub.request_url,
        "signing_secret": sub.signing_secret,
        "verification_token": sub.verification_token,
        "disabled": sub.disabled.is_some(),
    });
    if let Some(disabled) = &sub.disabled {
        out["disabled_at"] = disabled.at.to_slack().into();
        out["disabled_reason"] = disabled.reason.as_str().into();
    }
    Ok(object(out))
}

/// The caller's subscription, made (with fresh secrets and no URL) and kept if it had none:
/// an app knows its signing secret before it sets a URL, as a Slack app does from its
/// creation, so that its server checks the challenge's signature too.
async fn subscription(state: &AppState, caller: &Caller) -> ApiResult<EventSubscription> {
    let workspace = &caller.claims.workspace;
    let id = EventSubscription::record_id(workspace, &caller.user.id);
    change_subscriptions(state, |set| {
        let found = subscription_of(&set, &id);
        let (id, workspace, user) = (id.clone(), workspace.clone(), caller.user.id.clone());
        async move {
            if let Some(sub) = found? {
                return Ok((vec![], sub));
            }
            let sub = EventSubscription {
                workspace,
                user,
                request_url: String::new(),
                signing_secret: new_secret(),
                verification_token: new_secret(),
                updated: Ts::now(),
                disabled: None,
            };
            Ok((vec![(id, Some(record_json(&sub)?))], sub))
        }
    })
    .await
}

/// A change to the cluster's subscriptions (see [`change_records`]); a retry is counted.
async fn change_subscriptions<F, Fut, T>(state: &AppState, change: F) -> ApiResult<T>
where
    F: FnMut(RecordSet) -> Fut,
    Fut: std::future::Future<Output = ApiResult<(Vec<Write>, T)>>,
{
    change_records(
        state,
        &cluster_records(),
        &RecordKind::EventSubscriptions,
        || m::EVENT_SUBSCRIPTIONS.with_label_values(&["raced"]).inc(),
        change,
    )
    .await
}

fn record_json(sub: &EventSubscription) -> ApiResult<String> {
    serde_json::to_string(sub).map_err(|e| ApiError::Internal(e.to_string()))
}

/// `apps.eventSubscriptions.set`: `request_url` receives the caller's events from now on,
/// once it answered the challenge.
pub(super) async fn set(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let raw = params
        .non_empty("request_url")
        .ok_or(ApiError::MissingArgument("request_url"))?;
    let url = valid_request_url(raw).ok_or(ApiError::Named("invalid_url"))?;
    let mut sub = subscription(state, caller).await?;
    sub.request_url = url;
    sub.updated = Ts::now();
    // A URL set again (and verified below) takes events again, as a Slack app re-enables
    // its subscription by saving its URL.
    sub.disabled = None;
    let private = state.private_request_urls;
    if let Err(detail) = events_http::address_allowed(&sub.request_url, private).await {
        m::EVENT_SUBSCRIPTIONS
            .with_label_values(&["address_refused"])
            .inc();
        return Err(ApiError::UrlVerificationFailed(detail));
    }
    let http = events_http::shared_client(private);
    if let Err(detail) = verify_url(&http, &sub.request_url, &sub).await {
        m::EVENT_SUBSCRIPTIONS
            .with_label_values(&["verification_failed"])
            .inc();
        return Err(ApiError::UrlVerificationFailed(detail));
    }
    write(state, &sub).await?;
    m::EVENT_SUBSCRIPTIONS.with_label_values(&["set"]).inc();
    answer(&sub)
}

/// Writes `sub` over whatever the set holds for its app.
async fn write(state: &AppState, sub: &EventSubscription) -> ApiResult<()> {
    let id = EventSubscription::record_id(&sub.workspace, &sub.user);
    let record = record_json(sub)?;
    change_subscriptions(state, |_| {
        let write = (id.clone(), Some(record.clone()));
        async move { Ok((vec![write], ())) }
    })
    .await
}

/// Disables `sub`, whose URL keeps failing its events or may not be called (`reason`):
/// only if the cluster's record is still exactly `sub` (not set again, deleted or disabled
/// by another node meanwhile). Whether this call disabled it.
pub(crate) async fn disable(
    state: &AppState,
    sub: &EventSubscription,
    reason: String,
) -> ApiResult<bool> {
    let id = EventSubscription::record_id(&sub.workspace, &sub.user);
    let disabled = EventSubscription {
        disabled: Some(SubscriptionDisabled {
            at: Ts::now(),
            reason,
        }),
        ..sub.clone()
    };
    let record = record_json(&disabled)?;
    change_subscriptions(state, |set| {
        let current = subscription_of(&set, &id);
        let write = (id.clone(), Some(record.clone()));
        async move {
            Ok(match current? {
                Some(current) if current == *sub => (vec![write], true),
                _ => (vec![], false),
            })
        }
    })
    .await
}

/// `apps.eventSubscriptions.info`: the caller's request URL (empty when none is set), signing
/// secret and verification token.
pub(super) async fn info(state: &AppState, caller: &Caller) -> ApiResult {
    answer(&subscription(state, caller).await?)
}

/// `apps.eventSubscriptions.delete`: no more events over HTTP for the caller (its secrets
/// stay, for a URL set later).
pub(super) async fn delete(state: &AppState, caller: &Caller) -> ApiResult {
    let mut sub = subscription(state, caller).await?;
    if sub.request_url.is_empty() {
        return Err(ApiError::Named("no_request_url"));
    }
    sub.request_url.clear();
    sub.updated = Ts::now();
    write(state, &sub).await?;
    m::EVENT_SUBSCRIPTIONS.with_label_values(&["deleted"]).inc();
    Ok(object(json!({})))
}
