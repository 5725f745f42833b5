//! The set of cached workspaces: lazy loads (one per workspace at a time, whoever asks, at
//! most [`Budget::max_concurrent_loads`] of all workspaces), change events, staleness, and
//! eviction of least recently used workspaces when over budget.
//!
//! # Freshness
//! A loaded workspace is kept current by the change events the admin server relays. These
//! things make a cached copy *stale*, so that its next use loads it again:
//! - The link to the admin server went down or came back (or delivered a new ring, which
//!   cannot be told apart from a quick reconnect): events may have been missed in between, so
//!   every copy becomes stale (the link generation changes). While the link is down, a copy
//!   loaded meanwhile is fresh for at most [`Budget::disconnected_max_age`]
//!   (`flannel.disconnected_max_age_ms`, 1 s by default).
//! - An event names a user or channel the copy does not hold (created behind the events'
//!   back, by the CLI for example).
//! - A valid token names a user the copy does not hold ([`Cache::refresh`], at most once per
//!   [`MIN_REFRESH_INTERVAL`] per workspace).
//! - The copy is older than `flannel.max_age_secs`: a safety net for an event lost between the
//!   Web API and the admin server (the Web API counts those), which nothing else would notice.
//! - More than [`MAX_PENDING_EVENTS`] events arrived during its load (see below).
//!
//! # Reloads cannot storm
//! Every copy turns stale at once when the admin server restarts, and the Web API may be
//! slow or down at that moment; a reload must not turn into a wait for every query, nor into
//! a snapshot load per query. So:
//! - A stale copy is answered at once, and its use starts one reload in the background
//!   (serve-stale-while-revalidate); the queries after that reload see the new copy. Only a
//!   query for a workspace with no copy (never loaded, or evicted) waits for a load, and
//!   [`Cache::refresh`], whose caller needs the reload's answer.
//! - At most [`Budget::max_concurrent_loads`] loads run at once (`flannel.max_concurrent_loads`,
//!   4 by default). A load that a query waits for queues for its turn; a background reload
//!   starts only when a turn is free right away (otherwise a later use of the stale copy tries
//!   again), so waiting queries go first and background reloads never pile up.
//! - A failed load is remembered: until its backoff passes the workspace's queries get the
//!   stale copy if there is one, else the load's error, and no load starts. The backoff's step
//!   starts at [`LOAD_BACKOFF_INITIAL`] and doubles per failure in a row up to
//!   [`LOAD_BACKOFF_MAX`]; the wait is a point in the step's upper half, `[step / 2, step]`,
//!   picked by a hash of the workspace and its failure count under a seed of the cache's own
//!   ("equal jitter"). So Flannels (and workspaces) that lost the Web API at the same moment
//!   retry spread over half a step rather than all at once, and none sooner than half a step.
//!
//! # Events
//! Events that change nothing cached (presence) are dropped before any lock is taken. An
//! event takes the cache's lock only to find its workspace, and then the workspace's own
//! lock: a long read of one workspace (a large boot answer) delays that workspace's events,
//! never another workspace's queries. Events that arrive while a workspace loads are kept
//! (at most [`MAX_PENDING_EVENTS`]) and applied on top of the loaded snapshot, in arrival
//! order, so a change made while the snapshot was being read is not lost; a stale copy being
//! served meanwhile gets them too. Events for workspaces not cached are dropped: they load
//! fresh.
//!
//! # Memory
//! At most `max_workspaces` workspaces and `max_users` users (over all workspaces) stay
//! cached; after each load, and after an event adds users, the least recently used others
//! leave until both hold. A workspace larger than `max_users` on its own is still served
//! (everything else is evicted for it).

use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use shared::config::FlannelConfig;
use shared::ids::WorkspaceId;
use shared::protocol::UserEvent;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::loader::{LoadError, SnapshotSource};
use crate::metrics as m;
use crate::workspace::{changes_cached_data, Applied, WorkspaceData};

/// Least time between two reloads asked for by tokens naming unknown users.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// The backoff's step after a workspace's first failed load in a row; doubled per failure
/// after that, up to [`LOAD_BACKOFF_MAX`]. The wait is between half the step and the step.
pub const LOAD_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest backoff after failed loads (the step stops doubling here).
pub const LOAD_BACKOFF_MAX: Duration = Duration::from_secs(16);
/// Most events kept for a workspace while it loads. Past it they are dropped and the loaded
/// copy is stale (it reloads on its next use), so a slow load cannot hold events without
/// bound.
pub const MAX_PENDING_EVENTS: usize = 4096;

/// A cached workspace, shared with the queries reading it.
pub type SharedWorkspace = Arc<RwLock<WorkspaceData>>;

type LoadResult = Result<SharedWorkspace, LoadError>;

struct Slot {
    data: SharedWorkspace,
    /// Link generation when the load started.
    generation: u64,
    loaded_at: Instant,
    last_used: u64,
    num_users: usize,
    stale: bool,
}

struct Loading {
    done: watch::Receiver<Option<LoadResult>>,
    /// Events that arrived during the load, applied after it.
    pending: Vec<UserEvent>,
    /// More than [`MAX_PENDING_EVENTS`] arrived: `pending` was let go, the copy is stale.
    overflowed: bool,
}

impl Loading {
    fn queue(&mut self, event: &UserEvent) {
        if self.overflowed {
            return;
        }
        if self.pending.len() >= MAX_PENDING_EVENTS {
            self.pending = Vec::new();
            self.overflowed = true;
            m::INVALIDATIONS
                .with_label_values(&["pending_overflow"])
                .inc();
            tracing::info!(workspace = %event.workspace(), max = MAX_PENDING_EVENTS,
                "too many events during a load: the loaded copy will reload on next use");
            return;
        }
        self.pending.push(event.clone());
    }
}

/// A workspace whose last load failed, and when the next may start.
struct Failure {
    error: LoadError,
    /// Failed loads in a row.
    num_failures: u32,
    retry_at: Instant,
}

/// The backoff's step after `num_failures` failed loads in a row: [`LOAD_BACKOFF_INITIAL`],
/// doubled per failure after the first, at most [`LOAD_BACKOFF_MAX`].
fn backoff_step(num_failures: u32) -> Duration {
    let doublings = num_failures.saturating_sub(1).min(16);
    LOAD_BACKOFF_INITIAL
        .saturating_mul(1 << doublings)
        .min(LOAD_BACKOFF_MAX)
}

/// How long after the `num_failures`-th failed load in a row the next may start: the point
/// `jitter` picks in the upper half of the step, `[step / 2, step]` ("equal jitter"). Never
/// sooner than half of [`LOAD_BACKOFF_INITIAL`], never later than [`LOAD_BACKOFF_MAX`].
fn backoff(num_failures: u32, jitter: u64) -> Duration {
    let step = backoff_step(num_failures);
    let floor = step / 2;
    let span_nanos = u64::try_from((step - floor).as_nanos()).unwrap_or(u64::MAX);
    floor + Duration::from_nanos(jitter % span_nanos.saturating_add(1))
}

/// The jitter of a workspace's backoff after its `num_failures`-th failed load in a row: a
/// hash of both under `seed`. The same inputs give the same answer; the seed is the cache's
/// own, random (`Cache::jitter_seed`).
fn backoff_jitter(seed: u64, workspace: &WorkspaceId, num_failures: u32) -> u64 {
    // SipHash with fixed keys: the randomness is all in the seed.
    let mut hasher = DefaultHasher::new();
    seed.hash(&mut hasher);
    workspace.hash(&mut hasher);
    num_failures.hash(&mut hasher);
    hasher.finish()
}

struct Inner {
    slots: HashMap<WorkspaceId, Slot>,
    loading: HashMap<WorkspaceId, Loading>,
    /// Workspaces whose last load failed (until one succeeds, or the entry is pruned long
    /// after its backoff passed).
    failures: HashMap<WorkspaceId, Failure>,
    /// Changes whenever the admin link goes down or comes up.
    generation: u64,
    link_up: bool,
    total_users: usize,
}

impl Inner {
    fn is_fresh(&self, slot: &Slot, now: Instant, budget: &Budget) -> bool {
        let age = now.saturating_duration_since(slot.loaded_at);
        !slot.stale
            && slot.generation == self.generation
            && (self.link_up || age < budget.disconnected_max_age)
            && budget.max_age.is_none_or(|max| age < max)
    }

    /// The failure of the workspace's last load, while its backoff has not passed.
    fn backing_off(&self, workspace: &WorkspaceId, now: Instant) -> Option<&Failure> {
        self.failures.get(workspace).filter(|f| now < f.retry_at)
    }
}

/// How much a cache may hold, for how long, and how many loads it may run at once.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_workspaces: usize,
    pub max_users: usize,
    /// Reload a workspace older than this on its next use, events or not (`None`: never).
    pub max_age: Option<Duration>,
    /// Loads (snapshot calls) running at once, at least 1 (0 counts as 1): bounds what a
    /// Flannel asks of the Web API when every copy turns stale at once.
    pub max_concurrent_loads: usize,
    /// While the admin link is down, how long a copy loaded meanwhile counts as fresh: events
    /// may be missed, so after that its uses answer it and reload it in the background.
    pub disconnected_max_age: Duration,
}

impl Budget {
    /// The budget the `[flannel]` section sets (checked by [`shared::config::Config::validate`]).
    pub fn from_config(config: &FlannelConfig) -> Budget {
        Budget {
            max_workspaces: config.max_workspaces,
            max_users: config.max_cached_users,
            max_age: (config.max_age_secs > 0).then(|| Duration::from_secs(config.max_age_secs)),
            max_concurrent_loads: config.max_concurrent_loads,
            disconnected_max_age: Duration::from_millis(config.disconnected_max_age_ms),
        }
    }
}

/// What one cache has done since it was made. The Prometheus metrics add up every cache of
/// the process; this is the one cache's own count, which a test can wait on (a load under way,
/// callers joining it) instead of sleeping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Calls that waited for a load, starting one or joining one: [`Cache::get`] finding no
    /// copy, and [`Cache::refresh`].
    pub misses: u64,
    /// [`Cache::get`] calls answered from a stale copy.
    pub stale_served: u64,
    /// Loads started.
    pub loads: u64,
    /// Loads that put a copy in place.
    pub loaded: u64,
    /// Loads that failed.
    pub failures: u64,
    /// Loads waiting now for their turn (all of `max_concurrent_loads` taken).
    pub loads_queued: u64,
    /// Loads running now (holding a turn).
    pub loads_running: u64,
    /// Background reloads of a stale copy not started because every turn was taken.
    pub deferred_busy: u64,
    /// Loads not started because the workspace's last load failed too recently.
    pub deferred_backoff: u64,
}

/// The time a cache goes by: the monotonic clock, or in unit tests one moved by hand.
///
/// Not tokio's paused clock: the tests load from the real Web API over loopback HTTP, and a
/// paused clock jumps to the next timer whenever the runtime waits on a socket, which would
/// fire the HTTP client's timeouts. A manual clock moves only the cache's time.
#[derive(Clone, Default)]
pub(crate) struct Clock {
    #[cfg(test)]
    manual: Option<Arc<Mutex<Instant>>>,
}

impl Clock {
    fn now(&self) -> Instant {
        #[cfg(test)]
        if let Some(manual) = &self.manual {
            return *manual.lock();
        }
        Instant::now()
    }
}

#[cfg(test)]
impl Clock {
    /// A clock that stands still until [`Clock::advance`].
    pub(crate) fn manual_for_test() -> Clock {
        Clock {
            manual: Some(Arc::new(Mutex::new(Instant::now()))),
        }
    }

    pub(crate) fn advance(&self, by: Duration) {
        let manual = self.manual.as_ref().expect("a manual clock");
        *manual.lock() += by;
    }
}

/// Whether a caller gets an answer now or waits for a load.
enum Ready {
    Now(LoadResult),
    Wait(watch::Receiver<Option<LoadResult>>),
}

/// The cached workspaces of one Flannel.
pub struct Cache {
    source: Arc<dyn SnapshotSource>,
    budget: Budget,
    inner: Mutex<Inner>,
    /// One permit per load that may run at once.
    load_permits: Arc<Semaphore>,
    /// Orders uses for the least-recently-used eviction.
    lru_tick: AtomicU64,
    /// Ages copies for staleness.
    clock: Clock,
    /// Spreads the backoffs after failed loads ([`backoff_jitter`]). Random per cache, unlike
    /// the ring's fixed hash keys (every node must place alike): Flannels that lost the Web
    /// API at the same moment must not retry at the same moment.
    jitter_seed: u64,
    activity: watch::Sender<Activity>,
}

impl Cache {
    pub fn new(source: Arc<dyn SnapshotSource>, budget: Budget) -> Arc<Cache> {
        Cache::with_clock(source, budget, Clock::default())
    }

    pub(crate) fn with_clock(
        source: Arc<dyn SnapshotSource>,
        budget: Budget,
        clock: Clock,
    ) -> Arc<Cache> {
        Arc::new(Cache {
            source,
            budget,
            inner: Mutex::new(Inner {
                slots: HashMap::new(),
                loading: HashMap::new(),
                failures: HashMap::new(),
                generation: 0,
                link_up: false,
                total_users: 0,
            }),
            load_permits: Arc::new(Semaphore::new(
                budget.max_concurrent_loads.clamp(1, Semaphore::MAX_PERMITS),
            )),
            lru_tick: AtomicU64::new(1),
            clock,
            jitter_seed: RandomState::new().hash_one(0u64),
            activity: watch::Sender::new(Activity::default()),
        })
    }

    fn tick(&self) -> u64 {
        self.lru_tick.fetch_add(1, Ordering::Relaxed)
    }

    /// This cache's misses and loads so far, updated as they happen.
    pub fn activity(&self) -> watch::Receiver<Activity> {
        self.activity.subscribe()
    }

    /// The workspace, from memory when a copy is cached (a stale one starts a reload in the
    /// background), else loaded (joining a load already under way). Right after a failed
    /// load of a workspace with no copy, the failure's error until its backoff passes.
    pub async fn get(self: &Arc<Self>, workspace: &WorkspaceId) -> LoadResult {
        let ready = {
            let mut inner = self.inner.lock();
            let now = self.clock.now();
            let found = inner
                .slots
                .get(workspace)
                .map(|s| (s.data.clone(), inner.is_fresh(s, now, &self.budget)));
            match found {
                Some((data, fresh)) => {
                    let tick = self.tick();
                    if let Some(slot) = inner.slots.get_mut(workspace) {
                        slot.last_used = tick;
                    }
                    if fresh {
                        m::HITS.inc();
                    } else {
                        m::STALE_SERVED.inc();
                        self.activity.send_modify(|a| a.stale_served += 1);
                        self.revalidate(&mut inner, workspace, now);
                    }
                    Ready::Now(Ok(data))
                }
                None => self.join_or_load(&mut inner, workspace, now),
            }
        };
        self.wait(ready).await
    }

    /// Starts a background reload of the workspace's stale copy, unless one is under way, the
    /// last load failed too recently, or no load may start right away.
    fn revalidate(self: &Arc<Self>, inner: &mut Inner, workspace: &WorkspaceId, now: Instant) {
        if inner.loading.contains_key(workspace) {
            return;
        }
        if inner.backing_off(workspace, now).is_some() {
            m::RELOADS_DEFERRED.with_label_values(&["backoff"]).inc();
            self.activity.send_modify(|a| a.deferred_backoff += 1);
            return;
        }
        match self.load_permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.start_load(inner, workspace, Some(permit));
            }
            Err(_) => {
                m::RELOADS_DEFERRED.with_label_values(&["busy"]).inc();
                self.activity.send_modify(|a| a.deferred_busy += 1);
            }
        }
    }

    /// For a caller that needs a load's answer: joins the load under way, or starts one; while
    /// the last load's backoff runs, answers the copy there is, else the failure's error.
    fn join_or_load(
        self: &Arc<Self>,
        inner: &mut Inner,
        workspace: &WorkspaceId,
        now: Instant,
    ) -> Ready {
        if let Some(loading) = inner.loading.get(workspace) {
            m::MISSES.inc();
            self.activity.send_modify(|a| a.misses += 1);
            return Ready::Wait(loading.done.clone());
        }
        if let Some(failure) = inner.backing_off(workspace, now) {
            m::RELOADS_DEFERRED.with_label_values(&["backoff"]).inc();
            self.activity.send_modify(|a| a.deferred_backoff += 1);
            let answer = match inner.slots.get(workspace) {
                Some(slot) => Ok(slot.data.clone()),
                None => Err(failure.error.clone()),
            };
            return Ready::Now(answer);
        }
        m::MISSES.inc();
        self.activity.send_modify(|a| a.misses += 1);
        Ready::Wait(self.start_load(inner, workspace, None))
    }

    async fn wait(&self, ready: Ready) -> LoadResult {
        let mut done = match ready {
            Ready::Now(answer) => return answer,
            Ready::Wait(done) => done,
        };
        let result = done
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone().expect("waited for some"));
        match result {
            Ok(r) => r,
            Err(_) => Err(LoadError::Unavailable("load task ended".into())),
        }
    }

    /// Starts loading `workspace`; the load runs when `permit` is given, else once it gets one.
    fn start_load(
        self: &Arc<Self>,
        inner: &mut Inner,
        workspace: &WorkspaceId,
        permit: Option<OwnedSemaphorePermit>,
    ) -> watch::Receiver<Option<LoadResult>> {
        let (tx, rx) = watch::channel(None);
        inner.loading.insert(
            workspace.clone(),
            Loading {
                done: rx.clone(),
                pending: Vec::new(),
                overflowed: false,
            },
        );
        self.activity.send_modify(|a| a.loads += 1);
        let generation = inner.generation;
        let cache = self.clone();
        let workspace = workspace.clone();
        // A task of its own: the load finishes (and is cached) even if every caller that
        // waits for it goes away.
        tokio::spawn(async move {
            let permit =
                match permit.or_else(|| cache.load_permits.clone().try_acquire_owned().ok()) {
                    Some(permit) => permit,
                    None => {
                        m::LOADS_QUEUED.inc();
                        cache.activity.send_modify(|a| a.loads_queued += 1);
                        let permit = cache.load_permits.clone().acquire_owned().await;
                        m::LOADS_QUEUED.dec();
                        cache.activity.send_modify(|a| a.loads_queued -= 1);
                        permit.expect("the load semaphore is never closed")
                    }
                };
            let _running = Running::start(&cache, permit);
            let start = Instant::now();
            let loaded = cache.source.snapshot(&workspace).await;
            let result = match loaded {
                Ok(snapshot) if snapshot.workspace == workspace => {
                    let data = WorkspaceData::from_snapshot(snapshot);
                    Ok(cache.install(&workspace, data, generation))
                }
                Ok(snapshot) => Err(LoadError::Unavailable(format!(
                    "asked for {workspace}, got {}",
                    snapshot.workspace
                ))),
                Err(e) => Err(e),
            };
            m::LOAD_DURATION.observe(start.elapsed().as_secs_f64());
            match &result {
                Ok(data) => {
                    let d = data.read();
                    tracing::info!(
                        %workspace,
                        users = d.num_users(),
                        channels = d.num_channels(),
                        ms = start.elapsed().as_millis() as u64,
                        "workspace loaded"
                    );
                }
                Err(e) => cache.load_failed(&workspace, e),
            }
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// Forgets the failed load and starts the workspace's backoff.
    fn load_failed(&self, workspace: &WorkspaceId, error: &LoadError) {
        m::LOAD_FAILURES.inc();
        let mut inner = self.inner.lock();
        inner.loading.remove(workspace);
        let now = self.clock.now();
        if inner.failures.len() >= self.budget.max_workspaces.max(1024) {
            // Bounded: drop the entries whose backoff passed long ago.
            inner
                .failures
                .retain(|_, f| now < f.retry_at + LOAD_BACKOFF_MAX);
        }
        let num_failures = inner
            .failures
            .get(workspace)
            .map_or(1, |f| f.num_failures.saturating_add(1));
        let wait = backoff(
            num_failures,
            backoff_jitter(self.jitter_seed, workspace, num_failures),
        );
        inner.failures.insert(
            workspace.clone(),
            Failure {
                error: error.clone(),
                num_failures,
                retry_at: now + wait,
            },
        );
        drop(inner);
        self.activity.send_modify(|a| a.failures += 1);
        tracing::warn!(%workspace, %error, num_failures, backoff_ms = wait.as_millis() as u64,
            "workspace load failed");
    }

    /// Puts a loaded workspace in place with the events that arrived meanwhile, then evicts
    /// what the budget no longer allows.
    fn install(
        &self,
        workspace: &WorkspaceId,
        mut data: WorkspaceData,
        generation: u64,
    ) -> SharedWorkspace {
        let mut inner = self.inner.lock();
        let (pending, overflowed) = inner
            .loading
            .remove(workspace)
            .map(|l| (l.pending, l.overflowed))
            .unwrap_or_default();
        let mut stale = overflowed;
        for ev in &pending {
            m::EVENTS_APPLIED.inc();
            stale |= data.apply(ev) == Applied::NeedsReload;
        }
        inner.failures.remove(workspace);
        let num_users = data.num_users();
        let data = Arc::new(RwLock::new(data));
        let slot = Slot {
            data: data.clone(),
            generation,
            loaded_at: self.clock.now(),
            last_used: self.tick(),
            num_users,
            stale,
        };
        if let Some(old) = inner.slots.insert(workspace.clone(), slot) {
            inner.total_users -= old.num_users;
        }
        inner.total_users += num_users;
        self.evict(&mut inner, workspace);
        drop(inner);
        self.activity.send_modify(|a| a.loaded += 1);
        data
    }

    /// Evicts least recently used workspaces other than `keep` until within budget.
    fn evict(&self, inner: &mut Inner, keep: &WorkspaceId) {
        while inner.slots.len() > self.budget.max_workspaces
            || inner.total_users > self.budget.max_users
        {
            let victim = inner
                .slots
                .iter()
                .filter(|(id, _)| *id != keep)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone());
            let Some(victim) = victim else {
                tracing::warn!(workspace = %keep, users = inner.total_users, max = self.budget.max_users,
                    "one workspace alone is over the user budget; serving it anyway");
                break;
            };
            if let Some(slot) = inner.slots.remove(&victim) {
                inner.total_users -= slot.num_users;
                m::EVICTIONS.inc();
                tracing::debug!(workspace = %victim, users = slot.num_users, "workspace evicted");
            }
        }
        m::CACHED_WORKSPACES.set(inner.slots.len() as i64);
        m::CACHED_USERS.set(inner.total_users as i64);
    }

    /// Applies a change event to the workspace's cached copy (and queues it behind a load
    /// under way); events of workspaces not cached, and events that change nothing cached,
    /// are dropped.
    ///
    /// Never waits for a workspace's lock while holding the cache's: a long read of one
    /// workspace delays this call, not the queries of other workspaces.
    pub fn apply_event(&self, event: &UserEvent) {
        if !changes_cached_data(event) {
            m::EVENTS_IGNORED.inc();
            return;
        }
        let workspace = event.workspace();
        let data = {
            let mut inner = self.inner.lock();
            let queued = match inner.loading.get_mut(workspace) {
                Some(loading) => {
                    loading.queue(event);
                    true
                }
                None => false,
            };
            match inner.slots.get(workspace) {
                Some(slot) => slot.data.clone(),
                None => {
                    if !queued {
                        m::EVENTS_DROPPED.inc();
                    }
                    return;
                }
            }
        };
        let (applied, users_before, users_after) = {
            let mut d = data.write();
            let before = d.num_users();
            let applied = d.apply(event);
            (applied, before, d.num_users())
        };
        m::EVENTS_APPLIED.inc();
        if applied == Applied::Applied && users_before == users_after {
            return;
        }
        let mut inner = self.inner.lock();
        // Replaced (or evicted) meanwhile: its successor holds the event, from its snapshot
        // (loaded after the event) or from its pending events.
        let Some(slot) = inner
            .slots
            .get_mut(workspace)
            .filter(|s| Arc::ptr_eq(&s.data, &data))
        else {
            return;
        };
        if applied == Applied::NeedsReload {
            m::INVALIDATIONS
                .with_label_values(&["unknown_in_event"])
                .inc();
            tracing::debug!(%workspace, ?event, "event names something not cached; reloading on next use");
            slot.stale = true;
        }
        let old = std::mem::replace(&mut slot.num_users, users_after);
        if old != users_after {
            inner.total_users = inner.total_users - old + users_after;
            self.evict(&mut inner, workspace);
        }
    }

    /// When the workspace's copy is older than [`MIN_REFRESH_INTERVAL`]: marks it stale and
    /// waits for a reload (joining one under way; while a failed load's backoff runs, the copy
    /// there is). `None` when there is no copy, or it is too recent to reload.
    pub async fn refresh(self: &Arc<Self>, workspace: &WorkspaceId) -> Option<LoadResult> {
        let ready = {
            let mut inner = self.inner.lock();
            let now = self.clock.now();
            let slot = inner.slots.get_mut(workspace)?;
            if now.saturating_duration_since(slot.loaded_at) < MIN_REFRESH_INTERVAL {
                return None;
            }
            slot.stale = true;
            m::INVALIDATIONS.with_label_values(&["unknown_user"]).inc();
            self.join_or_load(&mut inner, workspace, now)
        };
        Some(self.wait(ready).await)
    }

    /// The admin link went down, or (re)delivered the ring: events may have been missed
    /// since the last call, so every cached copy becomes stale. Called for every change the
    /// link reports, even one that looks like no change: a drop and a reconnect can be seen
    /// as one notification, and a ring update (rare) costing a reload is the safe side.
    pub fn link_changed(&self, up: bool) {
        let mut inner = self.inner.lock();
        inner.link_up = up;
        inner.generation += 1;
        if !inner.slots.is_empty() {
            m::INVALIDATIONS
                .with_label_values(&[if up { "link_up" } else { "link_down" }])
                .inc_by(inner.slots.len() as u64);
            tracing::info!(
                up,
                workspaces = inner.slots.len(),
                "admin link changed: cached workspaces will reload in the background on next use"
            );
        }
        m::LINK_UP.set(i64::from(up));
    }

    /// Workspaces cached now (fresh or not) and their users in total.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.slots.len(), inner.total_users)
    }

    /// Whether `workspace` is cached and fresh.
    pub fn is_cached(&self, workspace: &WorkspaceId) -> bool {
        let inner = self.inner.lock();
        inner
            .slots
            .get(workspace)
            .is_some_and(|s| inner.is_fresh(s, self.clock.now(), &self.budget))
    }
}

/// A load holding its turn: counted as running until dropped (the turn goes with it).
struct Running<'a> {
    cache: &'a Cache,
    _permit: OwnedSemaphorePermit,
}

impl<'a> Running<'a> {
    fn start(cache: &'a Cache, permit: OwnedSemaphorePermit) -> Running<'a> {
        m::LOADS_RUNNING.inc();
        cache.activity.send_modify(|a| a.loads_running += 1);
        Running {
            cache,
            _permit: permit,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        m::LOADS_RUNNING.dec();
        self.cache.activity.send_modify(|a| a.loads_running -= 1);
    }
}

#[cfg(test)]
mod tests {
    //! Every load comes from the real Web API over HTTP ([`WebApi`]), through the production
    //! [`crate::loader::WebappSource`].

    use super::*;
    use crate::test_web_api::{within, SourceSwitch, WebApi};
    use crate::workspace::tests::profile;
    use shared::config::Config;
    use shared::ids::{ChannelId, UserId};
    use shared::protocol::Presence;

    /// The default config's budget with these bounds, and no max age.
    fn budget(max_workspaces: usize, max_users: usize) -> Budget {
        Budget {
            max_workspaces,
            max_users,
            max_age: None,
            ..Budget::from_config(&Config::defaults().flannel)
        }
    }

    #[test]
    fn backoffs_stay_in_the_upper_half_of_their_step() {
        let steps: Vec<u64> = (1..=7).map(|n| backoff_step(n).as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 16, 16, 16]);
        assert_eq!(backoff_step(u32::MAX), LOAD_BACKOFF_MAX);
        for n in [1, 2, 3, 4, 5, 6, 40, u32::MAX] {
            let step = backoff_step(n);
            let span = u64::try_from((step - step / 2).as_nanos()).unwrap();
            // The ends of the range, and past them (the jitter wraps around).
            assert_eq!(backoff(n, 0), step / 2, "{n}");
            assert_eq!(backoff(n, span), step, "{n}");
            assert_eq!(backoff(n, span + 1), step / 2, "{n}");
            for jitter in [1, span / 3, span - 1, u64::MAX / 2, u64::MAX] {
                let wait = backoff(n, jitter);
                assert!(step / 2 <= wait && wait <= step, "{n} {jitter}: {wait:?}");
                assert!(LOAD_BACKOFF_INITIAL / 2 <= wait && wait <= LOAD_BACKOFF_MAX);
            }
        }
    }

    #[test]
    fn backoffs_of_workspaces_and_flannels_failing_together_are_spread() {
        let workspaces: Vec<WorkspaceId> = (0..64)
            .map(|i| WorkspaceId::from(format!("T{i:04}").as_str()))
            .collect();
        for n in 1..=6 {
            let step = backoff_step(n);
            let (floor, quarter) = (step / 2, step / 8);
            // One Flannel: its workspaces that failed together retry over the whole range.
            let waits: Vec<Duration> = workspaces
                .iter()
                .map(|ws| backoff(n, backoff_jitter(7, ws, n)))
                .collect();
            let distinct: std::collections::HashSet<_> = waits.iter().collect();
            assert_eq!(distinct.len(), waits.len(), "failure {n}: {waits:?}");
            assert!(waits.iter().all(|w| floor <= *w && *w <= step));
            let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
            assert!(
                *min < floor + quarter && *max > step - quarter,
                "failure {n}: {min:?}..{max:?}"
            );
            // Many Flannels (one seed each) whose loads of one workspace failed together.
            let waits: std::collections::HashSet<Duration> = (0..64)
                .map(|seed| backoff(n, backoff_jitter(seed, &workspaces[0], n)))
                .collect();
            assert_eq!(waits.len(), 64, "failure {n}");
        }
        // One workspace's failures in a row: each gets a point of its own in its step.
        let fractions: std::collections::HashSet<u128> = (1..=6)
            .map(|n| {
                let step = backoff_step(n);
                let wait = backoff(n, backoff_jitter(7, &workspaces[0], n));
                (wait - step / 2).as_nanos() * 1000 / (step - step / 2).as_nanos()
            })
            .collect();
        assert!(fractions.len() > 1, "{fractions:?}");
        // Deterministic for given inputs.
        assert_eq!(
            backoff_jitter(7, &workspaces[3], 2),
            backoff_jitter(7, &workspaces[3], 2)
        );
    }

    #[test]
    fn the_flannel_config_sets_the_budget() {
        let b = Budget::from_config(&Config::defaults().flannel);
        assert_eq!(
            (b.max_concurrent_loads, b.disconnected_max_age),
            (4, Duration::from_secs(1))
        );
        assert_eq!(b.max_age, Some(Duration::from_secs(600)));
        let config = Config::load(
            None,
            std::iter::empty(),
            &[
                "flannel.max_concurrent_loads=1".to_string(),
                "flannel.disconnected_max_age_ms=5000".to_string(),
                "flannel.max_age_secs=0".to_string(),
            ],
        )
        .unwrap();
        let b = Budget::from_config(&config.flannel);
        assert_eq!(
            (b.max_concurrent_loads, b.disconnected_max_age, b.max_age),
            (1, Duration::from_secs(5), None)
        );
    }

    fn num_loads(cache: &Cache) -> u64 {
        cache.activity().borrow().loads
    }

    fn activity(cache: &Cache) -> Activity {
        *cache.activity().borrow()
    }

    /// Waits until `n` loads in all have put a copy in place.
    async fn loaded(cache: &Cache, n: u64) {
        within(
            &format!("{n} loads to finish"),
            cache.activity().wait_for(|a| a.loaded >= n),
        )
        .await
        .expect("cache alive");
    }

    fn load_err(r: LoadResult) -> LoadError {
        match r {
            Err(e) => e,
            Ok(_) => panic!("expected a failed load"),
        }
    }

    /// Waits until no load runs or waits (their turns are free).
    async fn idle(cache: &Cache) {
        within(
            "the loads to end",
            cache
                .activity()
                .wait_for(|a| a.loads_running == 0 && a.loads_queued == 0),
        )
        .await
        .expect("cache alive");
    }

    /// Waits until `n` loads in all have failed.
    async fn failed(cache: &Cache, n: u64) {
        within(
            &format!("{n} loads to fail"),
            cache.activity().wait_for(|a| a.failures >= n),
        )
        .await
        .expect("cache alive");
    }

    fn renamed(ws: &WorkspaceId, user: &UserId, name: &str) -> UserEvent {
        UserEvent::UserChanged {
            workspace: ws.clone(),
            user: profile(user.as_str(), name, "Some One", false),
        }
    }

    fn presence(ws: &WorkspaceId, user: &UserId) -> UserEvent {
        UserEvent::PresenceChanged {
            workspace: ws.clone(),
            user: user.clone(),
            presence: Presence::Active,
        }
    }

    #[tokio::test]
    async fn loads_once_then_hits_and_concurrent_callers_share_one_load() {
        // Not answering yet: the first load stays under way until every caller has asked.
        let api = WebApi::prepare().await;
        let cache = Cache::new(api.source(), budget(10, 1000));
        cache.link_changed(true);
        let ws = api.demo_workspace();
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let (cache, ws) = (cache.clone(), ws.clone());
                tokio::spawn(async move { cache.get(&ws).await })
            })
            .collect();
        within(
            "five callers to ask",
            cache.activity().wait_for(|a| a.misses == 5),
        )
        .await
        .expect("cache alive");
        assert_eq!(num_loads(&cache), 1, "the callers share one load");
        api.serve();
        let mut loaded = Vec::new();
        for w in waiters {
            let data = within("the shared load", w).await.unwrap().unwrap();
            assert_eq!(data.read().num_users(), 3);
            loaded.push(data);
        }
        assert!(loaded.iter().all(|d| Arc::ptr_eq(d, &loaded[0])));
        assert_eq!(num_loads(&cache), 1);
        let hit = cache.get(&ws).await.unwrap();
        assert!(Arc::ptr_eq(&hit, &loaded[0]));
        assert_eq!(num_loads(&cache), 1);
        assert!(matches!(
            cache.get(&WorkspaceId::from("TMISSING")).await,
            Err(LoadError::NoSuchWorkspace)
        ));
    }

    #[tokio::test]
    async fn least_recently_used_workspaces_leave_first_by_count_and_by_users() {
        let api = WebApi::start().await;
        let a = api.add_workspace("ta", 10).await;
        let b = api.add_workspace("tb", 10).await;
        let c = api.add_workspace("tc", 10).await;
        // By count: two workspaces at most.
        let cache = Cache::new(api.source(), budget(2, 1000));
        cache.link_changed(true);
        cache.get(&a).await.unwrap();
        cache.get(&b).await.unwrap();
        cache.get(&a).await.unwrap(); // a is now more recent than b
        cache.get(&c).await.unwrap();
        assert!(cache.is_cached(&a) && cache.is_cached(&c) && !cache.is_cached(&b));
        assert_eq!(cache.size(), (2, 20));

        // By users: 25 users hold two workspaces of 10, not three.
        let cache = Cache::new(api.source(), budget(100, 25));
        cache.link_changed(true);
        cache.get(&a).await.unwrap();
        cache.get(&b).await.unwrap();
        cache.get(&c).await.unwrap();
        assert!(!cache.is_cached(&a) && cache.is_cached(&b) && cache.is_cached(&c));
        assert_eq!(cache.size(), (2, 20));
        // An evicted workspace reloads correctly.
        let before = num_loads(&cache);
        assert_eq!(cache.get(&a).await.unwrap().read().num_users(), 10);
        assert_eq!(num_loads(&cache), before + 1);

        // One workspace over the whole budget is still served.
        let cache = Cache::new(api.source(), budget(100, 5));
        cache.link_changed(true);
        cache.get(&a).await.unwrap();
        cache.get(&b).await.unwrap();
        assert_eq!(cache.size(), (1, 10));
    }

    /// Asks for `ws` from a task and waits until the cache has started loading it (the Web API
    /// is not answering yet, so the load stays under way); returns the asking task.
    async fn load_under_way(
        cache: &Arc<Cache>,
        ws: &WorkspaceId,
    ) -> tokio::task::JoinHandle<LoadResult> {
        let getter = {
            let (cache, ws) = (cache.clone(), ws.clone());
            tokio::spawn(async move { cache.get(&ws).await })
        };
        within(
            "the load to start",
            cache.activity().wait_for(|a| a.loads == 1),
        )
        .await
        .expect("cache alive");
        getter
    }

    /// Asks for each of `workspaces` from a task of its own and waits until every load runs
    /// or waits for a turn (the Web API is not answering yet); returns the asking tasks and
    /// the cache's activity then.
    async fn loads_under_way(
        cache: &Arc<Cache>,
        workspaces: &[&WorkspaceId],
    ) -> (Vec<tokio::task::JoinHandle<LoadResult>>, Activity) {
        let getters = workspaces
            .iter()
            .map(|ws| {
                let (cache, ws) = (cache.clone(), (*ws).clone());
                tokio::spawn(async move { cache.get(&ws).await })
            })
            .collect();
        let n = workspaces.len() as u64;
        let a = within(
            "every load to run or queue",
            cache
                .activity()
                .wait_for(|a| a.loads == n && a.loads_running + a.loads_queued == n),
        )
        .await
        .map(|a| *a)
        .expect("cache alive");
        (getters, a)
    }

    #[tokio::test]
    async fn events_apply_to_cached_copies_and_queue_behind_loads() {
        // Not answering yet: the load stays under way while the event arrives.
        let api = WebApi::prepare().await;
        let cache = Cache::new(api.source(), budget(10, 1000));
        cache.link_changed(true);
        let ws = api.demo_workspace();
        let alice = api.demo_user("alice");
        let renamed = |name: &str| UserEvent::UserChanged {
            workspace: ws.clone(),
            user: profile(alice.as_str(), name, "Alice", false),
        };
        // Not cached: dropped.
        cache.apply_event(&renamed("dropped"));
        assert_eq!(cache.size(), (0, 0));
        // During a load: applied after it.
        let getter = load_under_way(&cache, &ws).await;
        cache.apply_event(&renamed("during-load"));
        api.serve();
        let data = within("the load", getter).await.unwrap().unwrap();
        assert_eq!(data.read().user(&alice).unwrap().name, "during-load");
        // Cached: applied at once.
        cache.apply_event(&renamed("after"));
        assert_eq!(data.read().user(&alice).unwrap().name, "after");
        assert_eq!(num_loads(&cache), 1);
    }

    #[tokio::test]
    async fn a_lost_admin_link_makes_every_copy_reload() {
        let api = WebApi::start().await;
        let clock = Clock::manual_for_test();
        let cache = Cache::with_clock(api.source(), budget(10, 1000), clock.clone());
        cache.link_changed(true);
        let ws = api.demo_workspace();
        assert_eq!(cache.get(&ws).await.unwrap().read().num_users(), 3);
        cache.link_changed(false);
        assert!(!cache.is_cached(&ws));
        // Made behind the events' back: the reload sees it. The stale copy answers the use
        // that starts the reload.
        api.add_user(&ws, "dave").await;
        assert_eq!(cache.get(&ws).await.unwrap().read().num_users(), 3);
        loaded(&cache, 2).await;
        assert_eq!(cache.get(&ws).await.unwrap().read().num_users(), 4);
        // Loaded while down: fresh for a short while only.
        assert!(cache.is_cached(&ws));
        clock.advance(budget(10, 1000).disconnected_max_age);
        assert!(!cache.is_cached(&ws), "too old while the link is down");
        cache.get(&ws).await.unwrap();
        loaded(&cache, 3).await;
        assert!(cache.is_cached(&ws));
        cache.link_changed(true);
        assert!(!cache.is_cached(&ws), "reloads once the link is back");
        cache.get(&ws).await.unwrap();
        loaded(&cache, 4).await;
        assert!(cache.is_cached(&ws));
        assert_eq!(num_loads(&cache), 4);
        assert_eq!(activity(&cache).stale_served, 3);
    }

    #[tokio::test]
    async fn copies_older_than_the_max_age_reload() {
        let api = WebApi::start().await;
        let clock = Clock::manual_for_test();
        let max_age = Duration::from_secs(60);
        let mut b = budget(10, 1000);
        b.max_age = Some(max_age);
        let cache = Cache::with_clock(api.source(), b, clock.clone());
        cache.link_changed(true);
        let ws = api.demo_workspace();
        cache.get(&ws).await.unwrap();
        cache.get(&ws).await.unwrap();
        assert_eq!(num_loads(&cache), 1);
        clock.advance(max_age - Duration::from_millis(1));
        cache.get(&ws).await.unwrap();
        assert_eq!(num_loads(&cache), 1, "not yet too old");
        clock.advance(Duration::from_millis(1));
        cache.get(&ws).await.unwrap();
        assert_eq!(num_loads(&cache), 2);
    }

    #[tokio::test]
    async fn unknown_users_and_members_trigger_a_reload() {
        let api = WebApi::start().await;
        let clock = Clock::manual_for_test();
        let cache = Cache::with_clock(api.source(), budget(10, 1000), clock.clone());
        cache.link_changed(true);
        let ws = api.demo_workspace();
        cache.get(&ws).await.unwrap();
        assert!(cache.refresh(&ws).await.is_none(), "not right after a load");
        let dave = api.add_user(&ws, "dave").await;
        clock.advance(MIN_REFRESH_INTERVAL);
        // The caller needs the reload: refresh waits for it.
        let reloaded = cache.refresh(&ws).await.expect("old enough").unwrap();
        assert!(reloaded.read().has_user(&dave));
        assert_eq!(num_loads(&cache), 2);
        assert!(cache.refresh(&ws).await.is_none(), "not again right away");
        assert!(cache.is_cached(&ws));
        cache.apply_event(&UserEvent::ChannelJoined {
            workspace: ws.clone(),
            channel: ChannelId::from("CUNKNOWN"),
            user: api.demo_user("alice"),
            channel_name: "x".into(),
            after_seq: None,
            private: false,
        });
        assert!(!cache.is_cached(&ws));
        // The demo's own #general is known: joining it is applied, not a reload.
        cache.get(&ws).await.unwrap();
        loaded(&cache, 3).await;
        cache.apply_event(&UserEvent::ChannelJoined {
            workspace: ws.clone(),
            channel: api.demo_general(),
            user: api.demo_user("bob"),
            channel_name: "general".into(),
            after_seq: None,
            private: false,
        });
        assert!(cache.is_cached(&ws));
    }

    #[tokio::test]
    async fn a_stale_copy_answers_at_once_while_one_reload_runs() {
        let api = WebApi::start().await;
        let slow = api.beside().await;
        let switch = SourceSwitch::new(api.source());
        let cache = Cache::new(switch.clone(), budget(10, 1000));
        cache.link_changed(true);
        let ws = api.demo_workspace();
        let first = cache.get(&ws).await.unwrap();
        // The admin server restarts: every copy turns stale, and the Web API is slow to answer.
        cache.link_changed(false);
        cache.link_changed(true);
        let dave = api.add_user(&ws, "dave").await;
        switch.set(slow.source());
        for _ in 0..10 {
            let answer = within("the stale copy", cache.get(&ws)).await.unwrap();
            assert!(Arc::ptr_eq(&answer, &first), "the stale copy, at once");
        }
        let a = activity(&cache);
        // One miss: the first load.
        assert_eq!((a.loads, a.stale_served, a.misses), (2, 10, 1), "{a:?}");
        // The Web API answers: the reload puts the new copy in place for the next uses.
        slow.serve();
        loaded(&cache, 2).await;
        assert!(cache.is_cached(&ws));
        assert!(cache.get(&ws).await.unwrap().read().has_user(&dave));
        assert_eq!(num_loads(&cache), 2);
    }

    #[tokio::test]
    async fn a_failed_load_backs_off_before_the_next() {
        let api = WebApi::start().await;
        let switch = SourceSwitch::new(api.refusing_source());
        let clock = Clock::manual_for_test();
        let cache = Cache::with_clock(switch.clone(), budget(10, 1000), clock.clone());
        cache.link_changed(true);
        let ws = api.demo_workspace();

        // The wait after the n-th failure in a row is jittered within [step / 2, step]:
        // just short of the floor it is still running, at the step it has passed.
        let short_of = |n| backoff_step(n) / 2 - Duration::from_millis(1);
        let rest_of = |n| backoff_step(n) - short_of(n);

        // No copy: the failure's error, without a load, until the backoff passes.
        let err = load_err(cache.get(&ws).await);
        assert!(matches!(err, LoadError::Unavailable(_)), "{err:?}");
        switch.set(api.source());
        assert_eq!(load_err(cache.get(&ws).await), err);
        clock.advance(short_of(1));
        assert_eq!(load_err(cache.get(&ws).await), err);
        let a = activity(&cache);
        assert_eq!(
            (a.loads, a.failures, a.deferred_backoff),
            (1, 1, 2),
            "{a:?}"
        );
        clock.advance(rest_of(1));
        assert_eq!(cache.get(&ws).await.unwrap().read().num_users(), 3);
        assert_eq!(num_loads(&cache), 2);

        // A stale copy: answered while its reloads fail and back off, longer each time.
        cache.link_changed(true);
        switch.set(api.refusing_source());
        let copy = cache.get(&ws).await.unwrap();
        failed(&cache, 2).await;
        for _ in 0..3 {
            assert!(Arc::ptr_eq(&cache.get(&ws).await.unwrap(), &copy));
        }
        assert_eq!(num_loads(&cache), 3, "no reload during the backoff");
        clock.advance(backoff_step(1));
        assert!(Arc::ptr_eq(&cache.get(&ws).await.unwrap(), &copy));
        failed(&cache, 3).await;
        assert_eq!(num_loads(&cache), 4);
        // At least half of a doubled step: longer than the first failure's longest wait.
        assert_eq!(short_of(2) + Duration::from_millis(1), backoff_step(1));
        clock.advance(short_of(2));
        cache.get(&ws).await.unwrap();
        assert_eq!(
            num_loads(&cache),
            4,
            "the second failure in a row backs off longer"
        );
        // The Web API is back: after the backoff one reload brings the copy up to date.
        let dave = api.add_user(&ws, "dave").await;
        switch.set(api.source());
        clock.advance(rest_of(2));
        assert!(Arc::ptr_eq(&cache.get(&ws).await.unwrap(), &copy));
        loaded(&cache, 2).await;
        assert!(cache.get(&ws).await.unwrap().read().has_user(&dave));
        assert!(cache.is_cached(&ws));
        assert_eq!(num_loads(&cache), 5);
    }

    #[tokio::test]
    async fn loads_take_turns_and_background_reloads_never_queue() {
        // Not answering yet: the loads stay under way while the test looks at them.
        let api = WebApi::prepare().await;
        let mut b = budget(10, 1000);
        b.max_concurrent_loads = 1;
        let switch = SourceSwitch::new(api.source());
        let cache = Cache::new(switch.clone(), b);
        cache.link_changed(true);
        let x = api.add_workspace("tx", 2).await;
        let y = api.add_workspace("ty", 2).await;
        let z = api.add_workspace("tz", 2).await;
        let (getters, a) = loads_under_way(&cache, &[&x, &y, &z]).await;
        assert_eq!((a.loads_running, a.loads_queued), (1, 2), "{a:?}");
        api.serve();
        for g in getters {
            assert_eq!(
                within("a load", g)
                    .await
                    .unwrap()
                    .unwrap()
                    .read()
                    .num_users(),
                2
            );
        }
        idle(&cache).await;

        // Every copy stale and the Web API slow: the first use's reload takes the one turn,
        // the others answer their stale copies without queueing a reload.
        cache.link_changed(true);
        let slow = api.beside().await;
        switch.set(slow.source());
        cache.get(&x).await.unwrap();
        cache.get(&y).await.unwrap();
        cache.get(&z).await.unwrap();
        let a = activity(&cache);
        assert_eq!(
            (a.loads, a.deferred_busy, a.loads_queued),
            (4, 2, 0),
            "{a:?}"
        );
        slow.serve();
        loaded(&cache, 4).await;
        idle(&cache).await;
        assert!(cache.is_cached(&x) && !cache.is_cached(&y));
        // With the turn free again, the next use of a stale copy reloads it.
        cache.get(&y).await.unwrap();
        loaded(&cache, 5).await;
        assert!(cache.is_cached(&y));
    }

    #[tokio::test]
    async fn configured_turns_and_disconnected_max_age_take_effect() {
        // One load at a time and five seconds of trust while the admin link is down, set in
        // the config (defaults: 4 and 1 s), reaching the cache the way `run` builds it.
        let config = Config::load(
            None,
            std::iter::empty(),
            &[
                "flannel.max_concurrent_loads=1".to_string(),
                "flannel.disconnected_max_age_ms=5000".to_string(),
            ],
        )
        .unwrap();
        // Not answering yet: the loads stay under way while the test looks at them.
        let api = WebApi::prepare().await;
        let clock = Clock::manual_for_test();
        let cache = Cache::with_clock(
            api.source(),
            Budget::from_config(&config.flannel),
            clock.clone(),
        );
        cache.link_changed(true);
        let x = api.add_workspace("tx", 2).await;
        let y = api.add_workspace("ty", 2).await;
        let (getters, a) = loads_under_way(&cache, &[&x, &y]).await;
        assert_eq!(
            (a.loads_running, a.loads_queued),
            (1, 1),
            "the second load waits for the one turn: {a:?}"
        );
        api.serve();
        for g in getters {
            within("a load", g).await.unwrap().unwrap();
        }
        idle(&cache).await;

        // The link drops: the copy turns stale, and the copy its use reloads is trusted for
        // five seconds, not one.
        cache.link_changed(false);
        assert!(!cache.is_cached(&x));
        cache.get(&x).await.unwrap();
        loaded(&cache, 3).await;
        assert!(cache.is_cached(&x));
        clock.advance(Duration::from_secs(1));
        assert!(cache.is_cached(&x), "still fresh past the default");
        clock.advance(Duration::from_millis(3999));
        assert!(cache.is_cached(&x));
        clock.advance(Duration::from_millis(1));
        assert!(!cache.is_cached(&x), "too old while the link is down");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_read_of_one_workspace_never_stalls_the_others() {
        let api = WebApi::start().await;
        let cache = Cache::new(api.source(), budget(10, 1000));
        cache.link_changed(true);
        let ws = api.demo_workspace();
        let other = api.add_workspace("tother", 2).await;
        let data = cache.get(&ws).await.unwrap();
        cache.get(&other).await.unwrap();
        let alice = api.demo_user("alice");
        // A long boot render of the demo workspace holds its read lock, on a thread of its
        // own, until told to finish (or the test ends).
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let (held_tx, held) = tokio::sync::oneshot::channel();
        let render = {
            let data = data.clone();
            std::thread::spawn(move || {
                let _reading = data.read();
                let _ = held_tx.send(());
                let _ = finished.recv();
            })
        };
        within("the render to hold the read lock", held)
            .await
            .expect("render thread alive");
        // Presence changes nothing cached: it does not wait for the lock.
        let thread = {
            let (cache, event) = (cache.clone(), presence(&ws, &alice));
            std::thread::spawn(move || cache.apply_event(&event))
        };
        within(
            "the presence event",
            tokio::task::spawn_blocking(move || thread.join()),
        )
        .await
        .unwrap()
        .unwrap();
        // A rename must wait for the lock; meanwhile other workspaces answer.
        let thread = {
            let (cache, event) = (cache.clone(), renamed(&ws, &alice, "renamed"));
            std::thread::spawn(move || cache.apply_event(&event))
        };
        // The waiting writer shows: new readers of the workspace are held back.
        within("the event to wait for the workspace lock", async {
            while data.try_read().is_some() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        let answer = {
            let (cache, other) = (cache.clone(), other.clone());
            within(
                "another workspace's query",
                tokio::spawn(async move { cache.get(&other).await }),
            )
            .await
            .unwrap()
            .unwrap()
        };
        assert_eq!(answer.read().num_users(), 2);
        drop(finish);
        within(
            "the render",
            tokio::task::spawn_blocking(move || render.join()),
        )
        .await
        .unwrap()
        .unwrap();
        within(
            "the rename",
            tokio::task::spawn_blocking(move || thread.join()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(data.read().user(&alice).unwrap().name, "renamed");
    }

    #[tokio::test]
    async fn users_added_by_events_count_against_the_budget() {
        let api = WebApi::start().await;
        // Room for six users: the demo workspace (3) and another (3).
        let cache = Cache::new(api.source(), budget(10, 6));
        cache.link_changed(true);
        let other = api.add_workspace("tother", 3).await;
        let ws = api.demo_workspace();
        cache.get(&other).await.unwrap();
        cache.get(&ws).await.unwrap();
        assert_eq!(cache.size(), (2, 6));
        // Renaming a known user adds no one.
        cache.apply_event(&renamed(&ws, &api.demo_user("bob"), "robert"));
        assert_eq!(cache.size(), (2, 6));
        // A new user, known from its event only: seven users, so the other workspace leaves.
        cache.apply_event(&renamed(&ws, &UserId::from("UNEW"), "newcomer"));
        assert_eq!(cache.size(), (1, 4));
        assert!(cache.is_cached(&ws) && !cache.is_cached(&other));
    }

    #[tokio::test]
    async fn events_kept_during_a_load_are_bounded() {
        // Not answering yet: the load stays under way while the events arrive.
        let api = WebApi::prepare().await;
        let cache = Cache::new(api.source(), budget(10, 1000));
        cache.link_changed(true);
        let ws = api.demo_workspace();
        let alice = api.demo_user("alice");
        let getter = load_under_way(&cache, &ws).await;
        let num_pending = |cache: &Cache| {
            let inner = cache.inner.lock();
            let loading = &inner.loading[&ws];
            (loading.pending.len(), loading.overflowed)
        };
        // Presence is not kept.
        for _ in 0..10 {
            cache.apply_event(&presence(&ws, &alice));
        }
        assert_eq!(num_pending(&cache), (0, false));
        for i in 0..MAX_PENDING_EVENTS {
            cache.apply_event(&renamed(&ws, &alice, &format!("alice{i}")));
        }
        assert_eq!(num_pending(&cache), (MAX_PENDING_EVENTS, false));
        // One more: the kept events go, and the loaded copy will be stale.
        cache.apply_event(&renamed(&ws, &alice, "last"));
        assert_eq!(num_pending(&cache), (0, true));
        cache.apply_event(&renamed(&ws, &alice, "after"));
        assert_eq!(num_pending(&cache), (0, true));
        api.serve();
        within("the load", getter).await.unwrap().unwrap();
        assert!(
            !cache.is_cached(&ws),
            "events were lost: the copy must reload"
        );
        cache.get(&ws).await.unwrap();
        loaded(&cache, 2).await;
        assert!(cache.is_cached(&ws));
    }
}
