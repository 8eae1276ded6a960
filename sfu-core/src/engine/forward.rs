//! Forwarding decisions for one subscriber track, as a plain state machine on caller-supplied
//! time: when it may switch to another published track or layer (audio at once, video only
//! at a keyframe), and how sequence numbers and timestamps are rewritten so the subscriber
//! sees one continuous stream across layer switches and publisher changes. *What* a track
//! should follow is the room's answer ([`super::room`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sfu_proto::{Layer, MediaHeader, MediaKind, TrackId, WorkerId};
use str0m::rtp::Vp8Descriptor;

use super::codec::{KEY_IDX_MODULUS, PICTURE_ID_MODULUS, Vp8Picture};
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
    /// Its VP8 payload descriptor, parsed once for every subscriber
    /// ([`super::codec::vp8_descriptor`]); `None` for other codecs.
    pub vp8: Option<Vp8Descriptor>,
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
    /// The VP8 picture fields to write, once a switch has made them differ from the
    /// publisher's; `None`: the payload goes out as it came.
    pub vp8: Option<Vp8Picture>,
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
    /// Added to the current selection's VP8 picture fields (modulo each field's range).
    vp8_delta: Vp8Delta,
    initial_seq: u64,
    last_out: Option<LastOut>,
}

#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u64,
    timestamp: u32,
    at: Instant,
    /// The newest VP8 picture fields sent (each kept from the last packet that had it).
    vp8: Vp8Picture,
}

/// What a selection's VP8 picture fields are shifted by, so that the subscriber's pictures
/// keep counting up by one across switches: PictureID modulo 2^15, TL0PICIDX modulo 2^8,
/// KEYIDX modulo 2^5.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Vp8Delta {
    picture_id: u16,
    tl0_pic_idx: u8,
    key_idx: u8,
}

impl Vp8Delta {
    /// The shift that makes `first` (a switch's first packet, which starts a keyframe) the
    /// picture after `last`. A field `last` never had starts where the publisher's is.
    fn continuing(last: Vp8Picture, first: Vp8Picture) -> Self {
        let step = |last: Option<u16>, first: Option<u16>, modulus: u16| match (last, first) {
            (Some(l), Some(f)) => {
                let m = u32::from(modulus);
                ((u32::from(l) + 1 + m - u32::from(f) % m) % m) as u16
            }
            _ => 0,
        };
        Self {
            picture_id: step(last.picture_id, first.picture_id, PICTURE_ID_MODULUS),
            tl0_pic_idx: step(
                last.tl0_pic_idx.map(u16::from),
                first.tl0_pic_idx.map(u16::from),
                256,
            ) as u8,
            key_idx: step(
                last.key_idx.map(u16::from),
                first.key_idx.map(u16::from),
                u16::from(KEY_IDX_MODULUS),
            ) as u8,
        }
    }

    fn apply(self, p: Vp8Picture) -> Vp8Picture {
        Vp8Picture {
            // Both terms are below 2^15: the sum fits.
            picture_id: p
                .picture_id
                .map(|id| (id % PICTURE_ID_MODULUS + self.picture_id) % PICTURE_ID_MODULUS),
            tl0_pic_idx: p.tl0_pic_idx.map(|i| i.wrapping_add(self.tl0_pic_idx)),
            key_idx: p
                .key_idx
                .map(|i| (i % KEY_IDX_MODULUS + self.key_idx) % KEY_IDX_MODULUS),
        }
    }
}

impl Vp8Picture {
    /// `newer`'s fields where it has them, this one's elsewhere.
    fn updated(self, newer: Vp8Picture) -> Self {
        Self {
            picture_id: newer.picture_id.or(self.picture_id),
            tl0_pic_idx: newer.tl0_pic_idx.or(self.tl0_pic_idx),
            key_idx: newer.key_idx.or(self.key_idx),
        }
    }
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
            vp8_delta: Vp8Delta::default(),
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
        self.vp8_delta = match (self.last_out, &packet.vp8) {
            (Some(last), Some(d)) => Vp8Delta::continuing(last.vp8, Vp8Picture::of(d)),
            _ => Vp8Delta::default(),
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
        let picture = packet.vp8.map(|d| self.vp8_delta.apply(Vp8Picture::of(&d)));
        if self.last_out.is_none_or(|l| seq > l.seq) {
            let previous = self.last_out.map(|l| l.vp8).unwrap_or_default();
            self.last_out = Some(LastOut {
                seq,
                timestamp,
                at: packet.arrival,
                vp8: picture.map_or(previous, |p| previous.updated(p)),
            });
        }
        Some(Rewritten {
            seq,
            timestamp,
            // Unshifted fields are the publisher's own: nothing to patch.
            vp8: picture.filter(|_| self.vp8_delta != Vp8Delta::default()),
        })
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
        /// The source's own VP8 picture numbering (one picture per packet here).
        picture_id: u16,
        tl0: u8,
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
                // Every source numbers its pictures far from the others, as simulcast
                // encoders do.
                picture_id: (seq as u16).wrapping_mul(7919) % 32_768,
                tl0: seq as u8 ^ 0x5a,
            }
        }

        fn next(&mut self, at: Instant, keyframe: bool) -> MediaPacket {
            self.seq += 1;
            self.ts = self.ts.wrapping_add(3000);
            self.picture_id = (self.picture_id + 1) % 32_768;
            self.tl0 = self.tl0.wrapping_add(1);
            // RFC 7741 descriptor: X and S; I, L and T; a 15-bit PictureID; TL0PICIDX; TID 0;
            // then the VP8 payload header (P=0 on a keyframe).
            let payload: Arc<[u8]> = Arc::from(
                &[
                    0x90,
                    0xe0,
                    0x80 | (self.picture_id >> 8) as u8,
                    self.picture_id as u8,
                    self.tl0,
                    0x00,
                    u8::from(!keyframe),
                ][..],
            );
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
                vp8: super::super::codec::vp8_descriptor(Codec::Vp8, &payload),
                payload,
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
        // The VP8 fields of each packet sent, as the subscriber sees them: the rewrite, or
        // the publisher's own.
        let mut pictures = vec![];
        let mut send = |sub: &mut SubscriberTrack, p: MediaPacket| {
            let d = sub.deliver(&p);
            if let Some(r) = d.forward {
                out.push(r);
                pictures.push(
                    r.vp8
                        .unwrap_or_else(|| Vp8Picture::of(&p.vp8.expect("vp8"))),
                );
            }
            d
        };
        let mut t = t0;
        // Only the low layer sends at first.
        for i in 0..5 {
            t += Duration::from_millis(33);
            send(&mut sub, low.next(t, i == 0));
        }
        // The high layer starts: the forwarder asks for a keyframe on it and keeps the low
        // layer flowing until one arrives.
        let mut asked = false;
        for i in 0..6 {
            t += Duration::from_millis(33);
            let d = send(&mut sub, high.next(t, i == 3));
            asked |= d.keyframe_request.is_some_and(|s| s.layer == Layer(2));
            send(&mut sub, low.next(t, false));
        }
        assert!(asked, "a keyframe request for the high layer");
        assert_eq!(sub.current().map(|s| s.layer), Some(Layer(2)));
        for pair in out.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "contiguous: {out:?}");
            let step = pair[1].timestamp.wrapping_sub(pair[0].timestamp);
            assert!(step > 0 && step < 10_000, "monotonic time: {out:?}");
        }
        // The pictures count up by one across the switch: the low layer's went out as they
        // were, the high layer's are shifted onto them.
        assert!(out.iter().take(8).all(|r| r.vp8.is_none()), "{out:?}");
        assert!(out.iter().skip(8).all(|r| r.vp8.is_some()), "{out:?}");
        for pair in pictures.windows(2) {
            assert_eq!(
                pair[1].picture_id,
                pair[0].picture_id.map(|id| (id + 1) % 32_768),
                "{pictures:?}"
            );
            assert_eq!(
                pair[1].tl0_pic_idx,
                pair[0].tl0_pic_idx.map(|i| i.wrapping_add(1)),
                "{pictures:?}"
            );
        }
    }

    #[test]
    fn vp8_pictures_continue_modulo_their_field_sizes() {
        let last = Vp8Picture {
            picture_id: Some(32_767),
            tl0_pic_idx: Some(255),
            key_idx: Some(31),
        };
        let first = Vp8Picture {
            picture_id: Some(12_345),
            tl0_pic_idx: Some(3),
            key_idx: Some(9),
        };
        let delta = Vp8Delta::continuing(last, first);
        let next = |p: Vp8Picture| Vp8Picture {
            picture_id: p.picture_id.map(|i| (i + 1) % 32_768),
            tl0_pic_idx: p.tl0_pic_idx.map(|i| i.wrapping_add(1)),
            key_idx: p.key_idx.map(|i| (i + 1) % 32),
        };
        assert_eq!(
            delta.apply(first),
            Vp8Picture {
                picture_id: Some(0),
                tl0_pic_idx: Some(0),
                key_idx: Some(0)
            }
        );
        // And keep counting with the source.
        assert_eq!(delta.apply(next(first)), next(delta.apply(first)));
        // A field the subscriber never saw starts where the publisher's is.
        let fresh = Vp8Delta::continuing(Vp8Picture::default(), first);
        assert_eq!(fresh.apply(first), first);
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
        // B's first picture follows A's last.
        let a_last = (a.picture_id + 32_768 - 1) % 32_768;
        assert_eq!(
            out[3].vp8.and_then(|p| p.picture_id),
            Some((a_last + 1) % 32_768)
        );
    }
}
