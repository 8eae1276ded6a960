//! A worker: one thread pinned to one core, owning its UDP socket (through an I/O backend),
//! its sessions, its rooms' forwarding state and its timers. The loop is:
//!
//! 1. control commands (bounded), 2. the inbound cross-worker ring (bounded),
//! 3. due timers, 4. flush sends and wake the workers we pushed to,
//! 5. wait for datagrams until the next deadline, handling at most a budget of them.
//!
//! Nothing here blocks except step 5, and nothing takes a lock on the per-packet path.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use str0m::config::DtlsCert;
use str0m::{Event, IceConnectionState, Output};
use tokio::sync::oneshot;

use crate::api::{NodeError, SessionCreated, SessionKind};
use crate::config::NodeConfig;
use crate::forward::{MediaPacket, Selection, SourceTracker};
use crate::ids::{Layer, ParticipantId, RoomId, SessionId, WorkerId};
use crate::io::{DatagramIo, IoStats, Waker};
use crate::mailbox::CrossWorker;
use crate::metrics::{DropReason, WorkerMetrics};
use crate::node::Shared;
use crate::session::{Forwarded, Session, SessionBroken};

/// Datagrams handled per wait before timers and rings get a turn.
const DATAGRAM_BUDGET: usize = 256;
/// Cross-worker messages handled per loop pass.
const RING_BUDGET: usize = 1024;
/// Control commands handled per loop pass.
const COMMAND_BUDGET: usize = 64;
/// How often sessions are checked for timeouts and stale state is pruned.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(500);

/// A command from the node (control path, not per packet).
#[derive(Debug)]
pub enum Command {
    Create {
        session: SessionId,
        room: RoomId,
        kind: SessionKind,
        offer_sdp: String,
        participant: Option<ParticipantId>,
        reply: oneshot::Sender<Result<SessionCreated, NodeError>>,
    },
    Close {
        session: SessionId,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    /// `worker` has (or no longer has) subscribers in `room`.
    RoomInterest {
        room: RoomId,
        worker: WorkerId,
        interested: bool,
    },
    /// A publisher ended; subscribers stop following it at once.
    SourceEnded {
        room: RoomId,
        source: SessionId,
    },
    Shutdown,
}

/// Forwarding state of one room on this worker.
#[derive(Debug, Default)]
struct WorkerRoom {
    subscribers: Vec<SessionId>,
    publishers: Vec<SessionId>,
    tracker: SourceTracker,
    /// Other workers with subscribers in this room.
    remote_workers: Vec<WorkerId>,
}

impl WorkerRoom {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.publishers.is_empty() && self.remote_workers.is_empty()
    }
}

/// Why a session ended, for logs and metrics.
#[derive(Debug, Clone, Copy)]
enum EndReason {
    Closed,
    ConnectTimeout,
    IceTimeout,
    Disconnected,
    Panicked,
}

pub struct Worker {
    id: WorkerId,
    config: NodeConfig,
    local_addr: SocketAddr,
    candidate_addr: SocketAddr,
    shared: Arc<Shared>,
    metrics: Arc<WorkerMetrics>,
    commands: Receiver<Command>,
    waker: Waker,
    dtls_cert: Option<DtlsCert>,
    rng: u64,

    sessions: HashMap<SessionId, Session>,
    demux: crate::demux::Demux,
    rooms: HashMap<RoomId, WorkerRoom>,
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Sessions written to since their last drain.
    dirty: HashSet<SessionId>,
    /// Datagrams produced by sessions, handed to the I/O backend once per pass.
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    /// Fresh publisher packets waiting for fan-out.
    media: Vec<Arc<MediaPacket>>,
    /// Workers whose ring we pushed to this pass.
    to_wake: Vec<bool>,
    /// The backend's counters as last published to `metrics`.
    io_published: IoStats,
    to_close: Vec<(SessionId, EndReason)>,
    next_housekeeping: Instant,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: WorkerId,
        config: NodeConfig,
        local_addr: SocketAddr,
        shared: Arc<Shared>,
        commands: Receiver<Command>,
        waker: Waker,
    ) -> Self {
        let metrics = shared.workers[id.index()].metrics.clone();
        let candidate_addr = SocketAddr::new(config.advertise_ip, local_addr.port());
        // One DTLS certificate per worker: generating one per session costs more than the
        // rest of session setup together.
        let dtls_cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate();
        let workers = shared.workers.len();
        let now = Instant::now();
        Self {
            id,
            config,
            local_addr,
            candidate_addr,
            shared,
            metrics,
            commands,
            waker,
            dtls_cert,
            rng: rand::random::<u64>() | 1,
            sessions: HashMap::new(),
            demux: crate::demux::Demux::default(),
            rooms: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: HashSet::new(),
            outbox: Vec::with_capacity(512),
            media: Vec::with_capacity(64),
            to_wake: vec![false; workers],
            io_published: IoStats::default(),
            to_close: Vec::new(),
            next_housekeeping: now + HOUSEKEEPING_INTERVAL,
        }
    }

    /// Run until a `Shutdown` command or until the command channel closes.
    pub fn run(mut self, mut io: Box<dyn DatagramIo>) {
        tracing::info!(worker = %self.id, addr = %self.local_addr, backend = io.name(), "worker started");
        loop {
            let now = Instant::now();
            if !self.handle_commands(now) {
                break;
            }
            self.handle_ring(now);
            self.handle_due_timers(now);
            self.finish_pass(now, io.as_mut());

            // Park, then re-check the queues: a producer that pushed before it saw us parked
            // did not write the eventfd.
            self.waker.park();
            let idle = self.commands.is_empty() && self.own_mailbox_empty();
            let deadline = if idle {
                self.next_deadline()
            } else {
                Some(now)
            };
            let local = self.local_addr;
            let result = io.poll(deadline, DATAGRAM_BUDGET, &mut |source, datagram| {
                self.handle_datagram(source, local, datagram);
            });
            self.waker.unpark();
            if let Err(e) = result {
                tracing::error!(worker = %self.id, error = %e, "socket wait failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            let now = Instant::now();
            self.fan_out(now);
            self.finish_pass(now, io.as_mut());
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.end_session(id, EndReason::Closed);
        }
        tracing::info!(worker = %self.id, "worker stopped");
    }

    fn own_mailbox_empty(&self) -> bool {
        self.shared.workers[self.id.index()].mailbox.is_empty()
    }

    /// Drain dirty sessions, close ended ones, hand sends to the kernel, wake peers.
    fn finish_pass(&mut self, now: Instant, io: &mut dyn DatagramIo) {
        let dirty: Vec<SessionId> = self.dirty.drain().collect();
        for id in dirty {
            self.drain_session(id, now);
        }
        self.fan_out(now);
        let closing = std::mem::take(&mut self.to_close);
        for (id, reason) in closing {
            self.end_session(id, reason);
        }
        for (destination, datagram) in self.outbox.drain(..) {
            io.send(destination, datagram);
        }
        if let Err(e) = io.flush() {
            tracing::warn!(worker = %self.id, error = %e, "send flush failed");
        }
        self.publish_io_stats(io.stats());
        for (worker, wake) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(wake) {
                self.shared.workers[worker].mailbox.wake();
            }
        }
    }

    /// Add what the backend did since the last call to the metrics: datagrams and bytes the
    /// kernel accepted (and how many went in GSO sends), and sends dropped (by reason). Sends the backend completes inside
    /// `poll` (after `POLLOUT`) show up at the next pass.
    fn publish_io_stats(&mut self, now: IoStats) {
        let before = std::mem::replace(&mut self.io_published, now);
        let m = &self.metrics;
        WorkerMetrics::add(&m.packets_out, now.sent - before.sent);
        WorkerMetrics::add(&m.bytes_out, now.sent_bytes - before.sent_bytes);
        WorkerMetrics::add(&m.gso_sends, now.gso_sends - before.gso_sends);
        WorkerMetrics::add(&m.gso_datagrams, now.gso_datagrams - before.gso_datagrams);
        m.drop_packets(DropReason::SendFailed, now.send_failed - before.send_failed);
        m.drop_packets(
            DropReason::SendBufferFull,
            now.send_buffer_full - before.send_buffer_full,
        );
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        // Discard stale heap entries (a session re-armed or ended).
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            match self.sessions.get(&id) {
                Some(s) if s.deadline == Some(t) => break,
                _ => {
                    self.timers.pop();
                }
            }
        }
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        Some(timer.map_or(self.next_housekeeping, |t| t.min(self.next_housekeeping)))
    }

    fn handle_commands(&mut self, now: Instant) -> bool {
        for _ in 0..COMMAND_BUDGET {
            let Ok(command) = self.commands.try_recv() else {
                break;
            };
            match command {
                Command::Create {
                    session,
                    room,
                    kind,
                    offer_sdp,
                    participant,
                    reply,
                } => {
                    let result =
                        self.create_session(session, room, kind, &offer_sdp, participant, now);
                    let _ = reply.send(result);
                }
                Command::Close { session, reply } => {
                    let result = if self.sessions.contains_key(&session) {
                        self.end_session(session, EndReason::Closed);
                        Ok(())
                    } else {
                        Err(NodeError::UnknownSession)
                    };
                    let _ = reply.send(result);
                }
                Command::RoomInterest {
                    room,
                    worker,
                    interested,
                } => {
                    if worker == self.id {
                        continue;
                    }
                    let entry = self.rooms.entry(room).or_default();
                    entry.remote_workers.retain(|w| *w != worker);
                    if interested {
                        entry.remote_workers.push(worker);
                    }
                    self.drop_room_if_empty(room);
                }
                Command::SourceEnded { room, source } => {
                    if let Some(r) = self.rooms.get_mut(&room) {
                        r.tracker.remove_source(source);
                        for sub in &r.subscribers {
                            if let Some(s) = self.sessions.get_mut(sub) {
                                for t in &mut s.tracks {
                                    t.forwarder.forget_source(source);
                                }
                            }
                        }
                    }
                }
                Command::Shutdown => return false,
            }
        }
        true
    }

    fn create_session(
        &mut self,
        id: SessionId,
        room: RoomId,
        kind: SessionKind,
        offer_sdp: &str,
        participant: Option<ParticipantId>,
        now: Instant,
    ) -> Result<SessionCreated, NodeError> {
        if self.sessions.len() >= self.config.max_sessions_per_worker {
            return Err(NodeError::NoCapacity);
        }
        let rng = &mut self.rng;
        let initial_seq = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng as u16
        };
        let (mut session, answer_sdp) = Session::accept(
            id,
            room,
            kind,
            offer_sdp,
            self.candidate_addr,
            self.dtls_cert.clone(),
            initial_seq,
            now,
        )?;
        session.participant = participant;
        let ufrag = session.local_ufrag();
        self.demux.add_session(id, ufrag);
        let r = self.rooms.entry(room).or_default();
        match kind {
            SessionKind::Publish => {
                r.publishers.push(id);
                WorkerMetrics::add(&self.metrics.publish_sessions, 1);
            }
            SessionKind::Subscribe => {
                r.subscribers.push(id);
                WorkerMetrics::add(&self.metrics.subscribe_sessions, 1);
            }
        }
        self.sessions.insert(id, session);
        self.drain_session(id, now);
        tracing::info!(worker = %self.id, session = %id, %room, kind = kind.as_str(), "session created");
        Ok(SessionCreated {
            session: id,
            worker: self.id,
            answer_sdp,
        })
    }

    fn end_session(&mut self, id: SessionId, reason: EndReason) {
        let Some(mut session) = self.sessions.remove(&id) else {
            return;
        };
        if !matches!(reason, EndReason::Panicked) {
            // The feedback since str0m's last stats event; a failure here changes nothing,
            // the session ends either way.
            if let Ok(feedback) = session.final_feedback(Instant::now()) {
                self.metrics.add_feedback(feedback);
            }
        }
        session.disconnect();
        self.demux.remove_session(id);
        self.dirty.remove(&id);
        let room = session.room;
        if let Some(r) = self.rooms.get_mut(&room) {
            r.subscribers.retain(|s| *s != id);
            r.publishers.retain(|s| *s != id);
        }
        self.drop_room_if_empty(room);
        match session.kind {
            SessionKind::Publish => WorkerMetrics::sub(&self.metrics.publish_sessions, 1),
            SessionKind::Subscribe => WorkerMetrics::sub(&self.metrics.subscribe_sessions, 1),
        }
        match reason {
            EndReason::Closed => {}
            EndReason::Panicked => WorkerMetrics::add(&self.metrics.session_panics, 1),
            EndReason::ConnectTimeout | EndReason::IceTimeout | EndReason::Disconnected => {
                WorkerMetrics::add(&self.metrics.sessions_reaped, 1)
            }
        }
        tracing::info!(worker = %self.id, session = %id, %room, ?reason, "session ended");
        self.shared.session_ended(id, room, session.kind);
    }

    fn drop_room_if_empty(&mut self, room: RoomId) {
        if self.rooms.get(&room).is_some_and(WorkerRoom::is_empty) {
            self.rooms.remove(&room);
        }
    }

    fn handle_datagram(&mut self, source: SocketAddr, local: SocketAddr, datagram: &[u8]) {
        WorkerMetrics::add(&self.metrics.packets_in, 1);
        WorkerMetrics::add(&self.metrics.bytes_in, datagram.len() as u64);
        let id = match self.demux.route(source, datagram) {
            crate::demux::Route::Session(id) => id,
            crate::demux::Route::Malformed => {
                return self.metrics.drop_packet(DropReason::Malformed);
            }
            crate::demux::Route::UnknownSource => {
                return self.metrics.drop_packet(DropReason::UnknownSource);
            }
            crate::demux::Route::UnknownUfrag => {
                return self.metrics.drop_packet(DropReason::UnknownUfrag);
            }
        };
        let now = Instant::now();
        let Some(session) = self.sessions.get_mut(&id) else {
            return self.metrics.drop_packet(DropReason::UnknownSource);
        };
        match session.handle_datagram(now, source, local, datagram) {
            Ok(true) => {}
            Ok(false) => self.metrics.drop_packet(DropReason::SessionRejected),
            Err(SessionBroken(msg)) => {
                tracing::error!(worker = %self.id, session = %id, panic = %msg, "session panicked; closing it");
                self.to_close.push((id, EndReason::Panicked));
                return;
            }
        }
        self.drain_session(id, now);
    }

    fn handle_due_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            if session.deadline != Some(t) {
                continue; // stale entry
            }
            session.deadline = None;
            if session.handle_timeout(now).is_err() {
                self.to_close.push((id, EndReason::Panicked));
                continue;
            }
            self.drain_session(id, now);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            self.housekeeping(now);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let connect_timeout = self.config.connect_timeout();
        let ice_timeout = self.config.ice_timeout();
        for (id, s) in &self.sessions {
            let reason = if !s.is_alive() {
                Some(EndReason::Disconnected)
            } else if !s.connected && now.saturating_duration_since(s.created) > connect_timeout {
                Some(EndReason::ConnectTimeout)
            } else if s.connected && now.saturating_duration_since(s.last_input) > ice_timeout {
                Some(EndReason::IceTimeout)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.to_close.push((*id, reason));
            }
        }
        for room in self.rooms.values_mut() {
            room.tracker.prune(now);
        }
        let remb = str0m::bwe::Bitrate::kbps(self.config.publisher_remb_kbps);
        let mut broken = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            if s.kind == SessionKind::Publish {
                match s.send_remb(remb) {
                    Ok(()) => {
                        self.dirty.insert(*id);
                    }
                    Err(_) => broken.push((*id, EndReason::Panicked)),
                }
            }
        }
        self.to_close.extend(broken);
    }

    /// Poll a session's outputs until it returns a timeout.
    fn drain_session(&mut self, id: SessionId, now: Instant) {
        let worker = self.id;
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let mut keyframe_requests: Vec<Selection> = Vec::new();
        let mut retransmissions = 0;
        let mut finished = false;
        // Bounded: a session cannot keep the worker forever.
        for _ in 0..10_000 {
            let output = match session.poll_output() {
                Ok(Some(o)) => o,
                Ok(None) => {
                    // poll_output errored: the session is unusable.
                    self.to_close.push((id, EndReason::Disconnected));
                    finished = true;
                    break;
                }
                Err(SessionBroken(msg)) => {
                    tracing::error!(worker = %worker, session = %id, panic = %msg, "session panicked; closing it");
                    self.to_close.push((id, EndReason::Panicked));
                    finished = true;
                    break;
                }
            };
            match output {
                Output::Timeout(t) => {
                    if session.deadline != Some(t) {
                        session.deadline = Some(t);
                        self.timers.push(Reverse((t, id)));
                    }
                    finished = true;
                    break;
                }
                Output::Transmit(t) => {
                    retransmissions += u64::from(session.is_retransmission(&t.contents));
                    self.outbox.push((t.destination, t.contents.into()));
                }
                Output::Event(event) => match event {
                    Event::Connected => {
                        session.connected = true;
                        tracing::debug!(worker = %worker, session = %id, "connected");
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.to_close.push((id, EndReason::Disconnected));
                    }
                    Event::RtpPacket(packet) if session.kind == SessionKind::Publish => {
                        match session.ingress_packet(worker, packet, now) {
                            Ok(Some(p)) => self.media.push(Arc::new(p)),
                            Ok(None) => {}
                            Err(_) => {
                                self.to_close.push((id, EndReason::Panicked));
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
                        keyframe_requests.extend(selection);
                    }
                    Event::MediaEgressStats(stats) => {
                        self.metrics.add_feedback(session.egress_feedback(&stats));
                    }
                    Event::MediaIngressStats(stats) => {
                        self.metrics.add_feedback(session.ingress_feedback(&stats));
                    }
                    _ => {}
                },
            }
        }
        WorkerMetrics::add(&self.metrics.rtx_sent, retransmissions);
        if !finished {
            // Still producing after the bound: come back next pass.
            self.dirty.insert(id);
        }
        for selection in keyframe_requests {
            self.route_keyframe_request(selection, now);
        }
    }

    /// Send a keyframe request to the publisher of `selection`, wherever it lives.
    fn route_keyframe_request(&mut self, selection: Selection, now: Instant) {
        let owner = self.shared.worker_of(selection.source);
        match owner {
            Some(w) if w == self.id => {
                self.request_keyframe_local(selection.source, selection.layer, now)
            }
            Some(w) => {
                let msg = CrossWorker::KeyframeRequest {
                    source: selection.source,
                    layer: selection.layer,
                };
                if self.shared.workers[w.index()].mailbox.push(msg).is_err() {
                    self.metrics.drop_packet(DropReason::RingFull);
                } else {
                    self.to_wake[w.index()] = true;
                }
            }
            None => {}
        }
    }

    fn request_keyframe_local(&mut self, source: SessionId, layer: Layer, now: Instant) {
        let Some(session) = self.sessions.get_mut(&source) else {
            return;
        };
        match session.request_keyframe(layer, now) {
            Ok(true) => {
                WorkerMetrics::add(&self.metrics.keyframe_requests, 1);
                self.dirty.insert(source);
            }
            Ok(false) => {}
            Err(_) => self.to_close.push((source, EndReason::Panicked)),
        }
    }

    fn handle_ring(&mut self, now: Instant) {
        let mailbox = self.shared.workers[self.id.index()].mailbox.clone();
        for _ in 0..RING_BUDGET {
            let Some(msg) = mailbox.pop() else { break };
            match msg {
                CrossWorker::Media(packet) => self.media.push(packet),
                CrossWorker::KeyframeRequest { source, layer } => {
                    self.request_keyframe_local(source, layer, now)
                }
            }
            if self.media.len() >= 64 {
                self.fan_out(now);
            }
        }
        self.fan_out(now);
    }

    /// Deliver queued publisher packets to this worker's subscribers and, for packets that
    /// originate here, to every other worker with subscribers in the room.
    fn fan_out(&mut self, now: Instant) {
        if self.media.is_empty() {
            return;
        }
        let mut media = std::mem::take(&mut self.media);
        let mut keyframe_requests: Vec<Selection> = Vec::new();
        for packet in media.drain(..) {
            let Some(room) = self.rooms.get_mut(&packet.room) else {
                continue;
            };
            room.tracker.observe(&packet);
            if packet.source_worker == self.id {
                for &w in &room.remote_workers {
                    let queue = &self.shared.workers[w.index()].mailbox;
                    if queue.push(CrossWorker::Media(packet.clone())).is_err() {
                        self.metrics.drop_packet(DropReason::RingFull);
                    } else {
                        self.to_wake[w.index()] = true;
                    }
                }
            }
            let full_target = room.tracker.target(packet.kind, Layer(2), None, now);
            for &sub_id in &room.subscribers {
                let Some(sub) = self.sessions.get_mut(&sub_id) else {
                    continue;
                };
                if !sub.connected {
                    continue;
                }
                let own = sub.participant;
                let Some(index) = sub
                    .tracks
                    .iter()
                    .position(|t| t.forwarder.kind() == packet.kind)
                else {
                    continue;
                };
                let track = &mut sub.tracks[index];
                let shared_target_fits = track.forwarder.max_layer() == Layer(2)
                    && (own.is_none() || full_target.is_none_or(|t| t.participant != own));
                let target = if shared_target_fits {
                    full_target
                } else {
                    room.tracker
                        .target(packet.kind, track.forwarder.max_layer(), own, now)
                };
                let target = target.map(|t| t.selection);
                let decision = track.forwarder.handle_packet(&packet, target, now);
                keyframe_requests.extend(decision.keyframe_request);
                let Some(rewritten) = decision.forward else {
                    continue;
                };
                match sub.write_forwarded(index, &packet, rewritten.seq, rewritten.timestamp) {
                    Ok(Forwarded::Written) => {
                        WorkerMetrics::add(&self.metrics.rtp_forwarded, 1);
                        self.dirty.insert(sub_id);
                    }
                    Ok(Forwarded::Skipped) => {}
                    Ok(Forwarded::CodecMismatch) => {
                        self.metrics.drop_packet(DropReason::CodecMismatch)
                    }
                    Err(_) => self.to_close.push((sub_id, EndReason::Panicked)),
                }
            }
        }
        // Give the allocation back for the next batch.
        self.media = media;
        for selection in keyframe_requests {
            self.route_keyframe_request(selection, now);
        }
    }
}

/// Handles the node keeps per worker.
#[derive(Debug)]
pub struct WorkerHandle {
    pub id: WorkerId,
    pub port: u16,
    pub commands: Sender<Command>,
    pub waker: Waker,
    pub mailbox: Arc<crate::mailbox::Mailbox>,
    pub metrics: Arc<WorkerMetrics>,
}

impl WorkerHandle {
    /// Send a command and wake the worker.
    pub fn send(&self, command: Command) -> Result<(), NodeError> {
        self.commands
            .send(command)
            .map_err(|_| NodeError::Stopped)?;
        self.waker.force_wake();
        Ok(())
    }
}
