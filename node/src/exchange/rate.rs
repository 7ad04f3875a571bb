//! Byte-rate limits (`--max-egress 20MiB/s`): a token bucket that async tasks wait on before
//! they move bytes to or from peers. Whether a chunk is worth queueing at all is the serving
//! policy's call (`shoal_protocol::serving`): [`RateLimiter::lock`] tells it how much egress is
//! queued ahead, and books the chunk only if the policy says send, under the same lock.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::values::ByteRate;

/// How much a bucket can hold, in seconds of its rate: short bursts pass at line speed, the
/// average stays at the rate.
const BURST_SECONDS: f64 = 0.1;

/// A token bucket shared by every task moving bytes in one direction.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(rate: ByteRate) -> RateLimiter {
        RateLimiter {
            rate: rate.0 as f64,
            state: Mutex::new(Bucket {
                tokens: 0.0,
                updated: Instant::now(),
            }),
        }
    }

    /// Waits until `bytes` may pass. Cancel-safe: the bytes are booked when the call starts, so
    /// a cancelled wait still counts against the rate, which errs on the side of the limit.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.lock().book(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The bucket as it is now, held until the [`Booking`] is booked or dropped, so that what
    /// [`Booking::ahead`] said still holds when the bytes are booked. Hold it across no
    /// `.await`.
    pub fn lock(&self) -> Booking<'_> {
        let bucket = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let burst = self.rate * BURST_SECONDS;
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        let available = (bucket.tokens + elapsed * self.rate).min(burst);
        Booking {
            rate: self.rate,
            bucket,
            now,
            available,
        }
    }
}

/// A locked bucket: see [`RateLimiter::lock`]. Dropped without [`Booking::book`], it books
/// nothing.
#[derive(Debug)]
pub struct Booking<'a> {
    rate: f64,
    bucket: MutexGuard<'a, Bucket>,
    now: Instant,
    available: f64,
}

impl Booking<'_> {
    /// How long the bytes booked earlier take to leave: the wait bytes booked now would have
    /// before their first byte goes. Their own time on the link is not in it.
    pub fn ahead(&self) -> Duration {
        Duration::from_secs_f64((-self.available).max(0.0) / self.rate)
    }

    /// Books `bytes`; returns how long to wait before they may pass.
    pub fn book(mut self, bytes: u64) -> Duration {
        let after = self.available - bytes as f64;
        self.bucket.tokens = after;
        self.bucket.updated = self.now;
        if after >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-after / self.rate)
        }
    }
}

/// An optional limiter: no limit configured means no waiting.
pub async fn acquire(limiter: Option<&RateLimiter>, bytes: u64) {
    if let Some(limiter) = limiter {
        limiter.acquire(bytes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Books `bytes` and waits for them when at most `ahead_max` is queued ahead, as the
    /// serving policy's egress rule does; `false`, booking nothing, otherwise.
    async fn acquire_behind(limiter: &RateLimiter, bytes: u64, ahead_max: Duration) -> bool {
        let wait = {
            let booking = limiter.lock();
            if booking.ahead() > ahead_max {
                return false;
            }
            booking.book(bytes)
        };
        tokio::time::sleep(wait).await;
        true
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_backlog_is_refused_without_booking() {
        let limiter = std::sync::Arc::new(RateLimiter::new(ByteRate(1_000_000)));
        let first = limiter.clone();
        // 900 kB booked at once: it leaves after 0.9 s.
        let queued = tokio::spawn(async move {
            acquire_behind(&first, 900_000, Duration::from_millis(500)).await
        });
        tokio::task::yield_now().await;
        // 0.9 s of it is ahead of anything else: refused, and nothing is booked...
        let start = Instant::now();
        let ahead_max = Duration::from_millis(500);
        assert!(!acquire_behind(&limiter, 50_000, ahead_max).await);
        // ...so once 0.4 s is left ahead, 600 kB pass: after 0.4 s + their own 0.6 s.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(acquire_behind(&limiter, 600_000, ahead_max).await);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1490) && took <= Duration::from_millis(1510),
            "{took:?}"
        );
        assert!(queued.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_link_takes_bytes_that_outlast_the_backlog() {
        // 1 MB on a 100 kB/s link is 10 s of work, far beyond 250 ms: still sent...
        let limiter = std::sync::Arc::new(RateLimiter::new(ByteRate(100_000)));
        let first = limiter.clone();
        let start = Instant::now();
        let sent = tokio::spawn(async move {
            acquire_behind(&first, 1_000_000, Duration::from_millis(250)).await
        });
        tokio::task::yield_now().await;
        // ...and nothing more right behind it.
        assert!(!acquire_behind(&limiter, 1_000, Duration::from_millis(250)).await);
        assert!(sent.await.unwrap());
        assert!(start.elapsed() >= Duration::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn the_average_rate_is_held() {
        let limiter = RateLimiter::new(ByteRate(1_000_000));
        let start = Instant::now();
        for _ in 0..50 {
            limiter.acquire(100_000).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        // 5 MB at 1 MB/s: about 5 s (virtual time), less the initial burst allowance.
        assert!((4.8..=5.1).contains(&elapsed), "{elapsed}");
    }
}
