//! Forwarding decisions, as plain state machines on caller-supplied time: which source and
//! simulcast layer a subscriber's track follows ([`SourceTracker`]), when it may switch (only
//! at a keyframe), and how sequence numbers and timestamps are rewritten so the subscriber sees
//! one continuous stream across layer switches and publisher changes ([`TrackForwarder`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::{Codec, FormatParams};
use str0m::media::MediaKind;

use crate::ids::{Layer, ParticipantId, RoomId, SessionId, WorkerId};

/// A source layer is considered stopped after this long without packets.
pub const LAYER_TIMEOUT: Duration = Duration::from_millis(500);
/// A source (publisher track) is considered gone after this long without packets.
pub const SOURCE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Minimum spacing of keyframe requests for one pending switch.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// One decrypted RTP packet from a publisher, shared by every subscriber and worker that
/// forwards it. The payload is the publisher's bytes, never copied.
#[derive(Debug, Clone)]
pub struct MediaPacket {
    pub room: RoomId,
    pub source: SessionId,
    /// The publisher's participant, if known.
    pub participant: Option<ParticipantId>,
    pub source_worker: WorkerId,
    pub kind: MediaKind,
    pub layer: Layer,
    pub codec: Codec,
    /// The publisher's format parameters (H264 packetization mode and profile, ...): a
    /// subscriber gets the payload type it negotiated for the same format.
    pub format: FormatParams,
    pub clock_rate: u32,
    /// The publisher's extended sequence number for this (source, layer) stream.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// First packet of a keyframe.
    pub keyframe: bool,
    pub payload: Arc<[u8]>,
    pub arrival: Instant,
    /// RFC 6464 audio level (-dBov) and voice activity flag.
    pub audio_level: Option<(i8, bool)>,
}

/// A source track at one layer: what a subscriber's track is following.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Selection {
    pub source: SessionId,
    pub layer: Layer,
}

#[derive(Debug, Default, Clone, Copy)]
struct SourceActivity {
    layers: [Option<Instant>; Layer::COUNT],
    participant: Option<ParticipantId>,
}

impl SourceActivity {
    fn last_seen(&self) -> Option<Instant> {
        self.layers.iter().flatten().max().copied()
    }
}

/// Which sources of one room are sending, per kind and layer, as seen by one worker.
#[derive(Debug, Default)]
pub struct SourceTracker {
    sources: HashMap<(SessionId, MediaKindKey), SourceActivity>,
}

/// `MediaKind` as a hashable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKindKey {
    Audio,
    Video,
}

impl From<MediaKind> for MediaKindKey {
    fn from(kind: MediaKind) -> Self {
        match kind {
            MediaKind::Audio => MediaKindKey::Audio,
            MediaKind::Video => MediaKindKey::Video,
        }
    }
}

impl SourceTracker {
    /// Record a packet's arrival.
    pub fn observe(&mut self, packet: &MediaPacket) {
        let entry = self
            .sources
            .entry((packet.source, packet.kind.into()))
            .or_default();
        entry.layers[packet.layer.index()] = Some(packet.arrival);
        entry.participant = packet.participant;
    }

    /// Forget a source (its session ended).
    pub fn remove_source(&mut self, source: SessionId) {
        self.sources.retain(|(s, _), _| *s != source);
    }

    /// Drop state of sources silent for long; call now and then.
    pub fn prune(&mut self, now: Instant) {
        self.sources.retain(|_, a| {
            a.last_seen()
                .is_some_and(|t| now.saturating_duration_since(t) < SOURCE_TIMEOUT * 5)
        });
    }

    /// What a subscriber's track of `kind` should follow now: the newest source still sending
    /// that is not the subscriber's own participant (`exclude`), at its highest layer still
    /// sending (capped at `max_layer`).
    pub fn target(
        &self,
        kind: MediaKind,
        max_layer: Layer,
        exclude: Option<ParticipantId>,
        now: Instant,
    ) -> Option<Target> {
        let kind = MediaKindKey::from(kind);
        let alive = |t: &Option<Instant>, timeout| {
            t.is_some_and(|t| now.saturating_duration_since(t) < timeout)
        };
        let (source, activity) = self
            .sources
            .iter()
            .filter(|((_, k), a)| {
                *k == kind
                    && alive(&a.last_seen(), SOURCE_TIMEOUT)
                    && (exclude.is_none() || a.participant != exclude)
            })
            .max_by_key(|((s, _), _)| *s)
            .map(|((s, _), a)| (*s, a))?;
        let layer = (0..=max_layer.index())
            .rev()
            .find(|&l| alive(&activity.layers[l], LAYER_TIMEOUT))
            // Every layer is briefly silent (e.g. a frame-rate dip): stay on the newest one.
            .or_else(|| {
                (0..Layer::COUNT)
                    .filter(|&l| activity.layers[l].is_some())
                    .max_by_key(|&l| activity.layers[l])
            })?;
        Some(Target {
            selection: Selection {
                source,
                layer: Layer(layer as u8),
            },
            participant: activity.participant,
        })
    }
}

/// A [`SourceTracker::target`] answer: what to follow, and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub selection: Selection,
    pub participant: Option<ParticipantId>,
}

/// Rewritten header fields for one forwarded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Extended sequence number on the subscriber's stream.
    pub seq: u64,
    pub timestamp: u32,
}

/// What to do with one packet for one subscriber track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub forward: Option<Rewritten>,
    /// Ask this source layer for a keyframe (a switch is waiting for one).
    pub keyframe_request: Option<Selection>,
}

/// One subscriber track's view of the room: what it follows and how it rewrites.
#[derive(Debug)]
pub struct TrackForwarder {
    kind: MediaKind,
    max_layer: Layer,
    current: Option<Selection>,
    pending: Option<Selection>,
    last_keyframe_request: Option<Instant>,
    /// Outgoing seq = incoming seq + `seq_delta` for the current selection.
    seq_delta: i64,
    /// Packets of the current selection older than the switch point are dropped: their
    /// rewritten numbers would collide with the previous selection's.
    switch_in_seq: u64,
    ts_delta: u32,
    initial_seq: u64,
    last_out: Option<LastOut>,
}

#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u64,
    timestamp: u32,
    at: Instant,
}

impl TrackForwarder {
    /// `initial_seq` is the first outgoing sequence number (random, below 2^15 so the SRTP
    /// rollover counter starts at 0 on both sides).
    pub fn new(kind: MediaKind, initial_seq: u16) -> Self {
        Self {
            kind,
            max_layer: Layer(Layer::COUNT as u8 - 1),
            current: None,
            pending: None,
            last_keyframe_request: None,
            seq_delta: 0,
            switch_in_seq: 0,
            ts_delta: 0,
            initial_seq: u64::from(initial_seq & 0x7fff),
            last_out: None,
        }
    }

    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    /// The selection packets are forwarded from.
    pub fn current(&self) -> Option<Selection> {
        self.current
    }

    /// Highest layer this subscriber wants.
    pub fn set_max_layer(&mut self, layer: Layer) {
        self.max_layer = layer;
    }

    pub fn max_layer(&self) -> Layer {
        self.max_layer
    }

    /// Decide about `packet`, given what the room says this track should follow (`target`,
    /// from [`SourceTracker::target`]).
    pub fn handle_packet(
        &mut self,
        packet: &MediaPacket,
        target: Option<Selection>,
        now: Instant,
    ) -> Decision {
        let mut keyframe_request = None;
        if target.is_some() && target != self.current {
            if self.pending != target {
                self.pending = target;
                self.last_keyframe_request = None;
            }
        } else if target.is_some() {
            self.pending = None;
        }

        let this = Selection {
            source: packet.source,
            layer: packet.layer,
        };
        if let Some(pending) = self.pending {
            let can_switch = self.kind == MediaKind::Audio || packet.keyframe;
            if this == pending && can_switch {
                self.switch_to(packet);
            } else if self.kind == MediaKind::Video
                && self
                    .last_keyframe_request
                    .is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_REQUEST_INTERVAL)
            {
                self.last_keyframe_request = Some(now);
                keyframe_request = Some(pending);
            }
        }

        let forward = (self.current == Some(this))
            .then(|| self.rewrite(packet))
            .flatten();
        Decision {
            forward,
            keyframe_request,
        }
    }

    /// The source ended: stop following it so the next one is picked up at once.
    pub fn forget_source(&mut self, source: SessionId) {
        if self.current.is_some_and(|c| c.source == source) {
            self.current = None;
        }
        if self.pending.is_some_and(|p| p.source == source) {
            self.pending = None;
        }
    }

    fn switch_to(&mut self, packet: &MediaPacket) {
        let out_seq = self.last_out.map_or(self.initial_seq, |l| l.seq + 1);
        self.seq_delta = out_seq as i64 - packet.seq as i64;
        self.switch_in_seq = packet.seq;
        self.ts_delta = match self.last_out {
            None => 0,
            Some(last) => {
                // Continue the subscriber's clock by the real time that passed since the last
                // packet it got, so its jitter buffer sees a plausible gap, never a jump back.
                let elapsed = packet.arrival.saturating_duration_since(last.at);
                let ticks = (elapsed.as_secs_f64() * f64::from(packet.clock_rate)) as u64;
                let out_ts = last
                    .timestamp
                    .wrapping_add(ticks.clamp(1, u64::from(u32::MAX)) as u32);
                out_ts.wrapping_sub(packet.timestamp)
            }
        };
        self.current = Some(Selection {
            source: packet.source,
            layer: packet.layer,
        });
        self.pending = None;
    }

    fn rewrite(&mut self, packet: &MediaPacket) -> Option<Rewritten> {
        if packet.seq < self.switch_in_seq {
            return None;
        }
        let seq = u64::try_from(packet.seq as i64 + self.seq_delta).ok()?;
        let timestamp = packet.timestamp.wrapping_add(self.ts_delta);
        if self.last_out.is_none_or(|l| seq > l.seq) {
            self.last_out = Some(LastOut {
                seq,
                timestamp,
                at: packet.arrival,
            });
        }
        Some(Rewritten { seq, timestamp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Source {
        id: SessionId,
        layer: Layer,
        seq: u64,
        ts: u32,
    }

    impl Source {
        fn new(id: u64, layer: u8, seq: u64, ts: u32) -> Self {
            Self {
                id: SessionId(id),
                layer: Layer(layer),
                seq,
                ts,
            }
        }

        fn next(&mut self, at: Instant, keyframe: bool) -> MediaPacket {
            self.seq += 1;
            self.ts = self.ts.wrapping_add(3000);
            MediaPacket {
                room: RoomId(1),
                source: self.id,
                participant: Some(ParticipantId(self.id.0)),
                source_worker: WorkerId(0),
                kind: MediaKind::Video,
                layer: self.layer,
                codec: Codec::Vp8,
                format: FormatParams::default(),
                clock_rate: 90_000,
                seq: self.seq,
                timestamp: self.ts,
                marker: true,
                keyframe,
                payload: Arc::from(&[0x10u8, 0x00][..]),
                arrival: at,
                audio_level: None,
            }
        }
    }

    /// One subscriber's video track on a worker, driven as the worker drives it: every packet
    /// is first observed by the room's tracker, then decided on against the tracker's target
    /// (highest layer, no participant excluded) at the packet's arrival time.
    struct SubscriberTrack {
        tracker: SourceTracker,
        fwd: TrackForwarder,
    }

    impl SubscriberTrack {
        fn new(initial_seq: u16) -> Self {
            Self {
                tracker: SourceTracker::default(),
                fwd: TrackForwarder::new(MediaKind::Video, initial_seq),
            }
        }

        fn deliver(&mut self, p: &MediaPacket) -> Decision {
            let now = p.arrival;
            self.tracker.observe(p);
            let target = self
                .tracker
                .target(MediaKind::Video, Layer(2), None, now)
                .map(|t| t.selection);
            self.fwd.handle_packet(p, target, now)
        }

        fn current(&self) -> Option<Selection> {
            self.fwd.current()
        }
    }

    #[test]
    fn waits_for_a_keyframe_then_forwards_contiguously() {
        let t0 = Instant::now();
        let mut sub = SubscriberTrack::new(100);
        let mut src = Source::new(1, 2, 5000, 1000);

        let d = sub.deliver(&src.next(t0, false));
        assert_eq!(d.forward, None);
        assert_eq!(
            d.keyframe_request,
            Some(Selection {
                source: SessionId(1),
                layer: Layer(2)
            })
        );

        // A second delta frame right away: no repeated keyframe request (throttled).
        let t1 = t0 + Duration::from_millis(33);
        let d = sub.deliver(&src.next(t1, false));
        assert_eq!(
            d,
            Decision {
                forward: None,
                keyframe_request: None
            }
        );

        let mut seqs = vec![];
        for i in 0..10 {
            let t = t1 + Duration::from_millis(33 * (i + 1));
            let d = sub.deliver(&src.next(t, i == 0));
            seqs.push(d.forward.expect("forwarded after the keyframe").seq);
        }
        assert_eq!(seqs, (100..110).collect::<Vec<_>>());
    }

    #[test]
    fn layer_switch_keeps_sequence_and_time_continuous() {
        let t0 = Instant::now();
        let mut sub = SubscriberTrack::new(0);
        let mut low = Source::new(1, 0, 100, 0);
        let mut high = Source::new(1, 2, 90_000, 4_000_000_000);

        let mut out = vec![];
        let mut t = t0;
        // Only the low layer sends at first.
        for i in 0..5 {
            t += Duration::from_millis(33);
            out.extend(sub.deliver(&low.next(t, i == 0)).forward);
        }
        assert_eq!(out.len(), 5);
        // The high layer starts: the forwarder asks for a keyframe on it and keeps the low
        // layer flowing until one arrives.
        let mut asked = false;
        for i in 0..6 {
            t += Duration::from_millis(33);
            let d = sub.deliver(&high.next(t, i == 3));
            asked |= d.keyframe_request.is_some_and(|s| s.layer == Layer(2));
            out.extend(d.forward);
            out.extend(sub.deliver(&low.next(t, false)).forward);
        }
        assert!(asked, "a keyframe request for the high layer");
        assert_eq!(sub.current().map(|s| s.layer), Some(Layer(2)));
        for pair in out.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "contiguous: {out:?}");
            let step = pair[1].timestamp.wrapping_sub(pair[0].timestamp);
            assert!(step > 0 && step < 10_000, "monotonic time: {out:?}");
        }
    }

    #[test]
    fn falls_back_when_the_chosen_layer_stops() {
        let t0 = Instant::now();
        let mut sub = SubscriberTrack::new(0);
        let mut low = Source::new(1, 0, 0, 0);
        let mut high = Source::new(1, 2, 0, 0);
        let mut t = t0;
        for i in 0..3 {
            t += Duration::from_millis(33);
            for src in [&mut low, &mut high] {
                sub.deliver(&src.next(t, i == 0));
            }
        }
        assert_eq!(sub.current().map(|s| s.layer), Some(Layer(2)));
        // High stops; after the layer timeout a low keyframe makes the forwarder fall back.
        t += LAYER_TIMEOUT + Duration::from_millis(50);
        let d = sub.deliver(&low.next(t, false));
        assert_eq!(d.keyframe_request.map(|s| s.layer), Some(Layer(0)));
        t += Duration::from_millis(33);
        let d = sub.deliver(&low.next(t, true));
        assert!(d.forward.is_some());
        assert_eq!(sub.current().map(|s| s.layer), Some(Layer(0)));
    }

    #[test]
    fn a_subscriber_never_follows_its_own_participant() {
        let t0 = Instant::now();
        let mut tracker = SourceTracker::default();
        let mut a = Source::new(1, 0, 0, 0);
        let mut b = Source::new(2, 0, 0, 0);
        tracker.observe(&a.next(t0, true));
        tracker.observe(&b.next(t0, true));
        let newest = tracker.target(MediaKind::Video, Layer(2), None, t0);
        assert_eq!(newest.map(|t| t.selection.source), Some(SessionId(2)));
        // Participant 2 (the newest publisher) watching: it gets participant 1's media.
        let own = Some(ParticipantId(2));
        let other = tracker.target(MediaKind::Video, Layer(2), own, t0);
        assert_eq!(other.map(|t| t.selection.source), Some(SessionId(1)));
        // Alone in the room: nothing to follow.
        tracker.remove_source(SessionId(1));
        assert_eq!(tracker.target(MediaKind::Video, Layer(2), own, t0), None);
    }

    #[test]
    fn newer_publisher_takes_over_and_stale_packets_are_dropped() {
        let t0 = Instant::now();
        let mut sub = SubscriberTrack::new(10);
        let mut a = Source::new(1, 0, 0, 0);
        let mut b = Source::new(2, 0, 700, 0);
        let mut t = t0;
        let mut out = vec![];
        for i in 0..3 {
            t += Duration::from_millis(33);
            out.extend(sub.deliver(&a.next(t, i == 0)).forward);
        }
        t += Duration::from_millis(33);
        out.extend(sub.deliver(&b.next(t, true)).forward);
        assert_eq!(sub.current().map(|s| s.source), Some(SessionId(2)));
        // A late packet from A is no longer forwarded.
        assert_eq!(sub.deliver(&a.next(t, false)).forward, None);
        assert_eq!(
            out.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![10, 11, 12, 13]
        );
    }
}
