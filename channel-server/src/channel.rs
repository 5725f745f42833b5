//! One channel's state, owned by one task: its sequencer, its window of recent messages and its
//! subscribed gateways. Every command for the channel goes through the task, so sequence
//! assignment, durable append, ack and fan-out happen in one order.
//!
//! Consecutive posts are handled as a group: each is checked for a repeated `client_msg_id`,
//! given the next sequence and ts, and all are appended at once (the store group-commits
//! them); then, in order, each is acked and fanned out. A message is fanned out only after it
//! is durable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shared::ids::{ChannelId, RingEpoch, Seq, Ts, WorkspaceId};
use shared::protocol::{
    EphemeralEvent, MeshError, MeshFrame, Message, MessageKind, NewMessage, PreviousMessage,
};
use shared::store::{AppendOutcome, GroupAppend, HistoryQuery, SharedStore, StorageErrorKind};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// Most messages a `SubscribeAck` or `FetchOk` carries; the gateway asks again for the rest.
pub const MAX_BACKLOG: u32 = 1000;
/// Bytes of messages a `SubscribeAck` or `FetchOk` carries at most, for a mesh frame limit
/// of `max_frame_bytes`: well under the limit, so the reply is never a frame the gateway
/// refuses (which would fail its link, and its resubscription would ask for the same again).
/// A long message is up to ~160 KB, so a thousand of them would not fit.
pub fn reply_budget(max_frame_bytes: usize) -> usize {
    max_frame_bytes / 2
}
/// The largest sequence a store keeps (stores hold it as a signed 64-bit integer).
const MAX_STORED_SEQ: Seq = i64::MAX as Seq;
/// Commands handled per wake-up, so one busy channel cannot starve the others.
const MAX_BATCH: usize = 256;
/// A channel with no subscribers and no traffic for this long releases its memory.
#[cfg(not(test))]
const IDLE_RELEASE: Duration = Duration::from_secs(600);
#[cfg(test)]
const IDLE_RELEASE: Duration = Duration::from_millis(200);

/// One gateway's subscription stream, as the channels it subscribed see it.
#[derive(Clone)]
pub struct GatewayLink {
    pub id: u64,
    /// Encoded frames for the stream's writer; bounded, so a stalled gateway is cut off
    /// instead of growing memory.
    pub tx: mpsc::Sender<Bytes>,
    /// Cancelled to cut the link off (its writer closes the stream; the gateway resubscribes).
    pub cut: CancellationToken,
}

impl GatewayLink {
    /// Queues a frame; on overflow the link is cut off and `false` returned.
    pub(crate) fn offer(&self, bytes: Bytes) -> bool {
        match self.tx.try_send(bytes) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                m::GATEWAY_OVERFLOWS.inc();
                tracing::warn!(link = self.id, "gateway link queue full, cutting it off");
                self.cut.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

pub enum ChannelCmd {
    Post {
        msg: NewMessage,
        received: Instant,
        reply: oneshot::Sender<MeshFrame>,
    },
    Subscribe {
        link: GatewayLink,
        after_seq: Option<Seq>,
    },
    Unsubscribe {
        link_id: u64,
    },
    Publish {
        event: EphemeralEvent,
    },
    Fetch {
        after_seq: Seq,
        up_to_seq: Option<Seq>,
        limit: u32,
        reply: oneshot::Sender<MeshFrame>,
    },
    /// The ring moved the channel away: refuse what is queued and stop.
    Release {
        epoch: RingEpoch,
    },
}

pub struct ChannelTask {
    channel: ChannelId,
    workspace: WorkspaceId,
    store: SharedStore,
    window_cap: usize,
    /// Bytes of messages one `SubscribeAck` or `FetchOk` carries at most ([`reply_budget`]).
    reply_bytes: usize,
    /// `None` until the last stored message has been read.
    head: Option<(Seq, Ts)>,
    window: VecDeque<Arc<Message>>,
    /// The newest message in `window` for each `client_msg_id` it holds, so a repeat is found
    /// without scanning the window. Kept in step with `window` by [`Self::remember`] and
    /// [`Self::clear_window`]. (The window's seqs are not always contiguous: a post the store
    /// refused leaves a gap until the head is read again, so this maps to the message itself
    /// rather than to a position.)
    window_by_client_id: HashMap<String, Arc<Message>>,
    subscribers: HashMap<u64, GatewayLink>,
}

impl ChannelTask {
    pub fn new(
        channel: ChannelId,
        workspace: WorkspaceId,
        store: SharedStore,
        window_cap: usize,
        reply_bytes: usize,
    ) -> ChannelTask {
        ChannelTask {
            channel,
            workspace,
            store,
            window_cap,
            reply_bytes,
            head: None,
            window: VecDeque::new(),
            window_by_client_id: HashMap::new(),
            subscribers: HashMap::new(),
        }
    }

    /// Runs until released, idle, or every sender is gone. Whatever way it stops, every
    /// gateway still subscribed is told (`Refused`), so it subscribes again (to a new task, or
    /// to the new owner) instead of waiting on a task that is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<ChannelCmd>) {
        m::ACTIVE_CHANNELS.inc();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let released = loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, MAX_BATCH) => n,
                _ = tokio::time::sleep(IDLE_RELEASE), if self.subscribers.is_empty() => {
                    // Close first, then drain: nothing can be lost between the two. What was
                    // drained is handled below (it may subscribe a gateway), then the closed
                    // queue ends the loop.
                    rx.close();
                    while let Ok(cmd) = rx.try_recv() {
                        batch.push(cmd);
                    }
                    batch.len()
                }
            };
            if n == 0 {
                break None;
            }
            if let Some(epoch) = self.handle_batch(&mut batch).await {
                break Some(epoch);
            }
        };
        let error = match released {
            Some(epoch) => MeshError::WrongOwner { epoch },
            None => MeshError::Unavailable("channel task stopped; subscribe again".into()),
        };
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            refuse(cmd, &self.channel, &error);
        }
        for (_, link) in self.subscribers.drain() {
            link.offer(
                MeshFrame::Refused {
                    channel: self.channel.clone(),
                    error: error.clone(),
                }
                .to_bytes(),
            );
        }
        m::ACTIVE_CHANNELS.dec();
    }

    /// Handles queued commands in order; returns `Some(epoch)` if released.
    async fn handle_batch(&mut self, batch: &mut Vec<ChannelCmd>) -> Option<RingEpoch> {
        let mut cmds = std::mem::take(batch).into_iter().peekable();
        while let Some(cmd) = cmds.next() {
            match cmd {
                ChannelCmd::Post {
                    msg,
                    received,
                    reply,
                } => {
                    let mut posts = vec![(msg, received, reply)];
                    while let Some(ChannelCmd::Post { .. }) = cmds.peek() {
                        if let Some(ChannelCmd::Post {
                            msg,
                            received,
                            reply,
                        }) = cmds.next()
                        {
                            posts.push((msg, received, reply));
                        }
                    }
                    self.posts(posts).await;
                }
                ChannelCmd::Subscribe { link, after_seq } => self.subscribe(link, after_seq).await,
                ChannelCmd::Unsubscribe { link_id } => {
                    self.subscribers.remove(&link_id);
                }
                ChannelCmd::Publish { event } => {
                    let bytes = MeshFrame::Ephemeral {
                        channel: self.channel.clone(),
                        event,
                    }
                    .to_bytes();
                    self.subscribers.retain(|_, link| link.offer(bytes.clone()));
                }
                ChannelCmd::Fetch {
                    after_seq,
                    up_to_seq,
                    limit,
                    reply,
                } => {
                    let answer = self.fetch(after_seq, up_to_seq, limit).await;
                    let _ = reply.send(answer);
                }
                ChannelCmd::Release { epoch } => {
                    let error = MeshError::WrongOwner { epoch };
                    for rest in cmds {
                        refuse(rest, &self.channel, &error);
                    }
                    return Some(epoch);
                }
            }
        }
        None
    }

    /// Reads the channel's last stored message once, so numbering continues where the previous
    /// owner stopped.
    async fn ensure_loaded(&mut self) -> Result<(Seq, Ts), MeshError> {
        if let Some(head) = self.head {
            return Ok(head);
        }
        let last = self
            .store
            .last_message(&self.workspace, &self.channel)
            .await
            .map_err(|e| MeshError::Store(e.to_string()))?;
        let head = last.map(|m| (m.seq, m.ts)).unwrap_or((0, Ts(0)));
        self.head = Some(head);
        self.clear_window();
        Ok(head)
    }

    fn next_ts(last: Ts) -> Ts {
        let now = Ts::now();
        if now > last {
            now
        } else {
            Ts(last.0 + 1)
        }
    }

    /// The newest message in the window with this `client_msg_id`.
    fn in_window_by_client_id(&self, client_msg_id: &str) -> Option<Arc<Message>> {
        self.window_by_client_id.get(client_msg_id).cloned()
    }

    /// The messages that the group's edits and deletions change, and the thread roots of its
    /// broadcast replies, as stored now: what each was before (`None`: gone, or never a
    /// message). A message the store cannot be asked about is left out, and its changes go
    /// without `previous_message` (its broadcasts without `root`) rather than failing.
    async fn change_targets(
        &self,
        posts: &[(NewMessage, Instant, oneshot::Sender<MeshFrame>)],
    ) -> HashMap<Ts, Option<PreviousMessage>> {
        let mut targets = HashMap::new();
        for (new, _, _) in posts {
            let target = match (&new.kind, new.broadcast, new.thread_ts) {
                (
                    MessageKind::Edited { target }
                    | MessageKind::Deleted { target }
                    | MessageKind::Pinned { target }
                    | MessageKind::Unpinned { target },
                    _,
                    _,
                ) => *target,
                (MessageKind::Posted, true, Some(root)) => root,
                _ => continue,
            };
            if targets.contains_key(&target) {
                continue;
            }
            match self
                .store
                .message_view(&self.workspace, &self.channel, target)
                .await
            {
                Ok(view) => {
                    let was = view.filter(|v| !v.deleted).map(|v| PreviousMessage {
                        user: v.message.user,
                        text: v.message.text,
                        thread_ts: v.message.thread_ts,
                        edited: v.edited,
                        rich: v.message.rich,
                    });
                    targets.insert(target, was);
                }
                Err(e) => {
                    tracing::warn!(channel = %self.channel, %target, error = %e, "could not read the message a change applies to");
                }
            }
        }
        targets
    }

    async fn posts(&mut self, posts: Vec<(NewMessage, Instant, oneshot::Sender<MeshFrame>)>) {
        let head = match self.ensure_loaded().await {
            Ok(head) => head,
            Err(e) => {
                for (_, _, reply) in posts {
                    m::POSTS.with_label_values(&["error"]).inc();
                    let _ = reply.send(MeshFrame::Error(e.clone()));
                }
                return;
            }
        };
        // A client_msg_id that the store already holds for this channel (beyond the window) is
        // found by the append itself, which then writes nothing: such repeats are learnt here
        // and the group is placed again, so the numbering has no gap.
        let mut stored_repeats: HashMap<String, Message> = HashMap::new();
        let before = self.change_targets(&posts).await;
        let mut pending = posts;
        let (placed, fresh_seqs, seq, ts, results) = loop {
            let (mut seq, mut ts) = head;
            // Each edit or deletion says what its message was: as stored, or as an earlier
            // change of this group left it.
            let mut current = before.clone();
            // Place each post, answering repeats of a client_msg_id with the stored message.
            let mut placed: Vec<(Message, Instant, oneshot::Sender<MeshFrame>)> =
                Vec::with_capacity(pending.len());
            for (new, received, reply) in pending {
                if let Some(cmid) = new.client_msg_id.as_deref() {
                    let earlier = match placed
                        .iter()
                        .find(|(m, _, _)| m.client_msg_id.as_deref() == Some(cmid))
                    {
                        Some((m, _, _)) => Some(m.clone()),
                        None => match self.in_window_by_client_id(cmid) {
                            Some(m) => Some((*m).clone()),
                            None => stored_repeats.get(cmid).cloned(),
                        },
                    };
                    if let Some(msg) = earlier {
                        // A repeat within this group is answered once the original is durable.
                        if placed.iter().any(|(m, _, _)| m.seq == msg.seq) {
                            placed.push((msg, received, reply));
                        } else {
                            m::POSTS.with_label_values(&["duplicate"]).inc();
                            let _ = reply.send(MeshFrame::PostOk {
                                msg,
                                duplicate: true,
                            });
                        }
                        continue;
                    }
                }
                seq += 1;
                ts = Self::next_ts(ts);
                let mut msg = Message::from_new(new, seq, ts);
                record_previous(&mut msg, &mut current);
                placed.push((msg, received, reply));
            }
            // Append every new message at once: they share the store's group commit.
            let mut first_of_seq = std::collections::HashSet::new();
            let fresh: Vec<Message> = placed
                .iter()
                .map(|(m, _, _)| m)
                .filter(|m| first_of_seq.insert(m.seq))
                .cloned()
                .collect();
            let fresh_seqs: Vec<Seq> = fresh.iter().map(|m| m.seq).collect();
            if fresh.is_empty() {
                break (placed, fresh_seqs, seq, ts, Vec::new());
            }
            match self.store.append_new(fresh).await {
                Ok(GroupAppend::Appended(results)) => break (placed, fresh_seqs, seq, ts, results),
                Ok(GroupAppend::Repeated(found)) => {
                    for (_, stored) in found {
                        if let Some(cmid) = stored.client_msg_id.clone() {
                            stored_repeats.insert(cmid, stored);
                        }
                    }
                    pending = placed
                        .into_iter()
                        .map(|(m, received, reply)| (unplaced(m), received, reply))
                        .collect();
                }
                Err(e) => {
                    let error = MeshError::Store(e.to_string());
                    for (_, _, reply) in placed {
                        m::POSTS.with_label_values(&["error"]).inc();
                        let _ = reply.send(MeshFrame::Error(error.clone()));
                    }
                    // Numbering may have diverged from the store: read the head again next time.
                    self.head = None;
                    return;
                }
            }
        };
        let mut outcome: HashMap<Seq, Result<AppendOutcome, MeshError>> = HashMap::new();
        let mut conflict = false;
        for (&seq, r) in fresh_seqs.iter().zip(results) {
            let r = r.map_err(|e| {
                if e.kind == StorageErrorKind::SeqConflict {
                    conflict = true;
                    m::SEQ_CONFLICTS.inc();
                    MeshError::Unavailable(format!(
                        "sequence {seq} was taken by another owner; retry"
                    ))
                } else {
                    MeshError::Store(e.to_string())
                }
            });
            outcome.insert(seq, r);
        }
        let mut fanned = std::collections::HashSet::new();
        let mut highest_stored: Option<(Seq, Ts)> = None;
        for (msg, received, reply) in placed {
            match outcome.get(&msg.seq) {
                Some(Ok(AppendOutcome::Stored)) => {
                    let duplicate = !fanned.insert(msg.seq);
                    if !duplicate {
                        m::POSTS.with_label_values(&["stored"]).inc();
                        m::POST_DURATION.observe(received.elapsed().as_secs_f64());
                        highest_stored = Some((msg.seq, msg.ts));
                        let msg = Arc::new(msg.clone());
                        self.remember(msg.clone());
                        self.fan_out(&msg);
                    } else {
                        m::POSTS.with_label_values(&["duplicate"]).inc();
                    }
                    let _ = reply.send(MeshFrame::PostOk { msg, duplicate });
                }
                Some(Ok(AppendOutcome::Duplicate(existing))) => {
                    m::POSTS.with_label_values(&["duplicate"]).inc();
                    let _ = reply.send(MeshFrame::PostOk {
                        msg: (**existing).clone(),
                        duplicate: true,
                    });
                }
                Some(Err(e)) => {
                    m::POSTS.with_label_values(&["error"]).inc();
                    let _ = reply.send(MeshFrame::Error(e.clone()));
                }
                None => {
                    let _ = reply.send(MeshFrame::Error(MeshError::Unavailable(
                        "append was not attempted".into(),
                    )));
                }
            }
        }
        let failed = outcome
            .values()
            .any(|r| !matches!(r, Ok(AppendOutcome::Stored)));
        if conflict || failed {
            // Numbering may have diverged from the store: read the head again next time.
            self.head = None;
        } else if let Some(head) = highest_stored {
            self.head = Some(head);
        } else {
            self.head = Some((seq, ts));
        }
    }

    fn remember(&mut self, msg: Arc<Message>) {
        if self.window.len() == self.window_cap {
            if let Some(evicted) = self.window.pop_front() {
                if let Some(cmid) = evicted.client_msg_id.as_deref() {
                    // Only if no newer message in the window took the id over.
                    if self
                        .window_by_client_id
                        .get(cmid)
                        .is_some_and(|m| Arc::ptr_eq(m, &evicted))
                    {
                        self.window_by_client_id.remove(cmid);
                    }
                }
            }
        }
        if let Some(cmid) = &msg.client_msg_id {
            // The newest message with an id wins, as a scan from the back would find.
            self.window_by_client_id.insert(cmid.clone(), msg.clone());
        }
        self.window.push_back(msg);
    }

    fn clear_window(&mut self) {
        self.window.clear();
        self.window_by_client_id.clear();
    }

    /// Sends a stored message once to each subscribed gateway: one encoding, shared bytes.
    fn fan_out(&mut self, msg: &Arc<Message>) {
        if self.subscribers.is_empty() {
            return;
        }
        let bytes = MeshFrame::deliver_bytes(msg);
        self.subscribers.retain(|_, link| {
            let ok = link.offer(bytes.clone());
            if ok {
                m::DELIVERIES.inc();
            }
            ok
        });
    }

    async fn subscribe(&mut self, link: GatewayLink, after_seq: Option<Seq>) {
        let (last_seq, _) = match self.ensure_loaded().await {
            Ok(head) => head,
            Err(e) => {
                link.offer(
                    MeshFrame::Refused {
                        channel: self.channel.clone(),
                        error: e,
                    }
                    .to_bytes(),
                );
                return;
            }
        };
        let backlog = match after_seq {
            Some(after) if after < last_seq => {
                match self.read_range(after, Some(last_seq), MAX_BACKLOG).await {
                    Ok(b) => b,
                    Err(e) => {
                        link.offer(
                            MeshFrame::Refused {
                                channel: self.channel.clone(),
                                error: e,
                            }
                            .to_bytes(),
                        );
                        return;
                    }
                }
            }
            _ => Vec::new(),
        };
        let ack = MeshFrame::SubscribeAck {
            channel: self.channel.clone(),
            last_seq,
            backlog,
        }
        .to_bytes();
        if link.offer(ack) {
            self.subscribers.insert(link.id, link);
        }
    }

    /// Messages with `after < seq <= up_to`, from the window when it covers them, else from the
    /// store: the first ones, at most `limit` and at most [`Self::reply_bytes`] of them (but
    /// always one, when there is one).
    async fn read_range(
        &self,
        after: Seq,
        up_to: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<Message>, MeshError> {
        let limit = limit.clamp(1, MAX_BACKLOG);
        let up_to = up_to.unwrap_or(Seq::MAX);
        // `after` may come from a client's resume point, up to `Seq::MAX`: nothing is past it,
        // nor past the largest seq a store can keep (both keep it signed).
        if after >= up_to || after >= MAX_STORED_SEQ {
            return Ok(Vec::new());
        }
        if let Some(first) = self.window.front() {
            if first.seq <= after.saturating_add(1) {
                let mut budget = ReplyBudget::new(self.reply_bytes);
                return Ok(self
                    .window
                    .iter()
                    .filter(|m| m.seq > after && m.seq <= up_to)
                    .take(limit as usize)
                    .take_while(|m| budget.admits(m))
                    .map(|m| (**m).clone())
                    .collect());
            }
        }
        let query = HistoryQuery {
            after_seq: Some(after),
            before_seq: up_to.checked_add(1),
            limit,
            newest_first: false,
            ..HistoryQuery::default()
        };
        let mut messages = self
            .store
            .history(&self.workspace, &self.channel, &query)
            .await
            .map_err(|e| MeshError::Store(e.to_string()))?;
        let mut budget = ReplyBudget::new(self.reply_bytes);
        let fits = messages.iter().take_while(|m| budget.admits(m)).count();
        messages.truncate(fits);
        Ok(messages)
    }

    async fn fetch(&mut self, after: Seq, up_to: Option<Seq>, limit: u32) -> MeshFrame {
        let last_seq = match self.ensure_loaded().await {
            Ok((s, _)) => s,
            Err(e) => return MeshFrame::Error(e),
        };
        match self.read_range(after, up_to, limit).await {
            Ok(messages) => MeshFrame::FetchOk { messages, last_seq },
            Err(e) => MeshFrame::Error(e),
        }
    }
}

/// What is left of a reply's bytes as messages are added to it.
struct ReplyBudget {
    left: usize,
    first: bool,
}

impl ReplyBudget {
    fn new(bytes: usize) -> ReplyBudget {
        ReplyBudget {
            left: bytes,
            first: true,
        }
    }

    /// Whether `m` still goes in: always the first message, then while the bytes last.
    fn admits(&mut self, m: &Message) -> bool {
        let len = encoded_len_bound(m);
        let admitted = self.first || len <= self.left;
        self.first = false;
        self.left = self.left.saturating_sub(len);
        admitted
    }
}

/// At least the bytes `m` takes in a mesh frame (bincode: each string is its bytes behind a
/// varint length, each integer a varint of at most 9 bytes), without encoding it.
fn encoded_len_bound(m: &Message) -> usize {
    let strings = m.workspace.0.len()
        + m.channel.0.len()
        + m.user.0.len()
        + m.text.len()
        + m.client_msg_id.as_ref().map_or(0, String::len)
        + match &m.kind {
            shared::protocol::MessageKind::ReactionAdded { reaction, .. }
            | shared::protocol::MessageKind::ReactionRemoved { reaction, .. } => reaction.len(),
            _ => 0,
        }
        + m.previous.as_ref().map_or(0, |p| {
            p.user.0.len() + p.text.len() + p.rich.as_deref().map_or(0, rich_bound)
        })
        + m.rich.as_deref().map_or(0, rich_bound);
    // Ten strings' lengths, seq, ts, thread_ts, the kind and its target, the previous
    // message's thread_ts and edited, the broadcast flag, option tags: well under 128 bytes.
    strings + 128
}

/// What rich content adds to an encoded frame at most: its strings, and for each of its
/// (at most ten) fields a tag and a length of at most ten bytes, and the list's length.
fn rich_bound(r: &shared::protocol::RichContent) -> usize {
    r.string_bytes() + 10 * 10 + 10
}

/// Gives an edit or deletion the state of its message before it (from `current`, the
/// group's running view of the messages it changes) and moves that view past it. A broadcast
/// reply gets its thread root's state (Slack's `root`), and a pin or unpin its message's
/// (the item of Slack's `pin_added`), which they do not change.
fn record_previous(msg: &mut Message, current: &mut HashMap<Ts, Option<PreviousMessage>>) {
    if let (MessageKind::Posted, true, Some(root)) = (&msg.kind, msg.broadcast, msg.thread_ts) {
        msg.previous = current.get(&root).cloned().flatten().map(Box::new);
        return;
    }
    if let MessageKind::Pinned { target } | MessageKind::Unpinned { target } = msg.kind {
        msg.previous = current.get(&target).cloned().flatten().map(Box::new);
        return;
    }
    let (MessageKind::Edited { target } | MessageKind::Deleted { target }) = msg.kind else {
        return;
    };
    let Some(state) = current.get_mut(&target) else {
        return;
    };
    msg.previous = state.clone().map(Box::new);
    *state = match msg.kind {
        MessageKind::Edited { .. } => state.take().map(|was| PreviousMessage {
            text: msg.text.clone(),
            edited: Some(msg.ts),
            // An edit gives the message's whole new set of blocks and attachments.
            rich: msg.rich.clone(),
            ..was
        }),
        _ => None,
    };
}

/// The post that a placed message came from, to place it again.
fn unplaced(m: Message) -> NewMessage {
    NewMessage {
        workspace: m.workspace,
        channel: m.channel,
        user: m.user,
        text: m.text,
        client_msg_id: m.client_msg_id,
        thread_ts: m.thread_ts,
        kind: m.kind,
        broadcast: m.broadcast,
        bot: m.bot,
        rich: m.rich,
    }
}

/// Answers a command the channel can no longer serve.
pub fn refuse(cmd: ChannelCmd, channel: &ChannelId, error: &MeshError) {
    match cmd {
        ChannelCmd::Post { reply, .. } | ChannelCmd::Fetch { reply, .. } => {
            let _ = reply.send(MeshFrame::Error(error.clone()));
        }
        ChannelCmd::Subscribe { link, .. } => {
            let reason = match error {
                MeshError::WrongOwner { .. } => "wrong_owner",
                _ => "unavailable",
            };
            m::REFUSED.with_label_values(&[reason]).inc();
            link.offer(
                MeshFrame::Refused {
                    channel: channel.clone(),
                    error: error.clone(),
                }
                .to_bytes(),
            );
        }
        ChannelCmd::Unsubscribe { .. }
        | ChannelCmd::Publish { .. }
        | ChannelCmd::Release { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::UserId;
    use shared::store::sqlite::SqliteStore;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: SharedStore,
        channel: ChannelId,
        workspace: WorkspaceId,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open(dir.path(), 2).unwrap());
        Fixture {
            _dir: dir,
            store,
            channel: ChannelId::from("CTEST"),
            workspace: WorkspaceId::from("TTEST"),
        }
    }

    impl Fixture {
        fn start(&self) -> mpsc::Sender<ChannelCmd> {
            self.start_with_frame_limit(shared::protocol::MAX_FRAME_BYTES_DEFAULT)
        }

        fn start_with_frame_limit(&self, max_frame_bytes: usize) -> mpsc::Sender<ChannelCmd> {
            let (tx, rx) = mpsc::channel(1024);
            let task = ChannelTask::new(
                self.channel.clone(),
                self.workspace.clone(),
                self.store.clone(),
                8,
                reply_budget(max_frame_bytes),
            );
            tokio::spawn(task.run(rx));
            tx
        }

        fn new_message(&self, text: &str, cmid: Option<&str>) -> NewMessage {
            NewMessage {
                workspace: self.workspace.clone(),
                channel: self.channel.clone(),
                user: UserId::from("UALICE"),
                text: text.into(),
                client_msg_id: cmid.map(str::to_string),
                thread_ts: None,
                kind: shared::protocol::MessageKind::Posted,
                broadcast: false,
                bot: false,
                rich: None,
            }
        }
    }

    async fn post(tx: &mpsc::Sender<ChannelCmd>, msg: NewMessage) -> MeshFrame {
        let (reply, rx) = oneshot::channel();
        tx.send(ChannelCmd::Post {
            msg,
            received: Instant::now(),
            reply,
        })
        .await
        .unwrap();
        rx.await.unwrap()
    }

    fn posted(frame: MeshFrame) -> (Message, bool) {
        match frame {
            MeshFrame::PostOk { msg, duplicate } => (msg, duplicate),
            other => panic!("expected PostOk, got {other:?}"),
        }
    }

    fn link(queue: usize) -> (GatewayLink, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(queue);
        (
            GatewayLink {
                id: rand_id(),
                tx,
                cut: CancellationToken::new(),
            },
            rx,
        )
    }

    fn rand_id() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn decode(bytes: &Bytes) -> MeshFrame {
        MeshFrame::decode(bytes, usize::MAX).unwrap().unwrap().0
    }

    #[tokio::test]
    async fn concurrent_posts_get_contiguous_sequences_and_increasing_ts() {
        let f = fixture();
        let tx = f.start();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let tx = tx.clone();
            let msg = f.new_message(&format!("m{i}"), None);
            tasks.push(tokio::spawn(async move { posted(post(&tx, msg).await).0 }));
        }
        let mut msgs = Vec::new();
        for t in tasks {
            msgs.push(t.await.unwrap());
        }
        msgs.sort_by_key(|m| m.seq);
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.seq, i as u64 + 1);
        }
        for w in msgs.windows(2) {
            assert!(w[1].ts > w[0].ts, "ts must increase with seq");
        }
        // Durable before acked: the store holds all of them.
        let last = f
            .store
            .last_message(&f.workspace, &f.channel)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(last.seq, 200);
    }

    #[tokio::test]
    async fn a_broadcast_reply_carries_its_thread_root_as_it_was() {
        let f = fixture();
        let tx = f.start();
        let (root, _) = posted(post(&tx, f.new_message("release 3.1?", None)).await);
        let reply = |text: &str, broadcast: bool| NewMessage {
            thread_ts: Some(root.ts),
            broadcast,
            ..f.new_message(text, None)
        };
        let (plain, _) = posted(post(&tx, reply("checking", false)).await);
        assert_eq!(plain.previous, None, "only a broadcast carries its root");
        let (shipped, _) = posted(post(&tx, reply("shipped", true)).await);
        let was = shipped.previous.as_deref().expect("the root");
        assert_eq!((was.text.as_str(), was.edited), ("release 3.1?", None));
        assert_eq!(was.user, root.user);
        // An edit of the root and a broadcast queued together: the broadcast sees the edit.
        let (r1, rx1) = oneshot::channel();
        let (r2, rx2) = oneshot::channel();
        let edit = NewMessage {
            kind: MessageKind::Edited { target: root.ts },
            ..f.new_message("release 3.1 is out", None)
        };
        for (msg, reply_to) in [(edit, r1), (reply("see above", true), r2)] {
            tx.send(ChannelCmd::Post {
                msg,
                received: Instant::now(),
                reply: reply_to,
            })
            .await
            .unwrap();
        }
        let (edited, _) = posted(rx1.await.unwrap());
        let (after, _) = posted(rx2.await.unwrap());
        let was = after.previous.as_deref().unwrap();
        assert_eq!(
            (was.text.as_str(), was.edited),
            ("release 3.1 is out", Some(edited.ts))
        );
        // The edit's own previous state is still the root before it.
        assert_eq!(edited.previous.as_deref().unwrap().text, "release 3.1?");
        // A broadcast into a thread whose root is gone carries none.
        let (gone, _) = posted(
            post(
                &tx,
                NewMessage {
                    thread_ts: Some(Ts(1)),
                    broadcast: true,
                    ..f.new_message("orphan", None)
                },
            )
            .await,
        );
        assert_eq!(gone.previous, None);
        // Stored as acked.
        let stored = f
            .store
            .message_view(&f.workspace, &f.channel, shipped.ts)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.message.previous, shipped.previous);
    }

    #[tokio::test]
    async fn edits_and_deletions_carry_the_message_as_it_was_before_them() {
        let f = fixture();
        let tx = f.start();
        let change = |kind: MessageKind, text: &str| NewMessage {
            kind,
            ..f.new_message(text, None)
        };
        let (original, _) = posted(post(&tx, f.new_message("first", None)).await);
        let target = original.ts;
        let (edit, _) = posted(post(&tx, change(MessageKind::Edited { target }, "second")).await);
        let was = edit
            .previous
            .as_deref()
            .expect("an edit says what it changed");
        assert_eq!((was.text.as_str(), was.edited), ("first", None));
        assert_eq!(was.user, original.user);
        // Two edits queued together are placed in one group: the second sees the first.
        let (r1, rx1) = oneshot::channel();
        let (r2, rx2) = oneshot::channel();
        for (text, reply) in [("third", r1), ("fourth", r2)] {
            tx.send(ChannelCmd::Post {
                msg: change(MessageKind::Edited { target }, text),
                received: Instant::now(),
                reply,
            })
            .await
            .unwrap();
        }
        let (third, _) = posted(rx1.await.unwrap());
        let (fourth, _) = posted(rx2.await.unwrap());
        let was = third.previous.as_deref().unwrap();
        assert_eq!((was.text.as_str(), was.edited), ("second", Some(edit.ts)));
        let was = fourth.previous.as_deref().unwrap();
        assert_eq!((was.text.as_str(), was.edited), ("third", Some(third.ts)));
        let (delete, _) = posted(post(&tx, change(MessageKind::Deleted { target }, "")).await);
        let was = delete.previous.as_deref().unwrap();
        assert_eq!((was.text.as_str(), was.edited), ("fourth", Some(fourth.ts)));
        // Gone: a change after the deletion has nothing before it.
        let (late, _) = posted(post(&tx, change(MessageKind::Edited { target }, "late")).await);
        assert_eq!(late.previous, None);
        // A change of a message the channel never had neither.
        let (stray, _) =
            posted(post(&tx, change(MessageKind::Deleted { target: Ts(1) }, "")).await);
        assert_eq!(stray.previous, None);
        // Posts have none; what subscribers replay from the store is what was acked.
        assert_eq!(original.previous, None);
        let stored = f
            .store
            .history(
                &f.workspace,
                &f.channel,
                &HistoryQuery {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        // (The post's own row holds its current state: deleted, so empty.)
        let acked = [&edit, &third, &fourth, &delete, &late, &stray];
        let mut stored: Vec<Message> = stored;
        stored.sort_by_key(|m| m.seq);
        assert_eq!(stored.len(), acked.len() + 1);
        assert_eq!(stored[0].previous, None);
        for (s, a) in stored[1..].iter().zip(acked) {
            assert_eq!(s, a);
        }
    }

    #[tokio::test]
    async fn repeated_client_msg_id_returns_the_stored_message_without_using_a_sequence() {
        let f = fixture();
        let tx = f.start();
        let (first, dup) = posted(post(&tx, f.new_message("hello", Some("abc"))).await);
        assert!(!dup);
        let (again, dup) = posted(post(&tx, f.new_message("hello again", Some("abc"))).await);
        assert!(dup);
        assert_eq!(again.seq, first.seq);
        assert_eq!(again.text, "hello");
        let (next, _) = posted(post(&tx, f.new_message("next", None)).await);
        assert_eq!(next.seq, first.seq + 1, "a duplicate must not leave a gap");
        // After a restart the repeat is found in the store.
        drop(tx);
        let tx = f.start();
        let (third, dup) = posted(post(&tx, f.new_message("x", Some("abc"))).await);
        assert!(dup);
        assert_eq!(third.seq, first.seq);
    }

    #[tokio::test]
    async fn a_repeated_client_msg_id_is_answered_after_the_window_has_moved_past_it() {
        let f = fixture();
        let tx = f.start();
        // The window holds 8: "old" is evicted by the posts after it, "recent" is not.
        let (old, _) = posted(post(&tx, f.new_message("old", Some("old"))).await);
        for i in 0..10 {
            let cmid = format!("filler-{i}");
            post(&tx, f.new_message(&format!("{i}"), Some(&cmid))).await;
        }
        let (recent, _) = posted(post(&tx, f.new_message("recent", Some("recent"))).await);
        assert_eq!(recent.seq, 12);
        let (again, dup) = posted(post(&tx, f.new_message("old again", Some("old"))).await);
        assert!(dup);
        assert_eq!((again.seq, again.text.as_str()), (old.seq, "old"));
        let (again, dup) = posted(post(&tx, f.new_message("recent again", Some("recent"))).await);
        assert!(dup);
        assert_eq!((again.seq, again.text.as_str()), (recent.seq, "recent"));
        let (next, dup) = posted(post(&tx, f.new_message("next", Some("next"))).await);
        assert!(!dup);
        assert_eq!(next.seq, 13, "the repeats must not use a sequence");
    }

    #[test]
    fn the_client_msg_id_index_follows_the_window() {
        let f = fixture();
        let mut task = ChannelTask::new(
            f.channel.clone(),
            f.workspace.clone(),
            f.store.clone(),
            4,
            1 << 20,
        );
        let message = |seq: Seq, cmid: Option<&str>| {
            Arc::new(Message::from_new(
                f.new_message(&format!("m{seq}"), cmid),
                seq,
                Ts(seq),
            ))
        };
        for seq in 1..=10 {
            let cmid = format!("id-{seq}");
            task.remember(message(seq, (seq % 3 != 0).then_some(cmid.as_str())));
        }
        // The window is seqs 7..=10; 9 has no client_msg_id.
        assert_eq!(task.window.len(), 4);
        let mut indexed: Vec<Seq> = task.window_by_client_id.values().map(|m| m.seq).collect();
        indexed.sort();
        assert_eq!(indexed, vec![7, 8, 10]);
        for seq in 1..=6 {
            assert!(task.in_window_by_client_id(&format!("id-{seq}")).is_none());
        }
        assert_eq!(task.in_window_by_client_id("id-8").unwrap().seq, 8);
        // A newer message with an id already in the window wins, and stays found when the
        // older one is evicted.
        task.remember(message(11, Some("id-8")));
        assert_eq!(task.in_window_by_client_id("id-8").unwrap().seq, 11);
        task.remember(message(12, None));
        task.remember(message(13, None));
        assert_eq!(task.window.front().unwrap().seq, 10, "8 was evicted");
        assert_eq!(task.in_window_by_client_id("id-8").unwrap().seq, 11);
        task.clear_window();
        assert!(task.window_by_client_id.is_empty());
        assert!(task.in_window_by_client_id("id-10").is_none());
    }

    #[tokio::test]
    async fn a_new_owner_continues_the_numbering_from_the_store() {
        let f = fixture();
        let tx = f.start();
        for i in 0..5 {
            post(&tx, f.new_message(&format!("{i}"), None)).await;
        }
        tx.send(ChannelCmd::Release {
            epoch: RingEpoch(2),
        })
        .await
        .unwrap();
        // The released task refuses further work with its epoch.
        let refused = post(&tx, f.new_message("late", None)).await;
        assert!(
            matches!(refused, MeshFrame::Error(MeshError::WrongOwner { .. })) || tx.is_closed(),
            "{refused:?}"
        );
        let tx2 = f.start();
        let (m, _) = posted(post(&tx2, f.new_message("on the new owner", None)).await);
        assert_eq!(m.seq, 6);
    }

    #[tokio::test]
    async fn subscribers_get_an_ack_with_backlog_then_every_message_in_order() {
        let f = fixture();
        let tx = f.start();
        for i in 0..20 {
            post(&tx, f.new_message(&format!("{i}"), None)).await;
        }
        // The window holds 8: a backlog from seq 3 comes from the store.
        let (l, mut rx) = link(1024);
        tx.send(ChannelCmd::Subscribe {
            link: l,
            after_seq: Some(3),
        })
        .await
        .unwrap();
        match decode(&rx.recv().await.unwrap()) {
            MeshFrame::SubscribeAck {
                last_seq, backlog, ..
            } => {
                assert_eq!(last_seq, 20);
                assert_eq!(
                    backlog.iter().map(|m| m.seq).collect::<Vec<_>>(),
                    (4..=20).collect::<Vec<_>>()
                );
            }
            other => panic!("{other:?}"),
        }
        for i in 0..10 {
            post(&tx, f.new_message(&format!("live {i}"), None)).await;
        }
        for expected in 21..=30 {
            match decode(&rx.recv().await.unwrap()) {
                MeshFrame::Deliver { msg } => assert_eq!(msg.seq, expected),
                other => panic!("{other:?}"),
            }
        }
        // A fetch inside the window is served from it.
        let (reply, r) = oneshot::channel();
        tx.send(ChannelCmd::Fetch {
            after_seq: 25,
            up_to_seq: Some(27),
            limit: 100,
            reply,
        })
        .await
        .unwrap();
        match r.await.unwrap() {
            MeshFrame::FetchOk { messages, last_seq } => {
                assert_eq!(last_seq, 30);
                assert_eq!(
                    messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
                    vec![26, 27]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    async fn fetch(
        tx: &mpsc::Sender<ChannelCmd>,
        after_seq: Seq,
        up_to_seq: Option<Seq>,
    ) -> (Vec<Seq>, Seq) {
        let (reply, r) = oneshot::channel();
        tx.send(ChannelCmd::Fetch {
            after_seq,
            up_to_seq,
            limit: MAX_BACKLOG,
            reply,
        })
        .await
        .unwrap();
        match r.await.expect("the channel task answers the fetch") {
            MeshFrame::FetchOk { messages, last_seq } => {
                (messages.iter().map(|m| m.seq).collect(), last_seq)
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_resume_point_past_the_head_reads_nothing_and_the_channel_goes_on() {
        let f = fixture();
        let tx = f.start();
        for i in 0..3 {
            post(&tx, f.new_message(&format!("{i}"), None)).await;
        }
        // From the window (it holds 1..=3), then with an empty window (a new task).
        assert_eq!(fetch(&tx, u64::MAX, None).await, (vec![], 3));
        assert_eq!(fetch(&tx, u64::MAX, Some(u64::MAX)).await, (vec![], 3));
        let (l, mut rx) = link(16);
        tx.send(ChannelCmd::Subscribe {
            link: l,
            after_seq: Some(u64::MAX),
        })
        .await
        .unwrap();
        match decode(&rx.recv().await.unwrap()) {
            MeshFrame::SubscribeAck {
                last_seq, backlog, ..
            } => assert_eq!((last_seq, backlog.len()), (3, 0)),
            other => panic!("{other:?}"),
        }
        // The task is still there: posts are stored and delivered.
        let (m, _) = posted(post(&tx, f.new_message("after", None)).await);
        assert_eq!(m.seq, 4);
        match decode(&rx.recv().await.unwrap()) {
            MeshFrame::Deliver { msg } => assert_eq!(msg.seq, 4),
            other => panic!("{other:?}"),
        }
        drop(tx);
        let tx = f.start();
        assert_eq!(fetch(&tx, u64::MAX, None).await, (vec![], 4));
        assert_eq!(fetch(&tx, i64::MAX as u64 + 1, None).await, (vec![], 4));
        assert_eq!(fetch(&tx, 2, None).await, (vec![3, 4], 4));
    }

    #[tokio::test]
    async fn backlogs_and_fetches_of_long_messages_stay_under_the_frame_limit() {
        const MAX_FRAME: usize = 200_000;
        let f = fixture();
        let tx = f.start_with_frame_limit(MAX_FRAME);
        // 20 messages of 30 KB: 600 KB in all, three times the frame limit.
        let long = "x".repeat(30_000);
        for _ in 0..20 {
            post(&tx, f.new_message(&long, None)).await;
        }
        // A resubscription from the start: its backlog comes from the store.
        let (l, mut rx) = link(16);
        tx.send(ChannelCmd::Subscribe {
            link: l,
            after_seq: Some(0),
        })
        .await
        .unwrap();
        let ack = rx.recv().await.unwrap();
        assert!(ack.len() <= MAX_FRAME, "ack of {} bytes", ack.len());
        // The gateway accepts the frame, and the backlog is the first messages, in order.
        let mut seen = match MeshFrame::decode(&ack, MAX_FRAME).unwrap().unwrap().0 {
            MeshFrame::SubscribeAck {
                last_seq, backlog, ..
            } => {
                assert_eq!(last_seq, 20);
                backlog.iter().map(|m| m.seq).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(seen, (1..=seen.len() as u64).collect::<Vec<_>>());
        assert!(!seen.is_empty() && seen.len() < 20);
        // The rest comes by fetching page after page, from the store and then from the
        // window (it holds the last 8), each page under the limit.
        while *seen.last().unwrap() < 20 {
            let (reply, r) = oneshot::channel();
            tx.send(ChannelCmd::Fetch {
                after_seq: *seen.last().unwrap(),
                up_to_seq: Some(20),
                limit: MAX_BACKLOG,
                reply,
            })
            .await
            .unwrap();
            let answer = r.await.unwrap();
            let bytes = answer.to_bytes();
            assert!(
                bytes.len() <= MAX_FRAME,
                "fetch reply of {} bytes",
                bytes.len()
            );
            match answer {
                MeshFrame::FetchOk { messages, .. } => {
                    assert!(!messages.is_empty() && messages.len() < 8);
                    seen.extend(messages.iter().map(|m| m.seq));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn an_edit_counts_the_message_it_carries_from_before_against_the_reply_budget() {
        // Three long messages edited down to a word: each edit is short but carries its
        // message's 100,000 bytes from before, so three would not fit one reply.
        const LIMIT: usize = 300_000;
        let f = fixture();
        let tx = f.start_with_frame_limit(LIMIT);
        let mut targets = Vec::new();
        for c in ['a', 'b', 'c'] {
            let long = c.to_string().repeat(100_000);
            targets.push(posted(post(&tx, f.new_message(&long, None)).await).0.ts);
        }
        for target in targets {
            let edit = NewMessage {
                kind: MessageKind::Edited { target },
                ..f.new_message("short", None)
            };
            let (entry, _) = posted(post(&tx, edit).await);
            assert_eq!(entry.previous.unwrap().text.len(), 100_000);
        }
        // From the window, then (restarted) from the store: every page fits the frame limit.
        for tx in [tx.clone(), {
            drop(tx);
            f.start_with_frame_limit(LIMIT)
        }] {
            let mut seen = Vec::new();
            while seen.last().copied().unwrap_or(3) < 6 {
                let (reply, r) = oneshot::channel();
                tx.send(ChannelCmd::Fetch {
                    after_seq: seen.last().copied().unwrap_or(3),
                    up_to_seq: None,
                    limit: MAX_BACKLOG,
                    reply,
                })
                .await
                .unwrap();
                let answer = r.await.unwrap();
                let bytes = answer.to_bytes().len();
                assert!(bytes <= LIMIT, "fetch reply of {bytes} bytes");
                match answer {
                    MeshFrame::FetchOk { messages, .. } => {
                        assert!(!messages.is_empty());
                        seen.extend(messages.iter().map(|m| m.seq));
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(seen, vec![4, 5, 6]);
        }
    }

    #[tokio::test]
    async fn a_message_longer_than_the_reply_budget_still_goes_alone() {
        let f = fixture();
        let tx = f.start_with_frame_limit(200_000);
        let longer = "y".repeat(120_000);
        post(&tx, f.new_message(&longer, None)).await;
        post(&tx, f.new_message(&longer, None)).await;
        // From the window, then from the store.
        assert_eq!(fetch(&tx, 0, None).await, (vec![1], 2));
        drop(tx);
        let tx = f.start_with_frame_limit(200_000);
        assert_eq!(fetch(&tx, 0, None).await, (vec![1], 2));
        assert_eq!(fetch(&tx, 1, None).await, (vec![2], 2));
    }

    #[tokio::test]
    async fn a_task_that_stops_refuses_the_gateways_still_subscribed() {
        let f = fixture();
        let tx = f.start();
        let (l, mut rx) = link(16);
        tx.send(ChannelCmd::Subscribe {
            link: l,
            after_seq: None,
        })
        .await
        .unwrap();
        assert!(matches!(
            decode(&rx.recv().await.unwrap()),
            MeshFrame::SubscribeAck { .. }
        ));
        // The task stops with a subscriber (as after an idle release that drained a
        // Subscribe): the gateway is told, so that it subscribes again.
        drop(tx);
        match rx.recv().await.map(|b| decode(&b)) {
            Some(MeshFrame::Refused {
                error: MeshError::Unavailable(_),
                ..
            }) => {}
            other => panic!("expected Refused(Unavailable), got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_gateway_whose_queue_is_full_is_cut_off_without_slowing_others() {
        let f = fixture();
        let tx = f.start();
        let (slow, _slow_rx) = link(2);
        let (fast, mut fast_rx) = link(1024);
        let slow_cut = slow.cut.clone();
        tx.send(ChannelCmd::Subscribe {
            link: slow,
            after_seq: None,
        })
        .await
        .unwrap();
        tx.send(ChannelCmd::Subscribe {
            link: fast,
            after_seq: None,
        })
        .await
        .unwrap();
        for i in 0..10 {
            post(&tx, f.new_message(&format!("{i}"), None)).await;
        }
        assert!(slow_cut.is_cancelled(), "the stalled link is cut off");
        let mut seqs = Vec::new();
        while seqs.len() < 10 {
            if let MeshFrame::Deliver { msg } = decode(&fast_rx.recv().await.unwrap()) {
                seqs.push(msg.seq);
            }
        }
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    }
}
