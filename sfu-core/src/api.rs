//! The node API: typed messages control sends to a media node, and the replies. The in-process
//! [`Node`](crate::node::Node) serves them directly; a QUIC transport carries the same
//! serde-encoded values between machines, so nothing here may depend on being in-process.

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, WorkerId};

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

/// A request to the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum NodeRequest {
    /// Answer an SDP offer with a new session in `room`.
    CreateSession {
        room: String,
        kind: SessionKind,
        offer_sdp: String,
        /// Who this is (the token's identity). A subscriber does not receive what the same
        /// participant publishes.
        #[serde(default)]
        participant: Option<String>,
    },
    /// End a session.
    CloseSession { session: SessionId },
    /// Read the node's counters.
    Stats,
}

/// The reply to a [`NodeRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum NodeReply {
    SessionCreated(SessionCreated),
    SessionClosed,
    Stats(NodeStats),
    Error(NodeError),
}

/// A session the node accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionCreated {
    pub session: SessionId,
    pub worker: WorkerId,
    pub answer_sdp: String,
}

/// Why the node refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "error", content = "detail")]
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
    /// The node is shutting down.
    #[error("node is stopped")]
    Stopped,
    /// A session failed inside the WebRTC stack; it was torn down.
    #[error("session failed: {0}")]
    SessionFailed(String),
}

/// Counters of the whole node, one entry per worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStats {
    pub io_backend: String,
    pub workers: Vec<WorkerStats>,
}

/// Counters of one worker. Totals are monotonic since start; `*_sessions` are gauges.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerStats {
    pub worker: u16,
    pub port: u16,
    pub publish_sessions: u64,
    pub subscribe_sessions: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// UDP GSO sends the kernel accepted (each carried several datagrams).
    /// `serde(default)`: a node from before these counters reports them as 0.
    #[serde(default)]
    pub gso_sends: u64,
    /// Datagrams in those sends (also counted in `packets_out`).
    #[serde(default)]
    pub gso_datagrams: u64,
    pub rtp_forwarded: u64,
    /// Keyframe requests (PLI) sent to publishers.
    pub keyframe_requests: u64,
    /// NACK messages received from subscribers (one message may name several packets).
    /// `serde(default)`: a node from before these counters reports them as 0.
    #[serde(default)]
    pub nacks_received: u64,
    /// Packets retransmitted to subscribers on their RTX SSRC, in answer to NACKs.
    #[serde(default)]
    pub rtx_sent: u64,
    /// PLIs received from subscribers.
    #[serde(default)]
    pub plis_received: u64,
    /// FIRs received from subscribers.
    #[serde(default)]
    pub firs_received: u64,
    /// NACK messages sent to publishers.
    #[serde(default)]
    pub nacks_sent: u64,
    pub sessions_reaped: u64,
    pub session_panics: u64,
    /// Drops by reason, in a fixed order; see [`DropReason`](crate::metrics::DropReason).
    pub dropped: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node API must survive a trip through a wire encoding unchanged.
    #[test]
    fn requests_and_replies_round_trip_through_json() {
        let requests = vec![
            NodeRequest::CreateSession {
                room: "r".into(),
                kind: SessionKind::Subscribe,
                offer_sdp: "v=0\r\n".into(),
                participant: Some("alice".into()),
            },
            NodeRequest::CloseSession {
                session: SessionId(7),
            },
            NodeRequest::Stats,
        ];
        for r in requests {
            let json = serde_json::to_string(&r).expect("serialize");
            let back: NodeRequest = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(format!("{r:?}"), format!("{back:?}"));
        }
        let replies = vec![
            NodeReply::SessionCreated(SessionCreated {
                session: SessionId(1),
                worker: WorkerId(1),
                answer_sdp: "v=0".into(),
            }),
            NodeReply::SessionClosed,
            NodeReply::Error(NodeError::BadOffer("no media".into())),
            NodeReply::Error(NodeError::NoCapacity),
            NodeReply::Stats(NodeStats::default()),
        ];
        for r in replies {
            let json = serde_json::to_string(&r).expect("serialize");
            let back: NodeReply = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(format!("{r:?}"), format!("{back:?}"));
        }
    }
}
