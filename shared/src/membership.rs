//! Following the admin server: every node but the admin server keeps one stream to it, says
//! `Hello`, and from then on receives the ring on every epoch (and, for gateways, user events).
//! The link reconnects with backoff for as long as the node runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::ids::{NodeId, RingEpoch};
use crate::mesh::PeerPool;
use crate::protocol::{MeshFrame, Role, UserEvent, PROTOCOL_VERSION};
use crate::ring::Ring;
use crate::shutdown::Shutdown;
use crate::telemetry::metrics;

/// What a follower does with a ring from the admin server.
///
/// The admin server is the ring's one source of truth (one process at one address), and what
/// it sends first on a new stream is its ring now. So that ring is adopted even at a lower
/// epoch: an admin server that lost its saved ring (`admin-ring.json`) starts again at epoch
/// 1, and a follower that kept waiting for an epoch above the one it had would ignore every
/// ring (and so every failover) until the new epochs caught up. Within one stream the admin
/// server only publishes increasing epochs, so a lower one there is out of order and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RingUpdate {
    /// At or above the current epoch: adopt it.
    Newer,
    /// Below the current epoch, first on a new stream: the admin server's epochs restarted;
    /// adopt it (warned and counted).
    EpochWentBack,
    /// Below the last epoch on the same stream: ignore it (warned and counted).
    Stale,
}

impl RingUpdate {
    fn judge(current: RingEpoch, incoming: RingEpoch, first_on_stream: bool) -> RingUpdate {
        if incoming >= current {
            RingUpdate::Newer
        } else if first_on_stream {
            RingUpdate::EpochWentBack
        } else {
            RingUpdate::Stale
        }
    }
}

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
            // The first ring on a stream is the admin server's current one, whatever its
            // epoch ([`RingUpdate`]); after that, epochs on the stream only increase.
            let mut first_on_stream = true;
            loop {
                match r.read().await? {
                    Some(MeshFrame::Ring(state)) => {
                        let _ = connected_tx.send(true);
                        let current = ring_tx.borrow().epoch();
                        let update = RingUpdate::judge(current, state.epoch, first_on_stream);
                        first_on_stream = false;
                        match update {
                            RingUpdate::Newer => {
                                tracing::info!(epoch = %state.epoch, members = state.members.len(), "ring update");
                            }
                            RingUpdate::EpochWentBack => {
                                metrics::RING_EPOCH_REGRESSIONS
                                    .with_label_values(&["adopted"])
                                    .inc();
                                tracing::warn!(
                                    epoch = %state.epoch,
                                    previous = %current,
                                    members = state.members.len(),
                                    "the admin server's ring epoch went back (it restarted without its saved ring?); adopting its ring"
                                );
                            }
                            RingUpdate::Stale => {
                                metrics::RING_EPOCH_REGRESSIONS
                                    .with_label_values(&["ignored"])
                                    .inc();
                                tracing::warn!(
                                    epoch = %state.epoch,
                                    current = %current,
                                    "ignoring a ring older than the one the admin server sent earlier on this stream"
                                );
                                continue;
                            }
                        }
                        ring_tx.send_replace(Arc::new(Ring::new(state)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{Mesh, MeshTls};
    use crate::protocol::{RingMember, RingState};

    fn ring_state(epoch: u64, member: &str) -> RingState {
        RingState {
            epoch: RingEpoch(epoch),
            members: vec![RingMember {
                node: NodeId::from(member),
                mesh_addr: "127.0.0.1:9".into(),
                draining: false,
            }],
            vnodes: 8,
        }
    }

    fn regressions(outcome: &str) -> u64 {
        metrics::RING_EPOCH_REGRESSIONS
            .with_label_values(&[outcome])
            .get()
    }

    #[test]
    fn a_lower_epoch_is_adopted_only_first_on_a_new_stream() {
        use RingUpdate::*;
        let (e3, e7) = (RingEpoch(3), RingEpoch(7));
        assert_eq!(RingUpdate::judge(e3, e7, false), Newer);
        assert_eq!(RingUpdate::judge(e7, e7, false), Newer);
        assert_eq!(RingUpdate::judge(e7, e3, true), EpochWentBack);
        assert_eq!(RingUpdate::judge(e7, e3, false), Stale);
    }

    /// The admin server restarts without its saved ring and starts again at epoch 1: the
    /// follower adopts its ring on the new stream (before, it ignored every ring until the
    /// epochs passed the old value, and failover stopped). A lower epoch within one stream is
    /// still ignored.
    #[tokio::test]
    async fn follower_adopts_the_ring_of_an_admin_server_whose_epochs_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let tls = MeshTls::dev(dir.path()).unwrap();
        let admin = Mesh::server(
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            &tls,
            1 << 20,
            Duration::from_secs(2),
        )
        .unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let node = Mesh::client(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            1 << 20,
            Duration::from_secs(2),
        )
        .unwrap();
        let (ring_tx, mut ring_rx) = watch::channel(Arc::new(Ring::empty()));
        let (connected_tx, _connected_rx) = watch::channel(false);
        let shutdown = Shutdown::new();
        let follower = tokio::spawn(follow_admin(
            Arc::new(PeerPool::new(Arc::new(node))),
            admin_addr,
            NodeHello {
                node: NodeId::from("gw-1"),
                role: Role::Gateway,
                mesh_addr: String::new(),
            },
            ring_tx,
            None,
            connected_tx,
            shutdown.clone(),
        ));
        let wait_for_epoch = |rx: &mut watch::Receiver<Arc<Ring>>, epoch: u64| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    rx.wait_for(|r| r.epoch() == RingEpoch(epoch)),
                )
                .await
                .expect("ring epoch reached")
                .unwrap()
                .clone()
            }
        };
        let ignored_before = regressions("ignored");
        let adopted_before = regressions("adopted");

        // The admin server as it was: epoch 7, then an out-of-order epoch 3 on the same stream.
        let conn1 = admin.accept().await.unwrap();
        let (mut w1, mut r1) = conn1.accept().await.unwrap();
        assert!(matches!(r1.read().await, Ok(Some(MeshFrame::Hello { .. }))));
        w1.send(&MeshFrame::Ring(ring_state(7, "cs-old")))
            .await
            .unwrap();
        wait_for_epoch(&mut ring_rx, 7).await;
        w1.send(&MeshFrame::Ring(ring_state(3, "cs-stale")))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while regressions("ignored") == ignored_before {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the out-of-order ring is counted");
        assert_eq!(ring_rx.borrow().epoch(), RingEpoch(7));

        // It goes away; the new one lost `admin-ring.json` and is at epoch 1.
        w1.finish();
        conn1.close("restart");
        let conn2 = admin.accept().await.unwrap();
        let (mut w2, mut r2) = conn2.accept().await.unwrap();
        assert!(matches!(r2.read().await, Ok(Some(MeshFrame::Hello { .. }))));
        w2.send(&MeshFrame::Ring(ring_state(1, "cs-new")))
            .await
            .unwrap();
        let ring = wait_for_epoch(&mut ring_rx, 1).await;
        assert_eq!(ring.state().members[0].node, NodeId::from("cs-new"));
        assert_eq!(regressions("adopted"), adopted_before + 1);
        // And it follows the new admin server's epochs from there.
        w2.send(&MeshFrame::Ring(ring_state(2, "cs-new")))
            .await
            .unwrap();
        wait_for_epoch(&mut ring_rx, 2).await;

        shutdown.trigger();
        follower.await.unwrap();
    }
}
