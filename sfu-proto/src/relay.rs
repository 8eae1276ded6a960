//! Rooms that span nodes: what two media nodes say to each other on a relay link, one QUIC
//! connection per node pair shared by all their rooms (docs/cascade.md).
//!
//! The control stream is reliable and ordered and carries [`RelayFrame`]s in the node link's
//! byte form ([`crate::frame::encode`], [`crate::FrameDecoder`]):
//!
//! ```text
//! relay node (has subscribers)              origin node (has the publisher)
//!  | Hello { version, node, token } -------->  |  token: control introduced the two
//!  | <--------------------------------- Hello  |  (or Refused { reason }, then close)
//!  | Join { room } -------------------------->  |
//!  | <-------------- TrackPublished { room, track }, now and whenever one is published
//!  | Layers { track, mask } ----------------->  |  only these layers cross the link
//!  | KeyframeRequest { track, layer } ------->  |  throttled by the relay node
//!  | Nack { track, layer, seqs } ------------>  |  repairs of the hop itself
//!  | <-------------------- TrackUnpublished { room, track }
//!  | Leave { room } ------------------------->  |
//! ```
//!
//! Media rides QUIC datagrams from the origin: each is one packet, the plain
//! [`MediaHeader`] and the payload (no SRTP on this hop: QUIC encrypts it). A packet larger
//! than the path's datagram limit is cut into at most [`MAX_FRAGMENTS`] fragments, which the
//! [`Reassembler`] puts together; a packet that loses a fragment is lost as a whole, and the
//! hop's NACK asks for it again. Nothing here panics on input.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::TrackInfo;
use crate::ids::{Layer, NodeId, ParticipantId, RoomId, TrackId};
use crate::media::MediaHeader;

/// The relay protocol version; both ends send it in [`RelayFrame::Hello`].
pub const RELAY_VERSION: u16 = 1;

/// Length of the link token control gives both ends of a relay link.
pub const LINK_TOKEN_LEN: usize = 32;

/// Most fragments one packet may be cut into (an RTP packet is at most ~1.5 KB; a datagram
/// limit below 1/8 of that is a broken path, not one to relay over).
pub const MAX_FRAGMENTS: usize = 8;

/// How far behind the newest fragmented packet (in packet ids) an incomplete one may fall
/// before it is given up, and so the most packets collected at once.
pub const MAX_PENDING: usize = 32;

/// Sequence numbers one [`RelayFrame::Nack`] may name.
pub const MAX_NACK: usize = 64;

/// A track published on the origin node, as the relay node needs it to act as its publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedTrack {
    pub info: TrackInfo,
    /// Its publisher (what "newest other publisher" compares with a subscriber's own).
    pub participant: ParticipantId,
    /// Publication order on the origin (newer publishers have larger numbers), so that
    /// "newest other publisher" picks the same track on both nodes.
    pub order: u64,
}

/// One message on a relay link's control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayFrame {
    /// First frame each way: who is speaking, and the token control handed both ends for
    /// this pair (the origin refuses a link whose token it was not given).
    Hello {
        version: u16,
        node: NodeId,
        token: [u8; LINK_TOKEN_LEN],
    },
    /// Origin → relay node: not accepted, and why; the origin closes the link after it.
    Refused { reason: String },
    /// Relay node → origin: send me `room`'s tracks published on your node.
    Join { room: RoomId },
    /// Relay node → origin: no more of `room` (its last local subscriber left).
    Leave { room: RoomId },
    /// Origin → relay node: a track of a joined room (sent for each track on `Join`, then as
    /// tracks are published).
    TrackPublished { room: RoomId, track: RelayedTrack },
    /// Origin → relay node: the track ended.
    TrackUnpublished { room: RoomId, track: TrackId },
    /// Relay node → origin: forward only the layers set in `mask` (bit n = layer n) of
    /// `track`; 0 stops it.
    Layers { track: TrackId, mask: u8 },
    /// Relay node → origin: a subscriber there needs a keyframe of `track` at `layer`.
    KeyframeRequest { track: TrackId, layer: Layer },
    /// Relay node → origin: these packets of `track` at `layer` (extended sequence numbers)
    /// did not arrive over the link; send them again if still held.
    Nack {
        track: TrackId,
        layer: Layer,
        seqs: Vec<u64>,
    },
}

/// A packet that crossed a relay link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedPacket {
    pub header: MediaHeader,
    pub payload: Arc<[u8]>,
}

/// Why a datagram was not a media packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    #[error("empty datagram")]
    Empty,
    #[error("unknown datagram kind {0:#04x}")]
    UnknownKind(u8),
    #[error("malformed datagram: {0}")]
    Malformed(String),
    /// Encoding: the packet would need more than [`MAX_FRAGMENTS`] datagrams (or the limit
    /// leaves no room for a fragment's header).
    #[error("a packet of {len} bytes does not fit {MAX_FRAGMENTS} datagrams of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
}

const WHOLE: u8 = 0x01;
const FRAGMENT: u8 = 0x02;
/// Kind, packet id (u32), index, count.
const FRAGMENT_HEADER: usize = 1 + 4 + 1 + 1;

/// The datagrams that carry one packet: one when `header` and `payload` fit `limit` bytes,
/// else up to [`MAX_FRAGMENTS`] fragments tagged with `packet`: the sender counts the
/// packets it fragments, so that the receiver can give up on one that lost a fragment once
/// [`MAX_PENDING`] newer ones have come.
pub fn encode_media(
    header: &MediaHeader,
    payload: &[u8],
    limit: usize,
    packet: u32,
) -> Result<Vec<Vec<u8>>, DatagramError> {
    let mut body = vec![WHOLE];
    postcard::to_io(header, &mut body).map_err(|e| DatagramError::Malformed(e.to_string()))?;
    body.extend_from_slice(payload);
    if body.len() <= limit {
        return Ok(vec![body]);
    }
    // Fragments carry the whole packet's body (without its kind byte), cut in order.
    let body = &body[1..];
    let room = limit.saturating_sub(FRAGMENT_HEADER);
    let too_large = DatagramError::TooLarge {
        len: body.len(),
        limit,
    };
    if room == 0 {
        return Err(too_large);
    }
    let count = body.len().div_ceil(room);
    if count > MAX_FRAGMENTS {
        return Err(too_large);
    }
    Ok(body
        .chunks(room)
        .enumerate()
        .map(|(index, piece)| {
            let mut d = Vec::with_capacity(FRAGMENT_HEADER + piece.len());
            d.push(FRAGMENT);
            d.extend_from_slice(&packet.to_be_bytes());
            d.push(index as u8);
            d.push(count as u8);
            d.extend_from_slice(piece);
            d
        })
        .collect())
}

/// Decode a whole packet's body (after its kind byte): the header, then the payload.
fn decode_body(body: &[u8]) -> Result<RelayedPacket, DatagramError> {
    let (header, payload) = postcard::take_from_bytes::<MediaHeader>(body)
        .map_err(|e| DatagramError::Malformed(e.to_string()))?;
    Ok(RelayedPacket {
        header,
        payload: Arc::from(payload),
    })
}

/// A packet being collected from its fragments.
#[derive(Debug)]
struct Pending {
    packet: u32,
    parts: Vec<Option<Vec<u8>>>,
}

/// Turns datagrams back into packets: whole ones at once, fragmented ones when their last
/// fragment arrives (in any order). A packet still incomplete when one [`MAX_PENDING`] ids
/// newer arrives is given up, so at most that many are collected at once.
#[derive(Debug, Default)]
pub struct Reassembler {
    pending: VecDeque<Pending>,
    /// The newest packet id seen in a fragment.
    newest: Option<u32>,
    /// Incomplete packets given up to make room for newer ones.
    abandoned: u64,
}

impl Reassembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Take one datagram: `Ok(Some(..))` when it completes a packet, `Ok(None)` when it is a
    /// fragment of one still incomplete (or a repeat), `Err` for bytes that are no datagram
    /// of this protocol (to be dropped and counted).
    pub fn push(&mut self, datagram: &[u8]) -> Result<Option<RelayedPacket>, DatagramError> {
        let (&kind, rest) = datagram.split_first().ok_or(DatagramError::Empty)?;
        match kind {
            WHOLE => decode_body(rest).map(Some),
            FRAGMENT => self.fragment(rest),
            other => Err(DatagramError::UnknownKind(other)),
        }
    }

    /// Incomplete packets given up so far (a fragment was lost, or came too late).
    pub fn abandoned(&self) -> u64 {
        self.abandoned
    }

    /// Packets whose fragments are being collected.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn fragment(&mut self, rest: &[u8]) -> Result<Option<RelayedPacket>, DatagramError> {
        let malformed = |what: &str| DatagramError::Malformed(format!("fragment: {what}"));
        let (head, piece) = rest
            .split_first_chunk::<{ FRAGMENT_HEADER - 1 }>()
            .ok_or_else(|| malformed("shorter than its header"))?;
        let packet = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let (index, count) = (usize::from(head[4]), usize::from(head[5]));
        if !(2..=MAX_FRAGMENTS).contains(&count) || index >= count {
            return Err(malformed(&format!("index {index} of {count}")));
        }
        self.forget_older_than(packet);
        let at = match self.pending.iter().position(|p| p.packet == packet) {
            Some(at) if self.pending[at].parts.len() == count => at,
            Some(_) => return Err(malformed("count differs from the packet's other fragments")),
            None => {
                if self.pending.len() == MAX_PENDING {
                    self.pending.pop_front();
                    self.abandoned += 1;
                }
                self.pending.push_back(Pending {
                    packet,
                    parts: vec![None; count],
                });
                self.pending.len() - 1
            }
        };
        let entry = &mut self.pending[at];
        if entry.parts[index].is_none() {
            entry.parts[index] = Some(piece.to_vec());
        }
        if entry.parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let done = self.pending.remove(at).map(|p| p.parts).unwrap_or_default();
        let body: Vec<u8> = done.into_iter().flatten().flatten().collect();
        decode_body(&body).map(Some)
    }

    /// `packet` arrived: if it is the newest, give up the incomplete packets that are now
    /// [`MAX_PENDING`] or more ids behind it (ids wrap; "behind" is within half the range).
    fn forget_older_than(&mut self, packet: u32) {
        let ahead = |a: u32, b: u32| a != b && a.wrapping_sub(b) < 1 << 31;
        if self.newest.is_some_and(|n| !ahead(packet, n)) {
            return;
        }
        self.newest = Some(packet);
        let before = self.pending.len();
        self.pending.retain(|p| {
            !ahead(packet, p.packet) || packet.wrapping_sub(p.packet) < MAX_PENDING as u32
        });
        self.abandoned += (before - self.pending.len()) as u64;
    }
}
