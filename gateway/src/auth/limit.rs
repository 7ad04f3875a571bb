//! Failed logins per client address: after [`FAILURES_MAX`] failures within [`WINDOW`], the
//! address is refused (`429`) for the rest of that window without any password being checked,
//! so guessing passwords costs the guesser time and the node no bcrypt work. Other addresses
//! are unaffected. At most [`ADDRESSES_MAX`] addresses are remembered; past that, windows that
//! have ended are dropped, then the oldest.
//!
//! Not for: limiting successful clients' request rate (the gateway serves its host and site).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Enough for a person who mistypes a password several times, or a client retrying with stale
/// credentials; far too few to guess a password.
pub const FAILURES_MAX: u32 = 10;

/// How long failures are counted from an address's first failure.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Addresses remembered at once: about 100 bytes each, so under a megabyte.
pub const ADDRESSES_MAX: usize = 8192;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

#[derive(Debug)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, Window>>,
    failures_max: u32,
    window: Duration,
    addresses_max: usize,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter::new(FAILURES_MAX, WINDOW, ADDRESSES_MAX)
    }
}

impl FailureLimiter {
    pub fn new(failures_max: u32, window: Duration, addresses_max: usize) -> FailureLimiter {
        FailureLimiter {
            windows: Mutex::new(HashMap::new()),
            failures_max,
            window,
            addresses_max: addresses_max.max(1),
        }
    }

    /// Whether `address` has used up its failures in the current window.
    pub fn is_limited(&self, address: IpAddr, now: Instant) -> bool {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows.get(&address).is_some_and(|window| {
            now.duration_since(window.start) < self.window && window.failures >= self.failures_max
        })
    }

    /// Counts a failed login from `address`.
    pub fn record_failure(&self, address: IpAddr, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if !windows.contains_key(&address) && windows.len() >= self.addresses_max {
            windows.retain(|_, window| now.duration_since(window.start) < self.window);
            if windows.len() >= self.addresses_max
                && let Some(oldest) = windows
                    .iter()
                    .min_by_key(|(_, window)| window.start)
                    .map(|(address, _)| *address)
            {
                windows.remove(&oldest);
            }
        }
        let window = windows.entry(address).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now.duration_since(window.start) >= self.window {
            *window = Window {
                start: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    pub fn addresses(&self) -> usize {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_keeps_failing_is_limited_and_others_are_not() {
        let limiter = FailureLimiter::default();
        let now = Instant::now();
        let guesser: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut limited_after = None;
        for attempt in 0..1000 {
            if limiter.is_limited(guesser, now) {
                limited_after.get_or_insert(attempt);
                continue;
            }
            limiter.record_failure(guesser, now);
        }
        assert_eq!(limited_after, Some(FAILURES_MAX as usize));
        assert!(!limiter.is_limited(other, now));
        limiter.record_failure(other, now);
        assert!(!limiter.is_limited(other, now));
        // The window ends.
        assert!(!limiter.is_limited(guesser, now + WINDOW));
        limiter.record_failure(guesser, now + WINDOW);
        assert!(!limiter.is_limited(guesser, now + WINDOW));
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_oldest() {
        let limiter = FailureLimiter::new(2, WINDOW, 100);
        let start = Instant::now();
        for i in 0..10_000u32 {
            let address = IpAddr::from(i.to_be_bytes());
            limiter.record_failure(address, start + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(limiter.addresses(), 100);
        // The newest are remembered.
        let newest = IpAddr::from(9_999u32.to_be_bytes());
        let now = start + Duration::from_secs(10);
        limiter.record_failure(newest, now);
        assert!(limiter.is_limited(newest, now));
    }
}
