//! Rate limits on what clients send: a token bucket driven by the caller's clock (simulated
//! time in the engine, `Instant::now()` in control), so tests decide what time it is.

use std::time::Instant;

/// A token bucket: `rate` tokens per second, at most `burst` at once.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: now,
        }
    }

    /// Take one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Tests start from a real instant; only differences matter.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10, 3, t0);
        assert!((0..3).all(|_| bucket.take(t0)));
        assert!(!bucket.take(t0));
        assert!(bucket.take(t0 + Duration::from_millis(100)));
        assert!(!bucket.take(t0 + Duration::from_millis(100)));
        assert!((0..3).all(|_| bucket.take(t0 + Duration::from_secs(10))));
        assert!(!bucket.take(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10, 1, t0 + Duration::from_secs(1));
        assert!(bucket.take(t0 + Duration::from_secs(1)));
        assert!(!bucket.take(t0));
        assert!(!bucket.take(t0 + Duration::from_secs(1)));
    }
}
