//! The test-pattern payload format: every synthetic RTP payload carries a self-checking header
//! and a body derived from its packet counter, so a receiver can tell whether it arrived intact
//! and which source packet it was. Video payloads are framed like real VP8 (RFC 7741) or H264
//! (RFC 6184, packetization-mode 1) so an SFU's keyframe detection sees real keyframes. Decoding
//! tells the two framings apart by the payload's first byte, so a receiver needs no codec.

use std::fmt;

/// First bytes of every test-pattern header.
pub const MAGIC: [u8; 4] = *b"SFUT";

/// Bytes of the test-pattern header, before the body.
pub const HEADER_LEN: usize = 40;

const FLAG_KEYFRAME: u8 = 0x01;
const FLAG_END_OF_FRAME: u8 = 0x02;

/// Bytes of the VP8 payload descriptor we write (no extensions).
pub const VP8_DESCRIPTOR_LEN: usize = 1;

/// Bytes of the VP8 payload header on the first packet of a delta frame.
pub const VP8_DELTA_HEADER_LEN: usize = 3;

/// Bytes of the VP8 payload header on the first packet of a keyframe (3 + start code + size).
pub const VP8_KEY_HEADER_LEN: usize = 10;

/// NAL unit types (H.264 table 7-1, RFC 6184 section 5.2) the synthetic H264 stream uses.
pub mod nal {
    /// Coded slice of a non-IDR picture.
    pub const SLICE: u8 = 1;
    /// Coded slice of an IDR picture.
    pub const IDR: u8 = 5;
    /// Supplemental enhancement information: carries the test pattern in a STAP-A.
    pub const SEI: u8 = 6;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    /// Single-time aggregation packet.
    pub const STAP_A: u8 = 24;
    /// Fragmentation unit.
    pub const FU_A: u8 = 28;
}

/// A fake sequence parameter set: NAL header, then profile-level-id 42e01f (Constrained
/// Baseline 3.1, what the publisher offers) and filler. Not decodable, which an SFU never needs.
pub const FAKE_SPS: [u8; 8] = [0x67, 0x42, 0xe0, 0x1f, 0x8c, 0x8d, 0x40, 0x50];

/// A fake picture parameter set (NAL header and three bytes).
pub const FAKE_PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];

/// NAL header of the SEI unit that carries the test pattern in a STAP-A (NRI 0).
const SEI_HEADER: u8 = nal::SEI;

/// NRI (reference importance) of IDR slices, parameter sets and the STAP-A holding them.
const NRI_KEY: u8 = 3 << 5;

/// NRI of non-IDR slices.
const NRI_DELTA: u8 = 2 << 5;

/// Which media a payload belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PayloadKind {
    Audio,
    Video,
}

impl PayloadKind {
    fn to_byte(self) -> u8 {
        match self {
            PayloadKind::Audio => 0,
            PayloadKind::Video => 1,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(PayloadKind::Audio),
            1 => Some(PayloadKind::Video),
            _ => None,
        }
    }
}

/// The RTP framing of a video payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VideoCodec {
    #[default]
    Vp8,
    H264,
}

impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VideoCodec::Vp8 => "VP8",
            VideoCodec::H264 => "H264",
        })
    }
}

/// What one packet of a synthetic H264 frame carries (RFC 6184, packetization-mode 1). A
/// keyframe is the parameter sets, then its IDR slice; a delta frame is one non-IDR slice. A
/// slice that fits one packet goes as a single NAL unit, a larger one as FU-A fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H264Packet {
    /// A STAP-A of SPS, PPS and an SEI unit with the test pattern: opens a keyframe.
    ParameterSets,
    /// A single NAL unit packet holding a whole slice.
    Slice { idr: bool },
    /// An FU-A fragment of a slice; `start` and `end` are its S and E bits.
    Fragment { idr: bool, start: bool, end: bool },
}

impl H264Packet {
    /// The packet opens a frame. An IDR slice never does: parameter sets go before it.
    pub fn starts_frame(self) -> bool {
        match self {
            H264Packet::ParameterSets => true,
            H264Packet::Slice { idr } => !idr,
            H264Packet::Fragment { idr, start, .. } => !idr && start,
        }
    }

    /// The packet belongs to a keyframe.
    pub fn keyframe(self) -> bool {
        match self {
            H264Packet::ParameterSets => true,
            H264Packet::Slice { idr } | H264Packet::Fragment { idr, .. } => idr,
        }
    }

    /// The packet opens a slice (a single NAL unit or an FU-A with S).
    pub fn starts_slice(self) -> bool {
        match self {
            H264Packet::ParameterSets => false,
            H264Packet::Slice { .. } => true,
            H264Packet::Fragment { start, .. } => start,
        }
    }

    /// The packet ends its frame (a slice's last bytes; the parameter sets never do).
    pub fn ends_frame(self) -> bool {
        match self {
            H264Packet::ParameterSets => false,
            H264Packet::Slice { .. } => true,
            H264Packet::Fragment { end, .. } => end,
        }
    }

    /// Bytes of framing [`encode_h264_payload`] writes before the test pattern.
    pub fn prefix_len(self) -> usize {
        match self {
            H264Packet::ParameterSets => 1 + 2 + FAKE_SPS.len() + 2 + FAKE_PPS.len() + 2 + 1,
            H264Packet::Slice { .. } => 1,
            H264Packet::Fragment { .. } => 2,
        }
    }
}

/// What the test-pattern header says about its packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternHeader {
    pub kind: PayloadKind,
    /// Simulcast layer index (0 = q or the only layer, 1 = h, 2 = f).
    pub layer: u8,
    /// The packet belongs to a keyframe.
    pub keyframe: bool,
    /// The packet is the last of its frame (carries the RTP marker for video).
    pub end_of_frame: bool,
    /// Index of the packet within its frame (always 0 for audio).
    pub index: u8,
    /// Packet counter of the source stream (kind, layer), from 0, without gaps.
    pub counter: u64,
    /// Frame number of the source stream (for audio: the packet counter).
    pub frame: u32,
    /// RTP timestamp the source put on this packet (before any rewriting by the SFU).
    pub rtp_time: u32,
    /// Send time in microseconds since the Unix epoch.
    pub sent_us: u64,
    /// Body bytes that follow the header.
    pub body_len: u32,
}

impl PatternHeader {
    /// An audio packet's header: one packet per frame, always the end of its frame.
    pub fn audio(counter: u64, frame: u32, rtp_time: u32, sent_us: u64, body_len: u32) -> Self {
        Self {
            kind: PayloadKind::Audio,
            layer: 0,
            keyframe: false,
            end_of_frame: true,
            index: 0,
            counter,
            frame,
            rtp_time,
            sent_us,
            body_len,
        }
    }

    /// The payload this header describes: the header followed by its body.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(HEADER_LEN + self.body_len as usize);
        encode_pattern(self, &mut payload);
        payload
    }
}

/// Why a payload did not decode as an intact test pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("payload shorter than the headers")]
    Truncated,
    #[error("VP8 payload descriptor is malformed")]
    BadVp8Descriptor,
    #[error("H264 packetization is malformed or not the synthetic stream's")]
    BadH264Framing,
    #[error("test-pattern magic missing")]
    BadMagic,
    #[error("test-pattern header checksum mismatch")]
    BadChecksum,
    #[error("unknown payload kind")]
    BadKind,
    #[error("payload length {actual} does not match header body length {expected}")]
    BadLength { expected: usize, actual: usize },
    #[error("body byte {offset} differs from the pattern")]
    BadBody { offset: usize },
    #[error("codec framing disagrees with the test-pattern header")]
    FramingMismatch,
}

/// What the codec framing of a video packet says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoFraming {
    pub codec: VideoCodec,
    /// The packet opens a frame (VP8: S=1 and partition index 0).
    pub start_of_frame: bool,
    /// VP8: the packet opens a keyframe (only meaningful with `start_of_frame`). H264: the
    /// packet belongs to a keyframe (parameter sets or an IDR slice).
    pub keyframe: bool,
    /// Offset of the test pattern (after VP8 descriptor and payload header, or H264 framing).
    pub data_offset: usize,
    /// How H264 packetized this packet; `None` for VP8.
    pub h264: Option<H264Packet>,
}

/// The framing type's name from before H264 framing existed.
pub type Vp8Framing = VideoFraming;

/// A payload that decoded as an intact test pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub header: PatternHeader,
    /// Codec framing for video payloads, VP8 or H264 (the name predates H264).
    pub vp8: Option<VideoFraming>,
}

impl Decoded {
    /// True when this packet opens a keyframe (decoder can start here).
    pub fn starts_keyframe(&self) -> bool {
        self.vp8.is_some_and(|v| v.start_of_frame && v.keyframe)
    }

    /// Codec framing for video payloads.
    pub fn framing(&self) -> Option<&VideoFraming> {
        self.vp8.as_ref()
    }

    /// The codec whose framing a video payload used.
    pub fn codec(&self) -> Option<VideoCodec> {
        self.vp8.map(|v| v.codec)
    }
}

impl fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PayloadKind::Audio => "audio",
            PayloadKind::Video => "video",
        })
    }
}

/// Appends the test-pattern header and its body to `out`.
pub fn encode_pattern(header: &PatternHeader, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(header.kind.to_byte());
    out.push(header.layer);
    let mut flags = 0;
    if header.keyframe {
        flags |= FLAG_KEYFRAME;
    }
    if header.end_of_frame {
        flags |= FLAG_END_OF_FRAME;
    }
    out.push(flags);
    out.push(header.index);
    out.extend_from_slice(&header.counter.to_be_bytes());
    out.extend_from_slice(&header.frame.to_be_bytes());
    out.extend_from_slice(&header.rtp_time.to_be_bytes());
    out.extend_from_slice(&header.sent_us.to_be_bytes());
    out.extend_from_slice(&header.body_len.to_be_bytes());
    let checksum = header_checksum(&out[start..]);
    out.extend_from_slice(&checksum.to_be_bytes());
    debug_assert_eq!(out.len() - start, HEADER_LEN);
    let body_start = out.len();
    out.resize(body_start + header.body_len as usize, 0);
    fill_body(header, &mut out[body_start..]);
}

/// Decodes a test-pattern header and checks its body. `bytes` must hold exactly one pattern.
pub fn decode_pattern(bytes: &[u8]) -> Result<PatternHeader, PatternError> {
    let (header, body) = split_pattern(bytes)?;
    let mut expected = vec![0; body.len()];
    fill_body(&header, &mut expected);
    if let Some(offset) = body.iter().zip(&expected).position(|(a, b)| a != b) {
        return Err(PatternError::BadBody { offset });
    }
    Ok(header)
}

/// Reads the test-pattern header of an RTP payload (audio, or VP8/H264-framed video) without
/// checking the body: codec framing, magic, header checksum and length only. The light receive
/// path of the load generator; `None`: not an intact pattern as far as the header tells.
pub fn decode_header(payload: &[u8]) -> Option<PatternHeader> {
    let offset = if payload.starts_with(&MAGIC) {
        0
    } else {
        let framing = match sniff_video_codec(*payload.first()?) {
            VideoCodec::Vp8 => parse_vp8(payload).ok()?,
            VideoCodec::H264 => parse_h264(payload).ok()?,
        };
        framing.data_offset
    };
    split_pattern(payload.get(offset..)?)
        .ok()
        .map(|(header, _)| header)
}

/// The header of one pattern, checked (magic, checksum, kind, length), and its body unchecked.
fn split_pattern(bytes: &[u8]) -> Result<(PatternHeader, &[u8]), PatternError> {
    let Some((head, body)) = bytes.split_at_checked(HEADER_LEN) else {
        return Err(PatternError::Truncated);
    };
    if head[0..4] != MAGIC {
        return Err(PatternError::BadMagic);
    }
    if header_checksum(&head[..36]) != be_u32(&head[36..40]) {
        return Err(PatternError::BadChecksum);
    }
    let kind = PayloadKind::from_byte(head[4]).ok_or(PatternError::BadKind)?;
    let header = PatternHeader {
        kind,
        layer: head[5],
        keyframe: head[6] & FLAG_KEYFRAME != 0,
        end_of_frame: head[6] & FLAG_END_OF_FRAME != 0,
        index: head[7],
        counter: be_u64(&head[8..16]),
        frame: be_u32(&head[16..20]),
        rtp_time: be_u32(&head[20..24]),
        sent_us: be_u64(&head[24..32]),
        body_len: be_u32(&head[32..36]),
    };
    if body.len() != header.body_len as usize {
        return Err(PatternError::BadLength {
            expected: header.body_len as usize,
            actual: body.len(),
        });
    }
    Ok((header, body))
}

/// Decodes a whole RTP payload of the given kind: codec framing for video (VP8 or H264, told
/// apart by [`sniff_video_codec`]), then the pattern. Checks that the framing agrees with the
/// pattern (frame start on index 0, keyframe; for H264 also slice start and frame end).
pub fn decode_payload(kind: PayloadKind, payload: &[u8]) -> Result<Decoded, PatternError> {
    match kind {
        PayloadKind::Audio => {
            let header = decode_pattern(payload)?;
            if header.kind != PayloadKind::Audio {
                return Err(PatternError::FramingMismatch);
            }
            Ok(Decoded { header, vp8: None })
        }
        PayloadKind::Video => {
            let codec = payload
                .first()
                .map_or(VideoCodec::Vp8, |b| sniff_video_codec(*b));
            decode_video_payload(codec, payload)
        }
    }
}

/// Decodes a video payload whose codec the caller knows (e.g. from the payload type).
pub fn decode_video_payload(codec: VideoCodec, payload: &[u8]) -> Result<Decoded, PatternError> {
    let framing = match codec {
        VideoCodec::Vp8 => parse_vp8(payload)?,
        VideoCodec::H264 => parse_h264(payload)?,
    };
    let header = decode_pattern(&payload[framing.data_offset..])?;
    let consistent = header.kind == PayloadKind::Video
        && framing.start_of_frame == (header.index == 0)
        && match framing.h264 {
            // VP8 says keyframe or not only on a frame's first packet.
            None => !framing.start_of_frame || framing.keyframe == header.keyframe,
            // The slice follows the parameter sets in a keyframe, opens a delta frame.
            Some(h264) => {
                framing.keyframe == header.keyframe
                    && h264.starts_slice() == (header.index == u8::from(header.keyframe))
                    && h264.ends_frame() == header.end_of_frame
            }
        };
    if !consistent {
        return Err(PatternError::FramingMismatch);
    }
    Ok(Decoded {
        header,
        vp8: Some(framing),
    })
}

/// Which framing a video payload uses, from its first byte. Read as an H264 NAL header, the
/// VP8 descriptors we (and SFUs rewriting picture ids) write have the forbidden bit set (X=1)
/// or NAL type 0 or 16 (X=0, partition index 0), none of which opens an H264 packet. VP8
/// packets of partitions 1-7 would read as H264; no synthetic source sends them.
pub fn sniff_video_codec(first: u8) -> VideoCodec {
    let forbidden = first & 0x80 != 0;
    if forbidden || matches!(first & 0x1f, 0 | 16) {
        VideoCodec::Vp8
    } else {
        VideoCodec::H264
    }
}

/// Writes the VP8 payload descriptor (and, on a frame's first packet, the VP8 payload header)
/// for one packet of a frame. `frame_len` is the size of the whole frame, `dimensions` the
/// picture size announced by keyframes.
pub fn write_vp8_prefix(
    out: &mut Vec<u8>,
    start_of_frame: bool,
    keyframe: bool,
    frame_len: usize,
    dimensions: (u16, u16),
) {
    // Payload descriptor: X=0, N=0, S, PID=0.
    out.push(if start_of_frame { 0x10 } else { 0x00 });
    if !start_of_frame {
        return;
    }
    // Payload header (RFC 6386 9.1): size0 (3 bits) | show_frame | version (3 bits) | P.
    // P = 0 marks a keyframe. The first partition size is informational only here.
    let size = (frame_len.min(0x7_ffff)) as u32;
    let inter = u8::from(!keyframe);
    let show_frame = 0x10;
    out.push(((size & 0x7) << 5) as u8 | show_frame | inter);
    out.push((size >> 3) as u8);
    out.push((size >> 11) as u8);
    if keyframe {
        out.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        out.extend_from_slice(&(dimensions.0 & 0x3fff).to_le_bytes());
        out.extend_from_slice(&(dimensions.1 & 0x3fff).to_le_bytes());
    }
}

/// Parses the VP8 payload descriptor and, on a frame start, the payload header (RFC 7741).
pub fn parse_vp8(p: &[u8]) -> Result<Vp8Framing, PatternError> {
    let first = *p.first().ok_or(PatternError::Truncated)?;
    let mut i = 1;
    if first & 0x80 != 0 {
        let x = *p.get(i).ok_or(PatternError::BadVp8Descriptor)?;
        i += 1;
        if x & 0x80 != 0 {
            let pid = *p.get(i).ok_or(PatternError::BadVp8Descriptor)?;
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    let start_of_frame = first & 0x10 != 0 && first & 0x07 == 0;
    if !start_of_frame {
        if i > p.len() {
            return Err(PatternError::BadVp8Descriptor);
        }
        return Ok(VideoFraming {
            codec: VideoCodec::Vp8,
            start_of_frame,
            keyframe: false,
            data_offset: i,
            h264: None,
        });
    }
    let header = *p.get(i).ok_or(PatternError::Truncated)?;
    let keyframe = header & 0x01 == 0;
    let header_len = if keyframe {
        VP8_KEY_HEADER_LEN
    } else {
        VP8_DELTA_HEADER_LEN
    };
    if p.len() < i + header_len {
        return Err(PatternError::Truncated);
    }
    if keyframe && p[i + 3..i + 6] != [0x9d, 0x01, 0x2a] {
        return Err(PatternError::BadVp8Descriptor);
    }
    Ok(VideoFraming {
        codec: VideoCodec::Vp8,
        start_of_frame,
        keyframe,
        data_offset: i + header_len,
        h264: None,
    })
}

/// Appends one H264 RTP payload: the framing of `packet`, then the test pattern of `header`.
/// The body is not emulation-prevented (it may hold start-code-like bytes): an SFU never looks,
/// a decoder would choke. A pattern too long for a STAP-A unit (64 KiB) gets an unparseable
/// size.
pub fn encode_h264_payload(packet: H264Packet, header: &PatternHeader, out: &mut Vec<u8>) {
    let (nri, slice_type) = if packet.keyframe() {
        (NRI_KEY, nal::IDR)
    } else {
        (NRI_DELTA, nal::SLICE)
    };
    match packet {
        H264Packet::ParameterSets => {
            out.push(NRI_KEY | nal::STAP_A);
            for unit in [&FAKE_SPS[..], &FAKE_PPS[..]] {
                out.extend_from_slice(&(unit.len() as u16).to_be_bytes());
                out.extend_from_slice(unit);
            }
            let sei_len = 1 + HEADER_LEN + header.body_len as usize;
            out.extend_from_slice(&u16::try_from(sei_len).unwrap_or(u16::MAX).to_be_bytes());
            out.push(SEI_HEADER);
        }
        H264Packet::Slice { .. } => out.push(nri | slice_type),
        H264Packet::Fragment { start, end, .. } => {
            out.push(nri | nal::FU_A);
            out.push(u8::from(start) << 7 | u8::from(end) << 6 | slice_type);
        }
    }
    encode_pattern(header, out);
}

/// Parses the H264 framing the synthetic source writes (see [`H264Packet`]). Strict: NRI values,
/// the parameter sets and the STAP-A layout must be exactly ours, so any damage to the framing
/// shows as an error rather than a misread packet.
pub fn parse_h264(p: &[u8]) -> Result<VideoFraming, PatternError> {
    let bad = PatternError::BadH264Framing;
    let first = *p.first().ok_or(PatternError::Truncated)?;
    let slice = |nri: u8, nal_type: u8| match (nri, nal_type) {
        (NRI_KEY, nal::IDR) => Ok(true),
        (NRI_DELTA, nal::SLICE) => Ok(false),
        _ => Err(bad),
    };
    let (forbidden, nri, nal_type) = (first & 0x80, first & 0x60, first & 0x1f);
    if forbidden != 0 {
        return Err(bad);
    }
    let (packet, data_offset) = match nal_type {
        nal::STAP_A => {
            if nri != NRI_KEY {
                return Err(bad);
            }
            let mut rest = &p[1..];
            for unit in [&FAKE_SPS[..], &FAKE_PPS[..]] {
                let (size, tail) = rest.split_at_checked(2).ok_or(PatternError::Truncated)?;
                let (data, tail) = tail
                    .split_at_checked(unit.len())
                    .ok_or(PatternError::Truncated)?;
                if be_u16(size) != unit.len() || data != unit {
                    return Err(bad);
                }
                rest = tail;
            }
            let (size, tail) = rest.split_at_checked(2).ok_or(PatternError::Truncated)?;
            if be_u16(size) != tail.len() || tail.first() != Some(&SEI_HEADER) {
                return Err(bad);
            }
            (H264Packet::ParameterSets, p.len() - tail.len() + 1)
        }
        nal::FU_A => {
            let fu = *p.get(1).ok_or(PatternError::Truncated)?;
            let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
            if fu & 0x20 != 0 || (start && end) {
                return Err(bad); // R bit set, or a "fragment" that is the whole unit
            }
            let idr = slice(nri, fu & 0x1f)?;
            (H264Packet::Fragment { idr, start, end }, 2)
        }
        _ => (
            H264Packet::Slice {
                idr: slice(nri, nal_type)?,
            },
            1,
        ),
    };
    Ok(VideoFraming {
        codec: VideoCodec::H264,
        start_of_frame: packet.starts_frame(),
        keyframe: packet.keyframe(),
        data_offset,
        h264: Some(packet),
    })
}

/// The body is a xorshift stream seeded by the packet's identity, so any flipped, dropped or
/// shifted byte shows, and two different packets never carry the same body.
fn fill_body(header: &PatternHeader, out: &mut [u8]) {
    let mut state = header.counter
        ^ (u64::from(header.kind.to_byte()) << 56)
        ^ (u64::from(header.layer) << 48)
        ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in out.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// The header checksum: FNV-1a 64 (the workspace's one, from `sfu-proto`) xor-folded to 32
/// bits, as the FNV authors suggest for narrower hashes. Stable across builds and hosts.
fn header_checksum(bytes: &[u8]) -> u32 {
    let h = sfu_proto::ids::fnv1a(bytes);
    (h >> 32) as u32 ^ h as u32
}

fn be_u16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: PayloadKind, index: u8, keyframe: bool, body_len: u32) -> PatternHeader {
        PatternHeader {
            kind,
            layer: 2,
            keyframe,
            end_of_frame: index == 3,
            index,
            counter: 123_456_789,
            frame: 4242,
            rtp_time: 0xdead_beef,
            sent_us: 1_700_000_000_000_000,
            body_len,
        }
    }

    #[test]
    fn the_header_checksum_is_fnv1a_64_folded() {
        // Published FNV-1a 64 test vectors, folded high ^ low.
        assert_eq!(header_checksum(b""), 0xcbf2_9ce4 ^ 0x8422_2325);
        assert_eq!(header_checksum(b"a"), 0xaf63_dc4c ^ 0x8601_ec8c);
        assert_eq!(header_checksum(b"foobar"), 0x8594_4171 ^ 0xf739_67e8);
    }

    #[test]
    fn pattern_round_trips() {
        for body_len in [0, 1, 7, 8, 9, 1000] {
            let h = header(PayloadKind::Audio, 0, false, body_len);
            let mut buf = Vec::new();
            encode_pattern(&h, &mut buf);
            assert_eq!(buf.len(), HEADER_LEN + body_len as usize);
            assert_eq!(decode_pattern(&buf), Ok(h));
        }
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let h = header(PayloadKind::Audio, 0, false, 64);
        let mut buf = Vec::new();
        encode_pattern(&h, &mut buf);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x04;
            assert!(decode_pattern(&bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn truncation_and_extension_are_detected() {
        let h = header(PayloadKind::Audio, 0, false, 100);
        let mut buf = Vec::new();
        encode_pattern(&h, &mut buf);
        assert!(matches!(
            decode_pattern(&buf[..buf.len() - 1]),
            Err(PatternError::BadLength { .. })
        ));
        buf.push(0);
        assert!(matches!(
            decode_pattern(&buf),
            Err(PatternError::BadLength { .. })
        ));
        assert_eq!(decode_pattern(&buf[..10]), Err(PatternError::Truncated));
    }

    #[test]
    fn different_counters_give_different_bodies() {
        let a = header(PayloadKind::Audio, 0, false, 32);
        let b = PatternHeader { counter: 1, ..a };
        let (mut x, mut y) = (Vec::new(), Vec::new());
        encode_pattern(&a, &mut x);
        encode_pattern(&b, &mut y);
        assert_ne!(x[HEADER_LEN..], y[HEADER_LEN..]);
    }

    #[test]
    fn vp8_keyframe_layout() {
        let mut buf = Vec::new();
        write_vp8_prefix(&mut buf, true, true, 5000, (1280, 720));
        assert_eq!(buf.len(), VP8_DESCRIPTOR_LEN + VP8_KEY_HEADER_LEN);
        assert_eq!(buf[0], 0x10, "S=1, PID=0, no extensions");
        assert_eq!(buf[1] & 0x01, 0, "P bit clear on a keyframe");
        assert_eq!(&buf[4..7], &[0x9d, 0x01, 0x2a], "keyframe start code");
        assert_eq!(u16::from_le_bytes([buf[7], buf[8]]), 1280);
        assert_eq!(u16::from_le_bytes([buf[9], buf[10]]), 720);
        let f = parse_vp8(&buf).expect("parses");
        assert!(f.start_of_frame && f.keyframe);
        assert_eq!(f.data_offset, buf.len());
    }

    #[test]
    fn vp8_delta_and_continuation_layout() {
        let mut delta = Vec::new();
        write_vp8_prefix(&mut delta, true, false, 5000, (1280, 720));
        assert_eq!(delta.len(), VP8_DESCRIPTOR_LEN + VP8_DELTA_HEADER_LEN);
        assert_eq!(delta[0], 0x10);
        assert_eq!(delta[1] & 0x01, 1, "P bit set on a delta frame");
        let f = parse_vp8(&delta).expect("parses");
        assert!(f.start_of_frame && !f.keyframe);

        let mut cont = Vec::new();
        write_vp8_prefix(&mut cont, false, true, 5000, (1280, 720));
        assert_eq!(cont, vec![0x00]);
        let f = parse_vp8(&cont).expect("parses");
        assert!(!f.start_of_frame);
        assert_eq!(f.data_offset, 1);
    }

    #[test]
    fn vp8_payload_round_trips_and_checks_framing() {
        let h = header(PayloadKind::Video, 0, true, 500);
        let mut buf = Vec::new();
        write_vp8_prefix(&mut buf, true, true, 2000, (640, 360));
        encode_pattern(&h, &mut buf);
        let d = decode_payload(PayloadKind::Video, &buf).expect("intact");
        assert_eq!(d.header, h);
        assert!(d.starts_keyframe());

        // A frame start whose pattern says it is not the first packet is inconsistent.
        let h2 = PatternHeader { index: 1, ..h };
        let mut bad = Vec::new();
        write_vp8_prefix(&mut bad, true, true, 2000, (640, 360));
        encode_pattern(&h2, &mut bad);
        assert_eq!(
            decode_payload(PayloadKind::Video, &bad),
            Err(PatternError::FramingMismatch)
        );
    }

    #[test]
    fn vp8_descriptor_with_picture_id_is_skipped() {
        // X=1, I=1 with a 15-bit picture id, as an SFU that rewrites picture ids would send.
        let h = header(PayloadKind::Video, 1, false, 10);
        let mut buf = vec![0x80, 0x80, 0x80 | 0x12, 0x34];
        encode_pattern(&h, &mut buf);
        let d = decode_payload(PayloadKind::Video, &buf).expect("intact");
        assert_eq!(d.vp8.map(|v| v.data_offset), Some(4));
        assert!(!d.starts_keyframe());
    }

    fn h264(packet: H264Packet, h: &PatternHeader) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_h264_payload(packet, h, &mut buf);
        buf
    }

    /// The (type, bytes) of each unit of a STAP-A, after its NAL header.
    fn stap_a_units(p: &[u8]) -> Vec<(u8, &[u8])> {
        let mut units = Vec::new();
        let mut rest = &p[1..];
        while let Some((size, tail)) = rest.split_at_checked(2) {
            let (unit, tail) = tail.split_at(be_u16(size));
            units.push((unit[0] & 0x1f, unit));
            rest = tail;
        }
        assert!(rest.is_empty(), "trailing bytes after the last unit");
        units
    }

    #[test]
    fn h264_parameter_sets_layout() {
        let h = PatternHeader {
            end_of_frame: false,
            ..header(PayloadKind::Video, 0, true, 300)
        };
        let buf = h264(H264Packet::ParameterSets, &h);
        assert_eq!(buf[0], 0x78, "F=0, NRI=3, type 24 (STAP-A)");
        assert_eq!(
            buf.len(),
            H264Packet::ParameterSets.prefix_len() + HEADER_LEN + 300
        );
        let units = stap_a_units(&buf);
        let types: Vec<u8> = units.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, [nal::SPS, nal::PPS, nal::SEI]);
        assert_eq!(units[0].1, FAKE_SPS);
        assert_eq!(units[1].1, FAKE_PPS);
        assert_eq!(decode_pattern(&units[2].1[1..]), Ok(h));

        let d = decode_payload(PayloadKind::Video, &buf).expect("intact");
        assert_eq!(d.header, h);
        assert!(d.starts_keyframe());
        assert_eq!(d.codec(), Some(VideoCodec::H264));
        assert_eq!(
            d.framing().and_then(|f| f.h264),
            Some(H264Packet::ParameterSets)
        );
    }

    #[test]
    fn h264_slices_and_fragments_round_trip() {
        let cases = [
            // (packet, first byte, FU header, keyframe, index, end of frame)
            (H264Packet::Slice { idr: false }, 0x41, None, false, 0, true),
            (H264Packet::Slice { idr: true }, 0x65, None, true, 1, true),
            (
                H264Packet::Fragment {
                    idr: true,
                    start: true,
                    end: false,
                },
                0x7c,
                Some(0x85),
                true,
                1,
                false,
            ),
            (
                H264Packet::Fragment {
                    idr: true,
                    start: false,
                    end: true,
                },
                0x7c,
                Some(0x45),
                true,
                4,
                true,
            ),
            (
                H264Packet::Fragment {
                    idr: false,
                    start: true,
                    end: false,
                },
                0x5c,
                Some(0x81),
                false,
                0,
                false,
            ),
            (
                H264Packet::Fragment {
                    idr: false,
                    start: false,
                    end: false,
                },
                0x5c,
                Some(0x01),
                false,
                2,
                false,
            ),
        ];
        for (packet, nal_header, fu_header, keyframe, index, end) in cases {
            let h = PatternHeader {
                keyframe,
                index,
                end_of_frame: end,
                ..header(PayloadKind::Video, 0, keyframe, 50)
            };
            let buf = h264(packet, &h);
            assert_eq!(buf[0], nal_header, "{packet:?}");
            if let Some(fu) = fu_header {
                assert_eq!(buf[1], fu, "{packet:?}");
            }
            assert_eq!(buf.len(), packet.prefix_len() + HEADER_LEN + 50);
            let d = decode_payload(PayloadKind::Video, &buf).expect("intact");
            assert_eq!(d.header, h);
            assert_eq!(d.framing().and_then(|f| f.h264), Some(packet));
            assert!(
                !d.starts_keyframe(),
                "{packet:?}: only parameter sets open a keyframe"
            );
            assert_eq!(decode_video_payload(VideoCodec::H264, &buf), Ok(d));
        }
    }

    #[test]
    fn h264_framing_must_agree_with_the_pattern() {
        let h = header(PayloadKind::Video, 0, false, 20);
        // A delta frame's first fragment whose pattern says it is not the first packet.
        let start = H264Packet::Fragment {
            idr: false,
            start: true,
            end: false,
        };
        let bad = h264(start, &PatternHeader { index: 1, ..h });
        assert_eq!(
            decode_payload(PayloadKind::Video, &bad),
            Err(PatternError::FramingMismatch)
        );
        // An IDR slice in a frame the pattern calls a delta frame.
        let idr = H264Packet::Slice { idr: true };
        let bad = h264(idr, &PatternHeader { index: 1, ..h });
        assert_eq!(
            decode_payload(PayloadKind::Video, &bad),
            Err(PatternError::FramingMismatch)
        );
        // The E bit on a packet the pattern says is not the frame's last.
        let end = H264Packet::Fragment {
            idr: false,
            start: false,
            end: true,
        };
        let bad = h264(
            end,
            &PatternHeader {
                index: 2,
                end_of_frame: false,
                ..h
            },
        );
        assert_eq!(
            decode_payload(PayloadKind::Video, &bad),
            Err(PatternError::FramingMismatch)
        );
    }

    #[test]
    fn every_single_byte_flip_of_an_h264_payload_is_detected() {
        let key = PatternHeader {
            end_of_frame: false,
            ..header(PayloadKind::Video, 0, true, 16)
        };
        let fragment = H264Packet::Fragment {
            idr: true,
            start: true,
            end: false,
        };
        let slice = H264Packet::Slice { idr: true };
        for (packet, h) in [
            (H264Packet::ParameterSets, key),
            (fragment, PatternHeader { index: 1, ..key }),
            (
                slice,
                PatternHeader {
                    index: 1,
                    end_of_frame: true,
                    ..key
                },
            ),
        ] {
            let buf = h264(packet, &h);
            assert!(decode_payload(PayloadKind::Video, &buf).is_ok());
            for i in 0..buf.len() {
                for bit in 0..8 {
                    let mut bad = buf.clone();
                    bad[i] ^= 1 << bit;
                    assert!(
                        decode_payload(PayloadKind::Video, &bad).is_err(),
                        "{packet:?}: flip of bit {bit} at {i} went unnoticed"
                    );
                }
            }
        }
    }

    #[test]
    fn sniffing_tells_vp8_descriptors_from_h264_nal_headers() {
        // Our VP8 descriptors, and one with extensions as a rewriting SFU would send.
        for first in [0x10, 0x00, 0x80, 0x90] {
            assert_eq!(sniff_video_codec(first), VideoCodec::Vp8, "{first:#04x}");
        }
        // STAP-A, FU-A (IDR and non-IDR), single NAL unit slices.
        for first in [0x78, 0x7c, 0x5c, 0x65, 0x41] {
            assert_eq!(sniff_video_codec(first), VideoCodec::H264, "{first:#04x}");
        }
    }

    #[test]
    fn decoding_never_panics_on_garbage() {
        let mut state = 1_u32;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (state >> 16) as u8
                })
                .collect();
            let _ = decode_payload(PayloadKind::Video, &bytes);
            let _ = decode_payload(PayloadKind::Audio, &bytes);
            let _ = decode_video_payload(VideoCodec::H264, &bytes);
            // Garbage behind a valid-looking STAP-A or FU-A header.
            for first in [0x78, 0x7c] {
                let mut framed = bytes.clone();
                framed.insert(0, first);
                let _ = decode_payload(PayloadKind::Video, &framed);
            }
        }
    }
}
