//! Per-worker counters. Each worker writes its own block with relaxed atomics (single writer,
//! no contention); control reads them for `/metrics`. Nothing here is on a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sfu_proto::{FORWARD_DELAY_BUCKETS_US, WorkerStats};

/// Why a datagram or a forwarded packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not STUN, DTLS, RTP or RTCP, or too short to be any of them.
    Malformed,
    /// Not STUN, from an address no session knows.
    UnknownSource,
    /// STUN whose USERNAME names no session of this worker.
    UnknownUfrag,
    /// The session refused it (bad SRTP auth, DTLS error, unexpected SSRC, ...).
    SessionRejected,
    /// A cross-worker ring was full.
    RingFull,
    /// The subscriber negotiated no payload type for the packet's codec.
    CodecMismatch,
    /// The kernel refused to send a datagram (`ENOBUFS`, unreachable, firewall, ...).
    SendFailed,
    /// A datagram could not be sent because the socket's send buffer stayed full.
    SendBufferFull,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::Malformed,
        DropReason::UnknownSource,
        DropReason::UnknownUfrag,
        DropReason::SessionRejected,
        DropReason::RingFull,
        DropReason::CodecMismatch,
        DropReason::SendFailed,
        DropReason::SendBufferFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownSource => "unknown_source",
            DropReason::UnknownUfrag => "unknown_ufrag",
            DropReason::SessionRejected => "session_rejected",
            DropReason::RingFull => "ring_full",
            DropReason::CodecMismatch => "codec_mismatch",
            DropReason::SendFailed => "send_failed",
            DropReason::SendBufferFull => "send_buffer_full",
        }
    }
}

/// RTCP feedback counts, as str0m's stats report them: a NACK is one generic-NACK feedback
/// message (RFC 4585), which may name several packets; a FIR is one FIR entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedbackCounts {
    /// NACKs received from subscribers.
    pub nacks_received: u64,
    /// PLIs received from subscribers.
    pub plis_received: u64,
    /// FIRs received from subscribers.
    pub firs_received: u64,
    /// NACKs sent to publishers.
    pub nacks_sent: u64,
    /// Packets resent to subscribers in answer to their NACKs (padding excluded).
    pub retransmissions: u64,
}

impl std::ops::AddAssign for FeedbackCounts {
    fn add_assign(&mut self, other: Self) {
        self.nacks_received += other.nacks_received;
        self.plis_received += other.plis_received;
        self.firs_received += other.firs_received;
        self.nacks_sent += other.nacks_sent;
        self.retransmissions += other.retransmissions;
    }
}

/// One worker's counters.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    pub publish_sessions: AtomicU64,
    /// Tracks published by this worker's sessions.
    pub published_tracks: AtomicU64,
    pub subscribe_sessions: AtomicU64,
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub gso_sends: AtomicU64,
    pub gso_datagrams: AtomicU64,
    pub rtp_forwarded: AtomicU64,
    pub keyframe_requests: AtomicU64,
    pub nacks_received: AtomicU64,
    pub rtx_sent: AtomicU64,
    pub plis_received: AtomicU64,
    pub firs_received: AtomicU64,
    pub nacks_sent: AtomicU64,
    pub sessions_reaped: AtomicU64,
    pub session_panics: AtomicU64,
    pub data_in: AtomicU64,
    pub data_out: AtomicU64,
    pub data_dropped: AtomicU64,
    /// Layer changes (and pauses, resumes) bandwidth allocation made.
    pub bandwidth_switches: AtomicU64,
    /// Video tracks paused for bandwidth now (a gauge).
    pub bandwidth_paused_tracks: AtomicU64,
    /// Audio packets held back by a room's push-to-talk floor.
    pub floor_dropped: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Forwarded copies by delay ([`WorkerStats::forward_delay`]).
    forward_delay: [AtomicU64; FORWARD_DELAY_BUCKETS_US.len() + 1],
    forward_delay_sum_us: AtomicU64,
}

impl WorkerMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// Add what a session's str0m stats reported since their previous report.
    pub fn add_feedback(&self, delta: FeedbackCounts) {
        Self::add(&self.nacks_received, delta.nacks_received);
        Self::add(&self.plis_received, delta.plis_received);
        Self::add(&self.firs_received, delta.firs_received);
        Self::add(&self.nacks_sent, delta.nacks_sent);
        Self::add(&self.rtx_sent, delta.retransmissions);
    }

    pub fn drop_packet(&self, reason: DropReason) {
        self.drop_packets(reason, 1);
    }

    pub fn drop_packets(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// For each `(delay, copies)`: `copies` forwarded copies of one packet were handed to the
    /// socket backend `delay` after the packet arrived. Summed per bucket first, so a flush's
    /// worth costs an atomic add per bucket it touches rather than two per entry.
    pub fn record_forward_delays(&self, delays: impl IntoIterator<Item = (Duration, u64)>) {
        let mut counts = [0u64; FORWARD_DELAY_BUCKETS_US.len() + 1];
        let mut sum_us = 0u64;
        for (delay, copies) in delays {
            // In u64 (`as_micros` works in u128).
            let us = delay
                .as_secs()
                .saturating_mul(1_000_000)
                .saturating_add(u64::from(delay.subsec_micros()));
            let bucket = FORWARD_DELAY_BUCKETS_US.partition_point(|&bound| bound < us);
            counts[bucket] += copies;
            sum_us = sum_us.saturating_add(us.saturating_mul(copies));
        }
        for (counter, n) in self.forward_delay.iter().zip(counts) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        if sum_us > 0 {
            self.forward_delay_sum_us
                .fetch_add(sum_us, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// A consistent-enough copy for reporting (each counter read once).
    pub fn snapshot(&self, worker: u16, port: u16) -> WorkerStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerStats {
            worker,
            port,
            publish_sessions: load(&self.publish_sessions),
            published_tracks: load(&self.published_tracks),
            subscribe_sessions: load(&self.subscribe_sessions),
            packets_in: load(&self.packets_in),
            bytes_in: load(&self.bytes_in),
            packets_out: load(&self.packets_out),
            bytes_out: load(&self.bytes_out),
            gso_sends: load(&self.gso_sends),
            gso_datagrams: load(&self.gso_datagrams),
            rtp_forwarded: load(&self.rtp_forwarded),
            keyframe_requests: load(&self.keyframe_requests),
            nacks_received: load(&self.nacks_received),
            rtx_sent: load(&self.rtx_sent),
            plis_received: load(&self.plis_received),
            firs_received: load(&self.firs_received),
            nacks_sent: load(&self.nacks_sent),
            sessions_reaped: load(&self.sessions_reaped),
            session_panics: load(&self.session_panics),
            data_in: load(&self.data_in),
            data_out: load(&self.data_out),
            data_dropped: load(&self.data_dropped),
            bandwidth_switches: load(&self.bandwidth_switches),
            bandwidth_paused_tracks: load(&self.bandwidth_paused_tracks),
            floor_dropped: load(&self.floor_dropped),
            dropped: DropReason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), self.dropped(*r)))
                .collect(),
            forward_delay: self.forward_delay.iter().map(load).collect(),
            forward_delay_sum_us: load(&self.forward_delay_sum_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarding_delay_lands_in_the_first_bucket_that_bounds_it() {
        let m = WorkerMetrics::default();
        m.record_forward_delays([(Duration::ZERO, 1)]);
        m.record_forward_delays([(Duration::from_micros(10), 2)]); // on a bound: that bucket
        m.record_forward_delays([(Duration::from_micros(11), 3)]);
        m.record_forward_delays([(Duration::from_micros(1_000), 4)]);
        m.record_forward_delays([(Duration::from_secs(1), 5)]); // above every bound
        let stats = m.snapshot(0, 0);
        let at = |us: u64| {
            FORWARD_DELAY_BUCKETS_US
                .iter()
                .position(|&b| b == us)
                .expect("a bucket bound")
        };
        let mut expected = vec![0; FORWARD_DELAY_BUCKETS_US.len() + 1];
        expected[at(10)] = 1 + 2;
        expected[at(20)] = 3;
        expected[at(1_000)] = 4;
        expected[FORWARD_DELAY_BUCKETS_US.len()] = 5;
        assert_eq!(stats.forward_delay, expected);
        assert_eq!(
            stats.forward_delay_sum_us,
            2 * 10 + 3 * 11 + 4 * 1_000 + 5 * 1_000_000
        );
    }

    #[test]
    fn delays_recorded_together_count_as_recorded_one_by_one() {
        let delays = [
            (Duration::from_micros(7), 3),
            (Duration::from_micros(45), 1),
            (Duration::from_micros(9), 2),
            (Duration::from_millis(4), 5),
            (Duration::from_secs(3), 1),
        ];
        let one_by_one = WorkerMetrics::default();
        for (delay, copies) in delays {
            one_by_one.record_forward_delays([(delay, copies)]);
        }
        let together = WorkerMetrics::default();
        together.record_forward_delays(delays);
        let (a, b) = (one_by_one.snapshot(0, 0), together.snapshot(0, 0));
        assert_eq!(a.forward_delay, b.forward_delay);
        assert_eq!(a.forward_delay_sum_us, b.forward_delay_sum_us);
        assert_eq!(b.forward_delay.iter().sum::<u64>(), 12);
    }
}
