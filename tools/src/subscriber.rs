//! A synthetic WHEP subscriber: a str0m client in RTP mode that receives audio and video,
//! decodes each payload's test pattern and records what arrived in a [`Reception`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::{Event, Rtc};

use crate::Error;
use crate::pattern::{self, PayloadKind};
use crate::peer::{self, PeerState, PeerThread, Role, lock};
use crate::reception::{CapturedDatagram, RawCapture, ReceivedPacket, Reception};
use crate::whip::{Endpoint, SessionResource, SignalingClient};

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
        }
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
    signaling: SignalingClient,
    token: String,
    session: SessionResource,
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
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| Error::Sdp("nothing to offer: no audio and no video".into()))?;

        let signaling = SignalingClient::new(&config.base_url);
        let session = signaling.offer(
            Endpoint::Whep,
            &config.room,
            &config.token,
            &offer.to_sdp_string(),
        )?;
        let accepted = SdpAnswer::from_sdp_string(&session.answer)
            .map_err(|e| Error::Sdp(format!("answer does not parse: {e}")))
            .and_then(|answer| Ok(rtc.sdp_api().accept_answer(pending, answer)?));
        if let Err(e) = accepted {
            let _ = signaling.delete(&session.location, &config.token);
            return Err(e);
        }

        let reception = Arc::new(Mutex::new(Reception::default()));
        let role = SubscriberRole {
            audio_mid,
            video_mid,
            keep_packets: config.keep_packets,
            reception: reception.clone(),
        };
        let capture =
            (config.capture_raw > 0).then(|| Arc::new(RawCapture::new(config.capture_raw)));
        let thread =
            PeerThread::spawn_capturing("tools-subscriber", rtc, socket, role, capture.clone())?;
        Ok(Self {
            signaling,
            token: config.token,
            session,
            reception,
            capture,
            thread,
        })
    }

    /// The session URL the server returned.
    pub fn location(&self) -> &str {
        &self.session.location
    }

    /// The SDP answer.
    pub fn answer(&self) -> &str {
        &self.session.answer
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
        peer::wait_until(timeout, || self.connected() || !self.state().running())
            && self.connected()
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
        let result = self.signaling.delete(&self.session.location, &self.token);
        self.thread.stop();
        result.map_err(Error::from)
    }
}

#[derive(Debug)]
struct SubscriberRole {
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    keep_packets: bool,
    reception: Arc<Mutex<Reception>>,
}

impl SubscriberRole {
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
