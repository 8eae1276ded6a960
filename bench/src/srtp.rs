//! AES-128-GCM over RTP as SRTP applies it (RFC 7714), for the bare loop and its source: the
//! same cipher, from the same library (aws-lc), that the node's SRTP uses. Each context is a
//! key and salt; the IV is the salt XOR (0, 0, SSRC, ROC = 0, sequence number), the RTP header
//! is the associated data, and the 16-byte tag follows the payload.

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Bytes of the fixed RTP header the bare loop uses (no CSRCs, no extensions).
pub const RTP_HEADER: usize = 12;
/// Bytes GCM adds.
pub const TAG: usize = 16;

pub struct GcmContext {
    key: LessSafeKey,
    salt: [u8; NONCE_LEN],
}

impl std::fmt::Debug for GcmContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcmContext").finish_non_exhaustive()
    }
}

impl GcmContext {
    /// A context whose key and salt are derived from `seed` (distinct seeds, distinct keys).
    pub fn new(seed: u32) -> Self {
        let mut key = [0u8; 16];
        for (i, b) in key.iter_mut().enumerate() {
            *b = (seed as u8).wrapping_mul(31).wrapping_add(i as u8 * 7) ^ (seed >> 8) as u8;
        }
        let mut salt = [0u8; NONCE_LEN];
        for (i, b) in salt.iter_mut().enumerate() {
            *b = (seed as u8).wrapping_add(i as u8 * 13) ^ 0x5c;
        }
        let unbound = UnboundKey::new(&AES_128_GCM, &key).expect("a 16-byte AES-128 key");
        Self {
            key: LessSafeKey::new(unbound),
            salt,
        }
    }

    fn nonce(&self, header: &[u8]) -> Nonce {
        let mut iv = self.salt;
        // SSRC at IV bytes 2..6, the rollover counter (0 here) at 6..10, the sequence number
        // at 10..12.
        for i in 0..4 {
            iv[2 + i] ^= header[8 + i];
        }
        iv[10] ^= header[2];
        iv[11] ^= header[3];
        Nonce::assume_unique_for_key(iv)
    }

    /// Encrypt `packet` (an RTP header of [`RTP_HEADER`] bytes, then the payload) in place
    /// and append the tag.
    pub fn seal(&self, packet: &mut Vec<u8>) {
        let (header, payload) = packet.split_at_mut(RTP_HEADER);
        let nonce = self.nonce(header);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), payload)
            .expect("GCM seals any payload below 64 GiB");
        packet.extend_from_slice(tag.as_ref());
    }

    /// Decrypt a sealed packet in place; the payload's length, or `None` if it does not
    /// authenticate.
    pub fn open(&self, packet: &mut [u8]) -> Option<usize> {
        if packet.len() < RTP_HEADER + TAG {
            return None;
        }
        let (header, sealed) = packet.split_at_mut(RTP_HEADER);
        let nonce = self.nonce(header);
        self.key
            .open_in_place(nonce, Aad::from(&*header), sealed)
            .ok()
            .map(|plain| plain.len())
    }
}

/// Write a fixed RTP header (version 2, marker set) into `out`.
pub fn rtp_header(out: &mut Vec<u8>, pt: u8, seq: u16, timestamp: u32, ssrc: u32) {
    out.extend_from_slice(&[0x80, 0x80 | (pt & 0x7f)]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_packet_opens_with_its_key_only() {
        let (a, b) = (GcmContext::new(1), GcmContext::new(2));
        let mut packet = Vec::new();
        rtp_header(&mut packet, 96, 7, 90_000, 0x1234_5678);
        packet.extend_from_slice(&[0xab; 100]);
        let clear = packet.clone();
        a.seal(&mut packet);
        assert_eq!(packet.len(), clear.len() + TAG);
        assert_ne!(packet[RTP_HEADER..clear.len()], clear[RTP_HEADER..]);
        let mut other = packet.clone();
        assert_eq!(b.open(&mut other), None, "another key does not open it");
        assert_eq!(a.open(&mut packet), Some(100));
        assert_eq!(packet[..clear.len()], clear[..]);
    }
}
