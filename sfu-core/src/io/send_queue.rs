//! Datagrams a worker has handed to its backend that the kernel has not taken yet. Both backends
//! take attempts from the head of this one bounded FIFO and report what the kernel did with
//! each datagram; this decides what is retried, what is dropped and counted, and when to wait
//! for the socket to become writable. No system calls here.
//!
//! The rule it keeps: **the kernel sees datagrams in the order the worker produced them.** A
//! forwarding SFU must never reorder a stream it received in order, so a datagram the kernel
//! refused for lack of send buffer goes back to the head and waits for `POLLOUT` — unless a
//! later one of the same attempt already went out, in which case retrying it would overtake, so
//! it is dropped and counted instead.
//!
//! With UDP GSO one send carries a run of datagrams ([`super::gso`]); the kernel takes or
//! refuses such a send as a whole, and the backend reports that one result for each datagram
//! of the run, so the rule above and the counters stay per datagram.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::gso::{self, RunLimits};

/// One datagram waiting for the kernel.
#[derive(Debug)]
pub struct Datagram {
    pub destination: SocketAddr,
    pub bytes: Vec<u8>,
}

/// What became of the datagrams handed to a backend.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendCounters {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Bytes of those datagrams.
    pub sent_bytes: u64,
    /// Refused by the kernel with an error other than "would block" (`ENOBUFS`,
    /// `EHOSTUNREACH`, `EPERM` from a firewall, ...): dropped.
    pub failed: u64,
    /// Dropped because the socket's send buffer stayed full: the queue was at capacity, or the
    /// datagram could not be retried without overtaking a later one.
    pub buffer_full: u64,
}

/// A bounded FIFO of datagrams, drained from the head in order.
#[derive(Debug)]
pub struct SendQueue {
    waiting: VecDeque<Datagram>,
    /// Taken by [`take`](Self::take) and not yet [`settle`](Self::settle)d.
    in_flight: usize,
    /// Most datagrams waiting plus in flight; past it, [`push`](Self::push) drops.
    capacity: usize,
    /// The kernel said "would block": nothing is attempted until [`writable`](Self::writable).
    blocked: bool,
    counters: SendCounters,
}

/// Whether a [`settle`](SendQueue::settle) moved the queue forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Datagrams left the queue (sent or dropped), or the queue now waits for `POLLOUT`.
    Made,
    /// Every datagram of the attempt is back at the head, untried (e.g. `EINTR`).
    None,
}

impl SendQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            waiting: VecDeque::with_capacity(capacity.min(1024)),
            in_flight: 0,
            capacity,
            blocked: false,
            counters: SendCounters::default(),
        }
    }

    /// Queue a datagram behind the others; at capacity it is dropped and counted.
    pub fn push(&mut self, destination: SocketAddr, bytes: Vec<u8>) {
        if self.waiting.len() + self.in_flight >= self.capacity {
            self.counters.buffer_full += 1;
            return;
        }
        self.waiting.push_back(Datagram { destination, bytes });
    }

    /// Datagrams waiting (not counting an attempt in flight).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The socket's send buffer is full; waiting for `POLLOUT`.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// There is something to attempt now.
    pub fn has_work(&self) -> bool {
        !self.blocked && !self.waiting.is_empty()
    }

    /// Move up to `max` datagrams from the head into `attempt` (cleared first), in order. Takes
    /// nothing while blocked. Each must come back through [`settle`](Self::settle).
    pub fn take(&mut self, max: usize, attempt: &mut Vec<Datagram>) {
        attempt.clear();
        if self.blocked {
            return;
        }
        let n = max.min(self.waiting.len());
        attempt.extend(self.waiting.drain(..n));
        self.in_flight += n;
    }

    /// Move from the head into `attempt` (cleared first) the datagrams of up to `max_sends`
    /// sends, in order, and the length of each send's run into `runs` (cleared first): runs
    /// as [`gso::run_len`] forms them within `limits`, so `runs` sums to `attempt.len()`. Takes
    /// nothing while blocked. Each datagram must come back through [`settle`](Self::settle).
    pub fn take_runs(
        &mut self,
        max_sends: usize,
        limits: RunLimits,
        attempt: &mut Vec<Datagram>,
        runs: &mut Vec<usize>,
    ) {
        attempt.clear();
        runs.clear();
        if self.blocked {
            return;
        }
        let mut n = 0;
        while runs.len() < max_sends && n < self.waiting.len() {
            let run = gso::run_len(
                self.waiting
                    .range(n..)
                    .map(|d| (d.destination, d.bytes.len())),
                limits,
            );
            runs.push(run);
            n += run;
        }
        attempt.extend(self.waiting.drain(..n));
        self.in_flight += n;
    }

    /// Account for an attempt: `results[i]` is what the kernel did with `attempt[i]`, in the
    /// kernel's convention — the byte count if sent, `-errno` if not. A datagram with no result
    /// (the results are short) or with `-ECANCELED` was never tried. `attempt` is left empty.
    ///
    /// Sent datagrams are counted and freed. A datagram that was not sent because the buffer
    /// was full (`-EAGAIN`) or that was never tried goes back to the head, in order, and the
    /// queue blocks if the buffer was full — provided no later datagram of the attempt was
    /// sent; if one was, retrying would reorder, so it is dropped and counted instead. Any
    /// other error drops the datagram and counts it.
    pub fn settle(&mut self, attempt: &mut Vec<Datagram>, results: &[i32]) -> Progress {
        let result = |i: usize| results.get(i).copied().unwrap_or(-libc::ECANCELED);
        let last_sent = (0..attempt.len()).rev().find(|&i| result(i) >= 0);
        self.in_flight -= attempt.len();
        let before = (self.counters, self.blocked);
        // Back to the head in reverse, so the first retried ends up first.
        for (i, datagram) in attempt.drain(..).enumerate().rev() {
            let overtaken = last_sent.is_some_and(|last| i < last);
            match result(i) {
                len if len >= 0 => {
                    self.counters.sent += 1;
                    self.counters.sent_bytes += datagram.bytes.len() as u64;
                }
                e if e == -libc::EAGAIN || e == -libc::ECANCELED => {
                    if overtaken {
                        self.counters.buffer_full += 1;
                    } else {
                        self.blocked |= e == -libc::EAGAIN;
                        self.waiting.push_front(datagram);
                    }
                }
                _ => self.counters.failed += 1,
            }
        }
        if (self.counters, self.blocked) == before {
            Progress::None
        } else {
            Progress::Made
        }
    }

    /// The socket reported `POLLOUT`: attempts may resume.
    pub fn writable(&mut self) {
        self.blocked = false;
    }

    pub fn counters(&self) -> SendCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EAGAIN: i32 = -libc::EAGAIN;
    const CANCELED: i32 = -libc::ECANCELED;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A datagram carrying its per-destination sequence number.
    fn tagged(seq: u32) -> Vec<u8> {
        seq.to_be_bytes().to_vec()
    }

    fn seq_of(d: &Datagram) -> u32 {
        u32::from_be_bytes(d.bytes[..4].try_into().expect("4 bytes"))
    }

    fn queue_of(n: u32) -> SendQueue {
        let mut q = SendQueue::new(1000);
        for i in 0..n {
            q.push(addr(1), tagged(i));
        }
        q
    }

    fn seqs(q: &SendQueue) -> Vec<u32> {
        q.waiting.iter().map(seq_of).collect()
    }

    #[test]
    fn a_sent_prefix_leaves_the_rest_in_order() {
        let mut q = queue_of(6);
        let mut attempt = Vec::new();
        q.take(4, &mut attempt);
        // sendmmsg sent two, then stopped without an error for the third.
        assert_eq!(q.settle(&mut attempt, &[4, 4]), Progress::Made);
        assert!(attempt.is_empty());
        assert_eq!(seqs(&q), [2, 3, 4, 5]);
        assert_eq!(q.counters().sent, 2);
        assert_eq!(q.counters().sent_bytes, 8);
        assert!(q.has_work());
    }

    #[test]
    fn a_full_buffer_blocks_and_retries_from_the_same_datagram() {
        let mut q = queue_of(5);
        let mut attempt = Vec::new();
        q.take(5, &mut attempt);
        // A linked chain: two sent, the third would block, the rest cancelled.
        q.settle(&mut attempt, &[4, 4, EAGAIN, CANCELED, CANCELED]);
        assert!(q.is_blocked());
        assert!(!q.has_work());
        q.take(5, &mut attempt);
        assert!(attempt.is_empty(), "nothing is attempted while blocked");
        q.writable();
        q.take(5, &mut attempt);
        assert_eq!(attempt.iter().map(seq_of).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(
            q.counters(),
            SendCounters {
                sent: 2,
                sent_bytes: 8,
                ..SendCounters::default()
            }
        );
    }

    #[test]
    fn an_error_drops_one_datagram_and_counts_it() {
        let mut q = queue_of(4);
        let mut attempt = Vec::new();
        q.take(4, &mut attempt);
        q.settle(&mut attempt, &[4, -libc::EHOSTUNREACH, CANCELED, CANCELED]);
        assert!(!q.is_blocked());
        assert_eq!(seqs(&q), [2, 3]);
        assert_eq!(q.counters().failed, 1);
    }

    #[test]
    fn a_refused_datagram_that_was_overtaken_is_dropped_not_retried() {
        let mut q = queue_of(5);
        let mut attempt = Vec::new();
        q.take(5, &mut attempt);
        // Unlinked sends: space freed between the second and the fourth.
        q.settle(&mut attempt, &[4, EAGAIN, EAGAIN, 4, EAGAIN]);
        assert_eq!(seqs(&q), [4], "only what follows the last sent is retried");
        assert!(q.is_blocked());
        assert_eq!(q.counters().buffer_full, 2);
        assert_eq!(q.counters().sent, 2);
    }

    #[test]
    fn an_untried_attempt_makes_no_progress() {
        let mut q = queue_of(3);
        let mut attempt = Vec::new();
        q.take(3, &mut attempt);
        assert_eq!(q.settle(&mut attempt, &[]), Progress::None);
        assert_eq!(seqs(&q), [0, 1, 2]);
        assert!(!q.is_blocked());
    }

    #[test]
    fn runs_are_taken_whole_and_in_order() {
        let mut q = SendQueue::new(1000);
        for i in 0..5 {
            q.push(addr(1), tagged(i));
        }
        q.push(addr(2), tagged(0));
        for i in 5..8 {
            q.push(addr(1), tagged(i));
        }
        let (mut attempt, mut runs) = (Vec::new(), Vec::new());
        q.take_runs(2, RunLimits::GSO, &mut attempt, &mut runs);
        assert_eq!(runs, [5, 1], "two sends: five to port 1, one to port 2");
        assert_eq!(
            attempt.iter().map(seq_of).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 0]
        );
        assert_eq!(seqs(&q), [5, 6, 7]);
        q.settle(&mut attempt, &[4; 6]);
        q.take_runs(8, RunLimits::SINGLE, &mut attempt, &mut runs);
        assert_eq!(
            runs,
            [1, 1, 1],
            "without GSO every datagram is its own send"
        );
    }

    #[test]
    fn a_refused_run_goes_back_whole() {
        let mut q = queue_of(6);
        let (mut attempt, mut runs) = (Vec::new(), Vec::new());
        q.take_runs(4, RunLimits::GSO, &mut attempt, &mut runs);
        assert_eq!(runs, [6]);
        // The kernel refused the one GSO send for lack of buffer: all six wait, in order.
        q.settle(&mut attempt, &[EAGAIN; 6]);
        assert!(q.is_blocked());
        assert_eq!(seqs(&q), [0, 1, 2, 3, 4, 5]);
        q.writable();
        q.take_runs(4, RunLimits::GSO, &mut attempt, &mut runs);
        q.settle(&mut attempt, &[-libc::ENOBUFS; 6]);
        assert_eq!(
            q.counters().failed,
            6,
            "a failed GSO send drops all its datagrams"
        );
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn capacity_counts_datagrams_in_flight() {
        let mut q = SendQueue::new(4);
        for i in 0..3 {
            q.push(addr(1), tagged(i));
        }
        let mut attempt = Vec::new();
        q.take(3, &mut attempt);
        q.push(addr(1), tagged(3));
        q.push(addr(1), tagged(4));
        assert_eq!(
            q.counters().buffer_full,
            1,
            "3 in flight + 1 waiting = capacity"
        );
        q.settle(&mut attempt, &[EAGAIN]);
        assert_eq!(seqs(&q), [0, 1, 2, 3], "retried datagrams always fit back");
    }

    /// A socket with a send buffer of `capacity` datagrams that the "NIC" drains at random.
    /// `linked`: an attempt stops at the first refusal (io_uring chain, sendmmsg); otherwise
    /// every datagram of an attempt is tried on its own (unlinked io_uring sends) and the
    /// buffer may drain between two of them.
    struct FakeSocket {
        capacity: usize,
        queued: usize,
        linked: bool,
        rng: u64,
        wire: Vec<(SocketAddr, u32)>,
    }

    impl FakeSocket {
        fn random(&mut self, below: u64) -> u64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % below
        }

        /// The NIC sends up to `max` queued datagrams.
        fn drain_some(&mut self, max: usize) {
            let n = self.random(max as u64 + 1) as usize;
            self.queued -= n.min(self.queued);
        }

        /// One send per run (a GSO send takes or refuses all its datagrams); the result of a
        /// send is reported for each of its datagrams, as the backends do.
        fn attempt(&mut self, attempt: &[Datagram], runs: &[usize], results: &mut Vec<i32>) {
            results.clear();
            let mut refused = false;
            let mut start = 0;
            for &run in runs {
                let sends = &attempt[start..start + run];
                start += run;
                if refused && self.linked {
                    results.extend(sends.iter().map(|_| CANCELED));
                    continue;
                }
                if !self.linked && self.random(16) == 0 {
                    self.drain_some(self.capacity / 4);
                }
                if self.random(50) == 0 {
                    results.extend(sends.iter().map(|_| -libc::ENOBUFS));
                    refused = true;
                } else if self.queued + run <= self.capacity {
                    self.queued += run;
                    for d in sends {
                        self.wire.push((d.destination, seq_of(d)));
                        results.push(d.bytes.len() as i32);
                    }
                } else {
                    results.extend(sends.iter().map(|_| EAGAIN));
                    refused = true;
                }
            }
            assert_eq!(start, attempt.len(), "runs cover the attempt");
        }
    }

    /// The property the module exists for: with a send buffer that keeps filling up, every
    /// destination sees its datagrams in order, and every datagram pushed is either on the
    /// wire or counted as dropped.
    #[test]
    fn a_full_send_buffer_never_reorders_and_never_loses_silently() {
        for (linked, limits) in [
            (true, RunLimits::SINGLE),
            (false, RunLimits::SINGLE),
            (true, RunLimits::GSO),
            (false, RunLimits::GSO),
        ] {
            for seed in 1..=20u64 {
                let mut socket = FakeSocket {
                    capacity: 40,
                    queued: 0,
                    linked,
                    rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    wire: Vec::new(),
                };
                let mut q = SendQueue::new(200);
                let mut next_seq = [0u32; 5];
                let mut pushed = 0u64;
                let mut refusals = 0u64;
                let mut gso_sends = 0u64;
                let (mut attempt, mut runs, mut results) = (Vec::new(), Vec::new(), Vec::new());
                for _pass in 0..500 {
                    // A pass: bursts of datagrams to a few destinations...
                    for _ in 0..socket.random(10) {
                        let dest = socket.random(5) as usize;
                        for _ in 0..1 + socket.random(8) {
                            q.push(addr(dest as u16), tagged(next_seq[dest]));
                            next_seq[dest] += 1;
                            pushed += 1;
                        }
                    }
                    // ...flushed in attempts until the queue is empty or blocked...
                    while q.has_work() {
                        let max = 1 + socket.random(32) as usize;
                        q.take_runs(max, limits, &mut attempt, &mut runs);
                        socket.attempt(&attempt, &runs, &mut results);
                        refusals += u64::from(results.contains(&EAGAIN));
                        gso_sends += runs.iter().filter(|&&run| run > 1).count() as u64;
                        if q.settle(&mut attempt, &results) == Progress::None {
                            break;
                        }
                    }
                    // ...and while the worker waits, the NIC drains and POLLOUT may fire.
                    socket.drain_some(socket.capacity);
                    if q.is_blocked() && socket.queued < socket.capacity / 2 {
                        q.writable();
                    }
                }
                let mut newest: [Option<u32>; 5] = [None; 5];
                for (dest, seq) in &socket.wire {
                    let slot = &mut newest[dest.port() as usize];
                    assert!(
                        slot.is_none_or(|n| *seq > n),
                        "seed {seed} linked {linked} {limits:?}: {seq} after {slot:?} to {dest}"
                    );
                    *slot = Some(*seq);
                }
                let c = q.counters();
                assert_eq!(c.sent, socket.wire.len() as u64);
                assert_eq!(
                    c.sent + c.failed + c.buffer_full + q.waiting() as u64,
                    pushed,
                    "seed {seed} linked {linked} {limits:?}: {c:?}"
                );
                assert!(refusals > 20, "seed {seed}: the buffer filled up often");
                if limits == RunLimits::GSO {
                    assert!(
                        gso_sends > 100,
                        "seed {seed}: runs were formed ({gso_sends})"
                    );
                }
            }
        }
    }
}
