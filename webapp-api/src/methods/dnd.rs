//! Do Not Disturb: `dnd.setSnooze`, `dnd.endSnooze`, `dnd.endDnd`, `dnd.info` and
//! `dnd.teamInfo`, as Slack has them, for the snooze a person sets ("pause notifications for
//! an hour").
//!
//! A snooze is kept per user in the workspace's [`RecordKind::Dnd`] set (its start and end,
//! in Unix seconds) and lapses by itself at its end: every read compares it with the clock.
//! Switchboard has no DND schedule (Slack's nightly hours), so a user is in DND exactly while
//! snoozed, and others see that as Slack shows a DND window: `dnd_enabled` with
//! `next_dnd_start_ts` and `next_dnd_end_ts` the snooze's start and end (1 and 1, Slack's "none",
//! when not snoozed). The snooze's own fields (`snooze_enabled`, `snooze_endtime`,
//! `snooze_remaining`) are for the user alone, as in Slack. Each change goes to the user's
//! sessions as Slack's `dnd_updated` (with those fields) and to the workspace's as
//! `dnd_updated_user` (without them). Only a person snoozes: a bot's token gets
//! `not_allowed_token_type`.

use serde_json::{json, Value};
use shared::ids::{Ts, UserId};
use shared::protocol::UserEvent;
use shared::store::{RecordKind, RecordSet};

use super::publish_all;
use super::records::{change_records, Write};
use crate::api::{object, ApiError, ApiResult, AppState, Caller, Params};

/// The longest snooze, in minutes: a year. Slack documents none; this bounds the stored end.
pub const MAX_SNOOZE_MINUTES: i64 = 525_600;
/// Most users one `dnd.teamInfo` names, as Slack allows.
pub const MAX_TEAM_INFO_USERS: usize = 50;

/// A user's snooze: from `start` to `end`, Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snooze {
    start: i64,
    end: i64,
}

impl Snooze {
    /// The stored record: `{"start":…,"end":…}`.
    fn json(&self) -> String {
        json!({ "start": self.start, "end": self.end }).to_string()
    }

    fn from_json(json: &str) -> Result<Snooze, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let field = |k: &str| v.get(k).and_then(Value::as_i64).ok_or(format!("no {k}"));
        Ok(Snooze {
            start: field("start")?,
            end: field("end")?,
        })
    }
}

fn now_secs() -> i64 {
    (Ts::now().0 / 1_000_000) as i64
}

fn raced() {
    crate::metrics::DND.with_label_values(&["raced"]).inc();
}

/// `user`'s snooze in `set` if it has not ended by `now`. A record that does not parse is an
/// error, not "not snoozed".
fn active(set: &RecordSet, user: &UserId, now: i64) -> ApiResult<Option<Snooze>> {
    let Some((_, json)) = set.records.iter().find(|(id, _)| id == user.as_str()) else {
        return Ok(None);
    };
    let snooze = Snooze::from_json(json)
        .map_err(|e| ApiError::Internal(format!("the DND record of {user} does not parse: {e}")))?;
    Ok((snooze.end > now).then_some(snooze))
}

/// What everyone may know of a user's DND: Slack's `dnd_enabled`, `next_dnd_start_ts`,
/// `next_dnd_end_ts`.
fn public_status(snooze: Option<Snooze>) -> Value {
    match snooze {
        Some(s) => json!({
            "dnd_enabled": true,
            "next_dnd_start_ts": s.start,
            "next_dnd_end_ts": s.end,
        }),
        None => json!({
            "dnd_enabled": false,
            "next_dnd_start_ts": 1,
            "next_dnd_end_ts": 1,
        }),
    }
}

/// [`public_status`] with the snooze's own fields, for the user alone.
fn own_status(snooze: Option<Snooze>, now: i64) -> Value {
    let mut status = public_status(snooze);
    status["snooze_enabled"] = snooze.is_some().into();
    if let Some(s) = snooze {
        status["snooze_endtime"] = s.end.into();
        status["snooze_remaining"] = (s.end - now).max(0).into();
    }
    status
}

/// Tells the user's sessions (`dnd_updated`) and the workspace's (`dnd_updated_user`).
async fn announce(state: &AppState, caller: &Caller, snooze: Option<Snooze>, now: i64) {
    let event_ts = Ts::now().to_slack();
    let user = caller.user.id.to_string();
    let own = json!({
        "type": "dnd_updated",
        "user": user,
        "dnd_status": own_status(snooze, now),
        "event_ts": event_ts,
    });
    let public = json!({
        "type": "dnd_updated_user",
        "user": user,
        "dnd_status": public_status(snooze),
        "event_ts": event_ts,
    });
    publish_all(
        state,
        vec![
            UserEvent::UserNotice {
                workspace: caller.claims.workspace.clone(),
                user: caller.user.id.clone(),
                event: own.to_string(),
            },
            UserEvent::Notice {
                workspace: caller.claims.workspace.clone(),
                members_of: None,
                event: public.to_string(),
            },
        ],
    )
    .await;
}

/// Only a person has notifications to pause.
fn person(caller: &Caller) -> ApiResult<()> {
    if caller.is_bot() {
        Err(ApiError::NotAllowedTokenType)
    } else {
        Ok(())
    }
}

/// `num_minutes`: a whole number from 1 to [`MAX_SNOOZE_MINUTES`].
fn minutes(params: &Params) -> ApiResult<i64> {
    let raw = params
        .non_empty("num_minutes")
        .ok_or(ApiError::MissingArgument("num_minutes"))?;
    match raw.trim().parse::<i64>() {
        Ok(n) if (1..=MAX_SNOOZE_MINUTES).contains(&n) => Ok(n),
        _ => Err(ApiError::InvalidArguments(format!(
            "num_minutes must be a whole number from 1 to {MAX_SNOOZE_MINUTES}"
        ))),
    }
}

/// `dnd.setSnooze`: snoozes the caller for `num_minutes` from now (a snooze already running
/// is replaced, as in Slack).
pub(super) async fn set_snooze(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    person(caller)?;
    let minutes = minutes(params)?;
    let now = now_secs();
    let snooze = Snooze {
        start: now,
        end: now + minutes * 60,
    };
    let record = snooze.json();
    let user = caller.user.id.to_string();
    change_records(
        state,
        &caller.claims.workspace,
        &RecordKind::Dnd,
        raced,
        |_| {
            let write: Write = (user.clone(), Some(record.clone()));
            async move { Ok((vec![write], ())) }
        },
    )
    .await?;
    crate::metrics::DND.with_label_values(&["snoozed"]).inc();
    announce(state, caller, Some(snooze), now).await;
    Ok(object(json!({
        "snooze_enabled": true,
        "snooze_endtime": snooze.end,
        "snooze_remaining": snooze.end - now,
        "snooze_is_indefinite": false,
    })))
}

/// Ends the caller's snooze; whether one was running.
async fn end(state: &AppState, caller: &Caller, now: i64) -> ApiResult<bool> {
    let user = caller.user.id.clone();
    let ended = change_records(
        state,
        &caller.claims.workspace,
        &RecordKind::Dnd,
        raced,
        |set| {
            let found = set.records.iter().any(|(id, _)| id == user.as_str());
            let running = active(&set, &user, now).map(|s| s.is_some());
            let user = user.to_string();
            async move {
                let running = running?;
                // A lapsed record goes too, so the set keeps only running snoozes' users.
                let writes: Vec<Write> = if found { vec![(user, None)] } else { vec![] };
                Ok((writes, running))
            }
        },
    )
    .await?;
    if ended {
        crate::metrics::DND.with_label_values(&["ended"]).inc();
        announce(state, caller, None, now).await;
    }
    Ok(ended)
}

/// `dnd.endSnooze`: ends the caller's snooze at once (`snooze_not_active` without one);
/// answers the caller's DND state after it.
pub(super) async fn end_snooze(state: &AppState, caller: &Caller) -> ApiResult {
    person(caller)?;
    let now = now_secs();
    if !end(state, caller, now).await? {
        return Err(ApiError::Named("snooze_not_active"));
    }
    Ok(object(own_status(None, now)))
}

/// `dnd.endDnd`: ends the caller's DND now. Without schedules that is the snooze, if any.
pub(super) async fn end_dnd(state: &AppState, caller: &Caller) -> ApiResult {
    person(caller)?;
    end(state, caller, now_secs()).await?;
    Ok(object(json!({})))
}

/// `dnd.info`: a user's DND state (default: the caller's), with the snooze's own fields only
/// for the caller.
pub(super) async fn info(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let user = match params.non_empty("user") {
        Some(raw) => super::user_in_workspace(state, caller, Some(raw)).await?,
        None => caller.user.clone(),
    };
    let set = state
        .store
        .record_set(&caller.claims.workspace, &RecordKind::Dnd)
        .await?;
    let now = now_secs();
    let snooze = active(&set, &user.id, now)?;
    Ok(object(if user.id == caller.user.id {
        own_status(snooze, now)
    } else {
        public_status(snooze)
    }))
}

/// `dnd.teamInfo`: the DND state of up to [`MAX_TEAM_INFO_USERS`] users of the workspace
/// (`users`: comma-separated, or a JSON array), by id.
pub(super) async fn team_info(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let raw = params
        .non_empty("users")
        .ok_or(ApiError::MissingArgument("users"))?;
    let names: Vec<String> = super::usergroups::id_list(raw)
        .ok_or_else(|| {
            ApiError::InvalidArguments(
                "users: a comma-separated list or a JSON array of user ids".into(),
            )
        })?
        .into_iter()
        .filter(|u| !u.is_empty())
        .collect();
    if names.is_empty() {
        return Err(ApiError::MissingArgument("users"));
    }
    if names.len() > MAX_TEAM_INFO_USERS {
        return Err(ApiError::InvalidArguments(format!(
            "users names at most {MAX_TEAM_INFO_USERS} users"
        )));
    }
    let set = state
        .store
        .record_set(&caller.claims.workspace, &RecordKind::Dnd)
        .await?;
    let now = now_secs();
    let mut users = serde_json::Map::new();
    for name in names {
        let user = super::user_in_workspace(state, caller, Some(&name)).await?;
        users.insert(
            user.id.to_string(),
            public_status(active(&set, &user.id, now)?),
        );
    }
    Ok(object(json!({ "users": users })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_see_a_snooze_as_a_dnd_window_and_the_user_sees_its_own_fields() {
        let s = Snooze {
            start: 1_000,
            end: 1_600,
        };
        assert_eq!(
            public_status(Some(s)),
            json!({"dnd_enabled": true, "next_dnd_start_ts": 1_000, "next_dnd_end_ts": 1_600})
        );
        assert_eq!(
            public_status(None),
            json!({"dnd_enabled": false, "next_dnd_start_ts": 1, "next_dnd_end_ts": 1})
        );
        let own = own_status(Some(s), 1_100);
        assert_eq!(own["snooze_enabled"], true);
        assert_eq!(own["snooze_endtime"], 1_600);
        assert_eq!(own["snooze_remaining"], 500);
        let none = own_status(None, 1_100);
        assert_eq!(none["snooze_enabled"], false);
        assert!(none.get("snooze_endtime").is_none());
    }

    #[test]
    fn a_snooze_lapses_at_its_end_and_a_broken_record_is_an_error() {
        let user = UserId::parse("U1").unwrap();
        let mut set = RecordSet {
            version: 1,
            records: vec![("U1".into(), r#"{"start":100,"end":200}"#.into())],
        };
        assert_eq!(
            active(&set, &user, 199).unwrap(),
            Some(Snooze {
                start: 100,
                end: 200
            })
        );
        assert_eq!(active(&set, &user, 200).unwrap(), None);
        assert_eq!(
            active(&set, &UserId::parse("U2").unwrap(), 150).unwrap(),
            None
        );
        set.records[0].1 = "not json".into();
        assert!(active(&set, &user, 150).is_err());
    }

    #[test]
    fn minutes_are_whole_and_bounded() {
        let p = |v: &str| Params::from_pairs(&[("num_minutes", v)]);
        assert_eq!(minutes(&p("30")).unwrap(), 30);
        assert_eq!(minutes(&p(" 1 ")).unwrap(), 1);
        assert_eq!(minutes(&p("525600")).unwrap(), MAX_SNOOZE_MINUTES);
        for bad in ["0", "-5", "1.5", "ten", "525601", "99999999999999999999"] {
            assert!(
                matches!(minutes(&p(bad)), Err(ApiError::InvalidArguments(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            minutes(&Params::from_pairs(&[])),
            Err(ApiError::MissingArgument("num_minutes"))
        ));
    }
}
