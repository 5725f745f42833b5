//! The admin server's mesh side: node streams and post routing.

use std::sync::Arc;
use std::time::Duration;

use shared::mesh::{FrameReader, FrameWriter, MeshConn, PeerPool, TransportError};
use shared::protocol::{
    MeshError, MeshFrame, Role, UserEvent, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use shared::shutdown::Shutdown;
use tokio::sync::broadcast;

use crate::metrics as m;
use crate::presence::PresenceBook;
use crate::state::RingAuthority;

/// How long a channel server's link may be gone before its channels move.
#[cfg(not(test))]
const DOWN_GRACE: Duration = Duration::from_millis(1500);
#[cfg(test)]
const DOWN_GRACE: Duration = Duration::from_millis(50);
/// How long routing one post may take, retries included: under the Web API's own wait for
/// the answer (5 s), so the admin server never stores a post after the Web API has answered
/// its caller.
const POST_BUDGET: Duration = Duration::from_secs(4);

/// Longest one write to a follower may wait for the follower to read. One that stopped
/// reading (its QUIC flow control holds the write) would otherwise keep its membership stream
/// open forever, neither served nor ended: it is ended, and the follower reconnects.
const FOLLOW_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `frame` to a follower within `limit`; on failure or timeout resets the stream
/// (so a follower that resumes reading sees it end) and returns `false`.
async fn send_to_follower(w: &mut FrameWriter, frame: &MeshFrame, limit: Duration) -> bool {
    match tokio::time::timeout(limit, w.send(frame)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            m::FOLLOWER_WRITE_TIMEOUTS.inc();
            tracing::warn!(
                ?limit,
                "a follower stopped reading its membership stream; ending it"
            );
            w.reset();
            false
        }
    }
}

#[derive(Clone)]
pub struct Router {
    authority: Arc<RingAuthority>,
    pool: Arc<PeerPool>,
    user_events: broadcast::Sender<UserEvent>,
    presence: Arc<PresenceBook>,
}

impl Router {
    pub fn new(
        authority: Arc<RingAuthority>,
        pool: Arc<PeerPool>,
        presence_debounce: Duration,
    ) -> Router {
        let (user_events, _) = broadcast::channel(4096);
        let presence = PresenceBook::new(user_events.clone(), presence_debounce);
        Router {
            authority,
            pool,
            user_events,
            presence,
        }
    }

    pub async fn serve_connection(self, conn: MeshConn, shutdown: Shutdown) {
        while let Some((w, r)) = conn.accept().await {
            let router = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { router.serve_stream(w, r, shutdown).await });
        }
    }

    async fn serve_stream(self, mut w: FrameWriter, mut r: FrameReader, shutdown: Shutdown) {
        let first = match r.read().await {
            Ok(Some(f)) => f,
            _ => return,
        };
        match first {
            MeshFrame::Hello {
                node,
                role,
                protocol_version,
                mesh_addr,
            } => {
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol_version) {
                    m::BAD_REQUESTS.with_label_values(&["version"]).inc();
                    let _ = w
                        .send(&MeshFrame::Error(MeshError::BadRequest(format!(
                            "protocol version {protocol_version} not accepted"
                        ))))
                        .await;
                    return;
                }
                self.follow(node, role, mesh_addr, w, r, shutdown).await;
            }
            request => {
                let answer = move |frame| self.clone().answer(frame);
                shared::mesh::serve_requests(request, w, r, answer).await;
            }
        }
    }

    /// The answer to one request.
    pub(crate) async fn answer(self, request: MeshFrame) -> MeshFrame {
        match request {
            MeshFrame::Post { msg } => self.route_post(msg).await,
            // Presence reports and settings are aggregated here; everything else is relayed.
            MeshFrame::User(UserEvent::PresenceReport {
                workspace,
                user,
                gateway,
                online,
            }) => {
                self.presence.report(workspace, user, gateway, online);
                MeshFrame::Ok
            }
            MeshFrame::User(UserEvent::PresenceSet {
                workspace,
                user,
                away,
            }) => {
                self.presence.set_manual(workspace, user, away);
                MeshFrame::Ok
            }
            MeshFrame::User(ev) => {
                let _ = self.user_events.send(ev);
                MeshFrame::Ok
            }
            MeshFrame::PresenceGet { user } => {
                let (presence, online, manual_away) = self.presence.get(&user);
                MeshFrame::PresenceIs {
                    presence,
                    online,
                    manual_away,
                }
            }
            MeshFrame::PresenceQuery { workspace, users } => {
                if users.len() > shared::protocol::MAX_PRESENCE_QUERY {
                    m::BAD_REQUESTS
                        .with_label_values(&["presence_query_too_long"])
                        .inc();
                    MeshFrame::Error(MeshError::BadRequest(format!(
                        "a presence query names at most {} users",
                        shared::protocol::MAX_PRESENCE_QUERY
                    )))
                } else {
                    MeshFrame::PresenceActive {
                        users: self.presence.active_among(&workspace, &users),
                    }
                }
            }
            MeshFrame::Ping => MeshFrame::Ok,
            _ => {
                m::BAD_REQUESTS
                    .with_label_values(&["unexpected_frame"])
                    .inc();
                MeshFrame::Error(MeshError::BadRequest(
                    "unexpected frame for the admin server".into(),
                ))
            }
        }
    }

    /// A node's membership stream: the ring now and on every epoch; user events for gateways.
    /// For a channel server, the stream is also its liveness.
    async fn follow(
        self,
        node: shared::ids::NodeId,
        role: Role,
        mesh_addr: String,
        mut w: FrameWriter,
        mut r: FrameReader,
        shutdown: Shutdown,
    ) {
        let generation = if role == Role::ChannelServer {
            if mesh_addr.parse::<std::net::SocketAddr>().is_err() {
                m::BAD_REQUESTS.with_label_values(&["bad_mesh_addr"]).inc();
                let _ = w
                    .send(&MeshFrame::Error(MeshError::BadRequest(format!(
                        "bad mesh address {mesh_addr:?}"
                    ))))
                    .await;
                return;
            }
            Some(self.authority.member_up(&node, &mesh_addr))
        } else {
            None
        };
        tracing::info!(%node, role = role.as_str(), "node following the ring");
        m::NODES.inc();
        let mut ring_rx = self.authority.subscribe();
        let mut user_rx = self.user_events.subscribe();
        let wants_users = matches!(role, Role::Gateway | Role::Flannel);
        let mut ring = ring_rx.borrow_and_update().clone();
        let first = MeshFrame::Ring(ring.state().clone());
        let mut ok = send_to_follower(&mut w, &first, FOLLOW_WRITE_TIMEOUT).await;
        while ok {
            tokio::select! {
                _ = shutdown.wait() => break,
                changed = ring_rx.changed() => {
                    if changed.is_err() { break; }
                    ring = ring_rx.borrow_and_update().clone();
                    let frame = MeshFrame::Ring(ring.state().clone());
                    ok = send_to_follower(&mut w, &frame, FOLLOW_WRITE_TIMEOUT).await;
                }
                ev = user_rx.recv(), if wants_users => match ev {
                    Ok(ev) => {
                        ok = send_to_follower(&mut w, &MeshFrame::User(ev), FOLLOW_WRITE_TIMEOUT).await;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // It missed events: close its stream, so it reconnects and treats
                        // what it cached as stale (gateways and Flannels both do).
                        tracing::warn!(%node, missed = n, "node lagged behind user events; closing its stream");
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                read = r.read() => match read {
                    Ok(Some(_)) => {}
                    _ => break,
                },
            }
        }
        m::NODES.dec();
        tracing::info!(%node, role = role.as_str(), "node stopped following the ring");
        if role == Role::Gateway {
            // Its sessions are gone with it (a restarted gateway reports its users again).
            self.presence.gateway_gone(&node);
        }
        if let Some(generation) = generation {
            tokio::time::sleep(DOWN_GRACE).await;
            self.authority.member_down(&node, generation);
        }
    }

    /// Routes a post to the channel's owner. Retries when nothing was done: the owner answered
    /// with another epoch (it had not seen the latest ring yet) or could not be reached. When
    /// the post went out and no answer came back, the owner may have stored it: only a post
    /// with a `client_msg_id` is sent again (the owner answers a repeat with the stored
    /// message); any other gets `OutcomeUnknown` rather than a second copy.
    async fn route_post(&self, msg: shared::protocol::NewMessage) -> MeshFrame {
        let deadline = tokio::time::Instant::now() + POST_BUDGET;
        let idempotent = msg.client_msg_id.is_some();
        let mut last = MeshFrame::Error(MeshError::NoOwner);
        for attempt in 0..3 {
            let ring = self.authority.current();
            let Some(owner) = ring.owner(&msg.channel).cloned() else {
                m::ROUTED_POSTS.with_label_values(&["no_owner"]).inc();
                return MeshFrame::Error(MeshError::NoOwner);
            };
            let Ok(addr) = owner.mesh_addr.parse() else {
                return MeshFrame::Error(MeshError::Unavailable(format!(
                    "bad address for {}",
                    owner.node
                )));
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let frame = MeshFrame::Post { msg: msg.clone() };
            let sent = std::time::Instant::now();
            let answer = self.pool.request(addr, &frame, left).await;
            m::OWNER_POST_DURATION.observe(sent.elapsed().as_secs_f64());
            match answer {
                Ok(MeshFrame::Error(MeshError::WrongOwner { epoch })) => {
                    tracing::debug!(owner = %owner.node, %epoch, ours = %ring.epoch(), "owner disagrees on the epoch");
                    m::ROUTED_POSTS.with_label_values(&["retried"]).inc();
                    last = MeshFrame::Error(MeshError::WrongOwner { epoch });
                }
                Ok(answer) => {
                    let outcome = if matches!(answer, MeshFrame::PostOk { .. }) {
                        "ok"
                    } else {
                        "error"
                    };
                    m::ROUTED_POSTS.with_label_values(&[outcome]).inc();
                    return answer;
                }
                Err(e @ TransportError::Connect { .. }) => {
                    tracing::warn!(owner = %owner.node, error = %e, "owner unreachable");
                    m::ROUTED_POSTS.with_label_values(&["retried"]).inc();
                    last = MeshFrame::Error(MeshError::Unavailable(e.to_string()));
                }
                Err(e) if idempotent => {
                    tracing::warn!(owner = %owner.node, error = %e, "no answer from the owner; sending the post again");
                    m::ROUTED_POSTS.with_label_values(&["retried"]).inc();
                    last = MeshFrame::Error(MeshError::OutcomeUnknown(e.to_string()));
                }
                Err(e) => {
                    tracing::warn!(owner = %owner.node, error = %e, "no answer from the owner; the post may be stored");
                    m::ROUTED_POSTS.with_label_values(&["unknown"]).inc();
                    return MeshFrame::Error(MeshError::OutcomeUnknown(e.to_string()));
                }
            }
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
        }
        m::ROUTED_POSTS.with_label_values(&["error"]).inc();
        last
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use shared::ids::{ChannelId, NodeId, UserId, WorkspaceId};
    use shared::mesh::{Mesh, MeshTls};
    use shared::protocol::{MessageKind, NewMessage};

    use super::*;

    /// A channel server that reads each post and ends the lane it came on without answering,
    /// as one that stored the post and then lost its connection would look from here.
    /// Returns its address and the number of posts it received.
    async fn owner_that_never_answers(tls: &MeshTls) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mesh = Mesh::server(socket, tls, 1 << 20, Duration::from_secs(2)).unwrap();
        let addr = mesh.local_addr().unwrap();
        let posts = Arc::new(AtomicUsize::new(0));
        let seen = posts.clone();
        tokio::spawn(async move {
            while let Some(conn) = mesh.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    while let Some((mut w, mut r)) = conn.accept().await {
                        if let Ok(Some(MeshFrame::Call { frame, .. })) = r.read().await {
                            if matches!(*frame, MeshFrame::Post { .. }) {
                                seen.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        w.finish();
                    }
                });
            }
        });
        (addr, posts)
    }

    fn message(client_msg_id: Option<&str>) -> NewMessage {
        NewMessage {
            workspace: WorkspaceId::from("T1"),
            channel: ChannelId::from("C1"),
            user: UserId::from("U1"),
            text: "hello".into(),
            client_msg_id: client_msg_id.map(str::to_string),
            thread_ts: None,
            kind: MessageKind::Posted,
            broadcast: false,
            bot: false,
            rich: None,
        }
    }

    #[tokio::test]
    async fn a_post_without_an_answer_is_resent_only_when_it_has_a_client_msg_id() {
        let dir = tempfile::tempdir().unwrap();
        let tls = MeshTls::dev(dir.path()).unwrap();
        let (owner, posts) = owner_that_never_answers(&tls).await;
        let authority = RingAuthority::new(&[], 16, None);
        authority.member_up(&NodeId::from("cs-1"), &owner.to_string());
        let client = Mesh::client(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            1 << 20,
            Duration::from_secs(2),
        )
        .unwrap();
        let router = Router::new(
            authority,
            Arc::new(PeerPool::new(Arc::new(client))),
            Duration::from_millis(10),
        );

        let answer = router.route_post(message(None)).await;
        assert!(
            matches!(answer, MeshFrame::Error(MeshError::OutcomeUnknown(_))),
            "{answer:?}"
        );
        assert_eq!(
            posts.load(Ordering::SeqCst),
            1,
            "sent once: a second copy could be stored with a seq of its own"
        );

        let answer = router.route_post(message(Some("retry-me"))).await;
        assert!(
            matches!(answer, MeshFrame::Error(MeshError::OutcomeUnknown(_))),
            "{answer:?}"
        );
        assert_eq!(
            posts.load(Ordering::SeqCst),
            4,
            "a post the owner deduplicates by client_msg_id is tried three times"
        );
    }

    /// A follower that stops reading is ended after the write timeout, its stream reset,
    /// not waited for forever.
    #[tokio::test]
    async fn a_follower_that_stops_reading_is_ended() {
        let dir = tempfile::tempdir().unwrap();
        let tls = MeshTls::dev(dir.path()).unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let admin = Mesh::server(socket, &tls, 1 << 24, Duration::from_secs(5)).unwrap();
        let node = Mesh::client(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            1 << 24,
            Duration::from_secs(5),
        )
        .unwrap();
        let (connected, accepted) =
            tokio::join!(node.connect(admin.local_addr().unwrap()), admin.accept());
        let (mut node_w, mut node_r) = connected.unwrap().open().await.unwrap();
        node_w.send(&MeshFrame::Ping).await.unwrap();
        let (mut w, mut r) = accepted.unwrap().accept().await.unwrap();
        r.read().await.unwrap();
        // The node reads nothing; 1 MiB events soon fill the stream's window.
        let big = MeshFrame::PresenceActive {
            users: vec![UserId::from("U".repeat(1 << 20).as_str())],
        };
        let before = m::FOLLOWER_WRITE_TIMEOUTS.get();
        let mut sent = 0;
        while send_to_follower(&mut w, &big, Duration::from_millis(300)).await {
            sent += 1;
            assert!(sent < 1_000, "the follower's stream never filled");
        }
        assert_eq!(m::FOLLOWER_WRITE_TIMEOUTS.get(), before + 1);
        // When the node reads again, its stream ends (reset) rather than going on.
        let mut frames = 0;
        let ended = loop {
            match node_r.read().await {
                Ok(Some(_)) => frames += 1,
                other => break other,
            }
        };
        assert!(ended.is_err(), "{ended:?} after {frames} frames");
        assert!(frames <= sent);
    }
}
