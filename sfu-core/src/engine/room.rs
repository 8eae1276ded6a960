//! A room as one worker sees it, and the one owner of that view: every track published in the
//! room on this node (by this worker's sessions or by other workers'), this worker's sessions
//! in it, and which other workers have subscribers in it. It answers the forwarding question
//! "what should this subscriber track follow now?" for every subscription policy.

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
        }
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

    /// Record a packet's arrival. `false` for a track the room does not know (its
    /// announcement has not arrived, or it ended): the packet is not forwarded.
    pub fn observe(&mut self, header: &MediaHeader, arrival: Instant) -> bool {
        match self.tracks.iter_mut().find(|t| t.id == header.track) {
            Some(t) => {
                t.last_packet[header.layer.index()] = Some(arrival);
                true
            }
            None => false,
        }
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
        room.observe(&header(a_id, MediaKind::Video, 0), t0);
        room.observe(&header(b_id, MediaKind::Video, 0), t0);
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
        room.observe(&header(a_id, MediaKind::Video, 0), later);
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
            room.observe(&header(id, MediaKind::Video, layer), t0);
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
        room.observe(&header(id, MediaKind::Video, 0), later);
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
    fn packets_of_unknown_tracks_are_not_observed() {
        let mut room = room();
        let a = track(1, 1, MediaKind::Audio, 1);
        assert!(!room.observe(&header(a.id, MediaKind::Audio, 0), Instant::now()));
        room.publish(a.clone());
        room.publish(a.clone());
        assert_eq!(room.tracks().len(), 1);
        assert!(room.observe(&header(a.id, MediaKind::Audio, 0), Instant::now()));
    }
}
