//! Slack's Events API over HTTP: the events of an app's channels POSTed to its request URL,
//! signed as Slack signs them, for apps that run an HTTP server (Bolt's default mode) rather
//! than a Socket Mode client.
//!
//! An app sets its URL with `apps.eventSubscriptions.set` ([`crate::methods`]); the URL must
//! answer Slack's `url_verification` challenge first ([`verify_url`]). The subscriptions are
//! one record set for the cluster ([`RecordKind::EventSubscriptions`]), which every Web API
//! node reads every `webapp.records_poll_ms` ([`spawn`]).
//!
//! Delivery rides on Socket Mode, which already gives each event of an app to one of its
//! connections, retries it on the Events API's schedule when it is not acknowledged, and
//! keeps the claims across the cluster: each node holds one Socket Mode connection per
//! subscribed app, on the gateway that `apps.connections.open` would name, and for each
//! `events_api` envelope POSTs its payload to the request URL. A `2xx` answer within
//! [`POST_TIMEOUT`] acknowledges the envelope; anything else leaves it unacknowledged, so
//! the gateway sends it again (at once, after a minute, after five), and the next POST says
//! `X-Slack-Retry-Num` and `X-Slack-Retry-Reason` (`http_timeout`, `http_error`,
//! `connection_failed`). An app that answers with `X-Slack-No-Retry: 1` gets no retry.
//!
//! A URL that fails nearly everything is disabled, as Slack disables one that fails more
//! than 95 % of its events for an hour: each node keeps the last
//! `webapp.events_failure_window_secs` of its tries for each app ([`UrlHealth`]); once it
//! has watched that long and more than 95 % of at least [`MIN_TRIES_TO_DISABLE`] tries in
//! the window failed, it marks the subscription disabled
//! ([`crate::methods::apps::disable`]), and every node stops the app's deliveries until the
//! app sets its URL again.
//!
//! Each request carries `X-Slack-Request-Timestamp` and `X-Slack-Signature`
//! (`v0=` and the hex HMAC-SHA256 of `v0:<timestamp>:<body>` under the app's signing
//! secret), which the SDKs' request verifiers check.
//!
//! Unless `webapp.private_request_urls` is on, a request URL must be a public address: one
//! whose host is a loopback, private-network, link-local or other non-public address
//! ([`is_public`]), or a name that resolves only to such, is refused when set
//! ([`address_allowed`]), and the client that calls request URLs resolves names itself and
//! connects only to their public addresses ([`client`]), so a name that later resolves
//! elsewhere (DNS rebinding) still cannot reach the cluster's own network. A kept URL whose
//! host is a non-public address, set while the setting was on, is disabled once it is off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use shared::auth::Claims;
use shared::shutdown::{Every, Shutdown};
use shared::store::{EventSubscription, RecordKind};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::api::AppState;
use crate::methods::records::PolledSet;
use crate::metrics as m;

/// How long an app has to answer an event (Slack's three seconds), less a margin so that the
/// acknowledgement reaches the gateway before it gives the envelope up for lost.
pub const POST_TIMEOUT: Duration = Duration::from_millis(2_750);
/// How long a request URL has to answer the `url_verification` challenge.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(3);
/// Events of one app in flight at once on one node.
const IN_FLIGHT_PER_APP: usize = 32;
/// Longest wait between two tries to connect an app's Socket Mode session.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How many events' last failure an app remembers, for the next try's `X-Slack-Retry-Reason`.
const FAILURES_KEPT: usize = 1024;
/// Longest answer to the challenge read, in bytes.
const MAX_CHALLENGE_ANSWER: usize = 64 * 1024;
/// Longest request URL accepted, in bytes.
pub const MAX_URL: usize = 2000;
/// Fewest tries in a window that can disable a failing URL: a handful of failures in a quiet
/// hour is not a dead endpoint.
pub const MIN_TRIES_TO_DISABLE: u32 = 10;
/// Slices of the window that [`UrlHealth`] counts in.
const HEALTH_SLICES: u32 = 60;

/// `X-Slack-Signature` of `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + 2 * digest.len());
    out.push_str("v0=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A random secret of 32 hex digits, as Slack's signing secrets and verification tokens are.
pub fn new_secret() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An `http` or `https` URL with a host, no longer than [`MAX_URL`].
pub fn valid_request_url(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let url = url::Url::parse(raw).ok()?;
    (raw.len() <= MAX_URL
        && matches!(url.scheme(), "http" | "https")
        && url.has_host()
        && url.fragment().is_none())
    .then(|| raw.to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `ip` is an address of the public internet, which a request URL may reach with
/// `webapp.private_request_urls` off. Not: loopback, private networks, link-local (where
/// cloud metadata services answer), shared (carrier NAT), unspecified, broadcast, multicast,
/// documentation, benchmarking and reserved ranges, IPv6 unique-local and link-local, and
/// IPv4 addresses inside IPv6 (mapped, NAT64, 6to4) judged as the IPv4 address they carry.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_v4(v4);
            }
            public_v6(v6)
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (b & 0xc0) == 64)
        || (a == 198 && (b & 0xfe) == 18)
        || (a == 192 && b == 0 && c == 0))
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return public_v4(embedded(s[1], s[2]));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] == 0x2001 && s[1] == 0x0db8))
}

/// `Ok` when a request URL may be called under the policy (`private`: any address), else
/// why not: its host is not a public address, or is a name that resolves to none.
pub async fn address_allowed(url: &str, private: bool) -> Result<(), String> {
    if private {
        return Ok(());
    }
    let url = url::Url::parse(url).map_err(|e| e.to_string())?;
    let why = "webapp.private_request_urls is off";
    match url.host() {
        Some(url::Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => {
            Err(format!("{ip} is not a public address ({why})"))
        }
        Some(url::Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => {
            Err(format!("{ip} is not a public address ({why})"))
        }
        Some(url::Host::Domain(name)) => {
            let port = url.port_or_known_default().unwrap_or(443);
            // Bounded as the challenge is: a resolver that does not answer fails the call.
            let addrs: Vec<SocketAddr> =
                tokio::time::timeout(VERIFY_TIMEOUT, tokio::net::lookup_host((name, port)))
                    .await
                    .map_err(|_| {
                        format!(
                            "{name} did not resolve within {} s",
                            VERIFY_TIMEOUT.as_secs()
                        )
                    })?
                    .map_err(|e| format!("{name} does not resolve: {e}"))?
                    .collect();
            if addrs.iter().any(|a| is_public(a.ip())) {
                Ok(())
            } else {
                Err(format!("{name} resolves to no public address ({why})"))
            }
        }
        _ => Ok(()),
    }
}

/// A resolver that gives only a name's public addresses ([`is_public`]): what the client
/// connects to with `webapp.private_request_urls` off, checked at each connection.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{name} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client that calls request URLs: no redirects followed (a signed event goes where
/// the app said, nowhere else), its own timeouts per call; without `private`, names resolve
/// to their public addresses only.
pub fn client(private: bool) -> reqwest::Client {
    shared::mesh::install_crypto_provider();
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .user_agent("Slackbot 1.0 (+https://api.slack.com/robots) Switchboard");
    let builder = if private {
        builder
    } else {
        builder.dns_resolver(Arc::new(PublicOnly))
    };
    builder
        .build()
        .expect("an HTTP client without custom roots builds")
}

/// The node's client for request URLs under the policy, made at first use.
pub fn shared_client(private: bool) -> reqwest::Client {
    static PUBLIC: std::sync::LazyLock<reqwest::Client> =
        std::sync::LazyLock::new(|| client(false));
    static ANY: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| client(true));
    if private {
        ANY.clone()
    } else {
        PUBLIC.clone()
    }
}

/// Whether `url`'s host is an address (not a name) that is not public: refused outright with
/// `webapp.private_request_urls` off (a name is checked at each connection instead).
fn literal_private(url: &str) -> bool {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
        _ => false,
    }
}

/// POSTs `body` to `url`, signed with `secret`, with `extra` headers; the answer's status,
/// headers and body, or why there was none (`http_timeout` or `connection_failed`).
async fn signed_post(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    body: Vec<u8>,
    extra: &[(&str, String)],
    timeout: Duration,
) -> Result<reqwest::Response, &'static str> {
    let ts = unix_now();
    let mut req = http
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Slack-Request-Timestamp", ts.to_string())
        .header("X-Slack-Signature", signature(secret, ts, &body));
    for (name, value) in extra {
        req = req.header(*name, value);
    }
    req.body(body).send().await.map_err(|e| {
        if e.is_timeout() {
            "http_timeout"
        } else {
            "connection_failed"
        }
    })
}

/// Sends Slack's `url_verification` challenge to `url`, signed with `sub`'s secret: `Ok` when
/// the answer is `2xx` and gives the challenge back (as the body itself, or its JSON's
/// `challenge`, as Slack takes either), else what went wrong, for the caller.
pub async fn verify_url(
    http: &reqwest::Client,
    url: &str,
    sub: &EventSubscription,
) -> Result<(), String> {
    let challenge = new_secret();
    let body = json!({
        "token": sub.verification_token,
        "challenge": challenge,
        "type": "url_verification",
    });
    let resp = signed_post(
        http,
        url,
        &sub.signing_secret,
        body.to_string().into_bytes(),
        &[],
        VERIFY_TIMEOUT,
    )
    .await
    .map_err(|why| match why {
        "http_timeout" => format!("no answer within {} s", VERIFY_TIMEOUT.as_secs()),
        _ => "could not connect".to_string(),
    })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("answered HTTP {}", status.as_u16()));
    }
    // Read no more than a challenge's answer needs: a URL may answer with anything.
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|_| "the answer could not be read".to_string())?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_CHALLENGE_ANSWER {
            return Err("the answer did not give the challenge back".to_string());
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    let given = serde_json::from_str::<Value>(text).ok().and_then(|v| {
        v.get("challenge")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    if text == challenge || given.as_deref() == Some(challenge.as_str()) {
        Ok(())
    } else {
        Err("the answer did not give the challenge back".to_string())
    }
}

/// Starts this node's deliveries: every `poll` it reads the subscriptions and keeps one
/// Socket Mode connection per subscribed app (a changed URL or secret restarts the app's),
/// until `shutdown`.
///
/// A URL that fails more than 95 % of its tries for `failure_window` is disabled (`None`:
/// never); a disabled subscription is not run until it is set again.
pub fn spawn(
    state: AppState,
    poll: Duration,
    failure_window: Option<Duration>,
    shutdown: Shutdown,
) {
    tokio::spawn(async move {
        let private = state.private_request_urls;
        let http = shared_client(private);
        // Refused URLs (set while private addresses were allowed), each told once.
        let mut refused: HashSet<String> = HashSet::new();
        let mut running: HashMap<String, (EventSubscription, Shutdown)> = HashMap::new();
        let mut polled = PolledSet::new(RecordKind::EventSubscriptions);
        let mut every = Every::new(poll, shutdown.clone());
        while every.next().await {
            let set = match polled.look(&state.store).await {
                Ok((set, true)) => set,
                // Unchanged since the last look: so are the apps to run.
                Ok((_, false)) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the event subscriptions; trying again later");
                    continue;
                }
            };
            let mut wanted = HashMap::new();
            let mut to_disable = Vec::new();
            for (id, record) in &set.records {
                let id = id.clone();
                match serde_json::from_str::<EventSubscription>(record) {
                    // Secrets made before any URL was set: nothing to send yet.
                    Ok(sub) if sub.request_url.is_empty() => {}
                    // Disabled (failing, or refused below): nothing until the app sets its URL
                    // again.
                    Ok(sub) if sub.disabled.is_some() => {}
                    // Set while private addresses were allowed: disabled, so that the app
                    // sees why its events stopped (`apps.eventSubscriptions.info`).
                    Ok(sub) if !private && literal_private(&sub.request_url) => {
                        if refused.insert(sub.request_url.clone()) {
                            m::EVENTS_HTTP.with_label_values(&["refused_address"]).inc();
                            tracing::warn!(id, url = sub.request_url, "an app's request URL is not a public address and webapp.private_request_urls is off; its events are not sent, its subscription is disabled");
                        }
                        to_disable.push(sub);
                    }
                    Ok(sub) => {
                        wanted.insert(id, sub);
                    }
                    Err(e) => {
                        m::EVENTS_HTTP.with_label_values(&["unreadable"]).inc();
                        tracing::warn!(id, error = %e, "an event subscription is unreadable; skipped");
                    }
                }
            }
            for sub in to_disable {
                let reason = "the request URL is not a public address, and \
                              webapp.private_request_urls is off"
                    .to_string();
                match crate::methods::apps::disable(&state, &sub, reason).await {
                    Ok(true) => m::EVENT_SUBSCRIPTIONS
                        .with_label_values(&["disabled"])
                        .inc(),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(app = %sub.user, error = %e, "could not disable a refused request URL; trying again at the next look");
                        // Read the set again next time, though it did not change.
                        polled.forget();
                    }
                }
            }
            running.retain(|id, (sub, stop)| {
                let keep = wanted.get(id) == Some(sub);
                if !keep {
                    stop.trigger();
                }
                keep
            });
            for (id, sub) in wanted {
                if running.contains_key(&id) {
                    continue;
                }
                let stop = Shutdown::new();
                tokio::spawn(run_app(
                    state.clone(),
                    http.clone(),
                    sub.clone(),
                    failure_window,
                    stop.clone(),
                    shutdown.clone(),
                ));
                running.insert(id, (sub, stop));
            }
            m::EVENTS_HTTP_APPS.set(running.len() as i64);
        }
        for (_, (_, stop)) in running {
            stop.trigger();
        }
    });
}

/// One app's deliveries from this node, until `stop` or `shutdown`: its Socket Mode session,
/// opened again whenever it ends.
async fn run_app(
    state: AppState,
    http: reqwest::Client,
    sub: EventSubscription,
    failure_window: Option<Duration>,
    stop: Shutdown,
    shutdown: Shutdown,
) {
    let sub = Arc::new(sub);
    let failures = Arc::new(Mutex::new(Failures::default()));
    let health =
        failure_window.map(|window| Arc::new(Mutex::new(UrlHealth::new(window, Instant::now()))));
    let mut backoff = Duration::from_millis(250);
    loop {
        let session = app_session(&state, &http, &sub, &failures, &health);
        let ended = tokio::select! {
            _ = stop.wait() => return,
            _ = shutdown.wait() => return,
            ended = session => ended,
        };
        match ended {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(e) => {
                m::EVENTS_HTTP.with_label_values(&["session_failed"]).inc();
                tracing::debug!(app = %sub.user, error = %e, "event delivery session ended");
            }
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The last failure of each of an app's recent events, by `event_id`.
#[derive(Default)]
struct Failures {
    reasons: HashMap<String, &'static str>,
    order: VecDeque<String>,
}

impl Failures {
    fn record(&mut self, event_id: &str, reason: &'static str) {
        if self.reasons.insert(event_id.to_string(), reason).is_none() {
            self.order.push_back(event_id.to_string());
            if self.order.len() > FAILURES_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.reasons.remove(&old);
                }
            }
        }
    }

    fn take(&mut self, event_id: &str) -> Option<&'static str> {
        self.reasons.remove(event_id)
    }
}

/// An app's tries from this node over the last `window`, counted in slices of it, to tell a
/// request URL that fails nearly everything (which Slack disables) from one that has a bad
/// minute.
struct UrlHealth {
    window: Duration,
    /// When this node began to send the app events: a verdict needs a whole window watched.
    since: Instant,
    /// `(start, tries, failures)` of each slice with tries, oldest first.
    slices: VecDeque<(Instant, u32, u32)>,
    /// A verdict was given (and not taken back): one is enough.
    tripped: bool,
}

impl UrlHealth {
    fn new(window: Duration, now: Instant) -> UrlHealth {
        UrlHealth {
            window,
            since: now,
            slices: VecDeque::new(),
            tripped: false,
        }
    }

    /// Counts one try at `now`.
    fn record(&mut self, now: Instant, failed: bool) {
        let width = self.window / HEALTH_SLICES;
        match self.slices.back_mut() {
            Some((start, tries, failures)) if now.saturating_duration_since(*start) < width => {
                *tries += 1;
                *failures += u32::from(failed);
            }
            _ => self.slices.push_back((now, 1, u32::from(failed))),
        }
        self.forget_before(now);
    }

    fn forget_before(&mut self, now: Instant) {
        while self
            .slices
            .front()
            .is_some_and(|(start, ..)| now.saturating_duration_since(*start) > self.window)
        {
            self.slices.pop_front();
        }
    }

    /// Why the URL should be disabled, once: when this node has watched it for a whole window
    /// and more than 95 % of at least [`MIN_TRIES_TO_DISABLE`] tries in it failed.
    fn verdict(&mut self, now: Instant) -> Option<String> {
        if self.tripped || now.saturating_duration_since(self.since) < self.window {
            return None;
        }
        self.forget_before(now);
        let (tries, failures) = self
            .slices
            .iter()
            .fold((0u64, 0u64), |(t, f), (_, tries, failures)| {
                (t + u64::from(*tries), f + u64::from(*failures))
            });
        if tries < u64::from(MIN_TRIES_TO_DISABLE) || failures * 100 <= tries * 95 {
            return None;
        }
        self.tripped = true;
        Some(format!(
            "the request URL failed {failures} of the {tries} tries to send it an event in the \
             last {} s",
            self.window.as_secs()
        ))
    }

    /// Takes a verdict back (it could not be kept): the next failure may give it again.
    fn untrip(&mut self) {
        self.tripped = false;
    }
}

/// One Socket Mode session of the app: connects, then POSTs each envelope's payload and
/// acknowledges it when the app took it. `Ok` when the gateway asked for a new connection
/// (`disconnect`) or closed this one.
async fn app_session(
    state: &AppState,
    http: &reqwest::Client,
    sub: &Arc<EventSubscription>,
    failures: &Arc<Mutex<Failures>>,
    health: &Option<Arc<Mutex<UrlHealth>>>,
) -> anyhow::Result<()> {
    let user = state
        .store
        .user(&sub.user)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the app's user is gone"))?;
    anyhow::ensure!(
        user.workspace == sub.workspace,
        "the app's user is of another workspace"
    );
    anyhow::ensure!(!user.deleted, "the app's user is deactivated");
    let token = state.signer.issue(&Claims {
        workspace: sub.workspace.clone(),
        user: sub.user.clone(),
        admin: false,
        bot: user.is_bot,
        issued_at: unix_now(),
        service: false,
    });
    let gateway = state
        .gateway_for_app(&sub.user.0)
        .await
        .ok_or_else(|| anyhow::anyhow!("no gateway is configured"))?;
    let sep = if gateway.contains('?') { '&' } else { '?' };
    let token: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let url = format!("{gateway}{sep}token={token}&mode=socket");
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let (mut sink, mut stream) = ws.split();
    // Unbounded, so that a delivery never waits to hand its acknowledgement over while it
    // holds one of the permits the reading below may be waiting for; at most
    // IN_FLIGHT_PER_APP deliveries run, each sends one.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<String>();
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_PER_APP));
    // Acknowledgements go out first and at once, also while every delivery slot is taken:
    // one held back past the gateway's three seconds would bring its event again.
    loop {
        let permit = tokio::select! {
            biased;
            Some(envelope_id) = ack_rx.recv() => {
                sink.send(ack(envelope_id)).await?;
                continue;
            }
            permit = in_flight.clone().acquire_owned() => permit?,
        };
        let frame = loop {
            tokio::select! {
                biased;
                Some(envelope_id) = ack_rx.recv() => sink.send(ack(envelope_id)).await?,
                frame = stream.next() => break frame,
            }
        };
        let text = match frame {
            None | Some(Ok(WsMessage::Close(_))) => return Ok(()),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(WsMessage::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        let Ok(envelope) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match envelope["type"].as_str() {
            Some("disconnect") => return Ok(()),
            Some("events_api") => {}
            _ => continue,
        }
        let (state, http, sub, failures, health, ack_tx) = (
            state.clone(),
            http.clone(),
            sub.clone(),
            failures.clone(),
            health.clone(),
            ack_tx.clone(),
        );
        tokio::spawn(async move {
            let (envelope_id, failed) = deliver(&http, &sub, &failures, envelope).await;
            if let Some(envelope_id) = envelope_id {
                let _ = ack_tx.send(envelope_id);
            }
            drop(permit);
            if let (Some(health), Some(failed)) = (health, failed) {
                judge(&state, &sub, &health, failed).await;
            }
        });
    }
}

/// Counts a try of `sub`'s URL and disables the subscription when [`UrlHealth`] says so. The
/// nodes stop its deliveries when they next read the subscriptions.
async fn judge(state: &AppState, sub: &EventSubscription, health: &Mutex<UrlHealth>, failed: bool) {
    let verdict = {
        let mut health = health.lock().expect("health");
        let now = Instant::now();
        health.record(now, failed);
        health.verdict(now)
    };
    let Some(reason) = verdict else {
        return;
    };
    match crate::methods::apps::disable(state, sub, reason.clone()).await {
        Ok(true) => {
            m::EVENT_SUBSCRIPTIONS
                .with_label_values(&["disabled"])
                .inc();
            tracing::warn!(app = %sub.user, url = sub.request_url, reason, "an app's request URL keeps failing its events; its subscription is disabled until the URL is set again");
        }
        // Set again, deleted or disabled elsewhere meanwhile: this node's deliveries stop or
        // start over when it next reads the subscriptions.
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(app = %sub.user, error = %e, "could not disable a failing request URL; trying again at its next failure");
            health.lock().expect("health").untrip();
        }
    }
}

fn ack(envelope_id: String) -> WsMessage {
    WsMessage::text(json!({ "envelope_id": envelope_id }).to_string())
}

/// POSTs one envelope's payload: its `envelope_id` when the app took it (or asked for no
/// retry), `None` to leave it for the gateway to send again; and whether the try failed
/// (`None` when nothing was tried).
async fn deliver(
    http: &reqwest::Client,
    sub: &EventSubscription,
    failures: &Mutex<Failures>,
    envelope: Value,
) -> (Option<String>, Option<bool>) {
    let Some(envelope_id) = envelope["envelope_id"].as_str().map(str::to_string) else {
        return (None, None);
    };
    let mut payload = envelope["payload"].clone();
    payload["token"] = Value::String(sub.verification_token.clone());
    let event_id = payload["event_id"].as_str().unwrap_or_default().to_string();
    let attempt = envelope["retry_attempt"].as_u64().unwrap_or(0);
    let mut extra = Vec::new();
    let last_failure = failures.lock().expect("failures").take(&event_id);
    if attempt > 0 {
        extra.push(("X-Slack-Retry-Num", attempt.to_string()));
        extra.push((
            "X-Slack-Retry-Reason",
            last_failure.unwrap_or("http_timeout").to_string(),
        ));
    }
    let body = payload.to_string().into_bytes();
    let started = std::time::Instant::now();
    let outcome = match signed_post(
        http,
        &sub.request_url,
        &sub.signing_secret,
        body,
        &extra,
        POST_TIMEOUT,
    )
    .await
    {
        Ok(resp) if resp.status().is_success() => Ok("delivered"),
        Ok(resp)
            if resp
                .headers()
                .get("X-Slack-No-Retry")
                .is_some_and(|v| v.as_bytes() == b"1") =>
        {
            Ok("refused_no_retry")
        }
        Ok(_) => Err("http_error"),
        Err(why) => Err(why),
    };
    m::EVENTS_HTTP_SECONDS.observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(label) => {
            m::EVENTS_HTTP.with_label_values(&[label]).inc();
            (Some(envelope_id), Some(false))
        }
        Err(reason) => {
            m::EVENTS_HTTP.with_label_values(&[reason]).inc();
            failures.lock().expect("failures").record(&event_id, reason);
            (None, Some(true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_slacks() {
        // The example of Slack's "Verifying requests from Slack" guide.
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            signature(secret, 1531420618, body),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }

    #[test]
    fn request_urls_are_http_with_a_host() {
        assert_eq!(
            valid_request_url(" https://bot.example.com/slack/events "),
            Some("https://bot.example.com/slack/events".to_string())
        );
        assert!(valid_request_url("http://127.0.0.1:3000/slack/events").is_some());
        for bad in [
            "",
            "bot.example.com/events",
            "ftp://bot.example.com/",
            "https://",
            "http://bot.example.com/#frag",
            "javascript:alert(1)",
        ] {
            assert_eq!(valid_request_url(bad), None, "{bad}");
        }
        let long = format!("https://bot.example.com/{}", "a".repeat(MAX_URL));
        assert_eq!(valid_request_url(&long), None);
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.19.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!is_public(ip), "{private} is not public");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "198.20.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public(ip), "{public} is public");
        }
    }

    #[tokio::test]
    async fn private_request_urls_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:3000/slack/events",
            "http://[::1]:3000/events",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.7/events",
            "http://localhost:3000/events",
        ] {
            let why = address_allowed(url, false).await.unwrap_err();
            assert!(why.contains("webapp.private_request_urls"), "{url}: {why}");
            assert!(address_allowed(url, true).await.is_ok(), "{url}");
        }
        assert!(literal_private("http://127.0.0.1:1/"));
        assert!(literal_private("http://[fe80::1]/"));
        assert!(!literal_private("http://localhost:1/"));
        assert!(!literal_private("https://1.1.1.1/"));
    }

    /// The client of the public-only policy resolves names itself and refuses to connect to
    /// a name whose addresses are all private, at the connection: what a name that resolved
    /// elsewhere when the URL was set (DNS rebinding) meets.
    #[tokio::test]
    async fn the_public_only_client_does_not_connect_to_private_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
        let url = format!("http://localhost:{port}/events");
        let refused = client(false).post(&url).send().await;
        assert!(refused.is_err(), "connected to loopback: {refused:?}");
        let allowed = client(true)
            .post(&url)
            .send()
            .await
            .expect("loopback allowed");
        assert_eq!(allowed.status(), 200);
    }

    #[test]
    fn secrets_are_fresh_hex() {
        let (a, b) = (new_secret(), new_secret());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn an_app_remembers_a_bounded_number_of_failures() {
        let mut f = Failures::default();
        for i in 0..FAILURES_KEPT + 10 {
            f.record(&format!("Ev{i}"), "http_error");
        }
        assert_eq!(f.reasons.len(), FAILURES_KEPT);
        assert_eq!(f.take("Ev0"), None, "the oldest was forgotten");
        let last = format!("Ev{}", FAILURES_KEPT + 9);
        assert_eq!(f.take(&last), Some("http_error"));
        assert_eq!(f.take(&last), None, "taken once");
    }

    #[test]
    fn a_url_is_judged_failing_only_over_a_whole_window_of_enough_tries() {
        let hour = Duration::from_secs(3600);
        let min = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut h = UrlHealth::new(hour, t0);
        // Everything fails from the start, but no verdict before an hour was watched.
        for i in 0..30 {
            h.record(t0 + i * min, true);
            assert_eq!(h.verdict(t0 + i * min), None, "minute {i}");
        }
        // Fewer than the fewest tries in the last hour: none either.
        let mut quiet = UrlHealth::new(hour, t0);
        for i in 0..MIN_TRIES_TO_DISABLE - 1 {
            quiet.record(t0 + hour + i * min, true);
        }
        assert_eq!(quiet.verdict(t0 + hour + 10 * min), None);
        quiet.record(t0 + hour + 10 * min, true);
        assert!(quiet.verdict(t0 + hour + 10 * min).is_some());

        // Watched for an hour, every try of it failed: disabled, said once.
        let at = t0 + hour + min;
        h.record(at, true);
        let why = h.verdict(at).expect("failing for an hour");
        // The try of minute 0 is more than an hour old by now.
        assert!(why.contains("30 of the 30 tries"), "{why}");
        assert_eq!(h.verdict(at), None, "once");
        h.untrip();
        assert!(h.verdict(at).is_some(), "again once taken back");

        // Exactly 95 % failed is not more than 95 %.
        let mut edge = UrlHealth::new(hour, t0);
        for i in 0..20 {
            edge.record(t0 + hour + i * Duration::from_secs(1), i != 0);
        }
        assert_eq!(edge.verdict(t0 + hour + min), None);
        edge.record(t0 + hour + min, true);
        assert!(edge.verdict(t0 + hour + min).is_some(), "20 of 21");

        // A bad quarter of an hour in a good hour: kept.
        let mut bad_spell = UrlHealth::new(hour, t0);
        for i in 0..60 {
            bad_spell.record(t0 + i * min, (20..35).contains(&i));
        }
        assert_eq!(bad_spell.verdict(t0 + hour), None);
        // Failures older than the window are forgotten: an hour later, only the last
        // hour's tries count (all good).
        for i in 0..12 {
            bad_spell.record(t0 + hour + i * 5 * min, false);
        }
        let later = t0 + 2 * hour;
        assert_eq!(bad_spell.verdict(later), None);
        let (tries, failures) = bad_spell
            .slices
            .iter()
            .fold((0, 0), |(t, f), (_, tries, failures)| {
                (t + tries, f + failures)
            });
        assert_eq!(failures, 0, "the old failures are gone");
        assert!((12..=13).contains(&tries), "{tries}");
    }
}
