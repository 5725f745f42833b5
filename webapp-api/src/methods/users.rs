//! `users.list`, `users.info`, `users.lookupByEmail`, `users.profile.set`,
//! `users.profile.get`, `admin.users.create`.

use serde_json::{json, Value};
use shared::ids::UserId;
use shared::protocol::UserEvent;
use shared::store::{normalize_email, StorageErrorKind, User};

use super::{
    profile_json, publish_all, response_metadata, user_in_workspace, user_json, user_profile,
};
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

/// `bots.info`: the bot a message's `bot_id` names. A bot's id is its bot user's id (as
/// `auth.test` gives it), so this is that user, in Slack's bot shape. Apps are their bot
/// users here: `app_id` is the id Socket Mode's `hello` gives the app.
pub(super) async fn bot_info(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let bot = user_in_workspace(state, caller, params.non_empty("bot"))
        .await
        .ok()
        .filter(|u| u.is_bot)
        .ok_or(ApiError::BotNotFound)?;
    let id = &bot.id.0;
    Ok(object(json!({
        "bot": {
            "id": id,
            "deleted": false,
            "name": bot.name,
            "updated": 0,
            "app_id": format!("A{}", id.strip_prefix('U').unwrap_or(id)),
            "user_id": id,
            "icons": {},
        }
    })))
}

/// Longest email address (RFC 5321's path limit).
pub const MAX_EMAIL: usize = 254;

/// An email address as stored ([`normalize_email`]): `local@domain`, the domain with a dot, no
/// spaces or control characters, at most [`MAX_EMAIL`] bytes. `invalid_email` otherwise.
pub(crate) fn parse_email(raw: &str) -> ApiResult<String> {
    let email = normalize_email(raw);
    let valid = email.len() <= MAX_EMAIL
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if valid {
        Ok(email)
    } else {
        Err(ApiError::InvalidEmail)
    }
}

/// `users.lookupByEmail`: the user of the caller's workspace with this email.
pub(super) async fn lookup_by_email(
    state: &AppState,
    caller: &Caller,
    params: &Params,
) -> ApiResult {
    let email = parse_email(params.get("email").unwrap_or_default())?;
    let user = state
        .store
        .user_by_email(&caller.claims.workspace, &email)
        .await?
        .ok_or(ApiError::UsersNotFound)?;
    Ok(object(json!({ "user": user_json(&user) })))
}

/// Sets `user`'s email: `email_taken` when another user of the workspace has it.
pub(crate) async fn set_email(
    store: &shared::store::SharedStore,
    user: &UserId,
    email: &str,
) -> ApiResult<User> {
    match store.set_user_email(user, email).await {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(ApiError::UserNotFound),
        Err(e) if e.kind == StorageErrorKind::AlreadyExists => Err(ApiError::EmailTaken),
        Err(e) => Err(e.into()),
    }
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
    let is_bot = params.flag("is_bot", false);
    if is_admin && is_bot {
        return Err(ApiError::InvalidArguments(
            "a bot cannot be an admin (is_admin with is_bot)".into(),
        ));
    }
    let email = params.non_empty("email").map(parse_email).transpose()?;
    let (user, token) = crate::seed::create_user_in(
        &state.store,
        &state.signer,
        &caller.claims.workspace,
        crate::seed::NewUser {
            name,
            real_name,
            is_admin,
            is_bot,
            email: email.as_deref(),
        },
    )
    .await?;
    let mut events = vec![
        UserEvent::UserChanged {
            workspace: user.workspace.clone(),
            user: user_profile(&user),
        },
        // Slack's `team_join`, how welcome bots learn of a newcomer.
        super::user_notice(&user, "team_join"),
    ];
    // The new user is in #general (create_user_in joined it).
    if let Some(general) = state
        .store
        .channel_by_name(&user.workspace, crate::seed::GENERAL)
        .await?
    {
        events.push(UserEvent::ChannelJoined {
            workspace: user.workspace.clone(),
            channel: general.id,
            user: user.id.clone(),
            channel_name: general.name,
            // No session of a user that is being created can be open yet.
            after_seq: None,
            private: false,
        });
    }
    // One relay, one deadline: the user is known before it joins.
    publish_all(state, events).await;
    Ok(object(json!({ "user": user_json(&user), "token": token })))
}

/// Longest `real_name`.
pub const MAX_REAL_NAME: usize = 200;
/// Longest `display_name`, as in Slack.
pub const MAX_DISPLAY_NAME: usize = 80;

/// One profile field from `profile` (a JSON object, Slack's shape) or from a `name`/`value`
/// pair; `None` when the call does not set it.
fn profile_field(
    profile: Option<&serde_json::Map<String, Value>>,
    params: &Params,
    key: &str,
    max: usize,
) -> ApiResult<Option<String>> {
    let value = match profile.and_then(|p| p.get(key)) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(_) => {
            return Err(ApiError::InvalidArguments(format!(
                "profile.{key} must be a string"
            )))
        }
    };
    let value = value.or_else(|| {
        (params.get("name") == Some(key))
            .then(|| params.get("value").unwrap_or_default().to_string())
    });
    let Some(value) = value else { return Ok(None) };
    let value = value.trim().to_string();
    if value.chars().count() > max {
        return Err(ApiError::TooLong { max });
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::InvalidArguments(format!(
            "profile.{key} must not hold control characters"
        )));
    }
    Ok(Some(value))
}

/// Sets the caller's `real_name` and/or `display_name` (an admin token may set another
/// user's with `user`), then tells the caches.
pub(super) async fn profile_set(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let target = match params.non_empty("user") {
        Some(raw) if raw.trim() != caller.user.id.as_str() => {
            if !(caller.claims.admin && caller.user.is_admin) {
                return Err(ApiError::NotAllowedTokenType);
            }
            user_in_workspace(state, caller, Some(raw)).await?
        }
        _ => caller.user.clone(),
    };
    let profile: Option<serde_json::Map<String, Value>> = match params.non_empty("profile") {
        None => None,
        Some(raw) => match serde_json::from_str(raw) {
            Ok(Value::Object(map)) => Some(map),
            _ => {
                return Err(ApiError::InvalidArguments(
                    "profile must be a JSON object".into(),
                ))
            }
        },
    };
    let real_name = profile_field(profile.as_ref(), params, "real_name", MAX_REAL_NAME)?;
    let display_name = profile_field(profile.as_ref(), params, "display_name", MAX_DISPLAY_NAME)?;
    let email = profile_field(profile.as_ref(), params, "email", MAX_EMAIL)?;
    if real_name.is_none() && display_name.is_none() && email.is_none() {
        return Err(ApiError::InvalidArguments(
            "profile sets none of real_name, display_name and email".into(),
        ));
    }
    // An address others find the user by: only an admin sets it (no one can verify it
    // here), and an empty one clears it.
    let email = match email {
        Some(_) if !(caller.claims.admin && caller.user.is_admin) => {
            return Err(ApiError::NotAllowedTokenType)
        }
        Some(e) if e.is_empty() => Some(e),
        Some(e) => Some(parse_email(&e)?),
        None => None,
    };
    let mut user = state
        .store
        .update_user_profile(&target.id, real_name.as_deref(), display_name.as_deref())
        .await?
        .ok_or(ApiError::UserNotFound)?;
    if let Some(email) = &email {
        user = set_email(&state.store, &target.id, email).await?;
    }
    announce_change(state, &user).await;
    Ok(object(json!({ "profile": profile_json(&user) })))
}

/// Tells the caches (Flannel's) and every session of the workspace that `user` changed.
async fn announce_change(state: &AppState, user: &User) {
    publish_all(
        state,
        vec![
            UserEvent::UserChanged {
                workspace: user.workspace.clone(),
                user: user_profile(user),
            },
            super::user_notice(user, "user_change"),
        ],
    )
    .await;
}

/// `admin.users.setInactive` (`inactive`) and `admin.users.setActive`: an admin deactivates a
/// user of the workspace, or brings one back. A deactivated user's tokens are refused
/// (`account_inactive`), its hooks and scheduled messages post nothing, and the gateways
/// close its sessions on the `user_change` that says so (`deleted: true`); it stays in the
/// workspace's lists and channels, and its messages stay. An admin cannot deactivate itself.
pub(super) async fn set_inactive(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    inactive: bool,
) -> ApiResult {
    if !(caller.claims.admin && caller.user.is_admin) {
        return Err(ApiError::NotAllowedTokenType);
    }
    let target = user_in_workspace(state, caller, params.non_empty("user")).await?;
    if inactive && target.id == caller.user.id {
        return Err(ApiError::InvalidArguments(
            "an admin cannot deactivate itself".into(),
        ));
    }
    if target.deleted == inactive {
        return Ok(object(json!({ "user": super::user_json(&target) })));
    }
    let user = state
        .store
        .set_user_deleted(&target.id, inactive)
        .await?
        .ok_or(ApiError::UserNotFound)?;
    crate::metrics::USERS_DEACTIVATED
        .with_label_values(&[if inactive {
            "deactivated"
        } else {
            "reactivated"
        }])
        .inc();
    announce_change(state, &user).await;
    Ok(object(json!({ "user": super::user_json(&user) })))
}

/// The caller's profile, or `user`'s in the caller's workspace.
pub(super) async fn profile_get(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let user = match params.non_empty("user") {
        Some(raw) => user_in_workspace(state, caller, Some(raw)).await?,
        None => caller.user.clone(),
    };
    Ok(object(json!({ "profile": profile_json(&user) })))
}

/// `users.getPresence`: a user's presence as the admin server aggregates it over gateways.
pub(super) async fn get_presence(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let user = match params.non_empty("user") {
        Some(raw) => user_in_workspace(state, caller, Some(raw)).await?,
        None => caller.user.clone(),
    };
    let (presence, online, manual_away) = state.admin.presence(user.id.clone()).await?;
    let mut out = crate::api::object(json!({ "presence": presence.as_str() }));
    // Like Slack, the details are only for the caller's own presence.
    if user.id == caller.user.id {
        out.insert("online".into(), json!(online));
        out.insert("auto_away".into(), json!(!online && !manual_away));
        out.insert("manual_away".into(), json!(manual_away));
        out.insert("connection_count".into(), json!(u32::from(online)));
    }
    Ok(out)
}

/// `users.setPresence`: `away` (manual away) or `auto` (active while connected).
pub(super) async fn set_presence(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let away = match params.non_empty("presence") {
        Some("away") => true,
        Some("auto") => false,
        _ => {
            return Err(ApiError::InvalidArguments(
                "presence must be auto or away".into(),
            ))
        }
    };
    state
        .admin
        .publish_user_event(UserEvent::PresenceSet {
            workspace: caller.claims.workspace.clone(),
            user: caller.user.id.clone(),
            away,
        })
        .await?;
    Ok(crate::api::object(json!({})))
}
