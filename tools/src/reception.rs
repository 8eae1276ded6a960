//! The receive side of every synthetic subscriber, test or load: [`Receiving`] takes each
//! datagram off the socket (raw capture, loss on purpose) and each RTP packet the `Rtc`
//! delivers, checks its test pattern and accounts it: per stream loss, duplicates, reordering
//! and jitter from the pattern counters, latency from the send time (what the load report
//! needs, split by the packet's path when the nodes are known), and, when the owner asked for
//! one, a [`Reception`] log: totals per kind, every packet
//! with its decoded pattern, and the per-stream sequence and timestamp analysis tests assert on.
//! An opt-in [`RawCapture`] keeps the datagrams as they came off the socket (for wire-format
//! checks with parsers other than str0m's).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use str0m::Rtc;
use str0m::media::{KeyframeRequestKind, Mid, Pt};
use str0m::rtp::{RtpPacket, Ssrc};

use crate::load::media;
use crate::load::placement::SubscriberPaths;
use crate::load::ptt::{FloorCheck, FloorTimeline};
use crate::load::stats::{self, Interval, RxStream};
use crate::pattern::{self, Decoded, PatternError, PatternHeader, PayloadKind};
use crate::peer::lock;

/// The media lines a peer negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mids {
    pub audio: Option<Mid>,
    pub video: Option<Mid>,
}

impl Mids {
    fn kind_of(&self, mid: Option<Mid>) -> Option<PayloadKind> {
        match mid {
            Some(m) if Some(m) == self.audio => Some(PayloadKind::Audio),
            Some(m) if Some(m) == self.video => Some(PayloadKind::Video),
            _ => None,
        }
    }
}

/// Packets of one kind a subscriber loses on purpose, as a lossy network would: the datagram
/// is discarded before SRTP, so str0m's receive side sees a sequence gap and, for video,
/// asks for a retransmission (NACK). Packets are counted per kind, 1-based, in arrival order,
/// on the stream's main SSRC only: retransmissions (RTX) are never lost. Packet `n` is lost
/// when `n >= every` and `n % every < burst`; `every: 20, burst: 1` loses the 20th, 40th, ...;
/// `every: 50, burst: 3` loses 50-52, 100-102, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncomingLoss {
    pub kind: PayloadKind,
    pub every: u64,
    pub burst: u64,
}

impl IncomingLoss {
    /// Loses every `every`-th packet of `kind`.
    pub fn every(kind: PayloadKind, every: u64) -> Self {
        Self {
            kind,
            every,
            burst: 1,
        }
    }

    /// Whether the `position`-th (1-based) packet of the kind is lost.
    pub fn loses(&self, position: u64) -> bool {
        self.every > 0 && position >= self.every && position % self.every < self.burst
    }
}

/// The receive side of one subscriber.
#[derive(Debug)]
pub struct Receiving {
    mids: Mids,
    /// Per received SSRC: the counter windows and jitter the load report is made of.
    streams: Vec<RxStream>,
    /// The owner's log (tests); `None` for load peers, which only count.
    log: Option<Arc<Mutex<Reception>>>,
    /// Keep every packet in the log, not only totals.
    keep_packets: bool,
    loss: Vec<IncomingLoss>,
    /// Packets seen on the main SSRC, per kind (audio, video): the positions `loss` counts.
    positions: [u64; 2],
    capture: Option<Arc<RawCapture>>,
    /// Tells local from relayed packets (load subscribers on a server that names its nodes).
    paths: Option<SubscriberPaths>,
    /// The remote tracks that delivered media: (publisher number, kind), each once.
    sources: Vec<(u32, PayloadKind)>,
    /// How many of those make the reception complete (room subscribers).
    expected_sources: Option<usize>,
    /// Push-to-talk runs: the floor's timeline, and what this receiver found against it.
    floor: Option<Box<(Arc<FloorTimeline>, FloorCheck)>>,
}

impl Receiving {
    /// Counting only, with the light (header-only) pattern check.
    pub fn new(mids: Mids) -> Self {
        Self {
            mids,
            streams: Vec::new(),
            log: None,
            keep_packets: false,
            loss: Vec::new(),
            positions: [0; 2],
            capture: None,
            paths: None,
            sources: Vec::new(),
            expected_sources: None,
            floor: None,
        }
    }

    /// Checks every audio packet against the floor's timeline (push-to-talk runs).
    pub fn check_floor(&mut self, timeline: Arc<FloorTimeline>) {
        self.floor = Some(Box::new((timeline, FloorCheck::default())));
    }

    /// What the floor check found, in a push-to-talk run.
    pub fn floor_check(&self) -> Option<&FloorCheck> {
        self.floor.as_deref().map(|(_, check)| check)
    }

    /// Tells when `n` remote tracks have delivered media ([`sources_complete`]).
    ///
    /// [`sources_complete`]: Self::sources_complete
    pub fn set_expected_sources(&mut self, n: usize) {
        self.expected_sources = Some(n);
    }

    /// Every expected remote track has delivered media (false when none were expected).
    pub fn sources_complete(&self) -> bool {
        self.expected_sources
            .is_some_and(|n| self.sources.len() >= n)
    }

    /// The remote tracks counted, when this receiver expects a number of them.
    pub fn counted_sources(&self) -> Option<usize> {
        self.expected_sources.map(|_| self.sources.len())
    }

    /// Remote tracks (a publisher's audio, its video) that delivered at least one intact
    /// packet; simulcast layers of one track count once.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Also counts each packet under its path (local or relayed) as `paths` tells it.
    pub fn set_paths(&mut self, paths: Option<SubscriberPaths>) {
        self.paths = paths;
    }

    /// Also checks every payload in full and records it in `log` (every packet when
    /// `keep_packets`, totals otherwise).
    pub fn logged(mut self, log: Arc<Mutex<Reception>>, keep_packets: bool) -> Self {
        self.log = Some(log);
        self.keep_packets = keep_packets;
        self
    }

    /// Also loses packets on arrival as `loss` says. Only a logged receiver classifies
    /// datagrams, so only it loses any; each drop is recorded in its log.
    pub fn losing(mut self, loss: Vec<IncomingLoss>) -> Self {
        self.loss = loss;
        self
    }

    /// Also copies received datagrams into `capture` until it is full.
    pub fn capturing(mut self, capture: Option<Arc<RawCapture>>) -> Self {
        self.capture = capture;
        self
    }

    /// A datagram as it came off the socket, before the `Rtc` sees it: copied into the raw
    /// capture, classified for the log, and lost on purpose if the configured loss says so.
    /// False: drop it.
    pub fn admit(&mut self, rtc: &mut Rtc, now: Instant, source: SocketAddr, data: &[u8]) -> bool {
        if let Some(capture) = &self.capture {
            capture.record(now, source, data);
        }
        let Some(log) = &self.log else {
            return true;
        };
        match classify(rtc, self.mids, data) {
            Carries::Media(kind, ssrc, seq) => {
                let position = &mut self.positions[usize::from(kind == PayloadKind::Video)];
                *position += 1;
                let n = *position;
                let lost = self.loss.iter().any(|l| l.kind == kind && l.loses(n));
                if lost {
                    lock(log).dropped.push(DroppedPacket {
                        at: now,
                        kind,
                        ssrc,
                        seq,
                    });
                }
                !lost
            }
            Carries::Repair(kind) => {
                let mut r = lock(log);
                match kind {
                    PayloadKind::Audio => r.audio.repairs += 1,
                    PayloadKind::Video => r.video.repairs += 1,
                }
                true
            }
            Carries::Other => true,
        }
    }

    /// One RTP packet the `Rtc` delivered, arrived at `now` (`wallclock_us` on the wall
    /// clock): checked, logged, and accounted into `interval`. True when its pattern header
    /// is intact.
    pub fn on_rtp(
        &mut self,
        rtc: &mut Rtc,
        now: Instant,
        wallclock_us: u64,
        p: &RtpPacket,
        interval: &mut Interval,
    ) -> bool {
        let header = match &self.log {
            Some(log) => {
                let mid = rtc
                    .direct_api()
                    .stream_rx(&p.header.ssrc)
                    .map(|s| s.mid())
                    .or(p.header.ext_vals.mid);
                match self.mids.kind_of(mid) {
                    Some(kind) => {
                        let pattern = pattern::decode_payload(kind, &p.payload);
                        let header = pattern.as_ref().ok().map(|d| d.header);
                        let packet = ReceivedPacket {
                            at: now,
                            kind,
                            ssrc: p.header.ssrc,
                            pt: p.header.payload_type,
                            seq: p.header.sequence_number,
                            ext_seq: *p.seq_no,
                            rtp_time: p.header.timestamp,
                            marker: p.header.marker,
                            payload_len: p.payload.len(),
                            pattern,
                        };
                        lock(log).record(packet, self.keep_packets);
                        header
                    }
                    None => {
                        lock(log).unknown_media += 1;
                        pattern::decode_header(&p.payload)
                    }
                }
            }
            None => pattern::decode_header(&p.payload),
        };
        interval.counts.bytes += p.payload.len() as u64;
        let Some(header) = header else {
            interval.counts.corrupt += 1;
            return false;
        };
        self.account(*p.header.ssrc, &header, wallclock_us, interval);
        true
    }

    fn account(
        &mut self,
        ssrc: u32,
        header: &PatternHeader,
        wallclock_us: u64,
        interval: &mut Interval,
    ) {
        let stream = match self.streams.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => &mut self.streams[i],
            None => {
                // A new SSRC is the only place a new track shows up: no per-packet cost.
                if let Some(publisher) = media::publisher_of(header.counter) {
                    let source = (publisher, header.kind);
                    if !self.sources.contains(&source) {
                        self.sources.push(source);
                    }
                }
                self.streams.push(RxStream::new(ssrc));
                self.streams.last_mut().expect("just pushed")
            }
        };
        if let (Some(floor), PayloadKind::Audio) = (self.floor.as_deref_mut(), header.kind) {
            let (timeline, check) = floor;
            if let Some(publisher) = media::publisher_of(header.counter) {
                check.audio(timeline, publisher, header.sent_us, wallclock_us);
            }
        }
        let counts = stream.record(header, wallclock_us);
        interval.counts.add(&counts);
        let latency_us = (counts.received > 0).then(|| wallclock_us.saturating_sub(header.sent_us));
        if let Some(us) = latency_us {
            stats::record_latency(&mut interval.latency, us);
            interval
                .spread
                .record(header.kind, header.layer, header.counter, wallclock_us);
        }
        // The packet's own publisher decides its path, whatever else the room holds.
        if let Some(paths) = &self.paths {
            let path = paths.path_from(media::publisher_of(header.counter));
            if let Some(figures) = interval.path_mut(path) {
                figures.record(&counts, latency_us);
            }
        }
    }

    /// Sends a PLI for the video stream, if there is one yet.
    pub fn request_keyframe(&mut self, rtc: &mut Rtc) {
        let Some(mid) = self.mids.video else {
            return;
        };
        if let Some(rx) = rtc.direct_api().stream_rx_by_mid(mid, None) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            if let Some(log) = &self.log {
                lock(log).keyframe_requests_sent += 1;
            }
        }
    }

    /// Final jitter of each received stream, µs.
    pub fn stream_jitter_us(&self) -> Vec<f64> {
        self.streams.iter().map(RxStream::jitter_us).collect()
    }
}

/// What an SRTP datagram carries, from its clear-text RTP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carries {
    /// Media on the main SSRC of a stream of this kind.
    Media(PayloadKind, Ssrc, u16),
    /// A retransmission on the repair (RTX) SSRC of a stream of this kind.
    Repair(PayloadKind),
    /// Not RTP, or RTP of no stream we know yet.
    Other,
}

fn classify(rtc: &mut Rtc, mids: Mids, datagram: &[u8]) -> Carries {
    let Some((ssrc, seq)) = rtp_ssrc_and_seq(datagram) else {
        return Carries::Other;
    };
    let mut api = rtc.direct_api();
    for (kind, mid) in [
        (PayloadKind::Audio, mids.audio),
        (PayloadKind::Video, mids.video),
    ] {
        let Some(stream) = mid.and_then(|mid| api.stream_rx_by_mid(mid, None)) else {
            continue;
        };
        if stream.ssrc() == ssrc {
            return Carries::Media(kind, ssrc, seq);
        }
        if stream.rtx() == Some(ssrc) {
            return Carries::Repair(kind);
        }
    }
    Carries::Other
}

/// SSRC and sequence number of an (S)RTP datagram (RFC 7983 first byte, RFC 5761 RTCP
/// payload types excluded); `None` for anything else.
fn rtp_ssrc_and_seq(datagram: &[u8]) -> Option<(Ssrc, u16)> {
    let header = datagram.get(..12)?;
    let rtp_or_rtcp = (128..=191).contains(&header[0]);
    let rtcp = (192..=223).contains(&header[1]);
    if !rtp_or_rtcp || rtcp {
        return None;
    }
    let seq = u16::from_be_bytes([header[2], header[3]]);
    let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    Some((ssrc.into(), seq))
}

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

    #[test]
    fn loss_pattern_positions() {
        let every = IncomingLoss::every(PayloadKind::Video, 20);
        let lost: Vec<u64> = (1..=100).filter(|n| every.loses(*n)).collect();
        assert_eq!(lost, vec![20, 40, 60, 80, 100]);

        let bursts = IncomingLoss {
            kind: PayloadKind::Video,
            every: 50,
            burst: 3,
        };
        let lost: Vec<u64> = (1..=110).filter(|n| bursts.loses(*n)).collect();
        assert_eq!(lost, vec![50, 51, 52, 100, 101, 102]);

        let off = IncomingLoss::every(PayloadKind::Audio, 0);
        assert!((1..=100).all(|n| !off.loses(n)));
    }

    #[test]
    fn rtp_headers_are_told_from_rtcp_and_the_rest() {
        let mut rtp = vec![
            0x80, 96, 0x12, 0x34, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0xff,
        ];
        assert_eq!(
            rtp_ssrc_and_seq(&rtp),
            Some((0xdead_beef_u32.into(), 0x1234))
        );
        rtp[1] = 0x80 | 96; // marker bit set: still RTP
        assert!(rtp_ssrc_and_seq(&rtp).is_some());
        let rtcp = [0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(rtp_ssrc_and_seq(&rtcp), None, "a receiver report");
        assert_eq!(
            rtp_ssrc_and_seq(&[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "DTLS"
        );
        assert_eq!(rtp_ssrc_and_seq(&rtp[..11]), None, "too short");
    }

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
    fn packets_are_split_by_the_node_of_their_own_publisher() {
        use crate::load::negotiate::{PeerId, PeerPlan, PeerRole};
        use crate::load::placement::Placements;

        // One room, publisher 0 on n1 and publisher 1 on n2; the subscriber is on n2.
        let placements = Arc::new(Placements::new(3, 2));
        let plan = |id, role, publisher| PeerPlan {
            id: PeerId(id),
            role,
            room: 0,
            publisher,
            generation: 0,
        };
        placements.land(&plan(0, PeerRole::Publisher, 0), Some("n1"));
        placements.land(&plan(1, PeerRole::Publisher, 1), Some("n2"));
        let landing = placements.land(&plan(2, PeerRole::Subscriber, 0), Some("n2"));
        let mut rx = Receiving::new(Mids::default());
        rx.set_paths(placements.paths_for(landing));
        let mut interval = Interval::new();
        let header = |publisher, n: u64, sent_us| {
            PatternHeader::audio(media::counter_base(publisher) + n, 0, 0, sent_us, 0)
        };
        // Publisher 0 (relayed): 0, 1, 3 arrive 5 ms after sending, 2 is lost, 3 comes twice.
        for n in [0, 1, 3, 3] {
            rx.account(1, &header(0, n, 1_000_000), 1_005_000, &mut interval);
        }
        // Publisher 1 (local): 0..4, 1 ms each. A counter of no load publisher: unknown.
        for n in 0..4 {
            rx.account(2, &header(1, n, 2_000_000), 2_001_000, &mut interval);
        }
        rx.account(
            3,
            &PatternHeader::audio(7, 0, 0, 0, 100),
            100,
            &mut interval,
        );

        let (local, relayed) = (&interval.local, &interval.relayed);
        assert_eq!((relayed.counts.received, relayed.counts.lost()), (3, 1));
        assert_eq!(relayed.counts.duplicates, 1);
        assert_eq!((local.counts.received, local.counts.lost()), (4, 0));
        let latency = |f: &stats::PathFigures| {
            let h = f.latency().expect("samples");
            (h.len(), h.min(), h.max())
        };
        assert_eq!(latency(relayed).0, 3, "duplicates have no latency sample");
        assert!((4_990..=5_010).contains(&latency(relayed).1));
        assert_eq!(latency(local).0, 4);
        assert!((995..=1_005).contains(&latency(local).2));
        assert_eq!(interval.latency.len(), 8, "the totals have every sample");
        assert_eq!(interval.counts.received, 8);
    }

    #[test]
    fn without_paths_nothing_is_split() {
        let mut rx = Receiving::new(Mids::default());
        let mut interval = Interval::new();
        let header = PatternHeader::audio(media::counter_base(0), 0, 0, 1_000, 0);
        rx.account(1, &header, 2_000, &mut interval);
        assert_eq!(interval.counts.received, 1);
        assert_eq!(interval.local.counts, stats::Counts::default());
        assert_eq!(interval.relayed.counts, stats::Counts::default());
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
