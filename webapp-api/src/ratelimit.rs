//! Per-user rate limits, in Slack's shape: methods are grouped in tiers, and each user has
//! one token bucket per tier, so a client paging through `users.list` does not use up what it
//! may post. A call over its bucket answers `ratelimited` (HTTP 429) with `Retry-After`.
//!
//! Every bucket refills at `webapp.rate_limit_per_minute` and holds at most
//! `webapp.rate_limit_burst` calls (Slack's tiers differ in rate: 1+, 20+, 50+ and 100+ per
//! minute; here the tiers only keep families apart, and one configured budget applies to
//! each). `chat.postMessage` has a bucket of its own (Slack limits it per channel, about one
//! a second with bursts; here per user), and so do incoming webhooks (per hook creator).
//!
//! Memory is bounded: a bucket that has refilled to full is the same as no bucket, so idle
//! ones are dropped by a periodic sweep, and at [`MAX_BUCKETS`] the least recently used are
//! dropped too.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus::{register_int_counter_vec, IntCounterVec};

/// Most buckets held; past it, the least recently used go first.
pub const MAX_BUCKETS: usize = 100_000;
/// How often idle (full) buckets are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub static RATELIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_ratelimited_total",
        "Web API calls (and webhook posts, method \"hooks\") refused with ratelimited, by method",
        &["method"]
    )
    .expect("metric registers once")
});

/// A rate-limit tier: the calls that share a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Slack's Tier 1 (1+ per minute): rarely called, expensive.
    Tier1,
    /// Slack's Tier 2 (20+ per minute): listings, searches, channel administration.
    Tier2,
    /// Slack's Tier 3 (50+ per minute): reads and changes of one conversation.
    Tier3,
    /// Slack's Tier 4 (100+ per minute): cheap lookups.
    Tier4,
    /// `chat.postMessage`, Slack's "special" tier.
    Post,
    /// Incoming webhook posts (`POST /hooks/...`).
    Hook,
}

impl Tier {
    /// How the tier is named in the OpenAPI description (`x-slack-rate-limit-tier`).
    pub fn name(self) -> &'static str {
        match self {
            Tier::Tier1 => "Tier 1",
            Tier::Tier2 => "Tier 2",
            Tier::Tier3 => "Tier 3",
            Tier::Tier4 => "Tier 4",
            Tier::Post => "Special (chat.postMessage)",
            Tier::Hook => "Special (incoming webhooks)",
        }
    }
}

/// The tier of a Web API method, as Slack documents it where Slack has the method; `None` for
/// methods that are not limited (`api.test` needs no token; `internal.*` is the cluster's own
/// traffic on service tokens).
pub fn tier(method: &str) -> Option<Tier> {
    Some(match method {
        "api.test" => return None,
        m if m.starts_with("internal.") => return None,
        "chat.postMessage" => Tier::Post,
        "rtm.connect" | "rtm.start" | "apps.connections.open" => Tier::Tier1,
        "conversations.create"
        | "conversations.list"
        | "conversations.invite"
        | "conversations.rename"
        | "conversations.archive"
        | "conversations.unarchive"
        | "conversations.setTopic"
        | "conversations.setPurpose"
        | "users.conversations"
        | "users.list"
        | "users.setPresence"
        | "dnd.teamInfo"
        | "dnd.setSnooze"
        | "dnd.endSnooze"
        | "dnd.endDnd"
        | "users.profile.set"
        | "users.lookupByEmail"
        | "reactions.remove"
        | "search.messages"
        | "admin.users.create"
        | "pins.add"
        | "pins.remove"
        | "pins.list"
        | "hooks.create" => Tier::Tier2,
        "conversations.join"
        | "conversations.leave"
        | "conversations.kick"
        | "conversations.info"
        | "conversations.history"
        | "conversations.replies"
        | "conversations.open"
        | "conversations.close"
        | "conversations.mark"
        | "chat.update"
        | "chat.meMessage"
        | "chat.scheduleMessage"
        | "chat.scheduledMessages.list"
        | "chat.deleteScheduledMessage"
        | "chat.delete"
        | "reactions.add"
        | "reactions.get"
        | "reactions.list"
        | "files.list"
        | "files.delete"
        | "users.getPresence"
        | "dnd.info"
        | "bots.info"
        | "team.info" => Tier::Tier3,
        // auth.test, users.info, users.profile.get, conversations.members, chat.getPermalink,
        // chat.postEphemeral (Slack: "hundreds of requests per minute"), and any method added
        // later until it is placed.
        _ => Tier::Tier4,
    })
}

/// What a refused call is told: try again after this many seconds (at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by (user, tier). Cheap to share: clone the `Arc` holding it.
#[derive(Debug)]
pub struct RateLimiter {
    /// Refill rate in calls per second; 0 when limiting is off.
    per_second: f64,
    burst: f64,
    max_buckets: usize,
    state: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<(String, Tier), Bucket>,
    last_sweep: Instant,
}

impl RateLimiter {
    /// A limiter refilling each bucket at `per_minute` and holding up to `burst` calls;
    /// either 0 turns limiting off.
    pub fn new(per_minute: u32, burst: u32) -> RateLimiter {
        RateLimiter::with_capacity(per_minute, burst, MAX_BUCKETS)
    }

    /// Like [`RateLimiter::new`], holding at most `max_buckets` buckets.
    pub fn with_capacity(per_minute: u32, burst: u32, max_buckets: usize) -> RateLimiter {
        let off = per_minute == 0 || burst == 0;
        RateLimiter {
            per_second: if off {
                0.0
            } else {
                f64::from(per_minute) / 60.0
            },
            burst: f64::from(burst),
            max_buckets: max_buckets.max(1),
            state: Mutex::new(Buckets {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// A limiter that lets everything through.
    pub fn disabled() -> RateLimiter {
        RateLimiter::new(0, 0)
    }

    pub fn is_enabled(&self) -> bool {
        self.per_second > 0.0
    }

    /// Takes one call from `user`'s bucket of `tier`, or says how long to wait.
    pub fn check(&self, user: &str, tier: Tier) -> Result<(), RetryAfter> {
        self.check_at(user, tier, Instant::now())
    }

    fn check_at(&self, user: &str, tier: Tier, now: Instant) -> Result<(), RetryAfter> {
        if !self.is_enabled() {
            return Ok(());
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(state.last_sweep) >= SWEEP_EVERY {
            self.sweep(&mut state, now);
        }
        let key = (user.to_string(), tier);
        if !state.map.contains_key(&key) && state.map.len() >= self.max_buckets {
            self.sweep(&mut state, now);
            if state.map.len() >= self.max_buckets {
                evict_least_recent(&mut state.map, self.max_buckets - self.max_buckets / 4 - 1);
            }
        }
        let burst = self.burst;
        let bucket = state.map.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_second;
            Err(RetryAfter((wait.ceil() as u64).max(1)))
        }
    }

    /// Drops the buckets that have refilled to full: they are the same as absent ones.
    fn sweep(&self, state: &mut Buckets, now: Instant) {
        let (rate, burst) = (self.per_second, self.burst);
        state.map.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
        });
        state.last_sweep = now;
    }

    /// Buckets held (for tests).
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps the `keep` most recently used buckets. Sorting is O(n log n), but it runs once per
/// `n / 4` new buckets at most, and only when the sweep of full buckets did not make room.
fn evict_least_recent(map: &mut HashMap<(String, Tier), Bucket>, keep: usize) {
    if map.len() <= keep {
        return;
    }
    let mut lasts: Vec<Instant> = map.values().map(|b| b.last).collect();
    lasts.sort_unstable();
    let cutoff = lasts[lasts.len() - keep];
    map.retain(|_, b| b.last >= cutoff);
    // Ties at the cutoff can keep a few more; drop arbitrary ones to stay within the bound.
    let excess = map.len().saturating_sub(keep);
    if excess > 0 {
        let doomed: Vec<_> = map
            .iter()
            .filter(|(_, b)| b.last == cutoff)
            .map(|(k, _)| k.clone())
            .take(excess)
            .collect();
        for k in doomed {
            map.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let l = RateLimiter::new(60, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check_at("U1", Tier::Tier4, t0), Ok(()));
        }
        assert_eq!(l.check_at("U1", Tier::Tier4, t0), Err(RetryAfter(1)));
        // Other users and other tiers have their own buckets.
        assert_eq!(l.check_at("U2", Tier::Tier4, t0), Ok(()));
        assert_eq!(l.check_at("U1", Tier::Tier2, t0), Ok(()));
        // One a second comes back.
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(l.check_at("U1", Tier::Tier4, t1), Ok(()));
        assert_eq!(l.check_at("U1", Tier::Tier4, t1), Err(RetryAfter(1)));
        // Never more than the burst, however long the wait.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check_at("U1", Tier::Tier4, t2), Ok(()));
        }
        assert!(l.check_at("U1", Tier::Tier4, t2).is_err());
    }

    #[test]
    fn retry_after_covers_the_wait() {
        // 6 a minute: one every 10 s.
        let l = RateLimiter::new(6, 1);
        let t0 = Instant::now();
        assert_eq!(l.check_at("U1", Tier::Post, t0), Ok(()));
        assert_eq!(l.check_at("U1", Tier::Post, t0), Err(RetryAfter(10)));
        let t1 = t0 + Duration::from_millis(2500);
        assert_eq!(l.check_at("U1", Tier::Post, t1), Err(RetryAfter(8)));
    }

    #[test]
    fn zero_disables() {
        for l in [
            RateLimiter::new(0, 10),
            RateLimiter::new(10, 0),
            RateLimiter::disabled(),
        ] {
            for _ in 0..1000 {
                assert_eq!(l.check("U1", Tier::Tier1), Ok(()));
            }
            assert!(l.is_empty());
        }
    }

    #[test]
    fn idle_buckets_are_swept_and_the_map_is_bounded() {
        let l = RateLimiter::with_capacity(60, 2, 100);
        let t0 = Instant::now();
        for i in 0..1000 {
            let _ = l.check_at(&format!("U{i}"), Tier::Tier3, t0);
            assert!(l.len() <= 100, "{} buckets", l.len());
        }
        // A user that went over is still limited after others pushed the map to its bound,
        // as long as it was used recently.
        let t1 = t0 + Duration::from_millis(10);
        assert!(l.check_at("UHOT", Tier::Tier3, t1).is_ok());
        assert!(l.check_at("UHOT", Tier::Tier3, t1).is_ok());
        assert!(l.check_at("UHOT", Tier::Tier3, t1).is_err());
        // A minute later every bucket is full again; the next sweep drops them all.
        let t2 = t1 + SWEEP_EVERY;
        assert!(l.check_at("UNEW", Tier::Tier3, t2).is_ok());
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn tiers_follow_slack() {
        assert_eq!(tier("api.test"), None);
        assert_eq!(tier("internal.flannel.snapshot"), None);
        assert_eq!(tier("chat.postMessage"), Some(Tier::Post));
        assert_eq!(tier("rtm.connect"), Some(Tier::Tier1));
        assert_eq!(tier("conversations.list"), Some(Tier::Tier2));
        assert_eq!(tier("conversations.history"), Some(Tier::Tier3));
        assert_eq!(tier("users.info"), Some(Tier::Tier4));
        assert_eq!(tier("auth.test"), Some(Tier::Tier4));
        assert_eq!(tier("rtm.start"), Some(Tier::Tier1));
        assert_eq!(tier("conversations.kick"), Some(Tier::Tier3));
        assert_eq!(tier("team.info"), Some(Tier::Tier3));
        assert_eq!(tier("chat.getPermalink"), Some(Tier::Tier4));
        assert_eq!(tier("chat.postEphemeral"), Some(Tier::Tier4));
    }
}
