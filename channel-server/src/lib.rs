//! The channel server: owns the channels the ring gives it.
//!
//! Per channel it keeps a sequencer (contiguous `seq`, a `ts` that only increases), a window
//! of recent messages, and the set of subscribed gateways. A post is numbered, appended
//! durably to the store, acked, and only then fanned out: once per subscribed gateway, not
//! once per client, from one shared encoding.
//!
//! # Layout
//! - [`channel`]: one task per active channel (sequencer, window, subscribers, group commit).
//! - [`server`]: mesh connections, request routing, gateways' subscription streams.
//! - [`metrics`]: Prometheus metrics.
//!
//! # Invariants
//! - Per-channel total order: one task assigns a channel's sequence numbers and fans out in
//!   that order, on one ordered stream per gateway.
//! - Acknowledged means durable: the ack is sent after the store committed the append.
//! - Frames for a channel this node does not own at its epoch are refused with the epoch.
//! - A stalled gateway is cut off at its queue bound; it resubscribes with its last `seq` and
//!   the gap is filled from the window or the store.

pub mod channel;
pub mod metrics;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::config::Config;
use shared::ids::NodeId;
use shared::membership::{follow_admin, NodeHello};
use shared::mesh::{LocalPeers, Mesh, MeshTls, PeerPool};
use shared::protocol::Role;
use shared::ring::Ring;
use shared::shutdown::Shutdown;
use shared::store::SharedStore;
use shared::telemetry::Health;
use tokio::sync::watch;

pub struct ChannelServerDeps {
    pub store: SharedStore,
    pub tls: MeshTls,
    pub health: Health,
    /// Servers of this process (`dev`): this one registers there, and calls those directly.
    pub local: Option<LocalPeers>,
}

/// Runs a channel server until `shutdown`: mesh on `mesh_socket`, `/metrics` and `/health` on
/// `http`.
pub async fn run(
    config: Config,
    node: NodeId,
    mesh_socket: std::net::UdpSocket,
    http: tokio::net::TcpListener,
    deps: ChannelServerDeps,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mesh_addr = mesh_socket
        .local_addr()
        .context("channel server mesh socket")?;
    let mesh = Arc::new(
        Mesh::server(
            mesh_socket,
            &deps.tls,
            config.mesh.max_frame_bytes,
            Duration::from_millis(config.mesh.connect_timeout_ms),
        )
        .context("failed to start channel server mesh endpoint")?,
    );
    let pool = Arc::new(PeerPool::new(mesh.clone()).with_local(deps.local.clone()));
    let (ring_tx, ring_rx) = watch::channel(Arc::new(Ring::empty()));
    let (connected_tx, mut connected_rx) = watch::channel(false);
    tokio::spawn(follow_admin(
        pool,
        config.mesh.admin_addr,
        NodeHello {
            node: node.clone(),
            role: Role::ChannelServer,
            mesh_addr: mesh_addr.to_string(),
        },
        ring_tx,
        None,
        connected_tx,
        shutdown.clone(),
    ));

    // Not ready while the store cannot take writes (its files removed under it, say).
    deps.health
        .add_check(shared::store::health_check(&deps.store));
    let server = Server::new(
        node.clone(),
        deps.store,
        config.channel_server.window,
        config.channel_server.gateway_queue,
        config.mesh.max_frame_bytes,
        ring_rx.clone(),
    );

    // Release channels that the ring moves elsewhere.
    {
        let server = server.clone();
        let mut ring_rx = ring_rx;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    changed = ring_rx.changed() => {
                        if changed.is_err() { break; }
                        let ring = ring_rx.borrow_and_update().clone();
                        server.apply_ring(&ring);
                    }
                }
            }
        });
    }
    // Ready while the admin server link is up.
    {
        let health = deps.health.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                health.set_ready(*connected_rx.borrow_and_update());
                tokio::select! {
                    _ = shutdown.wait() => { health.set_ready(false); break; }
                    changed = connected_rx.changed() => if changed.is_err() { break; },
                }
            }
        });
    }

    let app = shared::telemetry::ops_router("channel-server", deps.health.clone());
    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move { http_shutdown.wait().await })
            .await
    });

    // Held until the mesh stops taking connections (see the admin server's).
    let registration = deps.local.as_ref().map(|local| {
        let server = server.clone();
        local.register(mesh_addr, move |frame| server.clone().answer(frame))
    });
    tracing::info!(%node, mesh = %mesh_addr, "channel server running");
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            conn = mesh.accept() => match conn {
                Some(conn) => { tokio::spawn(server.clone().serve_connection(conn)); }
                None => break,
            },
        }
    }
    drop(registration);
    mesh.close();
    let _ = http_task.await;
    tracing::info!(%node, "channel server stopped");
    Ok(())
}

pub use server::Server;
