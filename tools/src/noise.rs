//! Hostile datagrams for robustness tests: bytes no demultiplexer can classify, well-formed
//! STUN binding requests naming an unknown ICE username, and RTP-looking packets from nowhere.
//! Generators take the RNG so runs are reproducible from a seed.

use rand::Rng;

/// The kinds of garbage a [`noise`] run mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoiseKind {
    /// First byte outside every RFC 7983 range (STUN, DTLS, TURN, RTP), or too short.
    Unclassifiable,
    /// A STUN binding request with a USERNAME no session has.
    StunUnknownUser,
    /// RTP version 2 header with a random SSRC, payload and no valid SRTP tag.
    RtpLookalike,
}

const STUN_MAGIC_COOKIE: u32 = 0x2112_a442;
const STUN_BINDING_REQUEST: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_ICE_CONTROLLING: u16 = 0x802a;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// One datagram of the given kind.
pub fn datagram(kind: NoiseKind, rng: &mut impl Rng) -> Vec<u8> {
    match kind {
        NoiseKind::Unclassifiable => unclassifiable(rng),
        NoiseKind::StunUnknownUser => {
            let user = format!(
                "nosuch{:08x}:peer{:04x}",
                rng.random::<u32>(),
                rng.random::<u16>()
            );
            stun_binding_request(&user, rng)
        }
        NoiseKind::RtpLookalike => rtp_lookalike(rng),
    }
}

/// Bytes whose first octet no RFC 7983 demultiplexer accepts (4-15, 80-127, 192-255), or
/// fewer than four bytes.
pub fn unclassifiable(rng: &mut impl Rng) -> Vec<u8> {
    if rng.random_ratio(1, 10) {
        let len = rng.random_range(1..4);
        let mut v = vec![0_u8; len];
        rng.fill(&mut v[..]);
        return v;
    }
    let first = match rng.random_range(0..3) {
        0 => rng.random_range(4..=15),
        1 => rng.random_range(80..=127),
        _ => rng.random_range(192..=255),
    };
    let len = rng.random_range(4..1200);
    let mut v = vec![0_u8; len];
    rng.fill(&mut v[..]);
    v[0] = first;
    v
}

/// A well-formed STUN binding request (valid FINGERPRINT, made-up MESSAGE-INTEGRITY) with the
/// given `USERNAME` (`"remote-ufrag:local-ufrag"`).
pub fn stun_binding_request(username: &str, rng: &mut impl Rng) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(&STUN_BINDING_REQUEST.to_be_bytes());
    m.extend_from_slice(&[0, 0]); // length, patched below
    m.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
    let mut tid = [0_u8; 12];
    rng.fill(&mut tid);
    m.extend_from_slice(&tid);

    push_attr(&mut m, ATTR_USERNAME, username.as_bytes());
    push_attr(&mut m, ATTR_PRIORITY, &0x6e7f_1eff_u32.to_be_bytes());
    push_attr(
        &mut m,
        ATTR_ICE_CONTROLLING,
        &rng.random::<u64>().to_be_bytes(),
    );
    let mut integrity = [0_u8; 20];
    rng.fill(&mut integrity);
    push_attr(&mut m, ATTR_MESSAGE_INTEGRITY, &integrity);

    // FINGERPRINT covers everything before it, with the length already counting it.
    let len = m.len() - 20 + 8;
    set_stun_len(&mut m, len);
    let crc = crc32(&m) ^ FINGERPRINT_XOR;
    push_attr(&mut m, ATTR_FINGERPRINT, &crc.to_be_bytes());
    m
}

/// An RTP-looking packet: version 2, random payload type, sequence, timestamp and SSRC.
pub fn rtp_lookalike(rng: &mut impl Rng) -> Vec<u8> {
    let len = rng.random_range(40..1200);
    let mut v = vec![0_u8; len];
    rng.fill(&mut v[..]);
    v[0] = 0x80; // V=2, no padding, extension or CSRC
    v[1] = rng.random_range(96..=127); // dynamic payload type, marker clear
    v
}

fn push_attr(m: &mut Vec<u8>, kind: u16, value: &[u8]) {
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(value.len() as u16).to_be_bytes());
    m.extend_from_slice(value);
    let pad = (4 - value.len() % 4) % 4;
    m.extend(std::iter::repeat_n(0, pad));
}

fn set_stun_len(m: &mut [u8], len: usize) {
    m[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

/// CRC-32 (IEEE 802.3), as STUN FINGERPRINT uses.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffff_u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn crc32_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn stun_request_is_well_formed() {
        let mut rng = StdRng::seed_from_u64(1);
        let m = stun_binding_request("abc:de", &mut rng);
        assert_eq!(&m[0..2], &[0, 1]);
        assert_eq!(u16::from_be_bytes([m[2], m[3]]) as usize, m.len() - 20);
        assert_eq!(&m[4..8], &STUN_MAGIC_COOKIE.to_be_bytes());
        assert_eq!(m.len() % 4, 0);
        // USERNAME is the first attribute.
        assert_eq!(&m[20..22], &ATTR_USERNAME.to_be_bytes());
        assert_eq!(&m[24..30], b"abc:de");
        // FINGERPRINT is last and verifies.
        let fp_at = m.len() - 8;
        assert_eq!(&m[fp_at..fp_at + 2], &ATTR_FINGERPRINT.to_be_bytes());
        let expected = crc32(&m[..fp_at]) ^ FINGERPRINT_XOR;
        assert_eq!(&m[fp_at + 4..], &expected.to_be_bytes());
    }

    #[test]
    fn unclassifiable_bytes_avoid_every_demux_range() {
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..1000 {
            let d = unclassifiable(&mut rng);
            assert!(!d.is_empty());
            if d.len() >= 4 {
                let b = d[0];
                assert!(
                    (4..=15).contains(&b) || (80..=127).contains(&b) || b >= 192,
                    "{b}"
                );
            }
        }
    }

    #[test]
    fn rtp_lookalike_has_version_2() {
        let mut rng = StdRng::seed_from_u64(3);
        let d = rtp_lookalike(&mut rng);
        assert_eq!(d[0] >> 6, 2);
        assert!((128..=191).contains(&d[0]));
    }
}
