//! One client WebSocket session: writes the hub's events in per-channel order, reads client
//! events, keeps the connection alive.
//!
//! The session keeps, per channel, the last `seq` it wrote. A repeat is dropped; one past a gap
//! (after a resume, or a hub skip) is held while the gap is backfilled from the hub's window or
//! the channel's owner. So a client sees each channel's messages once, in order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use shared::auth::Claims;
use shared::ids::UserId;
use shared::ids::{ChannelId, Seq};
use shared::protocol::client::{close_code, error_code, error_json, ClientEvent};
use shared::protocol::{EphemeralEvent, MeshError, MAX_PRESENCE_QUERY};
use shared::shutdown::Shutdown;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, Outbound, SessionId};
use crate::metrics as m;
use crate::rtm_post::{Poster, RtmMessage, WebApi};
use crate::socket_mode::SocketMode;

/// Minimum time between two typing events relayed for one channel of one session.
const TYPING_INTERVAL: Duration = Duration::from_secs(1);
/// Backfill retries wait this long, doubling up to [`BACKFILL_RETRY_MAX`]: with
/// [`BACKFILL_ATTEMPTS`] they cover about 15 s, a channel server's failover (noticed, the ring
/// changed, the new owner loaded) included, before the session is told to resync.
const BACKFILL_RETRY: Duration = Duration::from_millis(200);
const BACKFILL_RETRY_MAX: Duration = Duration::from_secs(2);
/// Longest a session's `hello` waits for the first subscription of its channels on this
/// gateway (see [`crate::hub::Hub::wait_first_positions`]).
const HELLO_WAIT: Duration = Duration::from_secs(2);
/// How long `hello` waits for channel owners to count unread messages that this gateway's
/// recent entries do not cover.
const UNREAD_WAIT: Duration = Duration::from_secs(1);
const BACKFILL_ATTEMPTS: u32 = 10;

/// How long backfill attempt `attempt` (0 is the first) waits before asking.
fn backfill_delay(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    BACKFILL_RETRY
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(BACKFILL_RETRY_MAX)
}

pub struct SessionParams {
    pub claims: Claims,
    pub channels: Vec<ChannelId>,
    pub resume: BTreeMap<ChannelId, Seq>,
    pub queue: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// When the gateway stops, the session says goodbye at its own point of this span
    /// ([`goodbye_offset`]).
    pub goodbye_spread: Duration,
    /// Boot data from Flannel for `hello`, when it answered.
    pub boot: Option<serde_json::Value>,
    /// Where this session's RTM messages are posted.
    pub web_api: Arc<WebApi>,
    /// `presence_sub=1` on the URL (Slack's `rtm.connect` option): no `presence_change` until
    /// the client subscribes with a `presence_sub` event.
    pub presence_sub: bool,
    /// `mode=socket` on the URL: Slack's Socket Mode framing ([`crate::socket_mode`]).
    pub socket_mode: bool,
    /// Socket Mode: the Events API `channel_type` of each channel the session starts with.
    pub channel_types: HashMap<ChannelId, &'static str>,
}

/// Where a session stands in one channel.
#[derive(Clone, Copy, Default)]
struct Position {
    /// The last `seq` written; `None`: take whatever comes next.
    last: Option<Seq>,
    /// Whether the session's `written` set holds the channel.
    written: bool,
}

/// A backfill's answer: the channel, the range asked for (after, up to) and which attempt.
type BackfillResult = (
    ChannelId,
    Seq,
    Option<Seq>,
    u32,
    Result<(Vec<(Seq, Utf8Bytes)>, Seq), MeshError>,
);

struct Session {
    id: SessionId,
    /// Whose session it is (the verified token's claims).
    claims: Claims,
    hub: Arc<Hub>,
    channels: HashSet<ChannelId>,
    /// Per channel: the last `seq` written (`None`: take whatever comes next) and whether
    /// `written` holds the channel (so the per-message path needs one lookup).
    delivered: HashMap<ChannelId, Position>,
    /// Whether anything of the channel was written on this session (a resume after that
    /// could not keep the order).
    written: HashSet<ChannelId>,
    held: HashMap<ChannelId, BTreeMap<Seq, Utf8Bytes>>,
    backfilling: HashSet<ChannelId>,
    /// Where backfill results come back; made on the first backfill (a channel's first block
    /// of slots is ~3 KiB, too much for every idle session to hold for nothing).
    backfill_tx: Option<mpsc::Sender<BackfillResult>>,
    /// The receiving end of a channel just made, for the session loop to take.
    new_backfill_rx: Option<mpsc::Receiver<BackfillResult>>,
    hold_limit: usize,
    overflow: CancellationToken,
    /// Set when the hub ends the session ([`Outbound::Close`]): why.
    closing: Option<&'static str>,
    typing: HashMap<ChannelId, Instant>,
    presence: PresenceFilter,
    web_api: Arc<WebApi>,
    /// Posts the session's RTM messages in order; started by its first message.
    poster: Option<Poster>,
    /// Where answers made away from the session loop come back (RTM message replies,
    /// presence query results); made on first use.
    answers_tx: Option<mpsc::Sender<Utf8Bytes>>,
    /// The receiving end of an answers channel just made, for the session loop to take.
    new_answers_rx: Option<mpsc::Receiver<Utf8Bytes>>,
    /// The presence query under way: one at a time per session.
    presence_query: Option<tokio::task::JoinHandle<()>>,
}

impl Session {
    fn request_backfill(
        &mut self,
        channel: ChannelId,
        after: Seq,
        up_to: Option<Seq>,
        attempt: u32,
    ) {
        if !self.backfilling.insert(channel.clone()) {
            return;
        }
        let hub = self.hub.clone();
        let tx = match &self.backfill_tx {
            Some(tx) => tx.clone(),
            None => {
                let (tx, rx) = mpsc::channel(64);
                self.backfill_tx = Some(tx.clone());
                self.new_backfill_rx = Some(rx);
                tx
            }
        };
        self.hub.spawn(async move {
            if attempt > 0 {
                tokio::time::sleep(backfill_delay(attempt)).await;
            }
            let result = hub.backfill(&channel, after, up_to).await;
            let _ = tx.send((channel, after, up_to, attempt, result)).await;
        });
    }

    /// Takes one channel message; pushes what is ready to `out`.
    fn on_message(
        &mut self,
        channel: &ChannelId,
        seq: Seq,
        text: Utf8Bytes,
        out: &mut Vec<Utf8Bytes>,
    ) {
        // The steady state (a subscribed channel, in order) is one lookup, without cloning
        // the channel's id: this runs once per message per session.
        let pos = match self.delivered.get_mut(channel) {
            Some(pos) => pos,
            None => {
                if !self.channels.contains(channel) {
                    return;
                }
                self.delivered.entry(channel.clone()).or_default()
            }
        };
        match pos.last {
            Some(x) if seq <= x => {}
            Some(x) if seq > x + 1 => {
                let held = self.held.entry(channel.clone()).or_default();
                held.insert(seq, text);
                if held.len() > self.hold_limit {
                    m::SESSION_OVERFLOWS.inc();
                    self.overflow.cancel();
                    return;
                }
                self.request_backfill(channel.clone(), x, Some(seq - 1), 0);
            }
            _ => {
                pos.last = Some(seq);
                out.push(text);
                if !pos.written {
                    pos.written = true;
                    self.written.insert(channel.clone());
                }
                if !self.held.is_empty() {
                    self.flush_held(channel, out);
                }
            }
        }
    }

    /// The steady state of a batch, with one lookup for all of it: the channel was written
    /// before, nothing is held, and the batch continues right after the last message
    /// delivered, without gaps. Anything else (returns `false`, having done nothing) goes
    /// message by message through [`Self::on_message`].
    fn take_in_order(
        &mut self,
        channel: &ChannelId,
        batch: &[(Seq, Utf8Bytes)],
        out: &mut Vec<Utf8Bytes>,
    ) -> bool {
        if !self.held.is_empty() {
            return false;
        }
        let Some(pos) = self.delivered.get_mut(channel) else {
            return false;
        };
        let (Some(last), true) = (pos.last, pos.written) else {
            return false;
        };
        let contiguous = batch
            .iter()
            .enumerate()
            .all(|(i, (seq, _))| Some(*seq) == last.checked_add(i as u64 + 1));
        if !contiguous {
            return false;
        }
        if let Some((seq, _)) = batch.last() {
            pos.last = Some(*seq);
        }
        out.extend(batch.iter().map(|(_, text)| text.clone()));
        true
    }

    fn flush_held(&mut self, channel: &ChannelId, out: &mut Vec<Utf8Bytes>) {
        let Some(held) = self.held.get_mut(channel) else {
            return;
        };
        let pos = self.delivered.entry(channel.clone()).or_default();
        while let Some((&seq, _)) = held.first_key_value() {
            let last = pos.last.unwrap_or(0);
            if seq <= last {
                held.pop_first();
            } else if seq == last + 1 {
                let (_, text) = held.pop_first().expect("held not empty");
                pos.last = Some(seq);
                out.push(text);
            } else {
                break;
            }
        }
        if held.is_empty() {
            self.held.remove(channel);
        }
    }

    fn on_backfill(&mut self, r: BackfillResult, out: &mut Vec<Utf8Bytes>) {
        let (channel, after, up_to, attempt, result) = r;
        self.backfilling.remove(&channel);
        if !self.channels.contains(&channel) {
            return;
        }
        match result {
            Ok((messages, last_seq)) => {
                let got = messages.len();
                self.take_page(&channel, after, messages, out);
                if up_to.is_none() && self.last_delivered(&channel).is_some_and(|d| d > last_seq) {
                    // A resume point past the owner's head (a client's bad or forged seq, up to
                    // `Seq::MAX`): nothing was missed, and the channel goes on from the head
                    // rather than dropping every message up to the claimed seq.
                    m::BAD_INPUT
                        .with_label_values(&["resume_beyond_head"])
                        .inc();
                    tracing::debug!(%channel, head = last_seq, "resume point beyond the head");
                    self.set_last(&channel, Some(last_seq));
                    return;
                }
                let d = self.last_delivered(&channel).unwrap_or(0);
                if let Some(up_to) = up_to.filter(|&u| got == 0 && d < u) {
                    // The owner holds nothing up to `up_to`: never acknowledged, so skip it.
                    m::GAPS_SKIPPED.inc();
                    self.set_last(&channel, Some(up_to));
                    self.flush_held(&channel, out);
                }
                let d = self.last_delivered(&channel).unwrap_or(0);
                let first_held = self
                    .held
                    .get(&channel)
                    .and_then(|h| h.keys().next().copied());
                if let Some(first) = first_held.filter(|&f| f > d.saturating_add(1)) {
                    // Still short of what is held: the page was cut short (a page is at most
                    // a thousand messages, and fewer when they are long), or a later gap.
                    self.request_backfill(channel, d, Some(first - 1), 0);
                } else if let Some(up_to) = up_to.filter(|&u| got > 0 && d < u) {
                    self.request_backfill(channel, d, Some(up_to), 0);
                } else if up_to.is_none() && got > 0 && last_seq > d {
                    // A resume: keep going while the owner has more.
                    self.request_backfill(channel, d, None, 0);
                }
            }
            Err(e) => {
                tracing::debug!(%channel, error = %e, attempt, "backfill failed");
                if attempt + 1 >= BACKFILL_ATTEMPTS {
                    // What the session missed cannot be had from here: the client is told
                    // to resync (it reads history instead), as an overflowing one is, but
                    // counted apart, since it did not fall behind.
                    tracing::warn!(%channel, error = %e, "backfill kept failing; telling the session to resync");
                    m::BACKFILL_GIVE_UPS.inc();
                    self.overflow.cancel();
                    return;
                }
                let d = self.last_delivered(&channel).unwrap_or(0);
                self.request_backfill(channel, d, up_to, attempt + 1);
            }
        }
    }

    /// Writes a backfill page of the messages after `after`. A page holds every message the
    /// owner has from `after` to the page's last one, so a `seq` missing from it is one the
    /// store does not hold (never acknowledged): it is skipped, not waited for.
    fn take_page(
        &mut self,
        channel: &ChannelId,
        after: Seq,
        messages: Vec<(Seq, Utf8Bytes)>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let mut prev = after;
        for (seq, text) in messages {
            if seq > prev.saturating_add(1) && self.last_delivered(channel) == Some(prev) {
                m::GAPS_SKIPPED.inc();
                self.set_last(channel, Some(seq - 1));
            }
            prev = prev.max(seq);
            self.on_message(channel, seq, text, out);
        }
    }

    /// Takes one event from the hub into the write batch (or the session's state).
    fn on_outbound(&mut self, o: Outbound, out: &mut Vec<Utf8Bytes>) {
        match o {
            Outbound::Messages { channel, batch } => {
                if !self.take_in_order(&channel, &batch, out) {
                    for (seq, text) in batch.iter() {
                        self.on_message(&channel, *seq, text.clone(), out);
                    }
                }
            }
            Outbound::Event(t) => {
                // `auth.revoke` of this session's token: told, then closed (after the event).
                if revokes(&t, &self.claims) {
                    self.closing = Some("token_revoked");
                    m::SESSIONS_CLOSED_REVOKED.inc();
                }
                if let Some(t) = self.presence.filter(t) {
                    out.push(t)
                }
            }
            Outbound::Joined {
                channel,
                start,
                head,
            } => {
                self.channels.insert(channel.clone());
                self.set_last(&channel, start);
                if let (Some(start), Some(head)) = (start, head) {
                    if head > start {
                        // Posted after the join, passed on before the hub heard of it.
                        self.request_backfill(channel, start, Some(head), 0);
                    }
                }
            }
            Outbound::Left { channel } => {
                self.channels.remove(&channel);
                self.delivered.remove(&channel);
                self.held.remove(&channel);
                // A fetch still in flight is for the old membership; its answer is dropped
                // (see `on_backfill`) and must not hold back a rejoin's own fetch.
                self.backfilling.remove(&channel);
            }
            Outbound::Close(reason) => self.closing = Some(reason),
        }
    }

    /// The sender of the session's answers channel, made on first use.
    fn answers(&mut self) -> mpsc::Sender<Utf8Bytes> {
        self.answers_tx
            .get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel(crate::rtm_post::PENDING);
                self.new_answers_rx = Some(rx);
                tx
            })
            .clone()
    }

    /// Queues a message the client sent for posting; returns a refusal to write at once, if any.
    fn send_message(&mut self, msg: RtmMessage) -> Option<Utf8Bytes> {
        if self.poster.is_none() {
            let replies = self.answers();
            self.poster = Some(Poster::start(
                &self.web_api,
                &self.claims,
                replies,
                self.hub.runtime(),
            ));
        }
        self.poster.as_ref().expect("just made").submit(msg).err()
    }

    /// Answers a `presence_query` from a task: `presence_change` events listing the active
    /// users and the away ones. One query at a time; another meanwhile is refused.
    fn query_presence(&mut self, id: Option<u64>, users: Vec<UserId>) -> Option<Utf8Bytes> {
        if self
            .presence_query
            .as_ref()
            .is_some_and(|q| !q.is_finished())
        {
            let msg = "a presence_query is under way";
            return Some(error_json(error_code::RATE_LIMITED, msg, id).into());
        }
        let (hub, answers) = (self.hub.clone(), self.answers());
        let workspace = self.claims.workspace.clone();
        self.presence_query = Some(self.hub.spawn(async move {
            let events = match hub.active_users(&workspace, users.clone()).await {
                Ok(active) => {
                    let active: HashSet<UserId> = active.into_iter().collect();
                    let (on, off): (Vec<UserId>, Vec<UserId>) =
                        users.into_iter().partition(|u| active.contains(u));
                    [(on, "active"), (off, "away")]
                        .into_iter()
                        .filter(|(users, _)| !users.is_empty())
                        .map(|(users, p)| {
                            serde_json::json!({ "type": "presence_change", "users": users, "presence": p })
                                .to_string()
                        })
                        .collect()
                }
                Err(e) => {
                    tracing::debug!(error = %e, "presence query failed");
                    let msg = "presence is unavailable; try again";
                    vec![error_json(error_code::UNAVAILABLE, msg, id)]
                }
            };
            for e in events {
                if answers.send(e.into()).await.is_err() {
                    break;
                }
            }
        }));
        None
    }

    fn last_delivered(&self, channel: &ChannelId) -> Option<Seq> {
        self.delivered.get(channel).and_then(|p| p.last)
    }

    /// Sets where a channel continues, keeping whether it was written.
    fn set_last(&mut self, channel: &ChannelId, last: Option<Seq>) {
        let written = self.written.contains(channel);
        self.delivered
            .insert(channel.clone(), Position { last, written });
    }

    fn positions(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .delivered
            .iter()
            .filter_map(|(c, p)| p.last.map(|d| (c.0.clone(), serde_json::Value::from(d))))
            .collect();
        serde_json::Value::Object(map)
    }
}

fn text(v: serde_json::Value) -> WsMessage {
    WsMessage::Text(v.to_string().into())
}

/// Runs one write to the client (a send, a feed or a flush), bounded by `limit`: a client
/// that stops reading but keeps its connection open would otherwise hold the session, its
/// `max_sessions` permit and its buffers forever. Returns whether the write went through; a
/// write that timed out is counted, and the session should end without writing again.
async fn bounded<E>(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            m::SESSION_WRITE_TIMEOUTS.inc();
            tracing::info!(timeout = ?limit, "client stopped reading; closing the session");
            false
        }
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str, limit: Duration) {
    let frame = WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    if !bounded(limit, socket.send(frame)).await {
        return;
    }
    // The closing handshake (RFC 6455 §7.1.1): read until the client's Close or the end of the
    // stream before the socket is dropped. Dropping it with frames of the client's unread (an
    // acknowledgement, a ping sent as the Close left) makes the kernel reset the connection,
    // and a reset throws away what is still queued to send: the Close frame itself, so the
    // client never learns the code saying why. Bounded, for a client that never answers.
    let drain = async {
        while let Some(Ok(frame)) = socket.recv().await {
            if matches!(frame, WsMessage::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(limit.min(CLOSE_LINGER), drain).await;
}

/// How long a closing session waits for the client's answering Close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Serves one session until it ends. A plain function returning an `async move` block rather
/// than an `async fn`: an `async fn` copies its arguments into locals, and both copies take
/// room in the future that every session holds for its whole life. For the same reason the
/// parameters come boxed (the block keeps a pointer, not ~250 bytes it has moved out of), and
/// what is only needed to start (the channel list, resume points, boot data, the registration's
/// starting points) is moved out and consumed before the first wait. `keep` (the session's
/// permit, its place on a session thread) is held until the session ends: passed in, not
/// held by a wrapping `async` block, which would hold this future twice (the block's copy
/// and the one it awaits).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn run<K: Send + 'static>(
    hub: Arc<Hub>,
    mut socket: WebSocket,
    params: Box<SessionParams>,
    shutdown: Shutdown,
    keep: K,
) -> impl std::future::Future<Output = ()> {
    async move {
        let _keep = keep;
        let SessionParams {
            claims,
            channels,
            resume,
            queue,
            ping_interval,
            idle_timeout,
            goodbye_spread,
            boot,
            web_api,
            presence_sub,
            socket_mode,
            channel_types,
        } = *params;
        let (tx, mut rx) = crate::queue::weighted(queue, Outbound::weight);
        let overflow = CancellationToken::new();
        let (id, starts, first_of_user) = hub.register(
            claims.user.clone(),
            claims.workspace.clone(),
            &channels,
            &resume,
            tx,
            overflow.clone(),
        );
        m::SESSIONS.inc();
        m::SESSIONS_OPENED.inc();
        tracing::debug!(session = id, "session registered");
        let mut backfill_rx: Option<mpsc::Receiver<BackfillResult>> = None;
        let mut answers_rx: Option<mpsc::Receiver<Utf8Bytes>> = None;
        let mut s = Session {
            id,
            claims,
            hub: hub.clone(),
            channels: channels.into_iter().collect(),
            delivered: starts
                .into_iter()
                .map(|(c, last)| {
                    let pos = Position {
                        last,
                        written: false,
                    };
                    (c, pos)
                })
                .collect(),
            written: HashSet::new(),
            held: HashMap::new(),
            backfilling: HashSet::new(),
            closing: None,
            backfill_tx: None,
            new_backfill_rx: None,
            hold_limit: queue,
            overflow: overflow.clone(),
            typing: HashMap::new(),
            // Socket Mode sends no presence (the Events API has none), and its clients cannot
            // subscribe to any.
            presence: PresenceFilter::new(presence_sub || socket_mode),
            web_api,
            poster: None,
            answers_tx: None,
            new_answers_rx: None,
            presence_query: None,
        };
        // Boxed: an RTM session (nearly all of them) keeps one pointer for it. Made before the
        // first wait, which the channel types are then not held across.
        let mut socket_mode = socket_mode.then(|| {
            Box::new(SocketMode::new(
                &s.claims,
                &hub.node.0,
                id,
                hub.socket_apps.clone(),
                channel_types,
            ))
        });
        // Wakes this connection when its app's envelopes to send again change (a connection
        // closed or let one time out, or one joined).
        let mut resend = socket_mode.as_ref().map(|sm| sm.app().subscribe());
        for (c, after) in resume {
            if s.channels.contains(&c) {
                s.request_backfill(c, after, None, 0);
            }
        }
        // A channel this gateway had not begun (this session is its first here) is being
        // subscribed. `hello` waits for it, boundedly, and the session starts where the
        // channel began: what is posted after `hello` then reaches the client, as Slack's
        // RTM promises (a post right after `hello` was otherwise older than the subscription,
        // and never live).
        let unknown: Vec<ChannelId> = s
            .delivered
            .iter()
            .filter(|(_, p)| p.last.is_none())
            .map(|(c, _)| c.clone())
            .collect();
        if !unknown.is_empty() {
            match hub.wait_first_positions(&unknown, HELLO_WAIT).await {
                Some(began) => {
                    for (c, seq) in began {
                        if let Some(p) = s.delivered.get_mut(&c) {
                            p.last.get_or_insert(seq);
                        }
                    }
                }
                None => m::HELLO_BEFORE_LIVE.inc(),
            }
        }
        let hello = if let Some(sm) = &socket_mode {
            sm.hello(&hub.node.0, sm.app().connections()).into()
        } else {
            let mut hello = serde_json::json!({
                "type": "hello",
                "gateway": hub.node.0,
                "session": id,
                "user": s.claims.user.0,
                "team": s.claims.workspace.0,
                "seq": s.positions(),
            });
            if let Some(boot) = boot {
                let ranges = crate::boot::unread_ranges(&boot, &hello["seq"]);
                let counts = if ranges.is_empty() {
                    HashMap::new()
                } else {
                    // On the hub's runtime: its fetches use the process's sockets, which a
                    // session thread has no reactor for.
                    let deadline = Instant::now() + UNREAD_WAIT;
                    let (counter, reader) = (hub.clone(), s.claims.user.clone());
                    let groups = crate::boot::reader_groups(&boot);
                    hub.spawn(async move {
                        counter
                            .unread_counts(&reader, &groups, ranges, deadline)
                            .await
                    })
                    .await
                    .unwrap_or_default()
                };
                hello["boot"] = crate::boot::with_unread(boot, &hello["seq"], &counts);
            }
            text(hello)
        };
        // Each write to the client may take this long to make progress.
        let write_timeout = idle_timeout;
        if !bounded(write_timeout, socket.send(hello)).await {
            finish(&hub, id, &s.claims);
            return;
        }
        if first_of_user {
            let _ = hub.report_presence(&s.claims.workspace, &s.claims.user);
        }

        let mut last_activity = Instant::now();
        let mut ping = tokio::time::interval(ping_interval);
        ping.tick().await;
        // Batches of queued events and of frames to write. They start empty and give back what a
        // burst made them grow, so an idle session holds no batch memory (256 slots of each were
        // ~26 KiB per session, most of an idle session's footprint).
        let mut inbox = Vec::new();
        let mut out: Vec<Utf8Bytes> = Vec::new();
        // Made once: a fresh `cancelled()` future per loop turn would register with each token
        // again (the shutdown token is shared by every session, behind one lock) on every wake.
        let goodbye_after = goodbye_offset(id, goodbye_spread);
        let stopping = async {
            shutdown.wait().await;
            if !goodbye_after.is_zero() {
                // Boxed: made only when stopping, so an idle session does not carry a timer.
                Box::pin(tokio::time::sleep(goodbye_after)).await;
            }
        };
        tokio::pin!(stopping);
        let overflowed = overflow.cancelled();
        tokio::pin!(overflowed);
        loop {
            if let Some(rx) = s.new_backfill_rx.take() {
                backfill_rx = Some(rx);
            }
            if let Some(rx) = s.new_answers_rx.take() {
                answers_rx = Some(rx);
            }
            // A Socket Mode session's next acknowledgement deadline or retry (none for RTM).
            let resend_at = socket_mode.as_ref().and_then(|sm| sm.next_deadline());
            tokio::select! {
                biased;
                _ = &mut stopping => {
                    let goodbye = match socket_mode {
                        Some(_) => WsMessage::Text(SocketMode::disconnect("warning", &hub.node.0).into()),
                        None => text(serde_json::json!({ "type": "goodbye", "source": "gateway_shutdown" })),
                    };
                    if bounded(write_timeout, socket.send(goodbye)).await {
                        close(&mut socket, close_code::GOING_AWAY, "gateway shutting down", write_timeout).await;
                    }
                    break;
                }
                _ = &mut overflowed => {
                    // The client fell behind, perhaps because it stopped reading: the resync
                    // notice is bounded like any write.
                    tracing::warn!("session fell behind; telling it to resync");
                    let resync = match socket_mode {
                        Some(_) => WsMessage::Text(SocketMode::disconnect("refresh_requested", &hub.node.0).into()),
                        None => text(serde_json::json!({ "type": "resync_required", "seq": s.positions() })),
                    };
                    if bounded(write_timeout, socket.send(resync)).await {
                        close(&mut socket, close_code::RESYNC_REQUIRED, "resync required", write_timeout).await;
                    }
                    break;
                }
                // The client's frames and the ping timer come before the hub's queue: in a
                // channel busier than the client's writes, the queue is never empty when
                // the loop turns, and a biased select that looked at it first would never
                // read the client (its pings unanswered, its posts unread) nor ping it.
                frame = socket.recv() => {
                    last_activity = Instant::now();
                    match frame {
                        Some(Ok(WsMessage::Text(t))) => {
                            let reply = match socket_mode.as_mut() {
                                Some(sm) => sm.client_frame(&t),
                                None => handle_client_event(&mut s, &t),
                            };
                            if let Some(reply) = reply {
                                out.push(reply);
                            }
                        }
                        Some(Ok(WsMessage::Binary(_))) => {
                            m::BAD_INPUT.with_label_values(&["binary"]).inc();
                            out.push(error_json(error_code::INVALID_UTF8, "binary frames are not supported; send JSON text", None).into());
                        }
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                        Some(Ok(WsMessage::Close(_))) => {
                            // The answering Close, queued by the read: sent before the drop.
                            bounded(write_timeout, socket.flush()).await;
                            break;
                        }
                        None => break,
                        Some(Err(e)) => {
                            let msg = e.to_string();
                            let lower = msg.to_ascii_lowercase();
                            if lower.contains("without closing handshake")
                                || lower.contains("connection reset")
                                || lower.contains("connection closed")
                                || lower.contains("broken pipe")
                            {
                                // The client went away: a disconnect, not bad input.
                                break;
                            }
                            let (kind, code) = if msg.contains("too long") || msg.contains("Space limit") || msg.contains("size") {
                                ("too_big", close_code::MESSAGE_TOO_BIG)
                            } else if msg.to_ascii_lowercase().contains("utf") {
                                ("invalid_utf8", 1007)
                            } else {
                                ("protocol", 1002)
                            };
                            m::BAD_INPUT.with_label_values(&[kind]).inc();
                            tracing::info!(error = %msg, kind, "closing session on a bad frame");
                            close(&mut socket, code, kind, write_timeout).await;
                            break;
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_activity.elapsed() > idle_timeout {
                        close(&mut socket, close_code::PING_TIMEOUT, "no pong", write_timeout).await;
                        break;
                    }
                    if !bounded(write_timeout, socket.send(WsMessage::Ping(Default::default()))).await { break; }
                }
                Some(r) = async {
                    match backfill_rx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    s.on_backfill(r, &mut out);
                }
                _ = async {
                    match (resend.as_mut(), resend_at) {
                        (Some(rx), Some(at)) => {
                            tokio::select! {
                                _ = rx.changed() => {}
                                _ = tokio::time::sleep_until(at.into()) => {}
                            }
                        }
                        // The app's `watch` outlives its connections: `changed` cannot fail.
                        (Some(rx), None) => { let _ = rx.changed().await; }
                        _ => std::future::pending().await,
                    }
                } => {
                    // Sent at once: the oldest events, and rare.
                    let again = socket_mode.as_mut().map(|sm| sm.due(Instant::now())).unwrap_or_default();
                    let batch = async {
                        for t in again {
                            socket.feed(WsMessage::Text(t)).await?;
                        }
                        socket.flush().await
                    };
                    if !bounded(write_timeout, batch).await { break; }
                }
                Some(answer) = async {
                    match answers_rx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    out.push(answer);
                }
                n = rx.recv_many(&mut inbox, 256) => {
                    if n == 0 { break; }
                    for o in inbox.drain(..) {
                        s.on_outbound(o, &mut out);
                    }
                    shrink_after_burst(&mut inbox, n);
                    if !out.is_empty() {
                        // Let the hub and the other sessions run once before writing: under
                        // load more messages queue meanwhile and go out in the same write
                        // (about 12% less gateway CPU per delivery at 1x1,000); when idle the
                        // turn comes back at once.
                        tokio::task::yield_now().await;
                        let mut more = 0;
                        while more < 256 {
                            let Some(o) = rx.try_recv() else { break };
                            s.on_outbound(o, &mut out);
                            more += 1;
                        }
                    }
                }
            }
            if !out.is_empty() {
                let written = out.len();
                // One bound for the whole batch (one timer, not one per message).
                let batch = async {
                    for t in out.drain(..) {
                        let t = match socket_mode.as_mut() {
                            None => t,
                            Some(sm) => match sm.frame(&t) {
                                Some(envelope) => envelope,
                                None => continue,
                            },
                        };
                        socket.feed(WsMessage::Text(t)).await?;
                    }
                    socket.flush().await
                };
                if !bounded(write_timeout, batch).await {
                    break;
                }
                shrink_after_burst(&mut out, written);
            }
            if let Some(reason) = s.closing {
                // Told after everything queued before it (the `user_change` saying why).
                let goodbye = match socket_mode {
                    Some(_) => {
                        WsMessage::Text(SocketMode::disconnect("link_disabled", &hub.node.0).into())
                    }
                    None => text(serde_json::json!({ "type": "goodbye", "source": reason })),
                };
                if bounded(write_timeout, socket.send(goodbye)).await {
                    let code = match reason {
                        "token_revoked" => close_code::TOKEN_REVOKED,
                        _ => close_code::ACCOUNT_INACTIVE,
                    };
                    close(&mut socket, code, reason, write_timeout).await;
                }
                break;
            }
        }
        finish(&hub, id, &s.claims);
    }
}

/// Whether `event` is Slack's `tokens_revoked` naming the token of `claims` (the Web API adds
/// the revoked tokens' ids, `token_ids`).
fn revokes(event: &str, claims: &Claims) -> bool {
    if !event.contains("\"tokens_revoked\"") {
        return false;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(event) else {
        return false;
    };
    let id = claims.token_id();
    v["type"] == "tokens_revoked"
        && v["token_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|t| t.as_str() == Some(id.as_str())))
}

/// Where in `spread` session `id` says goodbye when the gateway stops: the fractional part of
/// `id` times the golden ratio, which spreads consecutive sessions evenly over the span (and
/// every process alike, with no random state).
fn goodbye_offset(id: SessionId, spread: Duration) -> Duration {
    const PHI_FRACTION: f64 = 0.618_033_988_749_894_9;
    if spread.is_zero() {
        return Duration::ZERO;
    }
    spread.mul_f64((id as f64 * PHI_FRACTION).fract())
}

/// Releases a batch buffer's memory once traffic is light again (`used` items in the last
/// batch): a session that saw a burst does not keep its peak capacity while idle.
fn shrink_after_burst<T>(buf: &mut Vec<T>, used: usize) {
    const KEEP: usize = 8;
    if buf.is_empty() && used <= KEEP && buf.capacity() > 4 * KEEP {
        buf.shrink_to(KEEP);
    }
}

fn finish(hub: &Arc<Hub>, id: SessionId, claims: &Claims) {
    if hub.unregister(id) {
        let _ = hub.report_presence(&claims.workspace, &claims.user);
    }
    m::SESSIONS.dec();
}

/// Which `presence_change` events a session writes: every one (the hub already dropped
/// repeats), until the client sends `presence_sub` (or connected with `presence_sub=1`); from
/// then on, only for the users it subscribed to.
struct PresenceFilter {
    /// `None`: every user of the workspace (Switchboard's default; Slack's since 2018 is the
    /// subscription). Boxed: 8 bytes in every session instead of 48, and most never subscribe.
    #[allow(clippy::box_collection)]
    subscribed: Option<Box<HashSet<String>>>,
}

impl PresenceFilter {
    fn new(subscribe_first: bool) -> PresenceFilter {
        PresenceFilter {
            subscribed: subscribe_first.then(Default::default),
        }
    }

    fn subscribe(&mut self, ids: Vec<UserId>) {
        self.subscribed = Some(Box::new(ids.into_iter().map(|u| u.0).collect()));
    }

    /// What to write of `t`: other events as they are; a presence change without the users
    /// the session does not follow (`None` if none is left).
    fn filter(&self, t: Utf8Bytes) -> Option<Utf8Bytes> {
        let Some(subscribed) = &self.subscribed else {
            return Some(t);
        };
        // The hub renders keys in order, so a presence event starts with `{"presence"`.
        if !t.as_str().starts_with("{\"presence\"") && !t.as_str().contains("\"presence_change\"") {
            return Some(t);
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
            return Some(t);
        };
        let (Some("presence_change"), Some(p)) = (v["type"].as_str(), v["presence"].as_str())
        else {
            return Some(t);
        };
        let users: Vec<&str> = match (v["user"].as_str(), v["users"].as_array()) {
            (Some(one), _) => vec![one],
            (None, Some(many)) => many.iter().filter_map(|u| u.as_str()).collect(),
            (None, None) => return Some(t),
        };
        let total = users.len();
        let kept: Vec<&str> = users
            .into_iter()
            .filter(|u| subscribed.contains(*u))
            .collect();
        match kept.as_slice() {
            [] => None,
            // A single-user event is kept whole or dropped; a batch may lose some users.
            _ if kept.len() == total => Some(t),
            many => Some(
                serde_json::json!({ "type": "presence_change", "users": many, "presence": p })
                    .to_string()
                    .into(),
            ),
        }
    }
}

/// The user ids of a `presence_sub` or `presence_query` (`kind`): at most
/// [`MAX_PRESENCE_QUERY`] well-formed ids, else the error to answer (counted as bad input).
fn user_ids(kind: &str, ids: Vec<String>, id: Option<u64>) -> Result<Vec<UserId>, Utf8Bytes> {
    if ids.len() > MAX_PRESENCE_QUERY {
        m::BAD_INPUT.with_label_values(&["too_many_ids"]).inc();
        let msg = format!("{kind} names at most {MAX_PRESENCE_QUERY} users");
        return Err(error_json(error_code::MALFORMED_JSON, &msg, id).into());
    }
    ids.into_iter()
        .map(|u| {
            UserId::parse(&u).ok_or_else(|| {
                m::BAD_INPUT.with_label_values(&["invalid_event"]).inc();
                let msg = format!("not a user id: {u:?}");
                error_json(error_code::MALFORMED_JSON, &msg, id).into()
            })
        })
        .collect()
}

fn handle_client_event(s: &mut Session, raw: &str) -> Option<Utf8Bytes> {
    let event: ClientEvent = match serde_json::from_str(raw) {
        Ok(e) => e,
        Err(_) => {
            let value = serde_json::from_str::<serde_json::Value>(raw).ok();
            let reply_to = value.as_ref().and_then(|v| v["id"].as_u64());
            return Some(match value {
                Some(v) if v.get("type").and_then(|t| t.as_str()).is_some() => {
                    let kind = v["type"].as_str().unwrap_or_default();
                    let known = matches!(
                        kind,
                        "ping"
                            | "typing"
                            | "resume"
                            | "message"
                            | "presence_sub"
                            | "presence_query"
                    );
                    if known {
                        m::BAD_INPUT.with_label_values(&["invalid_event"]).inc();
                        error_json(
                            error_code::MALFORMED_JSON,
                            &format!("invalid {kind} event"),
                            reply_to,
                        )
                        .into()
                    } else {
                        m::BAD_INPUT.with_label_values(&["unknown_event"]).inc();
                        error_json(error_code::UNKNOWN_EVENT, "unknown event type", reply_to).into()
                    }
                }
                Some(_) => {
                    m::BAD_INPUT.with_label_values(&["missing_type"]).inc();
                    error_json(error_code::UNKNOWN_EVENT, "event has no type", reply_to).into()
                }
                None => {
                    m::BAD_INPUT.with_label_values(&["malformed_json"]).inc();
                    error_json(error_code::MALFORMED_JSON, "malformed JSON", None).into()
                }
            });
        }
    };
    match event {
        ClientEvent::Ping { id } => {
            m::CLIENT_EVENTS.with_label_values(&["ping"]).inc();
            let mut v =
                serde_json::json!({ "type": "pong", "time": shared::ids::Ts::now().0 / 1000 });
            if let Some(id) = id {
                v["reply_to"] = id.into();
            }
            Some(v.to_string().into())
        }
        ClientEvent::Typing { id, channel } => {
            m::CLIENT_EVENTS.with_label_values(&["typing"]).inc();
            if !s.channels.contains(&channel) || !s.hub.in_channel(s.id, &channel) {
                m::BAD_INPUT.with_label_values(&["not_in_channel"]).inc();
                return Some(error_json(error_code::NOT_IN_CHANNEL, "not in channel", id).into());
            }
            let now = Instant::now();
            let recent = s
                .typing
                .get(&channel)
                .is_some_and(|t| now.duration_since(*t) < TYPING_INTERVAL);
            if !recent {
                s.typing.insert(channel.clone(), now);
                let user = s.claims.user.clone();
                s.hub.publish(&channel, EphemeralEvent::Typing { user });
            }
            None
        }
        ClientEvent::PresenceSub { id, ids } => {
            m::CLIENT_EVENTS.with_label_values(&["presence_sub"]).inc();
            match user_ids("presence_sub", ids, id) {
                Ok(ids) => {
                    // As Slack's: no answer.
                    s.presence.subscribe(ids);
                    None
                }
                Err(refusal) => Some(refusal),
            }
        }
        ClientEvent::PresenceQuery { id, ids } => {
            m::CLIENT_EVENTS
                .with_label_values(&["presence_query"])
                .inc();
            match user_ids("presence_query", ids, id) {
                Ok(ids) => s.query_presence(id, ids),
                Err(refusal) => Some(refusal),
            }
        }
        ClientEvent::Message {
            id,
            channel,
            text,
            thread_ts,
            client_msg_id,
        } => {
            m::CLIENT_EVENTS.with_label_values(&["message"]).inc();
            s.send_message(RtmMessage {
                id,
                channel,
                text,
                thread_ts,
                client_msg_id,
            })
        }
        ClientEvent::Resume { id, channels } => {
            m::CLIENT_EVENTS.with_label_values(&["resume"]).inc();
            let mut resumed = Vec::new();
            let mut rejected = Vec::new();
            for (c, after) in channels {
                if !s.channels.contains(&c) {
                    rejected.push(serde_json::json!({ "channel": c.0, "error": "not_in_channel" }));
                    continue;
                }
                let d = s.last_delivered(&c);
                if s.written.contains(&c) && d.is_some_and(|d| after < d) {
                    // Messages after `after` were partly written already: sending the rest now
                    // would break the order. The client reconnects with ?resume= instead.
                    rejected.push(serde_json::json!({ "channel": c.0, "error": "already_streaming", "seq": d }));
                    continue;
                }
                if d.is_none_or(|d| after >= d) || !s.written.contains(&c) {
                    s.set_last(&c, Some(after));
                    s.request_backfill(c.clone(), after, None, 0);
                }
                resumed.push(c.0);
            }
            let mut v = serde_json::json!({ "ok": true, "type": "resumed", "channels": resumed, "rejected": rejected });
            if let Some(id) = id {
                v["reply_to"] = id.into();
            }
            Some(v.to_string().into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::test_support::hub;

    /// The claims of user `UB` of workspace `TW`.
    fn claims() -> Claims {
        Claims {
            workspace: shared::ids::WorkspaceId::from("TW"),
            user: shared::ids::UserId::from("UB"),
            admin: false,
            bot: false,
            issued_at: 0,
            service: false,
        }
    }

    /// A session of `hub` in channel `CX`, starting after `start`, with a queue of `queue`.
    fn session(hub: &Arc<Hub>, start: Option<Seq>, queue: usize) -> Session {
        let channel = ChannelId::from("CX");
        Session {
            id: 1,
            claims: claims(),
            hub: hub.clone(),
            channels: [channel.clone()].into_iter().collect(),
            delivered: [(
                channel,
                Position {
                    last: start,
                    written: false,
                },
            )]
            .into_iter()
            .collect(),
            written: HashSet::new(),
            held: HashMap::new(),
            backfilling: HashSet::new(),
            closing: None,
            backfill_tx: None,
            new_backfill_rx: None,
            hold_limit: queue,
            overflow: CancellationToken::new(),
            typing: HashMap::new(),
            presence: PresenceFilter::new(false),
            web_api: WebApi::nowhere(),
            poster: None,
            answers_tx: None,
            new_answers_rx: None,
            presence_query: None,
        }
    }

    fn page(seqs: impl IntoIterator<Item = Seq>) -> Vec<(Seq, Utf8Bytes)> {
        seqs.into_iter()
            .map(|s| (s, Utf8Bytes::from(format!("m{s}"))))
            .collect()
    }

    fn texts(out: &[Utf8Bytes]) -> Vec<&str> {
        out.iter().map(|t| t.as_str()).collect()
    }

    #[tokio::test]
    async fn a_resume_point_past_the_head_goes_on_from_the_head() {
        let (hub, _dir) = hub();
        let channel = ChannelId::from("CX");
        let mut s = session(&hub, Some(u64::MAX), 64);
        let mut out = Vec::new();
        s.on_backfill(
            (channel.clone(), u64::MAX, None, 0, Ok((Vec::new(), 5))),
            &mut out,
        );
        assert_eq!(s.last_delivered(&channel), Some(5));
        s.on_message(&channel, 6, "m6".into(), &mut out);
        s.on_message(&channel, 7, "m7".into(), &mut out);
        assert_eq!(texts(&out), vec!["m6", "m7"]);
    }

    /// A batch as the hub queues it.
    fn batch(seqs: impl IntoIterator<Item = Seq>) -> Outbound {
        Outbound::Messages {
            channel: Arc::new(ChannelId::from("CX")),
            batch: page(seqs).into(),
        }
    }

    #[tokio::test]
    async fn batches_are_written_in_order_whatever_they_start_or_skip() {
        let (hub, _dir) = hub();
        let channel = ChannelId::from("CX");
        let mut s = session(&hub, Some(2), 64);
        let mut out = Vec::new();
        // The first write of the channel, then the steady state.
        s.on_outbound(batch(3..=4), &mut out);
        s.on_outbound(batch(5..=7), &mut out);
        // Repeats (a re-subscription's backlog overlapping) are dropped, the rest written.
        s.on_outbound(batch(6..=9), &mut out);
        assert_eq!(texts(&out), vec!["m3", "m4", "m5", "m6", "m7", "m8", "m9"]);
        // A batch past a gap is held until the gap is filled, then written after it.
        out.clear();
        s.on_outbound(batch([12, 13]), &mut out);
        assert!(out.is_empty(), "{:?}", texts(&out));
        s.on_outbound(batch(10..=11), &mut out);
        assert_eq!(texts(&out), vec!["m10", "m11", "m12", "m13"]);
        s.on_outbound(batch([14]), &mut out);
        assert_eq!(s.last_delivered(&channel), Some(14));
        // Another channel's batch, one the session is not in, writes nothing.
        out.clear();
        s.on_outbound(
            Outbound::Messages {
                channel: Arc::new(ChannelId::from("CY")),
                batch: page([1]).into(),
            },
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_session_closes_on_the_revocation_of_its_own_token_only() {
        let claims = |issued_at| Claims {
            workspace: shared::ids::WorkspaceId::from("T1"),
            user: shared::ids::UserId::from("U1"),
            admin: false,
            bot: false,
            issued_at,
            service: false,
        };
        let event = |id: String| {
            serde_json::json!({
                "type": "tokens_revoked",
                "tokens": { "oauth": ["U1"] },
                "token_ids": [id],
                "event_ts": "1.000001",
            })
            .to_string()
        };
        assert!(revokes(&event(claims(5).token_id()), &claims(5)));
        assert!(!revokes(&event(claims(6).token_id()), &claims(5)));
        assert!(!revokes(
            r#"{"type":"presence_change","user":"U1"}"#,
            &claims(5)
        ));
        // A message that only says the words is not the event.
        let quoted = serde_json::json!({
            "type": "message",
            "text": "\"tokens_revoked\"",
            "token_ids": [claims(5).token_id()],
        });
        assert!(!revokes(&quoted.to_string(), &claims(5)));
    }

    #[test]
    fn batch_buffers_give_back_a_bursts_memory_but_keep_it_under_load() {
        let mut buf: Vec<u64> = Vec::new();
        buf.extend(0..256);
        buf.clear();
        // Still busy: the last batch was large, keep the capacity.
        shrink_after_burst(&mut buf, 256);
        assert!(buf.capacity() >= 256);
        // Quiet again: back to a few slots.
        shrink_after_burst(&mut buf, 1);
        assert!(buf.capacity() <= 16, "capacity {}", buf.capacity());
        // Never drops what is still queued.
        buf.extend(0..100);
        shrink_after_burst(&mut buf, 1);
        assert_eq!(buf.len(), 100);
    }

    /// Another user's session keeps `hub` subscribed to CX (while the returned queue lives),
    /// and the hub has passed on 1..=3.
    fn hub_past_three(hub: &Arc<Hub>) -> crate::queue::Receiver<Outbound> {
        use crate::hub::test_support::{ack, deliver_live, msg};
        let (tx, rx) = crate::queue::weighted(64, Outbound::weight);
        hub.register(
            UserId::from("UA"),
            shared::ids::WorkspaceId::from("TW"),
            &[ChannelId::from("CX")],
            &BTreeMap::new(),
            tx,
            CancellationToken::new(),
        );
        ack(hub, "cs-1", 0, vec![]);
        for seq in 1..=3 {
            deliver_live(hub, "cs-1", msg(seq));
        }
        rx
    }

    /// Joins `s` to CX after seq 1 with the hub at 3, checks that it asks for 2 and 3 at once,
    /// and takes the answer.
    async fn join_at_one_and_fetch(s: &mut Session, out: &mut Vec<Utf8Bytes>) {
        let channel = ChannelId::from("CX");
        let before = out.len();
        s.on_outbound(
            Outbound::Joined {
                channel: channel.clone(),
                start: Some(1),
                head: Some(3),
            },
            out,
        );
        assert_eq!(out.len(), before, "nothing is written before the fetch");
        assert!(s.backfilling.contains(&channel), "2 and 3 are asked for");
        let mut rx = s.new_backfill_rx.take().expect("a backfill channel");
        let answer = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the backfill answers")
            .expect("an answer");
        s.on_backfill(answer, out);
    }

    /// Messages posted after a join that reached the hub before the join did: the session
    /// starts at the join's seq and fetches them at once (from the hub's recent window here),
    /// without waiting for a later message to show the gap.
    #[tokio::test]
    async fn a_join_behind_the_hub_fetches_what_came_after_it_at_once() {
        let (hub, _dir) = hub();
        let channel = ChannelId::from("CX");
        let _other = hub_past_three(&hub);
        let mut s = session(&hub, None, 64);
        s.channels.clear();
        s.delivered.clear();
        let mut out = Vec::new();
        join_at_one_and_fetch(&mut s, &mut out).await;
        assert_eq!(s.last_delivered(&channel), Some(3));
        let got: Vec<bool> = out
            .iter()
            .zip(["m2", "m3"])
            .map(|(t, want)| t.contains(&format!(r#""text":"{want}""#)))
            .collect();
        assert_eq!(got, vec![true, true], "{:?}", texts(&out));
        // A join level with the hub asks for nothing.
        let mut s = session(&hub, None, 64);
        s.channels.clear();
        s.delivered.clear();
        s.on_outbound(
            Outbound::Joined {
                channel: channel.clone(),
                start: Some(3),
                head: Some(3),
            },
            &mut out,
        );
        assert!(s.backfilling.is_empty());
    }

    /// Leaving while a fetch is in flight, then joining again behind the hub: the rejoin's
    /// fetch is made, not taken for the old one.
    #[tokio::test]
    async fn a_rejoin_fetches_even_with_the_old_memberships_fetch_in_flight() {
        let (hub, _dir) = hub();
        let channel = ChannelId::from("CX");
        let _other = hub_past_three(&hub);
        let mut s = session(&hub, Some(0), 64);
        // The old membership's fetch, still out.
        s.backfilling.insert(channel.clone());
        let mut out = Vec::new();
        s.on_outbound(
            Outbound::Left {
                channel: channel.clone(),
            },
            &mut out,
        );
        join_at_one_and_fetch(&mut s, &mut out).await;
        assert_eq!(s.last_delivered(&channel), Some(3));
        assert_eq!(out.len(), 2, "{:?}", texts(&out));
    }

    #[tokio::test]
    async fn a_gap_longer_than_a_page_is_filled_page_after_page_not_skipped() {
        let (hub, _dir) = hub();
        let channel = ChannelId::from("CX");
        let mut s = session(&hub, Some(0), 64);
        let mut out = Vec::new();
        // 1500 arrives live past a gap of 1,499: it is held and 1..=1499 asked for.
        s.on_message(&channel, 1500, "m1500".into(), &mut out);
        assert!(out.is_empty());
        // The answer is one page of 1,000: the rest is asked for, nothing is skipped.
        s.on_backfill(
            (
                channel.clone(),
                0,
                Some(1499),
                0,
                Ok((page(1..=1000), 1500)),
            ),
            &mut out,
        );
        assert_eq!(s.last_delivered(&channel), Some(1000));
        assert!(
            s.backfilling.contains(&channel),
            "the next page is asked for"
        );
        s.on_backfill(
            (
                channel.clone(),
                1000,
                Some(1499),
                0,
                Ok((page(1001..=1499), 1500)),
            ),
            &mut out,
        );
        let expected: Vec<String> = (1..=1500).map(|s| format!("m{s}")).collect();
        assert_eq!(texts(&out), expected);
        assert!(s.held.is_empty());
    }

    #[test]
    fn backfill_retries_back_off_over_a_failover() {
        assert_eq!(backfill_delay(0), Duration::ZERO);
        assert_eq!(backfill_delay(1), BACKFILL_RETRY);
        assert_eq!(backfill_delay(2), BACKFILL_RETRY * 2);
        assert_eq!(backfill_delay(40), BACKFILL_RETRY_MAX);
        let total: Duration = (0..BACKFILL_ATTEMPTS).map(backfill_delay).sum();
        assert!(total >= Duration::from_secs(10), "{total:?}");
    }

    /// A backfill that keeps failing ends in a resync, counted as a backfill give-up, not as
    /// a session that fell behind.
    #[tokio::test]
    async fn a_backfill_that_keeps_failing_is_not_counted_as_an_overflow() {
        let (hub, _dir) = hub();
        let channel = ChannelId::from("CX");
        let mut s = session(&hub, Some(0), 64);
        let mut out = Vec::new();
        let (overflows, give_ups) = (m::SESSION_OVERFLOWS.get(), m::BACKFILL_GIVE_UPS.get());
        s.on_backfill(
            (
                channel.clone(),
                0,
                Some(5),
                BACKFILL_ATTEMPTS - 1,
                Err(MeshError::NoOwner),
            ),
            &mut out,
        );
        assert!(s.overflow.is_cancelled(), "the session is told to resync");
        assert_eq!(m::BACKFILL_GIVE_UPS.get(), give_ups + 1);
        assert_eq!(m::SESSION_OVERFLOWS.get(), overflows);
    }

    #[tokio::test]
    async fn what_the_store_does_not_hold_is_skipped() {
        let (hub, _dir) = hub();
        let channel = ChannelId::from("CX");
        let mut s = session(&hub, Some(0), 64);
        let mut out = Vec::new();
        s.on_message(&channel, 9, "m9".into(), &mut out);
        // 3 and 6 were never stored (their appends failed).
        s.on_backfill(
            (channel.clone(), 0, Some(8), 0, Ok((page([1, 2, 4, 5]), 9))),
            &mut out,
        );
        assert_eq!(texts(&out), vec!["m1", "m2", "m4", "m5"]);
        assert!(s.backfilling.contains(&channel), "6..=8 are asked for");
        s.on_backfill(
            (channel.clone(), 5, Some(8), 0, Ok((page([7, 8]), 9))),
            &mut out,
        );
        assert_eq!(texts(&out), vec!["m1", "m2", "m4", "m5", "m7", "m8", "m9"]);
        // 10 shows another gap, which the owner does not hold at all.
        s.on_message(&channel, 12, "m12".into(), &mut out);
        s.on_backfill(
            (channel.clone(), 9, Some(11), 0, Ok((Vec::new(), 12))),
            &mut out,
        );
        assert_eq!(s.last_delivered(&channel), Some(12));
        assert_eq!(texts(&out).last(), Some(&"m12"));
    }

    #[test]
    fn presence_changes_are_written_only_for_subscribed_users() {
        let event = |users: &[&str], p: &str| -> Utf8Bytes {
            let v = match users {
                [one] => {
                    serde_json::json!({ "type": "presence_change", "user": one, "presence": p })
                }
                many => {
                    serde_json::json!({ "type": "presence_change", "users": many, "presence": p })
                }
            };
            v.to_string().into()
        };
        let parsed = |t: Option<Utf8Bytes>| {
            t.map(|t| serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap())
        };
        let mut f = PresenceFilter::new(false);
        // Every change by default.
        for e in [event(&["UA"], "active"), event(&["UA", "UB"], "away")] {
            assert_eq!(f.filter(e.clone()), Some(e));
        }
        // After presence_sub, only the users named; other events pass as they are, even when
        // their text mentions presence.
        f.subscribe(vec!["UB".into(), "UC".into()]);
        let other: Utf8Bytes = r#"{"type":"user_typing","text":"\"presence_change\""}"#.into();
        assert_eq!(f.filter(other.clone()), Some(other));
        assert_eq!(
            f.filter(event(&["UA"], "away")),
            None,
            "UA is not subscribed"
        );
        let both = event(&["UB", "UC"], "away");
        assert_eq!(f.filter(both.clone()), Some(both));
        assert_eq!(
            parsed(f.filter(event(&["UA", "UB", "UD"], "active"))),
            Some(
                serde_json::json!({ "type": "presence_change", "users": ["UB"], "presence": "active" })
            )
        );
        // An empty list stops them all; subscribing from the start (presence_sub=1) too.
        f.subscribe(Vec::new());
        assert_eq!(f.filter(event(&["UB"], "active")), None);
        let mut g = PresenceFilter::new(true);
        assert_eq!(g.filter(event(&["UA", "UB"], "active")), None);
        g.subscribe(vec!["UA".into()]);
        assert_eq!(
            parsed(g.filter(event(&["UA", "UB"], "active"))),
            Some(
                serde_json::json!({ "type": "presence_change", "users": ["UA"], "presence": "active" })
            )
        );
    }

    /// A stopping gateway's goodbyes fall evenly over the spread, whatever the first id.
    #[test]
    fn goodbyes_spread_evenly() {
        let spread = Duration::from_secs(10);
        assert_eq!(goodbye_offset(7, Duration::ZERO), Duration::ZERO);
        for first in [1u64, 1_000, 987_654_321] {
            let mut at: Vec<Duration> = (first..first + 20)
                .map(|id| goodbye_offset(id, spread))
                .collect();
            assert!(at.iter().all(|d| *d < spread));
            at.sort();
            assert!(at[0] < spread / 5 && at[19] > spread * 4 / 5, "{at:?}");
            let widest = at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
            assert!(widest <= spread / 8, "a gap of {widest:?} in {at:?}");
        }
    }

    /// Serves each WebSocket connection to the returned loopback address as a session of
    /// `hub` (user UB, no channels, a queue too large to overflow) whose idle and write
    /// timeout is `idle_timeout`; `ended` is told when the first session ends.
    async fn serve_sessions(
        hub: &Arc<Hub>,
        idle_timeout: Duration,
        ended: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> std::net::SocketAddr {
        let ended = Arc::new(parking_lot::Mutex::new(ended));
        let hub = hub.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move |ws: axum::extract::WebSocketUpgrade| async move {
                ws.on_upgrade(move |socket| async move {
                    let params = Box::new(SessionParams {
                        claims: claims(),
                        channels: Vec::new(),
                        resume: BTreeMap::new(),
                        queue: 1 << 20,
                        ping_interval: Duration::from_secs(3600),
                        idle_timeout,
                        goodbye_spread: Duration::ZERO,
                        boot: None,
                        web_api: WebApi::nowhere(),
                        presence_sub: false,
                        socket_mode: false,
                        channel_types: HashMap::new(),
                    });
                    run(hub, socket, params, Shutdown::new(), ()).await;
                    if let Some(tx) = ended.lock().take() {
                        let _ = tx.send(());
                    }
                })
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// A session the gateway closes (here: its token revoked) reads on until the client's
    /// answering Close before it drops the connection. Dropped with frames of the client's
    /// unread (an app acknowledging what it read as the Close left), the kernel resets the
    /// connection, and the reset can throw away the Close frame still queued to send.
    #[tokio::test]
    async fn a_closing_session_reads_until_the_clients_close() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;

        // Bounded reads, so that a regression fails instead of hanging the suite.
        async fn next<S: futures_util::Stream + Unpin>(
            client: &mut S,
        ) -> Result<Option<S::Item>, tokio::time::error::Elapsed> {
            tokio::time::timeout(Duration::from_secs(10), client.next()).await
        }

        let (hub, _dir) = hub();
        let (ended_tx, mut ended_rx) = tokio::sync::oneshot::channel::<()>();
        let addr = serve_sessions(&hub, Duration::from_secs(60), Some(ended_tx)).await;
        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        let hello = client.next().await.unwrap().unwrap();
        assert!(hello.to_text().unwrap().contains("\"hello\""));
        let revoked = serde_json::json!({
            "type": "tokens_revoked",
            "token_ids": [claims().token_id()],
        });
        hub.broadcast(Utf8Bytes::from(revoked.to_string()));

        loop {
            let frame = next(&mut client)
                .await
                .expect("the goodbye")
                .unwrap()
                .unwrap();
            if frame.to_text().unwrap_or_default().contains("\"goodbye\"") {
                break;
            }
        }
        for id in 0..200 {
            let ping = serde_json::json!({ "type": "ping", "id": id });
            client
                .send(Message::Text(ping.to_string().into()))
                .await
                .unwrap();
        }
        // Reading the Close queues the client's answer; it goes out with the next read.
        let close = loop {
            match next(&mut client).await.expect("the Close frame") {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("the connection failed before its Close frame: {e}"),
                None => panic!("the connection ended without a Close frame"),
            }
        };
        assert_eq!(
            close.map(|f| u16::from(f.code)),
            Some(close_code::TOKEN_REVOKED)
        );
        // Unanswered, the session is still there, reading (far less than its linger).
        tokio::time::sleep(CLOSE_LINGER / 10).await;
        assert!(
            ended_rx.try_recv().is_err(),
            "the session ended before the client answered its Close"
        );
        // Answered: the connection ends cleanly, and so does the session.
        match next(&mut client).await.expect("the end of the connection") {
            None => {}
            other => panic!("the connection did not end cleanly after the Close: {other:?}"),
        }
        tokio::time::timeout(Duration::from_secs(10), ended_rx)
            .await
            .expect("the session ended once its Close was answered")
            .unwrap();
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_closed_after_the_write_timeout() {
        use futures_util::StreamExt;

        let (hub, _dir) = hub();
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        let addr = serve_sessions(&hub, Duration::from_millis(300), Some(ended_tx)).await;
        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        // The client reads its hello, then stops reading but keeps the connection open.
        let hello = client.next().await.unwrap().unwrap();
        assert!(hello.to_text().unwrap().contains("\"hello\""));
        let before = m::SESSION_WRITE_TIMEOUTS.get();
        // Far more than the socket buffers of both ends hold (one shared 64 KiB event).
        let event = Utf8Bytes::from("x".repeat(1 << 16));
        for _ in 0..2_000 {
            hub.broadcast(event.clone());
        }
        // The session ends by itself, its write timed out, while the client is still there.
        // (The outer bound only keeps a regression from hanging the suite.)
        tokio::time::timeout(Duration::from_secs(60), ended_rx)
            .await
            .expect("the session ended while its client stopped reading")
            .unwrap();
        assert!(m::SESSION_WRITE_TIMEOUTS.get() > before);
        drop(client);
    }

    /// A client in a channel that never goes quiet is still read: its ping is answered while
    /// the events keep coming, not only once they stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_is_read_while_its_queue_never_empties() {
        use futures_util::{SinkExt, StreamExt};
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        let (hub, _dir) = hub();
        let addr = serve_sessions(&hub, Duration::from_secs(60), None).await;
        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        let hello = client.next().await.unwrap().unwrap();
        assert!(hello.to_text().unwrap().contains("\"hello\""));

        // A stream of 1 KiB events, kept far ahead of the client (more than the sockets
        // buffer, so the session's queue never empties), until the pong is seen or a bound
        // is reached (so a regression ends instead of hanging the suite).
        let flooding = Arc::new(AtomicBool::new(true));
        let received = Arc::new(AtomicU64::new(0));
        let flood = {
            let (hub, flooding, received) = (hub.clone(), flooding.clone(), received.clone());
            tokio::spawn(async move {
                let event =
                    Utf8Bytes::from(format!(r#"{{"type":"x","pad":"{}"}}"#, "p".repeat(1000)));
                let mut sent = 0u64;
                while sent < 200_000 {
                    if !flooding.load(Ordering::Relaxed) {
                        return false;
                    }
                    if sent - received.load(Ordering::Relaxed) < 20_000 {
                        for _ in 0..64 {
                            hub.broadcast(event.clone());
                        }
                        sent += 64;
                    }
                    tokio::task::yield_now().await;
                }
                flooding.store(false, Ordering::Relaxed);
                true
            })
        };
        let mut pinged = false;
        let mut answered_during_flood = false;
        while let Some(frame) = client.next().await {
            let frame = frame.unwrap();
            let text = frame.to_text().unwrap();
            if text.contains("\"pong\"") {
                assert!(text.contains("\"reply_to\":7"), "{text}");
                answered_during_flood = flooding.swap(false, Ordering::Relaxed);
                break;
            }
            // Ping once the stream is well under way.
            if received.fetch_add(1, Ordering::Relaxed) == 30_000 && !pinged {
                pinged = true;
                client
                    .send(tokio_tungstenite::tungstenite::Message::text(
                        r#"{"id":7,"type":"ping"}"#,
                    ))
                    .await
                    .unwrap();
            }
        }
        let ran_out = flood.await.unwrap();
        assert!(
            answered_during_flood && !ran_out,
            "the ping was answered only after the events stopped"
        );
    }
}
