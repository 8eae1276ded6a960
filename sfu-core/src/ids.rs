//! Typed identifiers. The ids that cross the node API are [`sfu_proto`]'s; the ones here are
//! the node's own and never leave it.

use std::fmt;

pub use sfu_proto::{Layer, NodeId, ParticipantId, RoomId, SessionId, TrackId, WorkerId};

/// A room as the workers of one node name it on the per-packet path: a small number the node
/// assigns when the room's first session arrives and never reuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey(pub u32);

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "room#{}", self.0)
    }
}
