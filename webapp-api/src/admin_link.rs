//! The Web API's link to the admin server over the QUIC mesh: posts (which the admin server
//! routes to the channel's owner) and membership events (which it relays to every gateway).
//!
//! # Retries
//! A request is tried up to [`ATTEMPTS`] times, with a short backoff, when it failed in a way
//! that says nothing was done: the admin server could not be dialled, or it answered
//! `Unavailable`, `NoOwner` or `WrongOwner` (the ring was moving). A post that failed after it
//! may have been delivered (the connection dropped, the answer timed out) is only tried again
//! when it carries a `client_msg_id`, because the channel server deduplicates on it; without one
//! a retry could store the message twice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shared::mesh::{PeerPool, TransportError};
use shared::protocol::{MeshError, MeshFrame, Message, NewMessage, UserEvent};

use crate::metrics as m;

/// Tries per request, the first included.
pub const ATTEMPTS: u32 = 3;
/// How long one try waits for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait before the second try; doubled before each later one.
const BACKOFF_BASE: Duration = Duration::from_millis(50);

/// Why a request to the admin server failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// No answer came back (after retries where they were safe).
    #[error("admin server unreachable: {0}")]
    Transport(#[from] TransportError),
    /// The admin server or the channel server answered with an error.
    #[error("admin server answered an error: {0}")]
    Mesh(#[from] MeshError),
    /// The answer was a frame that does not answer this request.
    #[error("unexpected answer from the admin server: {0}")]
    UnexpectedAnswer(String),
}

impl PostError {
    /// Whether the request certainly did nothing, so trying again cannot do it twice.
    fn nothing_was_done(&self) -> bool {
        match self {
            PostError::Transport(TransportError::Connect { .. }) => true,
            PostError::Transport(_) => false,
            PostError::Mesh(e) => matches!(
                e,
                MeshError::Unavailable(_) | MeshError::NoOwner | MeshError::WrongOwner { .. }
            ),
            PostError::UnexpectedAnswer(_) => false,
        }
    }

    /// Whether the request may have been done although no answer came back.
    fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            PostError::Transport(
                TransportError::Connection(_) | TransportError::Closed | TransportError::Timeout(_)
            )
        )
    }
}

/// Talks to the admin server over the QUIC mesh. Cheap to clone.
#[derive(Clone)]
pub struct AdminLink {
    /// `None` only in tests that exercise the HTTP layer without a mesh: every request then
    /// fails as unreachable at once.
    pool: Option<Arc<PeerPool>>,
    admin_addr: SocketAddr,
    request_timeout: Duration,
}

impl AdminLink {
    /// Follows the admin server's ring as a Web API node (every node learns each epoch), until
    /// `shutdown`. Nothing to follow for a detached link.
    pub fn follow_ring(
        &self,
        node: shared::ids::NodeId,
        shutdown: shared::shutdown::Shutdown,
    ) -> tokio::sync::watch::Receiver<Arc<shared::ring::Ring>> {
        let (ring_tx, ring_rx) = tokio::sync::watch::channel(Arc::new(shared::ring::Ring::empty()));
        if let Some(pool) = &self.pool {
            let (connected_tx, _) = tokio::sync::watch::channel(false);
            tokio::spawn(shared::membership::follow_admin(
                pool.clone(),
                self.admin_addr,
                shared::membership::NodeHello {
                    node,
                    role: shared::protocol::Role::WebApi,
                    mesh_addr: String::new(),
                },
                ring_tx,
                None,
                connected_tx,
                shutdown,
            ));
        }
        ring_rx
    }
}

impl std::fmt::Debug for AdminLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminLink")
            .field("admin_addr", &self.admin_addr)
            .field("detached", &self.pool.is_none())
            .finish()
    }
}

impl AdminLink {
    pub fn new(pool: Arc<PeerPool>, admin_addr: SocketAddr) -> Self {
        AdminLink {
            pool: Some(pool),
            admin_addr,
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    /// A link with no mesh behind it: every request fails as unreachable without waiting.
    #[cfg(test)]
    pub(crate) fn detached_for_test() -> Self {
        AdminLink {
            pool: None,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    #[cfg(test)]
    pub(crate) fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Posts a message through the admin server to the channel's owner, which appends it
    /// durably before answering. Returns the stored message and whether it was a repeat of an
    /// earlier post with the same `client_msg_id` (then it is that earlier message).
    pub async fn post(&self, msg: NewMessage) -> Result<(Message, bool), PostError> {
        let idempotent = msg.client_msg_id.is_some();
        let frame = MeshFrame::Post { msg };
        let answer = self.request("post", &frame, idempotent).await?;
        match answer {
            MeshFrame::PostOk { msg, duplicate } => Ok((msg, duplicate)),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the admin server to relay a membership change to every gateway, so that the
    /// user's sessions start or stop receiving the channel. Applying it twice is harmless, so
    /// it is retried on any transport failure.
    pub async fn publish_user_event(&self, ev: UserEvent) -> Result<(), PostError> {
        let frame = MeshFrame::User(ev);
        match self.request("user_event", &frame, true).await? {
            MeshFrame::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// A user's presence as the admin server aggregates it: (presence, online, manual away).
    pub async fn presence(
        &self,
        user: shared::ids::UserId,
    ) -> Result<(shared::protocol::Presence, bool, bool), PostError> {
        match self
            .request("presence_get", &MeshFrame::PresenceGet { user }, true)
            .await?
        {
            MeshFrame::PresenceIs {
                presence,
                online,
                manual_away,
            } => Ok((presence, online, manual_away)),
            other => Err(unexpected(other)),
        }
    }

    /// One request with retries; `idempotent` allows retrying when the outcome is unknown.
    async fn request(
        &self,
        kind: &'static str,
        frame: &MeshFrame,
        idempotent: bool,
    ) -> Result<MeshFrame, PostError> {
        let Some(pool) = &self.pool else {
            return Err(PostError::Transport(TransportError::Connect {
                addr: self.admin_addr,
                reason: "no mesh configured".into(),
            }));
        };
        let mut attempt = 1;
        loop {
            let sent = std::time::Instant::now();
            let answer = pool
                .request(self.admin_addr, frame, self.request_timeout)
                .await;
            m::ADMIN_REQUEST_DURATION
                .with_label_values(&[kind])
                .observe(sent.elapsed().as_secs_f64());
            let result = match answer {
                Ok(MeshFrame::Error(e)) => Err(PostError::Mesh(e)),
                Ok(answer) => Ok(answer),
                Err(e) => Err(PostError::Transport(e)),
            };
            let err = match result {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            let retryable = err.nothing_was_done() || (idempotent && err.outcome_unknown());
            if !retryable || attempt >= ATTEMPTS {
                tracing::warn!(request = kind, attempt, error = %err, "admin server request failed");
                return Err(err);
            }
            tracing::debug!(request = kind, attempt, error = %err, "retrying admin server request");
            m::ADMIN_RETRIES.with_label_values(&[kind]).inc();
            tokio::time::sleep(BACKOFF_BASE * 2u32.pow(attempt - 1)).await;
            attempt += 1;
        }
    }
}

fn unexpected(frame: MeshFrame) -> PostError {
    let mut name = format!("{frame:?}");
    name.truncate(120);
    PostError::UnexpectedAnswer(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::{ChannelId, UserId, WorkspaceId};

    fn new_message(client_msg_id: Option<&str>) -> NewMessage {
        NewMessage {
            workspace: WorkspaceId::from("TDEMO"),
            channel: ChannelId::from("CGENERAL"),
            user: UserId::from("UALICE"),
            text: "hi".into(),
            client_msg_id: client_msg_id.map(str::to_string),
            thread_ts: None,
            kind: shared::protocol::MessageKind::Posted,
            broadcast: false,
            bot: false,
            rich: None,
        }
    }

    #[test]
    fn only_safe_failures_are_retried() {
        let connect = PostError::Transport(TransportError::Connect {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            reason: "refused".into(),
        });
        assert!(connect.nothing_was_done());
        let timeout = PostError::Transport(TransportError::Timeout(Duration::from_secs(1)));
        assert!(!timeout.nothing_was_done());
        assert!(timeout.outcome_unknown());
        assert!(PostError::Mesh(MeshError::NoOwner).nothing_was_done());
        assert!(PostError::Mesh(MeshError::WrongOwner {
            epoch: shared::ids::RingEpoch(2)
        })
        .nothing_was_done());
        let store = PostError::Mesh(MeshError::Store("disk".into()));
        assert!(!store.nothing_was_done() && !store.outcome_unknown());
    }

    #[tokio::test]
    async fn a_detached_link_fails_at_once() {
        let link = AdminLink::detached_for_test();
        assert!(matches!(
            link.post(new_message(None)).await,
            Err(PostError::Transport(TransportError::Connect { .. }))
        ));
    }

    /// A real mesh endpoint dialling a port where nothing listens: the post fails after its
    /// retries, within a bounded time, instead of hanging.
    #[tokio::test]
    async fn an_unreachable_admin_server_fails_within_bounded_time() {
        shared::mesh::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = shared::mesh::MeshTls::dev(dir.path()).expect("tls");
        let mesh = shared::mesh::Mesh::client(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &tls,
            1024 * 1024,
            Duration::from_millis(200),
        )
        .expect("mesh");
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        let dead_addr = dead.local_addr().expect("addr");
        drop(dead);
        let link = AdminLink::new(Arc::new(PeerPool::new(Arc::new(mesh))), dead_addr)
            .with_request_timeout(Duration::from_millis(300));
        // The bound only keeps a regression (a link that never gives up) from hanging the suite.
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            link.post(new_message(Some("cmid-1"))),
        )
        .await
        .expect("the link gave up on its own");
        assert!(matches!(result, Err(PostError::Transport(_))), "{result:?}");
    }
}
