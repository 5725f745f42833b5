//! The gateway: holds client WebSocket sessions at the edge.
//!
//! A client connects to `/rtm?token=…` (or with `Authorization: Bearer …`), optionally with
//! `resume=C1:41,C2:7` (the last `seq` it saw per channel). The gateway verifies the token
//! locally, asks the Web API which channels the user is in, subscribes each channel once at
//! its owning channel server (shared by all local sessions), and writes every message to each
//! session in order with contiguous `seq`.
//!
//! # Layout
//! - [`boot`]: `hello`'s boot data from the Flannel that holds the workspace.
//! - [`hub`]: channels, sessions, subscription streams to channel servers, gap filling.
//! - [`session`]: one WebSocket session (RTM events, resume, ping, bounded queue).
//! - [`rtm_post`]: messages clients send over RTM, posted through the Web API.
//! - [`metrics`]: Prometheus metrics.
//!
//! # Invariants
//! - Per-channel order: a session receives a channel's messages in `seq` order, each once.
//! - One slow session never slows the others: its queue is bounded; on overflow it is told to
//!   resync (`resync_required`, close 4008) and a metric counts it.
//! - Ring changes re-subscribe moved channels at their new owner, filling any gap, without
//!   closing client sockets.

pub mod admission;
pub mod boot;
pub mod hub;
pub mod metrics;
pub mod queue;
pub mod rtm_post;
pub mod session;
pub mod socket_mode;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use shared::auth::TokenSigner;
use shared::config::Config;
use shared::ids::{ChannelId, NodeId, Seq};
use shared::membership::{follow_admin, NodeHello};
use shared::mesh::{Mesh, MeshTls, PeerPool};
use shared::protocol::Role;
use shared::ring::Ring;
use shared::shutdown::Shutdown;
use shared::telemetry::Health;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::hub::Hub;
use crate::metrics as m;

pub struct GatewayDeps {
    pub signer: TokenSigner,
    pub tls: MeshTls,
    pub health: Health,
}

struct AppState {
    hub: Arc<Hub>,
    signer: TokenSigner,
    http: reqwest::Client,
    config: Config,
    shutdown: Shutdown,
    sessions: Arc<tokio::sync::Semaphore>,
    /// The pace of new sessions (`gateway.max_new_sessions_per_second`).
    admission: admission::Admission,
    /// Where `hello`'s boot data comes from (`gateway.flannel_urls`).
    boot: boot::BootSource,
    /// Where messages sent over RTM are posted (`gateway.webapp_url`).
    web_api: Arc<rtm_post::WebApi>,
    /// Where the sessions run.
    threads: Arc<shared::threads::TaskThreads>,
}

/// Runs a gateway until `shutdown`: WebSockets, `/metrics` and `/health` on `http`.
pub async fn run(
    config: Config,
    node: NodeId,
    http: tokio::net::TcpListener,
    deps: GatewayDeps,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let bind: std::net::SocketAddr = if config.mesh.admin_addr.ip().is_loopback() {
        "127.0.0.1:0".parse().expect("literal address")
    } else {
        "0.0.0.0:0".parse().expect("literal address")
    };
    let mesh = Arc::new(
        Mesh::client(
            bind,
            &deps.tls,
            config.mesh.max_frame_bytes,
            Duration::from_millis(config.mesh.connect_timeout_ms),
        )
        .context("failed to start gateway mesh endpoint")?,
    );
    let pool = Arc::new(PeerPool::new(mesh.clone()));
    let (ring_tx, ring_rx) = watch::channel(Arc::new(Ring::empty()));
    let (user_tx, mut user_rx) = mpsc::channel(1024);
    let (connected_tx, mut connected_rx) = watch::channel(false);
    // What serves the sessions (the ring, membership events, the channel servers' streams)
    // stops after the last session was told goodbye, not at the signal: the goodbyes may be
    // spread over `gateway.goodbye_spread_ms`, and each session is served until its own.
    let serving = Shutdown::new();
    tokio::spawn(follow_admin(
        pool.clone(),
        config.mesh.admin_addr,
        NodeHello {
            node: node.clone(),
            role: Role::Gateway,
            mesh_addr: String::new(),
        },
        ring_tx,
        Some(user_tx),
        connected_tx,
        serving.clone(),
    ));
    // Sessions get their own shutdown: they say goodbye before the listener closes.
    let sessions_shutdown = Shutdown::new();
    let hub = Hub::new(
        node.clone(),
        pool,
        ring_rx,
        Duration::from_micros(config.gateway.coalesce_us),
        serving.clone(),
    );
    hub.set_admin_addr(config.mesh.admin_addr);
    tokio::spawn(hub.clone().reconcile_loop());
    tokio::spawn(hub.clone().release_loop());
    {
        let hub = hub.clone();
        tokio::spawn(async move {
            while let Some(ev) = user_rx.recv().await {
                hub.on_user_event(ev);
            }
        });
    }
    let web_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("http client")?;
    {
        let health = deps.health.clone();
        let shutdown = shutdown.clone();
        let hub_for_presence = hub.clone();
        let resync = Resync {
            http: web_client.clone(),
            webapp_url: config.gateway.webapp_url.clone(),
            signer: deps.signer.clone(),
        };
        tokio::spawn(async move {
            let mut was_connected = false;
            loop {
                let connected = *connected_rx.borrow_and_update();
                health.set_ready(connected);
                if connected && !was_connected {
                    // The admin server may have restarted: tell it who is online here.
                    hub_for_presence.report_all_online();
                    // And while the stream was down (it fell behind, or the admin server
                    // restarted) membership changes were lost: ask the Web API instead.
                    tokio::spawn(resync.clone().run(hub_for_presence.clone()));
                }
                was_connected = connected;
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => { health.set_ready(false); break; }
                    changed = connected_rx.changed() => if changed.is_err() {
                        // The admin link is gone for good (it ends at shutdown): not ready.
                        health.set_ready(false);
                        break;
                    },
                }
            }
        });
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let session_thread_count = config.gateway.session_threads.resolve(cores);
    tracing::info!(
        session_threads = session_thread_count,
        cores,
        "gateway sessions run on {}",
        if session_thread_count == 0 {
            "the shared runtime"
        } else {
            "threads of their own"
        }
    );
    let session_threads = Arc::new(
        // No reactor of their own: the sessions' sockets were accepted here, and what a session
        // starts that opens connections runs on the hub's runtime (`Hub::spawn`).
        shared::threads::TaskThreads::start(session_thread_count, "gw-sessions", false)
            .context("session threads")?,
    );
    let state = Arc::new(AppState {
        threads: session_threads.clone(),
        hub,
        signer: deps.signer.clone(),
        web_api: Arc::new(rtm_post::WebApi::new(
            web_client.clone(),
            &config.gateway.webapp_url,
            deps.signer.clone(),
        )),
        http: web_client,
        sessions: Arc::new(tokio::sync::Semaphore::new(config.gateway.max_sessions)),
        admission: admission::Admission::new(config.gateway.max_new_sessions_per_second),
        config: config.clone(),
        shutdown: sessions_shutdown.clone(),
        boot: boot::BootSource::new(&config.gateway.flannel_urls).context("flannel http client")?,
    });
    let app = Router::new()
        .route("/rtm", get(rtm))
        .route("/", get(rtm))
        .with_state(state)
        .merge(shared::telemetry::ops_router(
            "gateway",
            deps.health.clone(),
        ));
    let addr = http.local_addr()?;
    tracing::info!(%node, %addr, "gateway running");
    let graceful = {
        let shutdown = shutdown.clone();
        let spread = Duration::from_millis(config.gateway.goodbye_spread_ms);
        let drain = Duration::from_millis(config.gateway.drain_ms);
        async move {
            shutdown.wait().await;
            // Ordered shutdown: tell every session goodbye first (each at its point of the
            // spread), then stop the listener.
            sessions_shutdown.trigger();
            tracing::info!(
                spread_ms = spread.as_millis() as u64,
                "gateway stopping: telling its sessions goodbye"
            );
            tokio::time::sleep(spread + drain).await;
        }
    };
    // Each session's writes are batched already; Nagle would hold a batch behind the last.
    axum::serve(shared::listen::without_nagle(http), app)
        .with_graceful_shutdown(graceful)
        .await
        .context("gateway server")?;
    serving.trigger();
    mesh.close();
    // The sessions were told goodbye: what still runs on their threads ends with them.
    drop(session_threads);
    Ok(())
}

fn reject(status: StatusCode, error: &'static str) -> Response {
    m::REJECTED.with_label_values(&[error]).inc();
    (
        status,
        Json(serde_json::json!({ "ok": false, "error": error })),
    )
        .into_response()
}

/// Parses `C1:41,C2:7`.
fn parse_resume(s: &str) -> Option<BTreeMap<ChannelId, Seq>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (c, seq) = part.split_once(':')?;
        out.insert(ChannelId::parse(c)?, seq.parse().ok()?);
    }
    Some(out)
}

/// Why the Web API did not list a user's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListError {
    Unreachable,
    BadAnswer,
    Unauthorized,
    /// The token's user was deactivated.
    Inactive,
    /// The token was revoked (`auth.revoke`).
    Revoked,
    Refused,
}

/// The user's channels (id and name), from the Web API (`users.conversations`), all pages.
/// The user's conversations from the Web API's `users.conversations`: each one's id, name and
/// Events API `channel_type` (`channel`, `group`, `im` or `mpim`).
async fn list_channels(
    http: &reqwest::Client,
    webapp_url: &str,
    token: &str,
) -> Result<Vec<(ChannelId, String, &'static str)>, ListError> {
    let url = format!(
        "{}/api/users.conversations",
        webapp_url.trim_end_matches('/')
    );
    let mut channels = Vec::new();
    let mut cursor = String::new();
    for _ in 0..100 {
        let resp = http
            .post(&url)
            .bearer_auth(token)
            .form(&[
                ("types", "public_channel,private_channel,mpim,im"),
                ("limit", "1000"),
                ("cursor", cursor.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "web api unreachable");
                ListError::Unreachable
            })?;
        let body: serde_json::Value = resp.json().await.map_err(|_| ListError::BadAnswer)?;
        if body["ok"] != true {
            return Err(match body["error"].as_str() {
                Some("invalid_auth" | "not_authed") => ListError::Unauthorized,
                Some("account_inactive") => ListError::Inactive,
                Some("token_revoked") => ListError::Revoked,
                _ => ListError::Refused,
            });
        }
        for c in body["channels"].as_array().into_iter().flatten() {
            if let Some(id) = c["id"].as_str().and_then(ChannelId::parse) {
                let name = c["name"].as_str().unwrap_or_default().to_string();
                let flag = |f: &str| c[f] == true;
                let kind = if flag("is_im") {
                    "im"
                } else if flag("is_mpim") {
                    "mpim"
                } else if flag("is_private") {
                    "group"
                } else {
                    "channel"
                };
                channels.push((id, name, kind));
            }
        }
        cursor = body["response_metadata"]["next_cursor"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if cursor.is_empty() {
            return Ok(channels);
        }
    }
    Ok(channels)
}

/// The user's channels, for a connecting session.
async fn user_channels(
    state: &AppState,
    token: &str,
) -> Result<Vec<(ChannelId, &'static str)>, Response> {
    match list_channels(&state.http, &state.config.gateway.webapp_url, token).await {
        Ok(channels) => Ok(channels
            .into_iter()
            .map(|(id, _, kind)| (id, kind))
            .collect()),
        Err(ListError::Unreachable) => Err(reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "webapp_unavailable",
        )),
        Err(ListError::BadAnswer) => Err(reject(StatusCode::BAD_GATEWAY, "webapp_bad_answer")),
        Err(ListError::Unauthorized) => Err(reject(StatusCode::UNAUTHORIZED, "invalid_auth")),
        Err(ListError::Inactive) => Err(reject(StatusCode::UNAUTHORIZED, "account_inactive")),
        Err(ListError::Revoked) => Err(reject(StatusCode::UNAUTHORIZED, "token_revoked")),
        Err(ListError::Refused) => Err(reject(StatusCode::BAD_GATEWAY, "webapp_error")),
    }
}

/// Users whose channels are asked for at once in a resync.
const RESYNC_CONCURRENCY: usize = 8;
/// Tries per user when membership changes keep arriving while it is asked.
const RESYNC_TRIES: usize = 3;

/// Re-reads the channels of every user with sessions here from the Web API and applies what
/// changed ([`Hub::resync_user`]): run whenever the stream from the admin server (re)starts,
/// since membership events sent while it was down (the admin server restarted, or closed the
/// stream because this gateway fell behind) are never sent again.
#[derive(Clone)]
struct Resync {
    http: reqwest::Client,
    webapp_url: String,
    signer: TokenSigner,
}

impl Resync {
    async fn run(self, hub: Arc<Hub>) {
        use futures_util::StreamExt;
        let users = hub.users_here();
        if users.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let n = users.len();
        futures_util::stream::iter(users)
            .for_each_concurrent(RESYNC_CONCURRENCY, |(workspace, user)| {
                let (this, hub) = (&self, &hub);
                async move {
                    let result = this.user(hub, &workspace, &user).await;
                    m::MEMBERSHIP_RESYNCS.with_label_values(&[result]).inc();
                }
            })
            .await;
        tracing::info!(users = n, took = ?started.elapsed(), "channel memberships resynced from the web API");
    }

    /// Resyncs one user: "unchanged", "changed", "raced" (changes kept coming) or "failed".
    async fn user(
        &self,
        hub: &Arc<Hub>,
        workspace: &shared::ids::WorkspaceId,
        user: &shared::ids::UserId,
    ) -> &'static str {
        let claims = shared::auth::Claims {
            workspace: workspace.clone(),
            user: user.clone(),
            admin: false,
            bot: false,
            issued_at: shared::ids::Ts::now().0 / 1_000_000,
            service: false,
        };
        let token = self.signer.issue(&claims);
        for _ in 0..RESYNC_TRIES {
            let since = hub.membership_seq();
            let channels: Vec<(ChannelId, String, bool)> =
                match list_channels(&self.http, &self.webapp_url, &token).await {
                    Ok(c) => c
                        .into_iter()
                        .map(|(id, name, kind)| (id, name, kind != "channel"))
                        .collect(),
                    Err(e) => {
                        tracing::warn!(%user, error = ?e, "could not resync the user's channels");
                        return "failed";
                    }
                };
            match hub.resync_user(workspace, user, &channels, since) {
                None => continue,
                Some((0, 0)) => return "unchanged",
                Some((joined, left)) => {
                    m::MEMBERSHIP_RESYNC_CHANNELS
                        .with_label_values(&["joined"])
                        .inc_by(joined as u64);
                    m::MEMBERSHIP_RESYNC_CHANNELS
                        .with_label_values(&["left"])
                        .inc_by(left as u64);
                    tracing::info!(%user, joined, left, "a resync found missed membership changes");
                    return "changed";
                }
            }
        }
        "raced"
    }
}

async fn rtm(
    State(state): State<Arc<AppState>>,
    Query(params): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return reject(StatusCode::BAD_REQUEST, "websocket_upgrade_required");
    };
    let token = params.get("token").cloned().or_else(|| {
        headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(shared::auth::bearer)
            .map(str::to_string)
    });
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return reject(StatusCode::UNAUTHORIZED, "not_authed");
    };
    let Ok(claims) = state.signer.verify(&token) else {
        return reject(StatusCode::UNAUTHORIZED, "invalid_auth");
    };
    let resume = match params.get("resume") {
        Some(r) => match parse_resume(r) {
            Some(r) => r,
            None => return reject(StatusCode::BAD_REQUEST, "invalid_resume"),
        },
        None => BTreeMap::new(),
    };
    // `mode=socket`: Slack's Socket Mode framing ([`socket_mode`]); RTM otherwise.
    let socket_mode = match params.get("mode").map(String::as_str) {
        None | Some("" | "rtm") => false,
        Some("socket") => true,
        Some(_) => return reject(StatusCode::BAD_REQUEST, "invalid_mode"),
    };
    if state.shutdown.is_triggered() {
        // Stopping: the client is to connect to another gateway (and gets this until the
        // port closes, or the load balancer, seeing /health, stops sending it here).
        return reject(StatusCode::SERVICE_UNAVAILABLE, "gateway_draining");
    }
    if let Err(wait) = state.admission.admit(std::time::Instant::now()) {
        let mut refused = reject(StatusCode::SERVICE_UNAVAILABLE, "ratelimited");
        refused.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            admission::retry_after_secs(wait).into(),
        );
        return refused;
    }
    let Ok(permit) = state.sessions.clone().try_acquire_owned() else {
        return reject(StatusCode::SERVICE_UNAVAILABLE, "too_many_sessions");
    };
    // The boot data (from Flannel) is fetched while the Web API answers the channels.
    let (channels, boot) = tokio::join!(
        user_channels(&state, &token),
        state.boot.fetch(&claims.workspace, &token)
    );
    let (channels, channel_types): (Vec<ChannelId>, HashMap<ChannelId, &'static str>) =
        match channels {
            // Only Socket Mode sends `channel_type`: an RTM session keeps no map.
            Ok(c) if socket_mode => (
                c.iter().map(|(id, _)| id.clone()).collect(),
                c.into_iter().collect(),
            ),
            Ok(c) => (c.into_iter().map(|(id, _)| id).collect(), HashMap::new()),
            Err(r) => return r,
        };
    let g = &state.config.gateway;
    let session_params = Box::new(session::SessionParams {
        claims,
        channels,
        resume,
        queue: g.session_queue,
        ping_interval: Duration::from_millis(g.ping_interval_ms),
        idle_timeout: Duration::from_millis(g.idle_timeout_ms),
        goodbye_spread: Duration::from_millis(g.goodbye_spread_ms),
        boot,
        web_api: state.web_api.clone(),
        presence_sub: params
            .get("presence_sub")
            .is_some_and(|v| matches!(v.as_str(), "1" | "true")),
        socket_mode,
        channel_types,
    });
    // What the session needs, in one box: the upgrade callback and its future each keep their
    // captures for the session's whole life, so they capture a pointer.
    let start = Box::new((
        state.hub.clone(),
        session_params,
        state.shutdown.clone(),
        permit,
        state.threads.clone(),
    ));
    // tungstenite's default 128 KiB read buffer per session (zero-filled before each read)
    // dominated idle memory and fan-out CPU. What clients send is small (pings, typing,
    // resume), so 512 bytes suffice; a larger frame still fits (the buffer grows up to the
    // frame limit), it just takes more reads. Every idle session holds this buffer.
    ws.read_buffer_size(512)
        .write_buffer_size(8 * 1024)
        .max_message_size(g.max_client_frame_bytes)
        .max_frame_size(g.max_client_frame_bytes)
        .on_failed_upgrade(|e| {
            m::REJECTED.with_label_values(&["upgrade_failed"]).inc();
            tracing::info!(error = %e, "websocket upgrade failed");
        })
        .on_upgrade(move |socket| async move {
            let (hub, session_params, shutdown, permit, threads) = *start;
            let span = tracing::info_span!(
                "session",
                user = %session_params.claims.user,
                workspace = %session_params.claims.workspace
            );
            match threads.place() {
                Some(place) => {
                    place.spawn(|held| {
                        session::run(hub, socket, session_params, shutdown, (permit, held))
                            .instrument(span)
                    });
                }
                None => {
                    session::run(hub, socket, session_params, shutdown, permit)
                        .instrument(span)
                        .await
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_points_parse() {
        let r = parse_resume("CAAA:4,CBBB:0").unwrap();
        assert_eq!(r[&ChannelId::from("CAAA")], 4);
        assert_eq!(r[&ChannelId::from("CBBB")], 0);
        assert!(parse_resume("").unwrap().is_empty());
        assert!(parse_resume("CAAA").is_none());
        assert!(parse_resume("CAAA:x").is_none());
        assert!(parse_resume("zzz:1").is_none());
    }
}
