//! Flannel: the edge cache of client boot data.
//!
//! This crate currently runs the role's process shell (config, `/metrics`, `/health`) so that
//! deployments and `switchboard dev` already place it; the cache itself (users, channels,
//! memberships loaded lazily from the Web API and kept fresh by mesh events) is the Flannel
//! issue's work.
//!
//! # Layout
//! - [`run`]: serves the ops endpoints until shutdown.

use shared::config::Config;
use shared::shutdown::Shutdown;
use shared::telemetry::Health;

/// Runs the Flannel role until `shutdown`.
pub async fn run(config: Config, http: tokio::net::TcpListener, health: Health, shutdown: Shutdown) -> anyhow::Result<()> {
    let app = shared::telemetry::ops_router("flannel", health.clone());
    health.set_ready(true);
    tracing::info!(addr = %http.local_addr()?, webapp = %config.flannel.webapp_url, "flannel running");
    axum::serve(http, app).with_graceful_shutdown(async move { shutdown.wait().await }).await?;
    Ok(())
}
