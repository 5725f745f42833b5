//! Slack's Socket Mode on a gateway session (`mode=socket` on the URL, which
//! `apps.connections.open` gives): the framing Bolt apps and `slack_sdk`'s
//! `SocketModeClient` speak, over the same session as RTM.
//!
//! - The session opens with Socket Mode's `hello` (`num_connections`: the user's sessions on
//!   this gateway; `connection_info.app_id`).
//! - Each event the Events API would deliver goes out in an `events_api` envelope: `message`
//!   (its subtypes too, not ephemeral ones), `reaction_added`, `reaction_removed`,
//!   `member_joined_channel`, `member_left_channel`, `channel_left`, `channel_created`,
//!   `channel_rename`, `channel_archive`, `channel_unarchive` (and the `group_*` forms of a
//!   private channel's), `team_join` and `user_change`. The event is the RTM
//!   event as is (with `event_ts`, and `seq`), inside an `event_callback` payload whose
//!   `event_id` names the channel's entry (`Ev<channel>-<seq>`), so an app can drop one that
//!   a reconnection brought twice. RTM's own events (presence, typing, `channel_joined`,
//!   answers) are not sent.
//! - The client answers each envelope with `{"envelope_id": …}`; acknowledgements are
//!   counted. Switchboard does not redeliver an envelope that was not acknowledged (Slack
//!   retries three times): an app that was away reads what it missed with
//!   `conversations.history`.
//! - A gateway that stops, or a session that fell behind, says `disconnect` (`warning`,
//!   `refresh_requested`), after which the SDKs open a new connection.
//!
//! Every Socket Mode session of a user receives every event, as RTM sessions do; Slack gives
//! each envelope to one of an app's connections.

use axum::extract::ws::Utf8Bytes;
use serde_json::{json, Value};
use shared::auth::Claims;
use shared::protocol::client::{error_code, error_json};

use crate::hub::SessionId;
use crate::metrics as m;

/// The Events API event types a Socket Mode session is sent.
const EVENTS: &[&str] = &[
    "message",
    "reaction_added",
    "reaction_removed",
    "member_joined_channel",
    "member_left_channel",
    "channel_left",
    "channel_created",
    "channel_rename",
    "channel_archive",
    "channel_unarchive",
    "group_rename",
    "group_archive",
    "group_unarchive",
    "team_join",
    "user_change",
];

/// One Socket Mode session's framing.
pub struct SocketMode {
    /// Stands for the app whose connection this is: the user's id with `A` for `U`.
    app_id: String,
    team_id: String,
    user_id: String,
    is_bot: bool,
    /// Makes envelope ids unique: `<gateway>-<session>-<n>`.
    envelope_prefix: String,
    next: u64,
}

impl SocketMode {
    pub fn new(claims: &Claims, gateway: &str, session: SessionId) -> SocketMode {
        let user = &claims.user.0;
        SocketMode {
            app_id: format!("A{}", user.strip_prefix('U').unwrap_or(user)),
            team_id: claims.workspace.0.clone(),
            user_id: user.clone(),
            is_bot: claims.bot,
            envelope_prefix: format!("{gateway}-{session}-"),
            next: 0,
        }
    }

    /// Socket Mode's `hello`.
    pub fn hello(&self, gateway: &str, num_connections: usize) -> String {
        json!({
            "type": "hello",
            "num_connections": num_connections,
            "debug_info": { "host": gateway },
            "connection_info": { "app_id": self.app_id },
        })
        .to_string()
    }

    /// The `disconnect` message (`warning` when the gateway stops, `refresh_requested` when
    /// the session must start again).
    pub fn disconnect(reason: &str, gateway: &str) -> String {
        json!({ "type": "disconnect", "reason": reason, "debug_info": { "host": gateway } })
            .to_string()
    }

    /// What goes to the client for `frame`, an RTM event: its envelope, the frame itself for
    /// an `error` (an answer to the client's own frame), nothing for what the Events API does
    /// not deliver.
    pub fn frame(&mut self, frame: &str) -> Option<Utf8Bytes> {
        let Ok(Value::Object(mut event)) = serde_json::from_str::<Value>(frame) else {
            return None;
        };
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind == "error" {
            return Some(frame.into());
        }
        if !EVENTS.contains(&kind) || event.get("is_ephemeral") == Some(&Value::Bool(true)) {
            return None;
        }
        let now = shared::ids::Ts::now();
        if !event.contains_key("event_ts") {
            let ts = match event.get("ts") {
                Some(Value::String(ts)) => ts.clone(),
                _ => now.to_slack(),
            };
            event.insert("event_ts".into(), ts.into());
        }
        let n = self.next;
        self.next += 1;
        let event_id = match (event.get("channel"), event.get("seq")) {
            (Some(Value::String(c)), Some(Value::Number(seq))) => format!("Ev{c}-{seq}"),
            _ => format!("Ev{}{n}", self.envelope_prefix),
        };
        let envelope = json!({
            "envelope_id": format!("{}{n}", self.envelope_prefix),
            "type": "events_api",
            "accepts_response_payload": false,
            "retry_attempt": 0,
            "retry_reason": "",
            "payload": {
                "token": "",
                "team_id": self.team_id,
                "api_app_id": self.app_id,
                "event": event,
                "type": "event_callback",
                "event_id": event_id,
                "event_time": now.0 / 1_000_000,
                "authorizations": [{
                    "enterprise_id": null,
                    "team_id": self.team_id,
                    "user_id": self.user_id,
                    "is_bot": self.is_bot,
                    "is_enterprise_install": false,
                }],
                "is_ext_shared_channel": false,
            },
        });
        m::SOCKET_MODE_ENVELOPES.inc();
        Some(envelope.to_string().into())
    }

    /// A frame from the client: an acknowledgement (`{"envelope_id": …}`, perhaps with a
    /// `payload`) is counted and needs no answer; anything else gets an `error` event.
    pub fn client_frame(raw: &str) -> Option<Utf8Bytes> {
        match serde_json::from_str::<Value>(raw) {
            Ok(v) if v.get("envelope_id").and_then(Value::as_str).is_some() => {
                m::CLIENT_EVENTS.with_label_values(&["ack"]).inc();
                None
            }
            Ok(_) => {
                m::BAD_INPUT.with_label_values(&["not_an_ack"]).inc();
                Some(
                    error_json(
                        error_code::UNKNOWN_EVENT,
                        "a Socket Mode client sends only acknowledgements: {\"envelope_id\": …}",
                        None,
                    )
                    .into(),
                )
            }
            Err(_) => {
                m::BAD_INPUT.with_label_values(&["malformed_json"]).inc();
                Some(error_json(error_code::MALFORMED_JSON, "malformed JSON", None).into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::{UserId, WorkspaceId};

    fn socket_mode() -> SocketMode {
        let claims = Claims {
            workspace: WorkspaceId::from("TW"),
            user: UserId::from("UBOT"),
            admin: false,
            bot: true,
            issued_at: 1,
            service: false,
        };
        SocketMode::new(&claims, "gw-1", 7)
    }

    fn parse(t: &Utf8Bytes) -> Value {
        serde_json::from_str(t.as_str()).unwrap()
    }

    #[test]
    fn events_go_out_in_envelopes_with_a_stable_event_id() {
        let mut sm = socket_mode();
        let msg = r#"{"type":"message","channel":"CA","user":"UB","text":"hi","ts":"1795629551.125471","seq":4,"team":"TW"}"#;
        let first = parse(&sm.frame(msg).unwrap());
        let again = parse(&sm.frame(msg).unwrap());
        assert_eq!(first["type"], "events_api");
        assert_eq!(first["envelope_id"], "gw-1-7-0");
        assert_eq!(
            again["envelope_id"], "gw-1-7-1",
            "each envelope has its own id"
        );
        let payload = &first["payload"];
        assert_eq!(payload["type"], "event_callback");
        assert_eq!(payload["team_id"], "TW");
        assert_eq!(payload["api_app_id"], "ABOT");
        assert_eq!(payload["event_id"], "EvCA-4");
        assert_eq!(
            again["payload"]["event_id"], "EvCA-4",
            "the entry names the event"
        );
        assert_eq!(payload["authorizations"][0]["user_id"], "UBOT");
        assert_eq!(payload["authorizations"][0]["is_bot"], true);
        let event = &payload["event"];
        assert_eq!(event["text"], "hi");
        assert_eq!(event["event_ts"], "1795629551.125471");
        assert_eq!(event["seq"], 4);

        // The workspace's events go out too (a welcome bot's `team_join`).
        let team_join = r#"{"type":"team_join","user":{"id":"UNEW","name":"dave"}}"#;
        let team_join = parse(&sm.frame(team_join).expect("an envelope"));
        assert_eq!(team_join["payload"]["event"]["user"]["name"], "dave");
        let joined = r#"{"type":"member_joined_channel","user":"UB","channel":"CA","team":"TW"}"#;
        let joined = parse(&sm.frame(joined).unwrap());
        assert_eq!(joined["payload"]["event_id"], "Evgw-1-7-3");
        assert!(joined["payload"]["event"]["event_ts"].is_string());
    }

    #[test]
    fn rtm_only_events_are_not_sent_and_errors_are() {
        let mut sm = socket_mode();
        for rtm_only in [
            r#"{"type":"presence_change","user":"UB","presence":"away"}"#,
            r#"{"type":"user_typing","channel":"CA","user":"UB"}"#,
            r#"{"type":"channel_joined","channel":{"id":"CA"}}"#,
            r#"{"type":"message","channel":"CA","user":"UB","text":"psst","ts":"1.000001","is_ephemeral":true}"#,
            r#"{"type":"pong","reply_to":1}"#,
            "not json",
        ] {
            assert!(sm.frame(rtm_only).is_none(), "{rtm_only}");
        }
        let error = error_json(error_code::MALFORMED_JSON, "malformed JSON", None);
        assert_eq!(sm.frame(&error).unwrap().as_str(), error);
    }

    #[test]
    fn acknowledgements_need_no_answer_and_anything_else_is_refused() {
        let acks = m::CLIENT_EVENTS.with_label_values(&["ack"]).get();
        assert!(SocketMode::client_frame(r#"{"envelope_id":"gw-1-7-0"}"#).is_none());
        assert!(
            SocketMode::client_frame(r#"{"envelope_id":"gw-1-7-1","payload":{"text":"ok"}}"#)
                .is_none()
        );
        assert_eq!(m::CLIENT_EVENTS.with_label_values(&["ack"]).get() - acks, 2);
        for bad in [
            r#"{"type":"message","text":"hi"}"#,
            "{",
            r#"{"envelope_id":5}"#,
        ] {
            let answer = SocketMode::client_frame(bad).expect("an error");
            assert_eq!(parse(&answer)["type"], "error", "{bad}");
        }
    }

    #[test]
    fn hello_and_disconnect_are_socket_mode_s() {
        let sm = socket_mode();
        let hello: Value = serde_json::from_str(&sm.hello("gw-1", 2)).unwrap();
        assert_eq!(hello["type"], "hello");
        assert_eq!(hello["num_connections"], 2);
        assert_eq!(hello["connection_info"]["app_id"], "ABOT");
        let bye: Value =
            serde_json::from_str(&SocketMode::disconnect("refresh_requested", "gw-1")).unwrap();
        assert_eq!(bye["type"], "disconnect");
        assert_eq!(bye["reason"], "refresh_requested");
    }
}
