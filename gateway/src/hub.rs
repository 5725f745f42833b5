//! The gateway's shared state: which local sessions want which channels, one subscription per
//! channel at its owning channel server, and the contiguous stream of each channel.
//!
//! Messages from channel servers arrive on one stream per channel server. For each channel the
//! hub keeps the last contiguous `seq`: a repeat is dropped, the next one is rendered to JSON
//! once and queued to every local session, and one past a gap is held while the gap is
//! fetched. So sessions see each channel in order, with contiguous `seq`, whatever the ring
//! does.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use shared::ids::{ChannelId, NodeId, Seq, UserId, WorkspaceId};
use shared::mesh::PeerPool;
use shared::protocol::client::{ephemeral_json, message_json, Reader, UnreadCount};
use shared::protocol::{EphemeralEvent, MeshError, MeshFrame, Message, Presence, UserEvent};
use shared::ring::Ring;
use shared::shutdown::Shutdown;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

pub type SessionId = u64;

/// Rendered messages kept per channel so that resumes rarely leave the gateway.
const RECENT_PER_CHANNEL: usize = 256;
/// Most live messages a channel holds past a gap while the gap is fetched; later ones are
/// fetched with it (see [`Hub::accept_message`]). Well under `gateway.session_queue`'s
/// default (4,096), which must take them all at once when the gap closes.
const PENDING_MAX: usize = 1024;
/// Most ephemeral events (typing, presence) queued on one channel-server link; past it they
/// are dropped and counted. Subscriptions are never dropped: there is one per channel.
const PUBLISH_QUEUE_MAX: usize = 1024;
/// Most frames from a channel server taken in one batch (one hold of the hub's lock).
const READ_BATCH: usize = 256;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const FETCH_LIMIT: u32 = 1000;
/// Pages fetched at once to count one session's unread messages.
const UNREAD_FETCHES: usize = 8;
/// Pages fetched at once to count unread messages, over all of a gateway's sessions.
const UNREAD_FETCHES_ALL: usize = 64;
/// How often the hub re-checks subscriptions (ring changes and link losses also wake it).
const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// How long presence changes are gathered before they are written to sessions.
const PRESENCE_BATCH_WINDOW: Duration = Duration::from_millis(200);
/// Room a channel's staging buffer keeps between reads (it gives back what a burst grew).
const STAGED_KEEP: usize = 16;

/// How long after a re-subscription the gateway checks the channel's tail.
const TAIL_CHECK_DELAY: Duration = Duration::from_millis(1000);

/// What the hub queues for a session's writer.
#[derive(Debug)]
pub enum Outbound {
    /// Messages of one channel with their sequences, in order: one batch shared by every
    /// session they go to, so the hub queues one item per session, not one per message, and
    /// touches one shared count for it.
    Messages {
        channel: Arc<ChannelId>,
        batch: Arc<[(Seq, Utf8Bytes)]>,
    },
    /// Any other event, written as is.
    Event(Utf8Bytes),
    /// The session now receives `channel`, continuing after `start` (`None`: from whatever
    /// comes next). `head` is the last message the hub had passed on: when it is past
    /// `start` (messages posted after the join reached the hub before the join did), the
    /// session fetches them at once rather than waiting for the next live one to show the gap.
    Joined {
        channel: ChannelId,
        start: Option<Seq>,
        head: Option<Seq>,
    },
    Left {
        channel: ChannelId,
    },
    /// The session is to end after what came before it, telling the client why (its user
    /// was deactivated: `account_inactive`).
    Close(&'static str),
}

pub struct SessionHandle {
    pub user: UserId,
    pub workspace: WorkspaceId,
    pub tx: crate::queue::Sender<Outbound>,
    /// Cancelled when the queue overflowed: the session tells the client to resync and closes.
    pub overflow: CancellationToken,
    pub channels: HashSet<ChannelId>,
}

impl Outbound {
    /// What the item counts for in a session's bounded queue: each message of a batch.
    pub fn weight(&self) -> usize {
        match self {
            Outbound::Messages { batch, .. } => batch.len(),
            _ => 1,
        }
    }
}

impl SessionHandle {
    fn offer(&self, out: Outbound) {
        // An overflowed queue refuses what follows by itself (`Closed`), so this path needs no
        // look at the cancellation token (which takes a lock) per delivery.
        match self.tx.try_send(out) {
            Ok(()) => {}
            Err(crate::queue::TrySendError::Full(_)) => {
                m::SESSION_OVERFLOWS.inc();
                self.overflow.cancel();
            }
            Err(crate::queue::TrySendError::Closed(_)) => {}
        }
    }
}

struct ChannelEntry {
    workspace: WorkspaceId,
    sessions: HashSet<SessionId>,
    /// The channel server we subscribed at, once the subscription was sent.
    owner: Option<NodeId>,
    /// Whether the owner acknowledged the subscription.
    acked: bool,
    /// Last contiguous sequence delivered to sessions; `None` before the first ack.
    last_seq: Option<Seq>,
    /// Where the channel's stream began on this gateway: the sequence before the first
    /// message the hub passed to sessions (the first acknowledgement's head, or the first
    /// message's predecessor). A session registered before then starts after it.
    first_known: Option<Seq>,
    /// Messages past a gap, waiting for the gap to be filled.
    pending: BTreeMap<Seq, Message>,
    fetching: bool,
    /// The highest head the owner reported (a `SubscribeAck`, a tail check): the hub fetches
    /// page after page until it gets there, without waiting for a new post to show the gap.
    catch_up_to: Seq,
    recent: VecDeque<(Seq, Utf8Bytes)>,
    /// Messages delivered in order but not yet offered to the sessions (see
    /// [`State::offer_staged`]).
    staged: Vec<(Seq, Utf8Bytes)>,
    /// When the sessions were last offered this channel's messages (only kept when the hub
    /// coalesces).
    last_offer: Option<Instant>,
    /// Set while the staged messages wait for the coalescing window to end.
    held_until: Option<Instant>,
    /// Subscriptions the owner refused in a row as unavailable (its queue for the channel
    /// full), and when the next may be sent: a busy channel is asked again with a growing
    /// pause, not on every reconcile tick.
    refusals: u32,
    retry_at: Option<Instant>,
}

/// The pause before subscribing again after the `n`th refusal in a row (`n` >= 1).
fn refusal_backoff(n: u32) -> Duration {
    Duration::from_millis(250)
        .saturating_mul(1 << n.saturating_sub(1).min(8))
        .min(Duration::from_secs(5))
}

impl ChannelEntry {
    fn new(workspace: WorkspaceId) -> ChannelEntry {
        ChannelEntry {
            workspace,
            sessions: HashSet::new(),
            owner: None,
            acked: false,
            last_seq: None,
            first_known: None,
            pending: BTreeMap::new(),
            fetching: false,
            catch_up_to: 0,
            recent: VecDeque::new(),
            staged: Vec::new(),
            last_offer: None,
            held_until: None,
            refusals: 0,
            retry_at: None,
        }
    }
}

struct Link {
    tx: mpsc::UnboundedSender<MeshFrame>,
    generation: u64,
    /// `Publish` frames queued and not yet written: a link that cannot write (its channel
    /// server slow or unreachable) takes at most [`PUBLISH_QUEUE_MAX`] of them.
    publishes: Arc<AtomicUsize>,
}

#[derive(Default)]
struct State {
    channels: HashMap<ChannelId, ChannelEntry>,
    sessions: HashMap<SessionId, SessionHandle>,
    users: HashMap<UserId, HashSet<SessionId>>,
    links: HashMap<NodeId, Link>,
    /// Presence changes waiting for the batch window, per workspace (the last one per user).
    presence_batch: HashMap<WorkspaceId, BTreeMap<UserId, Presence>>,
    /// Per workspace, the users last announced `active` here: the admin server says a user is
    /// active again after it restarts or a gateway reconnects, and sessions hear a change
    /// once. One set per gateway rather than a map per session (that grew with the
    /// workspace in every session).
    presence_active: HashMap<WorkspaceId, HashSet<UserId>>,
    /// Channels with staged messages.
    staged: Vec<ChannelId>,
    /// Channels whose staged messages wait for their coalescing window to end.
    held: Vec<ChannelId>,
    /// Membership changes and session registrations seen here, counted; `membership_marks`
    /// holds, per user with sessions, the count at that user's latest one. A resync of a
    /// user's channels ([`Hub::resync_user`]) applies only if nothing newer came for the
    /// user while the Web API was asked.
    membership_seq: u64,
    membership_marks: HashMap<UserId, u64>,
}

impl State {
    fn mark_membership(&mut self, user: &UserId) {
        self.membership_seq += 1;
        let seq = self.membership_seq;
        if let Some(mark) = self.membership_marks.get_mut(user) {
            *mark = seq;
        } else {
            self.membership_marks.insert(user.clone(), seq);
        }
    }

    /// Adds the sessions `ids` of `user`, who joined `channel` to it: each starts after
    /// `after_seq` (the channel's last seq before the join) or what the hub passed on, whichever
    /// is lower, and is told `channel_joined` (with the channel's name and whether it is
    /// private, `about`).
    fn join_sessions(
        &mut self,
        user: &UserId,
        ids: Vec<SessionId>,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        about: (String, bool),
        after_seq: Option<Seq>,
    ) {
        let (channel_name, private) = about;
        self.mark_membership(user);
        let entry = self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| ChannelEntry::new(workspace.clone()));
        // Where the joining sessions start: after the join's own seq where the event carries
        // one, since a message posted after the join may have reached this hub before the
        // event did; never past what the hub has passed on.
        let head = entry.last_seq;
        let start = match (head, after_seq) {
            (Some(h), Some(a)) => Some(h.min(a)),
            (h, a) => h.or(a),
        };
        if head.is_none() && after_seq.is_some() {
            // Nothing passed on yet (a new entry, or a subscription not answered): the hub's
            // stream starts there too, and the subscription asks for what followed the join
            // (or the gap fetch after its answer does).
            entry.last_seq = after_seq;
        }
        let mut joined = Vec::new();
        for id in &ids {
            entry.sessions.insert(*id);
        }
        for id in ids {
            if let Some(s) = self.sessions.get_mut(&id) {
                if s.workspace == *workspace && s.channels.insert(channel.clone()) {
                    joined.push(id);
                }
            }
        }
        let text: Utf8Bytes = serde_json::json!({
            "type": "channel_joined",
            "channel": { "id": channel.0, "name": channel_name, "is_private": private },
        })
        .to_string()
        .into();
        for id in joined {
            if let Some(s) = self.sessions.get(&id) {
                s.offer(Outbound::Joined {
                    channel: channel.clone(),
                    start,
                    head,
                });
                s.offer(Outbound::Event(text.clone()));
            }
        }
    }

    /// Tells every session here that follows `channel` that `user` joined or left it
    /// (Slack's `member_joined_channel` and `member_left_channel`; `team` is the user's
    /// workspace; `channel_type`, `C` public or `G` private, where known).
    fn offer_member_change(
        &self,
        kind: &str,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        user: &UserId,
        private: Option<bool>,
    ) {
        let Some(entry) = self.channels.get(channel) else {
            return;
        };
        if entry.sessions.is_empty() {
            return;
        }
        let mut event = serde_json::json!({
            "type": kind,
            "user": user.0,
            "channel": channel.0,
            "team": workspace.0,
        });
        if let Some(private) = private {
            event["channel_type"] = if private { "G" } else { "C" }.into();
        }
        let text: Utf8Bytes = event.to_string().into();
        for id in &entry.sessions {
            if let Some(s) = self.sessions.get(id) {
                // (Not to a same-named user of another workspace: the change is not its own.)
                let other_self = s.user == *user && s.workspace != *workspace;
                if s.channels.contains(channel) && !other_self {
                    s.offer(Outbound::Event(text.clone()));
                }
            }
        }
    }
}

impl State {
    /// Offers every staged message to its channel's sessions: each session's queue takes all
    /// of a channel's messages of this hold of the hub's lock at once. Under load a read from
    /// a channel server holds many messages, and one lock and wake per session per batch
    /// rather than per message is most of the hub's cost of fan-out. Whoever takes messages
    /// in ([`Hub::accept_message`]) calls this (through [`Hub::offer`]) before the hub's lock is
    /// released.
    ///
    /// With a coalescing window (`hold` > 0), a channel offered less than `hold` ago keeps
    /// its messages staged until the window ends ([`Hub::release_loop`] offers them): a
    /// channel busier than one message per window reaches each session once per window, with
    /// everything that came meanwhile, instead of once per message; a quiet channel's message
    /// goes at once. Returns whether a channel started waiting.
    fn offer_staged(&mut self, hold: Duration) -> bool {
        let State {
            channels,
            sessions,
            staged,
            held,
            ..
        } = self;
        let now = (!hold.is_zero()).then(Instant::now);
        let mut newly_held = false;
        for channel in staged.drain(..) {
            let Some(e) = channels.get_mut(&channel) else {
                continue;
            };
            if e.staged.is_empty() || e.held_until.is_some() {
                continue;
            }
            if let Some(now) = now {
                match e.last_offer.map(|t| t + hold) {
                    Some(until) if now < until => {
                        e.held_until = Some(until);
                        held.push(channel);
                        newly_held = true;
                        continue;
                    }
                    _ => e.last_offer = Some(now),
                }
            }
            offer_entry(e, sessions, channel);
        }
        newly_held
    }

    /// Offers the held channels whose window ended by `now`; returns when the next one ends.
    fn release_held(&mut self, now: Instant) -> Option<Instant> {
        let State {
            channels,
            sessions,
            held,
            ..
        } = self;
        let mut next: Option<Instant> = None;
        held.retain(|channel| {
            // An entry dropped (and maybe made again) meanwhile has nothing held.
            let Some(e) = channels.get_mut(channel) else {
                return false;
            };
            match e.held_until {
                Some(until) if until <= now => {
                    e.held_until = None;
                    e.last_offer = Some(now);
                    offer_entry(e, sessions, channel.clone());
                    false
                }
                Some(until) => {
                    next = Some(next.map_or(until, |n| n.min(until)));
                    true
                }
                None => false,
            }
        });
        if held.capacity() > 4 * STAGED_KEEP && held.len() <= STAGED_KEEP {
            held.shrink_to(STAGED_KEEP);
        }
        next
    }
}

/// Queues a channel's staged messages to each of its sessions as one shared batch.
fn offer_entry(
    e: &mut ChannelEntry,
    sessions: &HashMap<SessionId, SessionHandle>,
    channel: ChannelId,
) {
    if e.staged.is_empty() {
        return;
    }
    // The batch and the id are shared by every session the messages go to; the staging
    // buffer keeps its room for the next read.
    let batch: Arc<[(Seq, Utf8Bytes)]> = e.staged.drain(..).collect();
    if e.staged.capacity() > 4 * STAGED_KEEP {
        e.staged.shrink_to(STAGED_KEEP);
    }
    let channel = Arc::new(channel);
    let mut offered = 0;
    for id in &e.sessions {
        if let Some(s) = sessions.get(id) {
            offered += 1;
            s.offer(Outbound::Messages {
                channel: channel.clone(),
                batch: batch.clone(),
            });
        }
    }
    // One update of the shared counter per batch, not per delivery.
    m::SESSION_WRITES.inc_by(offered * batch.len() as u64);
}

pub struct Hub {
    pub node: NodeId,
    pool: Arc<PeerPool>,
    ring: watch::Receiver<Arc<Ring>>,
    state: Mutex<State>,
    next_session: AtomicU64,
    next_link: AtomicU64,
    wake: Notify,
    /// The coalescing window of a busy channel (see [`State::offer_staged`]); zero: none.
    hold: Duration,
    /// Wakes [`Hub::release_loop`] when a channel starts waiting.
    release: Notify,
    /// Wakes sessions waiting for their channels' streams to begin (see
    /// [`Hub::first_positions`]).
    live: Notify,
    shutdown: Shutdown,
    /// Where presence reports go; unset in unit tests.
    admin_addr: Mutex<Option<std::net::SocketAddr>>,
    /// One report at a time per user (see [`Hub::report_presence`]); entries go when unused.
    presence_turns: Mutex<HashMap<UserId, Arc<tokio::sync::Mutex<()>>>>,
    /// The runtime the hub was made on, which owns the process's sockets: its tasks, and the
    /// ones its sessions start (fetches, presence queries, RTM posts), run there even when a
    /// session runs on a session thread (which has no reactor of its own).
    runtime: tokio::runtime::Handle,
    /// The Socket Mode apps connected here: which of an app's connections sends each event.
    pub socket_apps: Arc<crate::socket_mode::SocketApps>,
    /// Pages fetched from channel owners at once to count unread messages, for all sessions
    /// together: a gateway's sessions all reconnecting at once ask the owners for no more.
    unread_fetches: tokio::sync::Semaphore,
}

impl Hub {
    pub fn new(
        node: NodeId,
        pool: Arc<PeerPool>,
        ring: watch::Receiver<Arc<Ring>>,
        hold: Duration,
        shutdown: Shutdown,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            node,
            pool,
            ring,
            state: Mutex::new(State::default()),
            next_session: AtomicU64::new(1),
            next_link: AtomicU64::new(1),
            wake: Notify::new(),
            hold,
            release: Notify::new(),
            live: Notify::new(),
            shutdown,
            admin_addr: Mutex::new(None),
            presence_turns: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            socket_apps: Arc::default(),
            unread_fetches: tokio::sync::Semaphore::new(UNREAD_FETCHES_ALL),
        })
    }

    /// Runs `task` on the hub's runtime (see [`Hub::runtime`]), wherever it is called from.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(task)
    }

    /// The runtime the hub runs on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.ring.borrow().clone()
    }

    // ---- sessions ----

    /// Registers a session for `channels`; returns its id and, per channel, the sequence it
    /// starts after (the hub's current one, or the client's resume point).
    pub fn register(
        self: &Arc<Self>,
        user: UserId,
        workspace: WorkspaceId,
        channels: &[ChannelId],
        resume: &BTreeMap<ChannelId, Seq>,
        tx: crate::queue::Sender<Outbound>,
        overflow: CancellationToken,
    ) -> (SessionId, BTreeMap<ChannelId, Option<Seq>>, bool) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mut starts = BTreeMap::new();
        let mut st = self.state.lock();
        let first_of_user = st.users.get(&user).is_none_or(|s| s.is_empty());
        for c in channels {
            let entry = st
                .channels
                .entry(c.clone())
                .or_insert_with(|| ChannelEntry::new(workspace.clone()));
            entry.sessions.insert(id);
            let start = resume.get(c).copied().or(entry.last_seq);
            starts.insert(c.clone(), start);
        }
        st.users.entry(user.clone()).or_default().insert(id);
        st.mark_membership(&user);
        st.sessions.insert(
            id,
            SessionHandle {
                user,
                workspace,
                tx,
                overflow,
                channels: channels.iter().cloned().collect(),
            },
        );
        m::SUBSCRIBED_CHANNELS.set(st.channels.len() as i64);
        drop(st);
        // Subscribe now rather than on the next reconcile tick, so that what the session
        // publishes right away (presence, typing) is queued behind its channels' Subscribe.
        self.reconcile();
        (id, starts, first_of_user)
    }

    /// Where each of `channels` began on this gateway ([`ChannelEntry::first_known`]), once
    /// every one has begun: a session registered before that starts after it, and so hears
    /// everything posted after its `hello`. `None` while one has not begun.
    pub fn first_positions(&self, channels: &[ChannelId]) -> Option<Vec<(ChannelId, Seq)>> {
        let st = self.state.lock();
        channels
            .iter()
            .map(|c| {
                st.channels
                    .get(c)
                    .and_then(|e| e.first_known)
                    .map(|seq| (c.clone(), seq))
            })
            .collect()
    }

    /// Waits (at most `limit`) until every one of `channels` has begun on this gateway;
    /// returns where each began, or `None` when the wait ran out.
    pub async fn wait_first_positions(
        &self,
        channels: &[ChannelId],
        limit: Duration,
    ) -> Option<Vec<(ChannelId, Seq)>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.live.notified();
            tokio::pin!(notified);
            // Registered before the look, so a start between the two is not missed.
            notified.as_mut().enable();
            if let Some(found) = self.first_positions(channels) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// How many sessions `user` has on this gateway.
    pub fn sessions_of(&self, user: &UserId) -> usize {
        self.state.lock().users.get(user).map_or(0, HashSet::len)
    }

    /// Forgets a session; returns whether it was its user's last here.
    pub fn unregister(&self, id: SessionId) -> bool {
        let mut st = self.state.lock();
        let Some(s) = st.sessions.remove(&id) else {
            return false;
        };
        for c in &s.channels {
            if let Some(e) = st.channels.get_mut(c) {
                e.sessions.remove(&id);
            }
        }
        let last = match st.users.get_mut(&s.user) {
            Some(set) => {
                set.remove(&id);
                let empty = set.is_empty();
                if empty {
                    st.users.remove(&s.user);
                    st.membership_marks.remove(&s.user);
                }
                empty
            }
            None => true,
        };
        drop(st);
        self.wake.notify_one();
        last
    }

    pub fn session_channels(&self, id: SessionId) -> HashSet<ChannelId> {
        self.state
            .lock()
            .sessions
            .get(&id)
            .map(|s| s.channels.clone())
            .unwrap_or_default()
    }

    pub fn in_channel(&self, id: SessionId, channel: &ChannelId) -> bool {
        self.state
            .lock()
            .sessions
            .get(&id)
            .is_some_and(|s| s.channels.contains(channel))
    }

    /// Sends an event to every session (used for `goodbye`).
    pub fn broadcast(&self, text: Utf8Bytes) {
        let st = self.state.lock();
        for s in st.sessions.values() {
            s.offer(Outbound::Event(text.clone()));
        }
    }

    /// Applies a membership change from the admin server to the user's local sessions.
    pub fn on_user_event(self: &Arc<Self>, ev: UserEvent) {
        let mut st = self.state.lock();
        if self.apply_user_event(&mut st, ev) {
            drop(st);
            self.wake.notify_one();
        }
    }

    /// The users with sessions here, with their workspace.
    pub fn users_here(&self) -> Vec<(WorkspaceId, UserId)> {
        let st = self.state.lock();
        st.users
            .iter()
            .filter_map(|(u, ids)| {
                let s = st.sessions.get(ids.iter().next()?)?;
                Some((s.workspace.clone(), u.clone()))
            })
            .collect()
    }

    /// The count of membership changes seen so far: the `since` of [`Hub::resync_user`].
    pub fn membership_seq(&self) -> u64 {
        self.state.lock().membership_seq
    }

    /// Brings `user`'s sessions here in line with `channels` (id and name), the user's
    /// channels as the Web API listed them after membership count `since`: the channels a
    /// session lacks are joined and those it has beyond the list are left, each with the
    /// `channel_joined` or `channel_left` event that the missed change would have brought.
    ///
    /// For a gateway whose stream from the admin server ended (it fell behind, or the admin
    /// server restarted), changes made meanwhile never arrive as events: a member removed
    /// from a private channel would go on receiving it. Returns `None`, changing nothing, if
    /// a change or a new session of the user came after `since` (the list may be older than
    /// what the sessions have: ask again); else how many channels were joined and left.
    pub fn resync_user(
        self: &Arc<Self>,
        workspace: &WorkspaceId,
        user: &UserId,
        channels: &[(ChannelId, String, bool)],
        since: u64,
    ) -> Option<(usize, usize)> {
        let mut st = self.state.lock();
        if st.membership_marks.get(user).is_some_and(|&m| m > since) {
            return None;
        }
        let ids: Vec<SessionId> = st
            .users
            .get(user)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let listed: HashSet<&ChannelId> = channels.iter().map(|(c, _, _)| c).collect();
        let mut missing: Vec<&(ChannelId, String, bool)> = Vec::new();
        let mut extra: BTreeSet<ChannelId> = BTreeSet::new();
        for id in &ids {
            let Some(s) = st.sessions.get(id).filter(|s| &s.workspace == workspace) else {
                continue;
            };
            for c in channels {
                if !s.channels.contains(&c.0) && !missing.iter().any(|m| m.0 == c.0) {
                    missing.push(c);
                }
            }
            extra.extend(s.channels.iter().filter(|c| !listed.contains(c)).cloned());
        }
        let changed = (missing.len(), extra.len());
        for (channel, name, private) in missing {
            self.apply_user_event(
                &mut st,
                UserEvent::ChannelJoined {
                    workspace: workspace.clone(),
                    channel: channel.clone(),
                    user: user.clone(),
                    channel_name: name.clone(),
                    // A listing does not say when the join was: from what comes next.
                    after_seq: None,
                    private: *private,
                },
            );
        }
        for channel in extra {
            self.apply_user_event(
                &mut st,
                UserEvent::ChannelLeft {
                    workspace: workspace.clone(),
                    channel,
                    user: user.clone(),
                },
            );
        }
        drop(st);
        if changed != (0, 0) {
            self.wake.notify_one();
        }
        Some(changed)
    }

    /// Applies `ev` to the hub's state; returns whether the subscriptions may have changed
    /// (the caller then wakes the reconciler, after releasing the lock).
    fn apply_user_event(self: &Arc<Self>, st: &mut State, ev: UserEvent) -> bool {
        match ev {
            UserEvent::ChannelJoined {
                workspace,
                channel,
                user,
                channel_name,
                after_seq,
                private,
            } => {
                let ids: Vec<SessionId> = st
                    .users
                    .get(&user)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                let here = !ids.is_empty();
                if here {
                    st.join_sessions(
                        &user,
                        ids,
                        &workspace,
                        &channel,
                        (channel_name, private),
                        after_seq,
                    );
                }
                // Everyone here in the channel hears of it, the joiner too (a bot learns so
                // that it was added).
                st.offer_member_change(
                    "member_joined_channel",
                    &workspace,
                    &channel,
                    &user,
                    Some(private),
                );
                if !here {
                    return false;
                }
            }
            UserEvent::ChannelLeft {
                workspace,
                channel,
                user,
            } => {
                let ids: Vec<SessionId> = st
                    .users
                    .get(&user)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                if !ids.is_empty() {
                    st.mark_membership(&user);
                }
                let text: Utf8Bytes =
                    serde_json::json!({ "type": "channel_left", "channel": channel.0 })
                        .to_string()
                        .into();
                for id in ids {
                    let removed = match st.sessions.get_mut(&id) {
                        Some(s) if s.workspace == workspace => s.channels.remove(&channel),
                        _ => false,
                    };
                    if removed {
                        if let Some(e) = st.channels.get_mut(&channel) {
                            e.sessions.remove(&id);
                        }
                        if let Some(s) = st.sessions.get(&id) {
                            s.offer(Outbound::Left {
                                channel: channel.clone(),
                            });
                            s.offer(Outbound::Event(text.clone()));
                        }
                    }
                }
                // The members left here hear of it.
                st.offer_member_change("member_left_channel", &workspace, &channel, &user, None);
            }
            // Profile, channel and read-position changes are for Flannel's cache; sessions
            // get that data in `hello`'s boot block.
            UserEvent::UserChanged { .. }
            | UserEvent::ChannelCreated { .. }
            | UserEvent::ChannelChanged { .. }
            | UserEvent::ReadMarked { .. }
            | UserEvent::PresenceReport { .. }
            | UserEvent::PresenceSet { .. } => return false,
            // Presence goes to every session of the user's workspace here (their clients
            // decide whom they show).
            // Presence changes are batched per workspace for a short window: while many
            // users connect at once, each session gets a few `presence_change` events listing
            // many users (Slack's batched form) instead of one event per user.
            // An ephemeral message: to the user's sessions here that follow the channel.
            UserEvent::Ephemeral {
                workspace,
                channel,
                user,
                event,
            } => {
                let text: Utf8Bytes = event.into();
                let mut offered = 0;
                for id in st.users.get(&user).into_iter().flatten() {
                    if let Some(s) = st.sessions.get(id) {
                        if s.workspace == workspace && s.channels.contains(&channel) {
                            s.offer(Outbound::Event(text.clone()));
                            offered += 1;
                        }
                    }
                }
                m::EPHEMERAL_MESSAGES.inc_by(offered);
                return false;
            }
            // A change to the workspace's channels or users: to its sessions here (only those
            // in the channel, for a private channel's).
            UserEvent::Notice {
                workspace,
                members_of,
                event,
            } => {
                let deactivated = deactivated_user(&event);
                let text: Utf8Bytes = event.into();
                for s in st.sessions.values() {
                    let reaches = s.workspace == workspace
                        && members_of.as_ref().is_none_or(|c| s.channels.contains(c));
                    if reaches {
                        s.offer(Outbound::Event(text.clone()));
                    }
                }
                m::NOTICES.inc();
                // A deactivated user's sessions end here, after the `user_change` that says
                // so (the Web API refuses its tokens, so none comes back).
                if let Some(user) = deactivated {
                    for id in st.users.get(&user).into_iter().flatten() {
                        if let Some(s) = st.sessions.get(id).filter(|s| s.workspace == workspace) {
                            s.offer(Outbound::Close("account_inactive"));
                            m::SESSIONS_CLOSED_INACTIVE.inc();
                        }
                    }
                }
                return false;
            }
            // An event for one user: to that user's sessions here.
            UserEvent::UserNotice {
                workspace,
                user,
                event,
            } => {
                let text: Utf8Bytes = event.into();
                for id in st.users.get(&user).into_iter().flatten() {
                    if let Some(s) = st.sessions.get(id).filter(|s| s.workspace == workspace) {
                        s.offer(Outbound::Event(text.clone()));
                    }
                }
                m::NOTICES.inc();
                return false;
            }
            UserEvent::PresenceChanged {
                workspace,
                user,
                presence,
            } => {
                let active = st.presence_active.entry(workspace.clone()).or_default();
                let repeated = match presence {
                    Presence::Active => !active.insert(user.clone()),
                    // Always said: a session may have learned of the user's activity
                    // elsewhere (users.getPresence) before this gateway heard of it.
                    Presence::Away => {
                        active.remove(&user);
                        false
                    }
                };
                if active.is_empty() {
                    st.presence_active.remove(&workspace);
                }
                if repeated {
                    m::PRESENCE_REPEATS.inc();
                    return false;
                }
                let first = st.presence_batch.is_empty();
                st.presence_batch
                    .entry(workspace)
                    .or_default()
                    .insert(user, presence);
                if first {
                    let hub = self.clone();
                    self.spawn(async move {
                        tokio::time::sleep(PRESENCE_BATCH_WINDOW).await;
                        hub.flush_presence();
                    });
                }
                return false;
            }
        }
        true
    }

    // ---- publishing ephemeral events ----

    /// Relays an ephemeral event through the channel's owner.
    pub fn publish(&self, channel: &ChannelId, event: EphemeralEvent) {
        let st = self.state.lock();
        let Some(owner) = st.channels.get(channel).and_then(|e| e.owner.clone()) else {
            return;
        };
        if let Some(link) = st.links.get(&owner) {
            if link.publishes.load(Ordering::Relaxed) >= PUBLISH_QUEUE_MAX {
                m::EPHEMERAL_DROPPED.inc();
                return;
            }
            link.publishes.fetch_add(1, Ordering::Relaxed);
            let _ = link.tx.send(MeshFrame::Publish {
                channel: channel.clone(),
                event,
            });
        }
    }

    /// Writes the gathered presence changes: per workspace and presence, one event naming
    /// one `user` or several `users`.
    fn flush_presence(&self) {
        let mut st = self.state.lock();
        let batch = std::mem::take(&mut st.presence_batch);
        for (workspace, changes) in batch {
            for presence in [Presence::Active, Presence::Away] {
                let users: Vec<&UserId> = changes
                    .iter()
                    .filter(|(_, p)| **p == presence)
                    .map(|(u, _)| u)
                    .collect();
                let text: Utf8Bytes = match users.as_slice() {
                    [] => continue,
                    [one] => serde_json::json!({ "type": "presence_change", "user": one, "presence": presence.as_str() }),
                    many => serde_json::json!({ "type": "presence_change", "users": many, "presence": presence.as_str() }),
                }
                .to_string()
                .into();
                for s in st.sessions.values().filter(|s| s.workspace == workspace) {
                    s.offer(Outbound::Event(text.clone()));
                }
            }
        }
    }

    /// Tells the admin server whether `user` has sessions here; it aggregates presence over
    /// every gateway, debounces it and broadcasts the changes back. Called when that may have
    /// changed (a user's first session came, or the last one went).
    ///
    /// Reports of one user go one at a time, and each says the user's state when it is sent,
    /// not when it was asked for: after a quick reconnect, the report of the going session
    /// cannot land after the coming one's and leave the user away while connected (separate
    /// requests could arrive in either order).
    /// Returns the reporting task (`None` with no admin server to report to).
    pub fn report_presence(
        self: &Arc<Self>,
        workspace: &WorkspaceId,
        user: &UserId,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let admin = (*self.admin_addr.lock())?;
        let turn = self
            .presence_turns
            .lock()
            .entry(user.clone())
            .or_default()
            .clone();
        let (hub, workspace, user) = (self.clone(), workspace.clone(), user.clone());
        Some(self.spawn(async move {
            {
                let _turn = turn.lock().await;
                let online = hub.has_sessions(&user);
                let frame = MeshFrame::User(UserEvent::PresenceReport {
                    workspace,
                    user: user.clone(),
                    gateway: hub.node.clone(),
                    online,
                });
                let mut sent = false;
                for attempt in 0..5u64 {
                    match hub
                        .pool
                        .request(admin, &frame, Duration::from_secs(3))
                        .await
                    {
                        Ok(MeshFrame::Ok) => {
                            sent = true;
                            break;
                        }
                        other => tracing::debug!(?other, attempt, "presence report not taken"),
                    }
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
                if !sent {
                    tracing::warn!(
                        "presence report lost; it is sent again when the admin link returns"
                    );
                }
            }
            // The last one out removes the user's turn.
            let mut turns = hub.presence_turns.lock();
            if turns.get(&user).is_some_and(|t| Arc::strong_count(t) == 2) {
                turns.remove(&user);
            }
        }))
    }

    /// Which of `users` are active, for a session of `workspace` (the admin server's view;
    /// users of other workspaces are away to it).
    pub async fn active_users(
        &self,
        workspace: &WorkspaceId,
        users: Vec<UserId>,
    ) -> Result<Vec<UserId>, MeshError> {
        let admin = (*self.admin_addr.lock()).ok_or(MeshError::NoOwner)?;
        let frame = MeshFrame::PresenceQuery {
            workspace: workspace.clone(),
            users,
        };
        match self
            .pool
            .request(admin, &frame, Duration::from_secs(3))
            .await
        {
            Ok(MeshFrame::PresenceActive { users }) => Ok(users),
            Ok(MeshFrame::Error(e)) => Err(e),
            Ok(other) => Err(MeshError::BadRequest(format!(
                "unexpected answer {other:?}"
            ))),
            Err(e) => Err(MeshError::Unavailable(e.to_string())),
        }
    }

    /// Whether `user` has a session here now.
    fn has_sessions(&self, user: &UserId) -> bool {
        self.state
            .lock()
            .users
            .get(user)
            .is_some_and(|ids| !ids.is_empty())
    }

    /// Reports every user with a session here (after the admin link came back: the admin
    /// server may have restarted and forgotten).
    pub fn report_all_online(self: &Arc<Self>) {
        for (ws, user) in self.users_here() {
            let _ = self.report_presence(&ws, &user);
        }
    }

    pub fn set_admin_addr(&self, addr: std::net::SocketAddr) {
        *self.admin_addr.lock() = Some(addr);
    }

    // ---- backfill for sessions ----

    /// Rendered messages of `channel` with `after < seq <= up_to` (at most `FETCH_LIMIT`), from
    /// the local window when it covers them, else from the channel's owner (which reads its
    /// window or the store).
    pub async fn backfill(
        &self,
        channel: &ChannelId,
        after: Seq,
        up_to: Option<Seq>,
    ) -> Result<(Vec<(Seq, Utf8Bytes)>, Seq), MeshError> {
        let workspace = {
            let st = self.state.lock();
            let Some(e) = st.channels.get(channel) else {
                return Err(MeshError::BadRequest("channel not subscribed here".into()));
            };
            // Only a range this gateway has passed is served locally: a resume point beyond it
            // (a client's, up to `Seq::MAX`) goes to the owner, whose head is authoritative.
            if let (Some(first), Some(last)) = (e.recent.front(), e.last_seq) {
                if first.0 <= after.saturating_add(1)
                    && after <= last
                    && up_to.is_none_or(|u| u <= last)
                {
                    let out = e
                        .recent
                        .iter()
                        .filter(|(s, _)| *s > after && up_to.is_none_or(|u| *s <= u))
                        .cloned()
                        .collect();
                    return Ok((out, last));
                }
            }
            e.workspace.clone()
        };
        let (messages, last_seq) = self.fetch(channel, &workspace, after, up_to).await?;
        Ok((
            messages
                .iter()
                .map(|m| (m.seq, Utf8Bytes::from(message_json(m))))
                .collect(),
            last_seq,
        ))
    }

    /// How many messages the reader (`reader`, in the user groups `groups`) has not read in
    /// each of `ranges` (a channel, its last read `seq` and its position; see
    /// [`shared::protocol::client::unread_effect`]), and how many of them mention it,
    /// counted from this gateway's recent entries when they cover the range, else from a page
    /// fetched from the channel's owner (a range longer than a page counts the entries past
    /// it as messages). A channel whose count is not known by `deadline` (its owner slow or
    /// away, or not subscribed here) is left out.
    pub async fn unread_counts(
        &self,
        reader: &UserId,
        groups: &[String],
        ranges: Vec<(ChannelId, Seq, Seq)>,
        deadline: Instant,
    ) -> HashMap<ChannelId, UnreadCount> {
        use shared::protocol::client::{count_unread, unread_effect, unread_effect_of_event};
        let reader = Reader {
            user: &reader.0,
            groups,
        };
        let mut counts = HashMap::new();
        let mut local = Vec::new();
        let mut remote = Vec::new();
        {
            let st = self.state.lock();
            for (channel, after, up_to) in ranges {
                let Some(e) = st.channels.get(&channel) else {
                    continue;
                };
                let covered = e
                    .recent
                    .front()
                    .is_some_and(|(first, _)| *first <= after + 1)
                    && e.last_seq.is_some_and(|last| last >= up_to);
                if covered {
                    let entries: Vec<Utf8Bytes> = e
                        .recent
                        .iter()
                        .filter(|(s, _)| *s > after && *s <= up_to)
                        .map(|(_, text)| text.clone())
                        .collect();
                    local.push((channel, entries));
                } else {
                    remote.push((channel, e.workspace.clone(), after, up_to));
                }
            }
        }
        for (channel, entries) in local {
            let effects = entries
                .iter()
                .map(|text| unread_effect_of_event(text.as_str(), &reader));
            counts.insert(channel, count_unread(effects));
            m::UNREAD_COUNTS.with_label_values(&["window"]).inc();
        }
        use futures_util::StreamExt;
        let mut waiting = remote.len() as u64;
        let mut fetched = futures_util::stream::iter(remote)
            .map(|(channel, workspace, after, up_to)| async move {
                let page = match self.unread_fetches.acquire().await {
                    Ok(_turn) => self.fetch(&channel, &workspace, after, Some(up_to)).await,
                    Err(_) => Err(MeshError::Unavailable("the gateway is stopping".into())),
                };
                (channel, after, up_to, page)
            })
            .buffer_unordered(UNREAD_FETCHES);
        loop {
            let next = tokio::time::timeout_at(deadline.into(), fetched.next()).await;
            let Ok(Some((channel, after, up_to, page))) = next else {
                if next.is_err() {
                    m::UNREAD_COUNTS
                        .with_label_values(&["late"])
                        .inc_by(waiting);
                }
                break;
            };
            waiting -= 1;
            let Ok((messages, _)) = page else {
                m::UNREAD_COUNTS.with_label_values(&["failed"]).inc();
                continue;
            };
            // A full page may stop short of the position: what is past it counts whole.
            let beyond = match messages.last() {
                Some(last) if messages.len() >= FETCH_LIMIT as usize => {
                    up_to.saturating_sub(last.seq)
                }
                _ => 0,
            };
            debug_assert!(messages.first().is_none_or(|m| m.seq > after));
            let effects = messages.iter().map(|m| unread_effect(m, &reader));
            let mut count = count_unread(effects);
            count.messages += beyond;
            counts.insert(channel, count);
            m::UNREAD_COUNTS.with_label_values(&["owner"]).inc();
        }
        counts
    }

    async fn fetch(
        &self,
        channel: &ChannelId,
        workspace: &WorkspaceId,
        after: Seq,
        up_to: Option<Seq>,
    ) -> Result<(Vec<Message>, Seq), MeshError> {
        let owner = self
            .ring()
            .owner(channel)
            .cloned()
            .ok_or(MeshError::NoOwner)?;
        let addr = owner
            .mesh_addr
            .parse()
            .map_err(|_| MeshError::Unavailable("bad owner address".into()))?;
        let frame = MeshFrame::Fetch {
            channel: channel.clone(),
            workspace: workspace.clone(),
            after_seq: after,
            up_to_seq: up_to,
            limit: FETCH_LIMIT,
        };
        match self.pool.request(addr, &frame, FETCH_TIMEOUT).await {
            Ok(MeshFrame::FetchOk { messages, last_seq }) => Ok((messages, last_seq)),
            Ok(MeshFrame::Error(e)) => Err(e),
            Ok(other) => Err(MeshError::BadRequest(format!(
                "unexpected answer {other:?}"
            ))),
            Err(e) => Err(MeshError::Unavailable(e.to_string())),
        }
    }

    // ---- frames from channel servers ----

    /// Takes a batch of frames from one channel server, in order: a run of `Deliver` frames
    /// under one hold of the lock, its messages offered to each session at once.
    fn on_link_frames(self: &Arc<Self>, from: &NodeId, frames: &mut Vec<MeshFrame>) {
        let mut held = None;
        for frame in frames.drain(..) {
            match frame {
                MeshFrame::Deliver { msg } => {
                    m::MESSAGES_IN.inc();
                    let st = held.get_or_insert_with(|| self.state.lock());
                    self.accept_message(st, msg);
                }
                other => {
                    if let Some(mut st) = held.take() {
                        self.offer(&mut st);
                    }
                    self.on_link_frame(from, other);
                }
            }
        }
        if let Some(mut st) = held {
            self.offer(&mut st);
        }
    }

    fn on_link_frame(self: &Arc<Self>, from: &NodeId, frame: MeshFrame) {
        match frame {
            MeshFrame::Deliver { msg } => {
                m::MESSAGES_IN.inc();
                let mut st = self.state.lock();
                self.accept_message(&mut st, msg);
                self.offer(&mut st);
            }
            MeshFrame::SubscribeAck {
                channel,
                last_seq,
                backlog,
            } => {
                let mut st = self.state.lock();
                let Some(e) = st.channels.get_mut(&channel) else {
                    return;
                };
                if e.owner.as_ref() != Some(from) {
                    return;
                }
                e.acked = true;
                e.refusals = 0;
                e.retry_at = None;
                if e.last_seq.is_none() {
                    e.last_seq = Some(last_seq);
                    e.first_known = Some(last_seq);
                    self.live.notify_waiters();
                }
                // The backlog is one page: a fetch in flight or the one below goes on to here.
                e.catch_up_to = e.catch_up_to.max(last_seq);
                for msg in backlog {
                    self.accept_message(&mut st, msg);
                }
                self.offer(&mut st);
                let e = st.channels.get_mut(&channel).expect("entry exists");
                if let Some((workspace, after, up_to)) = next_gap_fetch(e) {
                    self.spawn_gap_fetch(channel, workspace, after, up_to);
                }
            }
            MeshFrame::Ephemeral { channel, event } => {
                let st = self.state.lock();
                let Some(e) = st.channels.get(&channel) else {
                    return;
                };
                let skip_user = match &event {
                    EphemeralEvent::Typing { user } => Some(user.clone()),
                    EphemeralEvent::Presence { .. } => None,
                };
                let text: Utf8Bytes = ephemeral_json(&channel, &event).into();
                for id in &e.sessions {
                    if let Some(s) = st.sessions.get(id) {
                        if skip_user.as_ref() != Some(&s.user) {
                            s.offer(Outbound::Event(text.clone()));
                        }
                    }
                }
            }
            MeshFrame::Refused { channel, error } => {
                tracing::debug!(%channel, %from, %error, "subscription refused");
                let mut st = self.state.lock();
                if let Some(e) = st.channels.get_mut(&channel) {
                    if e.owner.as_ref() == Some(from) {
                        e.owner = None;
                        e.acked = false;
                        // The owner is busy with the channel: back off. Otherwise the ring is
                        // probably changing: the next reconcile tick subscribes again.
                        if matches!(error, MeshError::Unavailable(_)) {
                            e.refusals = e.refusals.saturating_add(1);
                            e.retry_at = Some(Instant::now() + refusal_backoff(e.refusals));
                        }
                    }
                }
                drop(st);
            }
            other => tracing::warn!(?other, %from, "unexpected frame on a subscription stream"),
        }
    }

    /// Takes one message into the channel's contiguous stream. What becomes deliverable is
    /// staged: the caller offers it with [`State::offer_staged`] before releasing the lock.
    fn accept_message(self: &Arc<Self>, st: &mut State, msg: Message) {
        let State {
            channels, staged, ..
        } = st;
        let Some(e) = channels.get_mut(&msg.channel) else {
            return;
        };
        match e.last_seq {
            Some(last) if msg.seq <= last => {}
            Some(last) if msg.seq > last + 1 => {
                let (seq, channel) = (msg.seq, msg.channel.clone());
                e.pending.insert(seq, msg);
                if e.pending.len() > PENDING_MAX {
                    // Past this, the newest live messages are not kept: the gap fetch goes
                    // on to them (they are in the store). When the gap closes, what is
                    // held goes to every session at once, and more than a session's queue
                    // holds would make every one of them overflow and resync.
                    if let Some((newest, _)) = e.pending.pop_last() {
                        e.catch_up_to = e.catch_up_to.max(newest);
                        m::PENDING_DROPPED.inc();
                    }
                }
                if !e.fetching {
                    e.fetching = true;
                    self.spawn_gap_fetch(channel, e.workspace.clone(), last, seq - 1);
                }
            }
            _ => {
                if e.staged.is_empty() {
                    staged.push(msg.channel.clone());
                }
                if e.last_seq.is_none() {
                    e.first_known = Some(msg.seq.saturating_sub(1));
                    self.live.notify_waiters();
                }
                deliver(e, &msg);
                while let Some(next) = e.pending.first_key_value().map(|(s, _)| *s) {
                    let last = e.last_seq.unwrap_or(0);
                    if next <= last {
                        e.pending.pop_first();
                    } else if next == last + 1 {
                        let (_, m) = e.pending.pop_first().expect("pending not empty");
                        deliver(e, &m);
                    } else {
                        break;
                    }
                }
            }
        }
    }

    fn spawn_gap_fetch(
        self: &Arc<Self>,
        channel: ChannelId,
        workspace: WorkspaceId,
        after: Seq,
        up_to: Seq,
    ) {
        m::GAP_FETCHES.inc();
        let hub = self.clone();
        self.spawn(async move {
            let result = hub.fetch(&channel, &workspace, after, Some(up_to)).await;
            let next = {
                let mut st = hub.state.lock();
                match result {
                    Ok((messages, _)) => hub.gap_fetched(&mut st, &channel, up_to, messages),
                    Err(err) => {
                        // The reconcile tick tries again.
                        tracing::warn!(%channel, error = %err, "gap fetch failed; retrying");
                        if let Some(e) = st.channels.get_mut(&channel) {
                            e.fetching = false;
                        }
                        None
                    }
                }
            };
            if let Some((workspace, after, up_to)) = next {
                hub.spawn_gap_fetch(channel, workspace, after, up_to);
            }
        });
    }

    /// Takes a gap fetch's page (messages after the last contiguous seq, up to `up_to`, as far
    /// as one reply holds); returns the next fetch when the channel is still short of where
    /// it must get to.
    fn gap_fetched(
        self: &Arc<Self>,
        st: &mut State,
        channel: &ChannelId,
        up_to: Seq,
        messages: Vec<Message>,
    ) -> Option<(WorkspaceId, Seq, Seq)> {
        let first = messages.first().map(|m| m.seq);
        for msg in messages {
            self.accept_message(st, msg);
        }
        self.offer(st);
        let e = st.channels.get_mut(channel)?;
        e.fetching = false;
        // The store is the authority: what it does not hold was never acked.
        if let Some(last) = e.last_seq {
            if last < up_to && first.is_none_or(|f| f > last + 1) {
                let skip_to = first.unwrap_or(up_to + 1).min(up_to + 1) - 1;
                if skip_to > last {
                    m::GAPS_SKIPPED.inc();
                    tracing::warn!(%channel, from = last, to = skip_to, "skipping a gap the store does not hold");
                    e.last_seq = Some(skip_to);
                    let pending: Vec<Message> =
                        std::mem::take(&mut e.pending).into_values().collect();
                    for msg in pending {
                        self.accept_message(st, msg);
                    }
                    self.offer(st);
                }
            }
        }
        let e = st.channels.get_mut(channel)?;
        // A page cut short (by count or bytes) is not the end: go on to `up_to` and to the
        // owner's head, or the rest would wait for the next post.
        e.catch_up_to = e.catch_up_to.max(up_to);
        next_gap_fetch(e)
    }

    // ---- subscriptions ----

    /// Keeps one subscription per wanted channel at its owner, drops unwanted ones, retries
    /// stalled gap fetches. Runs until shutdown.
    pub async fn reconcile_loop(self: Arc<Self>) {
        let mut ring_rx = self.ring.clone();
        loop {
            self.reconcile();
            tokio::select! {
                _ = self.shutdown.wait() => return,
                _ = ring_rx.changed() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        }
    }

    /// Offers what is staged (see [`State::offer_staged`]), waking the release loop when a
    /// busy channel's messages start to wait for their window.
    fn offer(&self, st: &mut State) {
        if st.offer_staged(self.hold) {
            self.release.notify_one();
        }
    }

    /// Offers each held channel's messages when its coalescing window ends. Runs until
    /// shutdown; returns at once when the hub does not coalesce.
    pub async fn release_loop(self: Arc<Self>) {
        if self.hold.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                _ = self.shutdown.wait() => return,
                _ = self.release.notified() => {}
            }
            // Until nothing waits: sleep to the earliest window's end, or less when a channel
            // starts waiting meanwhile (its window may end first).
            loop {
                let next = self.state.lock().release_held(Instant::now());
                let Some(next) = next else { break };
                tokio::select! {
                    _ = self.shutdown.wait() => return,
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = self.release.notified() => {}
                }
            }
        }
    }

    fn reconcile(self: &Arc<Self>) {
        let ring = self.ring();
        let mut st = self.state.lock();
        let mut sends: Vec<(NodeId, String, MeshFrame)> = Vec::new();
        let mut retry_fetch = Vec::new();
        let mut tail_checks = Vec::new();
        st.channels.retain(|channel, e| {
            if e.sessions.is_empty() {
                if let Some(owner) = e.owner.take() {
                    sends.push((
                        owner,
                        String::new(),
                        MeshFrame::Unsubscribe {
                            channel: channel.clone(),
                        },
                    ));
                }
                return false;
            }
            let Some(want) = ring.owner(channel) else {
                return true;
            };
            if e.owner.as_ref() != Some(&want.node) {
                if e.owner.is_none() && e.retry_at.is_some_and(|at| Instant::now() < at) {
                    return true;
                }
                if let Some(old) = e.owner.take() {
                    sends.push((
                        old,
                        String::new(),
                        MeshFrame::Unsubscribe {
                            channel: channel.clone(),
                        },
                    ));
                }
                m::SUBSCRIBES.inc();
                if e.last_seq.is_some() && e.refusals == 0 {
                    // A re-subscription after a move or a lost link: the previous owner may
                    // have stored a message the new owner had not read yet when it acked.
                    // (Not after a refusal: the same owner's ack brings what was missed,
                    // and a fetch would only add to the busy channel's queue.)
                    tail_checks.push(channel.clone());
                }
                e.owner = Some(want.node.clone());
                e.acked = false;
                sends.push((
                    want.node.clone(),
                    want.mesh_addr.clone(),
                    MeshFrame::Subscribe {
                        channel: channel.clone(),
                        workspace: e.workspace.clone(),
                        after_seq: e.last_seq,
                    },
                ));
            }
            if let Some((workspace, after, up_to)) = next_gap_fetch(e) {
                retry_fetch.push((channel.clone(), workspace, after, up_to));
            }
            true
        });
        m::SUBSCRIBED_CHANNELS.set(st.channels.len() as i64);
        // Links to members that left the ring are closed by dropping their sender.
        st.links.retain(|node, _| ring.member(node).is_some());
        for (node, addr, frame) in sends {
            if !st.links.contains_key(&node) {
                if addr.is_empty() {
                    continue;
                }
                let Ok(addr) = addr.parse() else { continue };
                let (tx, rx) = mpsc::unbounded_channel();
                let generation = self.next_link.fetch_add(1, Ordering::Relaxed);
                let publishes = Arc::new(AtomicUsize::new(0));
                st.links.insert(
                    node.clone(),
                    Link {
                        tx,
                        generation,
                        publishes: publishes.clone(),
                    },
                );
                self.spawn(
                    self.clone()
                        .run_link(node.clone(), addr, generation, rx, publishes),
                );
            }
            if let Some(link) = st.links.get(&node) {
                let _ = link.tx.send(frame);
            }
        }
        drop(st);
        for (channel, workspace, after, up_to) in retry_fetch {
            self.spawn_gap_fetch(channel, workspace, after, up_to);
        }
        for channel in tail_checks {
            self.spawn_tail_check(channel);
        }
    }

    /// A moment after a re-subscription, asks the owner for anything after the last `seq`
    /// seen, so a message stored by the previous owner during the handoff is delivered even
    /// if no later message reveals the gap.
    fn spawn_tail_check(self: &Arc<Self>, channel: ChannelId) {
        let hub = self.clone();
        self.spawn(async move {
            tokio::time::sleep(TAIL_CHECK_DELAY).await;
            let (workspace, after) = {
                let st = hub.state.lock();
                match st.channels.get(&channel) {
                    Some(e) => match e.last_seq {
                        Some(last) => (e.workspace.clone(), last),
                        None => return,
                    },
                    None => return,
                }
            };
            if let Ok((messages, head)) = hub.fetch(&channel, &workspace, after, None).await {
                if !messages.is_empty() {
                    m::GAP_FETCHES.inc();
                }
                let mut st = hub.state.lock();
                for msg in messages {
                    hub.accept_message(&mut st, msg);
                }
                hub.offer(&mut st);
                // One page; if the owner has more, fetch on to its head.
                let Some(e) = st.channels.get_mut(&channel) else {
                    return;
                };
                e.catch_up_to = e.catch_up_to.max(head);
                let next = next_gap_fetch(e);
                drop(st);
                if let Some((workspace, after, up_to)) = next {
                    hub.spawn_gap_fetch(channel, workspace, after, up_to);
                }
            }
        });
    }

    /// One subscription stream to a channel server. When it ends, every channel subscribed on
    /// it is marked unsubscribed, and the next reconcile subscribes again with the last `seq`.
    async fn run_link(
        self: Arc<Self>,
        node: NodeId,
        addr: std::net::SocketAddr,
        generation: u64,
        mut rx: mpsc::UnboundedReceiver<MeshFrame>,
        publishes: Arc<AtomicUsize>,
    ) {
        let hub = self.clone();
        let node_for_reader = node.clone();
        let session = async move {
            let conn = hub.pool.get(addr).await?;
            let (mut w, mut r) = conn.open().await?;
            let writer = async {
                while let Some(frame) = rx.recv().await {
                    if matches!(frame, MeshFrame::Publish { .. }) {
                        publishes.fetch_sub(1, Ordering::Relaxed);
                    }
                    w.send(&frame).await?;
                }
                w.finish();
                Ok::<(), shared::mesh::TransportError>(())
            };
            let reader = async {
                let mut frames = Vec::new();
                while let Some(frame) = r.read().await? {
                    // Whatever else the same read brought goes to the sessions in one batch.
                    frames.push(frame);
                    let mut bad = None;
                    while frames.len() < READ_BATCH {
                        match r.read_buffered() {
                            Ok(Some(frame)) => frames.push(frame),
                            Ok(None) => break,
                            Err(e) => {
                                bad = Some(e);
                                break;
                            }
                        }
                    }
                    // The frames before a bad one are good: they are taken before the link
                    // ends.
                    hub.on_link_frames(&node_for_reader, &mut frames);
                    if let Some(e) = bad {
                        return Err(e);
                    }
                }
                Ok::<(), shared::mesh::TransportError>(())
            };
            tokio::select! {
                r = writer => r,
                r = reader => r,
            }
        };
        let result = tokio::select! {
            _ = self.shutdown.wait() => return,
            r = session => r,
        };
        if let Err(e) = &result {
            m::LINK_FAILURES.inc();
            tracing::warn!(%node, error = %e, "channel server link lost");
            self.pool.forget(addr);
        }
        {
            let mut st = self.state.lock();
            if st
                .links
                .get(&node)
                .is_some_and(|l| l.generation == generation)
            {
                st.links.remove(&node);
            }
            for e in st.channels.values_mut() {
                if e.owner.as_ref() == Some(&node) {
                    e.owner = None;
                    e.acked = false;
                }
            }
        }
        // Give a restarting peer a moment; the reconcile tick resubscribes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.wake.notify_one();
    }
}

/// The gap fetch a channel needs next, if none is in flight: up to the first message held
/// past a gap, else up to the highest head reported. Marks it in flight.
fn next_gap_fetch(e: &mut ChannelEntry) -> Option<(WorkspaceId, Seq, Seq)> {
    let last = e.last_seq?;
    if e.fetching {
        return None;
    }
    let up_to = match e.pending.keys().next() {
        Some(&first) => first - 1,
        None => e.catch_up_to,
    };
    if up_to <= last {
        return None;
    }
    e.fetching = true;
    Some((e.workspace.clone(), last, up_to))
}

/// The user a workspace notice says was deactivated: a `user_change` whose user is
/// `deleted`. Notices are rare; only one that names both is parsed.
fn deactivated_user(event: &str) -> Option<UserId> {
    if !(event.contains("\"user_change\"") && event.contains("\"deleted\":true")) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(event).ok()?;
    if v["type"] != "user_change" || v["user"]["deleted"] != true {
        return None;
    }
    v["user"]["id"].as_str().and_then(UserId::parse)
}

/// Renders a message once and queues it to every local session of the channel.
/// Takes the next message of a channel's contiguous stream: rendered once, kept in the
/// recent window, and staged for the sessions.
fn deliver(e: &mut ChannelEntry, msg: &Message) {
    e.last_seq = Some(msg.seq);
    let text: Utf8Bytes = message_json(msg).into();
    if e.recent.len() == RECENT_PER_CHANNEL {
        e.recent.pop_front();
    }
    e.recent.push_back((msg.seq, text.clone()));
    e.staged.push((msg.seq, text));
}

/// Helpers for the gateway's unit tests: a hub without channel servers, whose frames the
/// tests hand in themselves.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use shared::ids::Ts;
    use shared::mesh::{Mesh, MeshTls};

    pub(crate) fn hub() -> (Arc<Hub>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (hub_in(dir.path()), dir)
    }

    /// A hub whose mesh uses the dev certificates in `dir` (made if missing).
    pub(crate) fn hub_in(dir: &std::path::Path) -> Arc<Hub> {
        hub_holding(dir, Duration::ZERO)
    }

    /// Like [`hub_in`], with a coalescing window of `hold` (released by a running
    /// [`Hub::release_loop`]).
    pub(crate) fn hub_holding(dir: &std::path::Path, hold: Duration) -> Arc<Hub> {
        hub_with_ring(dir, hold, watch::channel(Arc::new(Ring::empty())).1)
    }

    /// A hub following the ring that `ring` receives.
    pub(crate) fn hub_with_ring(
        dir: &std::path::Path,
        hold: Duration,
        ring: watch::Receiver<Arc<Ring>>,
    ) -> Arc<Hub> {
        let tls = MeshTls::dev(dir).unwrap();
        let mesh = Mesh::client(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            1 << 20,
            Duration::from_millis(200),
        )
        .unwrap();
        Hub::new(
            NodeId::from("gw-test"),
            Arc::new(PeerPool::new(Arc::new(mesh))),
            ring,
            hold,
            Shutdown::new(),
        )
    }

    pub(crate) fn msg(seq: Seq) -> Message {
        Message {
            workspace: WorkspaceId::from("TW"),
            channel: ChannelId::from("CX"),
            seq,
            ts: Ts(1_000 + seq),
            user: UserId::from("UA"),
            text: format!("m{seq}"),
            client_msg_id: None,
            thread_ts: None,
            kind: shared::protocol::MessageKind::Posted,
            previous: None,
            broadcast: false,
            bot: false,
            rich: None,
        }
    }

    /// `owner` passes `msg` on to the hub, as a live message of its subscription.
    pub(crate) fn deliver_live(hub: &Arc<Hub>, owner: &str, msg: Message) {
        hub.on_link_frame(&NodeId::from(owner), MeshFrame::Deliver { msg });
    }

    /// The channel `CX` acknowledged by `owner` at `last_seq`, with `backlog`.
    pub(crate) fn ack(hub: &Arc<Hub>, owner: &str, last_seq: Seq, backlog: Vec<Message>) {
        hub.state
            .lock()
            .channels
            .get_mut(&ChannelId::from("CX"))
            .unwrap()
            .owner = Some(NodeId::from(owner));
        hub.on_link_frame(
            &NodeId::from(owner),
            MeshFrame::SubscribeAck {
                channel: ChannelId::from("CX"),
                last_seq,
                backlog,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{ack, deliver_live, hub, msg};
    use super::*;

    fn session(
        hub: &Arc<Hub>,
        queue: usize,
    ) -> (
        SessionId,
        crate::queue::Receiver<Outbound>,
        CancellationToken,
    ) {
        let (tx, rx) = crate::queue::weighted(queue, Outbound::weight);
        let overflow = CancellationToken::new();
        let (id, _, _) = hub.register(
            UserId::from("UB"),
            WorkspaceId::from("TW"),
            &[ChannelId::from("CX")],
            &BTreeMap::new(),
            tx,
            overflow.clone(),
        );
        (id, rx, overflow)
    }

    fn seqs(rx: &mut crate::queue::Receiver<Outbound>) -> Vec<Seq> {
        let mut out = Vec::new();
        while let Some(o) = rx.try_recv() {
            if let Outbound::Messages { batch, .. } = o {
                out.extend(batch.iter().map(|(seq, _)| *seq));
            }
        }
        out
    }

    /// The `presence_change` events queued for a session, waiting (bounded) for `n` of them.
    async fn presence_events(rx: &mut crate::queue::Receiver<Outbound>, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        let mut buf = Vec::new();
        while got.len() < n {
            let wait = tokio::time::timeout(Duration::from_secs(5), rx.recv_many(&mut buf, 64));
            assert!(wait.await.is_ok(), "only {got:?}");
            for o in buf.drain(..) {
                if let Outbound::Event(t) = o {
                    got.push(t.to_string());
                }
            }
        }
        got
    }

    /// Unread messages are counted from the recent entries when they cover the range: the
    /// others' channel messages still there, not reactions, edits, replies or the reader's
    /// own. A range they do not cover goes to the channel's owner; with none known, the
    /// channel is left out (and the hello gives the entries instead).
    #[tokio::test]
    async fn unread_messages_are_counted_from_the_recent_entries() {
        use shared::protocol::MessageKind;
        let (hub, _dir) = hub();
        let (_, mut rx, _) = session(&hub, 64);
        ack(&hub, "cs-1", 0, vec![]);
        let mut entries: Vec<Message> = (1..=8).map(msg).collect();
        entries[2].kind = MessageKind::ReactionAdded {
            target: entries[1].ts,
            reaction: "eyes".into(),
        };
        // The edit makes 2 mention UB; 8 calls on a group UB is in.
        entries[3].kind = MessageKind::Edited {
            target: entries[1].ts,
        };
        entries[3].text = "now <@UB|bee>".into();
        entries[7].text = "<!subteam^SONCALL|@oncall> look".into();
        entries[4].thread_ts = Some(entries[1].ts);
        entries[5].user = UserId::from("UB");
        entries[6].kind = MessageKind::Deleted {
            target: entries[0].ts,
        };
        for m in entries {
            deliver_live(&hub, "cs-1", m);
        }
        assert_eq!(seqs(&mut rx), (1..=8).collect::<Vec<_>>());
        let soon = Instant::now() + Duration::from_secs(1);
        let cx = ChannelId::from("CX");
        let ub = UserId::from("UB");
        let groups = ["SONCALL".to_string()];
        let counts = hub
            .unread_counts(&ub, &groups, vec![(cx.clone(), 0, 8)], soon)
            .await;
        // 2 and 8; 1 was deleted, 3-5 are a reaction, an edit and a reply, 6 is UB's own.
        let count = |messages, mentions| UnreadCount { messages, mentions };
        assert_eq!(counts.get(&cx), Some(&count(2, 2)));
        let counts = hub
            .unread_counts(&ub, &[], vec![(cx.clone(), 0, 8)], soon)
            .await;
        assert_eq!(counts.get(&cx), Some(&count(2, 1)), "not in the group");
        let counts = hub
            .unread_counts(&ub, &groups, vec![(cx.clone(), 2, 6)], soon)
            .await;
        assert_eq!(
            counts.get(&cx),
            Some(&count(0, 0)),
            "nothing to read in 3..=6"
        );
        // Past what this gateway has passed: the owner is asked; none is known here.
        let counts = hub
            .unread_counts(&ub, &groups, vec![(cx.clone(), 0, 9)], soon)
            .await;
        assert_eq!(counts.get(&cx), None);
        let unknown = ChannelId::from("CNOPE");
        let counts = hub
            .unread_counts(&ub, &groups, vec![(unknown, 0, 3)], soon)
            .await;
        assert!(counts.is_empty());
    }

    /// A session that is a channel's first here waits for the channel to begin (its
    /// subscription's acknowledgement), and then starts where it began: what comes after is
    /// what the session is given. A wait that runs out says so. A later session finds the
    /// channel begun at once.
    #[tokio::test]
    async fn a_first_session_learns_where_its_channel_began() {
        let (hub, _dir) = hub();
        let (_, mut rx, _) = session(&hub, 64);
        let cx = [ChannelId::from("CX")];
        assert_eq!(hub.first_positions(&cx), None);
        assert_eq!(
            hub.wait_first_positions(&cx, Duration::from_millis(30))
                .await,
            None,
            "nothing began yet"
        );
        let waiting = {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.wait_first_positions(&[ChannelId::from("CX")], Duration::from_secs(10))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        ack(&hub, "cs-1", 7, Vec::new());
        let began = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the wait ends with the acknowledgement")
            .unwrap();
        assert_eq!(began, Some(vec![(ChannelId::from("CX"), 7)]));
        deliver_live(&hub, "cs-1", msg(8));
        assert_eq!(seqs(&mut rx), vec![8], "the session starts right after 7");
        // Later messages do not move where the channel began.
        deliver_live(&hub, "cs-1", msg(9));
        assert_eq!(
            hub.first_positions(&cx),
            Some(vec![(ChannelId::from("CX"), 7)])
        );
    }

    /// A channel whose first message came before any acknowledgement began just before that
    /// message.
    #[tokio::test]
    async fn a_channel_that_began_with_a_message_began_before_it() {
        let (hub, _dir) = hub();
        let (_, mut rx, _) = session(&hub, 64);
        deliver_live(&hub, "cs-1", msg(4));
        assert_eq!(
            hub.first_positions(&[ChannelId::from("CX")]),
            Some(vec![(ChannelId::from("CX"), 3)])
        );
        assert_eq!(seqs(&mut rx), vec![4]);
    }

    #[tokio::test]
    async fn a_repeated_presence_change_reaches_no_session() {
        let (hub, _dir) = test_support::hub();
        let (_, mut rx, _) = session(&hub, 64);
        let change = |user: &str, presence| UserEvent::PresenceChanged {
            workspace: WorkspaceId::from("TW"),
            user: UserId::from(user),
            presence,
        };
        let before = m::PRESENCE_REPEATS.get();
        hub.on_user_event(change("UA", Presence::Active));
        let got = presence_events(&mut rx, 1).await;
        assert!(
            got[0].contains("\"UA\"") && got[0].contains("active"),
            "{got:?}"
        );
        // The admin server says it again (it restarted, say): nobody hears it twice. A
        // change after that is heard, and "away" always is.
        hub.on_user_event(change("UA", Presence::Active));
        hub.on_user_event(change("UA", Presence::Away));
        hub.on_user_event(change("UC", Presence::Away));
        let got = presence_events(&mut rx, 1).await;
        assert_eq!(m::PRESENCE_REPEATS.get(), before + 1);
        let v: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(v["presence"], "away", "{v}");
        assert_eq!(v["users"], serde_json::json!(["UA", "UC"]), "{v}");
        hub.on_user_event(change("UA", Presence::Active));
        let got = presence_events(&mut rx, 1).await;
        assert!(got[0].contains("active"), "{got:?}");
    }

    /// A user's presence on the real admin server (`online`: a session on some gateway).
    async fn online_at_admin(hub: &Arc<Hub>, admin: std::net::SocketAddr, user: &str) -> bool {
        match hub
            .pool
            .request(
                admin,
                &MeshFrame::PresenceGet {
                    user: UserId::from(user),
                },
                Duration::from_secs(5),
            )
            .await
            .expect("the admin server answers")
        {
            MeshFrame::PresenceIs { online, .. } => online,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_presence_report_says_the_state_when_it_is_sent() {
        shared::mesh::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let tls = shared::mesh::MeshTls::dev(dir.path()).unwrap();
        let admin_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let admin = admin_socket.local_addr().unwrap();
        let mut config = shared::config::Config::defaults();
        config.node.data_dir = dir.path().join("admin");
        let stop = Shutdown::new();
        let admin_task = tokio::spawn(admin_server::run(
            config,
            "admin-1".into(),
            admin_socket,
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin_server::AdminDeps {
                tls,
                health: shared::telemetry::Health::default(),
                local: None,
            },
            stop.clone(),
        ));
        let hub = test_support::hub_in(dir.path());
        hub.set_admin_addr(admin);
        let (ws, user) = (WorkspaceId::from("TW"), UserId::from("UB"));
        let report = |hub: &Arc<Hub>| hub.report_presence(&ws, &user).expect("an admin server");

        // The first session: reported online.
        let (first, _rx, _) = session(&hub, 8);
        report(&hub).await.unwrap();
        assert!(online_at_admin(&hub, admin, "UB").await);
        // A quick reconnect: the first session goes, and its report is asked for while the
        // user has no session here, but waits for its turn (as behind a report still on its
        // way); the second session comes meanwhile. The report says what is true when it
        // goes: online.
        assert!(hub.unregister(first));
        let turn = hub
            .presence_turns
            .lock()
            .entry(user.clone())
            .or_default()
            .clone();
        let held = turn.lock().await;
        let late = report(&hub);
        let (second, _rx2, _) = session(&hub, 8);
        drop(held);
        drop(turn);
        late.await.unwrap();
        assert!(
            online_at_admin(&hub, admin, "UB").await,
            "a late report of the going session left a connected user offline"
        );
        // And once the last session has gone, offline.
        assert!(hub.unregister(second));
        report(&hub).await.unwrap();
        assert!(!online_at_admin(&hub, admin, "UB").await);
        assert!(
            hub.presence_turns.lock().is_empty(),
            "a user's turn goes with its last report"
        );
        stop.trigger();
        admin_task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn sessions_get_each_message_once_in_order() {
        let (hub, _dir) = hub();
        let (_id, mut rx, _) = session(&hub, 64);
        ack(&hub, "cs-1", 3, vec![]);
        let from = NodeId::from("cs-1");
        for s in [4, 5, 5, 4, 6] {
            hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(s) });
        }
        assert_eq!(seqs(&mut rx), vec![4, 5, 6]);
    }

    /// The batches queued for a session within `wait`, as their sequences.
    async fn batches(rx: &mut crate::queue::Receiver<Outbound>, wait: Duration) -> Vec<Vec<Seq>> {
        let mut out = Vec::new();
        let mut inbox = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(n) = tokio::time::timeout_at(deadline, rx.recv_many(&mut inbox, 64)).await {
            if n == 0 {
                break;
            }
            for o in inbox.drain(..) {
                if let Outbound::Messages { batch, .. } = o {
                    out.push(batch.iter().map(|(seq, _)| *seq).collect());
                }
            }
        }
        out
    }

    /// The next batch queued for a session within `wait`, as its sequences.
    async fn next_batch(
        rx: &mut crate::queue::Receiver<Outbound>,
        wait: Duration,
    ) -> Option<Vec<Seq>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut inbox = Vec::new();
        loop {
            let n = tokio::time::timeout_at(deadline, rx.recv_many(&mut inbox, 1))
                .await
                .ok()?;
            if n == 0 {
                return None;
            }
            if let Some(Outbound::Messages { batch, .. }) = inbox.pop() {
                return Some(batch.iter().map(|(seq, _)| *seq).collect());
            }
        }
    }

    /// A hub with a coalescing window (long enough for a loaded machine to act within it)
    /// and its release loop running; returns the window.
    fn holding_hub() -> (Arc<Hub>, Duration, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let hold = Duration::from_millis(300);
        let hub = test_support::hub_holding(dir.path(), hold);
        tokio::spawn(hub.clone().release_loop());
        (hub, hold, dir)
    }

    #[tokio::test]
    async fn a_busy_channel_reaches_its_sessions_once_per_window() {
        let (hub, hold, _dir) = holding_hub();
        let (_id, mut rx, _) = session(&hub, 64);
        ack(&hub, "cs-1", 0, vec![]);
        let from = NodeId::from("cs-1");
        // A message after a quiet spell goes at once.
        hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(1) });
        assert_eq!(seqs(&mut rx), vec![1]);
        // Those that follow within the window wait for its end, then go as one batch, in
        // order, repeats dropped as ever.
        let sent = tokio::time::Instant::now();
        for s in [2, 3, 3, 4] {
            hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(s) });
        }
        assert_eq!(seqs(&mut rx), Vec::<Seq>::new(), "held for the window");
        assert_eq!(batches(&mut rx, 3 * hold).await, vec![vec![2, 3, 4]]);
        assert!(
            sent.elapsed() >= hold / 2,
            "released before the window ended"
        );
        // A message past a gap waits for the gap as ever; filled, both go after the window.
        hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(6) });
        hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(5) });
        assert_eq!(batches(&mut rx, 3 * hold).await, vec![vec![5, 6]]);
        // A quiet spell longer than the window: the next message goes at once again.
        tokio::time::sleep(hold + hold / 2).await;
        hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(7) });
        assert_eq!(seqs(&mut rx), vec![7]);
    }

    #[tokio::test]
    async fn sessions_that_come_and_go_while_messages_are_held_get_what_they_should() {
        let (hub, hold, _dir) = holding_hub();
        let (a, mut rx_a, _) = session(&hub, 64);
        let (_b, mut rx_b, _) = session(&hub, 64);
        ack(&hub, "cs-1", 0, vec![]);
        let from = NodeId::from("cs-1");
        hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(1) });
        hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(2) });
        assert_eq!(seqs(&mut rx_a), vec![1]);
        assert_eq!(seqs(&mut rx_b), vec![1]);
        // A leaves while 2 is held: B still gets it when the window ends, A nothing more.
        hub.unregister(a);
        assert_eq!(next_batch(&mut rx_b, 3 * hold).await, Some(vec![2]));
        assert_eq!(next_batch(&mut rx_a, hold).await, None);
        // 3 comes within the window that release opened, and C joins while it is held: C
        // starts after the channel's last message, 3, so the held batch (which it is
        // offered too, and its session skips) holds nothing new for it.
        hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(3) });
        let (tx, mut rx_c) = crate::queue::weighted(64, Outbound::weight);
        let (_c, starts, _) = hub.register(
            UserId::from("UC"),
            WorkspaceId::from("TW"),
            &[ChannelId::from("CX")],
            &BTreeMap::new(),
            tx,
            CancellationToken::new(),
        );
        assert_eq!(starts[&ChannelId::from("CX")], Some(3));
        assert_eq!(seqs(&mut rx_b), Vec::<Seq>::new(), "3 is held");
        assert_eq!(next_batch(&mut rx_b, 3 * hold).await, Some(vec![3]));
        assert_eq!(next_batch(&mut rx_c, hold).await, Some(vec![3]));
        tokio::time::sleep(hold + hold / 2).await;
        hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(4) });
        assert_eq!(seqs(&mut rx_c), vec![4]);
        assert_eq!(seqs(&mut rx_b), vec![4]);
    }

    #[tokio::test]
    async fn messages_past_a_gap_wait_for_it() {
        let (hub, _dir) = hub();
        let (_id, mut rx, _) = session(&hub, 64);
        ack(&hub, "cs-1", 0, vec![]);
        let from = NodeId::from("cs-1");
        hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(1) });
        hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(3) });
        hub.on_link_frame(&from, MeshFrame::Deliver { msg: msg(4) });
        assert_eq!(seqs(&mut rx), vec![1], "3 and 4 wait for 2");
        // The gap arrives (from a fetch or another owner): everything flows in order.
        hub.on_link_frame(&NodeId::from("cs-2"), MeshFrame::Deliver { msg: msg(2) });
        assert_eq!(seqs(&mut rx), vec![2, 3, 4]);
    }

    #[tokio::test]
    async fn a_subscribe_ack_backlog_fills_what_was_missed() {
        let (hub, _dir) = hub();
        let (_id, mut rx, _) = session(&hub, 64);
        ack(&hub, "cs-1", 2, vec![]);
        hub.on_link_frame(&NodeId::from("cs-1"), MeshFrame::Deliver { msg: msg(3) });
        // Moved to cs-2, which acks with the backlog after 3.
        ack(&hub, "cs-2", 6, vec![msg(4), msg(5), msg(6)]);
        assert_eq!(seqs(&mut rx), vec![3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn a_gateway_catching_up_fetches_page_after_page_to_the_head() {
        let (hub, _dir) = hub();
        let (_id, mut rx, _) = session(&hub, 1 << 14);
        let channel = ChannelId::from("CX");
        ack(&hub, "cs-1", 0, vec![]);
        // Resubscribed behind 3,000 messages: the ack carries one page, and a fetch of the
        // rest starts.
        ack(&hub, "cs-2", 3000, (1..=1000).map(msg).collect());
        assert!(hub.state.lock().channels[&channel].fetching);
        // Its answer is one page too: each page asks for the next, up to the head.
        let mut st = hub.state.lock();
        let next = hub.gap_fetched(&mut st, &channel, 3000, (1001..=2000).map(msg).collect());
        assert_eq!(next, Some((WorkspaceId::from("TW"), 2000, 3000)));
        let next = hub.gap_fetched(&mut st, &channel, 3000, (2001..=3000).map(msg).collect());
        assert_eq!(next, None);
        assert!(!st.channels[&channel].fetching);
        drop(st);
        assert_eq!(seqs(&mut rx), (1..=3000).collect::<Vec<_>>());
    }

    /// Live messages past a gap are held only up to a bound while the gap is fetched; the
    /// rest are fetched after it. So when the gap closes no session is offered more than its
    /// queue holds (before, every session of a hot channel overflowed and resynced), and
    /// still every message arrives once, in order.
    #[tokio::test]
    async fn a_long_catch_up_holds_a_bounded_backlog_and_loses_nothing() {
        let (hub, _dir) = hub();
        let queue = 4096;
        let (_id, mut rx, overflow) = session(&hub, queue);
        let channel = ChannelId::from("CX");
        ack(&hub, "cs-1", 0, vec![]);
        // 1 went missing; 2..=6000 arrive live while 1 is fetched.
        for s in 2..=6000 {
            hub.on_link_frame(&NodeId::from("cs-1"), MeshFrame::Deliver { msg: msg(s) });
        }
        assert!(hub.state.lock().channels[&channel].pending.len() <= PENDING_MAX);
        // The fetch of 1 answers: what was held goes out, and the hub fetches the rest.
        let mut st = hub.state.lock();
        let mut next = hub.gap_fetched(&mut st, &channel, 1, vec![msg(1)]);
        drop(st);
        let mut got = seqs(&mut rx);
        assert!(!overflow.is_cancelled(), "the session overflowed");
        while let Some((_, after, up_to)) = next {
            let page: Vec<Message> = (after + 1..=up_to.min(after + 1000)).map(msg).collect();
            let mut st = hub.state.lock();
            next = hub.gap_fetched(&mut st, &channel, up_to, page);
            drop(st);
            got.extend(seqs(&mut rx));
            assert!(!overflow.is_cancelled(), "the session overflowed");
        }
        assert_eq!(got, (1..=6000).collect::<Vec<_>>());
    }

    /// A subscription refused because the owner is busy with the channel is asked again after
    /// a growing pause, not on every reconcile tick; an ack ends the backoff.
    #[tokio::test]
    async fn a_busy_owners_refusal_backs_off_the_next_subscribe() {
        use shared::protocol::{RingMember, RingState};
        let dir = tempfile::tempdir().unwrap();
        let ring = Ring::new(RingState {
            epoch: shared::ids::RingEpoch(1),
            members: vec![RingMember {
                node: NodeId::from("cs-1"),
                mesh_addr: "127.0.0.1:9".into(),
                draining: false,
            }],
            vnodes: 0,
        });
        let (_ring_tx, ring_rx) = watch::channel(Arc::new(ring));
        let hub = super::test_support::hub_with_ring(dir.path(), Duration::ZERO, ring_rx);
        let (_id, _rx, _) = session(&hub, 64);
        let channel = ChannelId::from("CX");
        let cs1 = NodeId::from("cs-1");
        let owner = |hub: &Arc<Hub>| hub.state.lock().channels[&channel].owner.clone();
        assert_eq!(owner(&hub), Some(cs1.clone()), "subscribed at registration");
        ack(&hub, "cs-1", 5, vec![]);
        let refuse = |hub: &Arc<Hub>| {
            hub.on_link_frame(
                &cs1,
                MeshFrame::Refused {
                    channel: channel.clone(),
                    error: MeshError::Unavailable("the channel is busy".into()),
                },
            )
        };
        refuse(&hub);
        assert_eq!(owner(&hub), None);
        // The next ticks hold back while the pause lasts.
        hub.reconcile();
        assert_eq!(owner(&hub), None, "subscribed again at once");
        tokio::time::sleep(refusal_backoff(1) + Duration::from_millis(50)).await;
        hub.reconcile();
        assert_eq!(owner(&hub), Some(cs1.clone()), "never subscribed again");
        // A second refusal in a row waits longer.
        refuse(&hub);
        let backoff = |hub: &Arc<Hub>| {
            let st = hub.state.lock();
            let e = &st.channels[&channel];
            (e.refusals, e.retry_at)
        };
        let (refusals, until) = backoff(&hub);
        let wait = until.unwrap().saturating_duration_since(Instant::now());
        assert!(wait > refusal_backoff(1), "{wait:?}");
        assert_eq!(refusals, 2);
        // Once acknowledged, the count starts over.
        tokio::time::sleep_until(until.unwrap().into()).await;
        hub.reconcile();
        ack(&hub, "cs-1", 5, vec![]);
        assert_eq!(backoff(&hub), (0, None));
    }

    /// Typing relayed to a channel server that cannot take it piles up to a bound, not
    /// without one: past it, events are dropped and counted.
    #[tokio::test]
    async fn ephemeral_events_for_a_stuck_link_are_bounded() {
        let (hub, _dir) = hub();
        let (_id, _rx, _) = session(&hub, 64);
        let channel = ChannelId::from("CX");
        // A link to cs-1 whose writer never runs (its queue is held here, unread).
        let (tx, unread) = mpsc::unbounded_channel();
        {
            let mut st = hub.state.lock();
            st.channels.get_mut(&channel).unwrap().owner = Some(NodeId::from("cs-1"));
            st.links.insert(
                NodeId::from("cs-1"),
                Link {
                    tx,
                    generation: 0,
                    publishes: Arc::new(AtomicUsize::new(0)),
                },
            );
        }
        let before = m::EPHEMERAL_DROPPED.get();
        let typing = EphemeralEvent::Typing {
            user: UserId::from("UB"),
        };
        for _ in 0..PUBLISH_QUEUE_MAX + 500 {
            hub.publish(&channel, typing.clone());
        }
        assert_eq!(m::EPHEMERAL_DROPPED.get() - before, 500);
        assert_eq!(unread.len(), PUBLISH_QUEUE_MAX);
    }

    #[tokio::test]
    async fn a_fetch_in_flight_goes_on_to_the_head_an_ack_reported_meanwhile() {
        let (hub, _dir) = hub();
        let (_id, mut rx, _) = session(&hub, 1 << 14);
        let channel = ChannelId::from("CX");
        ack(&hub, "cs-1", 0, vec![]);
        // 10 shows a gap: a fetch of 1..=9 starts.
        hub.on_link_frame(&NodeId::from("cs-1"), MeshFrame::Deliver { msg: msg(10) });
        assert!(hub.state.lock().channels[&channel].fetching);
        // The channel moves; the new owner's ack reports 2,500 and carries 1..=1000.
        ack(&hub, "cs-2", 2500, (1..=1000).map(msg).collect());
        // The fetch for 1..=9 answers: the hub goes on to 2,500 without waiting for a post.
        let mut st = hub.state.lock();
        let next = hub.gap_fetched(&mut st, &channel, 9, (1..=9).map(msg).collect());
        assert_eq!(next, Some((WorkspaceId::from("TW"), 1000, 2500)));
        drop(st);
        assert_eq!(seqs(&mut rx), (1..=1000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_full_session_queue_flags_overflow_without_blocking_others() {
        let (hub, _dir) = hub();
        let (_slow, _slow_rx, slow_overflow) = session(&hub, 2);
        let (_fast, mut fast_rx, fast_overflow) = session(&hub, 64);
        ack(&hub, "cs-1", 0, vec![]);
        for s in 1..=10 {
            hub.on_link_frame(&NodeId::from("cs-1"), MeshFrame::Deliver { msg: msg(s) });
        }
        assert!(slow_overflow.is_cancelled());
        assert!(!fast_overflow.is_cancelled());
        assert_eq!(seqs(&mut fast_rx), (1..=10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_resume_point_past_the_local_window_goes_to_the_owner_without_overflowing() {
        let (hub, _dir) = hub();
        let (_id, _rx, _) = session(&hub, 64);
        ack(&hub, "cs-1", 0, vec![]);
        for s in 1..=3 {
            hub.on_link_frame(&NodeId::from("cs-1"), MeshFrame::Deliver { msg: msg(s) });
        }
        let channel = ChannelId::from("CX");
        let (local, last) = hub.backfill(&channel, 1, None).await.unwrap();
        assert_eq!(
            local.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(last, 3);
        // Past what this gateway has seen, only the owner knows the head (here there is no
        // owner in the ring, so it is that error rather than an empty local answer).
        for after in [4, u64::MAX] {
            assert_eq!(
                hub.backfill(&channel, after, None).await.unwrap_err(),
                MeshError::NoOwner
            );
        }
    }

    #[tokio::test]
    async fn membership_events_add_and_remove_channels() {
        let (hub, _dir) = hub();
        let (id, mut rx, _) = session(&hub, 64);
        hub.on_user_event(UserEvent::ChannelJoined {
            workspace: WorkspaceId::from("TW"),
            channel: ChannelId::from("CY"),
            user: UserId::from("UB"),
            channel_name: "y".into(),
            after_seq: None,
            private: false,
        });
        assert!(hub.in_channel(id, &ChannelId::from("CY")));
        // Another workspace's event for a same-named user id changes nothing.
        hub.on_user_event(UserEvent::ChannelLeft {
            workspace: WorkspaceId::from("TOTHER"),
            channel: ChannelId::from("CY"),
            user: UserId::from("UB"),
        });
        assert!(hub.in_channel(id, &ChannelId::from("CY")));
        hub.on_user_event(UserEvent::ChannelLeft {
            workspace: WorkspaceId::from("TW"),
            channel: ChannelId::from("CY"),
            user: UserId::from("UB"),
        });
        assert!(!hub.in_channel(id, &ChannelId::from("CY")));
        let mut kinds = Vec::new();
        while let Some(o) = rx.try_recv() {
            kinds.push(match o {
                Outbound::Joined { .. } => "joined".to_string(),
                Outbound::Left { .. } => "left".to_string(),
                Outbound::Event(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    v["type"].as_str().unwrap().to_string()
                }
                Outbound::Messages { .. } => "messages".to_string(),
                Outbound::Close(reason) => format!("close {reason}"),
            });
        }
        assert_eq!(
            kinds,
            [
                "joined",
                "channel_joined",
                "member_joined_channel",
                "left",
                "channel_left"
            ],
            "the joiner hears of its own join as members do; nothing of the other workspace's"
        );
    }

    /// Slack's `member_joined_channel` and `member_left_channel` go to every session here
    /// that is in the channel, whether or not the member who came or went has a session here;
    /// sessions outside the channel hear nothing.
    #[tokio::test]
    async fn members_of_a_channel_hear_who_joins_and_leaves_it() {
        let (hub, _dir) = hub();
        let (member, mut in_cx, _) = session(&hub, 64);
        let (tx, mut elsewhere) = crate::queue::weighted(64, Outbound::weight);
        hub.register(
            UserId::from("UE"),
            WorkspaceId::from("TW"),
            &[ChannelId::from("CE")],
            &BTreeMap::new(),
            tx,
            CancellationToken::new(),
        );
        let (ws, carol) = (WorkspaceId::from("TW"), UserId::from("UCAROL"));
        hub.on_user_event(UserEvent::ChannelJoined {
            workspace: ws.clone(),
            channel: ChannelId::from("CX"),
            user: carol.clone(),
            channel_name: "x".into(),
            after_seq: Some(3),
            private: false,
        });
        hub.on_user_event(UserEvent::ChannelLeft {
            workspace: ws.clone(),
            channel: ChannelId::from("CX"),
            user: carol.clone(),
        });
        let events: Vec<serde_json::Value> = drained(&mut in_cx)
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        assert_eq!(
            events,
            [
                serde_json::json!({ "type": "member_joined_channel", "user": "UCAROL", "channel": "CX", "team": "TW", "channel_type": "C" }),
                serde_json::json!({ "type": "member_left_channel", "user": "UCAROL", "channel": "CX", "team": "TW" }),
            ]
        );
        assert!(drained(&mut elsewhere).is_empty(), "not in CX");
        assert!(
            !hub.in_channel(member, &ChannelId::from("CE")),
            "another member's change moves no session"
        );
    }

    /// A workspace notice reaches every session of the workspace, or with `members_of` only
    /// the sessions in that channel; never another workspace's.
    #[tokio::test]
    async fn notices_reach_the_workspace_or_a_channel_s_members() {
        let (hub, _dir) = hub();
        let (_member, mut in_cx, _) = session(&hub, 64);
        let register = |user: &str, workspace: &str, channel: &str| {
            let (tx, rx) = crate::queue::weighted(64, Outbound::weight);
            hub.register(
                UserId::from(user),
                WorkspaceId::from(workspace),
                &[ChannelId::from(channel)],
                &BTreeMap::new(),
                tx,
                CancellationToken::new(),
            );
            rx
        };
        let mut elsewhere = register("UE", "TW", "CE");
        let mut other_workspace = register("UO", "TO", "CX");
        let notice = |members_of: Option<&str>, event: &str| UserEvent::Notice {
            workspace: WorkspaceId::from("TW"),
            members_of: members_of.map(ChannelId::from),
            event: event.into(),
        };
        hub.on_user_event(notice(None, r#"{"type":"team_join"}"#));
        hub.on_user_event(notice(Some("CX"), r#"{"type":"group_rename"}"#));
        assert_eq!(
            drained(&mut in_cx),
            [r#"{"type":"team_join"}"#, r#"{"type":"group_rename"}"#]
        );
        assert_eq!(drained(&mut elsewhere), [r#"{"type":"team_join"}"#]);
        assert!(drained(&mut other_workspace).is_empty());

        // A deactivated user's sessions hear it, then end; the others only hear it. A
        // profile change, or a namesake in another workspace, ends nothing.
        let changed = r#"{"type":"user_change","user":{"id":"UE","deleted":false}}"#;
        hub.on_user_event(notice(None, changed));
        assert_eq!(drained(&mut elsewhere), [changed]);
        assert_eq!(drained(&mut in_cx), [changed]);
        let mut namesake = register("UE", "TO", "CX");
        let gone = r#"{"type":"user_change","user":{"id":"UE","deleted":true}}"#;
        hub.on_user_event(notice(None, gone));
        assert_eq!(drained(&mut elsewhere), [gone, "close account_inactive"]);
        assert_eq!(drained(&mut in_cx), [gone]);
        assert!(drained(&mut namesake).is_empty());
        assert_eq!(deactivated_user(gone), Some(UserId::from("UE")));
        // An event for one user reaches that user's sessions in its workspace alone.
        let mut second = register("UE", "TW", "CX");
        let mine = r#"{"type":"subteam_self_added","subteam_id":"S1"}"#;
        hub.on_user_event(UserEvent::UserNotice {
            workspace: WorkspaceId::from("TW"),
            user: UserId::from("UE"),
            event: mine.into(),
        });
        assert_eq!(drained(&mut second), [mine]);
        assert!(drained(&mut in_cx).is_empty());
        assert!(drained(&mut namesake).is_empty());
        for not in [
            changed,
            r#"{"type":"team_join","user":{"id":"UE","deleted":true}}"#,
            r#"{"type":"user_change","deleted":true,"user":{"id":"UE"}}"#,
            r#"{"type":"user_change","user":{"id":"not an id","deleted":true}}"#,
            "{\"user_change\" \"deleted\":true",
        ] {
            assert_eq!(deactivated_user(not), None, "{not}");
        }
    }

    /// A join carries the channel's seq from before it. A message posted after the join can
    /// reach the hub before the join does: the joining sessions start at the join's seq, and
    /// are told how far the hub has got, so that they fetch what they missed at once.
    #[tokio::test]
    async fn a_join_starts_the_sessions_at_the_seq_it_carries() {
        let (hub, _dir) = hub();
        let (_bob, mut bob_rx, _) = session(&hub, 64);
        ack(&hub, "cs-1", 0, vec![]);
        for s in 1..=3 {
            deliver_live(&hub, "cs-1", msg(s));
        }
        assert_eq!(seqs(&mut bob_rx), vec![1, 2, 3]);
        // Carol, in no channel yet, joins CX at seq 1: 2 and 3 came after her join.
        let (tx, mut carol_rx) = crate::queue::weighted(64, Outbound::weight);
        let (ws, carol) = (WorkspaceId::from("TW"), UserId::from("UC"));
        hub.register(
            carol.clone(),
            ws.clone(),
            &[],
            &BTreeMap::new(),
            tx,
            CancellationToken::new(),
        );
        let joined = |channel: &str, after_seq| UserEvent::ChannelJoined {
            workspace: ws.clone(),
            channel: ChannelId::from(channel),
            user: carol.clone(),
            channel_name: channel.to_lowercase(),
            after_seq,
            private: false,
        };
        hub.on_user_event(joined("CX", Some(1)));
        let starts = |rx: &mut crate::queue::Receiver<Outbound>| {
            let mut out = Vec::new();
            while let Some(o) = rx.try_recv() {
                if let Outbound::Joined {
                    channel,
                    start,
                    head,
                } = o
                {
                    out.push((channel.0, start, head));
                }
            }
            out
        };
        assert_eq!(starts(&mut carol_rx), vec![("CX".into(), Some(1), Some(3))]);
        // A join whose seq the hub has not reached yet starts where the hub is.
        hub.on_user_event(UserEvent::ChannelLeft {
            workspace: ws.clone(),
            channel: ChannelId::from("CX"),
            user: carol.clone(),
        });
        hub.on_user_event(joined("CX", Some(7)));
        assert_eq!(starts(&mut carol_rx), vec![("CX".into(), Some(3), Some(3))]);
        // A channel no session here was in: the hub's own stream starts at the join, so its
        // subscription asks the owner for what followed.
        hub.on_user_event(joined("CY", Some(5)));
        assert_eq!(starts(&mut carol_rx), vec![("CY".into(), Some(5), None)]);
        let st = hub.state.lock();
        assert_eq!(st.channels[&ChannelId::from("CY")].last_seq, Some(5));
        drop(st);
        // Without a seq (a membership resync's listing), as before: from what comes next.
        hub.on_user_event(joined("CZ", None));
        assert_eq!(starts(&mut carol_rx), vec![("CZ".into(), None, None)]);
        assert_eq!(
            hub.state.lock().channels[&ChannelId::from("CZ")].last_seq,
            None
        );
    }

    /// What the drained queue held: the kind of each item, and the events' text.
    fn drained(rx: &mut crate::queue::Receiver<Outbound>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(o) = rx.try_recv() {
            out.push(match o {
                Outbound::Joined { channel, .. } => format!("joined {}", channel.0),
                Outbound::Left { channel } => format!("left {}", channel.0),
                Outbound::Event(t) => t.to_string(),
                Outbound::Messages { .. } => "messages".into(),
                Outbound::Close(reason) => format!("close {reason}"),
            });
        }
        out
    }

    /// A resync (the admin server's stream came back) joins the channels the Web API lists
    /// that the sessions lack and leaves those it no longer lists, with the events that the
    /// lost changes would have brought; a second resync of the same list changes nothing.
    #[tokio::test]
    async fn a_resync_applies_the_membership_changes_that_were_missed() {
        let (hub, _dir) = hub();
        let (id, mut rx, _) = session(&hub, 64);
        let (ws, user) = (WorkspaceId::from("TW"), UserId::from("UB"));
        assert_eq!(hub.users_here(), vec![(ws.clone(), user.clone())]);
        let listed = vec![(ChannelId::from("CY"), "yard".to_string(), true)];
        let since = hub.membership_seq();
        assert_eq!(hub.resync_user(&ws, &user, &listed, since), Some((1, 1)));
        assert!(!hub.in_channel(id, &ChannelId::from("CX")));
        assert!(hub.in_channel(id, &ChannelId::from("CY")));
        let got = drained(&mut rx);
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], "joined CY");
        assert!(got[1].contains(r#""type":"channel_joined""#) && got[1].contains("yard"));
        assert!(
            got[1].contains(r#""is_private":true"#),
            "the listing said private: {}",
            got[1]
        );
        assert!(got[2].contains(r#""type":"member_joined_channel""#) && got[2].contains("CY"));
        assert_eq!(got[3], "left CX");
        assert!(got[4].contains(r#""type":"channel_left""#) && got[4].contains("CX"));
        let since = hub.membership_seq();
        assert_eq!(hub.resync_user(&ws, &user, &listed, since), Some((0, 0)));
        assert!(drained(&mut rx).is_empty());
        // Another workspace's list for the same user id touches nothing.
        let other = WorkspaceId::from("TOTHER");
        assert_eq!(hub.resync_user(&other, &user, &[], since), Some((0, 0)));
        assert!(hub.in_channel(id, &ChannelId::from("CY")));
    }

    /// A list asked for before a change (or a new session) of the user may be older than
    /// what the sessions have: it is not applied, and the caller asks again.
    #[tokio::test]
    async fn a_resync_older_than_a_change_is_not_applied() {
        let (hub, _dir) = hub();
        let (id, mut rx, _) = session(&hub, 64);
        let (ws, user) = (WorkspaceId::from("TW"), UserId::from("UB"));
        let since = hub.membership_seq();
        // Listed before CY was joined.
        let stale = vec![(ChannelId::from("CX"), "x".to_string(), false)];
        hub.on_user_event(UserEvent::ChannelJoined {
            workspace: ws.clone(),
            channel: ChannelId::from("CY"),
            user: user.clone(),
            channel_name: "y".into(),
            after_seq: None,
            private: false,
        });
        drained(&mut rx);
        assert_eq!(hub.resync_user(&ws, &user, &stale, since), None);
        assert!(hub.in_channel(id, &ChannelId::from("CY")));
        assert!(drained(&mut rx).is_empty());
        // A second session of the user, after the list was asked for, the same.
        let since = hub.membership_seq();
        let (second, _rx2, _) = session(&hub, 64);
        assert_eq!(hub.resync_user(&ws, &user, &stale, since), None);
        assert!(hub.in_channel(second, &ChannelId::from("CX")));
        // Other users' changes do not hold a user's resync back.
        let since = hub.membership_seq();
        hub.on_user_event(UserEvent::ChannelJoined {
            workspace: ws.clone(),
            channel: ChannelId::from("CZ"),
            user: UserId::from("USOMEONE"),
            channel_name: "z".into(),
            after_seq: None,
            private: false,
        });
        let fresh = vec![
            (ChannelId::from("CX"), "x".to_string(), false),
            (ChannelId::from("CY"), "y".to_string(), false),
        ];
        // (The second session registered with CX alone here, so it joins CY.)
        assert_eq!(hub.resync_user(&ws, &user, &fresh, since), Some((1, 0)));
        assert!(hub.in_channel(second, &ChannelId::from("CY")));
        assert!(hub.in_channel(id, &ChannelId::from("CY")));
    }
}
