//! The fan-out scenario, against Switchboard, the limit server (a child process), or nats-server.
//!
//! Shape: `channels` channels, `subs` subscribers per channel, messages posted round-robin
//! over the channels. Every message carries its id `m`, the phase, and its send time
//! (monotonic nanoseconds since the run started; in `--rate` mode the time it was scheduled,
//! so a system that falls behind is charged for the wait). Every subscriber checks its
//! channel's stream (contiguous sequence numbers, a checksum of the ids in order).
//!
//! Load is bounded by a window: a message counts as in flight until every subscriber of its
//! channel received it, and at most `window` messages are in flight. So no subscriber is ever
//! more than `window` messages behind, and "as fast as possible" measures the rate at which
//! the system delivers, not the size of its queues.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::SinkExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::nats::{self, NatsWs, ServerOp};
use crate::order::{CheckResult, Checksum, StreamChecker};
use crate::pace::Pacer;
use crate::rawws::{Frame, RawWs};
use crate::report::{note, Progress};
use crate::slack::{for_each_concurrent, Api};
use crate::stats::{fmt_rate, percentile_curve, LatencySummary, LocalRecorder, SharedHistogram};
use crate::sut::{CpuMeter, CpuUsage, Sut};
use crate::ws::{self, SourceAddrs, Ws};

/// The shape and load of one fan-out run.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub channels: usize,
    pub subs_per_channel: usize,
    /// Switchboard gateways the subscribers are spread over.
    pub gateways: usize,
    /// Concurrent HTTP posters (Switchboard); NATS and the limit server use one publisher.
    pub posters: usize,
    pub duration_s: f64,
    /// Most messages per phase.
    pub max_messages: u64,
    /// Offered load in messages per second over all channels; `None`: as fast as the window
    /// allows.
    pub rate: Option<f64>,
    /// After the first phase, run a second one at half of the first phase's message rate.
    pub half_peak: bool,
    /// Messages in flight (posted, not yet received by every subscriber of the channel).
    pub window: usize,
    pub drain_timeout_s: f64,
    pub connect_concurrency: usize,
    pub source_ips: u32,
    /// WebSocket read buffer per subscriber, in bytes.
    pub read_buffer: usize,
    /// Put bench users in the demo workspace (they all join its #general) instead of a
    /// workspace of their own.
    pub demo_workspace: bool,
    /// Worker threads of the limit server.
    pub limit_threads: usize,
    /// Subscribers only on gateway processes of their own, none on the dev process's.
    pub no_dev_gateway: bool,
    /// Threads of the publishers' own runtime; 0: the publishers run on the subscribers'.
    pub publisher_threads: usize,
    /// Single-threaded runtimes that hold a share of the subscribers each; 0: the subscribers
    /// run on the bench's multi-threaded runtime.
    pub subscriber_threads: usize,
}

impl Plan {
    pub fn subscribers(&self) -> usize {
        self.channels * self.subs_per_channel
    }

    fn phases(&self) -> usize {
        if self.half_peak {
            2
        } else {
            1
        }
    }
}

/// Result of one measured phase of one system.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseResult {
    pub phase: String,
    pub target_rate: Option<f64>,
    pub messages: u64,
    pub deliveries: u64,
    pub elapsed_s: f64,
    pub messages_per_s: f64,
    pub deliveries_per_s: f64,
    /// Post sent (or scheduled) to message received, over every delivery.
    pub latency: LatencySummary,
    /// Post sent to post acknowledged (Switchboard's HTTP posts only).
    pub post_ack_latency: Option<LatencySummary>,
    /// Placed (the `ts` the channel server gave the message, just before storing it) to
    /// received, over every delivery (Switchboard only): the part of `latency` after the post
    /// reached its channel server. Wall clocks of one machine.
    pub placed_to_screen: Option<LatencySummary>,
    pub cpu: CpuUsage,
    /// Where a post's time went inside Switchboard's `dev` process (its own histograms over
    /// this phase); empty for the other systems.
    pub server_latency: Vec<crate::promtext::ServerLatency>,
    /// The `dev` process's mesh connections' QUIC paths over this phase.
    pub mesh_paths: Option<crate::promtext::MeshPaths>,
    /// Whether every message reached every subscriber before the drain timeout.
    pub drained: bool,
    #[serde(skip)]
    pub curve: Vec<(f64, u64)>,
}

/// Result of one system over the whole run.
#[derive(Clone, Debug, Serialize)]
pub struct SystemResult {
    pub system: String,
    pub subscribers: usize,
    pub setup_s: f64,
    pub phases: Vec<PhaseResult>,
    pub check: CheckResult,
    pub errors: Vec<String>,
    /// Free-form facts about the run (e.g. frames the limit server dropped).
    pub notes: Vec<String>,
}

impl SystemResult {
    pub fn ok(&self) -> bool {
        self.check.ok() && self.errors.is_empty() && self.phases.iter().all(|p| p.drained)
    }
}

// ---- message payloads ----

/// What a message's text (Switchboard) or payload (NATS, limit) carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A warm-up post, sent until every subscriber saw one; not measured.
    Warmup,
    Measured {
        /// Channel index (NATS and limit only).
        c: Option<usize>,
        /// Publisher-assigned sequence number in the channel (NATS and limit only).
        k: Option<u64>,
        m: u64,
        t: u64,
        phase: usize,
    },
}

pub const WARMUP_TEXT: &str = "warmup";

/// Longest a subscriber may take to connect and register.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

pub fn encode_payload(c: Option<usize>, k: Option<u64>, m: u64, t: u64, phase: usize) -> String {
    match (c, k) {
        (Some(c), Some(k)) => format!("c={c};k={k};m={m};t={t};p={phase}"),
        _ => format!("m={m};t={t};p={phase}"),
    }
}

pub fn parse_payload(s: &str) -> Option<Payload> {
    if s == WARMUP_TEXT {
        return Some(Payload::Warmup);
    }
    let (mut c, mut k, mut m, mut t, mut phase) = (None, None, None, None, None);
    for part in s.split(';') {
        let (key, v) = part.split_once('=')?;
        match key {
            "c" => c = Some(v.parse().ok()?),
            "k" => k = Some(v.parse().ok()?),
            "m" => m = Some(v.parse().ok()?),
            "t" => t = Some(v.parse().ok()?),
            "p" => phase = Some(v.parse().ok()?),
            _ => return None,
        }
    }
    Some(Payload::Measured {
        c,
        k,
        m: m?,
        t: t?,
        phase: phase?,
    })
}

/// The channel index at the start of a limit-server payload.
pub fn payload_channel(s: &str) -> Option<usize> {
    s.strip_prefix("c=")?.split(';').next()?.parse().ok()
}

// ---- shared counters ----

struct PhaseCounters {
    hist: SharedHistogram,
    post_hist: SharedHistogram,
    placed_hist: SharedHistogram,
    sent: AtomicU64,
    completed: AtomicU64,
    deliveries: AtomicU64,
    first_send_ns: AtomicU64,
    last_complete_ns: AtomicU64,
}

impl PhaseCounters {
    fn new() -> PhaseCounters {
        PhaseCounters {
            hist: SharedHistogram::default(),
            post_hist: SharedHistogram::default(),
            placed_hist: SharedHistogram::default(),
            sent: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            first_send_ns: AtomicU64::new(u64::MAX),
            last_complete_ns: AtomicU64::new(0),
        }
    }
}

/// What the publisher side knows about one channel, for the final check.
#[derive(Default)]
struct Ledger {
    /// Highest sequence number acknowledged (Switchboard) or assigned (NATS, limit),
    /// warm-ups included.
    last_seq: AtomicU64,
    /// `(seq, m)` of every measured message.
    measured: Mutex<Vec<(u64, u64)>>,
}

impl Ledger {
    fn record(&self, seq: u64, m: Option<u64>) {
        self.last_seq.fetch_max(seq, Ordering::Relaxed);
        if let Some(m) = m {
            self.measured.lock().push((seq, m));
        }
    }
}

struct Tracker {
    base: Instant,
    subs_per_channel: u32,
    /// Deliveries still due per message id.
    remaining: Vec<AtomicU32>,
    next_m: AtomicU64,
    window: Semaphore,
    phases: Vec<PhaseCounters>,
    ledgers: Vec<Ledger>,
    /// Subscribers per channel that have seen their first message (warm-up).
    started: Vec<AtomicU32>,
    started_total: AtomicUsize,
    other_events: AtomicU64,
    failed: AtomicBool,
    errors: Mutex<Vec<String>>,
}

impl Tracker {
    fn new(plan: &Plan) -> Arc<Tracker> {
        // Each phase's messages, and the settling round's one per channel; with room for
        // the numbers that posters claim past a phase's end (one each, then they stop).
        let cap = (plan.max_messages as usize) * plan.phases() + plan.channels + 65_536;
        Arc::new(Tracker {
            base: Instant::now(),
            subs_per_channel: plan.subs_per_channel as u32,
            remaining: (0..cap).map(|_| AtomicU32::new(0)).collect(),
            next_m: AtomicU64::new(0),
            window: Semaphore::new(plan.window.max(1)),
            // The measured phases, then the settling round ([`settle`]).
            phases: (0..=plan.phases()).map(|_| PhaseCounters::new()).collect(),
            ledgers: (0..plan.channels).map(|_| Ledger::default()).collect(),
            started: (0..plan.channels).map(|_| AtomicU32::new(0)).collect(),
            started_total: AtomicUsize::new(0),
            other_events: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
        })
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn ns_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    fn fail(&self, e: String) {
        self.failed.store(true, Ordering::Relaxed);
        let mut errors = self.errors.lock();
        if errors.len() < 20 {
            errors.push(e);
        }
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Claims the next message id for `phase`, paced by `schedule`; `None` when the phase
    /// is over. Takes a window slot.
    async fn claim(&self, sched: &Schedule) -> Option<(u64, u64)> {
        if self.failed() {
            return None;
        }
        let m = self.next_m.fetch_add(1, Ordering::Relaxed);
        let k = m.checked_sub(sched.m0)?;
        if k >= sched.max_messages || m as usize >= self.remaining.len() {
            return None;
        }
        let at = sched.pacer.as_ref().map(|p| p.due(k));
        if let (Some(at), Some(p)) = (at, &sched.pacer) {
            if at >= sched.deadline {
                return None;
            }
            p.wait(k).await;
        }
        if Instant::now() >= sched.deadline || self.failed() {
            return None;
        }
        self.window.acquire().await.ok()?.forget();
        let t = at.map(|a| self.ns_of(a)).unwrap_or_else(|| self.now_ns());
        self.remaining[m as usize].store(self.subs_per_channel, Ordering::Relaxed);
        let ph = &self.phases[sched.phase];
        ph.sent.fetch_add(1, Ordering::Relaxed);
        ph.first_send_ns.fetch_min(t, Ordering::Relaxed);
        Some((m, t))
    }

    fn delivered(&self, m: u64, phase: usize) {
        let Some(ph) = self.phases.get(phase) else {
            return;
        };
        ph.deliveries.fetch_add(1, Ordering::Relaxed);
        let Some(r) = self.remaining.get(m as usize) else {
            return;
        };
        let before = r
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
            .unwrap_or(0);
        if before == 1 {
            ph.completed.fetch_add(1, Ordering::Relaxed);
            ph.last_complete_ns
                .fetch_max(self.now_ns(), Ordering::Relaxed);
            self.window.add_permits(1);
        }
    }
}

/// When and how much one phase posts.
#[derive(Clone)]
struct Schedule {
    phase: usize,
    m0: u64,
    max_messages: u64,
    /// Releases messages at the offered rate (`None`: as fast as the window allows).
    pacer: Option<Arc<Pacer>>,
    deadline: Instant,
}

// ---- subscribers ----

/// How a subscriber reads its stream.
#[derive(Clone)]
enum SubKind {
    /// Switchboard RTM JSON; the channel's id.
    Switchboard { channel_id: Arc<str> },
    /// NATS over WebSocket.
    Nats,
    /// The limit server's text frames.
    Limit,
}

struct SubState {
    channel: usize,
    checker: StreamChecker,
    checksum: Checksum,
    misrouted: u64,
    problems: Vec<String>,
    recorders: Vec<LocalRecorder>,
    /// Per phase, placed-to-received latencies; made at the first message with a `ts`.
    placed: Vec<Option<LocalRecorder>>,
    tracker: Arc<Tracker>,
}

impl SubState {
    fn new(channel: usize, tracker: Arc<Tracker>, started: bool) -> SubState {
        if started {
            tracker.started[channel].fetch_add(1, Ordering::Relaxed);
            tracker.started_total.fetch_add(1, Ordering::Relaxed);
        }
        SubState {
            channel,
            checker: if started {
                StreamChecker::starting_at(1)
            } else {
                StreamChecker::unstarted()
            },
            checksum: Checksum::default(),
            misrouted: 0,
            problems: Vec::new(),
            recorders: tracker.phases.iter().map(|p| p.hist.local()).collect(),
            placed: tracker.phases.iter().map(|_| None).collect(),
            tracker,
        }
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < 3 {
            self.problems.push(p);
        }
    }

    /// Takes message `seq`; `placed_us`: its `ts` (microseconds since the epoch), if any.
    fn on_message(&mut self, seq: u64, payload: &str, placed_us: Option<u64>) {
        let Some(p) = parse_payload(payload) else {
            self.problem(format!("unparseable payload {payload:?}"));
            return;
        };
        let first = !self.checker.started();
        match p {
            Payload::Warmup => {
                self.checker.observe(seq);
            }
            Payload::Measured { c, m, t, phase, .. } => {
                if c.is_some_and(|c| c != self.channel) {
                    self.misrouted += 1;
                    return;
                }
                self.checker.observe(seq);
                self.checksum.add(m);
                let now = self.tracker.now_ns();
                if let Some(r) = self.recorders.get_mut(phase) {
                    r.record(now.saturating_sub(t));
                }
                if let (Some(placed), Some(slot)) = (placed_us, self.placed.get_mut(phase)) {
                    let r =
                        slot.get_or_insert_with(|| self.tracker.phases[phase].placed_hist.local());
                    r.record(unix_us().saturating_sub(placed).saturating_mul(1000));
                }
                self.tracker.delivered(m, phase);
            }
        }
        if first {
            self.tracker.started[self.channel].fetch_add(1, Ordering::Relaxed);
            self.tracker.started_total.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A Switchboard RTM event, borrowed from the frame. (`Option<Cow<str>>` would not borrow:
/// serde allocates a `String` for it, two allocations per delivery. Channel ids and the
/// bench's payloads hold no JSON escapes; a message whose text did would be reported as a
/// problem, as it is not the bench's.)
#[derive(Deserialize)]
struct RtmEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    channel: Option<&'a str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    text: Option<&'a str>,
    #[serde(default)]
    ts: Option<&'a str>,
}

/// Slack's `ts` (`"1700000000.000123"`) in microseconds since the epoch.
fn ts_us(ts: &str) -> Option<u64> {
    let (secs, micros) = ts.split_once('.')?;
    let (secs, micros): (u64, u64) = (secs.parse().ok()?, micros.parse().ok()?);
    (micros < 1_000_000).then(|| secs * 1_000_000 + micros)
}

/// Now, in microseconds since the epoch (the clock the channel server's `ts` comes from).
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

enum Conn {
    /// A Switchboard or limit-server subscriber, with the text frames that arrived in the
    /// same read as its hello.
    Ws(Box<RawWs>, Vec<String>),
    Nats(Box<NatsWs>),
}

/// Connects one subscriber and waits until it is registered (hello, SUB acknowledged by a
/// PONG, or the limit server's `ready`).
async fn connect_subscriber(
    kind: &SubKind,
    url: &str,
    subject: &str,
    source: std::net::Ipv4Addr,
    read_buffer: usize,
) -> anyhow::Result<Conn> {
    match kind {
        SubKind::Nats => {
            let mut c = NatsWs::connect(url, source, read_buffer).await?;
            c.subscribe(subject, 1).await?;
            Ok(Conn::Nats(Box::new(c)))
        }
        SubKind::Switchboard { .. } | SubKind::Limit => {
            let mut ws = RawWs::connect(url, source, read_buffer).await?;
            let mut frames: Vec<Result<String, String>> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while frames.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                let more = tokio::time::timeout(
                    left,
                    ws.read_batch(|f| {
                        frames.push(match f {
                            Frame::Text(t) => Ok(t.to_string()),
                            other => Err(format!("{other:?}")),
                        })
                    }),
                )
                .await
                .context("no hello within 30 s")??;
                if !more && frames.is_empty() {
                    bail!("closed before hello");
                }
            }
            let mut frames = frames.into_iter();
            let first = frames.next().expect("at least one frame");
            match first {
                Ok(t) => {
                    let ok = match kind {
                        SubKind::Limit => t == "ready",
                        _ => t.contains("\"type\":\"hello\""),
                    };
                    if !ok {
                        bail!("expected hello, got {t}");
                    }
                }
                Err(other) => bail!("expected hello, got {other}"),
            }
            let early = frames
                .map(|f| f.map_err(|e| anyhow::anyhow!("unexpected frame after hello: {e}")))
                .collect::<anyhow::Result<Vec<String>>>()?;
            Ok(Conn::Ws(Box::new(ws), early))
        }
    }
}

async fn subscriber_loop(
    kind: SubKind,
    conn: Conn,
    mut st: SubState,
    mut stop: watch::Receiver<bool>,
) -> SubState {
    match conn {
        Conn::Ws(mut ws, early) => {
            for t in &early {
                on_text(&kind, &mut st, t);
            }
            loop {
                let read = tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    r = ws.read_batch(|f| match f {
                        Frame::Text(t) => on_text(&kind, &mut st, t),
                        Frame::Binary(_) => st.problem("unexpected binary frame".into()),
                        Frame::Close(code, reason) => {
                            st.problem(format!("server closed the connection: {code:?} {reason}"))
                        }
                    }) => r,
                };
                match read {
                    Ok(true) => {}
                    Ok(false) => {
                        st.problem("connection closed".into());
                        break;
                    }
                    Err(e) => {
                        st.problem(format!("connection error: {e:#}"));
                        break;
                    }
                }
            }
        }
        Conn::Nats(mut c) => loop {
            let more = tokio::select! {
                biased;
                _ = stop.changed() => break,
                r = c.read_frame() => r,
            };
            match more {
                Ok(true) => {}
                Ok(false) => {
                    st.problem("nats closed the connection".into());
                    break;
                }
                Err(e) => {
                    st.problem(format!("{e:#}"));
                    break;
                }
            }
            let mut pong = false;
            loop {
                match c.parser.next_op() {
                    Ok(Some(ServerOp::Msg { payload, .. })) => {
                        let text = std::str::from_utf8(payload).unwrap_or("");
                        match parse_payload(text) {
                            Some(Payload::Measured { k: Some(k), .. }) => {
                                st.on_message(k, text, None)
                            }
                            _ => {
                                let p = format!("unexpected nats payload {text:?}");
                                st.problem(p);
                            }
                        }
                    }
                    Ok(Some(ServerOp::Ping)) => pong = true,
                    Ok(Some(ServerOp::Err(e))) => {
                        let p = format!("nats error: {e}");
                        st.problem(p);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        st.problem(format!("{e}"));
                        break;
                    }
                }
            }
            if pong && c.send(nats::PONG.as_bytes().to_vec()).await.is_err() {
                st.problem("nats write failed".into());
                break;
            }
        },
    }
    for r in &mut st.recorders {
        r.flush();
    }
    for r in st.placed.iter_mut().flatten() {
        r.flush();
    }
    st
}

fn on_text(kind: &SubKind, st: &mut SubState, t: &str) {
    match kind {
        SubKind::Limit => match parse_payload(t) {
            Some(Payload::Measured { k: Some(k), .. }) => st.on_message(k, t, None),
            _ => st.problem(format!("unexpected frame {t}")),
        },
        SubKind::Switchboard { channel_id } => on_rtm_event(st, channel_id, t),
        SubKind::Nats => {}
    }
}

fn on_rtm_event(st: &mut SubState, channel_id: &str, raw: &str) {
    let ev: RtmEvent = match serde_json::from_str(raw) {
        Ok(e) => e,
        Err(e) => {
            st.problem(format!("unparseable event ({e}): {raw}"));
            return;
        }
    };
    match ev.kind.as_ref() {
        "message" => {
            let (Some(channel), Some(seq), Some(text)) = (ev.channel, ev.seq, ev.text) else {
                st.problem(format!("message without channel, seq or text: {raw}"));
                return;
            };
            if channel != channel_id {
                st.misrouted += 1;
                return;
            }
            st.on_message(seq, text, ev.ts.and_then(ts_us));
        }
        "resync_required" | "goodbye" | "error" => {
            st.problem(format!("gateway sent {raw}"));
        }
        _ => {
            st.tracker.other_events.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The subscribers of a run.
struct Subscribers {
    handles: Vec<tokio::task::JoinHandle<SubState>>,
    stop: watch::Sender<bool>,
}

impl Subscribers {
    /// Connects `targets` (channel, url, subject) with bounded concurrency; returns once all
    /// are registered.
    async fn connect(
        plan: &Plan,
        kind_of: impl Fn(usize) -> SubKind,
        targets: Vec<(usize, String, String)>,
        tracker: &Arc<Tracker>,
        started: bool,
    ) -> anyhow::Result<Subscribers> {
        let (stop, stop_rx) = watch::channel(false);
        let threads = subscriber_threads(plan.subscriber_threads)?;
        let sources = Arc::new(SourceAddrs::new(plan.source_ips));
        let limit = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
        let total = targets.len();
        let connected = Arc::new(AtomicUsize::new(0));
        let progress = {
            let connected = connected.clone();
            Progress::start("connect".into(), move || {
                format!(
                    "{} / {total} subscribers",
                    connected.load(Ordering::Relaxed)
                )
            })
        };
        let mut handles = Vec::with_capacity(total);
        let mut readies = Vec::with_capacity(total);
        for (channel, url, subject) in targets {
            let kind = kind_of(channel);
            let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<()>>();
            readies.push(ready_rx);
            let st = SubState::new(channel, tracker.clone(), started);
            let stop_rx = stop_rx.clone();
            let sources = sources.clone();
            let limit = limit.clone();
            let connected = connected.clone();
            let read_buffer = plan.read_buffer;
            let subscriber = move |held: Option<shared::threads::Held>| async move {
                let _held = held;
                let permit = limit.acquire_owned().await;
                let conn = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    connect_subscriber(&kind, &url, &subject, sources.take(), read_buffer),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!("no connection within {CONNECT_TIMEOUT:?}"))
                });
                drop(permit);
                match conn {
                    Ok(conn) => {
                        connected.fetch_add(1, Ordering::Relaxed);
                        let _ = ready_tx.send(Ok(()));
                        subscriber_loop(kind, conn, st, stop_rx).await
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        st
                    }
                }
            };
            handles.push(match threads.and_then(|t| t.place()) {
                Some(place) => place.spawn(|held| subscriber(Some(held))),
                None => tokio::spawn(subscriber(None)),
            });
        }
        let mut first_error = None;
        for r in readies {
            match r.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(anyhow::anyhow!("subscriber task died"));
                }
            }
        }
        progress.finish().await;
        let subs = Subscribers { handles, stop };
        if let Some(e) = first_error {
            let _ = subs.stop.send(true);
            return Err(e.context("failed to connect subscribers"));
        }
        Ok(subs)
    }

    async fn stop(self) -> Vec<SubState> {
        let _ = self.stop.send(true);
        let mut out = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            if let Ok(st) = h.await {
                out.push(st);
            }
        }
        out
    }
}

// ---- publishers ----

/// How a system's messages are published.
enum Publisher {
    /// `posters` concurrent `chat.postMessage` loops.
    Http {
        api: Api,
        /// Per channel, the tokens of the users who post to it, taken in turn.
        tokens: Arc<Vec<Vec<Arc<str>>>>,
        channel_ids: Arc<Vec<String>>,
        posters: usize,
        run_id: Arc<str>,
    },
    /// One WebSocket publisher: NATS `PUB` commands or limit-server text frames.
    Nats {
        conn: Box<NatsWs>,
        subject_prefix: String,
    },
    Limit {
        ws: Box<Ws>,
    },
}

impl Publisher {
    /// Publishes for one phase, until its deadline or message cap.
    async fn run_phase(&mut self, tracker: &Arc<Tracker>, sched: &Schedule, channels: usize) {
        match self {
            Publisher::Http {
                api,
                tokens,
                channel_ids,
                posters,
                run_id,
            } => {
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..*posters {
                    let (api, tokens, ids, run_id) = (
                        api.clone(),
                        tokens.clone(),
                        channel_ids.clone(),
                        run_id.clone(),
                    );
                    let tracker = tracker.clone();
                    let sched = sched.clone();
                    tasks.spawn(async move {
                        while let Some((m, t)) = tracker.claim(&sched).await {
                            let c = (m % ids.len() as u64) as usize;
                            let users = &tokens[c];
                            let token = &users[(m / ids.len() as u64) as usize % users.len()];
                            let text = encode_payload(None, None, m, t, sched.phase);
                            let id = format!("{run_id}-{m}");
                            match api.post(token, &ids[c], &text, &id).await {
                                Ok(seq) => {
                                    tracker.ledgers[c].record(seq, Some(m));
                                    let ack = tracker.now_ns().saturating_sub(t);
                                    tracker.phases[sched.phase].post_hist.record(ack);
                                }
                                Err(e) => {
                                    tracker.fail(format!("post {m} failed: {e:#}"));
                                    break;
                                }
                            }
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            }
            Publisher::Nats {
                conn,
                subject_prefix,
            } => {
                while let Some((m, t)) = tracker.claim(sched).await {
                    let c = (m % channels as u64) as usize;
                    // The only publisher: the next number of the channel.
                    let k = tracker.ledgers[c].last_seq.load(Ordering::Relaxed) + 1;
                    let payload = encode_payload(Some(c), Some(k), m, t, sched.phase);
                    tracker.ledgers[c].record(k, Some(m));
                    let frame = nats::publish(&format!("{subject_prefix}.{c}"), payload.as_bytes());
                    if let Err(e) = conn.send(frame).await {
                        tracker.fail(format!("nats publish failed: {e:#}"));
                        break;
                    }
                }
            }
            Publisher::Limit { ws } => {
                while let Some((m, t)) = tracker.claim(sched).await {
                    let c = (m % channels as u64) as usize;
                    let k = tracker.ledgers[c].last_seq.load(Ordering::Relaxed) + 1;
                    let payload = encode_payload(Some(c), Some(k), m, t, sched.phase);
                    tracker.ledgers[c].record(k, Some(m));
                    if let Err(e) = ws.send(Message::text(payload)).await {
                        tracker.fail(format!("limit publish failed: {e}"));
                        break;
                    }
                }
            }
        }
    }
}

/// A publisher and the runtime it runs on.
///
/// By default the publishers get a runtime (threads) of their own. On the subscribers'
/// runtime a poster whose answer has arrived waits in the same queues as the thousands of
/// subscriber reads that each message causes, and the bench would charge that wait to the
/// system under test, in its post latency and, through the window, in its peak. A poster on
/// another machine does not wait behind the screens. Every system gets the same treatment.
struct Publishing {
    /// `None` only after a publishing task panicked (the run has failed).
    publisher: Option<Publisher>,
    /// The publishers' runtime; `None`: the subscribers' (the caller's).
    rt: Option<tokio::runtime::Handle>,
}

impl Publishing {
    /// Builds the publisher on the runtime it will run on, so that its sockets are polled by
    /// that runtime's threads.
    async fn start<F, Fut>(plan: &Plan, make: F) -> anyhow::Result<Publishing>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Publisher>> + Send + 'static,
    {
        let rt = publisher_runtime(plan.publisher_threads)?;
        let publisher = match &rt {
            None => make().await?,
            Some(rt) => rt
                .spawn(make())
                .await
                .map_err(|e| anyhow::anyhow!("building the publisher: {e}"))??,
        };
        Ok(Publishing {
            publisher: Some(publisher),
            rt,
        })
    }

    async fn run_phase(&mut self, tracker: &Arc<Tracker>, sched: &Schedule, channels: usize) {
        let Some(mut publisher) = self.publisher.take() else {
            tracker.fail("the publisher was lost to an earlier panic".into());
            return;
        };
        match &self.rt {
            None => {
                publisher.run_phase(tracker, sched, channels).await;
                self.publisher = Some(publisher);
            }
            Some(rt) => {
                let (t, s) = (tracker.clone(), sched.clone());
                let task = rt.spawn(async move {
                    publisher.run_phase(&t, &s, channels).await;
                    publisher
                });
                match task.await {
                    Ok(p) => self.publisher = Some(p),
                    Err(e) => tracker.fail(format!("publishing task failed: {e}")),
                }
            }
        }
    }
}

/// The publishers' runtime, made at the first call with `threads` workers (a run makes one
/// plan, so one size); `None` for 0. Kept for the life of the process: a runtime cannot be
/// dropped inside another's tasks.
fn publisher_runtime(threads: usize) -> anyhow::Result<Option<tokio::runtime::Handle>> {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if threads == 0 {
        return Ok(None);
    }
    if let Some(rt) = RT.get() {
        return Ok(Some(rt.handle().clone()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("bench-publish")
        .enable_all()
        .build()
        .context("publishers' runtime")?;
    // A concurrent first call may have won; its runtime is used and this one is dropped
    // here, outside any task of its own.
    let rt = match RT.set(rt) {
        Ok(()) => RT.get().expect("just set"),
        Err(mine) => {
            mine.shutdown_background();
            RT.get().expect("set by the other call")
        }
    };
    Ok(Some(rt.handle().clone()))
}

/// The subscribers' threads, started at the first call with `n` threads (a run makes one
/// plan, so one size) and kept for the life of the process; `None` for 0.
fn subscriber_threads(n: usize) -> anyhow::Result<Option<&'static shared::threads::TaskThreads>> {
    static THREADS: std::sync::OnceLock<shared::threads::TaskThreads> = std::sync::OnceLock::new();
    if n == 0 {
        return Ok(None);
    }
    if let Some(t) = THREADS.get() {
        return Ok(Some(t));
    }
    // Each thread polls its subscribers' sockets itself: they connect from there.
    let threads = shared::threads::TaskThreads::start(n, "bench-subscribe", true)?;
    // A concurrent first call may have won: its threads are used, and these stop when dropped.
    let _ = THREADS.set(threads);
    Ok(THREADS.get())
}

// ---- the phases ----

async fn run_phases(
    plan: &Plan,
    system: &str,
    tracker: &Arc<Tracker>,
    publisher: &mut Publishing,
    server_pids: Vec<u32>,
    metrics_http: Option<&str>,
) -> Vec<PhaseResult> {
    let mut results: Vec<PhaseResult> = Vec::new();
    for phase in 0..plan.phases() {
        let (label, rate) = if phase == 0 {
            match plan.rate {
                Some(r) => (format!("rate {}/s", fmt_rate(r)), Some(r)),
                None => ("peak".to_string(), None),
            }
        } else {
            let peak = results[0].messages_per_s;
            if peak <= 0.0 {
                break;
            }
            ("half of peak".to_string(), Some(peak / 2.0))
        };
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(plan.duration_s);
        let sched = Schedule {
            phase,
            m0: tracker.next_m.load(Ordering::Relaxed),
            max_messages: plan.max_messages,
            pacer: rate.map(|r| Arc::new(Pacer::start(r, start, deadline))),
            deadline,
        };
        let metrics_before = match metrics_http {
            Some(http) => crate::promtext::scrape(http).await,
            None => None,
        };
        let cpu = CpuMeter::start(server_pids.clone());
        let ph = &tracker.phases[phase];
        let progress = {
            let tracker = tracker.clone();
            let mut last = (Instant::now(), 0u64);
            Progress::start(format!("{system} {label}"), move || {
                let ph = &tracker.phases[phase];
                let d = ph.deliveries.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (d - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, d);
                let sent = ph.sent.load(Ordering::Relaxed);
                let done = ph.completed.load(Ordering::Relaxed);
                format!(
                    "sent {sent}, in flight {}, delivered {d} ({}/s)",
                    sent - done.min(sent),
                    fmt_rate(rate)
                )
            })
        };
        publisher.run_phase(tracker, &sched, plan.channels).await;
        // Drain: every message of the phase reaches every subscriber, or the timeout.
        let drain_deadline = Instant::now() + Duration::from_secs_f64(plan.drain_timeout_s);
        let mut drained = false;
        while Instant::now() < drain_deadline && !tracker.failed() {
            if ph.completed.load(Ordering::Relaxed) >= ph.sent.load(Ordering::Relaxed) {
                drained = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let cpu = cpu.stop();
        let (server_latency, mesh_paths) = match (metrics_http, &metrics_before) {
            (Some(http), Some(before)) => match crate::promtext::scrape(http).await {
                Some(after) => (
                    crate::promtext::post_path(before, &after),
                    crate::promtext::mesh_paths(before, &after),
                ),
                None => (Vec::new(), None),
            },
            _ => (Vec::new(), None),
        };
        progress.finish().await;
        let sent = ph.sent.load(Ordering::Relaxed);
        let completed = ph.completed.load(Ordering::Relaxed);
        if !drained && !tracker.failed() {
            tracker.fail(format!(
                "{system} {label}: {} of {sent} messages not received by every subscriber within {} s",
                sent - completed.min(sent),
                plan.drain_timeout_s
            ));
        }
        let deliveries = ph.deliveries.load(Ordering::Relaxed);
        let first = ph.first_send_ns.load(Ordering::Relaxed);
        let last = ph.last_complete_ns.load(Ordering::Relaxed);
        let elapsed_s = if last > first && first != u64::MAX {
            (last - first) as f64 / 1e9
        } else {
            0.0
        };
        let per_s = |n: u64| {
            if elapsed_s > 0.0 {
                n as f64 / elapsed_s
            } else {
                0.0
            }
        };
        results.push(PhaseResult {
            phase: label,
            target_rate: rate,
            messages: sent,
            deliveries,
            elapsed_s,
            messages_per_s: per_s(completed),
            deliveries_per_s: per_s(deliveries),
            latency: LatencySummary::default(),
            post_ack_latency: None,
            placed_to_screen: None,
            cpu,
            server_latency,
            mesh_paths,
            drained,
            curve: Vec::new(),
        });
        if tracker.failed() {
            break;
        }
    }
    if !tracker.failed() {
        settle(plan, system, tracker, publisher).await;
    }
    results
}

/// After the last phase: one more message per channel, waited for at every subscriber
/// before the subscribers are stopped. A channel's messages reach a subscriber in order, so
/// anything still on its way (a late repeat of a measured message, a stray) arrives before
/// that message and is judged by the in-order check, rather than left unread in a socket.
/// Not measured: its counters are the tracker's last slot, past the phases'.
async fn settle(plan: &Plan, system: &str, tracker: &Arc<Tracker>, publisher: &mut Publishing) {
    let phase = plan.phases();
    let deadline = Instant::now() + Duration::from_secs_f64(plan.drain_timeout_s);
    let sched = Schedule {
        phase,
        m0: tracker.next_m.load(Ordering::Relaxed),
        // Consecutive message numbers: one per channel (a message's channel is its number
        // modulo the channel count).
        max_messages: plan.channels as u64,
        pacer: None,
        deadline,
    };
    publisher.run_phase(tracker, &sched, plan.channels).await;
    let ph = &tracker.phases[phase];
    while !tracker.failed() {
        let (sent, completed) = (
            ph.sent.load(Ordering::Relaxed),
            ph.completed.load(Ordering::Relaxed),
        );
        if sent == plan.channels as u64 && completed >= sent {
            return;
        }
        if Instant::now() >= deadline {
            tracker.fail(format!(
                "{system}: the settling round ({sent} of {} sent) did not reach every subscriber within {} s",
                plan.channels, plan.drain_timeout_s
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Stops the subscribers and checks every stream against the ledgers; fills in latencies.
async fn finish(
    system: &str,
    plan: &Plan,
    tracker: Arc<Tracker>,
    subs: Subscribers,
    mut phases: Vec<PhaseResult>,
    setup_s: f64,
    with_post_ack: bool,
) -> SystemResult {
    let states = subs.stop().await;
    let mut check = CheckResult::default();
    // Per channel: the last sequence number sent, how many measured messages it carried, and
    // their checksum.
    let expected: Vec<(Option<u64>, u64, Checksum)> = tracker
        .ledgers
        .iter()
        .map(|l| {
            let mut measured = l.measured.lock().clone();
            measured.sort_unstable();
            let last = l.last_seq.load(Ordering::Relaxed);
            (
                (last > 0).then_some(last),
                measured.len() as u64,
                Checksum::of(measured.iter().map(|(_, m)| *m)),
            )
        })
        .collect();
    if states.len() != plan.subscribers() {
        check.problem(format!(
            "{} of {} subscriber tasks ended abnormally",
            plan.subscribers() - states.len(),
            plan.subscribers()
        ));
    }
    for st in &states {
        let (last, count, sum) = expected[st.channel];
        let mut r = st.checker.finish_expecting(last, count);
        if r.ok() && st.checksum != sum {
            r.wrong_messages += 1;
            r.problem(format!(
                "channel {}: the messages received are not the ones sent at those sequence numbers",
                st.channel
            ));
        }
        r.misrouted += st.misrouted;
        for p in &st.problems {
            r.problem(format!("channel {}: {p}", st.channel));
        }
        check.add(r);
    }
    drop(states);
    for (i, p) in phases.iter_mut().enumerate() {
        let h = tracker.phases[i].hist.snapshot();
        p.latency = LatencySummary::of(&h);
        p.curve = percentile_curve(&h);
        if with_post_ack {
            p.post_ack_latency = Some(LatencySummary::of(&tracker.phases[i].post_hist.snapshot()));
        }
        let placed = tracker.phases[i].placed_hist.snapshot();
        if !placed.is_empty() {
            p.placed_to_screen = Some(LatencySummary::of(&placed));
        }
    }
    let errors = tracker.errors.lock().clone();
    SystemResult {
        system: system.to_string(),
        subscribers: plan.subscribers(),
        setup_s,
        phases,
        check,
        errors,
        notes: Vec::new(),
    }
}

fn run_id() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    format!(
        "{:x}",
        (n ^ (std::process::id() as u64) << 40) % 0xff_ffff_ffff
    )
}

// ---- the three systems ----

/// Fan-out through Switchboard: HTTP posts, RTM WebSocket subscribers over `gateways`
/// gateways.
pub async fn run_switchboard(plan: &Plan, sut: &mut Sut) -> anyhow::Result<SystemResult> {
    let setup = Instant::now();
    let api = Api::new(&sut.urls.api)?;
    let admin = if plan.demo_workspace {
        sut.demo_admin_token()?
    } else {
        sut.bench_workspace()?
    };
    let run = run_id();
    note(format!(
        "switchboard: creating {} channels and {} users",
        plan.channels,
        plan.subscribers()
    ));
    let channel_ids: Vec<String> = for_each_concurrent((0..plan.channels).collect(), 8, {
        let (api, admin, run) = (api.clone(), admin.clone(), run.clone());
        move |i: usize| {
            let (api, admin, name) = (api.clone(), admin.clone(), format!("b{run}-{i}"));
            async move { api.create_channel(&admin, &name).await }
        }
    })
    .await?;
    let channel_ids = Arc::new(channel_ids);
    let users: Vec<(usize, String)> = for_each_concurrent((0..plan.subscribers()).collect(), 16, {
        let (api, admin, run, ids) = (api.clone(), admin.clone(), run.clone(), channel_ids.clone());
        let channels = plan.channels;
        move |u: usize| {
            let (api, admin, ids) = (api.clone(), admin.clone(), ids.clone());
            let name = format!("s{run}-{u}");
            async move {
                let (_, token) = api.create_user(&admin, &name).await?;
                let c = u % channels;
                api.join(&token, &ids[c]).await?;
                Ok((c, token))
            }
        }
    })
    .await?;
    // The dev process's own gateway is gateways[0]; it is left out (unless `--dev-gateway`) so the
    // fan-out work runs in gateway processes of its own, apart from the post path.
    let skip = usize::from(plan.no_dev_gateway);
    sut.ensure_gateways(plan.gateways + skip).await?;
    let gateway_urls: Vec<String> = sut.gateways[skip..].iter().map(|g| g.url.clone()).collect();
    note(format!(
        "switchboard: connecting {} subscribers over {} gateway(s)",
        users.len(),
        gateway_urls.len()
    ));
    // Each channel's messages are posted by its own subscribers in turn: rate limits are per
    // user (as Slack's are), and a channel's messages come from the people in it.
    let mut poster_tokens: Vec<Vec<Arc<str>>> = vec![Vec::new(); plan.channels];
    for (c, token) in &users {
        poster_tokens[*c].push(token.as_str().into());
    }
    let tracker = Tracker::new(plan);
    let targets = users
        .into_iter()
        .enumerate()
        .map(|(u, (c, token))| {
            let g = &gateway_urls[u % gateway_urls.len()];
            (c, format!("{g}?token={token}"), String::new())
        })
        .collect();
    let ids = channel_ids.clone();
    let subs = Subscribers::connect(
        plan,
        move |c| SubKind::Switchboard {
            channel_id: ids[c].as_str().into(),
        },
        targets,
        &tracker,
        false,
    )
    .await?;
    // Warm up: post to every channel until each of its subscribers has seen a message, so
    // that every gateway's subscription is live before anything is measured.
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0u64;
    loop {
        let cold: Vec<usize> = (0..plan.channels)
            .filter(|c| tracker.started[*c].load(Ordering::Relaxed) < plan.subs_per_channel as u32)
            .collect();
        if cold.is_empty() {
            break;
        }
        if Instant::now() > warm_deadline {
            let _ = subs.stop.send(true);
            bail!(
                "warm-up: {} channel(s) still have subscribers that received nothing after 60 s",
                cold.len()
            );
        }
        sut.check_alive()?;
        let posted: Vec<(usize, u64)> = for_each_concurrent(cold, 16, {
            let (api, admin, ids, run) =
                (api.clone(), admin.clone(), channel_ids.clone(), run.clone());
            move |c: usize| {
                let (api, admin, ids) = (api.clone(), admin.clone(), ids.clone());
                let id = format!("{run}-w{round}-{c}");
                async move { Ok((c, api.post(&admin, &ids[c], WARMUP_TEXT, &id).await?)) }
            }
        })
        .await?;
        for (c, seq) in posted {
            tracker.ledgers[c].record(seq, None);
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    quiesce(&tracker).await;
    let presence = tracker.other_events.load(Ordering::Relaxed);
    let setup_s = setup.elapsed().as_secs_f64();
    // A client of its own: the setup's pooled connections were opened (and are polled) on
    // the subscribers' runtime.
    let post_api = Api::new(&sut.urls.api)?;
    let tokens = Arc::new(poster_tokens);
    let (posters, run_id) = (plan.posters, Arc::<str>::from(run));
    let mut publisher = Publishing::start(plan, move || async move {
        Ok(Publisher::Http {
            api: post_api,
            tokens,
            channel_ids,
            posters,
            run_id,
        })
    })
    .await?;
    let phases = run_phases(
        plan,
        "switchboard",
        &tracker,
        &mut publisher,
        sut.pids(),
        Some(&sut.urls.webapp),
    )
    .await;
    let mut result = finish("switchboard", plan, tracker, subs, phases, setup_s, true).await;
    if let Err(e) = sut.check_alive() {
        result.errors.push(format!("{e:#}"));
    }
    result.notes.push(format!(
        "{presence} non-message events (presence) reached the subscribers while they connected"
    ));
    push_cost_notes(&mut result, &sut.process_names());
    for p in &result.phases {
        if let Some(l) = &p.placed_to_screen {
            result.notes.push(format!(
                "{}: placed (the channel server's ts) to screen p50 {:.2} ms p99 {:.2} ms p99.9 \
                 {:.2} ms max {:.2} ms; post sent to screen p99 {:.2} ms",
                p.phase,
                l.p50_us / 1000.0,
                l.p99_us / 1000.0,
                l.p999_us / 1000.0,
                l.max_us / 1000.0,
                p.latency.p99_us / 1000.0,
            ));
        }
        if !p.server_latency.is_empty() {
            result.notes.push(format!(
                "inside dev, {}: {}",
                p.phase,
                crate::promtext::describe(&p.server_latency)
            ));
        }
        if let Some(paths) = &p.mesh_paths {
            result.notes.push(format!(
                "inside dev, {}: {}",
                p.phase,
                crate::promtext::describe_paths(paths)
            ));
        }
        if !p.cpu.busiest_threads.is_empty() {
            result.notes.push(format!(
                "busiest server threads (cores), {}: {}",
                p.phase,
                crate::sut::describe_threads(&p.cpu.busiest_threads, &sut.process_names())
            ));
        }
        if !p.cpu.context_switches.is_empty() {
            result.notes.push(format!(
                "context switches per second (voluntary + involuntary), {}: {}",
                p.phase,
                crate::sut::describe_switches(
                    &p.cpu.context_switches,
                    p.cpu.wall_s,
                    &sut.process_names()
                )
            ));
        }
    }
    for g in &sut.gateways {
        let mut facts = Vec::new();
        for name in [
            "switchboard_gateway_session_overflows_total",
            "switchboard_gateway_gap_fetches_total",
            "switchboard_gateway_gaps_skipped_total",
            "switchboard_gateway_session_messages_total",
        ] {
            if let Some(v) = metric(&g.http, name).await {
                facts.push(format!(
                    "{} {v}",
                    name.trim_start_matches("switchboard_gateway_")
                ));
            }
        }
        if !facts.is_empty() {
            result
                .notes
                .push(format!("gateway {}: {}", g.url, facts.join(", ")));
        }
    }
    Ok(result)
}

/// Waits until the subscribers have stopped receiving non-message events (presence) for
/// half a second, at most 30 s.
async fn quiesce(tracker: &Tracker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = tracker.other_events.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = tracker.other_events.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(500) {
            return;
        }
    }
}

/// The value of an unlabelled metric on a `/metrics` page.
async fn metric(http: &str, name: &str) -> Option<f64> {
    let body = reqwest::get(format!("{http}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric_value(&body, name)
}

fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter_map(|l| l.strip_prefix(name))
        .find_map(|rest| rest.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Fan-out through the limit server, a process of its own (as Switchboard's and NATS's
/// servers are): its CPU is counted as the server's, and it does not share the bench's
/// scheduler or open-files limit.
pub async fn run_limit(plan: &Plan) -> anyhow::Result<SystemResult> {
    let setup = Instant::now();
    let server = crate::limit::LimitChild::start(plan.channels, plan.limit_threads)?;
    let (url, server_pids) = (server.url.clone(), vec![server.pid()]);
    let tracker = Tracker::new(plan);
    note(format!(
        "limit: connecting {} subscribers (server process {})",
        plan.subscribers(),
        server.pid()
    ));
    let targets = (0..plan.subscribers())
        .map(|u| {
            let c = u % plan.channels;
            (c, format!("{url}/sub/{c}"), String::new())
        })
        .collect();
    let subs = Subscribers::connect(plan, |_| SubKind::Limit, targets, &tracker, true).await?;
    let pub_url = format!("{url}/pub");
    let mut publisher = Publishing::start(plan, move || async move {
        let ws = ws::connect(&pub_url, SourceAddrs::nth(0), ws::client_config(4096)).await?;
        Ok(Publisher::Limit { ws: Box::new(ws) })
    })
    .await?;
    let setup_s = setup.elapsed().as_secs_f64();
    let phases = run_phases(plan, "limit", &tracker, &mut publisher, server_pids, None).await;
    drop(publisher);
    let mut result = finish("limit", plan, tracker, subs, phases, setup_s, false).await;
    let names = HashMap::from([(server.pid(), "limit".to_string())]);
    push_cost_notes(&mut result, &names);
    result.notes.push(format!(
        "limit server in process {}: its CPU is in server_cpu_s",
        server.pid()
    ));
    drop(server);
    Ok(result)
}

/// Fan-out through nats-server's WebSocket listener, one publisher.
pub async fn run_nats(
    plan: &Plan,
    ws_url: &str,
    server_pid: Option<u32>,
) -> anyhow::Result<SystemResult> {
    let setup = Instant::now();
    let tracker = Tracker::new(plan);
    let prefix = format!("bench.{}", run_id());
    note(format!(
        "nats: connecting {} subscribers",
        plan.subscribers()
    ));
    let targets = (0..plan.subscribers())
        .map(|u| {
            let c = u % plan.channels;
            (c, ws_url.to_string(), format!("{prefix}.{c}"))
        })
        .collect();
    let subs = Subscribers::connect(plan, |_| SubKind::Nats, targets, &tracker, true).await?;
    let url = ws_url.to_string();
    let mut publisher = Publishing::start(plan, move || async move {
        let conn = NatsWs::connect(&url, SourceAddrs::nth(0), 4096).await?;
        Ok(Publisher::Nats {
            conn: Box::new(conn),
            subject_prefix: prefix,
        })
    })
    .await?;
    let setup_s = setup.elapsed().as_secs_f64();
    let pids = server_pid.into_iter().collect();
    let phases = run_phases(plan, "nats", &tracker, &mut publisher, pids, None).await;
    drop(publisher);
    let mut result = finish("nats", plan, tracker, subs, phases, setup_s, false).await;
    let names = server_pid
        .map(|pid| HashMap::from([(pid, "nats-server".to_string())]))
        .unwrap_or_default();
    push_cost_notes(&mut result, &names);
    Ok(result)
}

/// A note per phase with the server CPU each process spent per message (and all of them per
/// delivery), so runs of different systems compare by cost as well as by rate.
fn push_cost_notes(result: &mut SystemResult, names: &HashMap<u32, String>) {
    let notes: Vec<String> = result
        .phases
        .iter()
        .filter_map(|p| {
            crate::sut::describe_cost(&p.cpu.processes, p.messages, p.deliveries, names)
                .map(|cost| format!("server CPU per message, {}: {cost}", p.phase))
        })
        .collect();
    result.notes.extend(notes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let s = encode_payload(Some(3), Some(7), 100, 12345, 1);
        assert_eq!(s, "c=3;k=7;m=100;t=12345;p=1");
        assert_eq!(
            parse_payload(&s),
            Some(Payload::Measured {
                c: Some(3),
                k: Some(7),
                m: 100,
                t: 12345,
                phase: 1
            })
        );
        assert_eq!(payload_channel(&s), Some(3));
        let s = encode_payload(None, None, 5, 6, 0);
        assert_eq!(
            parse_payload(&s),
            Some(Payload::Measured {
                c: None,
                k: None,
                m: 5,
                t: 6,
                phase: 0
            })
        );
        assert_eq!(payload_channel(&s), None);
        assert_eq!(parse_payload(WARMUP_TEXT), Some(Payload::Warmup));
        assert_eq!(parse_payload("hello"), None);
        assert_eq!(parse_payload("m=1;t=2"), None);
        assert_eq!(parse_payload("m=x;t=2;p=0"), None);
    }

    fn plan() -> Plan {
        Plan {
            channels: 2,
            subs_per_channel: 2,
            gateways: 1,
            posters: 1,
            duration_s: 1.0,
            max_messages: 10,
            rate: None,
            half_peak: false,
            window: 2,
            drain_timeout_s: 1.0,
            connect_concurrency: 1,
            source_ips: 1,
            read_buffer: 4096,
            demo_workspace: false,
            limit_threads: 1,
            no_dev_gateway: false,
            publisher_threads: 1,
            subscriber_threads: 0,
        }
    }

    #[tokio::test]
    async fn window_opens_when_every_subscriber_got_the_message() {
        let p = plan();
        let tracker = Tracker::new(&p);
        let start = Instant::now();
        let sched = Schedule {
            phase: 0,
            m0: 0,
            max_messages: 3,
            pacer: None,
            deadline: start + Duration::from_secs(10),
        };
        let (m0, _) = tracker.claim(&sched).await.unwrap();
        let (m1, _) = tracker.claim(&sched).await.unwrap();
        // The window (2) is full: a third claim waits.
        let third = tokio::time::timeout(Duration::from_millis(50), tracker.claim(&sched)).await;
        assert!(third.is_err());
        // That claim took id 2 before it waited; the next one would be 3, past the cap.
        tracker.delivered(m0, 0);
        assert_eq!(tracker.phases[0].completed.load(Ordering::Relaxed), 0);
        tracker.delivered(m0, 0);
        assert_eq!(tracker.phases[0].completed.load(Ordering::Relaxed), 1);
        // A repeat delivery does not underflow or free another slot.
        tracker.delivered(m0, 0);
        assert_eq!(tracker.phases[0].completed.load(Ordering::Relaxed), 1);
        assert_eq!(tracker.phases[0].deliveries.load(Ordering::Relaxed), 3);
        assert!(tracker.claim(&sched).await.is_none(), "cap of 3 reached");
        let _ = m1;
    }

    #[tokio::test]
    async fn subscriber_state_checks_order_and_ids() {
        let p = plan();
        let tracker = Tracker::new(&p);
        let mut st = SubState::new(1, tracker.clone(), false);
        st.on_message(5, WARMUP_TEXT, None);
        assert_eq!(tracker.started[1].load(Ordering::Relaxed), 1);
        st.on_message(6, &encode_payload(None, None, 0, 0, 0), None);
        st.on_message(8, &encode_payload(None, None, 1, 0, 0), None);
        let r = st.checker.finish(Some(8));
        assert_eq!(r.lost, 1);
        // A message for another channel is misrouted, not counted in order.
        st.on_message(9, &encode_payload(Some(0), Some(9), 2, 0, 0), None);
        assert_eq!(st.misrouted, 1);
    }

    #[test]
    fn slack_ts_reads_as_microseconds() {
        assert_eq!(ts_us("1700000000.000123"), Some(1_700_000_000_000_123));
        assert_eq!(ts_us("1700000000.999999"), Some(1_700_000_000_999_999));
        for bad in ["1700000000", "x.000001", "1.1000000", ""] {
            assert_eq!(ts_us(bad), None, "{bad}");
        }
    }

    #[test]
    fn metric_values_are_read_by_exact_name() {
        let body = "# HELP x_total x\nx_total 3\nx_total_more 4\ny{a=\"b\"} 5\n";
        assert_eq!(metric_value(body, "x_total"), Some(3.0));
        assert_eq!(metric_value(body, "x_total_more"), Some(4.0));
        assert_eq!(metric_value(body, "z"), None);
    }

    #[test]
    fn rtm_events_parse() {
        let p = plan();
        let tracker = Tracker::new(&p);
        let mut st = SubState::new(0, tracker.clone(), true);
        let ev = r#"{"type":"message","channel":"C1","user":"U1","text":"m=0;t=1;p=0","ts":"1.2","seq":1,"team":"T1"}"#;
        on_rtm_event(&mut st, "C1", ev);
        assert_eq!(st.checker.last(), Some(1));
        on_rtm_event(&mut st, "C2", ev);
        assert_eq!(st.misrouted, 1);
        on_rtm_event(
            &mut st,
            "C1",
            r#"{"type":"presence_change","user":"U1","presence":"active"}"#,
        );
        assert_eq!(tracker.other_events.load(Ordering::Relaxed), 1);
        on_rtm_event(&mut st, "C1", r#"{"type":"resync_required","seq":{}}"#);
        assert_eq!(st.problems.len(), 1);
        let escaped = r#"{"type":"message","channel":"C1","text":"m=1;t=1;p=0\u0000","seq":2}"#;
        on_rtm_event(&mut st, "C1", escaped);
        assert_eq!(st.problems.len(), 2, "{:?}", st.problems);
    }
}
