//! The header of a forwarded packet: what a node knows about one RTP packet of a published
//! track once it is decrypted, as plain data. Workers hand it to each other with the payload;
//! a node relaying a track to another node sends the same header, so a relayed track is
//! simply a publisher without a local session. No WebRTC-library types and no clock readings
//! appear here.

use serde::{Deserialize, Serialize};

use crate::ids::{Layer, ParticipantId, TrackId};

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// The payload formats a node forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    Opus,
    Pcmu,
    Pcma,
    G722,
    H264,
    H265,
    Vp8,
    Vp9,
    Av1,
}

/// The format parameters (`a=fmtp`) that decide whether a subscriber can take a payload as
/// it is: the same codec with other parameters is another format with its own payload type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FormatParams {
    pub min_p_time: Option<u8>,
    pub stereo: Option<bool>,
    pub sprop_stereo: Option<bool>,
    pub use_inband_fec: Option<bool>,
    pub use_dtx: Option<bool>,
    pub level_asymmetry_allowed: Option<bool>,
    pub packetization_mode: Option<u8>,
    pub profile_level_id: Option<u32>,
    pub profile_id: Option<u32>,
    pub profile: Option<u8>,
    /// AV1 level and tier.
    pub level_idx: Option<u8>,
    pub tier: Option<u8>,
}

/// RFC 6464 audio level: `level` in -dBov (0 loudest, 127 silence) and the voice flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AudioLevel {
    pub level: u8,
    pub voice: bool,
}

/// One RTP packet of a published track, without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaHeader {
    pub track: TrackId,
    pub participant: ParticipantId,
    pub kind: MediaKind,
    pub layer: Layer,
    pub codec: Codec,
    pub format: FormatParams,
    pub clock_rate: u32,
    /// The publisher's extended (never wrapping) sequence number on this layer's stream.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// First packet of a keyframe: a subscriber may switch to this layer here.
    pub keyframe: bool,
    pub audio_level: Option<AudioLevel>,
}
