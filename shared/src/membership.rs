//! Following the admin server: every node but the admin server keeps one stream to it, says
//! `Hello`, and from then on receives the ring on every epoch (and, for gateways, user events).
//! The link reconnects with backoff for as long as the node runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::ids::NodeId;
use crate::mesh::PeerPool;
use crate::protocol::{MeshFrame, Role, UserEvent, PROTOCOL_VERSION};
use crate::ring::Ring;
use crate::shutdown::Shutdown;

/// What a node tells the admin server about itself.
#[derive(Clone, Debug)]
pub struct NodeHello {
    pub node: NodeId,
    pub role: Role,
    /// Where a channel server accepts mesh connections; empty for other roles.
    pub mesh_addr: String,
}

/// Keeps `ring_tx` current until `shutdown`. User events go to `user_tx` if given.
/// `connected_tx` says whether the link is up (for health).
pub async fn follow_admin(
    pool: Arc<PeerPool>,
    admin_addr: SocketAddr,
    hello: NodeHello,
    ring_tx: watch::Sender<Arc<Ring>>,
    user_tx: Option<mpsc::Sender<UserEvent>>,
    connected_tx: watch::Sender<bool>,
    shutdown: Shutdown,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let session = async {
            let conn = pool.get(admin_addr).await?;
            let (mut w, mut r) = conn.open().await?;
            w.send(&MeshFrame::Hello {
                node: hello.node.clone(),
                role: hello.role,
                protocol_version: PROTOCOL_VERSION,
                mesh_addr: hello.mesh_addr.clone(),
            })
            .await?;
            loop {
                match r.read().await? {
                    Some(MeshFrame::Ring(state)) => {
                        let _ = connected_tx.send(true);
                        let current = ring_tx.borrow().epoch();
                        if state.epoch >= current {
                            tracing::info!(epoch = %state.epoch, members = state.members.len(), "ring update");
                            ring_tx.send_replace(Arc::new(Ring::new(state)));
                        }
                    }
                    Some(MeshFrame::User(ev)) => {
                        if let Some(tx) = &user_tx {
                            let _ = tx.send(ev).await;
                        }
                    }
                    Some(other) => {
                        tracing::warn!(frame = ?other, "unexpected frame from admin server")
                    }
                    None => return Ok::<(), crate::mesh::TransportError>(()),
                }
            }
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            result = session => {
                let _ = connected_tx.send(false);
                match result {
                    Ok(()) => tracing::warn!("admin server closed the membership stream"),
                    Err(e) => tracing::warn!(error = %e, "lost the admin server"),
                }
                pool.forget(admin_addr);
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
