//! User groups: `usergroups.create`, `usergroups.list`, `usergroups.update`,
//! `usergroups.disable`, `usergroups.enable`, `usergroups.users.list` and
//! `usergroups.users.update`, as Slack has them (the "subteams" that `@oncall` mentions and
//! that on-call bots rotate).
//!
//! Any full member of a workspace may manage its groups (Slack's default setting); a guest
//! would not, but Switchboard has none. A group's name is unique among the workspace's groups
//! (ignoring case), and its handle among its groups, users and channels. Every change reads
//! the workspace's groups, checks against them, and writes only if they are still that set
//! ([`shared::store::MessageStore::put_usergroup`]), else reads again: two changes at once
//! never both take one handle, and neither loses the other's members.
//!
//! Each change goes to every session of the workspace: `subteam_created`, `subteam_updated`
//! (which Slack also sends when the members change), and `subteam_members_changed` with who
//! was added and removed.

use serde_json::{json, Value};
use shared::ids::{ChannelId, Ts, UserGroupId, UserId};
use shared::protocol::UserEvent;
use shared::store::{RecordKind, UserGroup, UserGroups};

use super::publish_all;
use super::records::change_records;
use crate::api::{object, ApiError, ApiResult, AppState, Caller, Params};

/// Longest name and handle.
pub const MAX_NAME: usize = 80;
/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 1000;
/// Most members of one group, and most default channels.
pub const MAX_USERS: usize = 10_000;
pub const MAX_CHANNELS: usize = 100;
/// Most groups in a workspace (disabled ones count): bounds what each change reads.
pub const MAX_GROUPS: usize = 1000;
/// Most `subteam_self_added` (and `_removed`) events one change sends; past them, a member
/// learns of it from `subteam_updated`.
const SELF_EVENTS: usize = 1000;
/// An event lists at most this many members (Slack truncates `users` at 500 too);
/// `user_count` stays exact.
const EVENT_USERS: usize = 500;

const MICROS: u64 = 1_000_000;

/// Slack's usergroup object. `users` lists the members when asked (at most `max_users`).
fn usergroup_json(g: &UserGroup, users: Option<usize>, count: bool) -> Value {
    g.slack_json(users, count)
}

/// Slack's rule for a handle: 1 to [`MAX_NAME`] of lower-case letters, digits, `-`, `_`
/// and `.`.
fn valid_handle(handle: &str) -> bool {
    !handle.is_empty()
        && handle.len() <= MAX_NAME
        && handle.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// A handle as given (`@` in front is dropped), checked.
fn handle_param(raw: String) -> ApiResult<String> {
    let handle = raw.trim().trim_start_matches('@');
    if !valid_handle(handle) {
        return Err(ApiError::InvalidArguments(format!(
            "handle: 1 to {MAX_NAME} of lower-case letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(handle.to_string())
}

/// A handle made from a name: lower case, runs of anything else as one `-`.
fn handle_from(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    out.chars().take(MAX_NAME).collect()
}

/// A name as given: trimmed, 1 to [`MAX_NAME`] characters.
fn name_param(raw: &str) -> ApiResult<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ApiError::MissingArgument("name"));
    }
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::InvalidArguments(format!(
            "name: at most {MAX_NAME} characters, no control characters"
        )));
    }
    Ok(name.to_string())
}

fn description_param(raw: &str) -> ApiResult<String> {
    if raw.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::InvalidArguments(format!(
            "description: at most {MAX_DESCRIPTION} characters"
        )));
    }
    Ok(raw.trim().to_string())
}

/// The ids of a list parameter: a comma-separated string, or a JSON array of strings (what a
/// JSON body's array becomes).
pub(super) fn id_list(raw: &str) -> Option<Vec<String>> {
    let raw = raw.trim();
    if raw.starts_with('[') {
        let items: Vec<String> = serde_json::from_str(raw).ok()?;
        return Some(items.into_iter().map(|s| s.trim().to_string()).collect());
    }
    Some(
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// The `channels` parameter: channels of the caller's workspace that the caller can see,
/// without repeats.
async fn channels_param(state: &AppState, caller: &Caller, raw: &str) -> ApiResult<Vec<ChannelId>> {
    let ids = id_list(raw).ok_or(ApiError::ChannelNotFound)?;
    let mut out: Vec<ChannelId> = Vec::new();
    for raw in ids {
        let id = ChannelId::parse(&raw).ok_or(ApiError::ChannelNotFound)?;
        let channel = state
            .store
            .channel(&id)
            .await?
            .filter(|c| c.workspace == caller.claims.workspace)
            .ok_or(ApiError::ChannelNotFound)?;
        if channel.is_private && !state.store.is_member(&id, &caller.user.id).await? {
            return Err(ApiError::ChannelNotFound);
        }
        if !out.contains(&id) {
            out.push(id);
        }
        if out.len() > MAX_CHANNELS {
            return Err(ApiError::InvalidArguments(format!(
                "at most {MAX_CHANNELS} channels"
            )));
        }
    }
    Ok(out)
}

/// The `users` parameter of `usergroups.users.update`: people of the caller's workspace
/// (not bots, as in Slack), without repeats, at least one.
async fn users_param(state: &AppState, caller: &Caller, params: &Params) -> ApiResult<Vec<UserId>> {
    let raw = params.non_empty("users").ok_or(ApiError::NoUsersProvided)?;
    let ids = id_list(raw).ok_or(ApiError::InvalidUsers)?;
    if ids.is_empty() {
        return Err(ApiError::NoUsersProvided);
    }
    let mut out: Vec<UserId> = Vec::new();
    for raw in ids {
        let id = UserId::parse(&raw).ok_or(ApiError::InvalidUsers)?;
        let user = state
            .store
            .user(&id)
            .await?
            .filter(|u| u.workspace == caller.claims.workspace && !u.is_bot)
            .ok_or(ApiError::InvalidUsers)?;
        if !out.contains(&user.id) {
            out.push(user.id);
        }
        if out.len() > MAX_USERS {
            return Err(ApiError::InvalidArguments(format!(
                "at most {MAX_USERS} users"
            )));
        }
    }
    Ok(out)
}

/// `usergroup`: a group of the caller's workspace in `set`.
fn find<'a>(set: &'a UserGroups, params: &Params) -> ApiResult<&'a UserGroup> {
    let id = params
        .non_empty("usergroup")
        .map(str::trim)
        .and_then(UserGroupId::parse)
        .ok_or(ApiError::NoSuchSubteam)?;
    set.groups
        .iter()
        .find(|g| g.id == id.0)
        .ok_or(ApiError::NoSuchSubteam)
}

/// `name_already_exists` / `handle_already_exists` when another group of `set` (than
/// `group`, new or changed) has `group`'s name (ignoring case) or handle, or a user or
/// channel its handle.
async fn check_unique(
    state: &AppState,
    caller: &Caller,
    set: &UserGroups,
    group: &UserGroup,
) -> ApiResult<()> {
    let (name, handle) = (group.name.as_str(), group.handle.as_str());
    let others = set.groups.iter().filter(|g| g.id != group.id);
    for g in others {
        if g.name.to_lowercase() == name.to_lowercase() {
            return Err(ApiError::NameAlreadyExists);
        }
        if g.handle == handle {
            return Err(ApiError::HandleAlreadyExists);
        }
    }
    let ws = &caller.claims.workspace;
    if state.store.user_by_name(ws, handle).await?.is_some()
        || state.store.channel_by_name(ws, handle).await?.is_some()
    {
        return Err(ApiError::HandleAlreadyExists);
    }
    Ok(())
}

/// Reads the caller's workspace's groups, makes a group's new state with `change` (which
/// may refuse), and writes it if the set is still the one read; else tries again. The group
/// before (for a change) and after.
async fn write<F, Fut>(
    state: &AppState,
    caller: &Caller,
    mut change: F,
) -> ApiResult<(Option<UserGroup>, UserGroup)>
where
    F: FnMut(UserGroups) -> Fut,
    Fut: std::future::Future<Output = ApiResult<(Option<UserGroup>, UserGroup)>>,
{
    let raced = || {
        crate::metrics::USERGROUPS
            .with_label_values(&["raced"])
            .inc()
    };
    change_records(
        state,
        &caller.claims.workspace,
        &RecordKind::UserGroup,
        raced,
        |set| {
            let made = UserGroups::from_set(&set).map(&mut change);
            async move {
                let (before, after) = made?.await?;
                Ok((
                    vec![(after.id.clone(), Some(after.json()))],
                    (before, after),
                ))
            }
        },
    )
    .await
}

/// Tells every session of the workspace: `kind` with the group as Slack's events carry it.
fn notice(g: &UserGroup, kind: &str) -> UserEvent {
    UserEvent::Notice {
        workspace: g.workspace.clone(),
        members_of: None,
        event: json!({ "type": kind, "subteam": usergroup_json(g, Some(EVENT_USERS), true) })
            .to_string(),
    }
}

fn counted(event: &str) {
    crate::metrics::USERGROUPS.with_label_values(&[event]).inc();
}

/// `usergroups.create`: a group named `name`, with `handle` (made from the name when not
/// given), `description` and default `channels`, and no members yet.
pub(super) async fn create(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let name = name_param(params.get("name").unwrap_or_default())?;
    let handle = handle_param(
        params
            .non_empty("handle")
            .map_or_else(|| handle_from(&name), str::to_string),
    )?;
    let description = description_param(params.get("description").unwrap_or_default())?;
    let channels = match params.non_empty("channels") {
        Some(raw) => channels_param(state, caller, raw).await?,
        None => Vec::new(),
    };
    let id = UserGroupId::generate().0;
    let now = Ts::now();
    let (_, group) = write(state, caller, |set| {
        let group = UserGroup {
            id: id.clone(),
            workspace: caller.claims.workspace.clone(),
            name: name.clone(),
            handle: handle.clone(),
            description: description.clone(),
            channels: channels.clone(),
            users: Vec::new(),
            created: now,
            created_by: caller.user.id.clone(),
            updated: now,
            updated_by: caller.user.id.clone(),
            disabled: None,
        };
        async move {
            if set.groups.len() >= MAX_GROUPS {
                return Err(ApiError::InvalidArguments(format!(
                    "a workspace has at most {MAX_GROUPS} user groups"
                )));
            }
            check_unique(state, caller, &set, &group).await?;
            Ok((None, group))
        }
    })
    .await?;
    counted("created");
    publish_all(state, vec![notice(&group, "subteam_created")]).await;
    Ok(object(json!({
        "usergroup": usergroup_json(&group, None, params.flag("include_count", false)),
    })))
}

/// `usergroups.list`: the workspace's groups by name; disabled ones with `include_disabled`,
/// members with `include_users`, counts with `include_count`.
pub(super) async fn list(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let set = state.store.usergroups(&caller.claims.workspace).await?;
    let include_disabled = params.flag("include_disabled", false);
    let users = params.flag("include_users", false).then_some(MAX_USERS);
    let count = params.flag("include_count", false);
    let mut groups: Vec<&UserGroup> = set
        .groups
        .iter()
        .filter(|g| include_disabled || g.disabled.is_none())
        .collect();
    groups.sort_by_key(|g| g.name.to_lowercase());
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|g| usergroup_json(g, users, count))
        .collect();
    Ok(object(json!({ "usergroups": groups })))
}

/// `usergroups.update`: a new `name`, `handle`, `description` or default `channels`, each
/// only when given.
pub(super) async fn update(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let name = params.get("name").map(name_param).transpose()?;
    let handle = params
        .non_empty("handle")
        .map(|h| handle_param(h.to_string()))
        .transpose()?;
    let description = params
        .get("description")
        .map(description_param)
        .transpose()?;
    let channels = match params.get("channels") {
        Some(raw) => Some(channels_param(state, caller, raw).await?),
        None => None,
    };
    let (_, group) = write(state, caller, |set| {
        let (name, handle, description, channels) = (
            name.clone(),
            handle.clone(),
            description.clone(),
            channels.clone(),
        );
        async move {
            let before = find(&set, params)?.clone();
            let mut after = before.clone();
            after.name = name.unwrap_or(after.name);
            after.handle = handle.unwrap_or(after.handle);
            after.description = description.unwrap_or(after.description);
            after.channels = channels.unwrap_or(after.channels);
            check_unique(state, caller, &set, &after).await?;
            after.updated = Ts::now();
            after.updated_by = caller.user.id.clone();
            Ok((Some(before), after))
        }
    })
    .await?;
    counted("updated");
    publish_all(state, vec![notice(&group, "subteam_updated")]).await;
    Ok(object(json!({
        "usergroup": usergroup_json(&group, None, params.flag("include_count", false)),
    })))
}

/// `usergroups.disable` (`enable: false`) and `usergroups.enable`: a disabled group keeps
/// its members and settings, is left out of `usergroups.list` unless asked for, and mentions
/// no one; enabling it again brings it back as it was. Doing either twice is no error.
pub(super) async fn set_enabled(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    enable: bool,
) -> ApiResult {
    let (before, group) = write(state, caller, |set| async move {
        let before = find(&set, params)?.clone();
        let mut after = before.clone();
        if enable && before.disabled.is_some() {
            // Its handle may have been taken while it was disabled.
            check_unique(state, caller, &set, &after).await?;
        }
        let now = Ts::now();
        after.disabled = match (enable, before.disabled.clone()) {
            (true, _) => None,
            (false, Some(was)) => Some(was),
            (false, None) => Some((now, caller.user.id.clone())),
        };
        if after.disabled != before.disabled {
            after.updated = now;
            after.updated_by = caller.user.id.clone();
        }
        Ok((Some(before), after))
    })
    .await?;
    if before.is_some_and(|b| b.disabled != group.disabled) {
        counted(if enable { "enabled" } else { "disabled" });
        publish_all(state, vec![notice(&group, "subteam_updated")]).await;
    }
    Ok(object(json!({
        "usergroup": usergroup_json(&group, None, params.flag("include_count", false)),
    })))
}

/// `usergroups.users.list`: a group's members (of a disabled group only with
/// `include_disabled`, as in Slack).
pub(super) async fn users_list(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let set = state.store.usergroups(&caller.claims.workspace).await?;
    let group = find(&set, params)?;
    if group.disabled.is_some() && !params.flag("include_disabled", false) {
        return Err(ApiError::NoSuchSubteam);
    }
    Ok(object(json!({ "users": group.users })))
}

/// `usergroups.users.update`: the group's whole member list becomes `users` (at least one:
/// `usergroups.disable` empties a group's mentions instead, as in Slack).
pub(super) async fn users_update(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let users = users_param(state, caller, params).await?;
    let (before, group) = write(state, caller, |set| {
        let users = users.clone();
        async move {
            let before = find(&set, params)?.clone();
            let mut after = before.clone();
            after.users = users;
            after.updated = Ts::now();
            after.updated_by = caller.user.id.clone();
            Ok((Some(before), after))
        }
    })
    .await?;
    let before = before.expect("an update has a group before");
    let added: Vec<&UserId> = group
        .users
        .iter()
        .filter(|u| !before.users.contains(u))
        .collect();
    let removed: Vec<&UserId> = before
        .users
        .iter()
        .filter(|u| !group.users.contains(u))
        .collect();
    counted("members_changed");
    let changed = UserEvent::Notice {
        workspace: group.workspace.clone(),
        members_of: None,
        event: json!({
            "type": "subteam_members_changed",
            "subteam_id": group.id,
            "team_id": group.workspace,
            "date_previous_update": before.updated.0 / MICROS,
            "date_update": group.updated.0 / MICROS,
            "added_users": added.iter().take(EVENT_USERS).collect::<Vec<_>>(),
            "added_users_count": added.len(),
            "removed_users": removed.iter().take(EVENT_USERS).collect::<Vec<_>>(),
            "removed_users_count": removed.len(),
        })
        .to_string(),
    };
    // And each user added or removed hears it in its own sessions (Slack's
    // `subteam_self_added` / `subteam_self_removed`), up to SELF_EVENTS of each.
    let mut events = vec![notice(&group, "subteam_updated"), changed];
    for (users, kind) in [
        (&added, "subteam_self_added"),
        (&removed, "subteam_self_removed"),
    ] {
        events.extend(
            users
                .iter()
                .take(SELF_EVENTS)
                .map(|u| UserEvent::UserNotice {
                    workspace: group.workspace.clone(),
                    user: (*u).clone(),
                    event: json!({ "type": kind, "subteam_id": group.id }).to_string(),
                }),
        );
    }
    publish_all(state, events).await;
    Ok(object(json!({
        "usergroup": usergroup_json(&group, Some(MAX_USERS), params.flag("include_count", false)),
    })))
}

/// Slack's `link_names` on a post or an edit: `@handle` of an enabled user group becomes
/// `<!subteam^S…|@handle>`, and `@here`, `@channel` and `@everyone` become `<!here>`,
/// `<!channel>` and `<!everyone>`, which clients draw as mentions. `None` when nothing
/// changed (the groups are read only for a text with an `@`).
pub(super) async fn link_names(
    state: &AppState,
    caller: &Caller,
    text: &str,
) -> ApiResult<Option<String>> {
    if !text.contains('@') {
        return Ok(None);
    }
    let set = state.store.usergroups(&caller.claims.workspace).await?;
    Ok(linked(text, &set.groups))
}

/// [`link_names`] over `groups`. An `@` counts at the start or after anything but a letter,
/// digit, `.`, `_` or `-` (so `bob@example.com` stays), never inside `<…>`; the name is the
/// run of handle characters after it, less a sentence's trailing `.`, `-` or `_`, compared
/// without case.
fn linked(text: &str, groups: &[UserGroup]) -> Option<String> {
    let handle_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let mut out = String::with_capacity(text.len() + 32);
    let mut changed = false;
    let mut rest = text;
    let mut prev: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            // A link or mention already: copied as is, up to its end.
            let end = rest.find('>').map_or(rest.len(), |i| i + 1);
            out.push_str(&rest[..end]);
            prev = rest[..end].chars().last();
            rest = &rest[end..];
            continue;
        }
        if c == '@' && !prev.is_some_and(handle_char) {
            let after = &rest[1..];
            let run = after.find(|c: char| !handle_char(c)).unwrap_or(after.len());
            let name = after[..run].trim_end_matches(['.', '-', '_']);
            let lower = name.to_ascii_lowercase();
            let link = match lower.as_str() {
                "" => None,
                "here" | "channel" | "everyone" => Some(format!("<!{lower}>")),
                _ => groups
                    .iter()
                    .find(|g| g.disabled.is_none() && g.handle == lower)
                    .map(|g| format!("<!subteam^{}|@{}>", g.id, g.handle)),
            };
            if let Some(link) = link {
                out.push_str(&link);
                changed = true;
                prev = Some('>');
                rest = &after[name.len()..];
                continue;
            }
        }
        out.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_turns_group_handles_and_broadcasts_into_mentions() {
        let group = |id: &str, handle: &str, disabled: bool| UserGroup {
            id: id.into(),
            workspace: "TW".into(),
            name: handle.into(),
            handle: handle.into(),
            description: String::new(),
            channels: Vec::new(),
            users: Vec::new(),
            created: Ts(0),
            created_by: "UA".into(),
            updated: Ts(0),
            updated_by: "UA".into(),
            disabled: disabled.then(|| (Ts(1), UserId::from("UA"))),
        };
        let groups = [
            group("S1", "oncall", false),
            group("S2", "sre.eu", false),
            group("S3", "retired", true),
        ];
        let link = |t: &str| linked(t, &groups);
        assert_eq!(
            link("@oncall the build is red, @here").as_deref(),
            Some("<!subteam^S1|@oncall> the build is red, <!here>")
        );
        assert_eq!(
            link("ping @SRE.eu. and @Channel!").as_deref(),
            Some("ping <!subteam^S2|@sre.eu>. and <!channel>!")
        );
        assert_eq!(link("(@everyone)").as_deref(), Some("(<!everyone>)"));
        // Not a mention: an address, a disabled or unknown group, a bare @, what is in <…>.
        for same in [
            "mail bob@oncall.example",
            "@retired team",
            "@nobody",
            "@ alone",
            "<@UALICE> <mailto:x@oncall|@oncall>",
            "no at sign",
        ] {
            assert_eq!(link(same), None, "{same}");
        }
        assert_eq!(
            link("<@UALICE> @oncall ✓ @oncall").as_deref(),
            Some("<@UALICE> <!subteam^S1|@oncall> ✓ <!subteam^S1|@oncall>")
        );
    }

    #[test]
    fn handles_follow_slack_rules_and_are_made_from_names() {
        assert!(valid_handle("oncall"));
        assert!(valid_handle("team-a.b_c2"));
        for bad in [
            "",
            "On-Call",
            "on call",
            "@oncall",
            "ønskeliste",
            &"a".repeat(81),
        ] {
            assert!(!valid_handle(bad), "{bad:?}");
        }
        assert_eq!(handle_from("Marketing Team"), "marketing-team");
        assert_eq!(handle_from("  SRE / On-call!! "), "sre-on-call");
        assert_eq!(handle_from("Équipe"), "quipe");
        assert_eq!(handle_from("!!!"), "");
        assert_eq!(handle_from(&"x".repeat(200)).len(), MAX_NAME);
    }

    #[test]
    fn lists_are_comma_separated_or_json_arrays() {
        assert_eq!(id_list("U1, U2,,U3").unwrap(), ["U1", "U2", "U3"]);
        assert_eq!(id_list(r#"["U1"," U2"]"#).unwrap(), ["U1", "U2"]);
        assert_eq!(id_list("").unwrap(), Vec::<String>::new());
        assert!(id_list("[1, 2]").is_none());
        assert!(id_list("[").is_none());
    }
}
