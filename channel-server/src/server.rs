//! The mesh side of the channel server: accepts connections, routes each request to its
//! channel's task, and runs gateways' subscription streams.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use shared::ids::{ChannelId, NodeId, WorkspaceId};
use shared::mesh::{FrameReader, FrameWriter, MeshConn};
use shared::protocol::{MeshError, MeshFrame};
use shared::ring::Ring;
use shared::store::SharedStore;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::channel::{ChannelCmd, ChannelTask, GatewayLink};
use crate::metrics as m;

/// Commands queued per channel before senders wait.
const CHANNEL_QUEUE: usize = 4096;

/// Whether [`ChannelServer::dispatch_with`] waits for room in a channel's queue.
#[derive(Clone, Copy)]
enum Queueing {
    Wait,
    NoWait,
}

pub struct Server {
    pub node: NodeId,
    pub store: SharedStore,
    pub window: usize,
    pub gateway_queue: usize,
    /// The mesh frame limit: channel tasks keep their replies well under it.
    pub max_frame_bytes: usize,
    pub ring: watch::Receiver<Arc<Ring>>,
    channels: Mutex<HashMap<ChannelId, mpsc::Sender<ChannelCmd>>>,
    next_link: AtomicU64,
}

impl Server {
    pub fn new(
        node: NodeId,
        store: SharedStore,
        window: usize,
        gateway_queue: usize,
        max_frame_bytes: usize,
        ring: watch::Receiver<Arc<Ring>>,
    ) -> Arc<Server> {
        Arc::new(Server {
            node,
            store,
            window,
            gateway_queue,
            max_frame_bytes,
            ring,
            channels: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
        })
    }

    fn owner_check(&self, channel: &ChannelId) -> Result<(), MeshError> {
        let ring = self.ring.borrow();
        if ring.is_owner(&self.node, channel) {
            Ok(())
        } else {
            m::REFUSED.with_label_values(&["wrong_owner"]).inc();
            Err(MeshError::WrongOwner {
                epoch: ring.epoch(),
            })
        }
    }

    /// Sends `cmd` to the channel's task, starting it if needed. Refuses channels this node
    /// does not own.
    ///
    /// Ownership is checked under the map's lock each time a task is looked up or started:
    /// `apply_ring` removes moved channels under the same lock after the ring changed, so a
    /// task is either started before that removal (and released by it) or refused here.
    async fn dispatch(
        &self,
        channel: &ChannelId,
        workspace: &WorkspaceId,
        cmd: ChannelCmd,
    ) -> Result<(), MeshError> {
        self.dispatch_with(channel, workspace, cmd, Queueing::Wait)
            .await
    }

    /// Sends `cmd` to the channel's task, starting it if needed. With [`Queueing::Wait`] a
    /// full queue is waited out (a post's caller waits for its answer anyway); with
    /// [`Queueing::NoWait`] it is refused as `Unavailable`, for a caller that must not be
    /// held up by one busy channel.
    async fn dispatch_with(
        &self,
        channel: &ChannelId,
        workspace: &WorkspaceId,
        mut cmd: ChannelCmd,
        queueing: Queueing,
    ) -> Result<(), MeshError> {
        for _ in 0..2 {
            let tx = {
                let mut channels = self.channels.lock();
                self.owner_check(channel)?;
                channels
                    .entry(channel.clone())
                    .or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(CHANNEL_QUEUE);
                        let task = ChannelTask::new(
                            channel.clone(),
                            workspace.clone(),
                            self.store.clone(),
                            self.window,
                            crate::channel::reply_budget(self.max_frame_bytes),
                        );
                        tokio::spawn(task.run(rx));
                        tx
                    })
                    .clone()
            };
            let sent = match queueing {
                Queueing::Wait => tx.send(cmd).await.map_err(|e| e.0),
                Queueing::NoWait => match tx.try_send(cmd) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        m::REFUSED.with_label_values(&["channel_busy"]).inc();
                        return Err(MeshError::Unavailable("the channel is busy".into()));
                    }
                    Err(mpsc::error::TrySendError::Closed(back)) => Err(back),
                },
            };
            match sent {
                Ok(()) => return Ok(()),
                Err(back) => {
                    // The task ended (idle or released) after we looked it up: start a new one.
                    cmd = back;
                    let mut channels = self.channels.lock();
                    if channels.get(channel).is_some_and(|t| t.same_channel(&tx)) {
                        channels.remove(channel);
                    }
                }
            }
        }
        Err(MeshError::Unavailable("channel task did not start".into()))
    }

    /// Sends to an existing task only (unsubscribe needs no task to be started).
    fn dispatch_existing(&self, channel: &ChannelId, cmd: ChannelCmd) {
        let tx = self.channels.lock().get(channel).cloned();
        if let Some(tx) = tx {
            let _ = tx.try_send(cmd);
        }
    }

    /// Releases the channels the new ring gave to someone else.
    pub fn apply_ring(&self, ring: &Ring) {
        let released: Vec<(ChannelId, mpsc::Sender<ChannelCmd>)> = {
            let mut channels = self.channels.lock();
            let gone: Vec<ChannelId> = channels
                .keys()
                .filter(|c| !ring.is_owner(&self.node, c))
                .cloned()
                .collect();
            gone.into_iter()
                .filter_map(|c| channels.remove(&c).map(|tx| (c, tx)))
                .collect()
        };
        if !released.is_empty() {
            tracing::info!(epoch = %ring.epoch(), channels = released.len(), "releasing channels moved by the ring");
        }
        for (_, tx) in released {
            let epoch = ring.epoch();
            tokio::spawn(async move {
                let _ = tx.send(ChannelCmd::Release { epoch }).await;
            });
        }
    }

    /// Serves one mesh connection until it closes.
    pub async fn serve_connection(self: Arc<Self>, conn: MeshConn) {
        while let Some((w, r)) = conn.accept().await {
            let server = self.clone();
            tokio::spawn(async move { server.serve_stream(w, r).await });
        }
    }

    async fn serve_stream(self: Arc<Self>, w: FrameWriter, mut r: FrameReader) {
        let first = match r.read().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "bad first frame");
                return;
            }
        };
        match first {
            f @ (MeshFrame::Subscribe { .. }
            | MeshFrame::Unsubscribe { .. }
            | MeshFrame::Publish { .. }) => self.serve_gateway(f, w, r).await,
            request => {
                let answer = move |frame| self.clone().answer(frame);
                shared::mesh::serve_requests(request, w, r, answer).await;
            }
        }
    }

    /// The answer to one request.
    pub(crate) async fn answer(self: Arc<Self>, request: MeshFrame) -> MeshFrame {
        match request {
            MeshFrame::Post { msg } => {
                let (reply, rx) = oneshot::channel();
                let (channel, workspace) = (msg.channel.clone(), msg.workspace.clone());
                let cmd = ChannelCmd::Post {
                    msg,
                    received: Instant::now(),
                    reply,
                };
                match self.dispatch(&channel, &workspace, cmd).await {
                    Ok(()) => rx.await.unwrap_or(MeshFrame::Error(MeshError::Unavailable(
                        "channel task stopped".into(),
                    ))),
                    Err(e) => MeshFrame::Error(e),
                }
            }
            MeshFrame::Fetch {
                channel,
                workspace,
                after_seq,
                up_to_seq,
                limit,
            } => {
                let (reply, rx) = oneshot::channel();
                let cmd = ChannelCmd::Fetch {
                    after_seq,
                    up_to_seq,
                    limit,
                    reply,
                };
                match self.dispatch(&channel, &workspace, cmd).await {
                    Ok(()) => rx.await.unwrap_or(MeshFrame::Error(MeshError::Unavailable(
                        "channel task stopped".into(),
                    ))),
                    Err(e) => MeshFrame::Error(e),
                }
            }
            MeshFrame::Ping => MeshFrame::Ok,
            other => {
                m::REFUSED.with_label_values(&["bad_request"]).inc();
                MeshFrame::Error(MeshError::BadRequest(format!(
                    "unexpected frame {}",
                    frame_name(&other)
                )))
            }
        }
    }

    /// A gateway's subscription stream: subscribe/unsubscribe/publish in, ordered frames out.
    async fn serve_gateway(
        self: Arc<Self>,
        first: MeshFrame,
        mut w: FrameWriter,
        mut r: FrameReader,
    ) {
        let (tx, mut rx) = mpsc::channel::<Bytes>(self.gateway_queue);
        let cut = CancellationToken::new();
        let link = GatewayLink {
            id: self.next_link.fetch_add(1, Ordering::Relaxed),
            tx,
            cut: cut.clone(),
        };
        m::GATEWAY_LINKS.inc();
        let writer_cut = cut.clone();
        let writer = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(256);
            loop {
                let n = tokio::select! {
                    _ = writer_cut.cancelled() => break,
                    n = rx.recv_many(&mut buf, 256) => n,
                };
                if n == 0 {
                    break;
                }
                // A gateway that stopped reading holds the write forever (flow control):
                // once the link is cut (its queue overflowed), the stream is reset instead,
                // which frees what was queued and tells the gateway, which subscribes again.
                let sent = tokio::select! {
                    _ = writer_cut.cancelled() => {
                        w.reset();
                        break;
                    }
                    sent = w.send_many(&mut buf) => sent,
                };
                if sent.is_err() {
                    break;
                }
                buf.clear();
            }
            writer_cut.cancel();
            w.finish();
        });
        let mut subscribed: HashSet<ChannelId> = HashSet::new();
        let mut next = Some(first);
        loop {
            let frame = match next.take() {
                Some(f) => f,
                None => {
                    let read = tokio::select! {
                        _ = cut.cancelled() => break,
                        read = r.read() => read,
                    };
                    match read {
                        Ok(Some(f)) => f,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            match frame {
                MeshFrame::Subscribe {
                    channel,
                    workspace,
                    after_seq,
                } => {
                    let cmd = ChannelCmd::Subscribe {
                        link: link.clone(),
                        after_seq,
                    };
                    // Not waiting for room in a busy channel's queue: that would stop this
                    // gateway's every other subscription behind it. Refused, the gateway
                    // subscribes again on its next reconcile tick.
                    let dispatched = self
                        .dispatch_with(&channel, &workspace, cmd, Queueing::NoWait)
                        .await;
                    match dispatched {
                        Ok(()) => {
                            subscribed.insert(channel);
                        }
                        Err(error) => {
                            // Through `offer`: were the refusal dropped, the gateway would
                            // wait for a subscription that never comes; a link too full to
                            // take it is cut, and the gateway subscribes everything again.
                            link.offer(MeshFrame::Refused { channel, error }.to_bytes());
                        }
                    }
                }
                MeshFrame::Unsubscribe { channel } => {
                    if subscribed.remove(&channel) {
                        self.dispatch_existing(
                            &channel,
                            ChannelCmd::Unsubscribe { link_id: link.id },
                        );
                    }
                }
                MeshFrame::Publish { channel, event } => {
                    if self.owner_check(&channel).is_ok() {
                        self.dispatch_existing(&channel, ChannelCmd::Publish { event });
                    }
                }
                other => {
                    m::REFUSED.with_label_values(&["bad_request"]).inc();
                    tracing::warn!(
                        frame = frame_name(&other),
                        "unexpected frame on a subscription stream"
                    );
                    break;
                }
            }
        }
        cut.cancel();
        for channel in subscribed {
            self.dispatch_existing(&channel, ChannelCmd::Unsubscribe { link_id: link.id });
        }
        let _ = writer.await;
        m::GATEWAY_LINKS.dec();
    }
}

fn frame_name(f: &MeshFrame) -> &'static str {
    match f {
        MeshFrame::Hello { .. } => "hello",
        MeshFrame::Ring(_) => "ring",
        MeshFrame::User(_) => "user",
        MeshFrame::Post { .. } => "post",
        MeshFrame::PostOk { .. } => "post_ok",
        MeshFrame::Subscribe { .. } => "subscribe",
        MeshFrame::SubscribeAck { .. } => "subscribe_ack",
        MeshFrame::Unsubscribe { .. } => "unsubscribe",
        MeshFrame::Publish { .. } => "publish",
        MeshFrame::Deliver { .. } => "deliver",
        MeshFrame::Ephemeral { .. } => "ephemeral",
        MeshFrame::Refused { .. } => "refused",
        MeshFrame::Fetch { .. } => "fetch",
        MeshFrame::FetchOk { .. } => "fetch_ok",
        MeshFrame::Ping => "ping",
        MeshFrame::Ok => "ok",
        MeshFrame::Error(_) => "error",
        MeshFrame::PresenceGet { .. } => "presence_get",
        MeshFrame::PresenceIs { .. } => "presence_is",
        MeshFrame::PresenceQuery { .. } => "presence_query",
        MeshFrame::PresenceActive { .. } => "presence_active",
        MeshFrame::Call { .. } => "call",
        MeshFrame::Answer { .. } => "answer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::UserId;
    use shared::protocol::{MessageKind, NewMessage, RingMember, RingState};
    use shared::store::sqlite::SqliteStore;

    fn ring(epoch: u64, owner: &str) -> Arc<Ring> {
        Arc::new(Ring::new(RingState {
            epoch: shared::ids::RingEpoch(epoch),
            members: vec![RingMember {
                node: NodeId::from(owner),
                mesh_addr: "127.0.0.1:1".into(),
                draining: false,
            }],
            vnodes: 0,
        }))
    }

    #[tokio::test]
    async fn a_task_is_never_started_for_a_channel_the_ring_moved_away_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open(dir.path(), 1).unwrap());
        let (ring_tx, ring_rx) = watch::channel(ring(1, "cs-1"));
        let server = Server::new(NodeId::from("cs-1"), store, 8, 16, 1 << 20, ring_rx);
        let (channel, workspace) = (ChannelId::from("CX"), WorkspaceId::from("TW"));
        // The channel's task, as the server knows it: its queue is full, so a dispatch waits.
        let (old_tx, old_rx) = mpsc::channel(1);
        old_tx
            .try_send(ChannelCmd::Unsubscribe { link_id: 0 })
            .unwrap();
        server.channels.lock().insert(channel.clone(), old_tx);
        let (reply, answer) = oneshot::channel();
        let post = ChannelCmd::Post {
            msg: NewMessage {
                workspace: workspace.clone(),
                channel: channel.clone(),
                user: UserId::from("UA"),
                text: "hi".into(),
                client_msg_id: None,
                thread_ts: None,
                kind: MessageKind::Posted,
                broadcast: false,
                bot: false,
                rich: None,
            },
            received: Instant::now(),
            reply,
        };
        let mut dispatch = std::pin::pin!(server.dispatch(&channel, &workspace, post));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::future::Future::poll(dispatch.as_mut(), &mut cx).is_pending());
        // Meanwhile the ring moves the channel away and its task stops before `apply_ring`
        // ran: the dispatch finds the task gone and must not start another one here.
        ring_tx.send(ring(2, "cs-2")).unwrap();
        drop(old_rx);
        assert_eq!(
            dispatch.await,
            Err(MeshError::WrongOwner {
                epoch: shared::ids::RingEpoch(2)
            })
        );
        assert!(server.channels.lock().get(&channel).is_none());
        assert!(answer.await.is_err(), "the post was not taken");
    }

    /// A gateway's subscription stream, served by `server` on a real QUIC connection, whose
    /// first frame is `first`: the gateway's end of it, and the serving task.
    async fn gateway_stream(
        server: &Arc<Server>,
        first: MeshFrame,
        dir: &std::path::Path,
    ) -> (
        FrameWriter,
        FrameReader,
        tokio::task::JoinHandle<()>,
        [shared::mesh::Mesh; 2],
    ) {
        use shared::mesh::{Mesh, MeshTls};
        let tls = MeshTls::dev(dir).unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let cs = Mesh::server(socket, &tls, 1 << 20, std::time::Duration::from_secs(5)).unwrap();
        let gw = Mesh::client(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            1 << 20,
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        let (connected, accepted) = tokio::join!(gw.connect(cs.local_addr().unwrap()), cs.accept());
        let (mut gw_w, gw_r) = connected.unwrap().open().await.unwrap();
        gw_w.send(&first).await.unwrap();
        let (cs_w, mut cs_r) = accepted.unwrap().accept().await.unwrap();
        let first = cs_r.read().await.unwrap().unwrap();
        let serving = tokio::spawn(server.clone().serve_gateway(first, cs_w, cs_r));
        (gw_w, gw_r, serving, [cs, gw])
    }

    fn subscribe(channel: &str) -> MeshFrame {
        MeshFrame::Subscribe {
            channel: ChannelId::from(channel),
            workspace: WorkspaceId::from("TW"),
            after_seq: None,
        }
    }

    /// Stands in for a channel's task: its queue, as the server finds it.
    fn fake_task(server: &Server, channel: &str, room: usize) -> mpsc::Receiver<ChannelCmd> {
        let (tx, rx) = mpsc::channel(room);
        server.channels.lock().insert(ChannelId::from(channel), tx);
        rx
    }

    /// One busy channel (its queue full) does not hold up a gateway's other subscriptions:
    /// its subscribe is refused at once (the gateway tries again), and the next is served.
    #[tokio::test]
    async fn a_busy_channel_does_not_stall_a_gateways_other_subscriptions() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open(dir.path(), 1).unwrap());
        let (_ring_tx, ring_rx) = watch::channel(ring(1, "cs-1"));
        let server = Server::new(NodeId::from("cs-1"), store, 8, 16, 1 << 20, ring_rx);
        let mut busy = fake_task(&server, "CBUSY", 1);
        server.channels.lock()[&ChannelId::from("CBUSY")]
            .try_send(ChannelCmd::Unsubscribe { link_id: 0 })
            .unwrap();
        let mut quiet = fake_task(&server, "CQUIET", 16);
        let (mut gw_w, mut gw_r, _serving, _meshes) =
            gateway_stream(&server, subscribe("CBUSY"), dir.path()).await;
        gw_w.send(&subscribe("CQUIET")).await.unwrap();
        let bound = std::time::Duration::from_secs(10);
        let refused = tokio::time::timeout(bound, gw_r.read()).await;
        assert!(
            matches!(
                &refused,
                Ok(Ok(Some(MeshFrame::Refused { channel, error: MeshError::Unavailable(_) })))
                    if channel.0 == "CBUSY"
            ),
            "{refused:?}"
        );
        let taken = tokio::time::timeout(bound, quiet.recv()).await;
        assert!(
            matches!(taken, Ok(Some(ChannelCmd::Subscribe { .. }))),
            "the quiet channel's subscribe never reached its task"
        );
        // The busy one got nothing more than what filled it.
        assert!(matches!(
            busy.try_recv(),
            Ok(ChannelCmd::Unsubscribe { .. })
        ));
        assert!(busy.try_recv().is_err());
    }

    /// A gateway that stops reading is cut off when its link's queue overflows, and its
    /// stream is reset rather than left waiting on the gateway forever: the serving task ends.
    #[tokio::test]
    async fn a_gateway_that_stops_reading_is_cut_off_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open(dir.path(), 1).unwrap());
        let (_ring_tx, ring_rx) = watch::channel(ring(1, "cs-1"));
        let server = Server::new(NodeId::from("cs-1"), store, 8, 16, 1 << 20, ring_rx);
        let mut task = fake_task(&server, "CX", 16);
        let (_gw_w, _gw_r, serving, _meshes) =
            gateway_stream(&server, subscribe("CX"), dir.path()).await;
        let Some(ChannelCmd::Subscribe { link, .. }) = task.recv().await else {
            panic!("no subscribe");
        };
        // The gateway reads nothing: 64 KiB frames fill the stream's flow-control window,
        // then the link's queue (16), and the link is cut.
        let frame = Bytes::from(vec![0u8; 64 * 1024]);
        let mut offered = 0;
        while link.offer(frame.clone()) {
            offered += 1;
            assert!(offered < 100_000, "the link never filled");
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), serving)
            .await
            .expect("the stream of a gateway that stopped reading was waited for")
            .unwrap();
    }
}
