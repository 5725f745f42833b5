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
//!
//! A snooze that lapses by itself is told the same way, by whichever Web API node sees it
//! first ([`spawn_lapses`]): each snooze's end is also kept in the cluster's
//! [`RecordKind::DndLapses`] set, which every node reads each `webapp.records_poll_ms`; for each
//! end passed, a node removes the user's record if it is still that snooze and announces the
//! lapse only if it did, so the lapse is told once however many nodes look, and not at all for
//! a snooze ended or replaced meanwhile. A node that was down tells the lapses it missed when
//! it is back.

use std::time::Duration;

use serde_json::{json, Value};
use shared::ids::{Ts, UserId, WorkspaceId};
use shared::protocol::UserEvent;
use shared::shutdown::{Every, Shutdown};
use shared::store::{cluster_records, RecordKind, RecordSet};

use super::publish_all;
use super::records::{change_records, PolledSet, Write};
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

/// A snooze's entry in the cluster's [`RecordKind::DndLapses`] set: whose, and when it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lapse {
    workspace: WorkspaceId,
    user: UserId,
    end: i64,
}

impl Lapse {
    /// Its id in the set: one per user, so a new snooze's end replaces the last one's.
    fn id(workspace: &WorkspaceId, user: &UserId) -> String {
        format!("{workspace}/{user}")
    }

    /// The stored record: `{"workspace":…,"user":…,"end":…}`.
    fn json(&self) -> String {
        json!({ "workspace": self.workspace, "user": self.user, "end": self.end }).to_string()
    }

    fn from_json(json: &str) -> Result<Lapse, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).ok_or(format!("no {k}"));
        Ok(Lapse {
            workspace: WorkspaceId(text("workspace")?.to_string()),
            user: UserId::parse(text("user")?).ok_or("user: not a user id")?,
            end: v.get("end").and_then(Value::as_i64).ok_or("no end")?,
        })
    }
}

fn now_secs() -> i64 {
    (Ts::now().0 / 1_000_000) as i64
}

fn raced() {
    crate::metrics::DND.with_label_values(&["raced"]).inc();
}

/// `user`'s snooze record in `set`, running or lapsed. A record that does not parse is an
/// error, not "not snoozed".
fn record(set: &RecordSet, user: &UserId) -> ApiResult<Option<Snooze>> {
    let Some((_, json)) = set.records.iter().find(|(id, _)| id == user.as_str()) else {
        return Ok(None);
    };
    Snooze::from_json(json)
        .map(Some)
        .map_err(|e| ApiError::Internal(format!("the DND record of {user} does not parse: {e}")))
}

/// `user`'s snooze in `set` if it has not ended by `now`.
fn active(set: &RecordSet, user: &UserId, now: i64) -> ApiResult<Option<Snooze>> {
    Ok(record(set, user)?.filter(|s| s.end > now))
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
async fn announce(
    state: &AppState,
    workspace: &WorkspaceId,
    user_id: &UserId,
    snooze: Option<Snooze>,
    now: i64,
) {
    let event_ts = Ts::now().to_slack();
    let user = user_id.to_string();
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
                workspace: workspace.clone(),
                user: user_id.clone(),
                event: own.to_string(),
            },
            UserEvent::Notice {
                workspace: workspace.clone(),
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
    // Its end first, so that no snooze is kept without one: an end whose snooze was not
    // written is dropped when it passes.
    let workspace = &caller.claims.workspace;
    let lapse = Lapse {
        workspace: workspace.clone(),
        user: caller.user.id.clone(),
        end: snooze.end,
    }
    .json();
    let lapse_id = Lapse::id(workspace, &caller.user.id);
    change_records(
        state,
        &cluster_records(),
        &RecordKind::DndLapses,
        raced,
        |_| {
            let write: Write = (lapse_id.clone(), Some(lapse.clone()));
            async move { Ok((vec![write], ())) }
        },
    )
    .await?;
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
    announce(state, workspace, &caller.user.id, Some(snooze), now).await;
    Ok(object(json!({
        "snooze_enabled": true,
        "snooze_endtime": snooze.end,
        "snooze_remaining": snooze.end - now,
        "snooze_is_indefinite": false,
    })))
}

/// Ends the caller's snooze; whether one was running. A lapsed one not yet told goes too,
/// and is told as the lapse it is.
async fn end(state: &AppState, caller: &Caller, now: i64) -> ApiResult<bool> {
    let user = caller.user.id.clone();
    let removed = change_records(
        state,
        &caller.claims.workspace,
        &RecordKind::Dnd,
        raced,
        |set| {
            let found = record(&set, &user);
            let user = user.to_string();
            async move {
                let found = found?;
                // A lapsed record goes too, so the set keeps only running snoozes' users.
                let writes: Vec<Write> = match found {
                    Some(_) => vec![(user, None)],
                    None => vec![],
                };
                Ok((writes, found))
            }
        },
    )
    .await?;
    let Some(removed) = removed else {
        return Ok(false);
    };
    let running = removed.end > now;
    let event = if running { "ended" } else { "lapsed" };
    crate::metrics::DND.with_label_values(&[event]).inc();
    announce(state, &caller.claims.workspace, &user, None, now).await;
    forget_lapse(state, &caller.claims.workspace, &user, removed.end).await?;
    Ok(running)
}

/// Removes the cluster's entry for `user`'s snooze if it still names the one that ended at
/// `end` (not one set since).
async fn forget_lapse(
    state: &AppState,
    workspace: &WorkspaceId,
    user: &UserId,
    end: i64,
) -> ApiResult<()> {
    let id = Lapse::id(workspace, user);
    let cluster = cluster_records();
    remove_if(state, &cluster, &RecordKind::DndLapses, &id, |json| {
        Lapse::from_json(json).is_ok_and(|l| l.end == end)
    })
    .await
    .map(|_| ())
}

/// Removes record `id` of `workspace`'s `kind` set if it is there and `matches` its JSON (as
/// the set is when written, after any race); whether it did.
async fn remove_if(
    state: &AppState,
    workspace: &WorkspaceId,
    kind: &RecordKind,
    id: &str,
    matches: impl Fn(&str) -> bool,
) -> ApiResult<bool> {
    change_records(state, workspace, kind, raced, |set| {
        let found = set
            .records
            .iter()
            .any(|(rid, json)| rid == id && matches(json));
        let writes: Vec<Write> = if found {
            vec![(id.to_string(), None)]
        } else {
            vec![]
        };
        async move { Ok((writes, found)) }
    })
    .await
}

/// Tells the lapse of `lapse`'s snooze if its record is still that snooze, and removes the
/// record; whether it did (another node, or an end or a new snooze, came first otherwise).
async fn lapse_one(state: &AppState, lapse: &Lapse, now: i64) -> ApiResult<bool> {
    let lapsed = remove_if(
        state,
        &lapse.workspace,
        &RecordKind::Dnd,
        lapse.user.as_str(),
        |json| Snooze::from_json(json).is_ok_and(|s| s.end == lapse.end && s.end <= now),
    )
    .await?;
    if lapsed {
        crate::metrics::DND.with_label_values(&["lapsed"]).inc();
        announce(state, &lapse.workspace, &lapse.user, None, now).await;
    }
    Ok(lapsed)
}

/// One look at the cluster's snooze ends (read again only when they changed since `polled`
/// last read them): tells each lapse that is due (see the module docs) and forgets its end.
/// How many it told.
pub(crate) async fn lapse_due(state: &AppState, polled: &mut PolledSet) -> ApiResult<usize> {
    let now = now_secs();
    let (set, _) = polled.look(&state.store).await?;
    let mut told = 0;
    for (id, json) in &set.records {
        let lapse = match Lapse::from_json(json) {
            Ok(lapse) => lapse,
            Err(e) => {
                // Only an index: the snooze itself stays in its workspace's set, and lapses
                // there by the clock, untold.
                crate::metrics::DND.with_label_values(&["unreadable"]).inc();
                tracing::warn!(id, error = %e, "a DND end is unreadable; dropped");
                let cluster = cluster_records();
                let dropped =
                    remove_if(state, &cluster, &RecordKind::DndLapses, id, |j| j == json).await;
                if let Err(e) = dropped {
                    tracing::warn!(id, error = ?e, "could not drop an unreadable DND end; trying again later");
                }
                continue;
            }
        };
        if lapse.end > now {
            continue;
        }
        // One that fails (its workspace's records unreachable for now) is tried again at the
        // next look; the others go on.
        let result = match lapse_one(state, &lapse, now).await {
            Ok(lapsed) => forget_lapse(state, &lapse.workspace, &lapse.user, lapse.end)
                .await
                .map(|()| lapsed),
            Err(e) => Err(e),
        };
        match result {
            Ok(lapsed) => told += usize::from(lapsed),
            Err(e) => {
                tracing::warn!(id, error = ?e, "could not tell a DND snooze's lapse; trying again later")
            }
        }
    }
    Ok(told)
}

/// Starts this node's watch for lapsing snoozes: a look every `poll` until `shutdown`.
pub(crate) fn spawn_lapses(state: AppState, poll: Duration, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut polled = PolledSet::new(RecordKind::DndLapses);
        let mut every = Every::new(poll, shutdown);
        while every.next().await {
            if let Err(e) = lapse_due(&state, &mut polled).await {
                tracing::warn!(error = %e, "could not tell the DND snoozes that lapsed; looking again later");
            }
        }
    });
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
    fn a_snooze_end_reads_back_and_a_broken_one_is_an_error() {
        let lapse = Lapse {
            workspace: WorkspaceId::from("T1"),
            user: UserId::parse("U1").unwrap(),
            end: 1_600,
        };
        assert_eq!(Lapse::from_json(&lapse.json()).unwrap(), lapse);
        assert_eq!(
            Lapse::id(&lapse.workspace, &lapse.user),
            "T1/U1".to_string()
        );
        for bad in [
            "not json",
            r#"{"workspace":"T1","user":"U1"}"#,
            r#"{"workspace":"T1","user":"not a user","end":5}"#,
            r#"{"user":"U1","end":5}"#,
        ] {
            assert!(Lapse::from_json(bad).is_err(), "{bad}");
        }
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
