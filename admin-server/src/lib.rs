//! The admin server: owns the ring.
//!
//! It holds channel server membership (from config, from channel servers that announce
//! themselves, and from the admin HTTP API), publishes a new epoch on every change to every
//! node that follows it, relays membership events to gateways, and routes posts from the Web
//! API to the owning channel server.
//!
//! # Layout
//! - [`presence`]: presence aggregated over gateways, debounced.
//! - [`state`]: membership, liveness and epochs (persisted, so epochs only increase).
//! - [`mesh`]: node streams (Hello, ring pushes, user events) and post routing.
//! - [`http`]: the admin HTTP API (`GET /ring`, add, drain, remove) with `/metrics`, `/health`.
//!
//! # Invariants
//! - Epochs only increase, across restarts too.
//! - A ring change moves only the channels whose owner changed (consistent hashing).
//! - A channel server whose link drops is taken out of the ring after a grace period.

pub mod http;
pub mod mesh;
pub mod metrics;
pub mod presence;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::config::Config;
use shared::ids::NodeId;
use shared::mesh::{LocalPeers, Mesh, MeshTls, PeerPool};
use shared::shutdown::Shutdown;
use shared::telemetry::Health;

/// How long channel servers that were up before a restart keep their channels while they
/// reconnect (they retry with a backoff of at most 2 s).
const RESTART_GRACE: Duration = Duration::from_secs(5);

pub struct AdminDeps {
    pub tls: MeshTls,
    pub health: Health,
    /// Servers of this process (`dev`): this one registers there, and calls those directly.
    pub local: Option<LocalPeers>,
}

/// Runs the admin server until `shutdown`: mesh on `mesh_socket`, admin API on `http`.
pub async fn run(
    config: Config,
    node: NodeId,
    mesh_socket: std::net::UdpSocket,
    http: tokio::net::TcpListener,
    deps: AdminDeps,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mesh_addr = mesh_socket.local_addr().context("admin mesh socket")?;
    let mesh = Arc::new(
        Mesh::server(
            mesh_socket,
            &deps.tls,
            config.mesh.max_frame_bytes,
            Duration::from_millis(config.mesh.connect_timeout_ms),
        )
        .context("failed to start admin mesh endpoint")?,
    );
    std::fs::create_dir_all(&config.node.data_dir)
        .with_context(|| format!("failed to create {}", config.node.data_dir.display()))?;
    let configured: Vec<(NodeId, String)> = config
        .admin
        .channel_servers
        .iter()
        .map(|cs| (NodeId(cs.id.clone()), cs.mesh_addr.to_string()))
        .collect();
    let authority = state::RingAuthority::new(
        &configured,
        config.admin.vnodes,
        Some(config.node.data_dir.join("admin-ring.json")),
    );
    {
        let (authority, shutdown) = (authority.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait() => {}
                _ = tokio::time::sleep(RESTART_GRACE) => { authority.expire_unconfirmed(); }
            }
        });
    }
    let router = mesh::Router::new(
        authority.clone(),
        Arc::new(PeerPool::new(mesh.clone()).with_local(deps.local.clone())),
        Duration::from_millis(config.admin.presence_debounce_ms),
    );
    // Held until the mesh stops taking connections: then requests from this process dial it,
    // and fail as they would from any other.
    let registration = deps.local.as_ref().map(|local| {
        let router = router.clone();
        local.register(mesh_addr, move |frame| router.clone().answer(frame))
    });

    let app = http::router(authority.clone()).merge(shared::telemetry::ops_router(
        "admin-server",
        deps.health.clone(),
    ));
    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move { http_shutdown.wait().await })
            .await
    });
    deps.health.set_ready(true);
    tracing::info!(%node, mesh = %mesh_addr, "admin server running");
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            conn = mesh.accept() => match conn {
                Some(conn) => { tokio::spawn(router.clone().serve_connection(conn, shutdown.clone())); }
                None => break,
            },
        }
    }
    deps.health.set_ready(false);
    drop(registration);
    mesh.close();
    let _ = http_task.await;
    Ok(())
}
