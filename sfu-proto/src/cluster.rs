//! Joining a cluster: what a node tells control when its link comes up. The exchange, on the
//! link's first stream, is
//!
//! ```text
//! node                                   control
//!  | Hello { version, node }  -------------> |
//!  | <------------------------- Hello, Challenge { nonce }
//!  | Register { registration, proof } -----> |   proof = HMAC(cluster secret, nonce, node)
//!  | <------------------------- Registered | Refused { reason }
//!  | <-- Request / Response / Event, both ways -->
//! ```
//!
//! The proof is computed by the link crate; here it is only bytes. A node that reconnects
//! registers again with the sessions it still holds, so control can reconcile its view.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::api::SessionKind;
use crate::ids::{NodeId, RoomId, SessionId};

/// Length of a challenge nonce and of a registration proof.
pub const NONCE_LEN: usize = 32;

/// Who a node is and what it offers, sent when its link comes up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub node: NodeId,
    /// Chosen at random when the node process starts: a node that restarts is a new
    /// incarnation, whose old sessions are gone.
    pub incarnation: u64,
    /// Where the node is (`--region`); placement prefers a client's region when asked.
    pub region: Option<String>,
    /// The address put in ICE candidates, and one UDP port per worker.
    pub media_ip: IpAddr,
    pub media_ports: Vec<u16>,
    /// Sessions the node accepts at most (all workers together).
    pub capacity: u64,
    /// Sessions the node holds right now (empty on first start; after a lost link, what it
    /// kept forwarding meanwhile).
    pub sessions: Vec<HeldSession>,
    /// Where other nodes reach its relay endpoint (rooms that span nodes), if it runs one.
    pub relay: Option<RelayAddress>,
}

/// A node's relay endpoint: its QUIC address (an IPv6 scope id is not carried) and its
/// (self-signed) certificate, DER.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayAddress {
    pub addr: std::net::SocketAddr,
    pub cert: Vec<u8>,
}

/// A session a node holds, as it reports it when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSession {
    pub session: SessionId,
    pub room: RoomId,
    pub kind: SessionKind,
    pub identity: String,
}
