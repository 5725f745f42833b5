//! The QUIC mesh between nodes: quinn over rustls with mutual TLS, carrying [`MeshFrame`]s.
//!
//! # Layout
//! - [`tls`]: the cluster CA, node certificates and quinn configurations.
//! - [`Mesh`]: one QUIC endpoint (server and client) per node.
//! - [`MeshConn`]: a connection; its requests share one long-lived stream, a [`lane`].
//! - [`FrameReader`]/[`FrameWriter`]: whole frames over a stream, checking sizes first.
//! - [`PeerPool`]: reuses one connection per peer and reconnects with backoff.
//! - [`LocalPeers`]: servers of the same process, whose requests skip the network (`dev`).

pub mod lane;
mod local;
mod paths;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;

use crate::protocol::{MeshFrame, WireError};
use crate::telemetry::metrics as m;
pub use lane::{serve_lane, serve_requests};
pub use local::{LocalPeers, LocalRegistration};
pub use tls::{install_crypto_provider, MeshTls, MESH_SERVER_NAME};

/// Why a mesh call failed before an answer came back.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("failed to connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connection lost: {0}")]
    Connection(String),
    #[error("bad frame from peer: {0}")]
    Wire(#[from] WireError),
    #[error("peer closed the stream before answering")]
    Closed,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Handshakes in progress at once on an accepting endpoint; an attempt past this is refused.
const MAX_PENDING_HANDSHAKES: usize = 1024;

type Handshake = Result<quinn::Connection, quinn::ConnectionError>;

/// One node's QUIC endpoint.
pub struct Mesh {
    endpoint: quinn::Endpoint,
    max_frame_bytes: usize,
    connect_timeout: Duration,
    /// Handshakes of incoming connections, run side by side: a peer that starts one and goes
    /// silent holds up only its own (until the idle timeout ends it), not every accept.
    handshakes: tokio::sync::Mutex<tokio::task::JoinSet<Handshake>>,
}

impl Mesh {
    /// An endpoint that accepts connections on `socket` and also makes them.
    pub fn server(
        socket: std::net::UdpSocket,
        tls: &MeshTls,
        max_frame_bytes: usize,
        connect_timeout: Duration,
    ) -> anyhow::Result<Mesh> {
        let runtime =
            quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime"))?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(tls.server_config()?),
            socket,
            runtime,
        )?;
        endpoint.set_default_client_config(tls.client_config()?);
        Ok(Mesh {
            endpoint,
            max_frame_bytes,
            connect_timeout,
            handshakes: Default::default(),
        })
    }

    /// An endpoint that only makes connections (gateways, the Web API), bound on loopback's
    /// or the given address's side.
    pub fn client(
        bind: SocketAddr,
        tls: &MeshTls,
        max_frame_bytes: usize,
        connect_timeout: Duration,
    ) -> anyhow::Result<Mesh> {
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(tls.client_config()?);
        Ok(Mesh {
            endpoint,
            max_frame_bytes,
            connect_timeout,
            handshakes: Default::default(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// The next connection that completes its handshake; `None` once the endpoint closed.
    /// Handshakes run concurrently, so a slow or silent peer does not delay the others.
    /// Failed handshakes (no or foreign certificate, garbage) are counted and skipped.
    /// Cancel safe: handshakes under way when the call is dropped finish for the next call.
    pub async fn accept(&self) -> Option<MeshConn> {
        let mut handshakes = self.handshakes.lock().await;
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let incoming = incoming?;
                    if handshakes.len() >= MAX_PENDING_HANDSHAKES {
                        m::MESH_HANDSHAKE_FAILURES.inc();
                        tracing::warn!(remote = %incoming.remote_address(), "too many mesh handshakes under way; refusing");
                        incoming.refuse();
                    } else {
                        handshakes.spawn(async move { incoming.await });
                    }
                }
                Some(done) = handshakes.join_next(), if !handshakes.is_empty() => match done {
                    Ok(Ok(conn)) => {
                        m::MESH_CONNECTIONS_ACCEPTED.inc();
                        return Some(MeshConn {
                            tracked: paths::track(&conn, paths::Side::Accepted),
                            conn,
                            max_frame_bytes: self.max_frame_bytes,
                            lane: Default::default(),
                        });
                    }
                    Ok(Err(e)) => {
                        m::MESH_HANDSHAKE_FAILURES.inc();
                        tracing::warn!(error = %e, "mesh handshake failed");
                    }
                    Err(e) => {
                        m::MESH_HANDSHAKE_FAILURES.inc();
                        tracing::warn!(error = %e, "mesh handshake task failed");
                    }
                },
            }
        }
    }

    pub async fn connect(&self, addr: SocketAddr) -> Result<MeshConn, TransportError> {
        let err = |reason: String| TransportError::Connect { addr, reason };
        let connecting = self
            .endpoint
            .connect(addr, MESH_SERVER_NAME)
            .map_err(|e| err(e.to_string()))?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| err(format!("no handshake within {:?}", self.connect_timeout)))?
            .map_err(|e| err(e.to_string()))?;
        Ok(MeshConn {
            tracked: paths::track(&conn, paths::Side::Connected),
            conn,
            max_frame_bytes: self.max_frame_bytes,
            lane: Default::default(),
        })
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }

    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// A connection to a peer. Cheap to clone; clones share the connection's lane.
#[derive(Clone)]
pub struct MeshConn {
    conn: quinn::Connection,
    max_frame_bytes: usize,
    lane: Arc<LaneSlot>,
    /// Lists the connection's path in `/metrics` while any clone is held: held, never read.
    #[cfg_attr(not(test), allow(dead_code))]
    tracked: Arc<paths::Tracked>,
}

/// The connection's current lane, and a lock so that only one caller opens the next.
#[derive(Default)]
struct LaneSlot {
    current: Mutex<Option<Arc<lane::Lane>>>,
    opening: tokio::sync::Mutex<()>,
}

impl MeshConn {
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Resolves when the connection closes, for whatever reason.
    pub async fn closed(&self) -> String {
        self.conn.closed().await.to_string()
    }

    pub fn close(&self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
    }

    /// Opens a long-lived stream.
    pub async fn open(&self) -> Result<(FrameWriter, FrameReader), TransportError> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| TransportError::Connection(e.to_string()))?;
        Ok((
            FrameWriter { send },
            FrameReader::new(recv, self.max_frame_bytes),
        ))
    }

    /// Waits for the peer to open a stream; `None` once the connection is gone.
    pub async fn accept(&self) -> Option<(FrameWriter, FrameReader)> {
        let (send, recv) = self.conn.accept_bi().await.ok()?;
        Some((
            FrameWriter { send },
            FrameReader::new(recv, self.max_frame_bytes),
        ))
    }

    /// One request and its answer, on the connection's lane (opened by the first request,
    /// and again after a lane fails). The peer serves lanes with [`serve_lane`].
    pub async fn request(
        &self,
        frame: &MeshFrame,
        timeout: Duration,
    ) -> Result<MeshFrame, TransportError> {
        let call = async { self.lane().await?.call(frame).await };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| TransportError::Timeout(timeout))?
    }

    async fn lane(&self) -> Result<Arc<lane::Lane>, TransportError> {
        let live = |slot: &Option<Arc<lane::Lane>>| slot.clone().filter(|l| !l.is_failed());
        if let Some(lane) = live(&self.lane.current.lock()) {
            return Ok(lane);
        }
        let _opening = self.lane.opening.lock().await;
        if let Some(lane) = live(&self.lane.current.lock()) {
            return Ok(lane);
        }
        let (w, r) = self.open().await?;
        let lane = Arc::new(lane::Lane::start(w, r));
        *self.lane.current.lock() = Some(lane.clone());
        Ok(lane)
    }
}

/// Writes whole frames to a stream.
pub struct FrameWriter {
    send: quinn::SendStream,
}

impl FrameWriter {
    pub async fn send(&mut self, frame: &MeshFrame) -> Result<(), TransportError> {
        let mut buf = BytesMut::with_capacity(256);
        frame.encode(&mut buf);
        self.send_bytes(&buf.freeze()).await
    }

    /// Writes an already-encoded frame (encoded once, shared between many streams).
    pub async fn send_bytes(&mut self, bytes: &Bytes) -> Result<(), TransportError> {
        m::MESH_FRAMES_SENT.inc();
        self.send
            .write_chunk(bytes.clone())
            .await
            .map_err(|e| TransportError::Connection(e.to_string()))
    }

    /// Writes several encoded frames in one call.
    pub async fn send_many(&mut self, chunks: &mut [Bytes]) -> Result<(), TransportError> {
        m::MESH_FRAMES_SENT.inc_by(chunks.len() as u64);
        self.send
            .write_all_chunks(chunks)
            .await
            .map_err(|e| TransportError::Connection(e.to_string()))
    }

    /// Ends the stream gracefully.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Abandons the stream: what was not yet delivered is dropped, and the peer's reader
    /// gets an error (for a peer that stopped reading, a graceful finish would wait forever).
    pub fn reset(&mut self) {
        let _ = self.send.reset(1u32.into());
    }
}

/// Reads whole frames from a stream, refusing oversized or malformed ones.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    max_frame_bytes: usize,
}

impl FrameReader {
    fn new(recv: quinn::RecvStream, max_frame_bytes: usize) -> Self {
        FrameReader {
            recv,
            buf: BytesMut::with_capacity(8 * 1024),
            max_frame_bytes,
        }
    }

    /// The next frame; `Ok(None)` when the peer finished the stream between frames. A bad
    /// frame is counted and ends the stream (the peer's stream is stopped).
    pub async fn read(&mut self) -> Result<Option<MeshFrame>, TransportError> {
        loop {
            if let Some(frame) = self.read_buffered()? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => {
                    m::MESH_BAD_FRAMES.inc();
                    return Err(TransportError::Wire(WireError::Truncated));
                }
                Err(e) => return Err(TransportError::Connection(e.to_string())),
            }
        }
    }

    /// Tells the peer to stop sending on this stream (after a frame that makes no sense).
    pub fn stop(&mut self) {
        let _ = self.recv.stop(1u32.into());
    }

    /// The next frame if the bytes already read hold all of it, without waiting for more: a
    /// reader that takes frames in batches (a read holds many under load) drains them with
    /// this after [`FrameReader::read`]. A bad frame is counted and ends the stream.
    pub fn read_buffered(&mut self) -> Result<Option<MeshFrame>, TransportError> {
        match MeshFrame::decode(&self.buf, self.max_frame_bytes) {
            Ok(Some((frame, used))) => {
                self.buf.advance(used);
                m::MESH_FRAMES_RECEIVED.inc();
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                m::MESH_BAD_FRAMES.inc();
                tracing::warn!(error = %e, "bad mesh frame");
                let _ = self.recv.stop(1u32.into());
                Err(e.into())
            }
        }
    }
}

/// Reuses one connection per peer address and reconnects with exponential backoff after a
/// peer disappears.
pub struct PeerPool {
    mesh: Arc<Mesh>,
    peers: Mutex<HashMap<SocketAddr, PeerSlot>>,
    /// Servers of this process, asked directly (see [`LocalPeers`]).
    local: Option<LocalPeers>,
}

#[derive(Default)]
struct PeerSlot {
    conn: Option<MeshConn>,
    /// Failures since the last success: sets how long to wait before the next attempt.
    failures: u32,
    next_attempt: Option<tokio::time::Instant>,
}

const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl PeerPool {
    pub fn new(mesh: Arc<Mesh>) -> PeerPool {
        PeerPool {
            mesh,
            peers: Mutex::new(HashMap::new()),
            local: None,
        }
    }

    /// Requests to an address that a server of this process registered in `local` are
    /// answered by it directly, without QUIC.
    pub fn with_local(mut self, local: Option<LocalPeers>) -> PeerPool {
        self.local = local;
        self
    }

    pub fn mesh(&self) -> &Arc<Mesh> {
        &self.mesh
    }

    /// A live connection to `addr`: the pooled one, or a new one. A peer that failed recently
    /// is not dialled again until its backoff has passed.
    pub async fn get(&self, addr: SocketAddr) -> Result<MeshConn, TransportError> {
        let wait = {
            let peers = self.peers.lock();
            match peers.get(&addr) {
                Some(slot) => {
                    if let Some(c) = slot.conn.as_ref().filter(|c| !c.is_closed()) {
                        return Ok(c.clone());
                    }
                    slot.next_attempt
                }
                None => None,
            }
        };
        if let Some(at) = wait {
            tokio::time::sleep_until(at).await;
        }
        match self.mesh.connect(addr).await {
            Ok(conn) => {
                let mut peers = self.peers.lock();
                let slot = peers.entry(addr).or_default();
                // Another task may have connected meanwhile: keep one.
                if let Some(c) = slot.conn.as_ref().filter(|c| !c.is_closed()) {
                    conn.close("duplicate");
                    return Ok(c.clone());
                }
                slot.conn = Some(conn.clone());
                slot.failures = 0;
                slot.next_attempt = None;
                Ok(conn)
            }
            Err(e) => {
                self.record_failure(addr);
                Err(e)
            }
        }
    }

    /// Counts a failed connect to `addr` and backs its next attempt off.
    fn record_failure(&self, addr: SocketAddr) {
        m::MESH_CONNECT_FAILURES.inc();
        let mut peers = self.peers.lock();
        let slot = peers.entry(addr).or_default();
        slot.failures = slot.failures.saturating_add(1);
        let backoff = BACKOFF_BASE
            .saturating_mul(1 << slot.failures.min(6))
            .min(BACKOFF_MAX);
        slot.next_attempt = Some(tokio::time::Instant::now() + backoff);
    }

    /// Forgets a broken connection so the next `get` redials.
    pub fn forget(&self, addr: SocketAddr) {
        if let Some(slot) = self.peers.lock().get_mut(&addr) {
            slot.conn = None;
        }
    }

    /// One request to `addr` on a pooled connection, all of it (waiting out a backoff,
    /// connecting, asking, the answer) within `timeout`; a connection found dead is dropped so
    /// the next call reconnects.
    ///
    /// When no connection is ready in time the request was not sent, and the error says so
    /// ([`TransportError::Connect`]): a caller may send it elsewhere or again without risking
    /// a second copy. (A caller with a deadline, like the admin server routing a post within
    /// the Web API's wait, relies on the bound covering the connect too.)
    pub async fn request(
        &self,
        addr: SocketAddr,
        frame: &MeshFrame,
        timeout: Duration,
    ) -> Result<MeshFrame, TransportError> {
        if let Some(local) = &self.local {
            if let Some(answer) = local.request(addr, frame, timeout).await {
                return answer;
            }
        }
        let started = tokio::time::Instant::now();
        let not_sent = || TransportError::Connect {
            addr,
            reason: format!("no connection within {timeout:?}"),
        };
        let conn = match tokio::time::timeout(timeout, self.get(addr)).await {
            Ok(conn) => conn?,
            Err(_) => {
                // The connect (or the wait for its backoff) was cut short: counted and backed
                // off like a failed one, so that the next requests do not each dial a peer
                // that does not answer in time.
                self.record_failure(addr);
                return Err(not_sent());
            }
        };
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(not_sent());
        }
        let result = conn.request(frame, left).await;
        if matches!(result, Err(TransportError::Connection(_))) {
            self.forget(addr);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChannelId;

    /// A request's bound covers the connect: a peer that never answers the handshake makes
    /// the request fail, unsent, when its own timeout ends, not the longer connect timeout.
    #[tokio::test]
    async fn a_request_bound_covers_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let tls = MeshTls::dev(dir.path()).unwrap();
        // Takes datagrams and never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let connect_timeout = Duration::from_secs(20);
        let client = Mesh::client(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            1 << 20,
            connect_timeout,
        )
        .unwrap();
        let pool = PeerPool::new(Arc::new(client));
        let started = std::time::Instant::now();
        let answer = pool
            .request(addr, &MeshFrame::Ping, Duration::from_millis(200))
            .await;
        assert!(
            matches!(answer, Err(TransportError::Connect { .. })),
            "{answer:?}"
        );
        // Well under the connect timeout (a generous margin for a loaded machine).
        assert!(
            started.elapsed() < connect_timeout / 2,
            "{:?}",
            started.elapsed()
        );
        // Counted as a failed connect: the next request waits for the backoff rather than
        // dialling again at once.
        let slot = pool
            .peers
            .lock()
            .get(&addr)
            .map(|s| (s.failures, s.next_attempt.is_some()));
        assert_eq!(slot, Some((1, true)), "no failure recorded");
    }

    /// A server of this process registered in the pool's [`LocalPeers`] answers without a
    /// datagram sent; a caller that gives up does not cancel the call; a panicking handler is
    /// a stream closed before its answer; once the server is gone, its address is dialled.
    #[tokio::test]
    async fn local_servers_answer_without_the_network() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let tls = MeshTls::dev(dir.path()).unwrap();
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        silent.set_nonblocking(true).unwrap();
        let addr = silent.local_addr().unwrap();
        let client = Mesh::client(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            1 << 20,
            Duration::from_secs(20),
        )
        .unwrap();
        let local = LocalPeers::new();
        let pool = PeerPool::new(Arc::new(client)).with_local(Some(local.clone()));
        let finished = Arc::new(AtomicUsize::new(0));
        let registration = {
            let finished = finished.clone();
            local.register(addr, move |frame| {
                let finished = finished.clone();
                async move {
                    match frame {
                        MeshFrame::Ping => MeshFrame::Ok,
                        MeshFrame::Fetch { limit: 0, .. } => panic!("a bad handler"),
                        MeshFrame::Fetch { .. } => {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            finished.fetch_add(1, Ordering::SeqCst);
                            MeshFrame::Ok
                        }
                        other => MeshFrame::Error(crate::protocol::MeshError::BadRequest(format!(
                            "{other:?}"
                        ))),
                    }
                }
            })
        };
        assert!(local.contains(addr));
        let calls_before = m::MESH_LOCAL_CALLS.get();
        let answer = pool
            .request(addr, &MeshFrame::Ping, Duration::from_secs(5))
            .await;
        assert!(matches!(answer, Ok(MeshFrame::Ok)), "{answer:?}");
        assert!(m::MESH_LOCAL_CALLS.get() > calls_before);
        let mut buf = [0u8; 2048];
        assert_eq!(
            silent.recv(&mut buf).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "a local call sent a datagram"
        );

        let fetch = |limit| MeshFrame::Fetch {
            channel: ChannelId("C1".into()),
            workspace: crate::ids::WorkspaceId("T1".into()),
            after_seq: 0,
            up_to_seq: None,
            limit,
        };
        let late = pool
            .request(addr, &fetch(10), Duration::from_millis(50))
            .await;
        assert!(matches!(late, Err(TransportError::Timeout(_))), "{late:?}");
        for _ in 0..100 {
            if finished.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(finished.load(Ordering::SeqCst), 1, "the call was cancelled");

        let broken = pool.request(addr, &fetch(0), Duration::from_secs(5)).await;
        assert!(matches!(broken, Err(TransportError::Closed)), "{broken:?}");

        drop(registration);
        assert!(!local.contains(addr));
        let dialled = pool
            .request(addr, &MeshFrame::Ping, Duration::from_millis(200))
            .await;
        assert!(
            matches!(dialled, Err(TransportError::Connect { .. })),
            "{dialled:?}"
        );
        assert!(
            silent.recv(&mut buf).is_ok(),
            "no handshake reached the address"
        );
    }

    fn pair() -> (Mesh, Mesh, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = pair_with(&MeshTls::dev(dir.path()).unwrap());
        (server, client, dir)
    }

    /// A server endpoint and a client endpoint on loopback with `t`.
    pub(super) fn pair_with(t: &MeshTls) -> (Mesh, Mesh) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = Mesh::server(socket, t, 1024 * 1024, Duration::from_secs(2)).unwrap();
        let client = Mesh::client(
            "127.0.0.1:0".parse().unwrap(),
            t,
            1024 * 1024,
            Duration::from_secs(2),
        )
        .unwrap();
        (server, client)
    }

    #[tokio::test]
    async fn connections_start_with_the_configured_congestion_window() {
        let dir = tempfile::tempdir().unwrap();
        let usual = MeshTls::dev(dir.path()).unwrap();
        for (tls, at_least, at_most) in [
            (usual.clone(), 10_000, 20_000),
            (usual.clone().with_initial_window(0), 10_000, 20_000),
            (usual.with_initial_window(1 << 20), 1 << 20, 1 << 21),
        ] {
            let (server, client) = pair_with(&tls);
            let addr = server.local_addr().unwrap();
            let (connected, accepted) = tokio::join!(client.connect(addr), server.accept());
            for conn in [connected.unwrap(), accepted.unwrap()] {
                let cwnd = conn.conn.stats().path.cwnd;
                assert!(
                    (at_least..=at_most).contains(&cwnd),
                    "cwnd {cwnd} not in {at_least}..={at_most}"
                );
            }
        }
    }

    #[tokio::test]
    async fn request_and_answer_over_mutual_tls() {
        let (server, client, _dir) = pair();
        let addr = server.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let conn = server.accept().await.unwrap();
            let (w, mut r) = conn.accept().await.unwrap();
            let first = r.read().await.unwrap().unwrap();
            serve_lane(first, w, r, |frame| async move {
                assert_eq!(
                    frame,
                    MeshFrame::Unsubscribe {
                        channel: ChannelId::from("C1")
                    }
                );
                MeshFrame::FetchOk {
                    messages: vec![],
                    last_seq: 4,
                }
            })
            .await;
            conn.closed().await;
        });
        let conn = client.connect(addr).await.unwrap();
        let answer = conn
            .request(
                &MeshFrame::Unsubscribe {
                    channel: ChannelId::from("C1"),
                },
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(
            answer,
            MeshFrame::FetchOk {
                messages: vec![],
                last_seq: 4
            }
        );
        conn.close("done");
        server_task.await.unwrap();
    }

    /// A server whose every lane answers `Ping` with `Ok` and anything else but
    /// `Unsubscribe` with `Error`; `Unsubscribe { channel }` is answered after as many
    /// milliseconds as the channel id says, with `FetchOk` whose `last_seq` is that number.
    /// Counts the streams it accepted.
    fn serve_lanes(server: Mesh) -> Arc<std::sync::atomic::AtomicUsize> {
        let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = streams.clone();
        tokio::spawn(async move {
            while let Some(conn) = server.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    while let Some((w, mut r)) = conn.accept().await {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Ok(Some(first)) = r.read().await else {
                            continue;
                        };
                        tokio::spawn(serve_lane(first, w, r, |frame| async move {
                            match frame {
                                MeshFrame::Ping => MeshFrame::Ok,
                                MeshFrame::Unsubscribe { channel } => {
                                    let ms: u64 = channel.as_str().parse().unwrap();
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                    MeshFrame::FetchOk {
                                        messages: vec![],
                                        last_seq: ms,
                                    }
                                }
                                _ => MeshFrame::Error(crate::protocol::MeshError::BadRequest(
                                    "no".into(),
                                )),
                            }
                        }));
                    }
                });
            }
        });
        streams
    }

    fn wait(ms: u64) -> MeshFrame {
        MeshFrame::Unsubscribe {
            channel: ChannelId::from(ms.to_string().as_str()),
        }
    }

    #[tokio::test]
    async fn a_lane_answers_each_call_as_soon_as_it_is_ready() {
        let (server, client, _dir) = pair();
        let addr = server.local_addr().unwrap();
        let streams = serve_lanes(server);
        let conn = client.connect(addr).await.unwrap();
        // 200 calls at once, the first ones the slowest: each gets its own answer, and the
        // quick ones are not held up behind the slow ones.
        let order = Arc::new(Mutex::new(Vec::new()));
        let calls = (0..200u64).map(|i| {
            let (conn, order) = (conn.clone(), order.clone());
            async move {
                let ms = if i < 5 { 300 } else { i % 7 };
                let answer = conn.request(&wait(ms), Duration::from_secs(10)).await;
                assert_eq!(
                    answer.unwrap(),
                    MeshFrame::FetchOk {
                        messages: vec![],
                        last_seq: ms
                    }
                );
                order.lock().push(i);
            }
        });
        futures_util::future::join_all(calls).await;
        let order = order.lock().clone();
        assert_eq!(order.len(), 200);
        assert!(
            order[..195].iter().all(|&i| i >= 5),
            "a slow call held up quicker ones: {order:?}"
        );
        assert_eq!(
            streams.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one lane for them all"
        );
        conn.close("done");
    }

    #[tokio::test]
    async fn a_call_is_timed_at_every_stage_of_its_lane() {
        use crate::telemetry::metrics::{lane_wait_count, LaneStage};
        assert!(
            LaneStage::ALL
                .iter()
                .enumerate()
                .all(|(i, &s)| s as usize == i),
            "ALL lists the stages in their order"
        );
        let (server, client, _dir) = pair();
        let addr = server.local_addr().unwrap();
        serve_lanes(server);
        let conn = client.connect(addr).await.unwrap();
        let before = LaneStage::ALL.map(lane_wait_count);
        for _ in 0..3 {
            let answer = conn.request(&MeshFrame::Ping, Duration::from_secs(5)).await;
            assert_eq!(answer.unwrap(), MeshFrame::Ok);
        }
        let after = LaneStage::ALL.map(lane_wait_count);
        for (i, stage) in LaneStage::ALL.into_iter().enumerate() {
            let n = after[i] - before[i];
            // Writes are timed per write, which may carry several frames; the rest per call.
            let least = match stage {
                LaneStage::CallsWritten | LaneStage::AnswersWritten => 1,
                _ => 3,
            };
            assert!(n >= least, "{stage:?} observed {n} times for 3 calls");
        }
        conn.close("done");
    }

    #[tokio::test]
    async fn a_call_that_gives_up_leaves_the_lane_working() {
        let (server, client, _dir) = pair();
        let addr = server.local_addr().unwrap();
        serve_lanes(server);
        let conn = client.connect(addr).await.unwrap();
        let late = conn.request(&wait(500), Duration::from_millis(50)).await;
        assert!(matches!(late, Err(TransportError::Timeout(_))), "{late:?}");
        for _ in 0..3 {
            let answer = conn.request(&MeshFrame::Ping, Duration::from_secs(5)).await;
            assert_eq!(answer.unwrap(), MeshFrame::Ok);
        }
        // The late answer arrives for nobody and is dropped; the lane goes on.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let answer = conn.request(&MeshFrame::Ping, Duration::from_secs(5)).await;
        assert_eq!(answer.unwrap(), MeshFrame::Ok);
        conn.close("done");
    }

    #[tokio::test]
    async fn a_lane_that_ends_fails_its_callers_and_the_next_request_opens_another() {
        let (server, client, _dir) = pair();
        let addr = server.local_addr().unwrap();
        // The first lane is read once and ended without an answer; later ones are served.
        tokio::spawn(async move {
            let conn = server.accept().await.unwrap();
            let (mut w, mut r) = conn.accept().await.unwrap();
            assert!(matches!(r.read().await, Ok(Some(MeshFrame::Call { .. }))));
            w.finish();
            drop(r);
            while let Some((w, mut r)) = conn.accept().await {
                let first = r.read().await.unwrap().unwrap();
                tokio::spawn(serve_lane(first, w, r, |_| async { MeshFrame::Ok }));
            }
        });
        let conn = client.connect(addr).await.unwrap();
        let lanes = m::MESH_LANES_OPENED.get();
        let lost = conn.request(&MeshFrame::Ping, Duration::from_secs(5)).await;
        assert!(
            matches!(lost, Err(TransportError::Connection(_))),
            "{lost:?}"
        );
        let answer = conn.request(&MeshFrame::Ping, Duration::from_secs(5)).await;
        assert_eq!(answer.unwrap(), MeshFrame::Ok);
        assert!(m::MESH_LANES_OPENED.get() - lanes >= 2);
        conn.close("done");
    }

    #[tokio::test]
    async fn a_request_alone_on_its_stream_is_still_answered() {
        let (server, client, _dir) = pair();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let conn = server.accept().await.unwrap();
            while let Some((w, mut r)) = conn.accept().await {
                let first = r.read().await.unwrap().unwrap();
                tokio::spawn(serve_requests(first, w, r, |frame| async move {
                    match frame {
                        MeshFrame::Ping => MeshFrame::Ok,
                        _ => MeshFrame::Error(crate::protocol::MeshError::BadRequest("no".into())),
                    }
                }));
            }
        });
        let conn = client.connect(addr).await.unwrap();
        // As a peer built before lanes asks: one frame, the stream finished, one frame back.
        let (mut w, mut r) = conn.open().await.unwrap();
        w.send(&MeshFrame::Ping).await.unwrap();
        w.finish();
        assert_eq!(r.read().await.unwrap(), Some(MeshFrame::Ok));
        assert_eq!(r.read().await.unwrap(), None, "then the stream ends");
        // And a lane on the same connection works beside it.
        let answer = conn.request(&MeshFrame::Ping, Duration::from_secs(5)).await;
        assert_eq!(answer.unwrap(), MeshFrame::Ok);
        conn.close("done");
    }

    #[tokio::test]
    async fn a_frame_other_than_a_call_stops_a_lane() {
        let (server, client, _dir) = pair();
        let addr = server.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let conn = server.accept().await.unwrap();
            let (w, mut r) = conn.accept().await.unwrap();
            let first = r.read().await.unwrap().unwrap();
            serve_lane(first, w, r, |_| async { MeshFrame::Ok }).await;
            conn
        });
        let conn = client.connect(addr).await.unwrap();
        let (mut w, mut r) = conn.open().await.unwrap();
        let mut call = BytesMut::new();
        MeshFrame::encode_call(1, &MeshFrame::Ping, &mut call);
        w.send_bytes(&call.freeze()).await.unwrap();
        let bad = m::MESH_BAD_FRAMES.get();
        w.send(&MeshFrame::Ping).await.unwrap();
        assert_eq!(
            r.read().await.unwrap(),
            Some(MeshFrame::Answer {
                id: 1,
                frame: Box::new(MeshFrame::Ok)
            })
        );
        // The server stops reading and ends its side once the first call is answered.
        let ended = tokio::time::timeout(Duration::from_secs(5), r.read()).await;
        assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");
        let _conn = tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("serve_lane returned")
            .unwrap();
        assert!(m::MESH_BAD_FRAMES.get() > bad);
    }

    #[tokio::test]
    async fn a_client_without_the_cluster_certificate_is_refused() {
        let (server, client, dir) = pair();
        let addr = server.local_addr().unwrap();
        // The stranger trusts the cluster's CA, so it accepts the server, but presents a
        // certificate of another CA: only the server's check of client certificates stops it.
        let other = tempfile::tempdir().unwrap();
        tls::generate_dev_certs(other.path()).unwrap();
        let foreign = MeshTls::load(
            &dir.path().join("ca.pem"),
            &other.path().join("node.pem"),
            &other.path().join("node.key"),
        )
        .unwrap();
        let stranger = Mesh::client(
            "127.0.0.1:0".parse().unwrap(),
            &foreign,
            1024,
            Duration::from_secs(2),
        )
        .unwrap();
        let failures = m::MESH_HANDSHAKE_FAILURES.get();
        let accept_task = tokio::spawn(async move {
            let conn = server.accept().await.expect("a connection");
            conn.remote_address()
        });
        // In QUIC the client may finish its side of the handshake before the server has
        // checked its certificate: then the server closes the connection, and nothing it asks
        // gets an answer.
        if let Ok(conn) = stranger.connect(addr).await {
            let answer = conn.request(&MeshFrame::Ping, Duration::from_secs(5)).await;
            assert!(answer.is_err(), "the stranger got an answer: {answer:?}");
        }
        // The first connection the server accepts is the cluster member's, not the stranger's.
        let member = client.connect(addr).await.expect("a member connects");
        let accepted = tokio::time::timeout(Duration::from_secs(10), accept_task)
            .await
            .expect("accept returned")
            .unwrap();
        assert_eq!(accepted, client.local_addr().unwrap());
        assert!(m::MESH_HANDSHAKE_FAILURES.get() > failures);
        member.close("done");
    }

    #[tokio::test]
    async fn garbage_on_a_stream_is_a_wire_error() {
        let (server, client, _dir) = pair();
        let addr = server.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let conn = server.accept().await.unwrap();
            let (_w, mut r) = conn.accept().await.unwrap();
            r.read().await
        });
        let conn = client.connect(addr).await.unwrap();
        let (mut w, _r) = conn.open().await.unwrap();
        w.send_bytes(&Bytes::from_static(
            b"\x00\x00\x00\x06\x00\x01\xff\xff\xff\xff",
        ))
        .await
        .unwrap();
        w.finish();
        let result = server_task.await.unwrap();
        assert!(matches!(result, Err(TransportError::Wire(_))), "{result:?}");
    }

    #[tokio::test]
    async fn a_silent_handshake_does_not_hold_up_other_connections() {
        let (server, client, _dir) = pair();
        let addr = server.local_addr().unwrap();
        // A relay that passes the client's first datagram (its Initial) to the server and
        // nothing after: the server's handshake with it never completes.
        let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let relay_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let (n, _) = relay.recv_from(&mut buf).await.unwrap();
            relay.send_to(&buf[..n], addr).await.unwrap();
            loop {
                if relay.recv_from(&mut buf).await.is_err() {
                    return;
                }
            }
        });
        let stalled = Mesh::client(
            "127.0.0.1:0".parse().unwrap(),
            &MeshTls::dev(_dir.path()).unwrap(),
            1024,
            Duration::from_secs(10),
        )
        .unwrap();
        let stalled_task = tokio::spawn(async move { stalled.connect(relay_addr).await.is_ok() });
        let server = Arc::new(server);
        let accepting = server.clone();
        let accept_task =
            tokio::spawn(async move { accepting.accept().await.map(|c| c.remote_address()) });
        // Let the server take the stalled attempt first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The client's connect gives up after 2 s, under the 3 s idle timeout that would end
        // the stalled handshake: it succeeds only if its handshake runs beside that one.
        let conn = client
            .connect(addr)
            .await
            .expect("accepted beside the stalled handshake");
        let accepted = tokio::time::timeout(Duration::from_secs(5), accept_task)
            .await
            .expect("accept returned")
            .unwrap()
            .expect("a connection");
        assert_eq!(accepted, client.local_addr().unwrap());
        conn.close("done");
        relay_task.abort();
        stalled_task.abort();
    }

    #[tokio::test]
    async fn pool_reuses_and_reports_unreachable_peers() {
        let (server, client, _dir) = pair();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(conn) = server.accept().await {
                tokio::spawn(async move { conn.closed().await });
            }
        });
        let pool = PeerPool::new(Arc::new(client));
        let a = pool.get(addr).await.unwrap();
        let b = pool.get(addr).await.unwrap();
        assert_eq!(a.remote_address(), b.remote_address());
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        assert!(pool.get(dead_addr).await.is_err());
    }
}
