//! Custom emoji: `emoji.list` for every member, and the admin methods that keep them
//! (`admin.emoji.add`, `admin.emoji.addAlias`, `admin.emoji.remove`, `admin.emoji.rename`,
//! `admin.emoji.list`), as Slack has them.
//!
//! An emoji is a name and an image URL (Switchboard keeps the URL, not the image), or an
//! alias of another custom emoji (an alias of an alias names the emoji itself). Removing an
//! emoji removes its aliases; renaming one keeps them pointing at it. Every change goes to
//! the workspace's sessions as Slack's `emoji_changed` (`add`, `remove`, `rename`). Each
//! change is checked against the whole set and written only if it did not change meanwhile
//! ([`super::records::change_records`]).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use shared::ids::Ts;
use shared::protocol::UserEvent;
use shared::store::{CustomEmoji as Emoji, RecordKind, RecordSet};

use super::publish_all;
use super::records::{change_records, Write};
use crate::api::{
    decode_cursor, encode_cursor, object, ApiError, ApiResult, AppState, Caller, Params,
};

/// Longest name.
pub const MAX_NAME: usize = 100;
/// Longest image URL, in bytes.
pub const MAX_URL: usize = 2000;
/// Most custom emoji (aliases count) in a workspace.
pub const MAX_EMOJI: usize = 10_000;

/// The workspace's emoji by name (an unreadable record is an error, not left out).
fn parse(set: &RecordSet) -> ApiResult<BTreeMap<String, Emoji>> {
    set.records
        .iter()
        .map(|(name, json)| {
            Emoji::from_json(json)
                .map(|e| (name.clone(), e))
                .map_err(ApiError::from)
        })
        .collect()
}

/// `error_name_taken` when `name` is one of `have`, `emoji_limit_reached` when `have` is
/// full.
fn room_for(have: &BTreeMap<String, Emoji>, name: &str) -> ApiResult<()> {
    if have.contains_key(name) {
        return Err(ApiError::Named("error_name_taken"));
    }
    if have.len() >= MAX_EMOJI {
        return Err(ApiError::Named("emoji_limit_reached"));
    }
    Ok(())
}

fn record(e: &Emoji) -> Option<String> {
    Some(e.json())
}

/// A name as given (`:name:` or `name`): 1 to [`MAX_NAME`] of lower-case letters, digits,
/// `-` and `_`.
fn name_param(params: &Params, key: &str) -> ApiResult<String> {
    let raw = params.get(key).unwrap_or_default().trim();
    let name = raw.strip_prefix(':').unwrap_or(raw);
    let name = name.strip_suffix(':').unwrap_or(name);
    if name.is_empty() {
        return Err(ApiError::Named("error_missing_name"));
    }
    if name.chars().any(|c| c.is_uppercase()) {
        return Err(ApiError::Named("error_lower_case_names_only"));
    }
    if name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(ApiError::Named("error_bad_name_i18n"));
    }
    Ok(name.to_string())
}

/// Only an admin token of an admin manages emoji.
fn admin(caller: &Caller) -> ApiResult<()> {
    if caller.claims.admin && caller.user.is_admin {
        Ok(())
    } else {
        Err(ApiError::NotAllowedTokenType)
    }
}

fn raced() {
    crate::metrics::EMOJI.with_label_values(&["raced"]).inc();
}

/// Tells the workspace's sessions (`emoji_changed`, with `fields`).
async fn announce(state: &AppState, caller: &Caller, fields: Value) {
    let mut event = fields;
    event["type"] = "emoji_changed".into();
    event["event_ts"] = Ts::now().to_slack().into();
    publish_all(
        state,
        vec![UserEvent::Notice {
            workspace: caller.claims.workspace.clone(),
            members_of: None,
            event: event.to_string(),
        }],
    )
    .await;
}

/// `emoji.list`: every custom emoji's name with its URL or `alias:<name>`; `cache_ts` is
/// when the newest was made.
pub(super) async fn list(state: &AppState, caller: &Caller) -> ApiResult {
    let set = state
        .store
        .record_set(&caller.claims.workspace, &RecordKind::Emoji)
        .await?;
    let emoji = parse(&set)?;
    let newest = emoji.values().map(|e| e.created).max().unwrap_or_default();
    let listed: serde_json::Map<String, Value> = emoji
        .iter()
        .map(|(name, e)| (name.clone(), e.value().into()))
        .collect();
    Ok(object(json!({
        "emoji": listed,
        "cache_ts": format!("{}.000000", newest.0 / 1_000_000),
    })))
}

/// `admin.emoji.list`: the emoji with who added each and when, paged by name.
pub(super) async fn admin_list(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    admin(caller)?;
    let limit = params.limit(100, 1000)? as usize;
    let after = decode_cursor(params, "emoji")?;
    let set = state
        .store
        .record_set(&caller.claims.workspace, &RecordKind::Emoji)
        .await?;
    let emoji = parse(&set)?;
    let page: Vec<(&String, &Emoji)> = emoji
        .iter()
        .filter(|(name, _)| after.as_ref().is_none_or(|a| *name > a))
        .take(limit)
        .collect();
    let next = match page.last() {
        Some((name, _)) if page.len() == limit && emoji.keys().any(|n| n > *name) => {
            encode_cursor("emoji", name)
        }
        _ => String::new(),
    };
    let listed: serde_json::Map<String, Value> = page
        .into_iter()
        .map(|(name, e)| {
            let mut v = json!({
                "date_created": e.created.0 / 1_000_000,
                "uploaded_by": e.by,
            });
            match (&e.url, &e.alias_for) {
                (Some(url), _) => v["url"] = url.clone().into(),
                (None, Some(target)) => v["alias_for"] = target.clone().into(),
                (None, None) => {}
            }
            (name.clone(), v)
        })
        .collect();
    Ok(object(json!({
        "emoji": listed,
        "response_metadata": super::response_metadata(Some(next)),
    })))
}

/// `admin.emoji.add`: `name` for the image at `url` (`http` or `https`).
pub(super) async fn add(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    admin(caller)?;
    let name = name_param(params, "name")?;
    let url = params.non_empty("url").map(str::trim).unwrap_or_default();
    if url.is_empty() {
        return Err(ApiError::Named("error_no_image"));
    }
    let parsed = url::Url::parse(url).ok();
    if url.len() > MAX_URL
        || !parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
    {
        return Err(ApiError::Named("error_bad_format"));
    }
    let emoji = Emoji {
        url: Some(url.to_string()),
        alias_for: None,
        created: Ts::now(),
        by: caller.user.id.clone(),
    };
    let ws = &caller.claims.workspace;
    change_records(state, ws, &RecordKind::Emoji, raced, |set| {
        let (name, emoji) = (name.clone(), emoji.clone());
        async move {
            let have = parse(&set)?;
            room_for(&have, &name)?;
            Ok((vec![(name, record(&emoji))], ()))
        }
    })
    .await?;
    crate::metrics::EMOJI.with_label_values(&["added"]).inc();
    announce(
        state,
        caller,
        json!({ "subtype": "add", "name": name, "value": url }),
    )
    .await;
    Ok(object(json!({})))
}

/// `admin.emoji.addAlias`: `name` for the custom emoji `alias_for` (an alias of an alias
/// names the emoji itself).
pub(super) async fn add_alias(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    admin(caller)?;
    let name = name_param(params, "name")?;
    let target = name_param(params, "alias_for").map_err(|_| ApiError::Named("emoji_not_found"))?;
    let ws = &caller.claims.workspace;
    let by = caller.user.id.clone();
    let target = change_records(state, ws, &RecordKind::Emoji, raced, |set| {
        let (name, target, by) = (name.clone(), target.clone(), by.clone());
        async move {
            let have = parse(&set)?;
            room_for(&have, &name)?;
            let found = have
                .get(&target)
                .ok_or(ApiError::Named("emoji_not_found"))?;
            let target = found.alias_for.clone().unwrap_or(target);
            let alias = Emoji {
                url: None,
                alias_for: Some(target.clone()),
                created: Ts::now(),
                by,
            };
            Ok((vec![(name, record(&alias))], target))
        }
    })
    .await?;
    crate::metrics::EMOJI.with_label_values(&["added"]).inc();
    announce(
        state,
        caller,
        json!({ "subtype": "add", "name": name, "value": format!("alias:{target}") }),
    )
    .await;
    Ok(object(json!({})))
}

/// `admin.emoji.remove`: the emoji `name`, and its aliases.
pub(super) async fn remove(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    admin(caller)?;
    let name = name_param(params, "name").map_err(|_| ApiError::Named("emoji_not_found"))?;
    let ws = &caller.claims.workspace;
    // The aliases go first and the emoji last, so a try cut short by another change leaves
    // the emoji, and the next try removes what is left.
    let mut removed = change_records(state, ws, &RecordKind::Emoji, raced, |set| {
        let name = name.clone();
        async move {
            let have = parse(&set)?;
            if !have.contains_key(&name) {
                return Err(ApiError::Named("emoji_not_found"));
            }
            let mut writes: Vec<Write> = have
                .iter()
                .filter(|(_, e)| e.alias_for.as_deref() == Some(name.as_str()))
                .map(|(alias, _)| (alias.clone(), None))
                .collect();
            writes.push((name.clone(), None));
            let names: Vec<String> = writes.iter().map(|(n, _)| n.clone()).collect();
            Ok((writes, names))
        }
    })
    .await?;
    crate::metrics::EMOJI.with_label_values(&["removed"]).inc();
    removed.sort();
    announce(
        state,
        caller,
        json!({ "subtype": "remove", "names": removed }),
    )
    .await;
    Ok(object(json!({})))
}

/// `admin.emoji.rename`: the emoji `name` becomes `new_name`; its aliases follow it.
pub(super) async fn rename(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    admin(caller)?;
    let name = name_param(params, "name").map_err(|_| ApiError::Named("emoji_not_found"))?;
    let new_name = name_param(params, "new_name")?;
    let ws = &caller.claims.workspace;
    let value = change_records(state, ws, &RecordKind::Emoji, raced, |set| {
        let (name, new_name) = (name.clone(), new_name.clone());
        async move {
            let have = parse(&set)?;
            // A retry after the rename itself landed finds it done.
            if !have.contains_key(&name) {
                return match have.get(&new_name) {
                    Some(e) => Ok((Vec::new(), e.value())),
                    None => Err(ApiError::Named("emoji_not_found")),
                };
            }
            let emoji = have[&name].clone();
            // The same record under both names is a try cut short before the old name went.
            if have.get(&new_name).is_some_and(|e| *e != emoji) {
                return Err(ApiError::Named("error_name_taken"));
            }
            let mut writes: Vec<Write> = have
                .iter()
                .filter(|(_, e)| e.alias_for.as_deref() == Some(name.as_str()))
                .map(|(alias, e)| {
                    let mut moved = e.clone();
                    moved.alias_for = Some(new_name.clone());
                    (alias.clone(), record(&moved))
                })
                .collect();
            writes.push((new_name.clone(), record(&emoji)));
            writes.push((name.clone(), None));
            Ok((writes, emoji.value()))
        }
    })
    .await?;
    crate::metrics::EMOJI.with_label_values(&["renamed"]).inc();
    announce(
        state,
        caller,
        json!({ "subtype": "rename", "old_name": name, "new_name": new_name, "value": value }),
    )
    .await;
    Ok(object(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case_letters_digits_dashes_and_underscores() {
        let name = |raw: &str| name_param(&Params::from_pairs(&[("name", raw)]), "name");
        assert_eq!(name(":party-parrot:").unwrap(), "party-parrot");
        assert_eq!(name(" ship_it2 ").unwrap(), "ship_it2");
        let err = |raw: &str| name(raw).unwrap_err().code();
        assert_eq!(err(""), "error_missing_name");
        assert_eq!(err("::"), "error_missing_name");
        assert_eq!(err("ShipIt"), "error_lower_case_names_only");
        assert_eq!(err("ship it"), "error_bad_name_i18n");
        assert_eq!(err("päron"), "error_bad_name_i18n");
        assert_eq!(err(&"x".repeat(101)), "error_bad_name_i18n");
    }
}
