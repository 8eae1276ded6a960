//! The per-client token buckets of signaling POSTs (`POST /whip/..`, `/whep/..`,
//! `/dev/token`): whether a client may send another request now, and if not, when.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// How often buckets of clients that have gone quiet are dropped. Between two sweeps the
/// table holds at most the clients seen in that time.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(10);

/// A request over the limit: try again after this many whole seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

/// Token buckets keyed by client (see [`client_key`]): `rate` requests a second on average,
/// `burst` at once.
pub struct SignalingLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    rate: NonZeroU32,
    burst: NonZeroU32,
}

impl<C: Clock> fmt::Debug for SignalingLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalingLimiter")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("clients", &self.limiter.len())
            .finish()
    }
}

impl SignalingLimiter {
    /// The limiter for `limits.signaling_rate_per_sec` / `limits.signaling_burst`, or `None`
    /// when the rate is 0 (limiting off). A burst of 0 with a rate is taken as 1 (the
    /// configuration's validation refuses it before this).
    pub fn new(rate_per_sec: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(rate_per_sec)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Some(Self::with_clock(rate, burst, DefaultClock::default()))
    }
}

impl<C: Clock> SignalingLimiter<C> {
    pub fn with_clock(rate: NonZeroU32, burst: NonZeroU32, clock: C) -> Self {
        let quota = Quota::per_second(rate).allow_burst(burst);
        Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock),
            rate,
            burst,
        }
    }

    /// Take one token from `ip`'s bucket, or say when the next one will be there.
    pub fn check(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        self.limiter
            .check_key(&client_key(ip))
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                // Whole seconds, rounded up: a client that waits that long gets a token.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                RetryAfter(secs.max(1))
            })
    }

    /// Drop the buckets of clients whose buckets have refilled (they are as good as new), so
    /// that memory follows the clients of the last [`SWEEP_PERIOD`], not all clients ever seen.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Clients with a bucket.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }
}

/// The bucket a client address draws from: an IPv4 address (also written IPv4-mapped in
/// IPv6), or an IPv6 address's /64 — one subscriber's usual allocation, so that a client cannot
/// get fresh buckets by rotating addresses inside it.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    /// A burst passes, the next request is refused with a whole-second Retry-After, and the
    /// bucket refills at the configured rate; another client is unaffected throughout.
    #[test]
    fn burst_then_refusal_then_refill() {
        let clock = FakeRelativeClock::default();
        let limiter = SignalingLimiter::with_clock(nz(2), nz(5), clock.clone());
        let a = ip("192.0.2.1");
        for i in 0..5 {
            assert_eq!(limiter.check(a), Ok(()), "request {i} of the burst");
        }
        assert_eq!(
            limiter.check(a),
            Err(RetryAfter(1)),
            "0.5 s to the next token"
        );
        assert_eq!(limiter.check(ip("192.0.2.2")), Ok(()), "another client");

        clock.advance(Duration::from_millis(499));
        assert_eq!(
            limiter.check(a),
            Err(RetryAfter(1)),
            "1 ms left rounds up to 1 s"
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(limiter.check(a), Ok(()), "one token after 0.5 s");
        assert!(limiter.check(a).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        // 1 request/s, burst 3: once the burst is spent the next token is under 1 s away.
        let clock = FakeRelativeClock::default();
        let limiter = SignalingLimiter::with_clock(nz(1), nz(3), clock.clone());
        let a = ip("198.51.100.7");
        for _ in 0..3 {
            assert_eq!(limiter.check(a), Ok(()));
        }
        clock.advance(Duration::from_millis(100));
        assert_eq!(limiter.check(a), Err(RetryAfter(1)), "0.9 s → 1 s");
        clock.advance(Duration::from_millis(900));
        assert_eq!(limiter.check(a), Ok(()));
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::"),
            "the /64"
        );
        assert_eq!(
            client_key(ip("2001:db8:1:2:bbbb::2")),
            client_key(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:3::1")),
            client_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("192.0.2.1")), ip("192.0.2.1"));

        let limiter = SignalingLimiter::with_clock(nz(1), nz(1), FakeRelativeClock::default());
        assert_eq!(limiter.check(ip("2001:db8::1")), Ok(()));
        assert!(
            limiter.check(ip("2001:db8::2")).is_err(),
            "same /64, same bucket"
        );
    }

    /// Sweeping drops the buckets of clients that have been quiet long enough to refill, and
    /// keeps those still in debt (memory stays bounded, limits stay enforced).
    #[test]
    fn sweeping_forgets_refilled_clients_only() {
        let clock = FakeRelativeClock::default();
        let limiter = SignalingLimiter::with_clock(nz(1), nz(2), clock.clone());
        for i in 0..100u8 {
            assert_eq!(limiter.check(IpAddr::from([10, 0, 0, i])), Ok(()));
        }
        clock.advance(Duration::from_millis(2500));
        let busy = ip("10.0.1.1");
        for _ in 0..2 {
            assert_eq!(limiter.check(busy), Ok(()));
        }
        assert_eq!(limiter.clients(), 101);
        limiter.sweep();
        assert_eq!(
            limiter.clients(),
            1,
            "only the client still refilling is kept"
        );
        assert!(
            limiter.check(busy).is_err(),
            "and its bucket is still empty"
        );
        assert_eq!(
            limiter.check(ip("10.0.0.1")),
            Ok(()),
            "a forgotten client starts afresh"
        );
    }

    #[test]
    fn a_zero_rate_switches_limiting_off() {
        assert!(SignalingLimiter::new(0, 50).is_none());
        assert!(SignalingLimiter::new(20, 50).is_some());
    }
}
