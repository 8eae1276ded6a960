//! What a subscriber received: totals per kind, optionally every RTP packet with its decoded
//! test pattern, the per-stream sequence and timestamp analysis tests assert on, and an opt-in
//! [`RawCapture`] of the datagrams as they came off the socket (for wire-format checks with
//! parsers other than str0m's).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use str0m::media::Pt;
use str0m::rtp::Ssrc;

use crate::pattern::{Decoded, PatternError, PayloadKind};
use crate::peer::lock;

/// One received RTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPacket {
    pub at: Instant,
    pub kind: PayloadKind,
    pub ssrc: Ssrc,
    pub pt: Pt,
    pub seq: u16,
    /// Sequence number extended by str0m (rollovers counted).
    pub ext_seq: u64,
    pub rtp_time: u32,
    pub marker: bool,
    pub payload_len: usize,
    /// The payload's test pattern, or why it did not decode intact.
    pub pattern: Result<Decoded, PatternError>,
}

impl ReceivedPacket {
    /// The decoded pattern of an intact payload.
    pub fn decoded(&self) -> Option<&Decoded> {
        self.pattern.as_ref().ok()
    }

    /// True when this packet opens a keyframe.
    pub fn starts_keyframe(&self) -> bool {
        self.decoded().is_some_and(Decoded::starts_keyframe)
    }
}

/// Totals for one media kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindTotals {
    pub packets: u64,
    /// RTP payload bytes.
    pub bytes: u64,
    pub intact: u64,
    pub corrupt: u64,
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
    /// Retransmissions (datagrams on the stream's RTX SSRC) that arrived, answers to our NACKs.
    pub repairs: u64,
}

/// Everything a subscriber has received so far.
#[derive(Debug, Clone, Default)]
pub struct Reception {
    pub audio: KindTotals,
    pub video: KindTotals,
    /// RTP packets whose media (mid) could not be told.
    pub unknown_media: u64,
    /// The first corruption seen, for diagnostics.
    pub first_corruption: Option<(PayloadKind, PatternError)>,
    /// Keyframe requests (PLI) sent on behalf of the owner.
    pub keyframe_requests_sent: u64,
    /// Every packet in arrival order, when the subscriber keeps a log.
    pub packets: Vec<ReceivedPacket>,
    /// Packets lost on purpose before the `Rtc` saw them (the subscriber's configured loss).
    pub dropped: Vec<DroppedPacket>,
}

/// A media packet the subscriber discarded on arrival, identified by its RTP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DroppedPacket {
    pub at: Instant,
    pub kind: PayloadKind,
    /// The stream's main SSRC.
    pub ssrc: Ssrc,
    pub seq: u16,
}

/// Sequence and timestamp facts about one received SSRC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    pub ssrc: Ssrc,
    pub packets: u64,
    pub first_ext_seq: u64,
    pub last_ext_seq: u64,
    /// Sequence numbers between the first and the last never received.
    pub missing: u64,
    pub duplicates: u64,
    /// Arrivals with a sequence number below one already seen.
    pub reordered: u64,
    /// Arrivals whose RTP timestamp is behind the previous arrival's (wrapping comparison).
    pub timestamp_regressions: u64,
    /// Distinct `ext_seq - source counter` values among intact packets. One when the SFU maps
    /// the source's packets one-to-one onto this stream's sequence numbers.
    pub seq_offsets: usize,
    /// Distinct `rtp_time - source rtp_time` values among intact packets. One when the SFU
    /// shifts timestamps by a constant.
    pub timestamp_offsets: usize,
    /// Simulcast layer indices (from the test pattern) seen on this SSRC.
    pub layers: BTreeSet<u8>,
    pub corrupt: u64,
}

impl StreamReport {
    /// No loss, duplicates, reordering or timestamp regressions.
    pub fn is_clean(&self) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.reordered == 0
            && self.timestamp_regressions == 0
    }
}

impl Reception {
    pub fn totals(&self, kind: PayloadKind) -> &KindTotals {
        match kind {
            PayloadKind::Audio => &self.audio,
            PayloadKind::Video => &self.video,
        }
    }

    /// Counts a packet, and logs it when `keep` is set.
    pub fn record(&mut self, packet: ReceivedPacket, keep: bool) {
        let totals = match packet.kind {
            PayloadKind::Audio => &mut self.audio,
            PayloadKind::Video => &mut self.video,
        };
        totals.packets += 1;
        totals.bytes += packet.payload_len as u64;
        totals.first_at.get_or_insert(packet.at);
        totals.last_at = Some(packet.at);
        match &packet.pattern {
            Ok(_) => totals.intact += 1,
            Err(e) => {
                totals.corrupt += 1;
                self.first_corruption.get_or_insert((packet.kind, *e));
            }
        }
        if keep {
            self.packets.push(packet);
        }
    }

    /// Logged packets of one kind, in arrival order.
    pub fn packets_of(&self, kind: PayloadKind) -> impl Iterator<Item = &ReceivedPacket> {
        self.packets.iter().filter(move |p| p.kind == kind)
    }

    /// The first logged packet of one kind.
    pub fn first_packet(&self, kind: PayloadKind) -> Option<&ReceivedPacket> {
        self.packets_of(kind).next()
    }

    /// Source packet counters of the intact logged packets of one kind and layer.
    pub fn source_counters(&self, kind: PayloadKind, layer: u8) -> BTreeSet<u64> {
        self.packets_of(kind)
            .filter_map(ReceivedPacket::decoded)
            .filter(|d| d.header.layer == layer)
            .map(|d| d.header.counter)
            .collect()
    }

    /// Packets of `kind` lost on purpose.
    pub fn dropped_of(&self, kind: PayloadKind) -> impl Iterator<Item = &DroppedPacket> {
        self.dropped.iter().filter(move |d| d.kind == kind)
    }

    /// Packets of `kind` lost on purpose that never arrived afterwards (no logged packet with
    /// the same SSRC and sequence number came in later, e.g. as a retransmission). Needs the
    /// packet log.
    pub fn unrepaired(&self, kind: PayloadKind) -> Vec<DroppedPacket> {
        let mut arrivals: BTreeMap<(Ssrc, u16), Vec<Instant>> = BTreeMap::new();
        for p in self.packets_of(kind) {
            arrivals.entry((p.ssrc, p.seq)).or_default().push(p.at);
        }
        self.dropped_of(kind)
            .filter(|d| {
                !arrivals
                    .get(&(d.ssrc, d.seq))
                    .is_some_and(|at| at.iter().any(|t| *t >= d.at))
            })
            .copied()
            .collect()
    }

    /// Sequence analysis of every SSRC of one kind, from the log.
    pub fn streams(&self, kind: PayloadKind) -> Vec<StreamReport> {
        let mut by_ssrc: BTreeMap<Ssrc, Vec<&ReceivedPacket>> = BTreeMap::new();
        for p in self.packets_of(kind) {
            by_ssrc.entry(p.ssrc).or_default().push(p);
        }
        by_ssrc
            .into_iter()
            .map(|(ssrc, packets)| stream_report(ssrc, &packets))
            .collect()
    }
}

/// One datagram as it arrived on a peer's socket, before the `Rtc` saw it (still SRTP/SRTCP
/// protected: RTP headers and the first eight bytes of RTCP are clear text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedDatagram {
    pub at: Instant,
    pub source: SocketAddr,
    pub bytes: Vec<u8>,
}

/// Copies of the first `limit` datagrams a peer receives. Bounded: once full, recording costs
/// one atomic load and nothing is allocated or locked.
#[derive(Debug)]
pub struct RawCapture {
    limit: usize,
    full: AtomicBool,
    datagrams: Mutex<Vec<CapturedDatagram>>,
}

impl RawCapture {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            full: AtomicBool::new(limit == 0),
            datagrams: Mutex::new(Vec::new()),
        }
    }

    /// How many datagrams the capture keeps at most.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// True once `limit` datagrams were kept: later ones are not.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Keeps a copy of `bytes` unless the capture is full.
    pub fn record(&self, at: Instant, source: SocketAddr, bytes: &[u8]) {
        if self.is_full() {
            return;
        }
        let mut datagrams = lock(&self.datagrams);
        if datagrams.len() < self.limit {
            datagrams.push(CapturedDatagram {
                at,
                source,
                bytes: bytes.to_vec(),
            });
        }
        if datagrams.len() >= self.limit {
            self.full.store(true, Ordering::Relaxed);
        }
    }

    /// A copy of what was kept so far, in arrival order.
    pub fn datagrams(&self) -> Vec<CapturedDatagram> {
        lock(&self.datagrams).clone()
    }

    pub fn len(&self) -> usize {
        lock(&self.datagrams).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn stream_report(ssrc: Ssrc, packets: &[&ReceivedPacket]) -> StreamReport {
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    let mut reordered = 0;
    let mut timestamp_regressions = 0;
    let mut highest: Option<u64> = None;
    let mut prev_time: Option<u32> = None;
    let mut seq_offsets = BTreeSet::new();
    let mut timestamp_offsets = BTreeSet::new();
    let mut layers = BTreeSet::new();
    let mut corrupt = 0;
    for p in packets {
        if !seen.insert(p.ext_seq) {
            duplicates += 1;
        }
        if highest.is_some_and(|h| p.ext_seq < h) {
            reordered += 1;
        }
        highest = highest.max(Some(p.ext_seq));
        if let Some(prev) = prev_time {
            if (p.rtp_time.wrapping_sub(prev) as i32) < 0 {
                timestamp_regressions += 1;
            }
        }
        prev_time = Some(p.rtp_time);
        match p.decoded() {
            Some(d) => {
                seq_offsets.insert(p.ext_seq.wrapping_sub(d.header.counter));
                timestamp_offsets.insert(p.rtp_time.wrapping_sub(d.header.rtp_time));
                layers.insert(d.header.layer);
            }
            None => corrupt += 1,
        }
    }
    let first = seen.first().copied().unwrap_or(0);
    let last = seen.last().copied().unwrap_or(0);
    let span = if seen.is_empty() { 0 } else { last - first + 1 };
    StreamReport {
        ssrc,
        packets: packets.len() as u64,
        first_ext_seq: first,
        last_ext_seq: last,
        missing: span - seen.len() as u64,
        duplicates,
        reordered,
        timestamp_regressions,
        seq_offsets: seq_offsets.len(),
        timestamp_offsets: timestamp_offsets.len(),
        layers,
        corrupt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::PatternHeader;

    fn packet(ext_seq: u64, counter: u64, rtp_time: u32) -> ReceivedPacket {
        let header =
            PatternHeader::audio(counter, counter as u32, rtp_time.wrapping_sub(1000), 0, 0);
        ReceivedPacket {
            at: Instant::now(),
            kind: PayloadKind::Audio,
            ssrc: 7.into(),
            pt: 111.into(),
            seq: ext_seq as u16,
            ext_seq,
            rtp_time,
            marker: false,
            payload_len: 40,
            pattern: Ok(Decoded { header, vp8: None }),
        }
    }

    #[test]
    fn clean_stream_reports_clean() {
        let mut r = Reception::default();
        for i in 0..10 {
            r.record(packet(500 + i, i, 960 * i as u32), true);
        }
        let s = r.streams(PayloadKind::Audio);
        assert_eq!(s.len(), 1);
        assert!(s[0].is_clean(), "{s:?}");
        assert_eq!((s[0].seq_offsets, s[0].timestamp_offsets), (1, 1));
        assert_eq!(r.audio.packets, 10);
        assert_eq!(r.audio.intact, 10);
    }

    #[test]
    fn loss_duplicates_and_reordering_are_counted() {
        let mut r = Reception::default();
        for (seq, counter) in [(1, 1), (2, 2), (4, 4), (3, 3), (3, 3), (7, 7)] {
            r.record(packet(seq, counter, 960 * counter as u32), true);
        }
        let s = &r.streams(PayloadKind::Audio)[0];
        assert_eq!(s.missing, 2, "5 and 6");
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.reordered, 2);
        assert_eq!(s.timestamp_regressions, 1);
        assert_eq!(s.seq_offsets, 1);
    }

    #[test]
    fn raw_capture_keeps_the_first_datagrams_only() {
        let from = SocketAddr::from(([127, 0, 0, 1], 9));
        let c = RawCapture::new(2);
        for i in 0..5_u8 {
            c.record(Instant::now(), from, &[i, i]);
        }
        assert!(c.is_full());
        let kept: Vec<Vec<u8>> = c.datagrams().into_iter().map(|d| d.bytes).collect();
        assert_eq!(kept, vec![vec![0, 0], vec![1, 1]]);

        let off = RawCapture::new(0);
        off.record(Instant::now(), from, &[1]);
        assert!(off.is_empty() && off.is_full());
    }

    #[test]
    fn dropped_packets_are_repaired_only_by_a_later_arrival() {
        let mut r = Reception::default();
        let t0 = Instant::now();
        let drop = |seq: u64| DroppedPacket {
            at: t0,
            kind: PayloadKind::Audio,
            ssrc: 7.into(),
            seq: seq as u16,
        };
        r.dropped = vec![drop(3), drop(5), drop(6)];
        for seq in [1, 2, 4, 7] {
            r.record(packet(seq, seq, 0), true);
        }
        // 5 arrives again later (a retransmission); 6 came only before it was dropped.
        r.record(packet(5, 5, 0), true);
        let mut early = packet(6, 6, 0);
        early.at = t0 - std::time::Duration::from_millis(1);
        r.record(early, true);
        let unrepaired: Vec<u16> = r
            .unrepaired(PayloadKind::Audio)
            .iter()
            .map(|d| d.seq)
            .collect();
        assert_eq!(unrepaired, vec![3, 6]);
        assert_eq!(r.dropped_of(PayloadKind::Video).count(), 0);
    }

    #[test]
    fn corrupt_payloads_are_counted() {
        let mut r = Reception::default();
        let mut p = packet(1, 1, 0);
        p.pattern = Err(PatternError::BadMagic);
        r.record(p, false);
        assert_eq!(r.audio.corrupt, 1);
        assert_eq!(
            r.first_corruption,
            Some((PayloadKind::Audio, PatternError::BadMagic))
        );
        assert!(r.packets.is_empty());
    }
}
