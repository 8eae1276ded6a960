//! Forwarding decisions for one subscriber track, as a plain state machine on caller-supplied
//! time: when it may switch to another published track or layer (audio at once, video only
//! at a keyframe), and how sequence numbers and timestamps are rewritten so the subscriber
//! sees one continuous stream across layer switches and publisher changes. *What* a track
//! should follow is the room's answer ([`super::room`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sfu_proto::{Layer, MediaHeader, MediaKind, TrackId, WorkerId};

use crate::ids::RoomKey;

/// Minimum spacing of keyframe requests for one pending switch.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// One decrypted RTP packet of a published track, shared by every subscriber and worker that
/// forwards it. The payload is the publisher's bytes, never copied; the header is the wire
/// form a relayed track carries too.
#[derive(Debug, Clone)]
pub struct MediaPacket {
    pub room: RoomKey,
    /// The worker whose session published it.
    pub origin: WorkerId,
    pub header: MediaHeader,
    pub payload: Arc<[u8]>,
    /// When the node received it (this node's clock; never sent anywhere).
    pub arrival: Instant,
}

/// A published track at one layer: what a subscriber's track is following.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Selection {
    pub track: TrackId,
    pub layer: Layer,
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

    /// Decide about `packet`, given what the room says this track should follow (`target`,
    /// from [`Room::target`](super::room::Room::target)).
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
            track: packet.header.track,
            layer: packet.header.layer,
        };
        if let Some(pending) = self.pending {
            let can_switch = self.kind == MediaKind::Audio || packet.header.keyframe;
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

    /// The track ended: stop following it so the next one is picked up at once.
    pub fn forget_track(&mut self, track: TrackId) {
        if self.current.is_some_and(|c| c.track == track) {
            self.current = None;
        }
        if self.pending.is_some_and(|p| p.track == track) {
            self.pending = None;
        }
    }

    /// Stop following anything (unsubscribed or paused); the next selection starts at a
    /// keyframe and continues the outgoing sequence.
    pub fn reset(&mut self) {
        self.current = None;
        self.pending = None;
    }

    fn switch_to(&mut self, packet: &MediaPacket) {
        let header = &packet.header;
        let out_seq = self.last_out.map_or(self.initial_seq, |l| l.seq + 1);
        self.seq_delta = out_seq as i64 - header.seq as i64;
        self.switch_in_seq = header.seq;
        self.ts_delta = match self.last_out {
            None => 0,
            Some(last) => {
                // Continue the subscriber's clock by the real time that passed since the last
                // packet it got, so its jitter buffer sees a plausible gap, never a jump back.
                let elapsed = packet.arrival.saturating_duration_since(last.at);
                let ticks = (elapsed.as_secs_f64() * f64::from(header.clock_rate)) as u64;
                let out_ts = last
                    .timestamp
                    .wrapping_add(ticks.clamp(1, u64::from(u32::MAX)) as u32);
                out_ts.wrapping_sub(header.timestamp)
            }
        };
        self.current = Some(Selection {
            track: header.track,
            layer: header.layer,
        });
        self.pending = None;
    }

    fn rewrite(&mut self, packet: &MediaPacket) -> Option<Rewritten> {
        let header = &packet.header;
        if header.seq < self.switch_in_seq {
            return None;
        }
        let seq = u64::try_from(header.seq as i64 + self.seq_delta).ok()?;
        let timestamp = header.timestamp.wrapping_add(self.ts_delta);
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
// Tests take a real instant as the origin of their simulated time.
#[allow(clippy::disallowed_methods)]
mod tests {
    use sfu_proto::{Codec, FormatParams, ParticipantId, SessionId};

    use super::super::room::{LAYER_TIMEOUT, PublishedTrack, Room, Subscription, Want};
    use super::*;

    struct Source {
        track: TrackId,
        layer: Layer,
        seq: u64,
        ts: u32,
    }

    impl Source {
        fn new(id: u128, layer: u8, seq: u64, ts: u32) -> Self {
            Self {
                track: TrackId {
                    session: SessionId::from_u128(id),
                    index: 0,
                },
                layer: Layer(layer),
                seq,
                ts,
            }
        }

        fn next(&mut self, at: Instant, keyframe: bool) -> MediaPacket {
            self.seq += 1;
            self.ts = self.ts.wrapping_add(3000);
            MediaPacket {
                room: RoomKey(1),
                origin: WorkerId(0),
                header: MediaHeader {
                    track: self.track,
                    participant: ParticipantId(self.track.session.as_u128() as u64),
                    kind: MediaKind::Video,
                    layer: self.layer,
                    codec: Codec::Vp8,
                    format: FormatParams::default(),
                    clock_rate: 90_000,
                    seq: self.seq,
                    timestamp: self.ts,
                    marker: true,
                    keyframe,
                    audio_level: None,
                },
                payload: Arc::from(&[0x10u8, 0x00][..]),
                arrival: at,
            }
        }
    }

    /// One subscriber's video track on a worker, driven as the engine drives it: every packet
    /// is first observed by the room, then decided on against the room's target (newest other
    /// publisher, highest layer) at the packet's arrival time.
    struct SubscriberTrack {
        room: Room,
        fwd: TrackForwarder,
    }

    impl SubscriberTrack {
        fn new(initial_seq: u16) -> Self {
            Self {
                room: Room::new("r".parse().expect("room"), LAYER_TIMEOUT),
                fwd: TrackForwarder::new(MediaKind::Video, initial_seq),
            }
        }

        fn deliver(&mut self, p: &MediaPacket) -> Decision {
            let now = p.arrival;
            let h = &p.header;
            if self.room.track(h.track).is_none() {
                let order = h.track.session.as_u128() as u64;
                self.room.publish(PublishedTrack::new(
                    h.track,
                    h.participant,
                    h.kind,
                    order,
                    WorkerId(0),
                ));
            }
            self.room.observe(h, p.payload.len(), now);
            let target = self
                .room
                .target(
                    MediaKind::Video,
                    &Subscription::new(Want::NewestOther),
                    None,
                    now,
                )
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
                track: src.track,
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
        assert_eq!(sub.current().map(|s| s.track), Some(b.track));
        // A late packet from A is no longer forwarded.
        assert_eq!(sub.deliver(&a.next(t, false)).forward, None);
        assert_eq!(
            out.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![10, 11, 12, 13]
        );
    }
}
