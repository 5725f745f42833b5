//! The pace at which a gateway admits new sessions (`gateway.max_new_sessions_per_second`):
//! a token bucket holding one second's worth. When a gateway stops and its clients come here,
//! or a network blip drops every client at once, each new session costs a Web API call for
//! its channels, a Flannel fetch and subscriptions; admitting them at a bounded pace keeps
//! the sessions already here, and the Web API and Flannel behind, responsive. The rest are
//! told when to come back (503 `ratelimited` with `Retry-After`), as Slack's SDKs expect.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub struct Admission {
    /// New sessions a second; 0 admits every one.
    rate: f64,
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Admission {
    pub fn new(per_second: u32) -> Admission {
        let rate = f64::from(per_second);
        Admission {
            rate,
            state: Mutex::new(Bucket {
                tokens: rate,
                at: Instant::now(),
            }),
        }
    }

    /// Admits one new session at `now`, or says how long until one would be.
    pub fn admit(&self, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut b = self.state.lock();
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.rate);
        b.at = b.at.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

/// Seconds for `Retry-After`: whole, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_s_worth_then_the_rate() {
        let a = Admission::new(10);
        let t = Instant::now();
        for i in 0..10 {
            assert!(a.admit(t).is_ok(), "{i} of the first second's worth");
        }
        let wait = a.admit(t).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // A tenth of a second later, one more.
        let later = t + Duration::from_millis(100);
        assert!(a.admit(later).is_ok());
        assert!(a.admit(later).is_err());
        // Idle for long: no more than a second's worth saved up.
        let much_later = t + Duration::from_secs(60);
        for _ in 0..10 {
            assert!(a.admit(much_later).is_ok());
        }
        assert!(a.admit(much_later).is_err());
        // An earlier instant (another thread's) neither adds nor panics.
        assert!(a.admit(t).is_err());
    }

    #[test]
    fn zero_admits_everyone() {
        let a = Admission::new(0);
        let t = Instant::now();
        assert!((0..100_000).all(|_| a.admit(t).is_ok()));
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
