//! A seeded in-memory network: datagrams arrive after a delay with jitter (so they reorder),
//! and large ones (media, not signaling) may be lost. A destination may sit behind a
//! bottleneck ([`Bottleneck`]): a link of fixed rate with a bounded queue in front of it. The
//! same seed gives the same run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the network behaves.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    pub seed: u64,
    /// One-way delay of every datagram.
    pub delay: Duration,
    /// Extra random delay, uniform in `0..=jitter` (reorders datagrams closer than that).
    pub jitter: Duration,
    /// Probability that a datagram of at least `loss_min_len` bytes is lost.
    pub loss: f64,
    /// Besides: lose exactly every `loss_every`-th datagram that could be lost (0: none), for
    /// a loss rate that does not fluctuate from one second to the next.
    pub loss_every: u64,
    /// Smaller datagrams (audio, RTCP, STUN, most of the handshake) are never lost, so that
    /// what is lost is exactly what NACK and RTX are meant to repair.
    pub loss_min_len: usize,
    /// Which datagrams may be lost or delayed by jitter at all (e.g. only those a node
    /// sends); the others take exactly `delay`.
    pub lossy: fn(&Datagram) -> bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            delay: Duration::from_millis(5),
            jitter: Duration::ZERO,
            loss: 0.0,
            loss_every: 0,
            loss_min_len: 500,
            lossy: |_| true,
        }
    }
}

/// A link of `bits_per_second` in front of one destination, with a FIFO queue that holds at
/// most `max_queue` of its traffic: a datagram waits until the link has sent everything queued
/// before it, and one that would wait longer than `max_queue` is dropped (tail drop), as a
/// home router's uplink or a congested access link does. No randomness: the same datagrams
/// give the same delays and drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bottleneck {
    pub bits_per_second: u64,
    pub max_queue: Duration,
}

/// A bottleneck's state: when its link finishes sending what is queued.
#[derive(Debug, Clone, Copy)]
struct Link {
    limit: Bottleneck,
    busy_until: Option<Instant>,
}

impl Link {
    /// When a datagram of `len` bytes offered at `now` has crossed the link, or `None` when
    /// the queue is full and it is dropped.
    fn pass(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let start = self.busy_until.map_or(now, |busy| busy.max(now));
        if start.saturating_duration_since(now) > self.limit.max_queue {
            return None;
        }
        let nanos =
            (len as u128 * 8 * 1_000_000_000) / u128::from(self.limit.bits_per_second.max(1));
        let done = start + Duration::from_nanos(nanos as u64);
        self.busy_until = Some(done);
        Some(done)
    }
}

/// A datagram in flight.
#[derive(Debug)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub contents: Vec<u8>,
}

#[derive(Debug)]
struct InFlight {
    at: Instant,
    order: u64,
    datagram: Datagram,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// The network.
#[derive(Debug)]
pub struct Net {
    config: NetConfig,
    rng: StdRng,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    sent: u64,
    /// Datagrams so far that could be lost (for `loss_every`).
    losable: u64,
    /// Bottlenecks by destination.
    links: HashMap<SocketAddr, Link>,
    /// Datagrams lost so far (at random or in a full bottleneck queue).
    pub lost: u64,
    /// Of those, the ones a full bottleneck queue dropped.
    pub queue_drops: u64,
}

impl Net {
    pub fn new(config: NetConfig) -> Self {
        Self {
            config,
            rng: StdRng::seed_from_u64(config.seed),
            in_flight: BinaryHeap::new(),
            sent: 0,
            losable: 0,
            links: HashMap::new(),
            lost: 0,
            queue_drops: 0,
        }
    }

    /// Put datagrams to `destination` behind `limit` from now on, or lift the limit (`None`;
    /// what is queued still drains at the old rate, as its arrival times are fixed).
    pub fn set_bottleneck(&mut self, destination: SocketAddr, limit: Option<Bottleneck>) {
        match limit {
            Some(limit) => {
                let link = self.links.entry(destination).or_insert(Link {
                    limit,
                    busy_until: None,
                });
                link.limit = limit;
            }
            None => {
                self.links.remove(&destination);
            }
        }
    }

    /// Change loss from now on (e.g. a quiet period to let repairs settle).
    pub fn set_loss(&mut self, loss: f64) {
        self.config.loss = loss;
    }

    /// Change the periodic loss from now on (0: none).
    pub fn set_loss_every(&mut self, every: u64) {
        self.config.loss_every = every;
    }

    /// Send a datagram at `now`.
    pub fn send(&mut self, now: Instant, datagram: Datagram) {
        self.sent += 1;
        // One draw each per datagram, whatever it is, so that a run's losses depend on the
        // datagrams' order only.
        let lose = self.rng.random_bool(self.config.loss.clamp(0.0, 1.0));
        let jitter = Duration::from_micros(
            self.rng
                .random_range(0..=self.config.jitter.as_micros() as u64),
        );
        let affected = (self.config.lossy)(&datagram);
        if affected && datagram.contents.len() >= self.config.loss_min_len {
            self.losable += 1;
            let every = self.config.loss_every;
            if lose || (every > 0 && self.losable % every == 0) {
                self.lost += 1;
                return;
            }
        }
        let jitter = if affected { jitter } else { Duration::ZERO };
        let sent = match self.links.get_mut(&datagram.to) {
            Some(link) => match link.pass(now, datagram.contents.len()) {
                Some(done) => done,
                None => {
                    self.lost += 1;
                    self.queue_drops += 1;
                    return;
                }
            },
            None => now,
        };
        self.in_flight.push(Reverse(InFlight {
            at: sent + self.config.delay + jitter,
            order: self.sent,
            datagram,
        }));
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse(f)| f.at)
    }

    /// The next datagram due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        if self.next_arrival()? > now {
            return None;
        }
        self.in_flight.pop().map(|Reverse(f)| f.datagram)
    }
}
