//! The room protocol's signaling (docs/signaling.md) for `sfu-load --protocol room`. One thread
//! runs a `mio` poll loop over every participant's WebSocket (non-blocking `tungstenite` client
//! sockets): it joins, offers the publisher connection (microphone, camera) and the subscriber
//! connection (a receiving section per other participant and kind, so a full room needs no
//! renegotiation), and hands each answered connection to its shard like a signaling thread
//! does. The sockets stay open for the run (the server's pings are answered as they are read)
//! and the participant `leave`s once both its connections are back.
//!
//! Bad server input (not JSON, an unknown shape) is counted, never fatal.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TryRecvError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::{Message, WebSocket};

use super::negotiate::{self, NewPeer, Offer, PeerDraft, PeerPlan, PeerRole, SetupConfig};
use super::peer::{PeerEnd, PeerMedia};
use super::protocol::{PeerFailure, SdpClient, SessionHandle, TokenSource};
use super::ptt::FloorTimeline;
use super::shard::{Notice, ShardCommand, ShardSender, wallclock_us};
use crate::peer::lock;
use crate::token::Grants;

/// The protocol version `join` names.
const VERSION: u32 = 1;

/// Request ids of the three requests a participant makes.
const REQ_JOIN: u64 = 1;
const REQ_PUBLISH: u64 = 2;
const REQ_SUBSCRIBE: u64 = 3;

/// Longest poll wait: the job queue is checked at least this often (closing it does not wake
/// the thread).
const MAX_WAIT: Duration = Duration::from_millis(50);

/// How long the participants may take to acknowledge `leave` at the end of the run.
const LEAVE_WAIT: Duration = Duration::from_secs(2);

const WAKER: Token = Token(usize::MAX);

/// What the room signaling thread counted; the report's `room.signaling`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSignalingStats {
    /// Messages the server sent.
    pub messages: u64,
    /// Of those, messages that were not JSON objects of a known shape.
    pub bad_messages: u64,
    /// `error` messages by code.
    pub errors: BTreeMap<String, u64>,
    /// `renegotiate` messages; the subscriber offer has a section per other participant and
    /// kind, so a full room asks for nothing more.
    pub renegotiations: u64,
    /// `renegotiate` messages asking for more sections than were offered: not carried out
    /// (a room holding participants from outside the run).
    pub renegotiations_unmet: u64,
    /// `session_ended`: the node ended one of a participant's connections.
    pub sessions_ended: u64,
    /// WebSockets the server closed (or that broke) before the participant left.
    pub closed_early: u64,
    /// Push-to-talk runs: floor requests sent, grants, and denials or revocations.
    #[serde(default)]
    pub floor_requests: u64,
    #[serde(default)]
    pub floor_grants: u64,
    #[serde(default)]
    pub floor_refusals: u64,
}

/// The engine's end of the room signaling thread.
#[derive(Debug)]
pub struct RoomSignaling {
    pub waker: Arc<Waker>,
    pub stats: Arc<Mutex<RoomSignalingStats>>,
    /// Push-to-talk runs: the floor's timeline the thread drives.
    pub floor: Option<Arc<FloorTimeline>>,
}

/// A job for the room thread.
#[derive(Debug)]
pub enum RoomJob {
    /// Connect, join, and negotiate both connections of one participant.
    Join {
        publisher: PeerPlan,
        subscriber: PeerPlan,
    },
    /// One of a participant's connections is back from its shard (ended, or the run
    /// stopped); the participant leaves once none is out.
    Release(SessionHandle),
}

/// What the thread needs from the engine.
#[derive(Debug)]
pub struct RoomContext {
    pub url: String,
    pub rooms: Arc<[String]>,
    pub tokens: TokenSource,
    pub setup: Arc<SetupConfig>,
    pub shards: Arc<[ShardSender]>,
    pub notices: Sender<Notice>,
    /// Receiving sections per kind on the subscriber connection: the other participants
    /// (push to talk: the talkers).
    pub others: usize,
    pub connect_timeout: Duration,
    /// A push-to-talk run.
    pub ptt: Option<RoomPtt>,
}

/// A push-to-talk run, as the room thread drives it (docs/push-to-talk.md).
#[derive(Debug, Clone)]
pub struct RoomPtt {
    /// The first `talkers` participants of each room take the floor in turn.
    pub talkers: u32,
    /// Participants per room: the floor-change latency is measured once every room has all
    /// of them in (connections up or failed), as that of settled rooms, not of rooms still
    /// joining.
    pub participants: u32,
    pub floor_change: Duration,
    pub timeline: Arc<FloorTimeline>,
}

/// Request id of a participant's floor requests (answered `floor_granted` / `floor_queued`).
const REQ_FLOOR: u64 = 4;

/// One room's floor as the run drives it.
#[derive(Debug, Default)]
struct RoomFloor {
    /// Slot of the participant holding the floor.
    holder: Option<usize>,
    /// The talker asked to take over: its slot, and when the change began (release sent, or
    /// its request when nobody held the floor).
    pending: Option<(usize, u64)>,
    /// Index (among the talkers) of the talker to go next.
    next: u32,
    /// When the floor changes next; `None` until every talker of the room publishes.
    next_at: Option<Instant>,
    /// Every participant of the room is in (connections up or failed).
    settled: bool,
}

impl RoomSignaling {
    /// Starts the thread; it takes `jobs` until the sender is dropped, then makes every
    /// participant leave and ends.
    pub fn spawn(
        context: RoomContext,
        jobs: Receiver<RoomJob>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stats = Arc::new(Mutex::new(RoomSignalingStats::default()));
        let target = WsTarget::parse(&context.url).map_err(std::io::Error::other)?;
        let floor = context.ptt.as_ref().map(|p| p.timeline.clone());
        let thread = RoomThread {
            poll,
            jobs,
            target,
            context,
            participants: Vec::new(),
            stats: RoomSignalingStats::default(),
            shared: stats.clone(),
            floors: Vec::new(),
        };
        let join = thread::Builder::new()
            .name("sfu-load-room".into())
            .spawn(move || thread.run())?;
        Ok((
            Self {
                waker,
                stats,
                floor,
            },
            join,
        ))
    }

    /// Wakes the thread after a job was queued.
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }

    pub fn stats(&self) -> RoomSignalingStats {
        lock(&self.stats).clone()
    }
}

/// The token identity of the participant whose publisher connection is planned as
/// `publisher`: unique in the run.
pub fn identity(publisher: &PeerPlan) -> String {
    format!("load-part-{}", publisher.publisher)
}

/// Where the room WebSockets go: `ws://{authority}{prefix}/rtc/{room}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WsTarget {
    authority: String,
    prefix: String,
}

impl WsTarget {
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .trim()
            .strip_prefix("http://")
            .ok_or_else(|| format!("\"{url}\": the room protocol needs an http:// URL"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(format!("\"{url}\" has no host"));
        }
        let path = path.trim_matches('/');
        Ok(Self {
            authority: authority.to_string(),
            prefix: if path.is_empty() {
                String::new()
            } else {
                format!("/{path}")
            },
        })
    }

    fn url(&self, room: &str) -> String {
        format!("ws://{}{}/rtc/{room}", self.authority, self.prefix)
    }

    fn address(&self) -> Result<SocketAddr, PeerFailure> {
        let with_port = if self
            .authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            self.authority.clone()
        } else {
            format!("{}:80", self.authority)
        };
        with_port
            .to_socket_addrs()
            .map_err(|e| PeerFailure::Unreachable(format!("{}: {e}", self.authority)))?
            .next()
            .ok_or_else(|| PeerFailure::Unreachable(format!("{}: no address", self.authority)))
    }
}

/// A message from the server, as far as a load participant cares.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage {
    Joined {
        #[serde(default)]
        participants: Vec<ParticipantView>,
    },
    ParticipantJoined {
        participant: ParticipantView,
    },
    TrackPublished {
        track: TrackView,
    },
    FloorGranted {},
    FloorDenied {},
    FloorRevoked {},
    PublishAnswer {
        sdp: String,
    },
    SubscriberAnswer {
        sdp: String,
    },
    Renegotiate {
        audio: usize,
        video: usize,
    },
    Error {
        code: String,
        message: String,
    },
    SessionEnded {},
    /// Room events (participants, tracks, subscriptions, speakers, pong, left): counted only.
    #[serde(other)]
    Other,
}

/// A participant as the server lists it (what a push-to-talk listener needs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ParticipantView {
    #[serde(default)]
    tracks: Vec<TrackView>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct TrackView {
    id: String,
    identity: String,
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Envelope {
    #[serde(default)]
    req: Option<u64>,
    #[serde(flatten)]
    message: ServerMessage,
}

/// Parses one text frame; `None` for anything that is not a message of a known shape (an
/// unknown `type` string is an event this client ignores, not a bad message).
fn parse(text: &str) -> Option<Envelope> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("type")?.as_str()?;
    serde_json::from_value(value).ok()
}

/// A participant's WebSocket through its life.
enum Socket {
    /// TCP connect in flight.
    Connecting(TcpStream),
    /// The HTTP upgrade in flight.
    Handshaking(MidHandshake<ClientHandshake<TcpStream>>),
    Open(Box<WebSocket<TcpStream>>),
    Closed,
}

/// One of a participant's two connections.
#[derive(Debug)]
enum Connection {
    /// Not offered yet (before `joined`).
    Waiting,
    /// Offered; the answer is awaited.
    Offered(Box<PeerDraft>),
    /// Answered and handed to its shard.
    Live,
    /// Failed before reaching a shard (its failure is reported).
    Failed,
}

impl Connection {
    fn resolved(&self) -> bool {
        matches!(self, Connection::Live | Connection::Failed)
    }
}

struct Participant {
    publisher: PeerPlan,
    subscriber: PeerPlan,
    room: String,
    identity: String,
    socket: Socket,
    /// When the WebSocket connect began: both connections' join times count from here.
    started: Instant,
    publisher_conn: Connection,
    subscriber_conn: Connection,
    /// Connections handed to shards and not released yet.
    out: u8,
    /// `leave` was sent (or the socket is gone).
    leaving: bool,
    /// Push to talk: the participant's place among its room's talkers (`None`: listens only).
    talker: Option<u32>,
}

struct RoomThread {
    poll: Poll,
    jobs: Receiver<RoomJob>,
    target: WsTarget,
    context: RoomContext,
    participants: Vec<Participant>,
    stats: RoomSignalingStats,
    shared: Arc<Mutex<RoomSignalingStats>>,
    /// Push to talk: each room's floor.
    floors: Vec<RoomFloor>,
}

impl RoomThread {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let deadline = self
                .next_deadline()
                .into_iter()
                .chain(self.next_floor_change())
                .min();
            let timeout = deadline.map_or(MAX_WAIT, |at| {
                at.saturating_duration_since(Instant::now()).min(MAX_WAIT)
            });
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!("room signaling: poll failed: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.drive(event.token().0);
                }
            }
            if !self.take_jobs() {
                break;
            }
            self.expire(Instant::now());
            self.pass_floors(Instant::now());
            *lock(&self.shared) = self.stats.clone();
        }
        self.leave_all();
        *lock(&self.shared) = self.stats.clone();
    }

    /// Handles queued jobs; false once the engine closed the queue.
    fn take_jobs(&mut self) -> bool {
        loop {
            match self.jobs.try_recv() {
                Ok(RoomJob::Join {
                    publisher,
                    subscriber,
                }) => self.start(publisher, subscriber),
                Ok(RoomJob::Release(session)) => self.release(&session),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// The earliest negotiation deadline of a participant still negotiating.
    fn next_deadline(&self) -> Option<Instant> {
        self.participants
            .iter()
            .filter(|p| !(p.publisher_conn.resolved() && p.subscriber_conn.resolved()))
            .map(|p| p.started + self.context.connect_timeout)
            .min()
    }

    fn start(&mut self, publisher: PeerPlan, subscriber: PeerPlan) {
        let slot = self.participants.len();
        let room = self.context.rooms[publisher.room as usize].clone();
        // Publishers are numbered participant by participant, room by room (`plan_peers`).
        let index = publisher.publisher / self.context.rooms.len().max(1) as u32;
        let talker = self
            .context
            .ptt
            .as_ref()
            .and_then(|ptt| (index < ptt.talkers).then_some(index));
        let mut p = Participant {
            talker,
            identity: identity(&publisher),
            publisher,
            subscriber,
            room,
            socket: Socket::Closed,
            started: Instant::now(),
            publisher_conn: Connection::Waiting,
            subscriber_conn: Connection::Waiting,
            out: 0,
            leaving: false,
        };
        let connected = self.target.address().and_then(|addr| {
            let mut stream =
                TcpStream::connect(addr).map_err(|e| PeerFailure::Unreachable(e.to_string()))?;
            self.poll
                .registry()
                .register(
                    &mut stream,
                    Token(slot),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| PeerFailure::Socket(e.to_string()))?;
            Ok(stream)
        });
        match connected {
            Ok(stream) => p.socket = Socket::Connecting(stream),
            Err(f) => fail_both(&self.context, &mut p, &f.reason(), &f.to_string()),
        }
        self.participants.push(p);
    }

    /// Moves participant `slot`'s socket on after a readiness event.
    fn drive(&mut self, slot: usize) {
        let Some(p) = self.participants.get_mut(slot) else {
            return;
        };
        let url = self.target.url(&p.room);
        let next = match std::mem::replace(&mut p.socket, Socket::Closed) {
            Socket::Connecting(stream) => match stream.take_error() {
                Ok(None) if stream.peer_addr().is_ok() => {
                    let _ = stream.set_nodelay(true);
                    self.handshake(slot, tungstenite::client(url, stream))
                }
                // Not connected yet: the next writable event tells.
                Ok(None) => Socket::Connecting(stream),
                Ok(Some(e)) | Err(e) => {
                    let f = PeerFailure::Unreachable(e.to_string());
                    fail_both(&self.context, p, &f.reason(), &f.to_string());
                    Socket::Closed
                }
            },
            Socket::Handshaking(mid) => self.handshake(slot, mid.handshake()),
            Socket::Open(ws) => self.read(slot, ws),
            Socket::Closed => Socket::Closed,
        };
        self.participants[slot].socket = next;
    }

    fn handshake(
        &mut self,
        slot: usize,
        result: Result<
            (
                WebSocket<TcpStream>,
                tungstenite::handshake::client::Response,
            ),
            HandshakeError<ClientHandshake<TcpStream>>,
        >,
    ) -> Socket {
        let p = &mut self.participants[slot];
        match result {
            Ok((ws, _)) => {
                let mut ws = Box::new(ws);
                let token =
                    match self
                        .context
                        .tokens
                        .token(&p.room, &p.identity, Grants::PUBLISH_SUBSCRIBE)
                    {
                        Ok(t) => t,
                        Err(f) => {
                            fail_both(&self.context, p, &f.reason(), &f.to_string());
                            return Socket::Closed;
                        }
                    };
                // Push to talk: everyone listens to the talkers only (subscribed one by one).
                let join = json!({"type": "join", "v": VERSION, "token": token,
                    "name": p.identity, "req": REQ_JOIN,
                    "auto_subscribe": self.context.ptt.is_none()});
                if let Err(e) = send(&mut ws, &join) {
                    fail_both(&self.context, p, "signaling", &e.to_string());
                    return Socket::Closed;
                }
                // Frames may have come with the upgrade's response.
                self.read(slot, ws)
            }
            Err(HandshakeError::Interrupted(mid)) => Socket::Handshaking(mid),
            Err(HandshakeError::Failure(e)) => {
                let (reason, detail) = match &e {
                    tungstenite::Error::Http(response) => (
                        format!("http_{}", response.status().as_u16()),
                        format!("the WebSocket upgrade was refused: {}", response.status()),
                    ),
                    other => ("signaling".to_string(), other.to_string()),
                };
                fail_both(&self.context, p, &reason, &detail);
                Socket::Closed
            }
        }
    }

    /// Reads every frame that arrived, answers what needs answering, and flushes.
    fn read(&mut self, slot: usize, mut ws: Box<WebSocket<TcpStream>>) -> Socket {
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    self.stats.messages += 1;
                    match parse(text.as_str()) {
                        Some(envelope) => self.on_message(slot, &mut ws, envelope),
                        None => self.stats.bad_messages += 1,
                    }
                }
                Ok(Message::Binary(_)) => {
                    self.stats.messages += 1;
                    self.stats.bad_messages += 1;
                }
                // Pings are answered by tungstenite (the pong goes with the next flush).
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.closed(slot, &e.to_string());
                    return Socket::Closed;
                }
            }
        }
        match ws.flush() {
            Ok(()) => Socket::Open(ws),
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => Socket::Open(ws),
            Err(e) => {
                self.closed(slot, &e.to_string());
                Socket::Closed
            }
        }
    }

    /// The socket closed or broke: count it unless the participant was leaving, and fail the
    /// connections still negotiating.
    fn closed(&mut self, slot: usize, why: &str) {
        let p = &mut self.participants[slot];
        if !p.leaving {
            self.stats.closed_early += 1;
            p.leaving = true;
            let detail = format!("the WebSocket closed during negotiation: {why}");
            fail_unresolved(&self.context, p, "signaling", &detail);
        }
    }

    fn on_message(&mut self, slot: usize, ws: &mut WebSocket<TcpStream>, envelope: Envelope) {
        let p = &mut self.participants[slot];
        let ctx = &self.context;
        match envelope.message {
            ServerMessage::Joined { participants } if envelope.req == Some(REQ_JOIN) => {
                if let Err((reason, detail)) = offer_both(ctx, p, ws) {
                    fail_unresolved(ctx, p, &reason, &detail);
                }
                for track in participants.iter().flat_map(|p| &p.tracks) {
                    subscribe_if_talker(ctx, p, ws, track);
                }
            }
            ServerMessage::ParticipantJoined { participant } => {
                for track in &participant.tracks {
                    subscribe_if_talker(ctx, p, ws, track);
                }
            }
            ServerMessage::TrackPublished { track } => subscribe_if_talker(ctx, p, ws, &track),
            ServerMessage::FloorGranted {} => {
                self.stats.floor_grants += 1;
                self.granted(slot);
            }
            ServerMessage::FloorDenied {} | ServerMessage::FloorRevoked {} => {
                self.stats.floor_refusals += 1;
                tracing::warn!(identity = %p.identity, room = %p.room, "floor denied or revoked");
            }
            ServerMessage::PublishAnswer { sdp } if envelope.req == Some(REQ_PUBLISH) => {
                answered(ctx, p, PeerRole::Publisher, &sdp, slot);
            }
            ServerMessage::SubscriberAnswer { sdp } if envelope.req == Some(REQ_SUBSCRIBE) => {
                answered(ctx, p, PeerRole::Subscriber, &sdp, slot);
            }
            ServerMessage::Renegotiate { audio, video } => {
                self.stats.renegotiations += 1;
                let offered = ctx.others;
                let kinds = (ctx.setup.media.has_audio(), ctx.setup.media.has_video());
                let beyond = (audio > 0 && (!kinds.0 || audio > offered))
                    || (video > 0 && (!kinds.1 || video > offered));
                if beyond {
                    self.stats.renegotiations_unmet += 1;
                    tracing::warn!(identity = %p.identity, room = %p.room, audio, video,
                        "the server asks for more receiving sections than a participant of this run needs");
                }
            }
            ServerMessage::Error { code, message } => {
                *self.stats.errors.entry(code.clone()).or_default() += 1;
                let reason = format!("room_{code}");
                match envelope.req {
                    Some(REQ_JOIN) => fail_unresolved(ctx, p, &reason, &message),
                    Some(REQ_PUBLISH) => fail_one(ctx, p, PeerRole::Publisher, &reason, &message),
                    Some(REQ_SUBSCRIBE) => {
                        fail_one(ctx, p, PeerRole::Subscriber, &reason, &message)
                    }
                    _ => {}
                }
            }
            ServerMessage::SessionEnded {} => self.stats.sessions_ended += 1,
            // An answer to a request not made: as bad as unparseable.
            ServerMessage::Joined { .. }
            | ServerMessage::PublishAnswer { .. }
            | ServerMessage::SubscriberAnswer { .. } => self.stats.bad_messages += 1,
            ServerMessage::Other => {}
        }
    }

    /// Push to talk: when a room's floor changes next.
    fn next_floor_change(&self) -> Option<Instant> {
        self.floors.iter().filter_map(|f| f.next_at).min()
    }

    /// Push to talk: start each room's turns once its talkers publish, note when every room
    /// has all its participants in, and pass the floor
    /// to the next talker when due (its request first, then the holder's release).
    fn pass_floors(&mut self, now: Instant) {
        let Some(ptt) = self.context.ptt.clone() else {
            return;
        };
        let rooms = self.context.rooms.len();
        if self.floors.len() < rooms {
            self.floors.resize_with(rooms, RoomFloor::default);
        }
        for room in 0..rooms {
            let in_room = || {
                self.participants
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.publisher.room as usize == room)
            };
            let talkers: Vec<(u32, usize)> = in_room()
                .filter(|(_, p)| !p.leaving)
                .filter_map(|(slot, p)| p.talker.map(|t| (t, slot)))
                .collect();
            let settled = in_room().count() == ptt.participants as usize
                && in_room()
                    .all(|(_, p)| p.publisher_conn.resolved() && p.subscriber_conn.resolved());
            let floor = &mut self.floors[room];
            if settled && !floor.settled {
                floor.settled = true;
                if self.floors.iter().all(|f| f.settled) {
                    ptt.timeline.settled(wallclock_us());
                }
            }
            let floor = &mut self.floors[room];
            match floor.next_at {
                None => {
                    let publishing = talkers.len() == ptt.talkers as usize
                        && talkers.iter().all(|&(_, slot)| {
                            matches!(self.participants[slot].publisher_conn, Connection::Live)
                        });
                    if publishing {
                        // A second for their media to start flowing.
                        floor.next_at = Some(now + Duration::from_secs(1));
                    }
                }
                Some(at) if now >= at => {
                    floor.next_at = Some(at + ptt.floor_change);
                    if floor.pending.is_some() {
                        continue; // the last change is not granted yet
                    }
                    let next = talkers
                        .iter()
                        .find(|(t, _)| *t == floor.next)
                        .map(|&(_, s)| s);
                    floor.next = (floor.next + 1) % ptt.talkers;
                    let Some(next) = next else {
                        continue;
                    };
                    let began = wallclock_us();
                    ptt.timeline
                        .asked(self.participants[next].publisher.publisher, began);
                    floor.pending = Some((next, began));
                    let holder = floor.holder;
                    send_to(
                        &mut self.participants[next],
                        &json!({"type": "floor_request", "req": REQ_FLOOR}),
                    );
                    self.stats.floor_requests += 1;
                    if let Some(holder) = holder {
                        send_to(
                            &mut self.participants[holder],
                            &json!({"type": "floor_release"}),
                        );
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// Push to talk: participant `slot` was granted the floor.
    fn granted(&mut self, slot: usize) {
        let Some(ptt) = &self.context.ptt else {
            return;
        };
        let room = self.participants[slot].publisher.room as usize;
        let Some(floor) = self.floors.get_mut(room) else {
            return;
        };
        let Some((_, began)) = floor.pending.filter(|&(s, _)| s == slot) else {
            return;
        };
        floor.pending = None;
        let previous = floor
            .holder
            .replace(slot)
            .map(|h| self.participants[h].publisher.publisher);
        let publisher = self.participants[slot].publisher.publisher;
        ptt.timeline
            .passed(publisher, previous, began, wallclock_us());
    }

    /// Fails the connections of participants whose negotiation outlived the connect timeout.
    fn expire(&mut self, now: Instant) {
        for p in &mut self.participants {
            let late = now >= p.started + self.context.connect_timeout;
            if late && !(p.publisher_conn.resolved() && p.subscriber_conn.resolved()) {
                let detail = format!(
                    "no joined / answer within {:?} of the WebSocket connect",
                    self.context.connect_timeout
                );
                fail_unresolved(&self.context, p, "signaling", &detail);
                if p.out == 0 {
                    leave(p);
                }
            }
        }
    }

    /// A connection came back from its shard; the participant leaves when none is out.
    fn release(&mut self, session: &SessionHandle) {
        let Some(p) = session
            .id
            .strip_prefix("room:")
            .and_then(|s| s.parse::<usize>().ok())
            .and_then(|slot| self.participants.get_mut(slot))
        else {
            return;
        };
        p.out = p.out.saturating_sub(1);
        if p.out == 0 && p.publisher_conn.resolved() && p.subscriber_conn.resolved() {
            leave(p);
        }
    }

    /// The run is over: every participant leaves, and the sockets close (bounded).
    fn leave_all(&mut self) {
        for p in &mut self.participants {
            leave(p);
        }
        let deadline = Instant::now() + LEAVE_WAIT;
        let mut events = Events::with_capacity(256);
        while Instant::now() < deadline
            && self
                .participants
                .iter()
                .any(|p| matches!(p.socket, Socket::Open(_)))
        {
            let _ = self.poll.poll(&mut events, Some(MAX_WAIT));
            for slot in 0..self.participants.len() {
                let p = &mut self.participants[slot];
                if let Socket::Open(mut ws) = std::mem::replace(&mut p.socket, Socket::Closed) {
                    // The server answers `leave` with `left` and closes: read to the end.
                    p.socket = match drain_closing(&mut ws) {
                        true => Socket::Closed,
                        false => Socket::Open(ws),
                    };
                }
            }
        }
    }
}

/// Makes both connections' offers and sends them (after `joined`).
fn offer_both(
    ctx: &RoomContext,
    p: &mut Participant,
    ws: &mut WebSocket<TcpStream>,
) -> Result<(), (String, String)> {
    let failure = |f: PeerFailure| (f.reason(), f.to_string());
    let media = ctx.setup.media;
    let route = &ctx.setup.route;

    let mut publisher = PeerDraft::bind(
        &p.publisher,
        &Offer::load(PeerRole::Publisher, media),
        route,
    )
    .map_err(failure)?;
    publisher.started = p.started;
    let sdp = publisher.create_offer().map_err(failure)?;
    let mids = publisher.mids();
    let tracks: Vec<_> = [(mids.audio, "microphone"), (mids.video, "camera")]
        .into_iter()
        .filter_map(|(mid, source)| mid.map(|m| json!({"mid": m.to_string(), "source": source})))
        .collect();
    let publish = json!({"type": "publish", "sdp": sdp, "tracks": tracks, "req": REQ_PUBLISH});

    let offer = Offer {
        receive_sections: ctx.others,
        ..Offer::load(PeerRole::Subscriber, media)
    };
    let mut subscriber = PeerDraft::bind(&p.subscriber, &offer, route).map_err(failure)?;
    subscriber.started = p.started;
    let sdp = subscriber.create_offer().map_err(failure)?;
    let subscribe = json!({"type": "subscriber_offer", "sdp": sdp, "req": REQ_SUBSCRIBE});

    for message in [&publish, &subscribe] {
        send(ws, message).map_err(|e| ("signaling".to_string(), e.to_string()))?;
    }
    p.publisher_conn = Connection::Offered(Box::new(publisher));
    p.subscriber_conn = Connection::Offered(Box::new(subscriber));
    Ok(())
}

/// The server answered one connection's offer: take the answer and hand the peer to its shard.
fn answered(ctx: &RoomContext, p: &mut Participant, role: PeerRole, sdp: &str, slot: usize) {
    let (conn, plan) = match role {
        PeerRole::Publisher => (&mut p.publisher_conn, &p.publisher),
        PeerRole::Subscriber => (&mut p.subscriber_conn, &p.subscriber),
    };
    let Connection::Offered(mut draft) = std::mem::replace(conn, Connection::Failed) else {
        // An answer for a connection not offered (or already failed): nothing to take.
        *conn = Connection::Failed;
        return;
    };
    let session = SessionHandle {
        id: format!("room:{slot}"),
        token: None,
        node: None,
    };
    let expected = match &ctx.ptt {
        // The talkers' audio, mine excepted.
        Some(ptt) => ptt.talkers as usize - usize::from(p.talker.is_some()),
        None => {
            ctx.others
                * (usize::from(ctx.setup.media.has_audio())
                    + usize::from(ctx.setup.media.has_video()))
        }
    };
    let result = draft
        .accept_answer(sdp)
        .and_then(|()| draft.finish(session, negotiate::load_media(plan, &ctx.setup)))
        .map(|mut peer| {
            if let PeerMedia::Subscriber { receiving, .. } = &mut peer.media {
                receiving.set_expected_sources(expected);
                if let Some(ptt) = &ctx.ptt {
                    receiving.check_floor(ptt.timeline.clone());
                }
            }
            peer
        });
    match negotiate::land(plan, &ctx.setup, result) {
        Ok(peer) => {
            *conn = Connection::Live;
            p.out += 1;
            hand_over(ctx, peer);
        }
        // `land` lifted the plan from the placements.
        Err(f) => notify_failed(&ctx.notices, plan, &f.reason(), &f.to_string()),
    }
}

/// Hands a negotiated connection to its shard (the one the engine expects it on).
fn hand_over(ctx: &RoomContext, peer: NewPeer) {
    let shard = &ctx.shards[peer.plan.id.0 as usize % ctx.shards.len()];
    if let Err(ShardCommand::Add(peer)) = shard.send(ShardCommand::Add(Box::new(peer))) {
        // The run is ending; the participant leaves with the others.
        tracing::debug!(
            peer = peer.plan.id.0,
            "shard gone before a room connection arrived"
        );
    }
}

fn fail_both(ctx: &RoomContext, p: &mut Participant, reason: &str, detail: &str) {
    fail_unresolved(ctx, p, reason, detail);
    p.leaving = true;
}

/// Fails both connections where they have not reached a shard or failed already.
fn fail_unresolved(ctx: &RoomContext, p: &mut Participant, reason: &str, detail: &str) {
    for role in [PeerRole::Publisher, PeerRole::Subscriber] {
        fail_one(ctx, p, role, reason, detail);
    }
}

/// Fails one connection unless it reached a shard or failed already.
fn fail_one(ctx: &RoomContext, p: &mut Participant, role: PeerRole, reason: &str, detail: &str) {
    let (conn, plan) = match role {
        PeerRole::Publisher => (&mut p.publisher_conn, &p.publisher),
        PeerRole::Subscriber => (&mut p.subscriber_conn, &p.subscriber),
    };
    if !conn.resolved() {
        *conn = Connection::Failed;
        ctx.setup.placements.lift(plan);
        notify_failed(&ctx.notices, plan, reason, detail);
    }
}

fn notify_failed(notices: &Sender<Notice>, plan: &PeerPlan, reason: &str, detail: &str) {
    let _ = notices.send(Notice::Ended {
        plan: plan.clone(),
        session: None,
        joined: false,
        end: PeerEnd::failed(reason, detail),
    });
}

/// Sends `leave` and starts closing (once).
/// Sends `message` on `p`'s socket now, if it is open.
fn send_to(p: &mut Participant, message: &serde_json::Value) {
    if let Socket::Open(ws) = &mut p.socket {
        let _ = send(ws, message);
        let _ = ws.flush();
    }
}

/// Push to talk: subscribe `p` to `track` if it is the audio of one of its room's talkers
/// (not its own).
fn subscribe_if_talker(
    ctx: &RoomContext,
    p: &Participant,
    ws: &mut WebSocket<TcpStream>,
    track: &TrackView,
) {
    let Some(ptt) = &ctx.ptt else {
        return;
    };
    let talker = track
        .identity
        .strip_prefix("load-part-")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n / (ctx.rooms.len().max(1) as u32) < ptt.talkers);
    if track.kind == "audio" && talker && track.identity != p.identity {
        let _ = send(ws, &json!({"type": "subscribe", "track": track.id}));
    }
}

fn leave(p: &mut Participant) {
    if p.leaving {
        if !matches!(p.socket, Socket::Open(_)) {
            p.socket = Socket::Closed;
        }
        return;
    }
    p.leaving = true;
    if let Socket::Open(ws) = &mut p.socket {
        let _ = send(ws, &json!({"type": "leave"}));
    }
}

/// Reads a leaving socket; true once it is closed.
fn drain_closing(ws: &mut WebSocket<TcpStream>) -> bool {
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => {
                let _ = ws.flush();
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                let _ = ws.flush();
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Queues a JSON message and flushes what the socket takes now; the rest goes out when the
/// socket is writable again.
fn send(
    ws: &mut WebSocket<TcpStream>,
    message: &serde_json::Value,
) -> Result<(), tungstenite::Error> {
    match ws.send(Message::text(message.to_string())) {
        Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_parse_and_garbage_does_not() {
        let joined = parse(r#"{"type":"joined","v":1,"room":"r","req":1,"participants":[]}"#)
            .expect("joined");
        assert_eq!(joined.req, Some(1));
        assert_eq!(
            joined.message,
            ServerMessage::Joined {
                participants: Vec::new()
            }
        );
        let published = parse(
            r#"{"type":"track_published","track":{"id":"a-0","identity":"load-part-1","kind":"audio","source":"microphone","layers":1,"muted":false}}"#,
        )
        .expect("track_published");
        assert_eq!(
            published.message,
            ServerMessage::TrackPublished {
                track: TrackView {
                    id: "a-0".into(),
                    identity: "load-part-1".into(),
                    kind: "audio".into()
                }
            }
        );
        let granted =
            parse(r#"{"type":"floor_granted","max_talk_ms":30000,"req":4}"#).expect("granted");
        assert_eq!(
            (granted.message, granted.req),
            (ServerMessage::FloorGranted {}, Some(4))
        );
        let r = parse(r#"{"type":"renegotiate","audio":2,"video":3}"#).expect("renegotiate");
        assert_eq!(r.message, ServerMessage::Renegotiate { audio: 2, video: 3 });
        let e = parse(r#"{"type":"error","code":"room_full","message":"full","req":1}"#)
            .expect("error");
        assert_eq!(
            e.message,
            ServerMessage::Error {
                code: "room_full".into(),
                message: "full".into()
            }
        );
        let other = parse(r#"{"type":"speakers","speakers":[]}"#).expect("an event");
        assert_eq!(other.message, ServerMessage::Other);
        for bad in [
            "",
            "not json",
            "[1,2]",
            r#"{"no":"type"}"#,
            r#"{"type":"renegotiate","audio":"two","video":1}"#,
            r#"{"type":"publish_answer"}"#,
            r#"{"type":7}"#,
            r#"{"type":"joined","req":"one"}"#,
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn websocket_targets_come_from_the_base_url() {
        let t = WsTarget::parse("http://127.0.0.1:8080/").expect("parses");
        assert_eq!(t.url("load-0"), "ws://127.0.0.1:8080/rtc/load-0");
        let t = WsTarget::parse("http://sfu.example:8080/base/").expect("parses");
        assert_eq!(t.url("r"), "ws://sfu.example:8080/base/rtc/r");
        assert!(WsTarget::parse("https://x").is_err());
        assert!(WsTarget::parse("http:///x").is_err());
        let addr = WsTarget::parse("http://127.0.0.1:9")
            .expect("parses")
            .address()
            .expect("resolves");
        assert_eq!(addr.port(), 9);
    }
}
