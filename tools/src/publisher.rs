//! A synthetic WHIP publisher: a str0m client in RTP mode that sends test-pattern Opus-like
//! audio and VP8- or H264-like video (optionally three simulcast layers) and answers keyframe
//! requests. It runs as one peer of the load generator's runtime, on a shard of its own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use str0m::Rtc;
use str0m::format::Codec;
use str0m::media::Rid;

use crate::load::negotiate::{Offer, PeerRole, accepted_pt};
use crate::load::peer::{PeerCommand, PeerMedia};
use crate::load::protocol::{PeerFailure, Protocol, TokenSource, WhipWhep};
pub use crate::pattern::VideoCodec;
use crate::peer::{PeerHandle, PeerState, lock, wait_until};
use crate::reception::Mids;
pub use crate::send::PublisherStats;
use crate::send::{SendLayer, SendTrack, Sending};
use crate::source::{AudioSource, FrameSizes, Source, VideoLayer, VideoSource};

/// Video settings of a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoConfig {
    pub fps: u32,
    /// A keyframe every this many frames (0: only the first and requested ones).
    pub keyframe_interval: u32,
    /// Send three simulcast layers q, h, f instead of one.
    pub simulcast: bool,
    /// Bytes of a delta frame of the full layer (keyframes are twice as large).
    pub frame_bytes: usize,
    /// The one video codec offered and sent.
    pub codec: VideoCodec,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            fps: 30,
            keyframe_interval: 60,
            simulcast: false,
            frame_bytes: 4000,
            codec: VideoCodec::Vp8,
        }
    }
}

/// How to reach the server and what to send.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Server root URL, e.g. `http://127.0.0.1:8080/`.
    pub base_url: String,
    pub room: String,
    pub token: String,
    pub audio: bool,
    pub video: Option<VideoConfig>,
    /// Address the media socket binds to (port chosen by the OS).
    pub bind_ip: IpAddr,
}

impl PublisherConfig {
    /// Audio and single-layer video with default settings.
    pub fn new(base_url: &str, room: &str, token: &str) -> Self {
        Self {
            base_url: base_url.to_string(),
            room: room.to_string(),
            token: token.to_string(),
            audio: true,
            video: Some(VideoConfig::default()),
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    pub fn audio(mut self, on: bool) -> Self {
        self.audio = on;
        self
    }

    pub fn video(mut self, video: Option<VideoConfig>) -> Self {
        self.video = video;
        self
    }
}

/// A running publisher. Dropping it stops the peer without telling the server;
/// [`Publisher::close`] also deletes the session.
#[derive(Debug)]
pub struct Publisher {
    peer: PeerHandle,
    stats: Arc<Mutex<PublisherStats>>,
}

impl Publisher {
    /// Offers, gets the answer over WHIP and starts the peer. Media starts flowing once ICE
    /// and DTLS are up.
    pub fn connect(config: PublisherConfig) -> Result<Self, PeerFailure> {
        let tokens = TokenSource::Fixed(config.token.clone());
        let protocol = Arc::new(WhipWhep::new(&config.base_url, tokens));
        Self::connect_via(protocol, "publisher", &config)
    }

    /// Like [`Publisher::connect`], signaling through `protocol` (e.g. Janus) as `identity`;
    /// the config's URL and token are not used.
    pub fn connect_via(
        protocol: Arc<dyn Protocol>,
        identity: &str,
        config: &PublisherConfig,
    ) -> Result<Self, PeerFailure> {
        let offer = Offer {
            role: PeerRole::Publisher,
            audio: config.audio,
            video: config.video.is_some(),
            simulcast: config.video.as_ref().is_some_and(|v| v.simulcast),
            codec: config.video.as_ref().map_or(VideoCodec::Vp8, |v| v.codec),
            receive_sections: 1,
        };
        let stats = Arc::new(Mutex::new(PublisherStats::default()));
        let shared = stats.clone();
        let peer = PeerHandle::connect(
            protocol,
            identity,
            &config.room,
            &offer,
            config.bind_ip,
            |rtc, mids| {
                let sending = sending(rtc, mids, config)?;
                *lock(&shared) = sending.stats();
                Ok(PeerMedia::Publisher {
                    sending,
                    stats: Some(shared),
                })
            },
        )?;
        Ok(Self { peer, stats })
    }

    /// The session URL the server returned.
    pub fn location(&self) -> &str {
        self.peer.location()
    }

    /// The media node serving the session, when the server names it (`X-Sfu-Node`).
    pub fn node(&self) -> Option<&str> {
        self.peer.node()
    }

    /// The SDP answer.
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

    /// A snapshot of what was sent.
    pub fn stats(&self) -> PublisherStats {
        lock(&self.stats).clone()
    }

    pub fn keyframe_requests(&self) -> u64 {
        lock(&self.stats).keyframe_requests
    }

    /// Stops sending video layer `layer` (0 = q, 1 = h, 2 = f under simulcast), as a browser
    /// does when it drops a layer for lack of bandwidth or CPU. A frame being sent is finished
    /// first; [`PublisherStats::paused`] turns true once the layer is silent. False if the
    /// peer has ended.
    pub fn pause_layer(&self, layer: u8) -> bool {
        self.peer.command(PeerCommand::PauseLayer(layer))
    }

    /// Sends video layer `layer` again. Its sequence numbers continue where they stopped; its
    /// RTP clock jumps by the pause, as a real encoder's would. It starts with whatever frame
    /// is due (a keyframe only if one is requested or the interval says so).
    pub fn resume_layer(&self, layer: u8) -> bool {
        self.peer.command(PeerCommand::ResumeLayer(layer))
    }

    /// Waits until video layer `layer` is paused (`true`) or sending (`false`).
    pub fn wait_layer_paused(&self, layer: u8, paused: bool, timeout: Duration) -> bool {
        wait_until(timeout, || {
            lock(&self.stats).paused.get(usize::from(layer)).copied() == Some(paused)
        })
    }

    /// Ends the session on the server (`DELETE {Location}`) but keeps sending media, as a
    /// client that ignores the teardown would.
    pub fn delete_session(&mut self) -> Result<(), PeerFailure> {
        self.peer.delete_session()
    }

    /// Deletes the session on the server and stops the peer.
    pub fn close(mut self) -> Result<(), PeerFailure> {
        let result = self.delete_session();
        self.peer.stop();
        result
    }
}

/// Smallest delta frame of a simulcast layer, bytes.
const MIN_LAYER_FRAME_BYTES: u32 = 200;

/// The sources of `config`, for the payload types the answer accepted.
fn sending(rtc: &Rtc, mids: Mids, config: &PublisherConfig) -> Result<Sending, PeerFailure> {
    let mut rng = rand::rng();
    let mut tracks = Vec::new();
    if let Some(mid) = mids.audio {
        let pt = accepted_pt(rtc, mid, Codec::Opus)?;
        let source =
            AudioSource::new(rng.random_range(0..30_000), rng.random()).seeded(rng.random());
        tracks.push(SendTrack {
            mid,
            pt,
            layers: vec![SendLayer::new(None, Source::Audio(source))],
        });
    }
    if let (Some(mid), Some(v)) = (mids.video, &config.video) {
        let codec = match v.codec {
            VideoCodec::Vp8 => Codec::Vp8,
            VideoCodec::H264 => Codec::H264,
        };
        let pt = accepted_pt(rtc, mid, codec)?;
        let floor = if v.simulcast {
            MIN_LAYER_FRAME_BYTES
        } else {
            0
        };
        let layers = VideoLayer::all(v.simulcast)
            .into_iter()
            .map(|layer| {
                let rid = layer.rid.map(Rid::from);
                let bytes = layer.share(v.frame_bytes as u32, floor);
                let sizes = FrameSizes::fixed(bytes as usize, v.keyframe_interval);
                let source = VideoSource::new(
                    layer,
                    sizes,
                    v.fps,
                    rng.random_range(0..30_000),
                    rng.random(),
                )
                .with_codec(v.codec);
                SendLayer::new(rid, Source::Video(source))
            })
            .collect();
        tracks.push(SendTrack { mid, pt, layers });
    }
    Ok(Sending::new(tracks))
}
