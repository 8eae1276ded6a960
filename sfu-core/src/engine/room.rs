//! A room as one worker sees it, and the one owner of that view: every track published in the
//! room on this node (by this worker's sessions or by other workers'), what each of its layers
//! costs ([`LayerMeter`]), this worker's sessions in it, which other workers have subscribers
//! in it, and its active speakers. It answers the forwarding question "what should this
//! subscriber track follow now?" for every subscription policy.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sfu_proto::{Layer, MediaHeader, MediaKind, ParticipantId, RoomId, TrackId, WorkerId};

use super::PeerId;
use super::forward::Selection;

/// A track's layer is considered stopped after this long without packets, unless the node
/// says otherwise (`node.layer_timeout_ms`, whose default this is).
pub const LAYER_TIMEOUT: Duration = Duration::from_millis(500);
/// A track is considered silent after this long without packets on any layer; "newest
/// publisher" subscriptions then follow the next newest one still sending.
pub const TRACK_TIMEOUT: Duration = Duration::from_millis(1000);

/// Width of one bucket of a [`LayerMeter`].
pub const RATE_BUCKET: Duration = Duration::from_millis(250);
/// Buckets of a [`LayerMeter`]: the current one fills while the others (1.75 s of traffic,
/// enough to span a keyframe interval's burst) make the rate.
const RATE_BUCKETS: usize = 8;
/// Bytes counted per packet on top of its payload: RTP header and extensions, SRTP tag. The
/// bandwidth estimate covers what the subscriber's link carries, so a layer of small packets
/// (audio) costs noticeably more than its payload.
pub const PACKET_OVERHEAD: usize = 40;

/// What a layer sending but not measured yet (less than [`MIN_MEASURED`] of it) is assumed to
/// cost, by kind: Opus speech, and a typical camera's three simulcast layers. Allocation
/// starts from these rather than from nothing, so a new track is not sent at its top layer to
/// a subscriber that cannot take it before its rate is known.
pub const UNMEASURED_AUDIO_BPS: u64 = 50_000;
pub const UNMEASURED_VIDEO_BPS: [u64; Layer::COUNT] = [150_000, 500_000, 1_500_000];
/// Traffic a layer's rate needs before it replaces the assumption.
pub const MIN_MEASURED: Duration = Duration::from_millis(200);

/// The bitrate of each layer of one track over a sliding window, as this worker sees its
/// packets: fixed buckets of [`RATE_BUCKET`], so recording a packet is an addition (and, once
/// per bucket, clearing the oldest one); nothing allocates.
#[derive(Debug, Clone)]
pub struct LayerMeter {
    /// Start of the bucket being filled.
    start: Option<Instant>,
    current: usize,
    bytes: [[u32; RATE_BUCKETS]; Layer::COUNT],
    /// Each layer's first packet: a layer that started late is not averaged over time it did
    /// not send.
    first: [Option<Instant>; Layer::COUNT],
}

impl Default for LayerMeter {
    fn default() -> Self {
        Self {
            start: None,
            current: 0,
            bytes: [[0; RATE_BUCKETS]; Layer::COUNT],
            first: [None; Layer::COUNT],
        }
    }
}

impl LayerMeter {
    /// A packet of `bytes` on `layer` at `now`.
    pub fn record(&mut self, layer: Layer, bytes: usize, now: Instant) {
        self.advance(now);
        let l = layer.index();
        self.first[l].get_or_insert(now);
        let bucket = &mut self.bytes[l][self.current];
        *bucket = bucket.saturating_add(bytes as u32);
    }

    /// Bits per second of `layer` over the complete buckets, `None` before they span
    /// [`MIN_MEASURED`] of its traffic.
    pub fn rate(&mut self, layer: Layer, now: Instant) -> Option<u64> {
        self.advance(now);
        let l = layer.index();
        let (first, start) = (self.first[l]?, self.start?);
        let span = start
            .saturating_duration_since(first)
            .min(RATE_BUCKET * (RATE_BUCKETS as u32 - 1));
        if span < MIN_MEASURED {
            return None;
        }
        let current = self.current;
        let bytes: u64 = (self.bytes[l].iter().enumerate())
            .filter(|(i, _)| *i != current)
            .map(|(_, b)| u64::from(*b))
            .sum();
        Some(bytes * 8 * 1_000_000 / span.as_micros().max(1) as u64)
    }

    /// Close the buckets that ended before `now`.
    fn advance(&mut self, now: Instant) {
        let Some(start) = self.start else {
            self.start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < RATE_BUCKET {
            return;
        }
        let passed = (elapsed.as_nanos() / RATE_BUCKET.as_nanos()) as usize;
        for _ in 0..passed.min(RATE_BUCKETS) {
            self.current = (self.current + 1) % RATE_BUCKETS;
            for layer in &mut self.bytes {
                layer[self.current] = 0;
            }
        }
        self.start = Some(start + RATE_BUCKET * passed as u32);
    }
}

/// A track published in the room, wherever on this node its publisher lives.
#[derive(Debug, Clone)]
pub struct PublishedTrack {
    pub id: TrackId,
    pub participant: ParticipantId,
    pub kind: MediaKind,
    /// Publication order on this node: larger is newer.
    pub order: u64,
    /// The worker whose session publishes it (keyframe requests go there).
    pub origin: WorkerId,
    last_packet: [Option<Instant>; Layer::COUNT],
    /// Boxed: the track is announced to other workers by value, and the meter is this
    /// worker's own measurement.
    meter: Box<LayerMeter>,
}

impl PublishedTrack {
    pub fn new(
        id: TrackId,
        participant: ParticipantId,
        kind: MediaKind,
        order: u64,
        origin: WorkerId,
    ) -> Self {
        Self {
            id,
            participant,
            kind,
            order,
            origin,
            last_packet: [None; Layer::COUNT],
            meter: Box::default(),
        }
    }

    /// Bits per second of each layer still sending (within `timeout`), measured or, for a
    /// layer that just started, assumed ([`UNMEASURED_VIDEO_BPS`]); `None` for a silent one.
    pub fn layer_rates(&mut self, now: Instant, timeout: Duration) -> [Option<u64>; Layer::COUNT] {
        let mut rates = [None; Layer::COUNT];
        for (l, rate) in rates.iter_mut().enumerate() {
            let alive =
                self.last_packet[l].is_some_and(|t| now.saturating_duration_since(t) < timeout);
            if alive {
                let assumed = match self.kind {
                    MediaKind::Audio => UNMEASURED_AUDIO_BPS,
                    MediaKind::Video => UNMEASURED_VIDEO_BPS[l],
                };
                *rate = Some(self.meter.rate(Layer(l as u8), now).unwrap_or(assumed));
            }
        }
        rates
    }

    fn last_seen(&self) -> Option<Instant> {
        self.last_packet.iter().flatten().max().copied()
    }

    fn sending(&self, now: Instant) -> bool {
        self.last_seen()
            .is_some_and(|t| now.saturating_duration_since(t) < TRACK_TIMEOUT)
    }

    /// The highest layer at most `max` still sending; if every layer is briefly silent (a
    /// frame-rate dip), the one heard from last.
    fn best_layer(&self, max: Layer, now: Instant, timeout: Duration) -> Option<Layer> {
        let alive = |l: usize| {
            self.last_packet[l].is_some_and(|t| now.saturating_duration_since(t) < timeout)
        };
        (0..=max.index())
            .rev()
            .find(|&l| alive(l))
            .or_else(|| {
                (0..Layer::COUNT)
                    .filter(|&l| self.last_packet[l].is_some())
                    .max_by_key(|&l| self.last_packet[l])
            })
            .map(|l| Layer(l as u8))
    }
}

/// What a subscriber track asks the room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Nothing (an explicit-policy slot not subscribed yet, or unsubscribed).
    Nothing,
    /// The newest track of the slot's kind still sending whose participant is not the
    /// subscriber's own (WHEP's policy).
    NewestOther,
    /// The newest track of the slot's kind still sending of this participant.
    NewestOf(ParticipantId),
    /// This track.
    Track(TrackId),
}

/// One subscriber track's subscription: what it wants, at most which layer, paused or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub want: Want,
    pub max_layer: Layer,
    pub paused: bool,
}

impl Subscription {
    pub fn new(want: Want) -> Self {
        Self {
            want,
            max_layer: Layer::HIGH,
            paused: false,
        }
    }
}

/// The highest layer of `track` that any of `subscriptions` (subscriber tracks' kinds and
/// subscriptions) may follow: a paused or empty subscription follows nothing, a "newest
/// other" one may follow any track of its kind, an explicit one its track; each up to its
/// maximum layer. `None` when none may follow the track.
pub fn wanted_layer(
    track: &PublishedTrack,
    subscriptions: impl Iterator<Item = (MediaKind, Subscription)>,
) -> Option<Layer> {
    subscriptions
        .filter(|(kind, s)| {
            *kind == track.kind
                && !s.paused
                && match s.want {
                    Want::Nothing => false,
                    Want::NewestOther => true,
                    Want::NewestOf(p) => p == track.participant,
                    Want::Track(id) => id == track.id,
                }
        })
        .map(|(_, s)| s.max_layer)
        .max()
}

/// A [`Room::target`] answer: what to follow, and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub selection: Selection,
    pub participant: ParticipantId,
}

/// One room on one worker.
#[derive(Debug)]
pub struct Room {
    pub id: RoomId,
    tracks: Vec<PublishedTrack>,
    /// This worker's publisher sessions in the room.
    pub publishers: Vec<PeerId>,
    /// This worker's subscriber sessions in the room.
    pub subscribers: Vec<PeerId>,
    /// Other workers with subscribers in the room: where this worker's tracks' packets go.
    pub remote_workers: Vec<WorkerId>,
    /// A layer silent this long counts as stopped.
    layer_timeout: Duration,
    /// Per relayed track, the highest layer this worker last told the relay endpoint its
    /// subscriptions may follow (absent: none).
    pub relay_layers: HashMap<TrackId, Layer>,
    /// The room's active speakers, loudest first, as its ranking worker last told this one
    /// ([`super::speaker`]): their video is allocated bandwidth first.
    pub speakers: Vec<ParticipantId>,
    /// A layer of a track started sending since the last [`Room::take_layer_started`]: the
    /// subscribers' allocations should take it into account before its top layer flows.
    layer_started: bool,
}

impl Room {
    pub fn new(id: RoomId, layer_timeout: Duration) -> Self {
        Self {
            id,
            tracks: Vec::new(),
            publishers: Vec::new(),
            subscribers: Vec::new(),
            remote_workers: Vec::new(),
            layer_timeout,
            relay_layers: HashMap::new(),
            speakers: Vec::new(),
            layer_started: false,
        }
    }

    /// Nothing left to keep: no tracks, no local sessions, no other worker listening.
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
            && self.publishers.is_empty()
            && self.subscribers.is_empty()
            && self.remote_workers.is_empty()
    }

    pub fn tracks(&self) -> &[PublishedTrack] {
        &self.tracks
    }

    pub fn track(&self, id: TrackId) -> Option<&PublishedTrack> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// A track was published (announced once per worker; a repeat is ignored).
    pub fn publish(&mut self, track: PublishedTrack) {
        if self.track(track.id).is_none() {
            self.tracks.push(track);
        }
    }

    /// A track ended. Returns whether it was known.
    pub fn unpublish(&mut self, id: TrackId) -> bool {
        let before = self.tracks.len();
        self.tracks.retain(|t| t.id != id);
        self.relay_layers.remove(&id);
        self.tracks.len() != before
    }

    /// Record the arrival of a packet with `payload` bytes. `false` for a track the room does
    /// not know (its announcement has not arrived, or it ended): the packet is not forwarded.
    pub fn observe(&mut self, header: &MediaHeader, payload: usize, arrival: Instant) -> bool {
        match self.tracks.iter_mut().find(|t| t.id == header.track) {
            Some(t) => {
                let last = &mut t.last_packet[header.layer.index()];
                self.layer_started |= last.is_none();
                *last = Some(arrival);
                t.meter
                    .record(header.layer, payload + PACKET_OVERHEAD, arrival);
                true
            }
            None => false,
        }
    }

    /// Whether a layer started sending since the last call.
    pub fn take_layer_started(&mut self) -> bool {
        std::mem::take(&mut self.layer_started)
    }

    /// Bits per second of each layer of `track` still sending (see
    /// [`PublishedTrack::layer_rates`]); all `None` for an unknown track.
    pub fn layer_rates(&mut self, track: TrackId, now: Instant) -> [Option<u64>; Layer::COUNT] {
        let timeout = self.layer_timeout;
        self.tracks
            .iter_mut()
            .find(|t| t.id == track)
            .map_or([None; Layer::COUNT], |t| t.layer_rates(now, timeout))
    }

    /// What a subscriber track of `kind` belonging to `own` should follow now.
    pub fn target(
        &self,
        kind: MediaKind,
        subscription: &Subscription,
        own: Option<ParticipantId>,
        now: Instant,
    ) -> Option<Target> {
        if subscription.paused {
            return None;
        }
        let track = match subscription.want {
            Want::Nothing => return None,
            Want::NewestOther => self
                .tracks
                .iter()
                .filter(|t| t.kind == kind && Some(t.participant) != own && t.sending(now))
                .max_by_key(|t| t.order)?,
            Want::NewestOf(p) => self
                .tracks
                .iter()
                .filter(|t| t.kind == kind && t.participant == p && t.sending(now))
                .max_by_key(|t| t.order)?,
            Want::Track(id) => self.track(id).filter(|t| t.kind == kind)?,
        };
        Some(Target {
            selection: Selection {
                track: track.id,
                layer: track.best_layer(subscription.max_layer, now, self.layer_timeout)?,
            },
            participant: track.participant,
        })
    }
}

#[cfg(test)]
// Tests take a real instant as the origin of their simulated time.
#[allow(clippy::disallowed_methods)]
mod tests {
    use sfu_proto::{Codec, FormatParams, SessionId};

    use super::*;

    fn track(session: u128, participant: u64, kind: MediaKind, order: u64) -> PublishedTrack {
        PublishedTrack::new(
            TrackId {
                session: SessionId::from_u128(session),
                index: 0,
            },
            ParticipantId(participant),
            kind,
            order,
            WorkerId(0),
        )
    }

    fn header(track: TrackId, kind: MediaKind, layer: u8) -> MediaHeader {
        MediaHeader {
            track,
            participant: ParticipantId(0),
            kind,
            layer: Layer(layer),
            codec: Codec::Vp8,
            format: FormatParams::default(),
            clock_rate: 90_000,
            seq: 1,
            timestamp: 0,
            marker: false,
            keyframe: false,
            audio_level: None,
        }
    }

    fn room() -> Room {
        Room::new("r".parse().expect("room"), LAYER_TIMEOUT)
    }

    #[test]
    fn newest_other_follows_the_newest_sending_track_that_is_not_ones_own() {
        let t0 = Instant::now();
        let mut room = room();
        let a = track(1, 1, MediaKind::Video, 1);
        let b = track(2, 2, MediaKind::Video, 2);
        let (a_id, b_id) = (a.id, b.id);
        room.publish(a);
        room.publish(b);
        let newest = Subscription::new(Want::NewestOther);
        // Announced but silent: nothing to follow yet.
        assert_eq!(room.target(MediaKind::Video, &newest, None, t0), None);
        room.observe(&header(a_id, MediaKind::Video, 0), 0, t0);
        room.observe(&header(b_id, MediaKind::Video, 0), 0, t0);
        let pick = |own| {
            room.target(MediaKind::Video, &newest, own, t0)
                .map(|t| t.selection.track)
        };
        assert_eq!(pick(None), Some(b_id));
        // Participant 2 (the newest publisher) watching gets participant 1's track.
        assert_eq!(pick(Some(ParticipantId(2))), Some(a_id));
        // No audio published: an audio slot follows nothing.
        assert_eq!(room.target(MediaKind::Audio, &newest, None, t0), None);
        // b goes silent: the newest *sending* one is a.
        let later = t0 + TRACK_TIMEOUT;
        room.observe(&header(a_id, MediaKind::Video, 0), 0, later);
        assert_eq!(
            room.target(MediaKind::Video, &newest, None, later)
                .map(|t| t.selection.track),
            Some(a_id)
        );
        assert!(room.unpublish(a_id));
        assert!(!room.unpublish(a_id));
        assert_eq!(
            room.target(MediaKind::Video, &newest, Some(ParticipantId(2)), later),
            None
        );
    }

    #[test]
    fn an_explicit_subscription_follows_its_track_at_most_at_its_layer() {
        let t0 = Instant::now();
        let mut room = room();
        let a = track(1, 1, MediaKind::Video, 1);
        let id = a.id;
        room.publish(a);
        for layer in 0..3 {
            room.observe(&header(id, MediaKind::Video, layer), 0, t0);
        }
        let mut sub = Subscription::new(Want::Track(id));
        let layer = |room: &Room, sub: &Subscription, now| {
            room.target(MediaKind::Video, sub, None, now)
                .map(|t| t.selection.layer)
        };
        assert_eq!(layer(&room, &sub, t0), Some(Layer(2)));
        sub.max_layer = Layer(1);
        assert_eq!(layer(&room, &sub, t0), Some(Layer(1)));
        sub.paused = true;
        assert_eq!(layer(&room, &sub, t0), None);
        sub.paused = false;
        // Layers 1 and 2 stop: it falls back to 0.
        let later = t0 + LAYER_TIMEOUT;
        room.observe(&header(id, MediaKind::Video, 0), 0, later);
        assert_eq!(layer(&room, &sub, later), Some(Layer(0)));
        // An explicit subscription to the subscriber's own track is honoured (a self-view).
        assert!(
            room.target(MediaKind::Video, &sub, Some(ParticipantId(1)), later)
                .is_some()
        );
        // A track of the other kind never fills the slot.
        assert_eq!(room.target(MediaKind::Audio, &sub, None, later), None);
    }

    #[test]
    fn the_wanted_layer_is_the_highest_any_subscription_may_follow() {
        let a = track(1, 1, MediaKind::Video, 1);
        let b = track(2, 2, MediaKind::Video, 2);
        let sub = |want, max, paused| {
            (
                MediaKind::Video,
                Subscription {
                    want,
                    max_layer: Layer(max),
                    paused,
                },
            )
        };
        let wanted = |subs: &[(MediaKind, Subscription)]| wanted_layer(&a, subs.iter().copied());
        assert_eq!(wanted(&[]), None);
        assert_eq!(wanted(&[sub(Want::Track(a.id), 0, false)]), Some(Layer(0)));
        // Another track's subscription, a paused one and an empty one want nothing of it.
        assert_eq!(
            wanted(&[
                sub(Want::Track(b.id), 2, false),
                sub(Want::Track(a.id), 2, true),
                sub(Want::Nothing, 2, false),
            ]),
            None
        );
        // "Newest other" may follow any video track; the highest maximum wins.
        assert_eq!(
            wanted(&[
                sub(Want::Track(a.id), 0, false),
                sub(Want::NewestOther, 1, false)
            ]),
            Some(Layer(1))
        );
        // An audio slot never follows a video track.
        let audio = (MediaKind::Audio, Subscription::new(Want::NewestOther));
        assert_eq!(wanted(&[audio]), None);
    }

    #[test]
    fn the_meter_measures_each_layer_over_its_own_time_and_forgets_silence() {
        let t0 = Instant::now();
        let mut meter = LayerMeter::default();
        let ms = Duration::from_millis;
        assert_eq!(meter.rate(Layer(0), t0), None);
        // Layer 0: 1000 bytes every 20 ms (400 kbit/s) from t0; layer 2 from 1 s on, 2000
        // bytes every 20 ms (800 kbit/s).
        for i in 0..250u32 {
            let at = t0 + ms(20) * i;
            meter.record(Layer(0), 1000, at);
            if i >= 50 {
                meter.record(Layer(2), 2000, at);
            }
            if i == 55 {
                assert_eq!(meter.rate(Layer(2), at), None, "not measured yet");
            }
        }
        let now = t0 + ms(5000);
        let within = |rate: Option<u64>, bps: u64| rate.is_some_and(|r| r.abs_diff(bps) < bps / 20);
        assert!(
            within(meter.rate(Layer(0), now), 400_000),
            "{:?}",
            meter.rate(Layer(0), now)
        );
        assert!(
            within(meter.rate(Layer(2), now), 800_000),
            "{:?}",
            meter.rate(Layer(2), now)
        );
        assert_eq!(meter.rate(Layer(1), now), None);
        // Silence fills the window with empty buckets.
        assert_eq!(meter.rate(Layer(0), now + ms(3000)), Some(0));
    }

    #[test]
    fn packets_of_unknown_tracks_are_not_observed() {
        let mut room = room();
        let a = track(1, 1, MediaKind::Audio, 1);
        assert!(!room.observe(&header(a.id, MediaKind::Audio, 0), 0, Instant::now()));
        room.publish(a.clone());
        room.publish(a.clone());
        assert_eq!(room.tracks().len(), 1);
        assert!(room.observe(&header(a.id, MediaKind::Audio, 0), 0, Instant::now()));
    }
}
