//! The media engine of one worker, sans-IO: it owns the worker's sessions, rooms and timers
//! but no socket, thread or clock. The I/O shell ([`crate::worker`]) feeds it inputs with the
//! time they happened and carries its outputs away:
//!
//! - inputs: [`Engine::handle_datagram`], [`Engine::handle_cross_worker`] (another worker's
//!   packets, keyframe requests, track announcements and interest), [`Engine::handle_command`]
//!   (the node API), [`Engine::handle_timeout`];
//! - outputs: [`Engine::poll_transmit`] (datagrams to send), [`Engine::poll_cross_worker`]
//!   (messages for other workers), [`Engine::poll_event`] (node events for control),
//!   [`Engine::poll_timeout`] (when to call `handle_timeout` next).
//!
//! Work an input causes (draining sessions, fanning packets out, closing sessions) is done
//! before the next output is handed out, so nothing is left pending when the shell asks for
//! the next deadline. Datagrams come out in chunks of about [`HANDOVER_CHUNK`]: a large
//! fan-out stops at each chunk until the shell has taken it, so the first subscribers' packets
//! go to the socket while the last ones' are still being written.
//!
//! A packet's path: [`demux`] → [`session`] (decrypt) → [`room`] (which subscriber tracks want
//! it) → [`forward`] (layer switch, seq/ts rewrite) → the subscriber's [`session`] (encrypt) →
//! `poll_transmit`; for other workers, one reference per interested worker through
//! `poll_cross_worker`. Off that path, [`allocation`] shares each subscriber's
//! bandwidth estimate among its tracks when the estimate, the room's speakers or the
//! subscriptions change, and every [`HOUSEKEEPING_INTERVAL`].

pub mod allocation;
pub mod codec;
pub mod data;
pub mod demux;
pub mod forward;
pub mod quality;
pub mod room;
pub mod session;
pub mod speaker;
pub mod timers;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sfu_proto::{
    AudioFloor, EndReason, Layer, NodeError, NodeEvent, NodeResponse, ParticipantId, Quality,
    RoomId, SendData, SessionCreated, SessionId, SessionKind, SetSubscription, Subscribe, TrackId,
    TrackInfo, WorkerId,
};
use str0m::bwe::BweKind;
use str0m::media::Mid;
use str0m::{Event, IceConnectionState, Output};

use crate::ids::RoomKey;
use crate::metrics::{DropReason, WorkerMetrics};
use allocation::Demand;
use forward::{MediaPacket, Selection};
use room::{PublishedTrack, Room, Want};
use session::{Forwarded, Offer, Polled, PublishedMedia, Session, SessionBroken};
use speaker::{SpeakerBoard, SpeechReport, SpeechWindow};
use timers::{Due, DueTimeouts, Timers};

/// How often sessions are checked for timeouts and publishers get REMB.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(500);
/// Outputs one session may produce per drain before the others get a turn.
const DRAIN_BUDGET: usize = 10_000;
/// Rounds of drain → fan-out per processing step; work left after them is reported through
/// [`Engine::poll_timeout`] as due now.
const PROCESS_ROUNDS: usize = 4;
/// Datagrams at which processing stops until the shell has taken them
/// ([`Engine::poll_transmit`]). Sessions are drained whole, so a chunk may be larger by one
/// session's output. 16 against 32 (bench/RESULTS.md, "Fan-out handed over in chunks"): a
/// lower delay, and no more CPU per packet (the socket backends' system calls cost per
/// datagram or per GSO run, not per call).
pub const HANDOVER_CHUNK: usize = 16;
/// Distinct arrival instants searched when a copy is added to the delay accounting; past
/// them a copy gets an entry of its own (a bound, not a correctness limit).
const HANDED_SEARCH: usize = 8;

/// A session's place in the engine's table. Only meaningful inside one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

/// What the engine needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Workers on the node (for announcements to every other worker).
    pub workers: usize,
    pub max_sessions: usize,
    /// No datagram at all by then: the client never started ICE.
    pub first_contact_timeout: Duration,
    pub connect_timeout: Duration,
    pub ice_timeout: Duration,
    pub publisher_remb_kbps: u64,
    /// A simulcast layer silent this long counts as stopped (`node.layer_timeout_ms`).
    pub layer_timeout: Duration,
    /// The node's relay endpoint ([`crate::relay`]), if it has one: it gets every room notice
    /// as a worker does.
    pub relay: Option<WorkerId>,
}

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// A message from one worker's engine to another's. Small: media and keyframe requests ride
/// the bounded rings, whose slots are this size.
#[derive(Debug)]
pub enum CrossWorker {
    /// A packet of a track published on the sending worker, for the receiver's subscribers.
    Media(Arc<MediaPacket>),
    /// A subscriber on the sending worker wants a keyframe of a track published here.
    KeyframeRequest { track: TrackId, layer: Layer },
    /// A change to a room's state, which must not be lost.
    Room(Box<RoomNotice>),
    /// Speech of the sending worker's publishers, for the room's ranking worker
    /// ([`speaker::ranking_worker`]). Lossy: a missed interval only delays a ranking.
    Speech(Box<SpeechReport>),
}

/// What one worker tells the others about a room.
#[derive(Debug)]
pub enum RoomNotice {
    /// The sending worker has (or no longer has) subscribers in `room`.
    Interest {
        room: RoomKey,
        room_id: RoomId,
        worker: WorkerId,
        interested: bool,
    },
    /// A track was published on the sending worker.
    TrackPublished {
        room: RoomKey,
        room_id: RoomId,
        track: PublishedTrack,
    },
    /// A track published on the sending worker ended.
    TrackUnpublished { room: RoomKey, track: TrackId },
    /// Worker → relay endpoint: the highest layer of relayed track `track` that the sending
    /// worker's subscriptions may follow (`None`: none follows it). Only layers some worker
    /// may follow cross the link from the origin (docs/cascade.md).
    Layers {
        room: RoomKey,
        track: TrackId,
        worker: WorkerId,
        max: Option<Layer>,
    },
    /// Ranking worker → workers with subscribers in `room`: its active speakers, loudest
    /// first, when the list changed (and to a worker that gained subscribers there), so
    /// bandwidth allocation can favour them.
    Speakers {
        room: RoomKey,
        speakers: Vec<ParticipantId>,
    },
}

impl CrossWorker {
    /// Whether losing this message would leave state wrong (announcements and interest), as
    /// opposed to media and keyframe requests, which a full ring may drop.
    pub fn is_lossless(&self) -> bool {
        matches!(self, CrossWorker::Room(_))
    }
}

/// A node API call for this worker.
#[derive(Debug)]
pub enum Command {
    /// Take over a session set up off the worker ([`Session::accept`]).
    Adopt {
        session: Box<Session>,
        answer_sdp: String,
        /// Publication order on the node (newer publishers have larger numbers).
        order: u64,
    },
    Close {
        session: SessionId,
    },
    Subscribe(Subscribe),
    SetSubscription(SetSubscription),
    Unsubscribe {
        session: SessionId,
        slot: u16,
    },
    /// A new offer on a live session (parsed off the worker). `seed` starts the sequence
    /// numbers of new outgoing tracks.
    Renegotiate {
        session: SessionId,
        offer: Box<Offer>,
        seed: u64,
    },
    SendData(SendData),
    /// Whose audio room `room` forwards ([`AudioFloor::Open`] forgets the room's floor).
    SetFloor {
        room: RoomId,
        floor: AudioFloor,
    },
}

/// The media engine of one worker.
pub struct Engine {
    id: WorkerId,
    config: EngineConfig,
    metrics: Arc<WorkerMetrics>,
    /// Time of the latest input.
    now: Instant,

    sessions: Vec<Option<Session>>,
    free: Vec<PeerId>,
    by_id: HashMap<SessionId, PeerId>,
    /// Flags and list of sessions written to since their last drain.
    queued: Vec<bool>,
    dirty: Vec<PeerId>,
    /// The round of drains under way: sessions taken from `dirty` (still flagged queued),
    /// left where a chunk of datagrams stopped it.
    draining: VecDeque<PeerId>,
    demux: demux::Demux,
    rooms: HashMap<RoomKey, Room>,
    timers: Timers,
    /// Scratch for [`Engine::handle_timeout`]: the timers due when it was called.
    due: Vec<(Instant, PeerId)>,
    next_housekeeping: Instant,

    /// Fresh publisher packets waiting for fan-out.
    media: Vec<Arc<MediaPacket>>,
    /// Copies in the datagrams queued since the shell last took them: when their packet
    /// arrived, and how many ([`Engine::sends_handed`]).
    handed: Vec<(Instant, u32)>,
    /// Fan-outs so far: where in a room's subscribers the next one starts.
    fan_out_turn: usize,
    /// Rooms under push-to-talk floor control, by name (a floor may be set before the room
    /// has a session on this worker, and outlives its sessions until it is opened again).
    floors: HashMap<RoomId, AudioFloor>,
    keyframe_requests: Vec<(RoomKey, Selection)>,
    /// Rooms whose subscriptions changed: the layers they want of relayed tracks are
    /// reported to the relay endpoint.
    layers_dirty: Vec<RoomKey>,
    /// Subscriber sessions whose bandwidth allocation is to be brought up to date.
    to_allocate: Vec<PeerId>,
    to_close: Vec<(PeerId, EndReason)>,

    /// This worker's publishers' speech in the current interval, and the rooms whose
    /// speakers this worker ranks.
    speech: SpeechWindow,
    speakers: SpeakerBoard,
    next_speech: Instant,

    transmits: VecDeque<Transmit>,
    cross: VecDeque<(WorkerId, CrossWorker)>,
    events: VecDeque<NodeEvent>,
    /// Every packet written to a subscriber, for the test kit's invariants.
    #[cfg(any(test, feature = "testkit"))]
    forwarded: Vec<ForwardRecord>,
}

/// One packet the engine wrote to a subscriber track (test kit only).
#[cfg(any(test, feature = "testkit"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardRecord {
    pub session: SessionId,
    pub slot: u16,
    /// The subscriber's (rewritten) sequence number.
    pub seq: u64,
    pub track: TrackId,
    pub layer: Layer,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.id)
            .field("sessions", &self.by_id.len())
            .field("rooms", &self.rooms.len())
            .finish()
    }
}

impl Engine {
    pub fn new(
        id: WorkerId,
        config: EngineConfig,
        metrics: Arc<WorkerMetrics>,
        now: Instant,
    ) -> Self {
        Self {
            id,
            config,
            metrics,
            now,
            sessions: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            queued: Vec::new(),
            dirty: Vec::new(),
            draining: VecDeque::new(),
            demux: demux::Demux::default(),
            rooms: HashMap::new(),
            timers: Timers::default(),
            due: Vec::new(),
            next_housekeeping: now + HOUSEKEEPING_INTERVAL,
            media: Vec::with_capacity(64),
            handed: Vec::with_capacity(64),
            fan_out_turn: 0,
            floors: HashMap::new(),
            keyframe_requests: Vec::new(),
            layers_dirty: Vec::new(),
            to_allocate: Vec::new(),
            to_close: Vec::new(),
            speech: SpeechWindow::default(),
            speakers: SpeakerBoard::default(),
            next_speech: now + speaker::SPEECH_INTERVAL,
            transmits: VecDeque::with_capacity(512),
            cross: VecDeque::new(),
            events: VecDeque::new(),
            #[cfg(any(test, feature = "testkit"))]
            forwarded: Vec::new(),
        }
    }

    /// What was written to subscribers since the last call (test kit only).
    #[cfg(any(test, feature = "testkit"))]
    pub fn take_forwarded(&mut self) -> Vec<ForwardRecord> {
        std::mem::take(&mut self.forwarded)
    }

    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.by_id.len()
    }

    /// Rooms this worker keeps state for.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Every room this worker keeps state for.
    pub fn rooms(&self) -> impl Iterator<Item = (&RoomKey, &Room)> {
        self.rooms.iter()
    }

    /// The room as this worker sees it, if it keeps state for it.
    pub fn room(&self, key: RoomKey) -> Option<&Room> {
        self.rooms.get(&key)
    }

    // ---- inputs ------------------------------------------------------------------------

    /// One datagram received on the worker's socket at `local` from `source`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        local: SocketAddr,
        datagram: &[u8],
    ) {
        self.now = now;
        WorkerMetrics::add(&self.metrics.packets_in, 1);
        WorkerMetrics::add(&self.metrics.bytes_in, datagram.len() as u64);
        let peer = match self.demux.route(source, datagram) {
            demux::Route::Session(peer) => peer,
            demux::Route::Malformed => return self.metrics.drop_packet(DropReason::Malformed),
            demux::Route::UnknownSource => {
                return self.metrics.drop_packet(DropReason::UnknownSource);
            }
            demux::Route::UnknownUfrag => {
                return self.metrics.drop_packet(DropReason::UnknownUfrag);
            }
        };
        let worker = self.id;
        let Some(session) = self.session_mut(peer) else {
            return self.metrics.drop_packet(DropReason::UnknownSource);
        };
        match session.handle_datagram(now, source, local, datagram) {
            Ok(true) => {}
            Ok(false) => self.metrics.drop_packet(DropReason::SessionRejected),
            Err(SessionBroken(msg)) => {
                tracing::error!(worker = %worker, session = %session.id, panic = %msg, "session panicked; closing it");
                self.to_close.push((peer, EndReason::Failed));
                return;
            }
        }
        // At once, whatever waits for the socket: str0m's contract is a drain after every
        // input (docs/architecture.md, "Inputs are answered at once").
        self.drain_session(peer);
    }

    /// A message from another worker.
    pub fn handle_cross_worker(&mut self, now: Instant, message: CrossWorker) {
        self.now = now;
        match message {
            CrossWorker::Media(packet) => self.media.push(packet),
            CrossWorker::KeyframeRequest { track, layer } => {
                if let Some(&peer) = self.by_id.get(&track.session) {
                    self.request_keyframe_local(peer, track.index, layer);
                }
            }
            CrossWorker::Room(notice) => self.handle_room_notice(*notice),
            CrossWorker::Speech(report) => self.speakers.observe(*report, now),
        }
        if self.media.len() >= 64 {
            self.process();
        }
    }

    fn handle_room_notice(&mut self, notice: RoomNotice) {
        match notice {
            RoomNotice::Interest {
                room,
                room_id,
                worker,
                interested,
            } => {
                if worker == self.id {
                    return;
                }
                let r = self
                    .rooms
                    .entry(room)
                    .or_insert_with(|| Room::new(room_id, self.config.layer_timeout));
                r.remote_workers.retain(|w| *w != worker);
                if interested {
                    r.remote_workers.push(worker);
                    // A worker new to the room learns its speakers from the ranking worker.
                    if let Some(list) = self.speakers.speakers(room) {
                        let notice = RoomNotice::Speakers {
                            room,
                            speakers: list.to_vec(),
                        };
                        self.cross
                            .push_back((worker, CrossWorker::Room(Box::new(notice))));
                    }
                }
                self.drop_room_if_empty(room);
            }
            RoomNotice::TrackPublished {
                room,
                room_id,
                track,
            } => {
                let relayed = Some(track.origin) == self.config.relay;
                self.rooms
                    .entry(room)
                    .or_insert_with(|| Room::new(room_id, self.config.layer_timeout))
                    .publish(track);
                if relayed {
                    self.layers_changed(room);
                }
            }
            RoomNotice::TrackUnpublished { room, track } => self.track_ended(room, track),
            // The relay endpoint's; a worker never gets one.
            RoomNotice::Layers { .. } => {}
            RoomNotice::Speakers { room, speakers } => self.set_speakers(room, speakers),
        }
    }

    /// Room `room`'s active speakers are now `speakers`: its subscribers' allocations follow.
    fn set_speakers(&mut self, room: RoomKey, speakers: Vec<ParticipantId>) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        if r.speakers != speakers {
            r.speakers = speakers;
            self.to_allocate.extend_from_slice(&r.subscribers);
        }
    }

    /// A node API call. Returns the response for control.
    pub fn handle_command(&mut self, now: Instant, command: Command) -> NodeResponse {
        self.now = now;
        let result = match command {
            Command::Adopt {
                session,
                answer_sdp,
                order,
            } => self
                .adopt(*session, answer_sdp, order)
                .map(NodeResponse::SessionCreated),
            Command::Close { session } => match self.by_id.get(&session) {
                Some(&peer) => {
                    self.end_session(peer, EndReason::Closed);
                    Ok(NodeResponse::Done)
                }
                None => Err(NodeError::UnknownSession),
            },
            Command::Subscribe(s) => self.subscribe(s).map(|()| NodeResponse::Done),
            Command::SetSubscription(s) => self.set_subscription(s).map(|()| NodeResponse::Done),
            Command::Unsubscribe { session, slot } => {
                self.unsubscribe(session, slot).map(|()| NodeResponse::Done)
            }
            Command::Renegotiate {
                session,
                offer,
                seed,
            } => self
                .renegotiate(session, *offer, seed)
                .map(NodeResponse::SessionCreated),
            Command::SendData(s) => self.send_data(s).map(|()| NodeResponse::Done),
            Command::SetFloor { room, floor } => {
                self.set_floor(room, floor);
                Ok(NodeResponse::Done)
            }
        };
        result.unwrap_or_else(NodeResponse::Error)
    }

    /// Time passed: run due session timers and, every [`HOUSEKEEPING_INTERVAL`], reap dead
    /// sessions and send REMB.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        // Serve only the deadlines due when the call began. A drain may re-arm its session at
        // or before `now` (work left after its budget); serving that again here, on the same
        // clock, could go on without end and starve the loop's I/O and commands. It waits for
        // the next call.
        let mut due = std::mem::take(&mut self.due);
        self.timers.take_due(now, &mut due);
        for (t, peer) in due.drain(..) {
            let Some(session) = self.session_mut(peer) else {
                continue;
            };
            if session.deadline != Some(t) {
                continue; // stale entry
            }
            session.deadline = None;
            if session.handle_timeout(now).is_err() {
                self.to_close.push((peer, EndReason::Failed));
                continue;
            }
            // Drained with the others, a chunk at a time: many timers due at once (reports,
            // a pacer's sends) make as many datagrams as a fan-out.
            self.mark_dirty(peer);
        }
        self.due = due;
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            self.housekeeping(now);
        }
        if now >= self.next_speech {
            self.next_speech = now + speaker::SPEECH_INTERVAL;
            self.rank_speakers(now);
        }
    }

    /// Send the interval's speech to the rooms' ranking workers; bring this worker's rankings
    /// up to date.
    fn rank_speakers(&mut self, now: Instant) {
        for report in self.speech.take() {
            let ranker = speaker::ranking_worker(report.room, self.config.workers);
            if ranker == self.id {
                self.speakers.observe(report, now);
            } else {
                self.cross
                    .push_back((ranker, CrossWorker::Speech(Box::new(report))));
            }
        }
        let changed = self.speakers.handle_timeout(now, &mut self.events);
        for (room, speakers) in changed {
            let workers = self
                .rooms
                .get(&room)
                .map(|r| r.remote_workers.clone())
                .unwrap_or_default();
            for worker in workers {
                let notice = RoomNotice::Speakers {
                    room,
                    speakers: speakers.clone(),
                };
                self.cross
                    .push_back((worker, CrossWorker::Room(Box::new(notice))));
            }
            self.set_speakers(room, speakers);
        }
    }

    /// End every session (the worker is stopping).
    pub fn shutdown(&mut self, now: Instant) {
        self.now = now;
        let peers: Vec<PeerId> = self.by_id.values().copied().collect();
        for peer in peers {
            self.end_session(peer, EndReason::NodeStopped);
        }
    }

    // ---- outputs -----------------------------------------------------------------------

    /// The next datagram to send. Work is done a chunk at a time: once the queued datagrams
    /// are taken, the next call goes on with it. [`Engine::transmits_queued`] at zero marks
    /// the end of a chunk, where the shell hands what it took to the kernel.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() {
            self.process();
        }
        self.transmits.pop_front()
    }

    /// Datagrams ready for [`Engine::poll_transmit`] without further processing.
    pub fn transmits_queued(&self) -> usize {
        self.transmits.len()
    }

    /// The shell handed every transmit polled so far to the socket backend at `handed`:
    /// the forwarded copies among them are recorded in the forwarding delay histogram
    /// (arrival at the node → handed over). A copy is counted with the first datagrams handed
    /// after its subscriber's drain, so one str0m's pacer holds back for a later drain counts
    /// as handed with the drain that wrote it.
    pub fn sends_handed(&mut self, handed: Instant) {
        self.metrics.record_forward_delays(
            self.handed.drain(..).map(|(arrival, copies)| {
                (handed.saturating_duration_since(arrival), copies.into())
            }),
        );
    }

    /// The next message for another worker.
    pub fn poll_cross_worker(&mut self) -> Option<(WorkerId, CrossWorker)> {
        self.process();
        self.cross.pop_front()
    }

    /// The next event for control.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.process();
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] is due next. Work still pending after processing makes
    /// it due at once.
    pub fn poll_timeout(&mut self) -> Instant {
        self.process();
        if self.has_pending_work() {
            return self.now;
        }
        // Discard stale heap entries (a session re-armed or ended).
        while let Some((t, peer)) = self.timers.peek() {
            match self.session(peer) {
                Some(s) if s.deadline == Some(t) => break,
                _ => {
                    self.timers.pop();
                }
            }
        }
        let timer = self.timers.peek().map(|(t, _)| t);
        let mut due = timer.map_or(self.next_housekeeping, |t| t.min(self.next_housekeeping));
        // Speech to send or rankings to keep: wake every interval; a silent worker does not.
        if !self.speech.is_empty() || !self.speakers.is_empty() {
            due = due.min(self.next_speech);
        }
        due
    }

    fn has_pending_work(&self) -> bool {
        !self.dirty.is_empty()
            || !self.draining.is_empty()
            || !self.layers_dirty.is_empty()
            || !self.media.is_empty()
            || !self.keyframe_requests.is_empty()
            || !self.to_allocate.is_empty()
            || !self.to_close.is_empty()
    }

    // ---- processing --------------------------------------------------------------------

    /// Do the work inputs left behind: drain written sessions, fan out their packets, route
    /// keyframe requests, close ended sessions. Bounded.
    fn process(&mut self) {
        for _ in 0..PROCESS_ROUNDS {
            if !self.has_pending_work() {
                return;
            }
            if !self.drain_dirty() {
                // A chunk of datagrams is ready: the shell takes it before we go on.
                return;
            }
            self.fan_out();
            let requests = std::mem::take(&mut self.keyframe_requests);
            for (room, selection) in requests {
                self.route_keyframe_request(room, selection);
            }
            let mut allocate = std::mem::take(&mut self.to_allocate);
            allocate.sort_unstable();
            allocate.dedup();
            for peer in allocate {
                self.allocate(peer);
            }
            let closing = std::mem::take(&mut self.to_close);
            for (peer, reason) in closing {
                self.end_session(peer, reason);
            }
            self.report_relay_layers();
        }
    }

    /// Drain the sessions written to, in the order they were written, until a chunk of
    /// datagrams is queued ([`HANDOVER_CHUNK`]). Returns whether the round is done; if not,
    /// the next call goes on where this one stopped. Sessions marked during the round wait
    /// for the next one.
    fn drain_dirty(&mut self) -> bool {
        if self.draining.is_empty() {
            self.draining.extend(self.dirty.drain(..));
        }
        while let Some(&peer) = self.draining.front() {
            if self.transmits.len() >= HANDOVER_CHUNK {
                return false;
            }
            self.draining.pop_front();
            if let Some(q) = self.queued.get_mut(peer.0 as usize) {
                *q = false;
            }
            self.drain_session(peer);
        }
        true
    }

    /// Room `room`'s subscriptions (or its relayed tracks) changed.
    fn layers_changed(&mut self, room: RoomKey) {
        if self.config.relay.is_some() && !self.layers_dirty.contains(&room) {
            self.layers_dirty.push(room);
        }
    }

    /// Tell the relay endpoint, per relayed track of the rooms whose subscriptions changed,
    /// the highest layer this worker's subscriptions may follow, when it changed.
    fn report_relay_layers(&mut self) {
        let dirty = std::mem::take(&mut self.layers_dirty);
        let Some(relay) = self.config.relay else {
            return;
        };
        for key in dirty {
            let Some(room) = self.rooms.get_mut(&key) else {
                continue;
            };
            let sessions = &self.sessions;
            let slots = || {
                room.subscribers
                    .iter()
                    .filter_map(|p| sessions.get(p.0 as usize).and_then(Option::as_ref))
                    .flat_map(|s| s.tracks.iter())
                    .map(|slot| (slot.kind, slot.subscription))
            };
            let changes: Vec<(TrackId, Option<Layer>)> = room
                .tracks()
                .iter()
                .filter(|t| t.origin == relay)
                .map(|t| (t.id, room::wanted_layer(t, slots())))
                .filter(|&(track, max)| room.relay_layers.get(&track).copied() != max)
                .collect();
            for (track, max) in changes {
                match max {
                    Some(layer) => room.relay_layers.insert(track, layer),
                    None => room.relay_layers.remove(&track),
                };
                let worker = self.id;
                self.cross.push_back((
                    relay,
                    CrossWorker::Room(Box::new(RoomNotice::Layers {
                        room: key,
                        track,
                        worker,
                        max,
                    })),
                ));
            }
        }
    }

    fn session(&self, peer: PeerId) -> Option<&Session> {
        self.sessions.get(peer.0 as usize).and_then(Option::as_ref)
    }

    fn session_mut(&mut self, peer: PeerId) -> Option<&mut Session> {
        session_in(&mut self.sessions, peer)
    }

    fn mark_dirty(&mut self, peer: PeerId) {
        if let Some(q) = self.queued.get_mut(peer.0 as usize) {
            if !*q {
                *q = true;
                self.dirty.push(peer);
            }
        }
    }

    fn broadcast(&mut self, notice: impl Fn() -> RoomNotice) {
        let workers = (0..self.config.workers).map(|w| WorkerId(w as u16));
        for worker in workers.chain(self.config.relay) {
            if worker != self.id {
                self.cross
                    .push_back((worker, CrossWorker::Room(Box::new(notice()))));
            }
        }
    }

    fn adopt(
        &mut self,
        session: Session,
        answer_sdp: String,
        order: u64,
    ) -> Result<SessionCreated, NodeError> {
        if self.by_id.len() >= self.config.max_sessions {
            return Err(NodeError::NoCapacity);
        }
        if self.by_id.contains_key(&session.id) {
            return Err(NodeError::DuplicateSession);
        }
        let peer = match self.free.pop() {
            Some(peer) => peer,
            None => {
                self.sessions.push(None);
                self.queued.push(false);
                PeerId((self.sessions.len() - 1) as u32)
            }
        };
        let mut session = session;
        session.order = order;
        let id = session.id;
        let key = session.room;
        let kind = session.kind;
        self.demux.add_session(peer, session.local_ufrag());
        self.by_id.insert(id, peer);
        let room_id = session.room_id.clone();
        let room = self
            .rooms
            .entry(key)
            .or_insert_with(|| Room::new(room_id.clone(), self.config.layer_timeout));
        let published = session.published.clone();
        match kind {
            SessionKind::Publish => {
                room.publishers.push(peer);
                WorkerMetrics::add(&self.metrics.publish_sessions, 1);
            }
            SessionKind::Subscribe => {
                room.subscribers.push(peer);
                WorkerMetrics::add(&self.metrics.subscribe_sessions, 1);
            }
        }
        let first_subscriber = kind == SessionKind::Subscribe && room.subscribers.len() == 1;
        self.sessions[peer.0 as usize] = Some(session);
        for media in &published {
            self.publish_media(peer, media);
        }
        if kind == SessionKind::Subscribe {
            self.layers_changed(key);
        }
        if first_subscriber {
            let worker = self.id;
            self.broadcast(|| RoomNotice::Interest {
                room: key,
                room_id: room_id.clone(),
                worker,
                interested: true,
            });
        }
        self.drain_session(peer);
        tracing::info!(worker = %self.id, session = %id, room = %room_id, kind = kind.as_str(), "session created");
        self.describe(peer, answer_sdp)
    }

    /// A new offer on a live session: new sections become tracks (announced as at creation)
    /// or slots, sections that stopped receiving end their tracks, and new ICE credentials
    /// (an ICE restart) become the session's demux key.
    fn renegotiate(
        &mut self,
        id: SessionId,
        offer: Offer,
        seed: u64,
    ) -> Result<SessionCreated, NodeError> {
        let &peer = self.by_id.get(&id).ok_or(NodeError::UnknownSession)?;
        let session = self.session_mut(peer).ok_or(NodeError::UnknownSession)?;
        let before: Vec<Mid> = session.published.iter().map(|p| p.mid).collect();
        let (answer_sdp, removed) = match session.renegotiate(offer, session::sequence_starts(seed))
        {
            Ok(done) => done,
            Err(e @ NodeError::SessionFailed(_)) => {
                self.to_close.push((peer, EndReason::Failed));
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let ufrag = session.local_ufrag();
        let key = session.room;
        let added: Vec<PublishedMedia> = session
            .published
            .iter()
            .filter(|p| !before.contains(&p.mid))
            .copied()
            .collect();
        let room_id = session.room_id.clone();
        self.demux.set_ufrag(peer, ufrag);
        for media in &removed {
            let track = TrackId {
                session: id,
                index: media.index,
            };
            WorkerMetrics::sub(&self.metrics.published_tracks, 1);
            self.track_ended(key, track);
            self.broadcast(|| RoomNotice::TrackUnpublished { room: key, track });
            self.events.push_back(NodeEvent::TrackUnpublished {
                track,
                room: room_id.clone(),
            });
        }
        for media in &added {
            self.publish_media(peer, media);
        }
        self.layers_changed(key);
        self.mark_dirty(peer);
        self.drain_session(peer);
        tracing::info!(worker = %self.id, session = %id, room = %room_id, added = added.len(), removed = removed.len(), "session renegotiated");
        self.describe(peer, answer_sdp)
    }

    /// Publish one of `peer`'s tracks in its room: to this worker's room, the other workers
    /// and control.
    fn publish_media(&mut self, peer: PeerId, media: &PublishedMedia) {
        let Some(session) = self.session(peer) else {
            return;
        };
        let key = session.room;
        let room_id = session.room_id.clone();
        let track = PublishedTrack::new(
            TrackId {
                session: session.id,
                index: media.index,
            },
            session.participant,
            session::proto_kind(media.kind),
            session.order,
            self.id,
        );
        let info = TrackInfo {
            track: track.id,
            room: room_id.clone(),
            identity: session.identity.clone(),
            kind: track.kind,
            layers: media.layers,
        };
        let Some(room) = self.rooms.get_mut(&key) else {
            return;
        };
        room.publish(track.clone());
        WorkerMetrics::add(&self.metrics.published_tracks, 1);
        self.broadcast(|| RoomNotice::TrackPublished {
            room: key,
            room_id: room_id.clone(),
            track: track.clone(),
        });
        self.events.push_back(NodeEvent::TrackPublished(info));
    }

    /// What control learns of a session after an offer: its answer, tracks and slots.
    fn describe(&self, peer: PeerId, answer_sdp: String) -> Result<SessionCreated, NodeError> {
        let session = self.session(peer).ok_or(NodeError::UnknownSession)?;
        Ok(SessionCreated {
            session: session.id,
            worker: self.id,
            answer_sdp,
            tracks: session
                .published
                .iter()
                .map(|media| TrackInfo {
                    track: TrackId {
                        session: session.id,
                        index: media.index,
                    },
                    room: session.room_id.clone(),
                    identity: session.identity.clone(),
                    kind: session::proto_kind(media.kind),
                    layers: media.layers,
                })
                .collect(),
            slots: session.tracks.iter().map(|t| t.kind).collect(),
            track_mids: session
                .published
                .iter()
                .map(|m| m.mid.to_string())
                .collect(),
            slot_mids: session.tracks.iter().map(|t| t.mid.to_string()).collect(),
        })
    }

    fn subscriber_slot(
        &mut self,
        session: SessionId,
        slot: u16,
    ) -> Result<(PeerId, usize), NodeError> {
        let &peer = self.by_id.get(&session).ok_or(NodeError::UnknownSession)?;
        let s = self.session(peer).ok_or(NodeError::UnknownSession)?;
        if s.kind != SessionKind::Subscribe {
            return Err(NodeError::BadRequest(
                "only a subscriber session has subscriptions".into(),
            ));
        }
        let index = usize::from(slot);
        if index >= s.tracks.len() {
            return Err(NodeError::UnknownTrack(format!(
                "slot {slot}: the session has {} outgoing tracks",
                s.tracks.len()
            )));
        }
        Ok((peer, index))
    }

    fn subscribe(&mut self, s: Subscribe) -> Result<(), NodeError> {
        let (peer, index) = self.subscriber_slot(s.session, s.slot)?;
        let room_key = self.session(peer).map(|x| x.room);
        let kind = self
            .session(peer)
            .map(|x| x.tracks[index].kind)
            .ok_or(NodeError::UnknownSession)?;
        let track_kind = room_key
            .and_then(|k| self.rooms.get(&k))
            .and_then(|r| r.track(s.track))
            .map(|t| t.kind)
            .ok_or_else(|| NodeError::UnknownTrack(format!("no track {} in the room", s.track)))?;
        if track_kind != kind {
            return Err(NodeError::UnknownTrack(format!(
                "track {} is {}, slot {} carries {}",
                s.track,
                track_kind.as_str(),
                s.slot,
                kind.as_str()
            )));
        }
        let session = self.session_mut(peer).ok_or(NodeError::UnknownSession)?;
        let slot = &mut session.tracks[index];
        slot.subscription.want = Want::Track(s.track);
        slot.subscription.max_layer = s.max_layer;
        let room = session.room;
        self.layers_changed(room);
        self.to_allocate.push(peer);
        Ok(())
    }

    fn set_subscription(&mut self, s: SetSubscription) -> Result<(), NodeError> {
        let (peer, index) = self.subscriber_slot(s.session, s.slot)?;
        let session = self.session_mut(peer).ok_or(NodeError::UnknownSession)?;
        let slot = &mut session.tracks[index];
        slot.subscription.max_layer = s.max_layer;
        if s.paused && !slot.subscription.paused {
            slot.forwarder.reset();
        }
        slot.subscription.paused = s.paused;
        let room = session.room;
        self.layers_changed(room);
        self.to_allocate.push(peer);
        Ok(())
    }

    fn send_data(&mut self, s: SendData) -> Result<(), NodeError> {
        let peer = *self
            .by_id
            .get(&s.session)
            .ok_or(NodeError::UnknownSession)?;
        let session = self.session_mut(peer).ok_or(NodeError::UnknownSession)?;
        match session.send_data(s.reliable, &s.text) {
            Ok(Ok(())) => {
                WorkerMetrics::add(&self.metrics.data_out, 1);
                self.mark_dirty(peer);
                Ok(())
            }
            Ok(Err(refused)) => {
                WorkerMetrics::add(&self.metrics.data_dropped, 1);
                Err(NodeError::BadRequest(refused.as_str().to_string()))
            }
            Err(SessionBroken(msg)) => {
                tracing::error!(worker = %self.id, session = %s.session, panic = %msg, "session panicked; closing it");
                self.end_session(peer, EndReason::Failed);
                Err(NodeError::SessionFailed(msg))
            }
        }
    }

    fn unsubscribe(&mut self, session: SessionId, slot: u16) -> Result<(), NodeError> {
        let (peer, index) = self.subscriber_slot(session, slot)?;
        let session = self.session_mut(peer).ok_or(NodeError::UnknownSession)?;
        let slot = &mut session.tracks[index];
        slot.subscription.want = Want::Nothing;
        slot.forwarder.reset();
        let room = session.room;
        self.layers_changed(room);
        self.to_allocate.push(peer);
        Ok(())
    }

    fn end_session(&mut self, peer: PeerId, reason: EndReason) {
        let Some(mut session) = self
            .sessions
            .get_mut(peer.0 as usize)
            .and_then(Option::take)
        else {
            return;
        };
        if !matches!(reason, EndReason::Failed) {
            // The feedback since str0m's last stats event; a failure here changes nothing,
            // the session ends either way.
            if let Ok(feedback) = session.final_feedback(self.now) {
                self.metrics.add_feedback(feedback);
            }
        }
        // A connection that went away (rather than was closed) is lost before it ends, unless
        // its silence said so already; one that never got a judgement stays without one.
        if matches!(reason, EndReason::Disconnected | EndReason::IceTimeout)
            && session.quality.quality().is_some()
        {
            session.quality.lose();
            push_quality(&mut self.events, &mut session);
        }
        session.disconnect();
        self.demux.remove_session(peer);
        self.by_id.remove(&session.id);
        self.free.push(peer);
        let key = session.room;
        let mut last_subscriber = false;
        if let Some(r) = self.rooms.get_mut(&key) {
            let before = r.subscribers.len();
            r.subscribers.retain(|s| *s != peer);
            r.publishers.retain(|s| *s != peer);
            last_subscriber = before > 0 && r.subscribers.is_empty();
        }
        match session.kind {
            SessionKind::Publish => {
                WorkerMetrics::sub(&self.metrics.publish_sessions, 1);
                WorkerMetrics::sub(
                    &self.metrics.published_tracks,
                    session.published.len() as u64,
                );
                for media in &session.published {
                    let track = TrackId {
                        session: session.id,
                        index: media.index,
                    };
                    self.track_ended(key, track);
                    self.broadcast(|| RoomNotice::TrackUnpublished { room: key, track });
                    self.events.push_back(NodeEvent::TrackUnpublished {
                        track,
                        room: session.room_id.clone(),
                    });
                }
            }
            SessionKind::Subscribe => {
                WorkerMetrics::sub(&self.metrics.subscribe_sessions, 1);
                WorkerMetrics::sub(
                    &self.metrics.bandwidth_paused_tracks,
                    u64::from(session.bandwidth_paused),
                );
                self.layers_changed(key);
                if last_subscriber {
                    let room_id = session.room_id.clone();
                    let worker = self.id;
                    self.broadcast(|| RoomNotice::Interest {
                        room: key,
                        room_id: room_id.clone(),
                        worker,
                        interested: false,
                    });
                }
            }
        }
        match reason {
            EndReason::Closed | EndReason::NodeStopped => {}
            EndReason::Failed => WorkerMetrics::add(&self.metrics.session_panics, 1),
            EndReason::ConnectTimeout | EndReason::IceTimeout | EndReason::Disconnected => {
                WorkerMetrics::add(&self.metrics.sessions_reaped, 1)
            }
        }
        self.drop_room_if_empty(key);
        tracing::info!(worker = %self.id, session = %session.id, room = %session.room_id, reason = reason.as_str(), "session ended");
        self.events.push_back(NodeEvent::SessionEnded {
            session: session.id,
            room: session.room_id,
            reason,
        });
    }

    /// A track of `room` ended (here or on another worker): subscribers stop following it.
    fn track_ended(&mut self, room: RoomKey, track: TrackId) {
        self.speakers.forget_track(room, track);
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        r.unpublish(track);
        for &sub in &r.subscribers {
            if let Some(s) = self
                .sessions
                .get_mut(sub.0 as usize)
                .and_then(Option::as_mut)
            {
                for t in &mut s.tracks {
                    t.forwarder.forget_track(track);
                }
            }
        }
        self.drop_room_if_empty(room);
    }

    fn drop_room_if_empty(&mut self, room: RoomKey) {
        if self.rooms.get(&room).is_some_and(Room::is_empty) {
            self.rooms.remove(&room);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let connect_timeout = self.config.connect_timeout;
        let first_contact_timeout = self.config.first_contact_timeout;
        let ice_timeout = self.config.ice_timeout;
        let remb = str0m::bwe::Bitrate::kbps(self.config.publisher_remb_kbps);
        let mut remb_sent = Vec::new();
        for (index, slot) in self.sessions.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            let peer = PeerId(index as u32);
            let reason = if !s.is_alive() && !s.connected {
                // str0m gave up on ICE before our own deadline: it never connected.
                Some(EndReason::ConnectTimeout)
            } else if !s.is_alive() {
                Some(EndReason::Disconnected)
            } else if !s.connected
                && (now.saturating_duration_since(s.created) > connect_timeout
                    || (!s.contacted
                        && now.saturating_duration_since(s.created) > first_contact_timeout))
            {
                Some(EndReason::ConnectTimeout)
            } else if s.connected && now.saturating_duration_since(s.last_input) > ice_timeout {
                Some(EndReason::IceTimeout)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.to_close.push((peer, reason));
                continue;
            }
            if s.connected {
                s.quality.cap(if s.bandwidth_paused > 0 {
                    Quality::Poor
                } else {
                    Quality::Excellent
                });
                s.quality.handle_timeout(now, s.last_input);
                push_quality(&mut self.events, s);
            }
            match s.kind {
                SessionKind::Publish => match s.send_remb(remb) {
                    Ok(()) => remb_sent.push(peer),
                    Err(_) => self.to_close.push((peer, EndReason::Failed)),
                },
                // Measured rates moved, upgrades wait out their hold: allocate again.
                SessionKind::Subscribe if s.estimate.is_some() => self.to_allocate.push(peer),
                SessionKind::Subscribe => {}
            }
        }
        for peer in remb_sent {
            self.mark_dirty(peer);
        }
    }

    /// Poll a session's outputs until it returns a timeout (bounded).
    fn drain_session(&mut self, peer: PeerId) {
        let worker = self.id;
        let now = self.now;
        let Some(session) = session_in(&mut self.sessions, peer) else {
            return;
        };
        add_handed(&mut self.handed, &mut session.unhanded);
        let mut finished = false;
        let mut due = DueTimeouts::new(now);
        // str0m's pacer (on with estimation) sees packets written since the last drain only
        // at a timeout: give it one now, so they leave in this drain.
        if std::mem::take(&mut session.written)
            && session.estimate.is_some()
            && session.handle_timeout(now).is_err()
        {
            self.to_close.push((peer, EndReason::Failed));
            return;
        }
        let mut budget = DRAIN_BUDGET;
        while budget > 0 {
            let transmits = &mut self.transmits;
            let polled = session.poll_until_event(budget, |destination, contents| {
                transmits.push_back(Transmit {
                    destination,
                    contents,
                });
            });
            let output = match polled {
                Ok((sent, next)) => {
                    budget -= sent;
                    if sent > 0 {
                        due.produced();
                    }
                    match next {
                        Polled::Output(o) => o,
                        Polled::Budget => break,
                        Polled::Failed => {
                            // poll_output errored: the session is unusable.
                            self.to_close.push((peer, EndReason::Disconnected));
                            finished = true;
                            break;
                        }
                    }
                }
                Err(SessionBroken(msg)) => {
                    tracing::error!(worker = %worker, session = %session.id, panic = %msg, "session panicked; closing it");
                    self.to_close.push((peer, EndReason::Failed));
                    finished = true;
                    break;
                }
            };
            budget = budget.saturating_sub(1);
            if !matches!(output, Output::Timeout(_)) {
                due.produced();
            }
            match output {
                // With bandwidth estimation str0m's pacer hands out each paced packet only
                // after a timeout just past the last one (unpaced media it has seen leaves
                // without): serve it here, so they leave in this drain (one send batch, a GSO
                // run) rather than one per loop pass.
                Output::Timeout(t) => {
                    let next = match due.on_timeout(t) {
                        Due::Serve(at) => {
                            if session.handle_timeout(at).is_err() {
                                self.to_close.push((peer, EndReason::Failed));
                                finished = true;
                                break;
                            }
                            continue;
                        }
                        Due::Arm(at) => at,
                        Due::Stalled(at) => {
                            tracing::trace!(worker = %worker, session = %session.id, reason = ?session.timeout_reason(), "timeout stalled at one instant; re-armed after the slack");
                            at
                        }
                    };
                    if session.deadline != Some(next) {
                        session.deadline = Some(next);
                        self.timers.push(next, peer);
                    }
                    finished = true;
                    break;
                }
                // `poll_until_event` hands datagrams over itself; one here is still sent.
                Output::Transmit(t) => {
                    session.count_transmit(&t.contents);
                    self.transmits.push_back(Transmit {
                        destination: t.destination,
                        contents: t.contents.into(),
                    });
                }
                Output::Event(event) => match event {
                    Event::Connected => {
                        session.connected = true;
                        tracing::debug!(worker = %worker, session = %session.id, "connected");
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.to_close.push((peer, EndReason::Disconnected));
                    }
                    Event::RtpPacket(packet) if session.kind == SessionKind::Publish => {
                        match session.ingress_packet(worker, packet, now) {
                            Ok(Some(p)) => self.media.push(Arc::new(p)),
                            Ok(None) => {}
                            Err(_) => {
                                self.to_close.push((peer, EndReason::Failed));
                                finished = true;
                                break;
                            }
                        }
                    }
                    Event::KeyframeRequest(req) if session.kind == SessionKind::Subscribe => {
                        let selection = session
                            .tracks
                            .iter()
                            .find(|t| t.mid == req.mid)
                            .and_then(|t| t.forwarder.current());
                        if let Some(selection) = selection {
                            self.keyframe_requests.push((session.room, selection));
                        }
                    }
                    Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                        let estimate = estimate.as_u64();
                        if session.estimate != Some(estimate) {
                            session.estimate = Some(estimate);
                            self.to_allocate.push(peer);
                        }
                    }
                    Event::MediaEgressStats(stats) => {
                        self.metrics.add_feedback(session.egress_feedback(&stats));
                        session.quality.observe_egress(&stats);
                    }
                    Event::MediaIngressStats(stats) => {
                        self.metrics.add_feedback(session.ingress_feedback(&stats));
                        session.quality.observe_ingress(&stats);
                    }
                    Event::PeerStats(stats) => session.quality.observe_peer(&stats),
                    Event::ChannelOpen(id, label) => match session.data_channel_opened(id) {
                        Ok((used, reliable)) => {
                            tracing::debug!(worker = %worker, session = %session.id, %label, used, reliable, "data channel open");
                        }
                        Err(_) => {
                            self.to_close.push((peer, EndReason::Failed));
                            finished = true;
                            break;
                        }
                    },
                    Event::ChannelClose(id) => session.data_channel_closed(id),
                    Event::ChannelData(message) => match session.data_received(message, now) {
                        Ok((reliable, text)) => {
                            WorkerMetrics::add(&self.metrics.data_in, 1);
                            self.events.push_back(NodeEvent::Data {
                                session: session.id,
                                room: session.room_id.clone(),
                                reliable,
                                text,
                            });
                        }
                        Err(refused) => {
                            WorkerMetrics::add(&self.metrics.data_dropped, 1);
                            tracing::debug!(worker = %worker, session = %session.id, reason = refused.as_str(), "data channel message dropped");
                        }
                    },
                    _ => {}
                },
            }
        }
        if !finished {
            // Still producing after the bound: come back in the next round.
            self.mark_dirty(peer);
        }
    }

    /// Share subscriber `peer`'s bandwidth estimate among its tracks ([`allocation`]): what
    /// each follows, what its layers cost, whose are the room's speakers.
    fn allocate(&mut self, peer: PeerId) {
        let now = self.now;
        let Some(session) = session_in(&mut self.sessions, peer) else {
            return;
        };
        let (Some(estimate), Some(room)) = (session.estimate, self.rooms.get_mut(&session.room))
        else {
            return;
        };
        let own = Some(session.participant);
        let demands: Vec<Demand> = session
            .tracks
            .iter()
            .map(|slot| {
                let target = room.target(slot.kind, &slot.subscription, own, now);
                let track = target.map(|t| t.selection.track);
                Demand {
                    kind: slot.kind,
                    track,
                    max_layer: slot.subscription.max_layer,
                    speaker: target
                        .and_then(|t| room.speakers.iter().position(|p| *p == t.participant)),
                    rates: track.map_or([None; Layer::COUNT], |t| room.layer_rates(t, now)),
                }
            })
            .collect();
        let allocation = session.allocator.allocate(estimate, &demands, now);
        if let Err(SessionBroken(msg)) = session.apply_allocation(&allocation) {
            tracing::error!(worker = %self.id, session = %session.id, panic = %msg, "session panicked; closing it");
            self.to_close.push((peer, EndReason::Failed));
            return;
        }
        WorkerMetrics::add(
            &self.metrics.bandwidth_switches,
            u64::from(allocation.switches),
        );
        WorkerMetrics::add(
            &self.metrics.bandwidth_paused_tracks,
            u64::from(allocation.paused),
        );
        WorkerMetrics::sub(
            &self.metrics.bandwidth_paused_tracks,
            u64::from(session.bandwidth_paused),
        );
        session.bandwidth_paused = allocation.paused;
        if !allocation.changed.is_empty() {
            tracing::debug!(worker = %self.id, session = %session.id, estimate, changed = ?allocation.changed, "bandwidth allocation");
        }
        self.mark_dirty(peer);
    }

    /// Send a keyframe request to the publisher of `selection`, wherever on the node it lives.
    fn route_keyframe_request(&mut self, room: RoomKey, selection: Selection) {
        let Some(origin) = self
            .rooms
            .get(&room)
            .and_then(|r| r.track(selection.track))
            .map(|t| t.origin)
        else {
            return;
        };
        if origin == self.id {
            if let Some(&peer) = self.by_id.get(&selection.track.session) {
                self.request_keyframe_local(peer, selection.track.index, selection.layer);
            }
        } else {
            self.cross.push_back((
                origin,
                CrossWorker::KeyframeRequest {
                    track: selection.track,
                    layer: selection.layer,
                },
            ));
        }
    }

    fn request_keyframe_local(&mut self, peer: PeerId, index: u16, layer: Layer) {
        let now = self.now;
        let Some(session) = self.session_mut(peer) else {
            return;
        };
        match session.request_keyframe(index, layer, now) {
            Ok(true) => {
                tracing::debug!(session = %session.id, slot = index, layer = layer.index(), "keyframe requested");
                WorkerMetrics::add(&self.metrics.keyframe_requests, 1);
                self.mark_dirty(peer);
            }
            Ok(false) => {}
            Err(_) => self.to_close.push((peer, EndReason::Failed)),
        }
    }

    /// Gate room `room`'s audio by `floor`. Every audio forwarder of the room's subscribers here
    /// starts afresh at its next packet: a participant's packets held back while someone else
    /// held the floor would otherwise leave a hole in its listeners' sequence numbers, which a
    /// receiver counts as loss (and a connection quality judges by).
    fn set_floor(&mut self, room: RoomId, floor: AudioFloor) {
        // Control re-asserts a room's floor now and then (a node may have restarted without
        // it); the same floor again changes nothing.
        if self.floors.get(&room).copied().unwrap_or_default() == floor {
            return;
        }
        let subscribers: Vec<PeerId> = self
            .rooms
            .values()
            .filter(|r| r.id == room)
            .flat_map(|r| r.subscribers.iter().copied())
            .collect();
        for peer in subscribers {
            if let Some(session) = session_in(&mut self.sessions, peer) {
                for slot in &mut session.tracks {
                    if slot.kind == sfu_proto::MediaKind::Audio {
                        slot.forwarder.reset();
                    }
                }
            }
        }
        tracing::debug!(%room, ?floor, "audio floor set");
        match floor {
            AudioFloor::Open => self.floors.remove(&room),
            _ => self.floors.insert(room, floor),
        };
    }

    /// Deliver queued publisher packets to this worker's subscribers and, for packets of
    /// tracks published here, one reference to every other worker with subscribers in the
    /// room.
    fn fan_out(&mut self) {
        if self.media.is_empty() {
            return;
        }
        let now = self.now;
        let turn = self.fan_out_turn;
        self.fan_out_turn = self.fan_out_turn.wrapping_add(1);
        let mut media = std::mem::take(&mut self.media);
        // Counted here and published once per call: an atomic add per copy was ~4 % of a
        // forwarding worker's samples (a locked instruction waits for the copy's stores).
        let mut copies = 0u64;
        for packet in media.drain(..) {
            let Some(room) = self.rooms.get_mut(&packet.room) else {
                continue;
            };
            if !room.observe(&packet.header, packet.payload.len(), packet.arrival) {
                continue;
            }
            // Push to talk: only the floor holder's audio goes on, to this worker's
            // subscribers and to the others (each gates what reaches it from elsewhere too).
            if !self.floors.is_empty() && packet.header.kind == sfu_proto::MediaKind::Audio {
                let floor = self.floors.get(&room.id).copied().unwrap_or_default();
                if !floor.lets(packet.header.participant) {
                    WorkerMetrics::add(&self.metrics.floor_dropped, 1);
                    continue;
                }
            }
            if room.take_layer_started() {
                self.to_allocate.extend_from_slice(&room.subscribers);
            }
            if packet.origin == self.id {
                for &w in &room.remote_workers {
                    self.cross
                        .push_back((w, CrossWorker::Media(packet.clone())));
                }
                if let Some(level) = packet.header.audio_level {
                    if self.speakers.is_speech(level) {
                        let h = &packet.header;
                        self.speech
                            .record(packet.room, &room.id, h.participant, h.track);
                    }
                }
            }
            let kind = packet.header.kind;
            let track = packet.header.track;
            // The common case (WHEP: newest other publisher, highest layer) computed once.
            let newest = room::Subscription::new(Want::NewestOther);
            let shared_target = room.target(kind, &newest, None, now);
            // Starting one further each pass, so that no subscriber is always drained (and
            // handed over) last.
            let subscribers = &room.subscribers;
            let start = turn % subscribers.len().max(1);
            let (last, first) = subscribers.split_at(start);
            for &sub_peer in first.iter().chain(last) {
                let Some(sub) = self
                    .sessions
                    .get_mut(sub_peer.0 as usize)
                    .and_then(Option::as_mut)
                else {
                    continue;
                };
                if !sub.connected {
                    continue;
                }
                let own = Some(sub.participant);
                let mut written = false;
                for index in 0..sub.tracks.len() {
                    let slot = &sub.tracks[index];
                    if slot.kind != kind {
                        continue;
                    }
                    let subscription = slot.forwarding();
                    let target = match subscription.want {
                        Want::Track(t) if t != track => continue,
                        Want::NewestOther
                            if !subscription.paused
                                && subscription.max_layer == Layer::HIGH
                                && shared_target.is_some_and(|t| Some(t.participant) != own) =>
                        {
                            shared_target
                        }
                        _ => room.target(kind, &subscription, own, now),
                    };
                    let target = target.map(|t| t.selection);
                    let forwarder = &mut sub.tracks[index].forwarder;
                    let before = forwarder.current();
                    let decision = forwarder.handle_packet(&packet, target, now);
                    if forwarder.current() != before {
                        tracing::debug!(
                            worker = %self.id,
                            session = %sub.id,
                            slot = index,
                            track = %track,
                            from = ?before.map(|s| s.layer.index()),
                            to = packet.header.layer.index(),
                            "forwarding switched"
                        );
                    }
                    if let Some(request) = decision.keyframe_request {
                        self.keyframe_requests.push((packet.room, request));
                    }
                    let Some(rewritten) = decision.forward else {
                        continue;
                    };
                    match sub.write_forwarded(index, &packet, rewritten) {
                        Ok(Forwarded::Written) => {
                            copies += 1;
                            written = true;
                            sub.unhanded.push(packet.arrival);
                            #[cfg(any(test, feature = "testkit"))]
                            self.forwarded.push(ForwardRecord {
                                session: sub.id,
                                slot: index as u16,
                                seq: rewritten.seq,
                                track,
                                layer: packet.header.layer,
                            });
                        }
                        Ok(Forwarded::Skipped) => {}
                        Ok(Forwarded::CodecMismatch) => {
                            self.metrics.drop_packet(DropReason::CodecMismatch)
                        }
                        Err(_) => self.to_close.push((sub_peer, EndReason::Failed)),
                    }
                }
                if written {
                    if let Some(q) = self.queued.get_mut(sub_peer.0 as usize) {
                        if !*q {
                            *q = true;
                            self.dirty.push(sub_peer);
                        }
                    }
                }
            }
        }
        WorkerMetrics::add(&self.metrics.rtp_forwarded, copies);
        // Give the allocation back for the next batch.
        self.media = media;
    }
}

/// Announce `session`'s connection quality if it changed since it was last announced.
fn push_quality(events: &mut VecDeque<NodeEvent>, session: &mut Session) {
    if let Some(quality) = session.quality.poll_quality() {
        tracing::debug!(session = %session.id, quality = quality.as_str(), "connection quality");
        events.push_back(NodeEvent::Quality {
            session: session.id,
            room: session.room_id.clone(),
            quality,
        });
    }
}

/// Move a drained session's copies (their packets' arrivals) to the engine's delay accounting,
/// one entry per arrival instant among the last few.
fn add_handed(handed: &mut Vec<(Instant, u32)>, arrivals: &mut Vec<Instant>) {
    for arrival in arrivals.drain(..) {
        let recent = handed.iter_mut().rev().take(HANDED_SEARCH);
        match recent.into_iter().find(|(a, _)| *a == arrival) {
            Some((_, copies)) => *copies += 1,
            None => handed.push((arrival, 1)),
        }
    }
}

/// Session `peer` of the engine's table, borrowing the table alone (so that rooms or queues
/// can be borrowed alongside).
fn session_in(sessions: &mut [Option<Session>], peer: PeerId) -> Option<&mut Session> {
    sessions.get_mut(peer.0 as usize).and_then(Option::as_mut)
}
