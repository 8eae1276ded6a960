//! The node's end of its relay links (docs/cascade.md), as a sans-IO state machine: one more
//! participant in the workers' cross-worker mesh, with the worker id after the last real
//! worker. Inputs are the workers' messages (room notices, packets of rooms some other node
//! joined, keyframe requests for relayed tracks), the frames and datagrams of peer nodes, link
//! ups and downs and the time; outputs are messages for the workers and frames and datagrams
//! for peer nodes. Like the engine it never reads the clock. A QUIC shell carries its frames
//! on each link's stream and its datagrams as QUIC datagrams.
//!
//! As the **origin** of a room (it has the publisher), the endpoint declares interest in the
//! room to the workers once a peer node joins it, announces the room's tracks published here
//! and sends each packet to every joined peer; it keeps the last second of packets of each
//! track to answer the hop's NACKs. As a **relay** of a room (control asked it to relay the
//! room from an origin node), it joins the room at the origin when the link is up, announces
//! the origin's tracks to the workers as tracks whose publisher is this endpoint, hands each
//! packet to the workers with subscribers in the room, NACKs gaps and throttles keyframe
//! requests. Only tracks published by this node's own sessions are ever sent to a peer: a
//! relayed track is never relayed again, so rooms over any number of nodes have no loops.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use sfu_proto::relay::{
    DatagramError, MAX_NACK, Reassembler, RelayFrame, RelayedPacket, RelayedTrack, encode_media,
};
use sfu_proto::{
    Layer, NodeId, RelayLinkStats, RelayedFrom, RoomId, RoomRelays, TrackId, TrackInfo, WorkerId,
};

use crate::engine::codec;
use crate::engine::forward::MediaPacket;
use crate::engine::room::PublishedTrack;
use crate::engine::{CrossWorker, RoomNotice};
use crate::ids::RoomKey;

/// Keyframe requests for one (track, layer) go to the origin at most this often, however many
/// subscribers ask.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// How long the origin keeps a track's packets for the hop's NACKs.
pub const RETAIN: Duration = Duration::from_secs(1);

/// A packet NACKed on the hop and still missing is asked for again after this long (about
/// two round trips of a link between regions), at most [`NACK_ATTEMPTS`] times in all: a
/// repair can be lost too.
pub const NACK_RETRY: Duration = Duration::from_millis(60);
pub const NACK_ATTEMPTS: u8 = 4;

/// Missing packets tracked per track and layer; a larger gap is a lost link, which a keyframe
/// repairs better than retransmissions.
const MAX_MISSING: usize = 256;

/// Settings of the relay endpoint.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// Largest datagram the links carry (QUIC's current limit on the path); larger packets
    /// are fragmented.
    pub max_datagram: usize,
    /// A relayed room with no subscriber on this node for this long is left.
    pub idle: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            // QUIC's datagram limit at its initial 1200-byte MTU, less its own overhead.
            max_datagram: 1100,
            idle: Duration::from_secs(30),
        }
    }
}

/// Counters of the relay endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub datagrams_out: u64,
    pub datagrams_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    /// Packets too large for the datagrams' fragment limit.
    pub dropped_size: u64,
    /// Datagrams that were no packet of the protocol.
    pub dropped_malformed: u64,
    /// Packets resent for the peer's NACKs.
    pub retransmitted: u64,
    pub nacks_sent: u64,
    pub keyframe_requests_sent: u64,
    /// Packets sent to peers, per layer (origin side).
    pub packets_out_by_layer: [u64; Layer::COUNT],
    /// Layer masks sent to origins (relay side).
    pub layer_updates_sent: u64,
}

/// Every layer: what crosses for a track before the relay node says otherwise.
pub const ALL_LAYERS: u8 = (1 << Layer::COUNT) - 1;

/// The layers up to `max` as a mask (bit n: layer n); none for `None`.
pub fn layers_up_to(max: Option<Layer>) -> u8 {
    max.map_or(0, |l| ((1u16 << (l.index() + 1)) - 1) as u8)
}

/// A track published by this node's sessions, as the origin side knows it.
#[derive(Debug)]
struct LocalTrack {
    published: PublishedTrack,
    info: TrackInfo,
    /// Recent packets for NACKs, oldest first.
    retained: VecDeque<Arc<MediaPacket>>,
    /// Layers each peer asked for (a `Layers` frame); a peer not listed gets every layer.
    masks: Vec<(NodeId, u8)>,
}

/// The layers `peer` asked for, in a track's masks.
fn mask_of(masks: &[(NodeId, u8)], peer: &NodeId) -> u8 {
    masks
        .iter()
        .find(|(p, _)| p == peer)
        .map_or(ALL_LAYERS, |(_, m)| *m)
}

/// A room as the endpoint knows it.
#[derive(Debug)]
struct Room {
    id: RoomId,
    /// Workers with subscribers in the room (in order: packets reach them in a stable order).
    interested: BTreeSet<WorkerId>,
    /// Tracks published here (origin side).
    local: Vec<LocalTrack>,
    /// Peer nodes that joined the room (origin side).
    joined_by: Vec<NodeId>,
    /// The origin nodes this endpoint relays the room from (relay side), and what it relays
    /// from each: a room on several nodes is relayed from each of them (a full mesh).
    relayed: Vec<Relayed>,
    /// Since when no worker has had a subscriber in the room (relay side).
    idle_since: Option<Instant>,
}

impl Room {
    fn new(id: RoomId) -> Self {
        Self {
            id,
            interested: BTreeSet::new(),
            local: Vec::new(),
            joined_by: Vec::new(),
            relayed: Vec::new(),
            idle_since: None,
        }
    }
}

#[derive(Debug)]
struct Relayed {
    from: NodeId,
    /// Left after this long without a subscriber here.
    idle: Duration,
    /// The origin's tracks, announced to the workers.
    tracks: HashMap<TrackId, RelayedState>,
}

#[derive(Debug)]
struct RelayedState {
    /// Next expected extended sequence number per layer.
    next_seq: [Option<u64>; Layer::COUNT],
    /// Per layer, packets NACKed and not yet arrived: when last asked, and how often.
    missing: [BTreeMap<u64, (Instant, u8)>; Layer::COUNT],
    /// When a keyframe request for each layer last went to the origin.
    last_keyframe_request: [Option<Instant>; Layer::COUNT],
    /// Per worker, the highest layer its subscriptions may follow (absent: none).
    wanted: Vec<(WorkerId, Layer)>,
    /// The layers the origin was last asked for: all, until a worker reports.
    mask: u8,
}

impl RelayedState {
    fn new() -> Self {
        Self {
            next_seq: [None; Layer::COUNT],
            missing: Default::default(),
            last_keyframe_request: [None; Layer::COUNT],
            wanted: Vec::new(),
            mask: ALL_LAYERS,
        }
    }
}

/// The node's end of all its relay links.
#[derive(Debug)]
pub struct RelayEndpoint {
    /// This endpoint's id in the cross-worker mesh: one past the last real worker.
    id: WorkerId,
    workers: usize,
    config: RelayConfig,
    now: Instant,
    rooms: HashMap<RoomKey, Room>,
    by_name: HashMap<RoomId, RoomKey>,
    /// The room of each track published here (origin side) and of each relayed track (relay
    /// side): track ids are unique across nodes (they carry the publishing session's random
    /// id), so one map serves both and every per-packet lookup is one hash.
    track_rooms: HashMap<TrackId, RoomKey>,
    links_up: HashSet<NodeId>,
    /// Joins of rooms this node has not seen yet (no notice about them so far): applied when
    /// the room's first notice arrives.
    pending_joins: HashMap<RoomId, Vec<NodeId>>,
    reassemblers: HashMap<NodeId, Reassembler>,
    next_fragmented: u32,
    cross: VecDeque<(WorkerId, CrossWorker)>,
    /// Rooms no longer relayed from any origin (for the node to release their keys).
    released: VecDeque<RoomId>,
    frames: VecDeque<(NodeId, RelayFrame)>,
    /// Datagrams for peers; one packet sent to several peers shares its encoding.
    datagrams: VecDeque<(NodeId, Bytes)>,
    stats: RelayStats,
    /// Per peer node: what crossed its link (the shell adds RTT and QUIC's drops).
    per_link: HashMap<NodeId, RelayLinkStats>,
}

impl RelayEndpoint {
    /// The endpoint of a node with `workers` workers; its own id is `workers`.
    pub fn new(workers: usize, config: RelayConfig, now: Instant) -> Self {
        Self {
            id: WorkerId(workers as u16),
            workers,
            config,
            now,
            rooms: HashMap::new(),
            by_name: HashMap::new(),
            track_rooms: HashMap::new(),
            links_up: HashSet::new(),
            pending_joins: HashMap::new(),
            reassemblers: HashMap::new(),
            next_fragmented: 0,
            cross: VecDeque::new(),
            released: VecDeque::new(),
            frames: VecDeque::new(),
            datagrams: VecDeque::new(),
            stats: RelayStats::default(),
            per_link: HashMap::new(),
        }
    }

    /// This endpoint's worker id (workers address it like another worker).
    pub fn id(&self) -> WorkerId {
        self.id
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// The links' datagram limit changed (QUIC's path MTU discovery): packets larger than
    /// `max` are fragmented from now on. Below 200 bytes a limit is taken as 200 (no path
    /// carrying QUIC is that small).
    pub fn set_max_datagram(&mut self, max: usize) {
        self.config.max_datagram = max.max(200);
    }

    /// What crossed each link, with whether it is up now.
    pub fn link_stats(&self) -> Vec<RelayLinkStats> {
        let mut links: Vec<RelayLinkStats> = self
            .per_link
            .values()
            .cloned()
            .map(|mut l| {
                l.up = l.peer.as_ref().is_some_and(|p| self.links_up.contains(p));
                l
            })
            .collect();
        links.sort_by(|a, b| a.peer.cmp(&b.peer));
        links
    }

    fn link(&mut self, peer: &NodeId) -> &mut RelayLinkStats {
        // Per packet: look up before inserting, so the peer's name is cloned only once.
        if !self.per_link.contains_key(peer) {
            self.per_link.insert(
                peer.clone(),
                RelayLinkStats {
                    peer: Some(peer.clone()),
                    ..RelayLinkStats::default()
                },
            );
        }
        self.per_link.get_mut(peer).expect("inserted above")
    }

    /// Rooms relayed from another node, with that node.
    pub fn relayed_rooms(&self) -> impl Iterator<Item = (&RoomId, &NodeId)> {
        self.rooms
            .values()
            .flat_map(|r| r.relayed.iter().map(|rel| (&r.id, &rel.from)))
    }

    /// What this node relays of room `id`: the tracks it receives per origin node (sorted),
    /// and the peers it sends the room's own tracks to.
    pub fn room_relays(&self, id: &RoomId) -> RoomRelays {
        let Some(room) = self.by_name.get(id).and_then(|key| self.rooms.get(key)) else {
            return RoomRelays::default();
        };
        let mut from: Vec<RelayedFrom> = room
            .relayed
            .iter()
            .map(|rel| {
                let mut tracks: Vec<TrackId> = rel.tracks.keys().copied().collect();
                tracks.sort();
                RelayedFrom {
                    node: rel.from.clone(),
                    tracks,
                }
            })
            .collect();
        from.sort_by(|a, b| a.node.cmp(&b.node));
        let mut to = room.joined_by.clone();
        to.sort();
        RoomRelays { from, to }
    }

    /// The room `key`, created on first sight; joins waiting for it are applied then.
    fn room_entry(&mut self, key: RoomKey, id: &RoomId) -> &mut Room {
        if !self.rooms.contains_key(&key) {
            self.by_name.insert(id.clone(), key);
            self.rooms.insert(key, Room::new(id.clone()));
            for peer in self.pending_joins.remove(id).unwrap_or_default() {
                self.join(&peer, id);
            }
        }
        self.rooms.get_mut(&key).expect("inserted above")
    }

    /// Origin `peer` is given up (its link stayed closed; the shell's call): rooms no longer
    /// relay from it, their tracks from it end. Returns how many rooms relayed from it.
    pub fn forget_origin(&mut self, now: Instant, peer: &NodeId) -> usize {
        self.now = now;
        let keys: Vec<RoomKey> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.relayed.iter().any(|rel| &rel.from == peer))
            .map(|(k, _)| *k)
            .collect();
        for &key in &keys {
            self.stop_relaying(key, peer);
            self.drop_if_unused(key);
        }
        keys.len()
    }

    /// Room `key` is no longer relayed from `from`: its tracks from there end.
    fn stop_relaying(&mut self, key: RoomKey, from: &NodeId) {
        self.unpublish_relayed(key, from, None);
        if let Some(r) = self.rooms.get_mut(&key) {
            let before = r.relayed.len();
            r.relayed.retain(|rel| &rel.from != from);
            if r.relayed.is_empty() {
                r.idle_since = None;
                if before > 0 {
                    self.released.push_back(r.id.clone());
                }
            }
        }
    }

    /// Control asks this node to relay room `id` (this node's key `key`) from node `from`,
    /// and to leave it after `idle` without a subscriber here (`None`: the configured
    /// default). Joins at once if the link to `from` is up, else when it comes up.
    pub fn relay_room(
        &mut self,
        now: Instant,
        key: RoomKey,
        id: &RoomId,
        from: &NodeId,
        idle: Option<Duration>,
    ) {
        self.now = now;
        // Relayed again before the node released its key: it keeps it.
        self.released.retain(|r| r != id);
        let idle = idle.unwrap_or(self.config.idle);
        let link_up = self.links_up.contains(from);
        let room = self.room_entry(key, id);
        if let Some(r) = room.relayed.iter_mut().find(|r| &r.from == from) {
            r.idle = idle;
            return;
        }
        room.relayed.push(Relayed {
            from: from.clone(),
            idle,
            tracks: HashMap::new(),
        });
        // A new relay gets its full idle time for its subscriber's session to start.
        room.idle_since = room.interested.is_empty().then_some(now);
        if link_up {
            self.frames
                .push_back((from.clone(), RelayFrame::Join { room: id.clone() }));
        }
    }

    /// The link to `peer` is up (again): join the rooms relayed from it.
    pub fn link_up(&mut self, now: Instant, peer: &NodeId) {
        self.now = now;
        self.links_up.insert(peer.clone());
        for room in self.rooms.values() {
            if room.relayed.iter().any(|r| &r.from == peer) {
                self.frames.push_back((
                    peer.clone(),
                    RelayFrame::Join {
                        room: room.id.clone(),
                    },
                ));
            }
        }
    }

    /// The link to `peer` is gone: its relayed tracks end here (subscribers see their
    /// publishers leave; they come back when the link does), and it no longer receives this
    /// node's rooms.
    pub fn link_down(&mut self, now: Instant, peer: &NodeId) {
        self.now = now;
        self.links_up.remove(peer);
        self.reassemblers.remove(peer);
        for waiting in self.pending_joins.values_mut() {
            waiting.retain(|p| p != peer);
        }
        self.pending_joins.retain(|_, waiting| !waiting.is_empty());
        let keys: Vec<RoomKey> = self.rooms.keys().copied().collect();
        for key in keys {
            self.unpublish_relayed(key, peer, None);
            self.leave(key, peer);
        }
    }

    /// A message from a worker.
    pub fn handle_cross_worker(&mut self, now: Instant, message: CrossWorker) {
        self.now = now;
        match message {
            CrossWorker::Media(packet) => self.send_media(&packet),
            CrossWorker::KeyframeRequest { track, layer } => self.request_keyframe(track, layer),
            CrossWorker::Room(notice) => self.handle_notice(*notice),
            // Speakers are ranked by the workers; the relay endpoint publishes no audio.
            CrossWorker::Speech(_) => {}
        }
    }

    fn handle_notice(&mut self, notice: RoomNotice) {
        match notice {
            RoomNotice::Interest {
                room,
                room_id,
                worker,
                interested,
            } => {
                let now = self.now;
                let r = self.room_entry(room, &room_id);
                if interested {
                    r.interested.insert(worker);
                    r.idle_since = None;
                } else {
                    r.interested.remove(&worker);
                    if r.interested.is_empty() {
                        r.idle_since = Some(now);
                    }
                }
            }
            RoomNotice::TrackPublished {
                room,
                room_id,
                track,
            } => {
                // Only this node's own tracks are sent on: a relayed one (ours) never is.
                if track.origin == self.id {
                    return;
                }
                let info = TrackInfo {
                    track: track.id,
                    room: room_id.clone(),
                    // The workers' notice does not carry the identity; peers need only the
                    // participant, which rides every packet header.
                    identity: String::new(),
                    kind: track.kind,
                    layers: Layer::COUNT as u8,
                };
                if self.track_rooms.contains_key(&track.id) {
                    return;
                }
                self.track_rooms.insert(track.id, room);
                let r = self.room_entry(room, &room_id);
                let announce = RelayFrame::TrackPublished {
                    room: room_id.clone(),
                    track: RelayedTrack {
                        info: info.clone(),
                        participant: track.participant,
                        order: track.order,
                    },
                };
                let peers = r.joined_by.clone();
                r.local.push(LocalTrack {
                    published: track,
                    info,
                    retained: VecDeque::new(),
                    masks: Vec::new(),
                });
                for peer in peers {
                    self.frames.push_back((peer, announce.clone()));
                }
            }
            RoomNotice::TrackUnpublished { room, track } => {
                let Some(r) = self.rooms.get_mut(&room) else {
                    return;
                };
                let before = r.local.len();
                r.local.retain(|t| t.published.id != track);
                if r.local.len() != before {
                    self.track_rooms.remove(&track);
                    let frame = RelayFrame::TrackUnpublished {
                        room: r.id.clone(),
                        track,
                    };
                    for peer in r.joined_by.clone() {
                        self.frames.push_back((peer, frame.clone()));
                    }
                }
                self.drop_if_unused(room);
            }
            RoomNotice::Layers {
                room,
                track,
                worker,
                max,
            } => self.layers_wanted(room, track, worker, max),
            // Workers' business: the relay endpoint allocates no bandwidth.
            RoomNotice::Speakers { .. } => {}
        }
    }

    /// Relay side: a worker's subscriptions may follow relayed `track` up to layer `max`.
    /// When the union over workers changes, the origin is told; layers dropped from it
    /// stop being tracked for NACKs (their sequence resumes anywhere when they return).
    fn layers_wanted(
        &mut self,
        room: RoomKey,
        track: TrackId,
        worker: WorkerId,
        max: Option<Layer>,
    ) {
        let Some(rel) = self.rooms.get_mut(&room).and_then(|r| {
            r.relayed
                .iter_mut()
                .find(|rel| rel.tracks.contains_key(&track))
        }) else {
            return;
        };
        let from = rel.from.clone();
        let Some(state) = rel.tracks.get_mut(&track) else {
            return;
        };
        state.wanted.retain(|(w, _)| *w != worker);
        if let Some(layer) = max {
            state.wanted.push((worker, layer));
        }
        let mask = layers_up_to(state.wanted.iter().map(|(_, l)| *l).max());
        if mask == state.mask {
            return;
        }
        for layer in 0..Layer::COUNT {
            if mask & (1 << layer) == 0 {
                state.next_seq[layer] = None;
                state.missing[layer].clear();
            }
        }
        state.mask = mask;
        self.stats.layer_updates_sent += 1;
        self.frames
            .push_back((from, RelayFrame::Layers { track, mask }));
    }

    /// Origin side: a packet of a room some peer joined.
    fn send_media(&mut self, packet: &Arc<MediaPacket>) {
        let Some(room) = self.rooms.get_mut(&packet.room) else {
            return;
        };
        let Some(track) = room
            .local
            .iter_mut()
            .find(|t| t.published.id == packet.header.track)
        else {
            return;
        };
        track.retained.push_back(packet.clone());
        let horizon = self.now.checked_sub(RETAIN);
        while track
            .retained
            .front()
            .is_some_and(|p| horizon.is_some_and(|h| p.arrival < h))
        {
            track.retained.pop_front();
        }
        let layer = packet.header.layer.index();
        // Encoded once, for the first peer that wants its layer, and shared by the others;
        // the peer list and the masks are lent out, not cloned.
        let peers: Vec<NodeId> = std::mem::take(&mut room.joined_by);
        let masks = std::mem::take(&mut track.masks);
        let mut encoded: Option<Option<Vec<Bytes>>> = None;
        for peer in &peers {
            if mask_of(&masks, peer) & (1 << layer) == 0 {
                continue;
            }
            let datagrams = encoded.get_or_insert_with(|| self.encode(peer, packet));
            if let Some(datagrams) = datagrams {
                self.queue_packet(peer, datagrams);
                self.stats.packets_out_by_layer[layer] += 1;
            }
        }
        if let Some(room) = self.rooms.get_mut(&packet.room) {
            room.joined_by = peers;
            if let Some(track) = room
                .local
                .iter_mut()
                .find(|t| t.published.id == packet.header.track)
            {
                track.masks = masks;
            }
        }
    }

    /// Sends one packet to one peer (a repair).
    fn send_packet(&mut self, peer: &NodeId, packet: &MediaPacket) {
        if let Some(datagrams) = self.encode(peer, packet) {
            self.queue_packet(peer, &datagrams);
        }
    }

    /// A packet as the datagrams of the links; `None` (counted against `peer`'s link) when it
    /// cannot cross.
    fn encode(&mut self, peer: &NodeId, packet: &MediaPacket) -> Option<Vec<Bytes>> {
        let datagrams = match encode_media(
            &packet.header,
            &packet.payload,
            self.config.max_datagram,
            self.next_fragmented,
        ) {
            Ok(d) => d,
            Err(DatagramError::TooLarge { .. }) => {
                self.stats.dropped_size += 1;
                self.link(peer).dropped_size += 1;
                return None;
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return None;
            }
        };
        if datagrams.len() > 1 {
            self.next_fragmented = self.next_fragmented.wrapping_add(1);
        }
        Some(datagrams.into_iter().map(Bytes::from).collect())
    }

    fn queue_packet(&mut self, peer: &NodeId, datagrams: &[Bytes]) {
        self.stats.packets_out += 1;
        self.stats.datagrams_out += datagrams.len() as u64;
        let link = self.link(peer);
        link.packets_out += 1;
        link.datagrams_out += datagrams.len() as u64;
        link.bytes_out += datagrams.iter().map(|d| d.len() as u64).sum::<u64>();
        for d in datagrams {
            self.datagrams.push_back((peer.clone(), d.clone()));
        }
    }

    /// Relay side: a worker's subscriber needs a keyframe of a relayed track.
    fn request_keyframe(&mut self, track: TrackId, layer: Layer) {
        let now = self.now;
        let Some(rel) = self
            .track_rooms
            .get(&track)
            .and_then(|key| self.rooms.get_mut(key))
            .and_then(|r| {
                r.relayed
                    .iter_mut()
                    .find(|rel| rel.tracks.contains_key(&track))
            })
        else {
            return;
        };
        let from = rel.from.clone();
        let Some(state) = rel.tracks.get_mut(&track) else {
            return;
        };
        let last = &mut state.last_keyframe_request[layer.index()];
        if last.is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_INTERVAL) {
            return;
        }
        *last = Some(now);
        self.stats.keyframe_requests_sent += 1;
        self.frames
            .push_back((from, RelayFrame::KeyframeRequest { track, layer }));
    }

    /// A frame from peer node `peer` on its link's stream.
    pub fn handle_frame(&mut self, now: Instant, peer: &NodeId, frame: RelayFrame) {
        self.now = now;
        match frame {
            RelayFrame::Join { room } => self.join(peer, &room),
            RelayFrame::Leave { room } => {
                if let Some(&key) = self.by_name.get(&room) {
                    self.leave(key, peer);
                }
            }
            RelayFrame::TrackPublished { room, track } => self.track_arrived(peer, &room, track),
            RelayFrame::TrackUnpublished { room, track } => {
                if let Some(&key) = self.by_name.get(&room) {
                    self.unpublish_relayed(key, peer, Some(track));
                }
            }
            RelayFrame::KeyframeRequest { track, layer } => {
                // Origin side: to the worker whose session publishes the track.
                let origin = self
                    .local_track_for(peer, track)
                    .map(|t| t.published.origin);
                if let Some(worker) = origin {
                    self.cross
                        .push_back((worker, CrossWorker::KeyframeRequest { track, layer }));
                }
            }
            RelayFrame::Nack { track, layer, seqs } => self.resend(peer, track, layer, &seqs),
            RelayFrame::Layers { track, mask } => {
                // Origin side: only these layers of the track go to the peer from now on.
                if let Some(t) = self.local_track_for(peer, track) {
                    t.masks.retain(|(p, _)| p != peer);
                    t.masks.push((peer.clone(), mask & ALL_LAYERS));
                }
            }
            // Handshake frames are the shell's.
            RelayFrame::Hello { .. } | RelayFrame::Refused { .. } => {}
        }
    }

    /// Origin side: `peer` wants room `room`.
    fn join(&mut self, peer: &NodeId, room: &RoomId) {
        let Some(&key) = self.by_name.get(room) else {
            // No session of the room has told this endpoint about it yet (e.g. only
            // subscribers so far, or the publisher is being set up): join once it does.
            let waiting = self.pending_joins.entry(room.clone()).or_default();
            if !waiting.contains(peer) {
                waiting.push(peer.clone());
            }
            return;
        };
        let Some(r) = self.rooms.get_mut(&key) else {
            return;
        };
        // Joined again (a link replaced by another): the tracks are announced again, which
        // the peer takes as known (what went over the old link may not have arrived).
        let again = r.joined_by.contains(peer);
        if !again {
            r.joined_by.push(peer.clone());
        }
        let first = !again && r.joined_by.len() == 1;
        for t in &r.local {
            self.frames.push_back((
                peer.clone(),
                RelayFrame::TrackPublished {
                    room: room.clone(),
                    track: RelayedTrack {
                        info: t.info.clone(),
                        participant: t.published.participant,
                        order: t.published.order,
                    },
                },
            ));
        }
        if first {
            // The first peer: the workers start sending this room's packets here.
            self.declare_interest(key, room, true);
        }
    }

    /// Origin side: `peer` no longer wants the room.
    fn leave(&mut self, key: RoomKey, peer: &NodeId) {
        let Some(r) = self.rooms.get_mut(&key) else {
            return;
        };
        let before = r.joined_by.len();
        r.joined_by.retain(|p| p != peer);
        for t in &mut r.local {
            t.masks.retain(|(p, _)| p != peer);
        }
        if before > 0 && r.joined_by.is_empty() {
            let id = r.id.clone();
            self.declare_interest(key, &id, false);
        }
        self.drop_if_unused(key);
    }

    /// Tell the workers whether this endpoint wants room `key`'s packets.
    fn declare_interest(&mut self, key: RoomKey, room: &RoomId, interested: bool) {
        let worker = self.id;
        self.tell_workers(|| RoomNotice::Interest {
            room: key,
            room_id: room.clone(),
            worker,
            interested,
        });
    }

    /// Relay side: what room `key` relays, if it relays it from `peer`.
    fn relayed_from(&mut self, key: RoomKey, peer: &NodeId) -> Option<&mut Relayed> {
        self.rooms
            .get_mut(&key)
            .and_then(|r| r.relayed.iter_mut().find(|rel| &rel.from == peer))
    }

    /// Relay side: the origin announced a track of a room relayed from it.
    fn track_arrived(&mut self, peer: &NodeId, room: &RoomId, track: RelayedTrack) {
        let Some(&key) = self.by_name.get(room) else {
            return;
        };
        let Some(rel) = self.relayed_from(key, peer) else {
            return;
        };
        if rel.tracks.contains_key(&track.info.track) {
            // Announced again after the link came back: known already, no duplicate.
            return;
        }
        if self.track_rooms.contains_key(&track.info.track) {
            // A track this node already has (published here, or relayed in another room):
            // a confused peer, never a second copy.
            return;
        }
        let Some(rel) = self.relayed_from(key, peer) else {
            return;
        };
        rel.tracks.insert(track.info.track, RelayedState::new());
        self.track_rooms.insert(track.info.track, key);
        let published = PublishedTrack::new(
            track.info.track,
            track.participant,
            track.info.kind,
            track.order,
            self.id,
        );
        self.tell_workers(|| RoomNotice::TrackPublished {
            room: key,
            room_id: room.clone(),
            track: published.clone(),
        });
    }

    /// Relay side: tracks relayed from `peer` in room `key` end (one, or all of them).
    fn unpublish_relayed(&mut self, key: RoomKey, peer: &NodeId, only: Option<TrackId>) {
        let Some(rel) = self.relayed_from(key, peer) else {
            return;
        };
        let ended: Vec<TrackId> = match only {
            Some(t) => rel.tracks.remove(&t).map(|_| t).into_iter().collect(),
            None => rel.tracks.drain().map(|(t, _)| t).collect(),
        };
        for track in ended {
            self.track_rooms.remove(&track);
            self.tell_workers(|| RoomNotice::TrackUnpublished { room: key, track });
        }
    }

    /// Origin side: resend what `peer` NACKed, if still retained.
    fn resend(&mut self, peer: &NodeId, track: TrackId, layer: Layer, seqs: &[u64]) {
        let wanted: HashSet<u64> = seqs.iter().take(MAX_NACK).copied().collect();
        let found: Vec<Arc<MediaPacket>> = self
            .local_track_for(peer, track)
            .into_iter()
            .flat_map(|t| &t.retained)
            .filter(|p| p.header.layer == layer && wanted.contains(&p.header.seq))
            .cloned()
            .collect();
        for packet in found {
            self.stats.retransmitted += 1;
            self.link(peer).retransmitted += 1;
            self.send_packet(peer, &packet);
        }
    }

    /// Origin side: track `track` published here, if `peer` joined its room (a peer acts
    /// only on the rooms it receives).
    fn local_track_for(&mut self, peer: &NodeId, track: TrackId) -> Option<&mut LocalTrack> {
        self.track_rooms
            .get(&track)
            .and_then(|key| self.rooms.get_mut(key))
            .filter(|r| r.joined_by.contains(peer))
            .and_then(|r| r.local.iter_mut().find(|t| t.published.id == track))
    }

    /// A datagram from peer node `peer`.
    pub fn handle_datagram(&mut self, now: Instant, peer: &NodeId, datagram: &[u8]) {
        self.now = now;
        self.stats.datagrams_in += 1;
        let link = self.link(peer);
        link.datagrams_in += 1;
        link.bytes_in += datagram.len() as u64;
        // Per datagram: the peer's name is cloned only for its first one.
        if !self.reassemblers.contains_key(peer) {
            self.reassemblers
                .insert(peer.clone(), Reassembler::default());
        }
        let Some(reassembler) = self.reassemblers.get_mut(peer) else {
            return;
        };
        let packet = match reassembler.push(datagram) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        self.packet_arrived(peer, packet);
    }

    /// Relay side: a packet of a relayed track.
    fn packet_arrived(&mut self, peer: &NodeId, packet: RelayedPacket) {
        let now = self.now;
        let header = packet.header;
        let Some(&key) = self.track_rooms.get(&header.track) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&key) else {
            return;
        };
        let Some(state) = room
            .relayed
            .iter_mut()
            .find(|rel| &rel.from == peer)
            .and_then(|rel| rel.tracks.get_mut(&header.track))
        else {
            return;
        };
        self.stats.packets_in += 1;
        let mut nacked = false;
        let (mut lost, mut unrepaired) = (0u64, 0u64);
        // Gaps in the layer's sequence are NACKed to the origin (and again, see
        // `handle_timeout`, until they arrive or give up).
        let layer = header.layer.index();
        let missing = &mut state.missing[layer];
        let next = &mut state.next_seq[layer];
        match *next {
            Some(expected) if header.seq > expected => {
                lost = header.seq - expected;
                // Beyond one NACK's worth the gap is a lost link: not asked for.
                unrepaired = lost.saturating_sub(MAX_NACK as u64);
                let gap: Vec<u64> = (expected..header.seq).take(MAX_NACK).collect();
                for &seq in &gap {
                    missing.insert(seq, (now, 1));
                }
                while missing.len() > MAX_MISSING {
                    missing.pop_first();
                    unrepaired += 1;
                }
                self.stats.nacks_sent += 1;
                nacked = true;
                self.frames.push_back((
                    peer.clone(),
                    RelayFrame::Nack {
                        track: header.track,
                        layer: header.layer,
                        seqs: gap,
                    },
                ));
                *next = Some(header.seq + 1);
            }
            // A repair, or a reordered packet.
            Some(expected) if header.seq < expected => {
                missing.remove(&header.seq);
            }
            _ => *next = Some(header.seq + 1),
        }
        let media = Arc::new(MediaPacket {
            room: key,
            origin: self.id,
            vp8: codec::vp8_descriptor(header.codec, &packet.payload),
            header,
            payload: packet.payload,
            arrival: now,
        });
        for &w in &room.interested {
            self.cross.push_back((w, CrossWorker::Media(media.clone())));
        }
        let link = self.link(peer);
        link.packets_in += 1;
        link.nacks_sent += u64::from(nacked);
        link.lost += lost;
        link.unrepaired += unrepaired;
    }

    /// Time passed: ask again for packets still missing, and leave relayed rooms that have
    /// had no subscriber here for `idle`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.renack(now);
        let expired: Vec<(RoomKey, NodeId)> = self
            .rooms
            .iter()
            .filter_map(|(key, r)| Some((key, r.idle_since?, &r.relayed)))
            .flat_map(|(key, since, relayed)| {
                relayed
                    .iter()
                    .filter(move |rel| now.saturating_duration_since(since) >= rel.idle)
                    .map(move |rel| (*key, rel.from.clone()))
            })
            .collect();
        for (key, from) in expired {
            self.stop_relaying(key, &from);
            if let Some(r) = self.rooms.get(&key) {
                if self.links_up.contains(&from) {
                    self.frames
                        .push_back((from, RelayFrame::Leave { room: r.id.clone() }));
                }
            }
            self.drop_if_unused(key);
        }
    }

    /// NACK again what is still missing after [`NACK_RETRY`]; give up after
    /// [`NACK_ATTEMPTS`].
    fn renack(&mut self, now: Instant) {
        let mut sent: Vec<NodeId> = Vec::new();
        let mut given_up: Vec<(NodeId, u64)> = Vec::new();
        for rel in self.rooms.values_mut().flat_map(|r| &mut r.relayed) {
            for (track, state) in &mut rel.tracks {
                for (layer, missing) in state.missing.iter_mut().enumerate() {
                    let mut again = Vec::new();
                    let mut dropped = 0u64;
                    missing.retain(|&seq, (asked, attempts)| {
                        if now.saturating_duration_since(*asked) < NACK_RETRY {
                            return true;
                        }
                        if *attempts >= NACK_ATTEMPTS {
                            dropped += 1;
                            return false;
                        }
                        *asked = now;
                        *attempts += 1;
                        again.push(seq);
                        true
                    });
                    if dropped > 0 {
                        given_up.push((rel.from.clone(), dropped));
                    }
                    for seqs in again.chunks(MAX_NACK) {
                        self.stats.nacks_sent += 1;
                        sent.push(rel.from.clone());
                        self.frames.push_back((
                            rel.from.clone(),
                            RelayFrame::Nack {
                                track: *track,
                                layer: Layer(layer as u8),
                                seqs: seqs.to_vec(),
                            },
                        ));
                    }
                }
            }
        }
        for peer in sent {
            self.link(&peer).nacks_sent += 1;
        }
        for (peer, n) in given_up {
            self.link(&peer).unrepaired += n;
        }
    }

    /// When [`RelayEndpoint::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let relayed = self
            .rooms
            .values()
            .flat_map(|r| r.relayed.iter().map(move |rel| (r, rel)));
        let idle = relayed
            .clone()
            .filter_map(|(r, rel)| r.idle_since.map(|t| t + rel.idle));
        let retries = relayed
            .flat_map(|(_, rel)| rel.tracks.values())
            .flat_map(|s| s.missing.iter())
            .flat_map(|m| m.values())
            .map(|(asked, _)| *asked + NACK_RETRY);
        idle.chain(retries).min()
    }

    /// Tell every worker about a room (each gets its own copy of the notice).
    fn tell_workers(&mut self, notice: impl Fn() -> RoomNotice) {
        for w in 0..self.workers {
            self.cross
                .push_back((WorkerId(w as u16), CrossWorker::Room(Box::new(notice()))));
        }
    }

    fn drop_if_unused(&mut self, key: RoomKey) {
        let unused = self.rooms.get(&key).is_some_and(|r| {
            r.local.is_empty()
                && r.joined_by.is_empty()
                && r.relayed.is_empty()
                && r.interested.is_empty()
        });
        if unused {
            if let Some(r) = self.rooms.remove(&key) {
                // The name may already name a newer key of the room (see `room_entry`).
                if self.by_name.get(&r.id) == Some(&key) {
                    self.by_name.remove(&r.id);
                }
            }
        }
    }

    pub fn poll_cross_worker(&mut self) -> Option<(WorkerId, CrossWorker)> {
        self.cross.pop_front()
    }

    /// A room that is no longer relayed from any origin here: its node may release the key
    /// it holds for the relay.
    pub fn poll_released(&mut self) -> Option<RoomId> {
        self.released.pop_front()
    }

    pub fn poll_frame(&mut self) -> Option<(NodeId, RelayFrame)> {
        self.frames.pop_front()
    }

    pub fn poll_datagram(&mut self) -> Option<(NodeId, Bytes)> {
        self.datagrams.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_masks_cover_the_layers_up_to_the_maximum() {
        assert_eq!(layers_up_to(None), 0);
        assert_eq!(layers_up_to(Some(Layer(0))), 0b001);
        assert_eq!(layers_up_to(Some(Layer(1))), 0b011);
        assert_eq!(layers_up_to(Some(Layer::HIGH)), ALL_LAYERS);
    }
}
