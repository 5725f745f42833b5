//! The Web API: Switchboard's Slack-style HTTP methods (`POST|GET /api/<method>`). It owns
//! authentication of API calls, workspaces, users, channels and memberships (in the store),
//! history reads, and the entry of persisted messages into the mesh: `chat.postMessage`
//! validates a post and hands it to the admin server, which routes it to the channel's owner.
//!
//! # Layout
//! - [`api`]: the router, parameters (query string, JSON or form body), tokens, the
//!   [`ApiError`] enum with Slack's error names, the answer envelope.
//! - [`methods`]: one module per method family (`auth`, `team`, `conversations`, `chat`,
//!   `users`, `internal` (service tokens only: Flannel's snapshot)) and
//!   the Slack object shapes they share.
//! - [`admin_link`]: requests to the admin server over the QUIC mesh, with retries.
//! - [`relay`]: relays stored changes (memberships, profiles, channels, read positions)
//!   through the admin server before a call answers, bounded in time.
//! - [`ratelimit`]: per-user, per-tier token buckets behind Slack's `ratelimited`.
//! - [`hooks`]: incoming webhooks (`POST /hooks/<token>`) and the `hooks.create` method.
//! - [`openapi`]: the OpenAPI description of the Web API (`/api/openapi.json`, checked in
//!   as `webapp-api/openapi.json`).
//! - [`seed`]: workspace and user administration for the CLI, and the idempotent dev seed.
//! - [`metrics`]: Prometheus metrics of the crate.
//!
//! # Invariants kept here
//! - Workspace isolation: every channel and user a call names is checked to belong to the
//!   caller's workspace, and one of another workspace answers `channel_not_found` or
//!   `user_not_found`, exactly like one that does not exist. Private channels are invisible
//!   to non-members the same way.
//! - A token is trusted only when its signature verifies *and* its user exists in the
//!   workspace it names.
//! - Acknowledged means durable: `chat.postMessage` answers `ok` only after the owning channel
//!   server acknowledged the append; a retry with the same `client_msg_id` (same user, text
//!   and thread) answers the stored message, and the id reused by another user or for another
//!   request answers `client_msg_id_conflict` rather than dropping the new text.
//! - Bad input gets a Slack-style `{"ok":false,"error":…}` (400 for an unreadable body, 413
//!   over `webapp.max_body_bytes`, 404 for an unknown method), never a panic; no client value
//!   is unwrapped.
//! - A call that stores a change relays it before answering (so the client's next call comes
//!   after it), within a bounded time; what is not relayed is counted, never the call's
//!   failure.
//! - Metric labels come from a fixed set (known method names and error names), whatever the
//!   client sends.

pub mod admin_link;
pub mod api;
pub mod events_http;
pub mod hooks;
pub mod import;
pub mod methods;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod relay;
pub mod revocation;
pub mod scheduler;
pub mod search;
pub mod seed;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_extra;

use std::sync::Arc;

use anyhow::Context;
use shared::auth::TokenSigner;
use shared::config::Config;
use shared::shutdown::Shutdown;
use shared::store::SharedStore;
use shared::telemetry::Health;

pub use admin_link::{AdminLink, PostError};
pub use api::{router, ApiError, AppState};
pub use seed::{create_user, create_workspace, issue_token, seed_demo, UserKind};

/// What the Web API needs from the process that runs it.
pub struct WebappDeps {
    pub store: SharedStore,
    pub signer: TokenSigner,
    pub admin: AdminLink,
    pub health: Health,
}

/// Serves the Web API on `listener` until `shutdown`; sets health ready once serving, and
/// not ready while draining. In-flight calls finish before this returns.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    deps: WebappDeps,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let local_addr = listener
        .local_addr()
        .context("failed to read the web api listener's address")?;
    // Not ready while the store cannot take writes (its files removed under it, say).
    deps.health
        .add_check(shared::store::health_check(&deps.store));
    let state = AppState::new(
        deps.store,
        deps.signer,
        deps.admin,
        config.webapp.gateway_urls.clone(),
        config.webapp.max_body_bytes,
        local_addr,
    );
    let mut state = state;
    state.max_file_bytes = config.webapp.max_file_bytes;
    state.public_url = Some(&config.webapp.public_url)
        .filter(|u| !u.is_empty())
        .map(|u| format!("{}/", u.trim_end_matches('/')));
    // Every node learns each ring epoch; the Web API keeps it for `api.test`-style diagnostics
    // and future direct routing (posts go through the admin server today).
    let mut ring = state
        .admin
        .follow_ring(config.node_id("webapp"), shutdown.clone());
    state.ring = Some(ring.clone());
    tokio::spawn(async move {
        while ring.changed().await.is_ok() {
            let epoch = ring.borrow_and_update().epoch().0;
            metrics::RING_EPOCH.set(epoch as i64);
        }
    });
    let search_dir = config.node.data_dir.join("search");
    let search = Arc::new(search::Search::open(&search_dir, &state.store)?);
    search.spawn_indexers(&state.store, &shutdown);
    state.search = Some(search);
    state.private_request_urls = config.webapp.private_request_urls;
    state.rate_limiter = Arc::new(ratelimit::RateLimiter::new(
        config.webapp.rate_limit_per_minute,
        config.webapp.rate_limit_burst,
    ));
    scheduler::spawn(
        state.clone(),
        std::time::Duration::from_millis(config.webapp.scheduled_poll_ms),
        shutdown.clone(),
    );
    revocation::spawn(
        state.clone(),
        std::time::Duration::from_millis(config.webapp.records_poll_ms),
        shutdown.clone(),
    );
    events_http::spawn(
        state.clone(),
        std::time::Duration::from_millis(config.webapp.records_poll_ms),
        (config.webapp.events_failure_window_secs > 0)
            .then(|| std::time::Duration::from_secs(config.webapp.events_failure_window_secs)),
        shutdown.clone(),
    );
    methods::dnd::spawn_lapses(
        state.clone(),
        std::time::Duration::from_millis(config.webapp.records_poll_ms),
        shutdown.clone(),
    );
    let app = router(state, deps.health.clone());
    tracing::info!(addr = %local_addr, "web api serving");
    deps.health.set_ready(true);
    let health = deps.health.clone();
    let result = axum::serve(shared::listen::without_nagle(listener), app)
        .with_graceful_shutdown(async move {
            shutdown.wait().await;
            health.set_ready(false);
            tracing::info!("web api draining");
        })
        .await
        .context("web api server failed");
    deps.health.set_ready(false);
    result
}
