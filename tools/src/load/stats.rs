//! Receive-side accounting, per packet and cheap: loss, duplicates and reordering from the
//! pattern counters ([`CounterWindow`]), RFC 3550 interarrival jitter ([`JitterEstimator`]),
//! one-way latency into HDR histograms, also split by the packet's [`Path`] ([`PathFigures`]);
//! and the per-shard totals and per-second intervals ([`ShardTotals`], [`Interval`]) the engine
//! merges into the report.

use std::collections::HashMap;

use hdrhistogram::Histogram;

use crate::pattern::{PatternHeader, PayloadKind};

use super::media;
use super::negotiate::PeerId;
use super::placement::Path;

/// Counters further than this behind the newest are too late to tell duplicates from late
/// arrivals; they are counted as reordered and not as received.
pub const WINDOW: u64 = 1024;

/// Latencies above this (µs) are clamped into the histogram's top bucket.
const LATENCY_MAX_US: u64 = 60_000_000;

/// A latency histogram: 1 µs to 60 s, three significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("static histogram bounds are valid")
}

/// What one arriving counter did to its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A counter not seen before; `expected` is how much the stream's span grew.
    New {
        expected: u64,
        late: bool,
    },
    Duplicate,
    /// Older than the window: too late to use.
    TooLate,
}

/// Tracks the counters of one stream: span from first to newest, which of the last
/// [`WINDOW`] were seen.
#[derive(Debug, Clone)]
pub struct CounterWindow {
    first: u64,
    highest: u64,
    seen: [u64; (WINDOW / 64) as usize],
}

impl CounterWindow {
    pub fn new(counter: u64) -> Self {
        let mut w = Self {
            first: counter,
            highest: counter,
            seen: [0; (WINDOW / 64) as usize],
        };
        w.mark(counter);
        w
    }

    /// Counters from the first to the newest (what the stream should have delivered).
    pub fn span(&self) -> u64 {
        self.highest - self.first + 1
    }

    fn bit(counter: u64) -> (usize, u64) {
        let i = counter % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn mark(&mut self, counter: u64) {
        let (word, bit) = Self::bit(counter);
        self.seen[word] |= bit;
    }

    fn is_seen(&self, counter: u64) -> bool {
        let (word, bit) = Self::bit(counter);
        self.seen[word] & bit != 0
    }

    pub fn record(&mut self, counter: u64) -> Arrival {
        if counter > self.highest {
            let advance = counter - self.highest;
            if advance >= WINDOW {
                self.seen = [0; (WINDOW / 64) as usize];
            } else {
                for c in self.highest + 1..counter {
                    let (word, bit) = Self::bit(c);
                    self.seen[word] &= !bit;
                }
            }
            self.highest = counter;
            self.mark(counter);
            return Arrival::New {
                expected: advance,
                late: false,
            };
        }
        if self.highest - counter >= WINDOW {
            return Arrival::TooLate;
        }
        if counter >= self.first && self.is_seen(counter) {
            return Arrival::Duplicate;
        }
        self.mark(counter);
        let expected = self.first.saturating_sub(counter);
        self.first = self.first.min(counter);
        Arrival::New {
            expected,
            late: true,
        }
    }
}

/// RFC 3550 section 6.4.1 interarrival jitter, in microseconds, using the send time in the
/// pattern header as the media timestamp.
#[derive(Debug, Clone, Copy, Default)]
pub struct JitterEstimator {
    last_transit: Option<i64>,
    jitter: f64,
}

impl JitterEstimator {
    pub fn record(&mut self, arrival_us: u64, sent_us: u64) {
        let transit = arrival_us as i64 - sent_us as i64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    pub fn jitter_us(&self) -> f64 {
        self.jitter
    }
}

/// Loss, duplicate and reordering counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub received: u64,
    pub expected: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub corrupt: u64,
    pub bytes: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.received += o.received;
        self.expected += o.expected;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.corrupt += o.corrupt;
        self.bytes += o.bytes;
    }

    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }
}

/// Which publisher stream a run of packets on one SSRC comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SourceKey {
    kind: PayloadKind,
    layer: u8,
    publisher: Option<u32>,
}

/// One received SSRC. An SFU may switch what it forwards on one SSRC (another publisher,
/// another simulcast layer); each switch starts a new counter window, so the switch itself
/// is neither loss nor reordering.
#[derive(Debug, Clone)]
pub struct RxStream {
    pub ssrc: u32,
    source: Option<SourceKey>,
    window: Option<CounterWindow>,
    jitter: JitterEstimator,
    pub switches: u64,
}

impl RxStream {
    pub fn new(ssrc: u32) -> Self {
        Self {
            ssrc,
            source: None,
            window: None,
            jitter: JitterEstimator::default(),
            switches: 0,
        }
    }

    /// Accounts one packet; returns what changed, for the caller's running totals.
    pub fn record(&mut self, info: &PatternHeader, arrival_us: u64) -> Counts {
        let key = SourceKey {
            kind: info.kind,
            layer: info.layer,
            publisher: media::publisher_of(info.counter),
        };
        let window = match (&mut self.window, self.source == Some(key)) {
            (Some(w), true) => w,
            (slot, _) => {
                if slot.is_some() {
                    self.switches += 1;
                }
                self.source = Some(key);
                *slot = Some(CounterWindow::new(info.counter));
                self.jitter.record(arrival_us, info.sent_us);
                return Counts {
                    received: 1,
                    expected: 1,
                    ..Counts::default()
                };
            }
        };
        match window.record(info.counter) {
            Arrival::New { expected, late } => {
                self.jitter.record(arrival_us, info.sent_us);
                Counts {
                    received: 1,
                    expected,
                    reordered: u64::from(late),
                    ..Counts::default()
                }
            }
            Arrival::Duplicate => Counts {
                duplicates: 1,
                ..Counts::default()
            },
            Arrival::TooLate => Counts {
                reordered: 1,
                ..Counts::default()
            },
        }
    }

    pub fn jitter_us(&self) -> f64 {
        self.jitter.jitter_us()
    }
}

/// The share of the received packets that took one [`Path`]: the same counts and latency as
/// the totals, for the packets whose path is known.
#[derive(Debug, Clone, Default)]
pub struct PathFigures {
    pub counts: Counts,
    /// Made at the first sample: a run sees one path, both, or (nodes unnamed) none.
    latency: Option<Histogram<u64>>,
}

impl PathFigures {
    /// Adds what one arrival did (`latency_us` when it counted as received).
    pub fn record(&mut self, counts: &Counts, latency_us: Option<u64>) {
        self.counts.add(counts);
        if let Some(us) = latency_us {
            record_latency(self.latency.get_or_insert_with(latency_histogram), us);
        }
    }

    pub fn add(&mut self, o: &PathFigures) {
        self.counts.add(&o.counts);
        if let Some(h) = &o.latency {
            // Same bounds on both sides, so adding cannot fail.
            let _ = self.latency.get_or_insert_with(latency_histogram).add(h);
        }
    }

    /// The latency samples, if there were any.
    pub fn latency(&self) -> Option<&Histogram<u64>> {
        self.latency.as_ref()
    }
}

/// Every how many packets of a publisher's stream (by pattern counter) the fan-out spread
/// samples: one in four bounds its cost on the generator.
pub const SPREAD_SAMPLE: u64 = 4;

/// Fan-out spread: for one publisher packet, how much later its last subscriber got it than
/// its first, from the generator's receive clock. What one frame's fan-out costs the
/// subscriber served last (a node sends the copies one after another). Samples every
/// [`SPREAD_SAMPLE`]th packet; a packet counts once at least two subscribers got it.
#[derive(Debug, Clone, Default)]
pub struct FanoutSpread {
    /// One publisher packet → first and last arrival (wall clock, µs) and how many subscribers
    /// got it.
    packets: HashMap<SpreadKey, (u64, u64, u32)>,
}

/// What names one publisher packet: a pattern counter is unique within its stream only (a
/// publisher's audio and video layers all count from the same base), so the stream is part of
/// the key.
type SpreadKey = (PayloadKind, u8, u64);

impl FanoutSpread {
    /// One subscriber got the packet `counter` of the publisher stream (`kind`, `layer`) at
    /// `wallclock_us`.
    pub fn record(&mut self, kind: PayloadKind, layer: u8, counter: u64, wallclock_us: u64) {
        if counter % SPREAD_SAMPLE != 0 {
            return;
        }
        let e =
            self.packets
                .entry((kind, layer, counter))
                .or_insert((wallclock_us, wallclock_us, 0));
        e.0 = e.0.min(wallclock_us);
        e.1 = e.1.max(wallclock_us);
        e.2 += 1;
    }

    pub fn add(&mut self, o: &FanoutSpread) {
        for (&counter, &(first, last, n)) in &o.packets {
            let e = self.packets.entry(counter).or_insert((first, last, 0));
            e.0 = e.0.min(first);
            e.1 = e.1.max(last);
            e.2 += n;
        }
    }

    /// The spread of every sampled packet at least two subscribers got, µs.
    pub fn histogram(&self) -> Histogram<u64> {
        let mut h = latency_histogram();
        for &(first, last, n) in self.packets.values() {
            if n >= 2 {
                record_latency(&mut h, last - first);
            }
        }
        h
    }
}

/// One second of a shard's work, sent to the engine at each tick and then reset.
#[derive(Debug, Clone)]
pub struct Interval {
    pub counts: Counts,
    /// Media packets publishers wrote.
    pub sent: u64,
    pub bytes_sent: u64,
    pub latency: Histogram<u64>,
    pub spread: FanoutSpread,
    /// The received packets that came from a publisher on the subscriber's node.
    pub local: PathFigures,
    /// The received packets relayed from another node.
    pub relayed: PathFigures,
}

impl Interval {
    pub fn new() -> Self {
        Self {
            counts: Counts::default(),
            sent: 0,
            bytes_sent: 0,
            latency: latency_histogram(),
            spread: FanoutSpread::default(),
            local: PathFigures::default(),
            relayed: PathFigures::default(),
        }
    }

    pub fn add(&mut self, o: &Interval) {
        self.counts.add(&o.counts);
        self.sent += o.sent;
        self.bytes_sent += o.bytes_sent;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
        // The spread is not merged: per-tick lines do not show it, and the totals take it
        // from each shard's intervals (`ShardTotals::add_interval`).
        self.local.add(&o.local);
        self.relayed.add(&o.relayed);
    }

    /// Where packets that took `path` are counted besides the totals (`None`: unknown).
    pub fn path_mut(&mut self, path: Path) -> Option<&mut PathFigures> {
        match path {
            Path::Local => Some(&mut self.local),
            Path::Relayed => Some(&mut self.relayed),
            Path::Unknown => None,
        }
    }

    /// Loss in this interval, percent of what was expected in it.
    pub fn loss_pct(&self) -> f64 {
        pct(self.counts.lost(), self.counts.expected)
    }
}

impl Default for Interval {
    fn default() -> Self {
        Self::new()
    }
}

/// A shard's totals over the whole run.
#[derive(Debug, Clone)]
pub struct ShardTotals {
    pub counts: Counts,
    pub sent: u64,
    pub bytes_sent: u64,
    pub latency: Histogram<u64>,
    pub spread: FanoutSpread,
    pub local: PathFigures,
    pub relayed: PathFigures,
    /// Final jitter of every received stream, µs.
    pub stream_jitter_us: Vec<f64>,
    /// Datagrams the kernel refused to send (full buffers): loss on our side.
    pub send_errors: u64,
    /// System calls that sent more than one datagram (UDP GSO), and the datagrams in them.
    pub gso_sends: u64,
    pub gso_datagrams: u64,
    /// Datagrams str0m rejected.
    pub rejected: u64,
    /// Media packets publishers could not write (no send stream for the mid/rid).
    pub unsendable: u64,
    /// Loop passes that overran their budget (see the shard).
    pub stalls: u64,
    /// Timer wake-ups of peers, and receive system calls.
    pub timer_fires: u64,
    pub timer_pushes: u64,
    pub recv_calls: u64,
    /// Room subscribers: the remote tracks each received media from, at its end.
    pub sources: Vec<(PeerId, u64)>,
    /// Push-to-talk runs: each room subscriber's floor check.
    pub floor: Vec<crate::load::ptt::FloorCheck>,
}

impl ShardTotals {
    pub fn new() -> Self {
        Self {
            counts: Counts::default(),
            sent: 0,
            bytes_sent: 0,
            latency: latency_histogram(),
            spread: FanoutSpread::default(),
            local: PathFigures::default(),
            relayed: PathFigures::default(),
            stream_jitter_us: Vec::new(),
            send_errors: 0,
            gso_sends: 0,
            gso_datagrams: 0,
            rejected: 0,
            unsendable: 0,
            stalls: 0,
            timer_fires: 0,
            timer_pushes: 0,
            recv_calls: 0,
            sources: Vec::new(),
            floor: Vec::new(),
        }
    }

    pub fn add_interval(&mut self, i: &Interval) {
        self.counts.add(&i.counts);
        self.sent += i.sent;
        self.bytes_sent += i.bytes_sent;
        let _ = self.latency.add(&i.latency);
        self.spread.add(&i.spread);
        self.local.add(&i.local);
        self.relayed.add(&i.relayed);
    }

    pub fn add(&mut self, o: &ShardTotals) {
        self.counts.add(&o.counts);
        self.sent += o.sent;
        self.bytes_sent += o.bytes_sent;
        let _ = self.latency.add(&o.latency);
        self.spread.add(&o.spread);
        self.local.add(&o.local);
        self.relayed.add(&o.relayed);
        self.stream_jitter_us.extend_from_slice(&o.stream_jitter_us);
        self.send_errors += o.send_errors;
        self.gso_sends += o.gso_sends;
        self.gso_datagrams += o.gso_datagrams;
        self.rejected += o.rejected;
        self.unsendable += o.unsendable;
        self.stalls += o.stalls;
        self.timer_fires += o.timer_fires;
        self.timer_pushes += o.timer_pushes;
        self.recv_calls += o.recv_calls;
        self.sources.extend_from_slice(&o.sources);
        self.floor.extend_from_slice(&o.floor);
    }
}

impl Default for ShardTotals {
    fn default() -> Self {
        Self::new()
    }
}

/// `part` in percent of `whole` (0 when `whole` is 0).
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Records a latency, clamping into the histogram's range.
pub fn record_latency(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, LATENCY_MAX_US));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(counters: &[u64]) -> (Counts, CounterWindow) {
        let mut w = CounterWindow::new(counters[0]);
        let mut c = Counts {
            received: 1,
            expected: 1,
            ..Counts::default()
        };
        for &n in &counters[1..] {
            match w.record(n) {
                Arrival::New { expected, late } => {
                    c.received += 1;
                    c.expected += expected;
                    c.reordered += u64::from(late);
                }
                Arrival::Duplicate => c.duplicates += 1,
                Arrival::TooLate => c.reordered += 1,
            }
        }
        (c, w)
    }

    #[test]
    fn in_order_stream_is_clean() {
        let counters: Vec<u64> = (100..200).collect();
        let (c, w) = feed(&counters);
        assert_eq!((c.received, c.expected, c.lost()), (100, 100, 0));
        assert_eq!((c.duplicates, c.reordered), (0, 0));
        assert_eq!(w.span(), 100);
    }

    #[test]
    fn gaps_duplicates_and_reordering() {
        // 5 and 6 lost; 3 late; 3 again a duplicate; 8 duplicated.
        let (c, _) = feed(&[1, 2, 4, 3, 3, 7, 8, 8]);
        assert_eq!(c.expected, 8, "1..=8");
        assert_eq!(c.received, 6);
        assert_eq!(c.lost(), 2);
        assert_eq!(c.duplicates, 2);
        assert_eq!(c.reordered, 1);
    }

    #[test]
    fn a_late_packet_before_the_first_extends_the_span() {
        let (c, w) = feed(&[10, 11, 9, 12]);
        assert_eq!((c.received, c.expected, c.lost()), (4, 4, 0));
        assert_eq!(c.reordered, 1);
        assert_eq!(w.span(), 4);
    }

    #[test]
    fn window_reuse_after_a_long_gap_is_not_a_duplicate() {
        // After a jump beyond the window, stale bits must not make new counters look seen.
        let (c, _) = feed(&[0, 1, 2, 5000, 5000 - WINDOW + 1, 5001]);
        assert_eq!(c.duplicates, 0);
        assert_eq!(c.received, 6);
        // Bits between the old and new highest are cleared on a short advance too.
        let (c, _) = feed(&[0, WINDOW - 1, WINDOW + 1, WINDOW]);
        assert_eq!(c.duplicates, 0);
        assert_eq!(c.reordered, 1);
    }

    #[test]
    fn too_late_packets_are_reordered_not_received() {
        let (c, _) = feed(&[0, 1, WINDOW + 10, 2]);
        assert_eq!(c.reordered, 1);
        assert_eq!(c.received, 3);
    }

    fn info(layer: u8, publisher: u32, n: u64, sent_us: u64) -> PatternHeader {
        PatternHeader {
            kind: PayloadKind::Video,
            layer,
            ..PatternHeader::audio(media::counter_base(publisher) + n, 0, 0, sent_us, 0)
        }
    }

    #[test]
    fn source_switches_start_new_windows() {
        let mut s = RxStream::new(1);
        let mut total = Counts::default();
        for n in 0..10 {
            total.add(&s.record(&info(2, 0, n, 0), 0));
        }
        // The SFU moves this subscriber to layer 1 (its counters are elsewhere), then to
        // another publisher, then back to layer 2 after a while.
        for n in 500..510 {
            total.add(&s.record(&info(1, 0, n, 0), 0));
        }
        for n in 0..10 {
            total.add(&s.record(&info(1, 5, n, 0), 0));
        }
        for n in 900..910 {
            total.add(&s.record(&info(2, 0, n, 0), 0));
        }
        assert_eq!(s.switches, 3);
        assert_eq!((total.received, total.expected, total.lost()), (40, 40, 0));
        assert_eq!(total.reordered, 0);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut j = JitterEstimator::default();
        // Constant transit: no jitter.
        for i in 0..100 {
            j.record(1000 + i * 20_000, i * 20_000);
        }
        assert!(j.jitter_us() < 1e-9);
        // Transit alternating by 1 ms: jitter converges to 1000 µs.
        let mut j = JitterEstimator::default();
        for i in 0..500_u64 {
            j.record(i * 20_000 + (i % 2) * 1000, i * 20_000);
        }
        assert!((j.jitter_us() - 1000.0).abs() < 1.0, "{}", j.jitter_us());
        // One step of D: J = D/16.
        let mut j = JitterEstimator::default();
        j.record(100, 0);
        j.record(20_100 + 1600, 20_000);
        assert!((j.jitter_us() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn intervals_merge() {
        let mut a = Interval::new();
        a.counts.received = 10;
        a.counts.expected = 11;
        record_latency(&mut a.latency, 500);
        let mut b = Interval::new();
        b.counts.received = 5;
        b.counts.expected = 5;
        record_latency(&mut b.latency, 0);
        record_latency(&mut b.latency, u64::MAX);
        a.add(&b);
        assert_eq!(a.counts.lost(), 1);
        assert!((a.loss_pct() - 100.0 / 16.0).abs() < 1e-9);
        assert_eq!(a.latency.len(), 3);
        let mut t = ShardTotals::new();
        t.add_interval(&a);
        assert_eq!(t.counts.received, 15);
    }

    #[test]
    fn path_figures_are_kept_apart_and_merge() {
        let arrival = Counts {
            received: 1,
            expected: 1,
            ..Counts::default()
        };
        let gap = Counts {
            expected: 2,
            ..Counts::default()
        };
        let mut a = Interval::new();
        assert!(a.path_mut(Path::Unknown).is_none());
        for us in [1_000, 2_000] {
            let local = a.path_mut(Path::Local).expect("counted");
            local.record(&arrival, Some(us));
        }
        assert!(
            a.relayed.latency().is_none(),
            "made at the first sample only"
        );
        let mut b = Interval::new();
        let relayed = b.path_mut(Path::Relayed).expect("counted");
        relayed.record(&arrival, Some(9_000));
        relayed.record(&gap, None);
        a.add(&b);
        let mut t = ShardTotals::new();
        t.add_interval(&a);
        let mut other = ShardTotals::new();
        other.add_interval(&b);
        t.add(&other);
        assert_eq!(t.local.counts.received, 2);
        assert_eq!(t.local.latency().map(Histogram::len), Some(2));
        assert_eq!(
            t.relayed.counts.received, 2,
            "b, once via a and once directly"
        );
        assert_eq!(t.relayed.counts.lost(), 4, "expected 1 + 2, twice");
        let relayed = t.relayed.latency().expect("samples");
        assert_eq!(relayed.len(), 2);
        assert!(relayed.min() >= 8_990, "{}", relayed.min());
    }

    #[test]
    fn fanout_spread_is_first_to_last_arrival_across_shards_of_sampled_packets() {
        let mut shard_a = ShardTotals::new();
        let mut shard_b = ShardTotals::new();
        let mut a = Interval::new();
        let mut b = Interval::new();
        let video = |spread: &mut FanoutSpread, counter, at| {
            spread.record(PayloadKind::Video, 0, counter, at)
        };
        // Packet 8 (sampled) reaches three subscribers over two shards, 1.5 ms apart.
        video(&mut a.spread, 8, 10_000);
        video(&mut a.spread, 8, 10_400);
        video(&mut b.spread, 8, 11_500);
        // Audio packet 8 and video packet 8 of layer 1 are other packets, sent at other
        // times: they reach one subscriber each, so they add no spread.
        a.spread.record(PayloadKind::Audio, 0, 8, 5_000_000);
        b.spread.record(PayloadKind::Video, 1, 8, 9_000_000);
        // Packet 12 (sampled) reaches one subscriber only: no spread.
        video(&mut a.spread, 12, 20_000);
        // Packet 9 is not sampled.
        video(&mut a.spread, 9, 30_000);
        video(&mut b.spread, 9, 39_000);
        shard_a.add_interval(&a);
        shard_b.add_interval(&b);
        let mut totals = ShardTotals::new();
        totals.add(&shard_a);
        totals.add(&shard_b);
        let h = totals.spread.histogram();
        assert_eq!(h.len(), 1);
        assert!((1_495..=1_505).contains(&h.max()), "{}", h.max());
    }
}
