//! A seeded in-memory network: datagrams arrive after a delay with jitter (so they reorder),
//! and large ones (media, not signaling) may be lost. The same seed gives the same run.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
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
            loss_min_len: 500,
            lossy: |_| true,
        }
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
    /// Datagrams lost so far.
    pub lost: u64,
}

impl Net {
    pub fn new(config: NetConfig) -> Self {
        Self {
            config,
            rng: StdRng::seed_from_u64(config.seed),
            in_flight: BinaryHeap::new(),
            sent: 0,
            lost: 0,
        }
    }

    /// Change loss from now on (e.g. a quiet period to let repairs settle).
    pub fn set_loss(&mut self, loss: f64) {
        self.config.loss = loss;
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
        if affected && lose && datagram.contents.len() >= self.config.loss_min_len {
            self.lost += 1;
            return;
        }
        let jitter = if affected { jitter } else { Duration::ZERO };
        self.in_flight.push(Reverse(InFlight {
            at: now + self.config.delay + jitter,
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
