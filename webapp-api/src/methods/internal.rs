//! `internal.*`: methods for other nodes of the cluster, callable only with a service token
//! (signed with the cluster secret, `Claims::service`), which in turn can call nothing else.
//!
//! - `internal.flannel.snapshot` (`workspace`): everything Flannel caches about a workspace
//!   in one answer: users, channels, memberships with read positions, user groups, and the
//!   DMs their members closed ([`shared::protocol::WorkspaceSnapshot`]).

use shared::auth::Claims;
use shared::store::snapshot::workspace_snapshot;

use crate::api::{ApiError, ApiResult, AppState, Params};

/// The workspace named by the service token (and the `workspace` parameter, which must be the
/// same when given), as one JSON object.
pub(super) async fn flannel_snapshot(
    state: &AppState,
    claims: &Claims,
    params: &Params,
) -> ApiResult {
    if let Some(raw) = params.non_empty("workspace") {
        if raw.trim() != claims.workspace.as_str() {
            return Err(ApiError::TeamAccessNotGranted);
        }
    }
    let snapshot = workspace_snapshot(state.store.as_ref(), &claims.workspace)
        .await?
        .ok_or(ApiError::TeamNotFound)?;
    match serde_json::to_value(snapshot) {
        Ok(serde_json::Value::Object(fields)) => Ok(fields),
        Ok(_) | Err(_) => Err(ApiError::Internal("snapshot did not serialize".into())),
    }
}
