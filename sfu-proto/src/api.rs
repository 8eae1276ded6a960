//! The node API: what control asks a media node ([`NodeRequest`] → [`NodeResponse`]) and what
//! a node tells control on its own ([`NodeEvent`]). In process and over the network the same
//! values travel, so nothing here may depend on being in one process.

use serde::{Deserialize, Serialize};

use crate::ids::{Layer, NodeId, ParticipantId, RoomId, SessionId, TrackId, WorkerId};
use crate::media::MediaKind;

/// What a session does in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// Sends media into the room (WHIP).
    Publish,
    /// Receives the room's media (WHEP).
    Subscribe,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Publish => "publish",
            SessionKind::Subscribe => "subscribe",
        }
    }
}

/// How a subscriber's outgoing tracks are filled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribePolicy {
    /// Each outgoing track follows the room's newest live published track of its kind whose
    /// participant is not the subscriber's own (WHEP's behaviour).
    #[default]
    NewestOther,
    /// Outgoing tracks stay empty until [`NodeRequest::Subscribe`] names what they carry.
    Explicit,
    /// Each outgoing track follows this participant's newest live published track of its
    /// kind (WHEP's `?participant=`), and carries nothing while it publishes none.
    Participant(ParticipantId),
}

/// Answer an SDP offer with a new session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSession {
    /// Chosen by control ([`SessionId::random`]), so it is known before the node answers and
    /// unique across nodes.
    pub session: SessionId,
    pub room: RoomId,
    pub kind: SessionKind,
    /// The identity the client's token names.
    pub identity: String,
    pub offer_sdp: String,
    #[serde(default)]
    pub policy: SubscribePolicy,
}

/// Send a published track on one of a subscriber's outgoing tracks (`slot`, the index in
/// [`SessionCreated::slots`]), at most at `max_layer`. Replaces what the slot carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    pub session: SessionId,
    pub slot: u16,
    pub track: TrackId,
    pub max_layer: Layer,
}

/// Change a subscription in place: its highest layer, or pause it (nothing is sent until it
/// is resumed; resuming waits for a keyframe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSubscription {
    pub session: SessionId,
    pub slot: u16,
    pub max_layer: Layer,
    pub paused: bool,
}

/// Relay room `room`'s tracks from node `origin` to this node (docs/cascade.md): connect to
/// `origin`'s relay endpoint at `addr`, accept exactly certificate `cert` (DER), and prove
/// with `token` that control introduced the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRoom {
    pub room: RoomId,
    pub origin: NodeId,
    pub addr: std::net::SocketAddr,
    pub cert: Vec<u8>,
    pub token: [u8; 32],
    /// Leave the room once it has had no subscriber on this node for this long
    /// (`cascade.idle_secs`).
    pub idle_secs: u32,
}

/// A request to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRequest {
    CreateSession(CreateSession),
    /// End a session.
    CloseSession {
        session: SessionId,
    },
    Subscribe(Subscribe),
    SetSubscription(SetSubscription),
    /// Stop sending anything on a slot (it follows nothing until the next `Subscribe`).
    Unsubscribe {
        session: SessionId,
        slot: u16,
    },
    /// The node's counters.
    Stats,
    /// Whether every worker runs.
    Health,
    RelayRoom(RelayRoom),
    /// Node `peer` will open a relay link to this node proving `token`: accept it (and, until
    /// it comes, no other link claiming to be `peer`).
    ExpectRelay {
        peer: NodeId,
        token: [u8; 32],
    },
    /// What the node relays of room `room`: answered with [`NodeResponse::RoomRelays`].
    RoomRelays {
        room: RoomId,
    },
    /// A new offer on an existing session (the client added or removed media sections, or
    /// restarts ICE): answered with [`NodeResponse::SessionCreated`] holding the new answer
    /// and the session's tracks and slots after the change.
    Renegotiate {
        session: SessionId,
        offer_sdp: String,
    },
    /// Send a text message on one of a session's data channels (docs/signaling.md, "Data
    /// messages"): one its client opened, reliable or not as `reliable` says.
    SendData(SendData),
    /// Push to talk: whose audio a room forwards from now on (docs/node-api.md, "Push to
    /// talk"). Answered with `Done` once every worker applies it.
    SetFloor(SetFloor),
}

/// Which participants' audio a room forwards to its subscribers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioFloor {
    /// Everyone's: no floor control (every room starts so).
    #[default]
    Open,
    /// Nobody's: the room is push-to-talk and the floor is free.
    Free,
    /// This participant's only.
    Held(ParticipantId),
}

impl AudioFloor {
    /// Whether `participant`'s audio goes through.
    pub fn lets(self, participant: ParticipantId) -> bool {
        match self {
            AudioFloor::Open => true,
            AudioFloor::Free => false,
            AudioFloor::Held(holder) => holder == participant,
        }
    }
}

/// Set room `room`'s [`AudioFloor`] on this node. Packets of other participants' audio are
/// dropped where they enter the room's fan-out (counted in `WorkerStats::floor_dropped`), so
/// no listener is sent them; video, data and the active-speaker ranking of the holder go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetFloor {
    pub room: RoomId,
    pub floor: AudioFloor,
}

/// A text message for a session's data channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendData {
    pub session: SessionId,
    /// On the client's reliable channel, or on its unreliable one (falling back to the
    /// reliable channel when the client opened only that).
    pub reliable: bool,
    pub text: String,
}

/// The answer to a [`NodeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeResponse {
    SessionCreated(SessionCreated),
    /// The request was carried out (close, subscribe, set, unsubscribe).
    Done,
    Stats(NodeStats),
    Health(NodeHealth),
    Error(NodeError),
    RoomRelays(RoomRelays),
}

/// What a node relays of one room (docs/cascade.md): the tracks it receives from other nodes,
/// and the nodes it sends its own tracks of the room to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRelays {
    pub from: Vec<RelayedFrom>,
    pub to: Vec<NodeId>,
}

/// Tracks a node receives from one origin node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedFrom {
    pub node: NodeId,
    pub tracks: Vec<TrackId>,
}

/// A session the node accepted, or (after [`NodeRequest::Renegotiate`]) the session as the new
/// offer left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCreated {
    pub session: SessionId,
    pub worker: WorkerId,
    pub answer_sdp: String,
    /// A publisher's tracks, one per media section it sends on.
    pub tracks: Vec<TrackInfo>,
    /// A subscriber's outgoing tracks, by slot index.
    pub slots: Vec<MediaKind>,
    /// The media section (`a=mid`) of each of `tracks`, in the same order.
    pub track_mids: Vec<String>,
    /// The media section (`a=mid`) of each of `slots`, in the same order.
    pub slot_mids: Vec<String>,
}

/// A track published in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub track: TrackId,
    pub room: RoomId,
    pub identity: String,
    pub kind: MediaKind,
    /// Simulcast layers the offer announced (1 without simulcast).
    pub layers: u8,
}

/// Why a node refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeError {
    /// The offer could not be parsed or does not fit the session kind.
    #[error("bad offer: {0}")]
    BadOffer(String),
    /// Every worker is at its session limit.
    #[error("no capacity: every worker is at its session limit")]
    NoCapacity,
    /// No such session (already closed, or never existed).
    #[error("unknown session")]
    UnknownSession,
    /// A session with this id exists already.
    #[error("session id already in use")]
    DuplicateSession,
    /// No such track in the session's room, or no such slot on the session.
    #[error("unknown track or slot: {0}")]
    UnknownTrack(String),
    /// The request does not fit the session (e.g. subscribing a publisher).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The node is shutting down.
    #[error("node is stopped")]
    Stopped,
    /// A session failed inside the WebRTC stack; it was torn down.
    #[error("session failed: {0}")]
    SessionFailed(String),
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs} is not supported (this side speaks {ours})")]
    Version { ours: u16, theirs: u16 },
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Control asked (`CloseSession`).
    Closed,
    /// ICE + DTLS did not complete in time.
    ConnectTimeout,
    /// Connected, then silent for too long.
    IceTimeout,
    /// The peer went away (ICE disconnected, DTLS closed).
    Disconnected,
    /// The WebRTC stack failed on this session; it alone was torn down.
    Failed,
    /// The node (or the session's worker) stopped.
    NodeStopped,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::ConnectTimeout => "connect_timeout",
            EndReason::IceTimeout => "ice_timeout",
            EndReason::Disconnected => "disconnected",
            EndReason::Failed => "failed",
            EndReason::NodeStopped => "node_stopped",
        }
    }
}

/// What a node tells control without being asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeEvent {
    /// A session ended, for whatever reason (also after `CloseSession`).
    SessionEnded {
        session: SessionId,
        room: RoomId,
        reason: EndReason,
    },
    TrackPublished(TrackInfo),
    TrackUnpublished {
        track: TrackId,
        room: RoomId,
    },
    /// The node's load, about once a second.
    Load(LoadReport),
    /// A worker thread stopped; its sessions are gone.
    WorkerStopped {
        worker: WorkerId,
    },
    /// The node is draining (it was asked to stop): give it no new rooms; its sessions go on
    /// until they end or its drain timeout passes.
    Draining,
    /// A room's active speakers changed: their audio tracks published on this node, loudest
    /// first (empty: nobody speaks). From the publishers' RFC 6464 audio levels.
    Speakers {
        room: RoomId,
        speakers: Vec<TrackId>,
    },
    /// A client sent a text message on one of its session's data channels. The node checks
    /// its size and rate and passes it on as it came; what it means is control's business.
    Data {
        session: SessionId,
        room: RoomId,
        /// It came on a reliable channel.
        reliable: bool,
        text: String,
    },
    /// A connected session's connection quality changed (its first judgement included): from
    /// the loss and round-trip time str0m measures every second, smoothed, a downgrade at once
    /// and an upgrade only once it held (docs/node-api.md, "Connection quality").
    Quality {
        session: SessionId,
        room: RoomId,
        quality: Quality,
    },
}

/// How well a session's media gets through, worst first, so that the worse of two is their
/// minimum (`a.min(b)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// Nothing heard from the client for seconds, or its ICE connection went away.
    Lost,
    /// Loss or delay a user notices (frozen video, robotic audio).
    Poor,
    /// Some loss or delay, repaired or barely noticeable.
    Good,
    /// Next to no loss, a short round trip.
    Excellent,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Lost => "lost",
            Quality::Poor => "poor",
            Quality::Good => "good",
            Quality::Excellent => "excellent",
        }
    }
}

/// A node's load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    pub sessions: u64,
    pub tracks: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub workers_up: u16,
    pub workers: u16,
    /// CPU the node's process used since its previous report, in thousandths of a core
    /// (2000: two cores busy all the time).
    pub cpu_millicores: u32,
    /// The node's relay links (rooms that span nodes), one entry per peer node.
    pub relays: Vec<RelayLinkStats>,
}

/// One relay link as its node sees it. Counters are totals since the node started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayLinkStats {
    pub peer: Option<NodeId>,
    /// Whether the link is up now.
    pub up: bool,
    /// Round-trip time as QUIC measures it, in microseconds (0 when down).
    pub rtt_us: u64,
    pub datagrams_out: u64,
    pub datagrams_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Packets this node sent (whole, before fragmentation) and received on the link.
    pub packets_out: u64,
    pub packets_in: u64,
    /// Packets resent for the peer's NACKs, and NACK frames sent to it.
    pub retransmitted: u64,
    pub nacks_sent: u64,
    /// Packets too large for the datagram limit even in fragments.
    pub dropped_size: u64,
    /// Datagrams QUIC refused to send (larger than the path allows, or its buffer full).
    pub dropped_congestion: u64,
    /// Packets from the peer found missing on arrival (gaps in a layer's sequence), before
    /// the hop's repairs, and those still missing when the repairs gave up.
    pub lost: u64,
    pub unrepaired: u64,
}

/// Whether a node's workers run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub node: Option<NodeId>,
    /// One entry per worker: running or stopped.
    pub workers_up: Vec<bool>,
}

impl NodeHealth {
    pub fn is_healthy(&self) -> bool {
        self.workers_up.iter().all(|up| *up)
    }
}

/// Counters of a whole node, one entry per worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    pub io_backend: String,
    pub workers: Vec<WorkerStats>,
}

/// Counters of one worker. Totals are monotonic since start; `*_sessions` are gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub worker: u16,
    pub port: u16,
    pub publish_sessions: u64,
    pub subscribe_sessions: u64,
    /// Tracks published by the worker's sessions (a gauge).
    pub published_tracks: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// UDP GSO sends the kernel accepted (each carried several datagrams).
    pub gso_sends: u64,
    /// Datagrams in those sends (also counted in `packets_out`).
    pub gso_datagrams: u64,
    pub rtp_forwarded: u64,
    /// Keyframe requests (PLI) sent to publishers.
    pub keyframe_requests: u64,
    /// NACK messages received from subscribers (one message may name several packets).
    pub nacks_received: u64,
    /// Packets retransmitted to subscribers on their RTX SSRC, in answer to NACKs.
    pub rtx_sent: u64,
    pub plis_received: u64,
    pub firs_received: u64,
    /// NACK messages sent to publishers.
    pub nacks_sent: u64,
    pub sessions_reaped: u64,
    pub session_panics: u64,
    /// Data-channel messages clients sent (passed on to control), messages sent to clients,
    /// and messages refused (binary, too large, too many, or no open channel to send on).
    pub data_in: u64,
    pub data_out: u64,
    pub data_dropped: u64,
    /// Layer changes, pauses and resumes made by subscriber bandwidth allocation.
    pub bandwidth_switches: u64,
    /// Video tracks paused for bandwidth now (a gauge).
    pub bandwidth_paused_tracks: u64,
    /// Audio packets not forwarded because their participant did not hold the room's
    /// push-to-talk floor ([`NodeRequest::SetFloor`]).
    pub floor_dropped: u64,
    /// Drops by reason, in a fixed order.
    pub dropped: Vec<(String, u64)>,
    /// Copies of publishers' packets written to this worker's subscribers, by how long after
    /// the packet reached the node the pass that wrote them handed its sends to the socket
    /// backend: one count per bound of [`FORWARD_DELAY_BUCKETS_US`] (at most that many
    /// microseconds, not cumulative), then one for longer.
    pub forward_delay: Vec<u64>,
    /// The sum of those delays, in microseconds.
    pub forward_delay_sum_us: u64,
}

/// Upper bounds, in microseconds, of [`WorkerStats::forward_delay`]'s buckets.
pub const FORWARD_DELAY_BUCKETS_US: [u64; 21] = [
    10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500,
    10_000, 20_000, 50_000, 100_000,
];
