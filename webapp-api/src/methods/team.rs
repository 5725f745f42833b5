//! `team.info`: the caller's workspace, as Slack's team object.

use serde_json::{json, Value};
use shared::store::Workspace;

use crate::api::{object, ApiError, ApiResult, AppState, Caller, Params, RequestInfo};

/// The caller's workspace. A `team` naming any other workspace answers `team_not_found`, as
/// Slack answers for a team the caller's is not shared with (a workspace never sees another's,
/// not even whether it exists).
pub(super) async fn info(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    request: &RequestInfo,
) -> ApiResult {
    if let Some(raw) = params.non_empty("team").map(str::trim) {
        if raw != caller.claims.workspace.as_str() {
            return Err(ApiError::TeamNotFound);
        }
    }
    let workspace = state
        .store
        .workspace(&caller.claims.workspace)
        .await?
        .ok_or(ApiError::InvalidAuth)?;
    Ok(object(
        json!({ "team": team_json(&workspace, &request.base_url(state)) }),
    ))
}

/// Slack's team object. A workspace's name is its Slack subdomain, so it is both `name` and
/// `domain`; there is no icon, so Slack's default one is flagged.
fn team_json(workspace: &Workspace, url: &str) -> Value {
    json!({
        "id": workspace.id,
        "name": workspace.name,
        "domain": workspace.name,
        "email_domain": "",
        "url": url,
        "is_verified": false,
        "icon": { "image_default": true },
    })
}
