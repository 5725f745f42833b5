//! Lanes: a connection's requests and their answers on one long-lived stream.
//!
//! A request on a stream of its own costs a stream's opening, flow-control credit and
//! closing on both sides, and its frame travels in a packet of its own. A post crosses two
//! such hops (Web API to admin server to channel server), and under load that bookkeeping
//! was a fifth of the process's CPU. A lane carries each request as
//! [`MeshFrame::Call`] with an id; the server answers each with [`MeshFrame::Answer`] as soon
//! as it is ready, so one slow request never holds up the others, and frames written close
//! together leave in the same packets.
//!
//! The client side ([`Lane`]) has a writer task, which takes whole encoded frames from a
//! queue (so a caller that gives up never leaves half a frame on the stream) and writes
//! whatever is queued in one call, and a reader task, which hands each answer to its caller.
//! When the stream fails, every caller waiting on it gets the error, and the connection
//! opens a new lane for the next request. The server side is [`serve_lane`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{FrameReader, FrameWriter, TransportError};
use crate::protocol::MeshFrame;
use crate::telemetry::metrics as m;
use crate::telemetry::metrics::LaneStage;

/// Encoded frames queued for a lane's writer; a caller waits for room past this.
const WRITE_QUEUE: usize = 1024;
/// Most frames the writer puts on the stream in one call.
const WRITE_BATCH: usize = 256;
/// Calls of one lane that a server answers at once; it reads no further calls until one of
/// them is answered, so a client that asks faster than the server answers is slowed by the
/// stream's flow control instead of growing the server's memory.
pub const MAX_CALLS_IN_FLIGHT: usize = 4096;

/// The client side of a lane.
pub(crate) struct Lane {
    queue: mpsc::Sender<Queued>,
    waiting: Arc<Mutex<Waiting>>,
    next_id: AtomicU64,
}

/// An encoded frame waiting for a lane's writer, and when it was queued.
type Queued = (Bytes, Instant);

#[derive(Default)]
struct Waiting {
    /// Each caller's channel for its answer, and when the reader took the answer off the stream.
    calls: HashMap<u64, oneshot::Sender<(MeshFrame, Instant)>>,
    /// Why the lane ended; set once, after which no call is taken.
    failed: Option<String>,
}

impl Waiting {
    /// Ends the lane: every caller still waiting sees its answer channel close.
    fn fail(&mut self, reason: String) {
        if self.failed.is_none() {
            self.failed = Some(reason);
        }
        self.calls.clear();
    }
}

/// Takes a caller's call out of the waiting set however the caller ends (answered, timed
/// out, dropped).
struct Registered<'a> {
    waiting: &'a Mutex<Waiting>,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.waiting.lock().calls.remove(&self.id);
    }
}

impl Lane {
    /// Starts the lane's writer and reader tasks on a freshly opened stream.
    pub(crate) fn start(writer: FrameWriter, reader: FrameReader) -> Lane {
        m::MESH_LANES_OPENED.inc();
        let (queue, rx) = mpsc::channel(WRITE_QUEUE);
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(write_frames(writer, rx, waiting.clone(), Side::Client));
        tokio::spawn(read_answers(reader, waiting.clone()));
        Lane {
            queue,
            waiting,
            next_id: AtomicU64::new(0),
        }
    }

    /// Whether the lane ended (the stream or connection failed); a new request needs a new one.
    pub(crate) fn is_failed(&self) -> bool {
        self.waiting.lock().failed.is_some() || self.queue.is_closed()
    }

    /// Sends `frame` as a call and waits for its answer.
    pub(crate) async fn call(&self, frame: &MeshFrame) -> Result<MeshFrame, TransportError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock();
            if let Some(reason) = &waiting.failed {
                return Err(TransportError::Connection(reason.clone()));
            }
            waiting.calls.insert(id, tx);
        }
        let _registered = Registered {
            waiting: &self.waiting,
            id,
        };
        let mut buf = BytesMut::with_capacity(256);
        MeshFrame::encode_call(id, frame, &mut buf);
        if self
            .queue
            .send((buf.freeze(), Instant::now()))
            .await
            .is_err()
        {
            return Err(self.failure());
        }
        let (answer, read_at) = rx.await.map_err(|_| self.failure())?;
        m::lane_wait(LaneStage::AnswerHanded, read_at);
        Ok(answer)
    }

    fn failure(&self) -> TransportError {
        let reason = self.waiting.lock().failed.clone();
        TransportError::Connection(reason.unwrap_or_else(|| "the lane ended".into()))
    }
}

/// Which end of a lane a writer serves: its frames are calls (client) or answers (server).
#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

async fn write_frames(
    mut writer: FrameWriter,
    mut rx: mpsc::Receiver<Queued>,
    waiting: Arc<Mutex<Waiting>>,
    side: Side,
) {
    let (queued, written) = match side {
        Side::Client => (LaneStage::CallQueued, LaneStage::CallsWritten),
        Side::Server => (LaneStage::AnswerQueued, LaneStage::AnswersWritten),
    };
    let mut taken: Vec<Queued> = Vec::with_capacity(WRITE_BATCH);
    let mut batch: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut taken, WRITE_BATCH).await > 0 {
        // Let the callers that are ready run once first: under load their frames join this
        // write and leave in the same packets; when idle the turn comes back at once.
        tokio::task::yield_now().await;
        while taken.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(frame) => taken.push(frame),
                Err(_) => break,
            }
        }
        let writing = Instant::now();
        for (frame, at) in taken.drain(..) {
            m::lane_wait_between(queued, at, writing);
            batch.push(frame);
        }
        if let Err(e) = writer.send_many(&mut batch).await {
            waiting.lock().fail(e.to_string());
            return;
        }
        m::lane_wait(written, writing);
        batch.clear();
    }
    writer.finish();
}

async fn read_answers(mut reader: FrameReader, waiting: Arc<Mutex<Waiting>>) {
    let reason = loop {
        match reader.read().await {
            Ok(Some(MeshFrame::Answer { id, frame })) => {
                // A caller that gave up is no longer waiting: its answer is dropped.
                if let Some(tx) = waiting.lock().calls.remove(&id) {
                    let _ = tx.send((*frame, Instant::now()));
                }
            }
            Ok(Some(other)) => {
                m::MESH_BAD_FRAMES.inc();
                tracing::warn!(frame = ?other, "a lane's peer sent something other than an answer");
                break "the peer sent something other than an answer on a lane".to_string();
            }
            Ok(None) => break "the peer ended the lane".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    waiting.lock().fail(reason);
}

/// Serves the requests of a stream whose first frame was `first`: a lane when that is a
/// [`MeshFrame::Call`] (see [`serve_lane`]), else one request alone on its stream, as peers
/// built before lanes send them, answered with one frame.
pub async fn serve_requests<A, F>(
    first: MeshFrame,
    mut writer: FrameWriter,
    reader: FrameReader,
    answer: A,
) where
    A: Fn(MeshFrame) -> F + Clone + Send + 'static,
    F: Future<Output = MeshFrame> + Send + 'static,
{
    if matches!(first, MeshFrame::Call { .. }) {
        return serve_lane(first, writer, reader, answer).await;
    }
    let frame = answer(first).await;
    let _ = writer.send(&frame).await;
    writer.finish();
}

/// Serves a lane whose first frame was `first` (a [`MeshFrame::Call`]): each call is answered
/// by `answer`, in a task of its own, and the answers are written as they are ready. Ends
/// when the client finishes the stream (after the last answer is written), the connection
/// fails, or a frame other than a call arrives (counted as a bad frame; the stream stops).
pub async fn serve_lane<A, F>(
    first: MeshFrame,
    writer: FrameWriter,
    mut reader: FrameReader,
    answer: A,
) where
    A: Fn(MeshFrame) -> F + Clone + Send + 'static,
    F: Future<Output = MeshFrame> + Send + 'static,
{
    let (queue, rx) = mpsc::channel(WRITE_QUEUE);
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let written = tokio::spawn(write_frames(writer, rx, waiting, Side::Server));
    let in_flight = Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT));
    let mut next = Some(first);
    loop {
        let frame = match next.take() {
            Some(frame) => frame,
            None => match reader.read().await {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(_) => break,
            },
        };
        let read_at = Instant::now();
        let MeshFrame::Call { id, frame } = frame else {
            m::MESH_BAD_FRAMES.inc();
            tracing::warn!(frame = ?frame, "a frame other than a call on a lane; stopping it");
            reader.stop();
            break;
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (queue, answer) = (queue.clone(), answer.clone());
        tokio::spawn(async move {
            m::lane_wait(LaneStage::CallStarted, read_at);
            let frame = Box::new(answer(*frame).await);
            let answer = MeshFrame::Answer { id, frame }.to_bytes();
            let _ = queue.send((answer, Instant::now())).await;
            drop(permit);
        });
    }
    // The writer ends once every call's task has sent its answer (each holds a sender).
    drop(queue);
    let _ = written.await;
}
