//! Channel bookmarks: `bookmarks.add`, `bookmarks.edit`, `bookmarks.list` and
//! `bookmarks.remove`, as Slack has them: the links pinned to the top of a channel (the
//! runbook and dashboard an incident channel starts with).
//!
//! A channel's members keep its bookmarks; whoever can read the channel lists them. Each is
//! Slack's bookmark object, kept as it is answered, in the channel's own versioned record set
//! ([`RecordKind::Bookmarks`]), and each change goes to the channel's sessions as
//! `bookmark_added`, `bookmark_updated` or `bookmark_removed`.

use serde_json::{json, Value};
use shared::ids::{FileId, Ts};
use shared::protocol::UserEvent;
use shared::store::RecordKind;

use super::records::change_records;
use super::{publish_all, visible_channel, VisibleChannel};
use crate::api::{object, ApiError, ApiResult, AppState, Caller, Params};

/// Most bookmarks in a channel.
pub const MAX_BOOKMARKS: usize = 100;
/// Longest title, in characters.
pub const MAX_TITLE: usize = 256;
/// Longest link, in bytes.
pub const MAX_LINK: usize = 4000;

/// `channel_id`: a channel the caller can read.
async fn channel(state: &AppState, caller: &Caller, params: &Params) -> ApiResult<VisibleChannel> {
    let id = params.non_empty("channel_id").unwrap_or_default();
    visible_channel(state, caller, &Params::from_pairs(&[("channel", id)])).await
}

/// `channel_id`, for a change: its members only, and not while archived.
async fn member_channel(
    state: &AppState,
    caller: &Caller,
    params: &Params,
) -> ApiResult<VisibleChannel> {
    let visible = channel(state, caller, params).await?;
    if !visible.is_member {
        return Err(ApiError::NotInChannel);
    }
    if visible.channel.is_archived {
        return Err(ApiError::IsArchived);
    }
    Ok(visible)
}

fn title_param(raw: &str) -> ApiResult<String> {
    let title = raw.trim();
    if title.is_empty() || title.chars().count() > MAX_TITLE || title.chars().any(char::is_control)
    {
        return Err(ApiError::Named("invalid_title"));
    }
    Ok(title.to_string())
}

/// An `http` or `https` URL.
fn link_param(raw: &str) -> ApiResult<String> {
    let link = raw.trim();
    let ok = link.len() <= MAX_LINK
        && url::Url::parse(link)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
    if !ok {
        return Err(ApiError::Named("invalid_link"));
    }
    Ok(link.to_string())
}

/// `:name:` (the colons optional), or empty for none.
fn emoji_param(raw: &str) -> ApiResult<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(String::new());
    }
    let name = raw.trim_start_matches(':').trim_end_matches(':');
    if !shared::protocol::is_emoji_name(name, true) {
        return Err(ApiError::Named("invalid_emoji"));
    }
    Ok(format!(":{name}:"))
}

fn raced() {
    crate::metrics::BOOKMARKS
        .with_label_values(&["raced"])
        .inc();
}

/// Tells the channel's sessions: `kind` with the bookmark.
async fn announce(state: &AppState, visible: &VisibleChannel, kind: &str, bookmark: &Value) {
    crate::metrics::BOOKMARKS.with_label_values(&[kind]).inc();
    let event = json!({
        "type": kind,
        "channel_id": visible.channel.id,
        "bookmark": bookmark,
        "event_ts": Ts::now().to_slack(),
    });
    publish_all(
        state,
        vec![UserEvent::Notice {
            workspace: visible.channel.workspace.clone(),
            members_of: Some(visible.channel.id.clone()),
            event: event.to_string(),
        }],
    )
    .await;
}

fn parse(json: &str) -> ApiResult<Value> {
    serde_json::from_str(json).map_err(|e| ApiError::Internal(format!("a bookmark: {e}")))
}

/// `bookmarks.add`: a `link` bookmark (the only type Switchboard has) with `title` and an
/// optional `emoji`.
pub(super) async fn add(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = member_channel(state, caller, params).await?;
    let title = title_param(params.get("title").unwrap_or_default())?;
    if params.non_empty("type").unwrap_or("link") != "link" {
        return Err(ApiError::Named("invalid_bookmark_type"));
    }
    let link = link_param(params.get("link").unwrap_or_default())?;
    let emoji = emoji_param(params.get("emoji").unwrap_or_default())?;
    let now = Ts::now();
    // `Bk` and the letters of a fresh id.
    let id = format!("Bk{}", &FileId::generate().0[1..]);
    let bookmark = json!({
        "id": id,
        "channel_id": visible.channel.id,
        "title": title,
        "link": link,
        "emoji": emoji,
        "icon_url": null,
        "type": "link",
        "entity_id": null,
        "date_created": now.0 / 1_000_000,
        "date_updated": 0,
        "rank": now.0.to_string(),
        "last_updated_by_user_id": caller.user.id,
        "last_updated_by_team_id": caller.claims.workspace,
        "shortcut_id": null,
        "app_id": null,
    });
    let kind = RecordKind::Bookmarks(visible.channel.id.clone());
    let ws = &caller.claims.workspace;
    change_records(state, ws, &kind, raced, |set| {
        let (id, bookmark) = (id.clone(), bookmark.to_string());
        async move {
            if set.records.len() >= MAX_BOOKMARKS {
                return Err(ApiError::Named("too_many_bookmarks"));
            }
            Ok((vec![(id, Some(bookmark))], ()))
        }
    })
    .await?;
    announce(state, &visible, "bookmark_added", &bookmark).await;
    Ok(object(json!({ "bookmark": bookmark })))
}

/// `bookmarks.edit`: a new `title`, `link` or `emoji` (each only when given).
pub(super) async fn edit(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = member_channel(state, caller, params).await?;
    let title = params.get("title").map(title_param).transpose()?;
    let link = params.get("link").map(link_param).transpose()?;
    let emoji = params.get("emoji").map(emoji_param).transpose()?;
    let id = params.non_empty("bookmark_id").unwrap_or_default().trim();
    let kind = RecordKind::Bookmarks(visible.channel.id.clone());
    let ws = &caller.claims.workspace;
    let bookmark = change_records(state, ws, &kind, raced, |set| {
        let (title, link, emoji) = (title.clone(), link.clone(), emoji.clone());
        async move {
            let (_, json) = set
                .records
                .iter()
                .find(|(found, _)| found == id)
                .ok_or(ApiError::Named("not_found"))?;
            let mut bookmark = parse(json)?;
            for (field, value) in [("title", title), ("link", link), ("emoji", emoji)] {
                if let Some(value) = value {
                    bookmark[field] = value.into();
                }
            }
            bookmark["date_updated"] = (Ts::now().0 / 1_000_000).into();
            bookmark["last_updated_by_user_id"] = caller.user.id.0.clone().into();
            Ok((vec![(id.to_string(), Some(bookmark.to_string()))], bookmark))
        }
    })
    .await?;
    announce(state, &visible, "bookmark_updated", &bookmark).await;
    Ok(object(json!({ "bookmark": bookmark })))
}

/// `bookmarks.remove`.
pub(super) async fn remove(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = member_channel(state, caller, params).await?;
    let id = params.non_empty("bookmark_id").unwrap_or_default().trim();
    let kind = RecordKind::Bookmarks(visible.channel.id.clone());
    let ws = &caller.claims.workspace;
    let bookmark = change_records(state, ws, &kind, raced, |set| async move {
        let (_, json) = set
            .records
            .iter()
            .find(|(found, _)| found == id)
            .ok_or(ApiError::Named("not_found"))?;
        let bookmark = parse(json)?;
        Ok((vec![(id.to_string(), None)], bookmark))
    })
    .await?;
    announce(state, &visible, "bookmark_removed", &bookmark).await;
    Ok(object(json!({})))
}

/// `bookmarks.list`: the channel's bookmarks, the oldest first.
pub(super) async fn list(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let visible = channel(state, caller, params).await?;
    let set = state
        .store
        .record_set(
            &caller.claims.workspace,
            &RecordKind::Bookmarks(visible.channel.id.clone()),
        )
        .await?;
    let mut bookmarks = set
        .records
        .iter()
        .map(|(_, json)| parse(json))
        .collect::<ApiResult<Vec<Value>>>()?;
    // `rank` is when each was added, in microseconds.
    bookmarks.sort_by_key(|b| {
        (
            b["rank"].as_str().and_then(|r| r.parse::<u64>().ok()),
            b["id"].as_str().map(str::to_string),
        )
    });
    Ok(object(json!({ "bookmarks": bookmarks })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_links_and_emoji_are_checked() {
        assert_eq!(title_param("  Runbook ").unwrap(), "Runbook");
        for bad in ["", "   ", "a\nb", &"t".repeat(257)] {
            assert_eq!(
                title_param(bad).unwrap_err().code(),
                "invalid_title",
                "{bad:?}"
            );
        }
        assert_eq!(
            link_param(" https://runbooks.example/db ").unwrap(),
            "https://runbooks.example/db"
        );
        for bad in [
            "",
            "runbooks.example",
            "javascript:alert(1)",
            "file:///etc/passwd",
        ] {
            assert_eq!(
                link_param(bad).unwrap_err().code(),
                "invalid_link",
                "{bad:?}"
            );
        }
        assert_eq!(emoji_param("book").unwrap(), ":book:");
        assert_eq!(emoji_param(":fire:").unwrap(), ":fire:");
        assert_eq!(emoji_param("").unwrap(), "");
        assert_eq!(emoji_param("no way").unwrap_err().code(), "invalid_emoji");
    }
}
