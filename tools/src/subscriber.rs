//! A synthetic WHEP subscriber: a str0m client in RTP mode that receives audio and video,
//! decodes each payload's test pattern and records what arrived in a [`Reception`]. It runs as
//! one peer of the load generator's runtime, on a shard of its own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::load::negotiate::{Offer, PeerRole};
use crate::load::peer::{PeerCommand, PeerMedia};
use crate::load::protocol::{PeerFailure, Protocol, TokenSource, WhipWhep};
use crate::pattern::{PayloadKind, VideoCodec};
use crate::peer::{PeerHandle, PeerState, lock, wait_until};
pub use crate::reception::IncomingLoss;
use crate::reception::{CapturedDatagram, RawCapture, Receiving, Reception};

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
    /// Watch this participant (`?participant=`) rather than the newest other publisher.
    pub participant: Option<String>,
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
            participant: None,
        }
    }

    /// Watch `identity` (WHEP `?participant=`).
    pub fn watching(mut self, identity: &str) -> Self {
        self.participant = Some(identity.to_string());
        self
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

/// A running subscriber. Dropping it stops the peer without telling the server;
/// [`Subscriber::close`] also deletes the session.
#[derive(Debug)]
pub struct Subscriber {
    peer: PeerHandle,
    reception: Arc<Mutex<Reception>>,
    capture: Option<Arc<RawCapture>>,
}

impl Subscriber {
    /// Offers recvonly media over WHEP and starts the peer.
    pub fn connect(config: SubscriberConfig) -> Result<Self, PeerFailure> {
        let tokens = TokenSource::Fixed(config.token.clone());
        let protocol =
            Arc::new(WhipWhep::new(&config.base_url, tokens).watching(config.participant.clone()));
        Self::connect_via(protocol, "subscriber", config)
    }

    /// Like [`Subscriber::connect`], signaling through `protocol` (e.g. Janus, which offers
    /// to subscribers) as `identity`; the config's URL and token are not used.
    pub fn connect_via(
        protocol: Arc<dyn Protocol>,
        identity: &str,
        config: SubscriberConfig,
    ) -> Result<Self, PeerFailure> {
        let offer = Offer {
            role: PeerRole::Subscriber,
            audio: config.audio,
            video: config.video,
            simulcast: false,
            codec: VideoCodec::Vp8,
            receive_sections: 1,
        };
        let reception = Arc::new(Mutex::new(Reception::default()));
        let capture =
            (config.capture_raw > 0).then(|| Arc::new(RawCapture::new(config.capture_raw)));
        // A test subscriber counts as joined once DTLS is up, publishers or not.
        let media = |_: &_, mids| {
            let receiving = Receiving::new(mids)
                .logged(reception.clone(), config.keep_packets)
                .losing(config.loss)
                .capturing(capture.clone());
            Ok(PeerMedia::Subscriber {
                receiving,
                expect_media: false,
            })
        };
        let peer = PeerHandle::connect(
            protocol,
            identity,
            &config.room,
            &offer,
            config.bind_ip,
            media,
        )?;
        Ok(Self {
            peer,
            reception,
            capture,
        })
    }

    /// The session URL the server returned.
    pub fn location(&self) -> &str {
        self.peer.location()
    }

    /// The media node serving the session, when the server names it (`X-Sfu-Node`).
    pub fn node(&self) -> Option<&str> {
        self.peer.node()
    }

    /// The SDP answer (the server's offer, where the server offers).
    pub fn answer(&self) -> &str {
        self.peer.server_sdp()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.peer.local_addr()
    }

    pub fn state(&self) -> &PeerState {
        self.peer.state()
    }

    pub fn ice_connected(&self) -> bool {
        self.state().ice_connected()
    }

    /// ICE, DTLS and SRTP are up.
    pub fn connected(&self) -> bool {
        self.state().connected()
    }

    /// Waits until media can flow; false on timeout or if the peer ended.
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
        wait_until(timeout, || self.packets(kind) >= n)
    }

    /// Asks the peer to send a PLI for the video stream; false if the peer has ended.
    /// [`Reception::keyframe_requests_sent`] counts the ones actually sent.
    pub fn request_keyframe(&self) -> bool {
        self.peer.command(PeerCommand::RequestKeyframe)
    }

    /// Deletes the session on the server and stops the peer.
    pub fn close(mut self) -> Result<(), PeerFailure> {
        let result = self.peer.delete_session();
        self.peer.stop();
        result
    }
}
