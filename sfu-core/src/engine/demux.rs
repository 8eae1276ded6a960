//! Demultiplexing before the sessions: which session does a datagram belong to? A hash map
//! from remote address to session, with the STUN USERNAME (our ICE ufrag) as the way in for
//! a new address. Sessions are never asked "is this yours?".

use std::collections::HashMap;
use std::net::SocketAddr;

use super::PeerId;

/// What a datagram looks like from its first bytes (RFC 7983 demultiplexing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramClass {
    Stun,
    Dtls,
    RtpOrRtcp,
    Other,
}

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const STUN_HEADER_LEN: usize = 20;
const STUN_ATTR_USERNAME: u16 = 0x0006;

/// Classify a datagram by its first byte (and, for STUN, the magic cookie).
pub fn classify(datagram: &[u8]) -> DatagramClass {
    match datagram.first() {
        Some(0..=3) if datagram.len() >= STUN_HEADER_LEN && datagram[4..8] == STUN_MAGIC_COOKIE => {
            DatagramClass::Stun
        }
        Some(20..=63) if datagram.len() >= 13 => DatagramClass::Dtls,
        Some(128..=191) if datagram.len() >= 12 => DatagramClass::RtpOrRtcp,
        _ => DatagramClass::Other,
    }
}

/// The local (our) ufrag from a STUN message's USERNAME attribute (`local:remote`), if present.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    let body_len = usize::from(u16::from_be_bytes([*datagram.get(2)?, *datagram.get(3)?]));
    let end = (STUN_HEADER_LEN + body_len).min(datagram.len());
    let mut i = STUN_HEADER_LEN;
    while i + 4 <= end {
        let kind = u16::from_be_bytes([datagram[i], datagram[i + 1]]);
        let len = usize::from(u16::from_be_bytes([datagram[i + 2], datagram[i + 3]]));
        let value = datagram.get(i + 4..i + 4 + len)?;
        if kind == STUN_ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        // Attributes are padded to 4 bytes.
        i += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// The SSRC of an (S)RTP packet, read from its clear-text header; `None` for anything else,
/// RTCP included (RFC 5761: RTCP packet types 192..=223 sit where RTP has marker + payload
/// type, and no RTP payload type may use 64..=95).
pub fn rtp_ssrc(datagram: &[u8]) -> Option<u32> {
    if classify(datagram) != DatagramClass::RtpOrRtcp || (192..=223).contains(&datagram[1]) {
        return None;
    }
    let ssrc = datagram.get(8..12)?;
    Some(u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]))
}

/// Address and ufrag routing for one worker.
#[derive(Debug, Default)]
pub struct Demux {
    by_addr: HashMap<SocketAddr, PeerId>,
    by_ufrag: HashMap<String, PeerId>,
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Session(PeerId),
    /// Dropped: not STUN and from an address no session has used.
    UnknownSource,
    /// Dropped: STUN naming no session of ours.
    UnknownUfrag,
    /// Dropped: not a WebRTC datagram at all.
    Malformed,
}

impl Demux {
    pub fn add_session(&mut self, session: PeerId, local_ufrag: String) {
        self.by_ufrag.insert(local_ufrag, session);
    }

    /// The session's ICE username fragment changed (an ICE restart): new first contacts
    /// name the new one; addresses already known keep routing.
    pub fn set_ufrag(&mut self, session: PeerId, local_ufrag: String) {
        self.by_ufrag.retain(|_, s| *s != session);
        self.by_ufrag.insert(local_ufrag, session);
    }

    pub fn remove_session(&mut self, session: PeerId) {
        self.by_ufrag.retain(|_, s| *s != session);
        self.by_addr.retain(|_, s| *s != session);
    }

    pub fn route(&mut self, source: SocketAddr, datagram: &[u8]) -> Route {
        let class = classify(datagram);
        if class == DatagramClass::Other {
            return Route::Malformed;
        }
        if let Some(&session) = self.by_addr.get(&source) {
            return Route::Session(session);
        }
        if class != DatagramClass::Stun {
            return Route::UnknownSource;
        }
        let Some(&session) = stun_local_ufrag(datagram).and_then(|u| self.by_ufrag.get(u)) else {
            return Route::UnknownUfrag;
        };
        // The session verifies the STUN message integrity; if it fails, the address mapping
        // is harmless (the session drops everything it cannot authenticate).
        self.by_addr.insert(source, session);
        Route::Session(session)
    }

    pub fn sessions_by_addr(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_with_username(username: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    #[test]
    fn routes_by_ufrag_then_by_address() {
        let mut demux = Demux::default();
        demux.add_session(PeerId(9), "abcd".into());
        let peer: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(demux.route(peer, &[0x80; 40]), Route::UnknownSource);
        assert_eq!(
            demux.route(peer, &stun_with_username("zzzz:remote")),
            Route::UnknownUfrag
        );
        assert_eq!(
            demux.route(peer, &stun_with_username("abcd:remote")),
            Route::Session(PeerId(9))
        );
        assert_eq!(demux.route(peer, &[0x80; 40]), Route::Session(PeerId(9)));
        assert_eq!(demux.route(peer, &[0xff; 40]), Route::Malformed);
        demux.remove_session(PeerId(9));
        assert_eq!(demux.route(peer, &[0x80; 40]), Route::UnknownSource);
    }

    #[test]
    fn rtp_ssrc_reads_rtp_headers_only() {
        let mut rtp = vec![0x80, 96, 0, 1, 0, 0, 0, 2, 0xde, 0xad, 0xbe, 0xef, 0xaa];
        assert_eq!(rtp_ssrc(&rtp), Some(0xdead_beef));
        rtp[1] = 0x80 | 96; // marker bit set
        assert_eq!(rtp_ssrc(&rtp), Some(0xdead_beef));
        // A receiver report: same first byte range, RTCP packet type.
        let rtcp = [0x81, 201, 0, 7, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4];
        assert_eq!(rtp_ssrc(&rtcp), None);
        assert_eq!(rtp_ssrc(&rtp[..11]), None, "shorter than an RTP header");
        assert_eq!(rtp_ssrc(&stun_with_username("a:b")), None);
        assert_eq!(rtp_ssrc(&[22; 40]), None, "DTLS");
    }

    #[test]
    fn stun_parser_is_total() {
        let mut state = 0x9e37_79b9_u32;
        for len in 0..80 {
            for _ in 0..300 {
                let mut bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        state as u8
                    })
                    .collect();
                if bytes.len() >= 8 {
                    bytes[0] = 0;
                    bytes[4..8].copy_from_slice(&STUN_MAGIC_COOKIE);
                }
                let _ = stun_local_ufrag(&bytes);
                let _ = classify(&bytes);
                let _ = rtp_ssrc(&bytes);
            }
        }
    }
}
