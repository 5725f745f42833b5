//! Slack's Socket Mode on a gateway session (`mode=socket` on the URL, which
//! `apps.connections.open` gives): the framing Bolt apps and `slack_sdk`'s
//! `SocketModeClient` speak, over the same session as RTM.
//!
//! - The session opens with Socket Mode's `hello` (`num_connections`: the app's connections on
//!   this gateway; `connection_info.app_id`).
//! - Each event the Events API would deliver goes out in an `events_api` envelope: `message`
//!   (its subtypes too, not ephemeral ones), `reaction_added`, `reaction_removed`,
//!   `pin_added`, `pin_removed`,
//!   `member_joined_channel`, `member_left_channel`, `channel_left`, `channel_created`,
//!   `channel_rename`, `channel_archive`, `channel_unarchive` (and the `group_*` forms of a
//!   private channel's), `team_join`, `user_change`, and a user group's `subteam_created`,
//!   `subteam_updated`, `subteam_members_changed`, `subteam_self_added` and
//!   `subteam_self_removed`, `file_shared` and `file_deleted`, and
//!   `emoji_changed`, a channel's `bookmark_added`, `bookmark_updated` and
//!   `bookmark_removed`, `dnd_updated` (the app's own user) and `dnd_updated_user`, and
//!   `tokens_revoked` (the app's own tokens; the connection of a revoked one then closes).
//!   The event is the RTM event as is
//!   (with `event_ts`, and `seq`; a message also with the Events API's `channel_type`, from
//!   the session's channel list or the `channel_joined` of one joined later), inside an
//!   `event_callback` payload whose `event_id` names the channel's entry
//!   (`Ev<channel>-<seq>`), so an app can drop one that a reconnection brought twice. RTM's own events (presence, typing, `channel_joined`,
//!   answers) are not sent.
//! - Each event goes to **one** of the app's connections on this gateway, as Slack gives each
//!   envelope to one connection (an app runs several for redundancy, or several instances of
//!   itself, and must not answer a message twice). Every connection is offered every event
//!   of its channels; the first to claim it in the app's [`App`] sends it, the others drop
//!   it. `apps.connections.open` sends all of an app's connections to one gateway while it
//!   is up, so the claims hold across the cluster.
//! - The client answers each envelope with `{"envelope_id": …}` within [`ACK_TIMEOUT`] (Slack's
//!   three seconds); acknowledgements are counted. An envelope still unacknowledged then is
//!   sent again with `retry_attempt` one higher and `retry_reason` `timeout`, up to Slack's
//!   three retries, on the Events API's schedule ([`RETRY_DELAYS`]: at once, after a minute,
//!   after five), on another connection of the app if it has one (the one that let it time
//!   out may be stuck), else on the same. One unacknowledged when its connection closes (the
//!   app restarted, the network dropped it) is sent again at once on another connection.
//!   One that finds no connection waits up to [`ORPHAN_TTL`] for the app's next.
//! - A gateway that stops, or a session that fell behind, says `disconnect` (`warning`,
//!   `refresh_requested`), after which the SDKs open a new connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};
use shared::auth::Claims;
use shared::ids::{ChannelId, UserId};
use shared::protocol::client::{error_code, error_json};
use tokio::sync::watch;

use crate::hub::SessionId;
use crate::metrics as m;

/// How many handed-out events an app remembers, to drop them on its other connections. A
/// connection more than this many events behind the app's fastest could send one again (the
/// app sees the same `event_id` twice), never lose one.
const CLAIMS_KEPT: usize = 8192;
/// Most envelopes a connection keeps for redelivery while they wait for their
/// acknowledgement; beyond it the oldest is forgotten (counted).
const UNACKED_KEPT: usize = 256;
/// How long an envelope whose connection closed unacknowledged waits for another connection
/// of its app.
pub const ORPHAN_TTL: Duration = Duration::from_secs(300);
/// Most such envelopes an app keeps; beyond it the oldest is dropped (counted).
const ORPHANS_KEPT: usize = 1024;
/// Slack retries an envelope three times.
const MAX_RETRIES: u32 = 3;
/// How long a client has to acknowledge an envelope before it is sent again.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// When the n-th retry of an envelope that timed out is made, after its timeout: the Events
/// API's schedule (at once, after a minute, after five minutes).
pub const RETRY_DELAYS: [Duration; MAX_RETRIES as usize] = [
    Duration::ZERO,
    Duration::from_secs(60),
    Duration::from_secs(300),
];

/// The Socket Mode apps with a connection on this gateway (or envelopes waiting for one),
/// by their bot user.
#[derive(Default)]
pub struct SocketApps {
    apps: Mutex<HashMap<UserId, Arc<App>>>,
}

impl SocketApps {
    /// A connection of `user`'s app opens.
    pub fn join(&self, user: &UserId) -> Arc<App> {
        let mut apps = self.apps.lock();
        // An app whose last connection closed keeps its entry only while envelopes wait in it.
        let now = Instant::now();
        apps.retain(|_, app| {
            let mut st = app.state.lock();
            st.expire(now);
            st.connections > 0 || !st.orphans.is_empty()
        });
        let app = apps.entry(user.clone()).or_default().clone();
        app.state.lock().connections += 1;
        // Envelopes waiting may be for it; one that its app's other connections let time out
        // now has somewhere else to go.
        app.wake_all();
        app
    }

    /// A connection of `user`'s app closes, leaving `unacked`: they go to another connection
    /// of the app, now or when one opens.
    fn leave(&self, user: &UserId, app: &Arc<App>, unacked: VecDeque<Unacked>) {
        let mut apps = self.apps.lock();
        let now = Instant::now();
        let forget = {
            let mut st = app.state.lock();
            st.connections = st.connections.saturating_sub(1);
            // Sent again at once: this connection is gone, no timeout needs to pass.
            st.give_back(unacked, now, None, false);
            st.expire(now);
            st.connections == 0 && st.orphans.is_empty()
        };
        if forget && apps.get(user).is_some_and(|a| Arc::ptr_eq(a, app)) {
            apps.remove(user);
        }
        drop(apps);
        // Its envelopes wait for the others, and what it skipped as its own is theirs now.
        app.wake_all();
    }

    /// Apps with an entry here (tests).
    pub fn len(&self) -> usize {
        self.apps.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an app's connections on this gateway share: which events one of them has sent, and
/// the envelopes to send again (a closed one left them unacknowledged, or they timed out).
pub struct App {
    state: Mutex<AppState>,
    /// Bumped when [`AppState::orphans`] or the connections change: each connection then
    /// takes what is due for it and sets its timer for what is not yet.
    wake: watch::Sender<u64>,
}

impl Default for App {
    fn default() -> App {
        App {
            state: Mutex::default(),
            wake: watch::Sender::new(0),
        }
    }
}

impl App {
    fn wake_all(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes when the app's connections should look at its envelopes again
    /// ([`SocketMode::due`], [`SocketMode::next_deadline`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Claims the event `key` for the calling connection: true for the first caller only.
    fn claim(&self, key: u64) -> bool {
        let mut st = self.state.lock();
        if !st.claimed.insert(key) {
            return false;
        }
        st.claim_order.push_back(key);
        if st.claim_order.len() > CLAIMS_KEPT {
            if let Some(old) = st.claim_order.pop_front() {
                st.claimed.remove(&old);
            }
        }
        true
    }

    /// Connections open (tests, `hello`).
    pub fn connections(&self) -> usize {
        self.state.lock().connections
    }
}

#[derive(Default)]
struct AppState {
    connections: usize,
    claimed: HashSet<u64>,
    claim_order: VecDeque<u64>,
    orphans: VecDeque<Orphan>,
}

impl AppState {
    fn expire(&mut self, now: Instant) {
        let before = self.orphans.len();
        self.orphans
            .retain(|o| now.saturating_duration_since(o.due) <= ORPHAN_TTL);
        let expired = before - self.orphans.len();
        if expired > 0 {
            m::SOCKET_MODE_UNDELIVERED
                .with_label_values(&["expired"])
                .inc_by(expired as u64);
        }
    }

    /// Takes back envelopes sent and not acknowledged, to send again (each one retry on)
    /// from `now`, or on the retry schedule when they `timed_out` on connection `from`.
    fn give_back(
        &mut self,
        unacked: impl IntoIterator<Item = Unacked>,
        now: Instant,
        from: Option<SessionId>,
        timed_out: bool,
    ) {
        for u in unacked {
            if u.retry >= MAX_RETRIES {
                m::SOCKET_MODE_UNDELIVERED
                    .with_label_values(&["retries"])
                    .inc();
                continue;
            }
            let due = if timed_out {
                now + RETRY_DELAYS[u.retry as usize]
            } else {
                now
            };
            self.orphans.push_back(Orphan {
                due,
                from,
                payload: u.payload,
                retry: u.retry + 1,
            });
        }
        while self.orphans.len() > ORPHANS_KEPT {
            self.orphans.pop_front();
            m::SOCKET_MODE_UNDELIVERED
                .with_label_values(&["overflow"])
                .inc();
        }
    }

    /// Whether connection `me` takes `o`: not one that timed out on it while the app has
    /// another connection to try.
    fn for_me(&self, o: &Orphan, me: SessionId) -> bool {
        self.connections <= 1 || o.from != Some(me)
    }
}

/// An envelope sent and not yet acknowledged: its payload (the `event_callback`, as JSON),
/// kept to send again should it time out or the connection close first.
struct Unacked {
    envelope_id: String,
    payload: Arc<str>,
    retry: u32,
    sent: Instant,
}

/// An envelope to send again: its connection closed before acknowledging it, or it timed
/// out there (`from`).
struct Orphan {
    /// Not sent before this.
    due: Instant,
    from: Option<SessionId>,
    payload: Arc<str>,
    retry: u32,
}

/// The Events API event types a Socket Mode session is sent.
const EVENTS: &[&str] = &[
    "message",
    "reaction_added",
    "reaction_removed",
    "pin_added",
    "pin_removed",
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
    "subteam_created",
    "subteam_updated",
    "subteam_members_changed",
    "subteam_self_added",
    "subteam_self_removed",
    "file_shared",
    "file_deleted",
    "emoji_changed",
    "bookmark_added",
    "bookmark_updated",
    "bookmark_removed",
    "dnd_updated",
    "dnd_updated_user",
    "tokens_revoked",
    "im_open",
    "im_close",
];

/// One Socket Mode session's framing. Dropping it closes the connection for its app:
/// what it left unacknowledged goes to another connection.
pub struct SocketMode {
    /// Stands for the app whose connection this is: the user's id with `A` for `U`.
    app_id: String,
    team_id: String,
    user: UserId,
    is_bot: bool,
    session: SessionId,
    /// Makes envelope ids unique: `<gateway>-<session>-<n>`.
    envelope_prefix: String,
    next: u64,
    apps: Arc<SocketApps>,
    app: Arc<App>,
    /// Oldest first, as clients acknowledge.
    unacked: VecDeque<Unacked>,
    /// The Events API `channel_type` of each channel: from the session's start, then from
    /// `channel_joined` (its name and `is_private`).
    channel_types: HashMap<ChannelId, &'static str>,
}

impl SocketMode {
    pub fn new(
        claims: &Claims,
        gateway: &str,
        session: SessionId,
        apps: Arc<SocketApps>,
        channel_types: HashMap<ChannelId, &'static str>,
    ) -> SocketMode {
        let user = &claims.user.0;
        let app = apps.join(&claims.user);
        SocketMode {
            app_id: format!("A{}", user.strip_prefix('U').unwrap_or(user)),
            team_id: claims.workspace.0.clone(),
            user: claims.user.clone(),
            is_bot: claims.bot,
            session,
            envelope_prefix: format!("{gateway}-{session}-"),
            next: 0,
            apps,
            app,
            unacked: VecDeque::new(),
            channel_types,
        }
    }

    /// What this connection shares with the app's others.
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
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
        if kind == "channel_joined" {
            // RTM's own event, not sent; it names the channel's type.
            self.learn_channel_type(&event);
            return None;
        }
        if !EVENTS.contains(&kind) || event.get("is_ephemeral") == Some(&Value::Bool(true)) {
            return None;
        }
        let known_type = || match event.get("channel") {
            Some(Value::String(c)) => self.channel_types.get(&ChannelId(c.clone())).copied(),
            _ => None,
        };
        if kind == "message" {
            // The Events API says where a message was (`message.im` and the like), which
            // RTM leaves to the client; apps route direct messages by it.
            let t = known_type().unwrap_or("channel");
            event.insert("channel_type".into(), t.into());
        } else if kind == "member_left_channel" && !event.contains_key("channel_type") {
            // The hub knows a channel's type when someone joins it, not when they leave: the
            // app's own list does (it was a member too).
            if let Some(t) = known_type() {
                let t = if t == "channel" { "C" } else { "G" };
                event.insert("channel_type".into(), t.into());
            }
        }
        let now = shared::ids::Ts::now();
        if !event.contains_key("event_ts") {
            let ts = match event.get("ts") {
                Some(Value::String(ts)) => ts.clone(),
                _ => now.to_slack(),
            };
            event.insert("event_ts".into(), ts.into());
        }
        // A channel's entry names the event on every connection; another event (a workspace
        // event: the same frame goes to each of the app's connections) is named by its text.
        let entry = match (event.get("channel"), event.get("seq")) {
            (Some(Value::String(c)), Some(Value::Number(seq))) => Some(format!("Ev{c}-{seq}")),
            _ => None,
        };
        let mut key = std::hash::DefaultHasher::new();
        match &entry {
            Some(id) => id.hash(&mut key),
            None => frame.hash(&mut key),
        }
        if !self.app.claim(key.finish()) {
            m::SOCKET_MODE_CLAIMED_ELSEWHERE.inc();
            return None;
        }
        let n = self.next;
        let event_id = entry.unwrap_or_else(|| format!("Ev{}{n}", self.envelope_prefix));
        let payload = json!({
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
                "user_id": self.user.0,
                "is_bot": self.is_bot,
                "is_enterprise_install": false,
            }],
            "is_ext_shared_channel": false,
        });
        m::SOCKET_MODE_ENVELOPES.inc();
        Some(self.envelope(payload.to_string().into(), 0))
    }

    /// The `events_api` envelope of `payload` (its `retry_attempt`-th sending), remembered
    /// until the client acknowledges it.
    fn envelope(&mut self, payload: Arc<str>, retry_attempt: u32) -> Utf8Bytes {
        let envelope_id = format!("{}{}", self.envelope_prefix, self.next);
        self.next += 1;
        let reason = if retry_attempt == 0 { "" } else { "timeout" };
        // Written around the payload's text, which is JSON already.
        let text = format!(
            r#"{{"envelope_id":"{envelope_id}","type":"events_api","accepts_response_payload":false,"retry_attempt":{retry_attempt},"retry_reason":"{reason}","payload":{payload}}}"#
        );
        if self.unacked.len() == UNACKED_KEPT {
            self.unacked.pop_front();
            m::SOCKET_MODE_UNDELIVERED
                .with_label_values(&["unacked_overflow"])
                .inc();
        }
        self.unacked.push_back(Unacked {
            envelope_id,
            payload,
            retry: retry_attempt,
            sent: Instant::now(),
        });
        text.into()
    }

    /// Learns a joined channel's type from its `channel_joined` event: a direct message's
    /// name (`dm-…`, `mpdm-…`), else its `is_private`.
    fn learn_channel_type(&mut self, event: &serde_json::Map<String, Value>) {
        let channel = &event["channel"];
        let Some(id) = channel["id"].as_str() else {
            return;
        };
        let name = channel["name"].as_str().unwrap_or_default();
        let t = if name.starts_with(shared::ids::IM_PREFIX) {
            "im"
        } else if name.starts_with(shared::ids::MPIM_PREFIX) {
            "mpim"
        } else if channel["is_private"] == true {
            "group"
        } else {
            "channel"
        };
        self.channel_types.insert(ChannelId(id.to_string()), t);
    }

    /// What to send again on this connection at `now` (each with `retry_attempt` one higher
    /// than before): envelopes that closed connections of the app left unacknowledged, and
    /// those that timed out, here or on another connection, and are due. This connection's
    /// own that timed out by `now` are handed to the app first (counted).
    pub fn due(&mut self, now: Instant) -> Vec<Utf8Bytes> {
        let timed_out = self
            .unacked
            .iter()
            .take_while(|u| now.saturating_duration_since(u.sent) >= ACK_TIMEOUT)
            .count();
        let mine: Vec<Orphan> = {
            let mut st = self.app.state.lock();
            if timed_out > 0 {
                m::SOCKET_MODE_ACK_TIMEOUTS.inc_by(timed_out as u64);
                let expired: Vec<Unacked> = self.unacked.drain(..timed_out).collect();
                st.give_back(expired, now, Some(self.session), true);
            }
            st.expire(now);
            let mut mine = Vec::new();
            let mut i = 0;
            while i < st.orphans.len() {
                let o = &st.orphans[i];
                if o.due <= now && st.for_me(o, self.session) {
                    mine.extend(st.orphans.remove(i));
                } else {
                    i += 1;
                }
            }
            mine
        };
        if timed_out > 0 {
            // The app's other connections take what timed out here.
            self.app.wake_all();
        }
        m::SOCKET_MODE_REDELIVERED.inc_by(mine.len() as u64);
        mine.into_iter()
            .map(|o| self.envelope(o.payload, o.retry))
            .collect()
    }

    /// When [`SocketMode::due`] has something to do next: the oldest envelope's
    /// acknowledgement is late, or an envelope this connection would send again comes due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let late = self.unacked.front().map(|u| u.sent + ACK_TIMEOUT);
        let st = self.app.state.lock();
        let due = st
            .orphans
            .iter()
            .filter(|o| st.for_me(o, self.session))
            .map(|o| o.due)
            .min();
        match (late, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A frame from the client: an acknowledgement (`{"envelope_id": …}`, perhaps with a
    /// `payload`) is counted and needs no answer; anything else gets an `error` event.
    pub fn client_frame(&mut self, raw: &str) -> Option<Utf8Bytes> {
        match serde_json::from_str::<Value>(raw) {
            Ok(v) if v.get("envelope_id").and_then(Value::as_str).is_some() => {
                m::CLIENT_EVENTS.with_label_values(&["ack"]).inc();
                let id = v.get("envelope_id").and_then(Value::as_str);
                // Acknowledgements come in order, so the first is nearly always the one.
                if let Some(i) = self
                    .unacked
                    .iter()
                    .position(|u| Some(u.envelope_id.as_str()) == id)
                {
                    self.unacked.remove(i);
                }
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

impl Drop for SocketMode {
    fn drop(&mut self) {
        let unacked = std::mem::take(&mut self.unacked);
        self.apps.leave(&self.user, &self.app, unacked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::WorkspaceId;

    fn socket_mode() -> SocketMode {
        connection(&Arc::default(), "UBOT", 7)
    }

    /// A connection of `user`'s app, session `session`, on gateway `gw-1` with `apps`.
    fn connection(apps: &Arc<SocketApps>, user: &str, session: SessionId) -> SocketMode {
        let claims = Claims {
            workspace: WorkspaceId::from("TW"),
            user: UserId::from(user),
            admin: false,
            bot: true,
            issued_at: 1,
            service: false,
        };
        SocketMode::new(&claims, "gw-1", session, apps.clone(), HashMap::new())
    }

    fn message(seq: u64) -> String {
        format!(
            r#"{{"type":"message","channel":"CA","user":"UB","text":"hi {seq}","ts":"1795629551.{seq:06}","seq":{seq},"team":"TW"}}"#
        )
    }

    fn ack(sm: &mut SocketMode, envelope: &Value) {
        let ack = json!({ "envelope_id": envelope["envelope_id"] }).to_string();
        assert!(sm.client_frame(&ack).is_none());
    }

    fn parse(t: &Utf8Bytes) -> Value {
        serde_json::from_str(t.as_str()).unwrap()
    }

    #[test]
    fn events_go_out_in_envelopes_with_a_stable_event_id() {
        let mut sm = socket_mode();
        let msg = r#"{"type":"message","channel":"CA","user":"UB","text":"hi","ts":"1795629551.125471","seq":4,"team":"TW"}"#;
        let first = parse(&sm.frame(msg).unwrap());
        assert!(sm.frame(msg).is_none(), "an event goes out once");
        let again = parse(&sm.frame(&message(5)).unwrap());
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
            again["payload"]["event_id"], "EvCA-5",
            "the entry names the event"
        );
        assert_eq!(first["retry_attempt"], 0);
        assert_eq!(first["retry_reason"], "");
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
        // And a user group's, which on-call bots follow.
        let rotated =
            r#"{"type":"subteam_members_changed","subteam_id":"S1","added_users":["UB"]}"#;
        let rotated = parse(&sm.frame(rotated).expect("an envelope"));
        assert_eq!(rotated["payload"]["event"]["added_users"][0], "UB");
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
        let mut sm = socket_mode();
        let acks = m::CLIENT_EVENTS.with_label_values(&["ack"]).get();
        assert!(sm.client_frame(r#"{"envelope_id":"gw-1-7-0"}"#).is_none());
        assert!(sm
            .client_frame(r#"{"envelope_id":"gw-1-7-1","payload":{"text":"ok"}}"#)
            .is_none());
        assert_eq!(m::CLIENT_EVENTS.with_label_values(&["ack"]).get() - acks, 2);
        for bad in [
            r#"{"type":"message","text":"hi"}"#,
            "{",
            r#"{"envelope_id":5}"#,
        ] {
            let answer = sm.client_frame(bad).expect("an error");
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

    #[test]
    fn each_event_goes_to_one_connection_of_its_app() {
        let apps = Arc::default();
        let mut a = connection(&apps, "UBOT", 7);
        let mut b = connection(&apps, "UBOT", 8);
        let mut other_app = connection(&apps, "UOTHER", 9);
        assert_eq!(a.app().connections(), 2);
        let elsewhere = m::SOCKET_MODE_CLAIMED_ELSEWHERE.get();

        let sent_a = parse(&a.frame(&message(4)).expect("the first connection sends it"));
        assert!(b.frame(&message(4)).is_none(), "the app's other does not");
        assert_eq!(sent_a["payload"]["event_id"], "EvCA-4");
        // Whichever connection comes first: here the second.
        assert!(b.frame(&message(5)).is_some());
        assert!(a.frame(&message(5)).is_none());
        // A workspace event (no channel entry) is the same frame on each connection.
        let team_join = r#"{"type":"team_join","user":{"id":"UNEW","name":"dave"}}"#;
        assert!(b.frame(team_join).is_some());
        assert!(a.frame(team_join).is_none());
        assert!(m::SOCKET_MODE_CLAIMED_ELSEWHERE.get() - elsewhere >= 3);
        // Another app gets every event as well.
        for frame in [message(4), message(5), team_join.to_string()] {
            assert!(other_app.frame(&frame).is_some(), "{frame}");
        }
        // An error answers the connection's own frame: never claimed.
        let error = error_json(error_code::MALFORMED_JSON, "malformed JSON", None);
        assert!(a.frame(&error).is_some() && b.frame(&error).is_some());
    }

    #[test]
    fn an_app_remembers_a_bounded_number_of_sent_events() {
        let app = App::default();
        for key in 0..CLAIMS_KEPT as u64 {
            assert!(app.claim(key));
        }
        assert!(!app.claim(0), "still remembered");
        assert!(app.claim(CLAIMS_KEPT as u64));
        assert!(app.claim(0), "the oldest was forgotten");
        let st = app.state.lock();
        assert_eq!(st.claimed.len(), CLAIMS_KEPT);
        assert_eq!(st.claim_order.len(), CLAIMS_KEPT);
    }

    #[test]
    fn unacknowledged_envelopes_go_to_another_connection_of_the_app() {
        let apps: Arc<SocketApps> = Arc::default();
        let mut a = connection(&apps, "UBOT", 7);
        let mut b = connection(&apps, "UBOT", 8);
        let first = parse(&a.frame(&message(4)).unwrap());
        let second = parse(&a.frame(&message(5)).unwrap());
        ack(&mut a, &first);
        assert!(b.due(Instant::now()).is_empty(), "nothing waits yet");
        let redelivered = m::SOCKET_MODE_REDELIVERED.get();

        drop(a);
        let again = b.due(Instant::now());
        assert_eq!(again.len(), 1, "only the unacknowledged one");
        let again = parse(&again[0]);
        assert_eq!(again["type"], "events_api");
        assert_eq!(again["retry_attempt"], 1);
        assert_eq!(again["retry_reason"], "timeout");
        assert_eq!(
            again["payload"], second["payload"],
            "the same event_callback"
        );
        assert_eq!(again["payload"]["event_id"], "EvCA-5");
        assert!(
            again["envelope_id"]
                .as_str()
                .unwrap()
                .starts_with("gw-1-8-"),
            "a new envelope id on the new connection: {again}"
        );
        assert!(m::SOCKET_MODE_REDELIVERED.get() > redelivered);
        assert!(b.due(Instant::now()).is_empty(), "handed out once");

        // Unacknowledged again: the next connection gets it, the retry counted on.
        let mut c = connection(&apps, "UBOT", 9);
        drop(b);
        let third = parse(&c.due(Instant::now())[0]);
        assert_eq!(third["retry_attempt"], 2);
        assert_eq!(third["payload"]["event_id"], "EvCA-5");
        ack(&mut c, &third);
        drop(c);
        assert!(
            apps.is_empty(),
            "no connection and nothing waiting: forgotten"
        );
    }

    #[test]
    fn an_envelope_is_retried_three_times_at_most() {
        let apps: Arc<SocketApps> = Arc::default();
        let mut a = connection(&apps, "UBOT", 1);
        assert!(a.frame(&message(4)).is_some());
        let given_up = m::SOCKET_MODE_UNDELIVERED
            .with_label_values(&["retries"])
            .get();
        for (session, retry) in (2..).zip(1..=3) {
            let mut next = connection(&apps, "UBOT", session);
            drop(a);
            let again = next.due(Instant::now());
            assert_eq!(parse(&again[0])["retry_attempt"], retry);
            a = next;
        }
        let mut last = connection(&apps, "UBOT", 9);
        drop(a);
        assert!(
            last.due(Instant::now()).is_empty(),
            "a fifth sending is not made"
        );
        assert!(
            m::SOCKET_MODE_UNDELIVERED
                .with_label_values(&["retries"])
                .get()
                > given_up
        );
    }

    #[tokio::test]
    async fn envelopes_wait_for_the_app_s_next_connection_and_wake_it() {
        let apps: Arc<SocketApps> = Arc::default();
        let mut a = connection(&apps, "UBOT", 1);
        let sent = parse(&a.frame(&message(4)).unwrap());
        drop(a);
        assert_eq!(apps.len(), 1, "kept for the app's next connection");

        let mut b = connection(&apps, "UBOT", 2);
        // The session subscribes before its first look, which finds the envelope due.
        let mut wake = b.app().subscribe();
        assert!(b.next_deadline().is_some_and(|at| at <= Instant::now()));
        let again = b.due(Instant::now());
        assert_eq!(parse(&again[0])["payload"], sent["payload"]);

        // A connection waiting while another closes is woken.
        let mut c = connection(&apps, "UBOT", 3);
        wake.borrow_and_update();
        let sent = parse(&c.frame(&message(5)).unwrap());
        let waiting = tokio::spawn(async move { wake.changed().await });
        tokio::task::yield_now().await;
        drop(c);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap()
            .unwrap();
        assert_eq!(parse(&b.due(Instant::now())[0])["payload"], sent["payload"]);
    }

    #[test]
    fn an_unacknowledged_envelope_times_out_to_another_connection() {
        let apps: Arc<SocketApps> = Arc::default();
        let mut a = connection(&apps, "UBOT", 7);
        let mut b = connection(&apps, "UBOT", 8);
        let mut wake_b = b.app().subscribe();
        wake_b.borrow_and_update();
        assert_eq!(a.next_deadline(), None, "nothing sent, nothing to wait for");
        let start = Instant::now();
        let acked = parse(&a.frame(&message(4)).unwrap());
        let late = parse(&a.frame(&message(5)).unwrap());
        ack(&mut a, &acked);
        let deadline = a.next_deadline().expect("the acknowledgement's deadline");
        assert!(deadline >= start + ACK_TIMEOUT && deadline <= Instant::now() + ACK_TIMEOUT);
        assert!(a.due(Instant::now()).is_empty(), "not late yet");
        assert_eq!(b.next_deadline(), None);
        let timeouts = m::SOCKET_MODE_ACK_TIMEOUTS.get();

        // Past the deadline the envelope leaves `a` for the app's other connection, at once.
        let t = deadline + Duration::from_millis(1);
        assert!(a.due(t).is_empty(), "not sent again where it timed out");
        assert!(m::SOCKET_MODE_ACK_TIMEOUTS.get() > timeouts);
        assert!(
            wake_b.has_changed().unwrap(),
            "the other connection is woken"
        );
        assert_eq!(a.next_deadline(), None, "a waits for nothing now");
        assert!(b.next_deadline().is_some_and(|at| at <= t));
        let again = b.due(t);
        assert_eq!(again.len(), 1);
        let again = parse(&again[0]);
        assert_eq!(again["retry_attempt"], 1);
        assert_eq!(again["retry_reason"], "timeout");
        assert_eq!(again["payload"], late["payload"]);
        assert!(again["envelope_id"]
            .as_str()
            .unwrap()
            .starts_with("gw-1-8-"));

        // Late again on `b`: the second retry waits a minute, and goes back to `a`.
        let t2 = t + ACK_TIMEOUT;
        assert!(b.due(t2).is_empty());
        let retry_at = t2 + RETRY_DELAYS[1];
        assert_eq!(a.next_deadline(), Some(retry_at));
        assert!(a.due(retry_at - Duration::from_millis(1)).is_empty());
        let third = parse(&a.due(retry_at)[0]);
        assert_eq!(third["retry_attempt"], 2);
        assert_eq!(third["payload"]["event_id"], "EvCA-5");
        // Acknowledged: nothing more.
        ack(&mut a, &third);
        assert_eq!(a.next_deadline(), None);
        assert!(a.due(retry_at + Duration::from_secs(3600)).is_empty());
        assert!(b.due(retry_at + Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn an_app_s_only_connection_gets_its_late_envelopes_again() {
        let apps: Arc<SocketApps> = Arc::default();
        let mut a = connection(&apps, "UBOT", 7);
        let sent = parse(&a.frame(&message(4)).unwrap());
        let given_up = m::SOCKET_MODE_UNDELIVERED
            .with_label_values(&["retries"])
            .get();
        let mut t = Instant::now();
        // Never acknowledged: three retries on the Events API's schedule, then no more.
        for retry in 1..=MAX_RETRIES {
            t += ACK_TIMEOUT;
            let now = a.due(t);
            let delay = RETRY_DELAYS[retry as usize - 1];
            let again = if delay.is_zero() {
                now
            } else {
                assert!(now.is_empty(), "retry {retry} waits {delay:?}");
                t += delay;
                assert_eq!(a.next_deadline(), Some(t));
                a.due(t)
            };
            assert_eq!(again.len(), 1, "retry {retry}");
            let again = parse(&again[0]);
            assert_eq!(again["retry_attempt"], retry);
            assert_eq!(again["payload"], sent["payload"]);
            // Its deadline counts from when it was really sent.
            t = Instant::now().max(t);
        }
        assert!(a.due(t + Duration::from_secs(3600)).is_empty());
        assert_eq!(a.next_deadline(), None);
        assert!(
            m::SOCKET_MODE_UNDELIVERED
                .with_label_values(&["retries"])
                .get()
                > given_up
        );
    }

    #[test]
    fn message_events_say_their_channel_type() {
        let types: HashMap<ChannelId, &'static str> = [
            (ChannelId::from("CPUB"), "channel"),
            (ChannelId::from("CPRIV"), "group"),
            (ChannelId::from("CDM"), "im"),
            (ChannelId::from("CGROUPDM"), "mpim"),
        ]
        .into_iter()
        .collect();
        let claims = Claims {
            workspace: WorkspaceId::from("TW"),
            user: UserId::from("UBOT"),
            admin: false,
            bot: true,
            issued_at: 1,
            service: false,
        };
        let mut sm = SocketMode::new(&claims, "gw-1", 1, Arc::default(), types);
        let mut seq = 0;
        let mut type_of = |sm: &mut SocketMode, channel: &str| {
            seq += 1;
            let frame = format!(
                r#"{{"type":"message","channel":"{channel}","user":"UB","text":"hi","ts":"1795629551.{seq:06}","seq":{seq}}}"#
            );
            parse(&sm.frame(&frame).unwrap())["payload"]["event"]["channel_type"].clone()
        };
        assert_eq!(type_of(&mut sm, "CPUB"), "channel");
        assert_eq!(type_of(&mut sm, "CPRIV"), "group");
        assert_eq!(type_of(&mut sm, "CDM"), "im");
        assert_eq!(type_of(&mut sm, "CGROUPDM"), "mpim");
        assert_eq!(type_of(&mut sm, "CUNKNOWN"), "channel");
        // Conversations joined later: a direct message's name tells it.
        for (id, name, private) in [
            ("CNEWDM", "dm-ualice-ubot", true),
            ("CNEWGROUP", "mpdm-a-b-c", true),
            ("CNEWPRIV", "secret", true),
            ("CNEWPUB", "open", false),
        ] {
            let joined = json!({"type": "channel_joined",
                                "channel": {"id": id, "name": name, "is_private": private}});
            assert!(sm.frame(&joined.to_string()).is_none(), "RTM's own");
        }
        assert_eq!(type_of(&mut sm, "CNEWDM"), "im");
        assert_eq!(type_of(&mut sm, "CNEWGROUP"), "mpim");
        assert_eq!(type_of(&mut sm, "CNEWPRIV"), "group");
        assert_eq!(type_of(&mut sm, "CNEWPUB"), "channel");
        // Membership changes carry Slack's letters: the hub gives a join's, the app's list a
        // departure's.
        let left = r#"{"type":"member_left_channel","user":"UB","channel":"CNEWPRIV","team":"TW"}"#;
        let left = parse(&sm.frame(left).unwrap());
        assert_eq!(left["payload"]["event"]["channel_type"], "G");
        let left = r#"{"type":"member_left_channel","user":"UB","channel":"CPUB","team":"TW"}"#;
        assert_eq!(
            parse(&sm.frame(left).unwrap())["payload"]["event"]["channel_type"],
            "C"
        );
        // Only message and membership events carry one, as in the Events API.
        let reaction = r#"{"type":"reaction_added","user":"UB","reaction":"tada","item":{"type":"message","channel":"CDM","ts":"1.000001"},"event_ts":"1.000002"}"#;
        let reaction = parse(&sm.frame(reaction).unwrap());
        assert!(reaction["payload"]["event"].get("channel_type").is_none());
    }
}
