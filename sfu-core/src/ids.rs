//! Typed identifiers. Bare integers never cross a module boundary.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One WebRTC session (a publisher or a subscriber peer connection). Unique for the node's
/// lifetime and monotonically increasing, so a larger id is a newer session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// A room, numbered by the node on first use of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoomId(pub u32);

/// A worker thread (and the core it is pinned to, when pinning is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub u16);

impl WorkerId {
    /// Index into per-worker tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for SessionId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(SessionId)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "room#{}", self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A participant (the identity a token names), as a stable hash. A subscriber is never sent
/// media its own participant publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParticipantId(pub u64);

impl ParticipantId {
    /// FNV-1a of the identity: stable across processes and nodes.
    pub fn from_identity(identity: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in identity.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        ParticipantId(h)
    }
}

/// Simulcast layer index: 0 = lowest (rid `q`), 2 = highest (rid `f`). A stream without
/// simulcast is layer 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Layer(pub u8);

impl Layer {
    /// Number of layers tracked per source.
    pub const COUNT: usize = 3;

    /// Map a simulcast rid to a layer. Unknown rids map by their position in the common
    /// naming schemes (`q/h/f`, `l/m/h`, `0/1/2`).
    pub fn from_rid(rid: Option<&str>) -> Layer {
        match rid {
            None => Layer(0),
            Some("q" | "l" | "0" | "low") => Layer(0),
            Some("h" | "m" | "1" | "mid") => Layer(1),
            Some("f" | "2" | "hi" | "high") => Layer(2),
            Some(_) => Layer(0),
        }
    }

    pub fn index(self) -> usize {
        usize::from(self.0).min(Self::COUNT - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_round_trips_through_its_text_form() {
        let id = SessionId(0x1234_abcd);
        assert_eq!(id.to_string().parse::<SessionId>(), Ok(id));
        assert!("zz".parse::<SessionId>().is_err());
    }

    #[test]
    fn rids_map_to_layers() {
        assert_eq!(Layer::from_rid(Some("q")), Layer(0));
        assert_eq!(Layer::from_rid(Some("h")), Layer(1));
        assert_eq!(Layer::from_rid(Some("f")), Layer(2));
        assert_eq!(Layer::from_rid(None), Layer(0));
    }
}
