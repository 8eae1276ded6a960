//! Typed identifiers shared by nodes, control and tools. Names chosen by people (nodes, rooms)
//! are validated when they are parsed, so a value of these types is always well formed;
//! session ids are random 128-bit values, unique across nodes and not guessable.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a textual id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("{what} must be 1-{max} characters of A-Z a-z 0-9 . _ -")]
    BadName { what: &'static str, max: usize },
    #[error("a session id is 32 hexadecimal digits")]
    BadSessionId,
    #[error("a track id is <session id>-<index>")]
    BadTrackId,
}

/// Whether `s` is a name of 1..=`max` characters of `[A-Za-z0-9._-]`.
fn valid_name(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest accepted name, in bytes.
            pub const MAX_LEN: usize = $max;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::try_from(s.to_string())
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(s: String) -> Result<Self, IdError> {
                if valid_name(&s, $max) {
                    Ok(Self(s))
                } else {
                    Err(IdError::BadName { what: $what, max: $max })
                }
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_id!(
    /// A media node, named by its operator (`--node-id`).
    NodeId,
    "a node id",
    64
);

name_id!(
    /// A room, by the name clients use in URLs. The same name means the same room on every
    /// node and control instance.
    RoomId,
    "a room name",
    128
);

/// One WebRTC session (a publisher's or a subscriber's peer connection). Assigned by control
/// from 128 random bits: unique across nodes, and knowing one id tells nothing about another.
/// Text form: 32 lowercase hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u128);

impl SessionId {
    /// A fresh id from the thread's cryptographically secure generator.
    pub fn random() -> Self {
        SessionId(rand::random())
    }

    pub const fn from_u128(value: u128) -> Self {
        SessionId(value)
    }

    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for SessionId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::BadSessionId);
        }
        u128::from_str_radix(s, 16)
            .map(SessionId)
            .map_err(|_| IdError::BadSessionId)
    }
}

/// Text in human-readable formats (JSON: JavaScript has no 128-bit integers), 16 bytes in
/// binary ones.
impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            u128::deserialize(d).map(SessionId)
        }
    }
}

/// A published track: the publishing session and the index of its media section in the offer
/// (0-based). Stable for the session's life and the same on every node a track is relayed to.
/// Text form: `<session id>-<index>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrackId {
    pub session: SessionId,
    pub index: u16,
}

impl fmt::Debug for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrackId({self})")
    }
}

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.session, self.index)
    }
}

impl FromStr for TrackId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let (session, index) = s.split_once('-').ok_or(IdError::BadTrackId)?;
        // Plain decimal, no sign and no leading zeros: one text form per id.
        let canonical = !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
            && (index == "0" || !index.starts_with('0'));
        if !canonical {
            return Err(IdError::BadTrackId);
        }
        Ok(TrackId {
            session: session.parse()?,
            index: index.parse().map_err(|_| IdError::BadTrackId)?,
        })
    }
}

/// A participant: the identity a token names, as a stable 64-bit hash (FNV-1a), the same in
/// every process. A subscriber is never sent what its own participant publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ParticipantId(pub u64);

impl ParticipantId {
    pub fn from_identity(identity: &str) -> Self {
        ParticipantId(fnv1a(identity.as_bytes()))
    }
}

/// 64-bit FNV-1a: a stable, dependency-free hash for ids that must agree across processes.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A worker thread of a node (and the core it is pinned to, when pinning is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub u16);

impl WorkerId {
    /// Index into per-worker tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Simulcast layer index: 0 = lowest (rid `q`), 2 = highest (rid `f`). A stream without
/// simulcast is layer 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Layer(pub u8);

impl Layer {
    /// Number of layers tracked per track.
    pub const COUNT: usize = 3;
    pub const LOW: Layer = Layer(0);
    pub const HIGH: Layer = Layer(Self::COUNT as u8 - 1);

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

    /// Index into per-layer tables; out-of-range layers (from the wire) clamp to the highest.
    pub fn index(self) -> usize {
        usize::from(self.0).min(Self::COUNT - 1)
    }
}

/// Matches a response to its request on a node link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_round_trip_through_text_and_refuse_anything_else() {
        let id = SessionId::from_u128(0x1234_abcd);
        assert_eq!(id.to_string(), "0000000000000000000000001234abcd");
        assert_eq!(id.to_string().parse::<SessionId>(), Ok(id));
        for bad in [
            "",
            "zz",
            "1234abcd",
            "+00000000000000000000000001234abcd",
            &"0".repeat(33),
        ] {
            assert_eq!(
                bad.parse::<SessionId>(),
                Err(IdError::BadSessionId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn random_session_ids_differ() {
        let a = SessionId::random();
        let b = SessionId::random();
        assert_ne!(a, b);
    }

    #[test]
    fn names_are_validated_on_every_path_in() {
        assert!("demo-1.a_b".parse::<RoomId>().is_ok());
        assert!("".parse::<RoomId>().is_err());
        assert!("a/b".parse::<RoomId>().is_err());
        assert!("x".repeat(129).parse::<RoomId>().is_err());
        assert!("x".repeat(65).parse::<NodeId>().is_err());
        let json = serde_json::to_string("bad room").expect("json");
        assert!(serde_json::from_str::<RoomId>(&json).is_err());
    }

    #[test]
    fn track_ids_round_trip_through_text() {
        let t = TrackId {
            session: SessionId::from_u128(7),
            index: 3,
        };
        assert_eq!(t.to_string().parse::<TrackId>(), Ok(t));
        let s = t.session;
        for bad in [
            "7-3".to_string(),
            format!("{s}-+3"),
            format!("{s}-03"),
            format!("{s}-"),
            format!("{s}-99999"),
        ] {
            assert!(bad.parse::<TrackId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn session_ids_are_text_in_json_and_compact_in_binary() {
        let id = SessionId::from_u128(u128::MAX);
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(json, format!("\"{}\"", "f".repeat(32)));
        assert_eq!(serde_json::from_str::<SessionId>(&json).expect("back"), id);
        let bin = postcard::to_stdvec(&id).expect("postcard");
        assert!(bin.len() <= 19, "{} bytes", bin.len());
        assert_eq!(postcard::from_bytes::<SessionId>(&bin).expect("back"), id);
    }

    #[test]
    fn rids_map_to_layers() {
        assert_eq!(Layer::from_rid(Some("q")), Layer(0));
        assert_eq!(Layer::from_rid(Some("h")), Layer(1));
        assert_eq!(Layer::from_rid(Some("f")), Layer(2));
        assert_eq!(Layer::from_rid(None), Layer(0));
        assert_eq!(Layer(200).index(), 2);
    }

    #[test]
    fn participant_ids_are_stable() {
        assert_eq!(
            ParticipantId::from_identity("alice"),
            ParticipantId::from_identity("alice")
        );
        assert_ne!(
            ParticipantId::from_identity("alice"),
            ParticipantId::from_identity("bob")
        );
        // The published FNV-1a 64 test vector.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
