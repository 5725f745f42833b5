//! `api.test`, `auth.test`, `rtm.connect` (also served as `rtm.start`) and
//! `apps.connections.open` (Socket Mode).

use serde_json::{json, Value};

use crate::api::{object, ApiError, ApiResult, AppState, Caller, Params, RequestInfo};

/// Echoes its arguments (all but `token`); needs no token.
pub(super) fn api_test(params: &Params) -> ApiResult {
    let args: serde_json::Map<String, Value> = params
        .iter()
        .filter(|(k, _)| *k != "token")
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    if args.is_empty() {
        return Ok(object(json!({})));
    }
    Ok(object(json!({ "args": args })))
}

async fn workspace_name(state: &AppState, caller: &Caller) -> ApiResult<String> {
    state
        .store
        .workspace(&caller.claims.workspace)
        .await?
        .map(|w| w.name)
        .ok_or(ApiError::InvalidAuth)
}

/// Who the token speaks for.
pub(super) async fn auth_test(
    state: &AppState,
    caller: &Caller,
    request: &RequestInfo,
) -> ApiResult {
    let team = workspace_name(state, caller).await?;
    let mut out = object(json!({
        "url": request.base_url(state),
        "team": team,
        "user": caller.user.name,
        "team_id": caller.claims.workspace,
        "user_id": caller.user.id,
        "is_enterprise_install": false,
    }));
    // Slack's RTM clients (slack_sdk's RTMClient among them) read `bot_id` from auth.test and
    // drop events carrying that id: RTM was for bot tokens. Every Switchboard token may use
    // RTM, so each gets a bot id: the user's own for bots (which their messages carry, so a
    // bot does not hear itself), a `B`-prefixed form of the user id otherwise (no event ever
    // carries it, so nothing is dropped).
    let bot_id = if caller.is_bot() {
        caller.user.id.0.clone()
    } else {
        person_bot_id(&caller.user.id.0)
    };
    out.insert("bot_id".into(), json!(bot_id));
    Ok(out)
}

/// The bot id auth.test gives a person: `B` in place of the user id's `U` (only the first:
/// generated ids may start with another `U`, and two users must not share one).
fn person_bot_id(user_id: &str) -> String {
    format!("B{}", user_id.strip_prefix('U').unwrap_or(user_id))
}

/// A gateway WebSocket URL carrying the caller's token, then `options`, round-robin over the
/// configured gateways.
fn gateway_url(state: &AppState, caller: &Caller, options: &str) -> ApiResult<String> {
    let gateway = state
        .next_gateway_url()
        .ok_or_else(|| ApiError::ServiceUnavailable("no gateway is configured".into()))?;
    Ok(with_token(gateway, caller, options))
}

/// `gateway`'s URL with the caller's token, then `options`.
fn with_token(gateway: &str, caller: &Caller, options: &str) -> String {
    let sep = if gateway.contains('?') { '&' } else { '?' };
    let token: String = url::form_urlencoded::byte_serialize(caller.token.as_bytes()).collect();
    format!("{gateway}{sep}token={token}{options}")
}

/// An RTM session's URL, with `self` and `team`.
pub(super) async fn rtm_connect(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let team = workspace_name(state, caller).await?;
    // Slack's `presence_sub` option: no presence_change until the client subscribes.
    let presence_sub = if params.flag("presence_sub", false) {
        "&presence_sub=1"
    } else {
        ""
    };
    Ok(object(json!({
        "url": gateway_url(state, caller, presence_sub)?,
        "team": { "id": caller.claims.workspace, "name": team, "domain": team },
        "self": { "id": caller.user.id, "name": caller.user.name },
    })))
}

/// `apps.connections.open`: a Socket Mode session's URL (`mode=socket`), which Bolt apps and
/// the SDKs' Socket Mode clients open. Slack asks for an app-level token (`xapp-…`); in
/// Switchboard an app is its bot user, so the bot's own token is the app token, and the
/// session receives the events of the bot's channels. Every connection of an app is sent to
/// the same gateway while it is up ([`AppState::gateway_for_app`]), where each event goes to
/// one of them.
pub(super) async fn apps_connections_open(state: &AppState, caller: &Caller) -> ApiResult {
    let gateway = state
        .gateway_for_app(&caller.user.id.0)
        .await
        .ok_or_else(|| ApiError::ServiceUnavailable("no gateway is configured".into()))?;
    Ok(object(json!({
        "url": with_token(&gateway, caller, "&mode=socket"),
    })))
}

#[cfg(test)]
mod tests {
    use super::person_bot_id;

    #[test]
    fn a_person_s_bot_id_replaces_only_the_first_u() {
        assert_eq!(person_bot_id("UK6NFZM2RU"), "BK6NFZM2RU");
        assert_eq!(person_bot_id("UUK6NFZM2R"), "BUK6NFZM2R");
        assert_ne!(person_bot_id("UUK6NFZM2R"), person_bot_id("UK6NFZM2R"));
    }
}
