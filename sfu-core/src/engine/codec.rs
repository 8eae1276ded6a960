//! Codec-level facts the forwarder needs from an RTP payload without decoding it (does this
//! packet start a keyframe? which VP8 picture is it?), and the mapping between str0m's codec
//! types and the protocol's. Parsers are total: any byte string gives an answer, never a panic.

use str0m::format::{Codec, FormatParams};
use str0m::rtp::{Vp8Descriptor, Vp8Patch, Vp8PatchError};

/// The protocol's name for a codec the node forwards; `None` for the others (comfort noise,
/// DTMF, ...), which are not forwarded.
pub fn to_proto(codec: Codec) -> Option<sfu_proto::Codec> {
    use sfu_proto::Codec as P;
    Some(match codec {
        Codec::Opus => P::Opus,
        Codec::PCMU => P::Pcmu,
        Codec::PCMA => P::Pcma,
        Codec::G722 => P::G722,
        Codec::H264 => P::H264,
        Codec::H265 => P::H265,
        Codec::Vp8 => P::Vp8,
        Codec::Vp9 => P::Vp9,
        Codec::Av1 => P::Av1,
        _ => return None,
    })
}

pub fn from_proto(codec: sfu_proto::Codec) -> Codec {
    use sfu_proto::Codec as P;
    match codec {
        P::Opus => Codec::Opus,
        P::Pcmu => Codec::PCMU,
        P::Pcma => Codec::PCMA,
        P::G722 => Codec::G722,
        P::H264 => Codec::H264,
        P::H265 => Codec::H265,
        P::Vp8 => Codec::Vp8,
        P::Vp9 => Codec::Vp9,
        P::Av1 => Codec::Av1,
    }
}

pub fn format_to_proto(f: &FormatParams) -> sfu_proto::FormatParams {
    sfu_proto::FormatParams {
        min_p_time: f.min_p_time,
        stereo: f.stereo,
        sprop_stereo: f.sprop_stereo,
        use_inband_fec: f.use_inband_fec,
        use_dtx: f.use_dtx,
        level_asymmetry_allowed: f.level_asymmetry_allowed,
        packetization_mode: f.packetization_mode,
        profile_level_id: f.profile_level_id,
        profile_id: f.profile_id,
        profile: f.profile,
        level_idx: f.level_idx,
        tier: f.tier,
    }
}

pub fn format_from_proto(f: &sfu_proto::FormatParams) -> FormatParams {
    FormatParams {
        min_p_time: f.min_p_time,
        stereo: f.stereo,
        sprop_stereo: f.sprop_stereo,
        use_inband_fec: f.use_inband_fec,
        use_dtx: f.use_dtx,
        level_asymmetry_allowed: f.level_asymmetry_allowed,
        packetization_mode: f.packetization_mode,
        profile_level_id: f.profile_level_id,
        profile_id: f.profile_id,
        profile: f.profile,
        level_idx: f.level_idx,
        tier: f.tier,
        // H265/H266 profile-tier-level and the audio-only rarities are not forwarded
        // decisions: a subscriber's payload type is matched on the fields above.
        ..FormatParams::default()
    }
}

/// True when `payload` is the first packet of a keyframe (a point where a decoder can start).
///
/// `frame_start` says whether this packet's RTP timestamp differs from the previous packet of
/// the same stream: H264 sends SPS/PPS before the IDR slice, so an IDR fragment is only
/// a keyframe start when nothing of its frame came before it.
pub fn starts_keyframe(codec: Codec, payload: &[u8], frame_start: bool) -> bool {
    match codec {
        Codec::Vp8 => vp8_starts_keyframe(payload),
        Codec::Vp9 => vp9_starts_keyframe(payload),
        Codec::H264 => h264_starts_keyframe(payload, frame_start),
        Codec::Av1 => av1_starts_keyframe(payload),
        _ => false,
    }
}

/// The fields of a VP8 payload descriptor (RFC 7741 §4.2) that name a picture: each simulcast
/// layer (and each publisher) numbers its pictures on its own, and a receiver that sees them
/// jump at a switch treats the new pictures as stale or undecodable (libwebrtc's frame buffer
/// drops them until a keyframe that never helps for long). The forwarder rewrites them like
/// sequence numbers. A field absent from the descriptor is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Picture {
    /// PictureID, 15 bits (a 7-bit one is kept in the low bits).
    pub picture_id: Option<u16>,
    /// TL0PICIDX: the running index of the base temporal layer's pictures.
    pub tl0_pic_idx: Option<u8>,
    /// KEYIDX (5 bits): the running index of keyframes.
    pub key_idx: Option<u8>,
}

/// Modulus of a 15-bit PictureID.
pub const PICTURE_ID_MODULUS: u16 = 1 << 15;
/// Modulus of KEYIDX.
pub const KEY_IDX_MODULUS: u8 = 1 << 5;

impl Vp8Picture {
    pub fn of(descriptor: &Vp8Descriptor) -> Self {
        Self {
            picture_id: descriptor.picture_id(),
            tl0_pic_idx: descriptor.tl0_pic_idx(),
            key_idx: descriptor.key_idx(),
        }
    }
}

/// The VP8 payload descriptor of a video packet, parsed once where the packet enters the node;
/// `None` for other codecs, and for a payload too short or malformed to have one (forwarded
/// as it is).
pub fn vp8_descriptor(codec: sfu_proto::Codec, payload: &[u8]) -> Option<Vp8Descriptor> {
    if codec != sfu_proto::Codec::Vp8 {
        return None;
    }
    Vp8Descriptor::parse(payload).ok()
}

/// A patch that writes `picture` into the payload `descriptor` was parsed from, applied by
/// str0m as it copies the shared payload into the outgoing datagram. `None` when there is
/// nothing to write (or, for a malformed request, nothing that fits: the packet then goes out
/// unchanged).
pub fn vp8_patch(descriptor: &Vp8Descriptor, picture: Vp8Picture) -> Option<Vp8Patch> {
    let build = |picture_id: Option<u16>| {
        let mut b = descriptor.patch();
        if let Some(id) = picture_id {
            b = b.picture_id(id);
        }
        if let Some(idx) = picture.tl0_pic_idx {
            b = b.tl0_pic_idx(idx);
        }
        if let Some(idx) = picture.key_idx {
            b = b.key_idx(idx);
        }
        b.build()
    };
    if picture == Vp8Picture::default() {
        return None;
    }
    match build(picture.picture_id) {
        Ok(patch) => Some(patch),
        // A 7-bit PictureID field: the same count, modulo 128.
        Err(Vp8PatchError::PictureIdTooLarge) => build(picture.picture_id.map(|id| id & 0x7f)).ok(),
        Err(_) => None,
    }
}

/// RFC 7741: payload descriptor, then the VP8 payload header whose bit 0 (P) is 0 for a
/// keyframe. Only the packet with S=1 and partition index 0 starts a frame.
fn vp8_starts_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let start_of_partition = first & 0x10 != 0;
    let partition_index = first & 0x07;
    if !start_of_partition || partition_index != 0 {
        return false;
    }
    let mut i = 1;
    if first & 0x80 != 0 {
        // X: extension byte follows.
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // I: PictureID, 7 or 15 bits.
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // T or K: TID/Y/KEYIDX
        }
    }
    p.get(i).is_some_and(|header| header & 0x01 == 0)
}

/// draft-ietf-payload-vp9: P=0 (not inter-predicted), B=1 (start of frame), spatial layer 0.
fn vp9_starts_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let inter_predicted = first & 0x40 != 0;
    let begins_frame = first & 0x08 != 0;
    if inter_predicted || !begins_frame {
        return false;
    }
    if first & 0x20 != 0 {
        // L: layer indices present; the spatial layer must be the base one.
        let mut i = 1;
        if first & 0x80 != 0 {
            let Some(&pid) = p.get(1) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        let Some(&layers) = p.get(i) else {
            return false;
        };
        return (layers >> 1) & 0x07 == 0;
    }
    true
}

/// RFC 6184: a packet carrying an SPS (alone or in a STAP-A), or the first fragment of an IDR
/// slice that opens its frame.
fn h264_starts_keyframe(p: &[u8], frame_start: bool) -> bool {
    const SPS: u8 = 7;
    const IDR: u8 = 5;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&first) = p.first() else {
        return false;
    };
    match first & 0x1f {
        SPS => true,
        IDR => frame_start,
        STAP_A => {
            let mut i = 1;
            let mut idr = false;
            while i + 2 < p.len() {
                let size = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
                let nal_type = p[i + 2] & 0x1f;
                if nal_type == SPS {
                    return true;
                }
                idr |= nal_type == IDR;
                i += 2 + size;
            }
            idr && frame_start
        }
        FU_A => {
            let Some(&fu) = p.get(1) else { return false };
            let start = fu & 0x80 != 0;
            start && fu & 0x1f == IDR && frame_start
        }
        _ => false,
    }
}

/// RFC 9066-style AV1 aggregation header: N=1 marks the first packet of a coded video sequence.
fn av1_starts_keyframe(p: &[u8]) -> bool {
    p.first().is_some_and(|h| h & 0x08 != 0 && h & 0x80 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_and_delta() {
        assert!(starts_keyframe(Codec::Vp8, &[0x10, 0x00, 0x9d], true));
        assert!(!starts_keyframe(Codec::Vp8, &[0x10, 0x01, 0x9d], true));
        // Continuation packet of a keyframe is not a start.
        assert!(!starts_keyframe(Codec::Vp8, &[0x00, 0x00], true));
        // With X, I (15-bit picture id), L, T extensions: 0x90 X|S, 0xE0 I|L|T.
        assert!(starts_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x80, 0x01, 0x00, 0x00, 0x00],
            true
        ));
        assert!(!starts_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x80, 0x01, 0x00, 0x00, 0x01],
            true
        ));
    }

    #[test]
    fn h264_sps_and_idr() {
        assert!(starts_keyframe(Codec::H264, &[0x67, 0x42], false));
        // STAP-A carrying SPS(7) then PPS(8).
        assert!(starts_keyframe(
            Codec::H264,
            &[0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce],
            false
        ));
        // FU-A start of IDR: only when it opens the frame.
        assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85, 0x00], true));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x85, 0x00], false));
        // FU-A of a non-IDR slice.
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x81, 0x00], true));
    }

    #[test]
    fn vp9_keyframe() {
        assert!(starts_keyframe(Codec::Vp9, &[0x08], true));
        assert!(!starts_keyframe(Codec::Vp9, &[0x48], true));
    }

    #[test]
    fn parsers_are_total_on_arbitrary_bytes() {
        // Every short byte string, plus a deterministic pseudo-random sweep: no panics.
        let mut state = 0x2545_f491_u32;
        for len in 0..64 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        state as u8
                    })
                    .collect();
                for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1, Codec::Opus] {
                    let _ = starts_keyframe(codec, &bytes, true);
                    let _ = starts_keyframe(codec, &bytes, false);
                }
                if let Some(d) = vp8_descriptor(sfu_proto::Codec::Vp8, &bytes) {
                    let picture = Vp8Picture {
                        picture_id: Some(bytes.first().map_or(0, |&b| u16::from(b) << 7)),
                        tl0_pic_idx: Some(7),
                        key_idx: Some(bytes.len() as u8),
                    };
                    let _ = vp8_patch(&d, picture);
                    let _ = vp8_patch(&d, Vp8Picture::of(&d));
                }
            }
        }
    }
}
