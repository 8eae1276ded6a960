//! A synthetic WHEP subscriber: a str0m client in RTP mode that receives audio and video,
//! decodes each payload's test pattern and records what arrived in a [`Reception`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::rtp::Ssrc;
use str0m::{Event, Rtc};

use crate::Error;
use crate::pattern::{self, PayloadKind};
use crate::peer::{self, PeerState, PeerThread, Role, lock};
use crate::reception::{CapturedDatagram, DroppedPacket, RawCapture, ReceivedPacket, Reception};
use crate::session::ServerSession;
use crate::whip::Endpoint;

/// How to reach the server and what to ask for.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Server root URL, e.g. `http://127.0.0.1:8080/`.
    pub base_url: String,
    pub room: String,
    pub token: String,
    pub audio: bool,
    pub video: bool,
    /// Keep every received packet in [`Reception::packets`] (tests); totals are always kept.
    pub keep_packets: bool,
    /// Address the media socket binds to (port chosen by the OS).
    pub bind_ip: IpAddr,
    /// Keep copies of the first this many received datagrams, raw (0: none). See
    /// [`Subscriber::captured`].
    pub capture_raw: usize,
    /// Media packets to lose on purpose before the `Rtc` sees them (none by default).
    pub loss: Vec<IncomingLoss>,
}

/// Packets of one kind a subscriber loses on purpose, as a lossy network would: the datagram
/// is discarded before SRTP, so str0m's receive side sees a sequence gap and, for video,
/// asks for a retransmission (NACK). Packets are counted per kind, 1-based, in arrival order,
/// on the stream's main SSRC only: retransmissions (RTX) are never lost. Packet `n` is lost
/// when `n >= every` and `n % every < burst`; `every: 20, burst: 1` loses the 20th, 40th, ...;
/// `every: 50, burst: 3` loses 50-52, 100-102, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncomingLoss {
    pub kind: PayloadKind,
    pub every: u64,
    pub burst: u64,
}

impl IncomingLoss {
    /// Loses every `every`-th packet of `kind`.
    pub fn every(kind: PayloadKind, every: u64) -> Self {
        Self {
            kind,
            every,
            burst: 1,
        }
    }

    /// Whether the `position`-th (1-based) packet of the kind is lost.
    pub fn loses(&self, position: u64) -> bool {
        self.every > 0 && position >= self.every && position % self.every < self.burst
    }
}

impl SubscriberConfig {
    /// Audio and video, keeping the packet log.
    pub fn new(base_url: &str, room: &str, token: &str) -> Self {
        Self {
            base_url: base_url.to_string(),
            room: room.to_string(),
            token: token.to_string(),
            audio: true,
            video: true,
            keep_packets: true,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            capture_raw: 0,
            loss: Vec::new(),
        }
    }

    /// Also lose incoming packets as `loss` says (see [`IncomingLoss`]).
    pub fn lose(mut self, loss: IncomingLoss) -> Self {
        self.loss.push(loss);
        self
    }

    /// Keep copies of the first `max_datagrams` datagrams the socket receives (STUN, DTLS,
    /// SRTP, SRTCP as they arrived), for checks with independent parsers.
    pub fn capture_raw(mut self, max_datagrams: usize) -> Self {
        self.capture_raw = max_datagrams;
        self
    }
}

/// Requests the subscriber's thread acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberCommand {
    /// Send a PLI for the video stream.
    RequestKeyframe,
}

/// A running subscriber. Dropping it stops the media thread without telling the server;
/// [`Subscriber::close`] also deletes the session.
#[derive(Debug)]
pub struct Subscriber {
    session: ServerSession,
    reception: Arc<Mutex<Reception>>,
    capture: Option<Arc<RawCapture>>,
    thread: PeerThread<SubscriberCommand>,
}

impl Subscriber {
    /// Offers recvonly media over WHEP and starts the receive thread.
    pub fn connect(config: SubscriberConfig) -> Result<Self, Error> {
        let socket = UdpSocket::bind(SocketAddr::new(config.bind_ip, 0))?;
        let local = socket.local_addr()?;
        let mut rtc = peer::client_rtc(local)?;

        let mut change = rtc.sdp_api();
        let audio_mid = config
            .audio
            .then(|| change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None));
        let video_mid = config
            .video
            .then(|| change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None));
        let offer = change.apply();
        let (session, ()) = ServerSession::open(
            Endpoint::Whep,
            &config.base_url,
            &config.room,
            &config.token,
            &mut rtc,
            offer,
            |_| Ok(()),
        )?;

        let reception = Arc::new(Mutex::new(Reception::default()));
        let role = SubscriberRole {
            audio_mid,
            video_mid,
            keep_packets: config.keep_packets,
            reception: reception.clone(),
            loss: config.loss,
            positions: [0; 2],
        };
        let capture =
            (config.capture_raw > 0).then(|| Arc::new(RawCapture::new(config.capture_raw)));
        let thread =
            PeerThread::spawn_capturing("tools-subscriber", rtc, socket, role, capture.clone())?;
        Ok(Self {
            session,
            reception,
            capture,
            thread,
        })
    }

    /// The session URL the server returned.
    pub fn location(&self) -> &str {
        self.session.location()
    }

    /// The SDP answer.
    pub fn answer(&self) -> &str {
        self.session.answer()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.thread.local_addr()
    }

    pub fn state(&self) -> &PeerState {
        self.thread.state()
    }

    pub fn ice_connected(&self) -> bool {
        self.state().ice_connected()
    }

    /// ICE, DTLS and SRTP are up.
    pub fn connected(&self) -> bool {
        self.state().connected()
    }

    /// Waits until media can flow; false on timeout or if the peer loop ended.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        self.state().wait_connected(timeout)
    }

    /// Runs `f` on the reception record without copying it.
    pub fn with_reception<T>(&self, f: impl FnOnce(&Reception) -> T) -> T {
        f(&lock(&self.reception))
    }

    /// A copy of the reception record.
    pub fn reception(&self) -> Reception {
        lock(&self.reception).clone()
    }

    /// Copies of the raw datagrams received so far, in arrival order; empty unless the config
    /// asked for [`SubscriberConfig::capture_raw`].
    pub fn captured(&self) -> Vec<CapturedDatagram> {
        self.capture
            .as_ref()
            .map(|c| c.datagrams())
            .unwrap_or_default()
    }

    /// The raw capture, if the config asked for one.
    pub fn raw_capture(&self) -> Option<&RawCapture> {
        self.capture.as_deref()
    }

    /// Packets of one kind received so far.
    pub fn packets(&self, kind: PayloadKind) -> u64 {
        lock(&self.reception).totals(kind).packets
    }

    /// Waits until at least `n` packets of `kind` arrived.
    pub fn wait_packets(&self, kind: PayloadKind, n: u64, timeout: Duration) -> bool {
        peer::wait_until(timeout, || self.packets(kind) >= n)
    }

    /// Asks the thread to send a PLI for the video stream; false if the thread has ended.
    /// [`Reception::keyframe_requests_sent`] counts the ones actually sent.
    pub fn request_keyframe(&self) -> bool {
        self.thread.send(SubscriberCommand::RequestKeyframe)
    }

    /// Deletes the session on the server and stops the thread.
    pub fn close(mut self) -> Result<(), Error> {
        let result = self.session.delete();
        self.thread.stop();
        result
    }
}

#[derive(Debug)]
struct SubscriberRole {
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    keep_packets: bool,
    reception: Arc<Mutex<Reception>>,
    loss: Vec<IncomingLoss>,
    /// Packets seen on the main SSRC, per kind (audio, video): the positions `loss` counts.
    positions: [u64; 2],
}

/// What an SRTP datagram carries, from its clear-text RTP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carries {
    /// Media on the main SSRC of a stream of this kind.
    Media(PayloadKind, Ssrc, u16),
    /// A retransmission on the repair (RTX) SSRC of a stream of this kind.
    Repair(PayloadKind),
    /// Not RTP, or RTP of no stream we know yet.
    Other,
}

impl SubscriberRole {
    fn classify(&self, rtc: &mut Rtc, datagram: &[u8]) -> Carries {
        let Some((ssrc, seq)) = rtp_ssrc_and_seq(datagram) else {
            return Carries::Other;
        };
        let mids = [
            (PayloadKind::Audio, self.audio_mid),
            (PayloadKind::Video, self.video_mid),
        ];
        let mut api = rtc.direct_api();
        for (kind, mid) in mids {
            let Some(stream) = mid.and_then(|mid| api.stream_rx_by_mid(mid, None)) else {
                continue;
            };
            if stream.ssrc() == ssrc {
                return Carries::Media(kind, ssrc, seq);
            }
            if stream.rtx() == Some(ssrc) {
                return Carries::Repair(kind);
            }
        }
        Carries::Other
    }

    fn kind_of(&self, mid: Option<Mid>) -> Option<PayloadKind> {
        match mid {
            Some(m) if Some(m) == self.audio_mid => Some(PayloadKind::Audio),
            Some(m) if Some(m) == self.video_mid => Some(PayloadKind::Video),
            _ => None,
        }
    }
}

impl Role for SubscriberRole {
    type Command = SubscriberCommand;

    fn drive(&mut self, _now: Instant, _wallclock_us: u64, _rtc: &mut Rtc) {}

    fn next_due(&self) -> Option<Instant> {
        None
    }

    fn on_event(&mut self, now: Instant, rtc: &mut Rtc, event: Event) {
        let Event::RtpPacket(p) = event else {
            return;
        };
        let mid = rtc
            .direct_api()
            .stream_rx(&p.header.ssrc)
            .map(|s| s.mid())
            .or(p.header.ext_vals.mid);
        let Some(kind) = self.kind_of(mid) else {
            lock(&self.reception).unknown_media += 1;
            return;
        };
        let packet = ReceivedPacket {
            at: now,
            kind,
            ssrc: p.header.ssrc,
            pt: p.header.payload_type,
            seq: p.header.sequence_number,
            ext_seq: *p.seq_no,
            rtp_time: p.header.timestamp,
            marker: p.header.marker,
            payload_len: p.payload.len(),
            pattern: pattern::decode_payload(kind, &p.payload),
        };
        lock(&self.reception).record(packet, self.keep_packets);
    }

    fn accept_datagram(&mut self, now: Instant, rtc: &mut Rtc, datagram: &[u8]) -> bool {
        match self.classify(rtc, datagram) {
            Carries::Media(kind, ssrc, seq) => {
                let position = &mut self.positions[usize::from(kind == PayloadKind::Video)];
                *position += 1;
                let n = *position;
                let lost = self.loss.iter().any(|l| l.kind == kind && l.loses(n));
                if lost {
                    lock(&self.reception).dropped.push(DroppedPacket {
                        at: now,
                        kind,
                        ssrc,
                        seq,
                    });
                }
                !lost
            }
            Carries::Repair(kind) => {
                let mut r = lock(&self.reception);
                match kind {
                    PayloadKind::Audio => r.audio.repairs += 1,
                    PayloadKind::Video => r.video.repairs += 1,
                }
                true
            }
            Carries::Other => true,
        }
    }

    fn on_command(&mut self, _now: Instant, rtc: &mut Rtc, command: SubscriberCommand) {
        match command {
            SubscriberCommand::RequestKeyframe => {
                let Some(mid) = self.video_mid else {
                    return;
                };
                if let Some(rx) = rtc.direct_api().stream_rx_by_mid(mid, None) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                    lock(&self.reception).keyframe_requests_sent += 1;
                }
            }
        }
    }
}

/// SSRC and sequence number of an (S)RTP datagram (RFC 7983 first byte, RFC 5761 RTCP
/// payload types excluded); `None` for anything else.
fn rtp_ssrc_and_seq(datagram: &[u8]) -> Option<(Ssrc, u16)> {
    let header = datagram.get(..12)?;
    let rtp_or_rtcp = (128..=191).contains(&header[0]);
    let rtcp = (192..=223).contains(&header[1]);
    if !rtp_or_rtcp || rtcp {
        return None;
    }
    let seq = u16::from_be_bytes([header[2], header[3]]);
    let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    Some((ssrc.into(), seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_pattern_positions() {
        let every = IncomingLoss::every(PayloadKind::Video, 20);
        let lost: Vec<u64> = (1..=100).filter(|n| every.loses(*n)).collect();
        assert_eq!(lost, vec![20, 40, 60, 80, 100]);

        let bursts = IncomingLoss {
            kind: PayloadKind::Video,
            every: 50,
            burst: 3,
        };
        let lost: Vec<u64> = (1..=110).filter(|n| bursts.loses(*n)).collect();
        assert_eq!(lost, vec![50, 51, 52, 100, 101, 102]);

        let off = IncomingLoss::every(PayloadKind::Audio, 0);
        assert!((1..=100).all(|n| !off.loses(n)));
    }

    #[test]
    fn rtp_headers_are_told_from_rtcp_and_the_rest() {
        let mut rtp = vec![
            0x80, 96, 0x12, 0x34, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0xff,
        ];
        assert_eq!(
            rtp_ssrc_and_seq(&rtp),
            Some((0xdead_beef_u32.into(), 0x1234))
        );
        rtp[1] = 0x80 | 96; // marker bit set: still RTP
        assert!(rtp_ssrc_and_seq(&rtp).is_some());
        let rtcp = [0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(rtp_ssrc_and_seq(&rtcp), None, "a receiver report");
        assert_eq!(
            rtp_ssrc_and_seq(&[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "DTLS"
        );
        assert_eq!(rtp_ssrc_and_seq(&rtp[..11]), None, "too short");
    }
}
