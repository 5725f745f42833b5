//! `users.list`, `users.info`, `admin.users.create`.

use serde_json::json;
use shared::ids::UserId;

use super::{response_metadata, user_in_workspace, user_json};
use crate::api::{
    decode_cursor, encode_cursor, object, ApiError, ApiResult, AppState, Caller, Params,
};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// The users of the caller's workspace, by id, a page at a time.
pub(super) async fn list(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)? as usize;
    let after = decode_cursor(params, "user")?
        .map(|raw| UserId::parse(&raw).ok_or(ApiError::InvalidCursor))
        .transpose()?;
    let mut users: Vec<_> = state
        .store
        .users(&caller.claims.workspace)
        .await?
        .into_iter()
        .filter(|u| after.as_ref().is_none_or(|a| &u.id > a))
        .collect();
    let next = if users.len() > limit {
        users.truncate(limit);
        users.last().map(|u| encode_cursor("user", u.id.as_str()))
    } else {
        None
    };
    let members: Vec<_> = users.iter().map(user_json).collect();
    Ok(object(json!({
        "members": members,
        "response_metadata": response_metadata(next),
    })))
}

pub(super) async fn info(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let user = user_in_workspace(state, caller, params.non_empty("user")).await?;
    Ok(object(json!({ "user": user_json(&user) })))
}

/// Creates a user of the caller's workspace and issues its token. Needs an admin token.
pub(super) async fn admin_create(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    if !(caller.claims.admin && caller.user.is_admin) {
        return Err(ApiError::NotAllowedTokenType);
    }
    let name = params.get("name").map(str::trim).unwrap_or_default();
    crate::seed::validate_user_name(name)?;
    let real_name = params.non_empty("real_name").unwrap_or(name);
    if real_name.chars().count() > 200 {
        return Err(ApiError::InvalidArguments(
            "real_name is longer than 200 characters".into(),
        ));
    }
    let is_admin = params.flag("is_admin", false);
    let (user, token) = crate::seed::create_user_in(
        &state.store,
        &state.signer,
        &caller.claims.workspace,
        name,
        real_name,
        is_admin,
    )
    .await?;
    Ok(object(json!({ "user": user_json(&user), "token": token })))
}
