//! Requests between roles of one process, answered without the network.
//!
//! `switchboard dev` runs the Web API, the admin server and the channel servers in one
//! process. Each of a post's two hops (Web API to admin server, admin server to the channel's
//! owner) would otherwise be encoded, encrypted, sent over loopback UDP, received, decrypted
//! and decoded, through five task hand-offs on each side. A server registers its request
//! handler here under its mesh address, and a [`super::PeerPool`] given the same
//! [`LocalPeers`] calls that handler instead, in a task of its own: the answer is the one the
//! peer would have sent over a lane, and a caller that gives up does not cancel it, as with a
//! request already on the wire.
//!
//! Only requests take this path. Streams (the gateways' subscriptions, the ring's followers)
//! stay on QUIC, and a server of another process is always reached over QUIC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::RwLock;

use super::TransportError;
use crate::protocol::MeshFrame;
use crate::telemetry::metrics as m;

type Handler = Arc<dyn Fn(MeshFrame) -> BoxFuture<'static, MeshFrame> + Send + Sync>;

/// The request handlers of this process's servers, by mesh address. Cloning shares them.
#[derive(Clone, Default)]
pub struct LocalPeers {
    handlers: Arc<RwLock<HashMap<SocketAddr, Handler>>>,
}

/// Keeps a handler registered; dropping it removes the handler (the server stopped), and
/// requests to its address go over the network again.
#[must_use = "the handler is removed when this is dropped"]
pub struct LocalRegistration {
    peers: LocalPeers,
    addr: SocketAddr,
}

impl Drop for LocalRegistration {
    fn drop(&mut self) {
        self.peers.handlers.write().remove(&self.addr);
    }
}

impl LocalPeers {
    pub fn new() -> LocalPeers {
        LocalPeers::default()
    }

    /// Answers requests to `addr` with `answer` (what the server's lanes run for each call)
    /// until the registration is dropped.
    pub fn register<A, F>(&self, addr: SocketAddr, answer: A) -> LocalRegistration
    where
        A: Fn(MeshFrame) -> F + Send + Sync + 'static,
        F: std::future::Future<Output = MeshFrame> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |frame| answer(frame).boxed());
        self.handlers.write().insert(addr, handler);
        LocalRegistration {
            peers: self.clone(),
            addr,
        }
    }

    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.handlers.read().contains_key(&addr)
    }

    /// `frame`'s answer from the server of this process at `addr`, within `timeout`; `None`
    /// when no server here has that address.
    pub(crate) async fn request(
        &self,
        addr: SocketAddr,
        frame: &MeshFrame,
        timeout: Duration,
    ) -> Option<Result<MeshFrame, TransportError>> {
        let handler = self.handlers.read().get(&addr).cloned()?;
        m::MESH_LOCAL_CALLS.inc();
        let call = tokio::spawn(handler(frame.clone()));
        Some(match tokio::time::timeout(timeout, call).await {
            Ok(Ok(answer)) => Ok(answer),
            // The handler panicked: as if the peer closed the stream before answering.
            Ok(Err(_)) => Err(TransportError::Closed),
            // The call goes on, as one already sent would.
            Err(_) => Err(TransportError::Timeout(timeout)),
        })
    }
}
