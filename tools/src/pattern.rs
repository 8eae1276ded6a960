//! The test-pattern payload format: every synthetic RTP payload carries a self-checking header
//! and a body derived from its packet counter, so a receiver can tell whether it arrived intact
//! and which source packet it was. Video payloads are framed like real VP8 (RFC 7741) so an SFU's
//! keyframe detection sees real keyframes.

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

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(PayloadKind::Audio),
            1 => Some(PayloadKind::Video),
            _ => None,
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

/// Why a payload did not decode as an intact test pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("payload shorter than the headers")]
    Truncated,
    #[error("VP8 payload descriptor is malformed")]
    BadVp8Descriptor,
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
    #[error("VP8 framing disagrees with the test-pattern header")]
    FramingMismatch,
}

/// What the VP8 payload descriptor and payload header of a packet say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Framing {
    /// S=1 and partition index 0: the packet opens a frame.
    pub start_of_frame: bool,
    /// The packet opens a keyframe (only meaningful with `start_of_frame`).
    pub keyframe: bool,
    /// Offset of the VP8 frame data (after descriptor and, on frame start, payload header).
    pub data_offset: usize,
}

/// A payload that decoded as an intact test pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub header: PatternHeader,
    /// VP8 framing for video payloads.
    pub vp8: Option<Vp8Framing>,
}

impl Decoded {
    /// True when this packet opens a keyframe (decoder can start here).
    pub fn starts_keyframe(&self) -> bool {
        self.vp8.is_some_and(|v| v.start_of_frame && v.keyframe)
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
    let checksum = fnv1a(&out[start..]);
    out.extend_from_slice(&checksum.to_be_bytes());
    debug_assert_eq!(out.len() - start, HEADER_LEN);
    let body_start = out.len();
    out.resize(body_start + header.body_len as usize, 0);
    fill_body(header, &mut out[body_start..]);
}

/// Decodes a test-pattern header and checks its body. `bytes` must hold exactly one pattern.
pub fn decode_pattern(bytes: &[u8]) -> Result<PatternHeader, PatternError> {
    let Some((head, body)) = bytes.split_at_checked(HEADER_LEN) else {
        return Err(PatternError::Truncated);
    };
    if head[0..4] != MAGIC {
        return Err(PatternError::BadMagic);
    }
    if fnv1a(&head[..36]) != be_u32(&head[36..40]) {
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
    let mut expected = vec![0; body.len()];
    fill_body(&header, &mut expected);
    if let Some(offset) = body.iter().zip(&expected).position(|(a, b)| a != b) {
        return Err(PatternError::BadBody { offset });
    }
    Ok(header)
}

/// Decodes a whole RTP payload of the given kind: VP8 framing for video, then the pattern.
/// Checks that the VP8 framing agrees with the pattern (frame start on index 0, keyframe bit).
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
            let vp8 = parse_vp8(payload)?;
            let header = decode_pattern(&payload[vp8.data_offset..])?;
            let consistent = header.kind == PayloadKind::Video
                && vp8.start_of_frame == (header.index == 0)
                && (!vp8.start_of_frame || vp8.keyframe == header.keyframe);
            if !consistent {
                return Err(PatternError::FramingMismatch);
            }
            Ok(Decoded {
                header,
                vp8: Some(vp8),
            })
        }
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
        return Ok(Vp8Framing {
            start_of_frame,
            keyframe: false,
            data_offset: i,
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
    Ok(Vp8Framing {
        start_of_frame,
        keyframe,
        data_offset: i + header_len,
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

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
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
        }
    }
}
