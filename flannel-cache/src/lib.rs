//! Flannel: the edge cache of client boot data.
//!
//! A Flannel holds, per workspace, its users and bots, channels, memberships (both ways),
//! read positions and user groups, in memory. A workspace is loaded lazily on its first query, from the Web
//! API's `internal.flannel.snapshot` (authorized by a service token Flannel mints with the
//! cluster secret), and kept fresh by the change events the admin server relays to every
//! node that follows it as `Role::Flannel` (`UserChanged`, `ChannelCreated`, `ChannelChanged`,
//! `ChannelJoined`, `ChannelLeft`, `ReadMarked`, and the `subteam_created` /
//! `subteam_updated` notices): a fresh cached answer is never older than
//! the delivery of the change's event (a stale one is answered only while it reloads).
//! Clients and gateways query it over HTTP: the boot call (sized to the user: only the users
//! it shares a channel with) and lookups by id or prefix, each answered from memory.
//!
//! # Layout
//! - [`workspace`]: one workspace's cached data, event application, the queries (pure).
//! - [`cache`]: the set of cached workspaces: single-flight lazy loads (at most
//!   `flannel.max_concurrent_loads` at once, with jittered backoff after a failure), events,
//!   staleness (stale copies answered while they reload; while the admin link is down, trusted
//!   for `flannel.disconnected_max_age_ms`), LRU eviction by `flannel.max_workspaces` and
//!   `flannel.max_cached_users`.
//! - [`loader`]: where workspaces load from (the Web API; a store for the benchmark).
//! - [`service`]: the queries with authentication, independent of HTTP.
//! - [`http`]: the HTTP routes; [`metrics`]: Prometheus metrics.
//!
//! # Invariants
//! - Freshness: every change the Web API makes is applied from its event (or queued behind a
//!   load under way); when the admin link drops, events may have been missed, so every cached
//!   workspace turns stale: its next use answers the copy at once and reloads it in the
//!   background, and the uses after that reload see the new copy.
//! - Loads cannot storm: a bounded number run at once, a failed one is not retried before its
//!   backoff (jittered, so Flannels that failed together do not retry together), and only a
//!   query for a workspace with no copy waits for one.
//! - The event task never waits for a workspace's lock while holding the cache's, so a long
//!   read of one workspace never stalls other workspaces' queries or the event stream.
//! - Memory is bounded by config; the least recently used workspaces leave first.
//! - Workspace isolation: a token answers only from its own workspace; another workspace's
//!   ids are `user_not_found` / `channel_not_found`, as are private channels the caller is
//!   not in.
//! - A token is trusted only when its signature verifies and its user is in the cached
//!   workspace (re-checked against a fresh load, at a bounded rate, before refusing).

pub mod cache;
pub mod http;
pub mod loader;
pub mod metrics;
pub mod service;
#[cfg(test)]
mod test_web_api;
pub mod workspace;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::auth::TokenSigner;
use shared::config::Config;
use shared::ids::NodeId;
use shared::membership::{follow_admin, NodeHello};
use shared::mesh::{Mesh, MeshTls, PeerPool};
use shared::protocol::Role;
use shared::ring::Ring;
use shared::shutdown::Shutdown;
use shared::telemetry::Health;
use tokio::sync::{mpsc, watch};

pub use cache::{Budget, Cache};
pub use loader::{LoadError, SnapshotSource, StoreSource, WebappSource};
pub use service::{Flannel, QueryError};

/// What Flannel needs from the process that runs it.
pub struct FlannelDeps {
    /// Verifies client tokens and mints the service tokens of workspace loads.
    pub signer: TokenSigner,
    /// The mesh identity used to follow the admin server.
    pub tls: MeshTls,
    pub health: Health,
}

/// Runs Flannel until `shutdown`: follows the admin server for change events and serves the
/// query API, `/metrics` and `/health` on `http`.
pub async fn run(
    config: Config,
    node: NodeId,
    http: tokio::net::TcpListener,
    deps: FlannelDeps,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let bind: std::net::SocketAddr = if config.mesh.admin_addr.ip().is_loopback() {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("literal address");
    let mesh = Arc::new(
        Mesh::client(
            bind,
            &deps.tls,
            config.mesh.max_frame_bytes,
            Duration::from_millis(config.mesh.connect_timeout_ms),
        )
        .context("failed to start flannel mesh endpoint")?,
    );
    let source = WebappSource::new(&config.flannel.webapp_url, deps.signer.clone())
        .context("failed to build the web api client")?;
    let cache = Cache::new(Arc::new(source), Budget::from_config(&config.flannel));

    let (ring_tx, _ring_rx) = watch::channel(Arc::new(Ring::empty()));
    let (event_tx, mut event_rx) = mpsc::channel(4096);
    let (connected_tx, mut connected_rx) = watch::channel(false);
    tokio::spawn(follow_admin(
        Arc::new(PeerPool::new(mesh.clone())),
        config.mesh.admin_addr,
        NodeHello {
            node: node.clone(),
            role: Role::Flannel,
            mesh_addr: String::new(),
        },
        ring_tx,
        Some(event_tx),
        connected_tx,
        shutdown.clone(),
    ));
    {
        let cache = cache.clone();
        tokio::spawn(async move {
            while let Some(event) = event_rx.recv().await {
                cache.apply_event(&event);
            }
        });
    }
    {
        // Every change the admin link reports (down, up again, a new ring) turns cached
        // workspaces stale: events may have been missed while it was down, and a drop and
        // reconnect may be reported as one change.
        let cache = cache.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let up = *connected_rx.borrow_and_update();
                cache.link_changed(up);
                tokio::select! {
                    _ = shutdown.wait() => break,
                    changed = connected_rx.changed() => if changed.is_err() { break },
                }
            }
        });
    }

    let flannel = Flannel::new(cache, deps.signer);
    let app = http::router(flannel, deps.health.clone());
    let addr = http.local_addr()?;
    tracing::info!(%node, %addr, webapp = %config.flannel.webapp_url, "flannel running");
    deps.health.set_ready(true);
    let health = deps.health.clone();
    // Answers are written as soon as they are ready (no Nagle delay on small ones).
    let http = shared::listen::without_nagle(http);
    let result = axum::serve(http, app)
        .with_graceful_shutdown(async move {
            shutdown.wait().await;
            health.set_ready(false);
        })
        .await
        .context("flannel server failed");
    mesh.close();
    result
}
