//! A synthetic WHIP publisher: a str0m client in RTP mode that sends test-pattern Opus-like
//! audio and VP8- or H264-like video (optionally three simulcast layers) and answers keyframe
//! requests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::{Event, Rtc};

use crate::Error;
use crate::pattern::PayloadKind;
pub use crate::pattern::VideoCodec;
use crate::peer::{self, PeerState, PeerThread, Role, lock};
use crate::send::{SendLayer, SendTrack, Sending};
use crate::session::ServerSession;
use crate::source::{AudioSource, FrameSizes, OutgoingPacket, Source, VideoLayer, VideoSource};
use crate::whip::Endpoint;

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

/// What a publisher has sent and been asked for so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublisherStats {
    pub audio_packets: u64,
    /// Video packets sent, per layer index.
    pub video_packets: Vec<u64>,
    /// Keyframes sent, per layer index.
    pub keyframes: Vec<u64>,
    /// `Event::KeyframeRequest`s (PLI or FIR) received from the server.
    pub keyframe_requests: u64,
    /// Packets that could not be written (no send stream for the mid/rid).
    pub write_failures: u64,
    /// When the first media packet was written.
    pub first_sent_at: Option<Instant>,
    /// Video layers currently not sending, per layer index (see [`Publisher::pause_layer`]).
    pub paused: Vec<bool>,
}

/// Requests the publisher's thread acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublisherCommand {
    /// Stop sending one video layer (by index) at the next frame boundary.
    PauseLayer(u8),
    /// Send the layer again, from the next frame due.
    ResumeLayer(u8),
}

/// A running publisher. Dropping it stops the media thread without telling the server;
/// [`Publisher::close`] also deletes the session.
#[derive(Debug)]
pub struct Publisher {
    session: ServerSession,
    stats: Arc<Mutex<PublisherStats>>,
    thread: PeerThread<PublisherCommand>,
}

impl Publisher {
    /// Offers, gets the answer over WHIP and starts the media thread. Media starts flowing once
    /// ICE and DTLS are up.
    pub fn connect(config: PublisherConfig) -> Result<Self, Error> {
        let socket = UdpSocket::bind(SocketAddr::new(config.bind_ip, 0))?;
        let local = socket.local_addr()?;
        let codec = config.video.as_ref().map_or(VideoCodec::Vp8, |v| v.codec);
        let mut rtc = peer::sending_rtc(local, codec)?;
        let layers = VideoLayer::all(config.video.as_ref().is_some_and(|v| v.simulcast));

        let mut change = rtc.sdp_api();
        let audio_mid = config
            .audio
            .then(|| change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        let video_mid = config.video.as_ref().map(|v| {
            let simulcast = v.simulcast.then(|| {
                let mut s = Simulcast::new();
                for rid in layers.iter().filter_map(|l| l.rid) {
                    s.add_send_layer(SimulcastLayer::new(rid));
                }
                s
            });
            change.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast)
        });
        let offer = change.apply();
        let (session, (audio, video)) = ServerSession::open(
            Endpoint::Whip,
            &config.base_url,
            &config.room,
            &config.token,
            &mut rtc,
            offer,
            |rtc| {
                let audio = audio_mid
                    .map(|mid| negotiated_pt(rtc, mid, Codec::Opus).map(|pt| (mid, pt)))
                    .transpose()?;
                let video = video_mid
                    .map(|mid| negotiated_pt(rtc, mid, str0m_codec(codec)).map(|pt| (mid, pt)))
                    .transpose()?;
                Ok((audio, video))
            },
        )?;

        let mut rng = rand::rng();
        let mut tracks = Vec::new();
        if let Some((mid, pt)) = audio {
            let source =
                AudioSource::new(rng.random_range(0..30_000), rng.random()).seeded(rng.random());
            tracks.push(SendTrack {
                mid,
                pt,
                layers: vec![SendLayer::new(None, Source::Audio(source))],
            });
        }
        let video_layers = match (video, &config.video) {
            (Some((mid, pt)), Some(v)) => {
                let sources: Vec<SendLayer> = layers
                    .into_iter()
                    .map(|layer| {
                        let rid = layer.rid.map(Rid::from);
                        let floor = if v.simulcast {
                            MIN_LAYER_FRAME_BYTES
                        } else {
                            0
                        };
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
                let n = sources.len();
                tracks.push(SendTrack {
                    mid,
                    pt,
                    layers: sources,
                });
                n
            }
            _ => 0,
        };
        let stats = Arc::new(Mutex::new(PublisherStats {
            video_packets: vec![0; video_layers],
            keyframes: vec![0; video_layers],
            paused: vec![false; video_layers],
            ..PublisherStats::default()
        }));
        let role = PublisherRole {
            sending: Sending::new(tracks),
            scratch: Vec::new(),
            stats: stats.clone(),
        };
        let thread = PeerThread::spawn("tools-publisher", rtc, socket, role)?;
        Ok(Self {
            session,
            stats,
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
    /// thread has ended.
    pub fn pause_layer(&self, layer: u8) -> bool {
        self.thread.send(PublisherCommand::PauseLayer(layer))
    }

    /// Sends video layer `layer` again. Its sequence numbers continue where they stopped; its
    /// RTP clock jumps by the pause, as a real encoder's would. It starts with whatever frame
    /// is due (a keyframe only if one is requested or the interval says so).
    pub fn resume_layer(&self, layer: u8) -> bool {
        self.thread.send(PublisherCommand::ResumeLayer(layer))
    }

    /// Waits until video layer `layer` is paused (`true`) or sending (`false`).
    pub fn wait_layer_paused(&self, layer: u8, paused: bool, timeout: Duration) -> bool {
        peer::wait_until(timeout, || {
            lock(&self.stats).paused.get(usize::from(layer)).copied() == Some(paused)
        })
    }

    /// Ends the session on the server (`DELETE {Location}`) but keeps sending media, as a
    /// client that ignores the teardown would.
    pub fn delete_session(&mut self) -> Result<(), Error> {
        self.session.delete()
    }

    /// Deletes the session on the server and stops the media thread.
    pub fn close(mut self) -> Result<(), Error> {
        let result = self.delete_session();
        self.thread.stop();
        result
    }
}

/// Smallest delta frame of a simulcast layer, bytes.
const MIN_LAYER_FRAME_BYTES: u32 = 200;

fn str0m_codec(codec: VideoCodec) -> Codec {
    match codec {
        VideoCodec::Vp8 => Codec::Vp8,
        VideoCodec::H264 => Codec::H264,
    }
}

/// The payload type the answer accepted for `codec` on `mid`.
fn negotiated_pt(rtc: &Rtc, mid: Mid, codec: Codec) -> Result<Pt, Error> {
    peer::accepted_pt(rtc, mid, codec).map_err(Error::Sdp)
}

#[derive(Debug)]
struct PublisherRole {
    sending: Sending,
    scratch: Vec<OutgoingPacket>,
    stats: Arc<Mutex<PublisherStats>>,
}

impl Role for PublisherRole {
    type Command = PublisherCommand;

    fn drive(&mut self, now: Instant, wallclock_us: u64, rtc: &mut Rtc) {
        // Sources start on the first pass after connecting, so nothing queues up before.
        if !rtc.is_connected() {
            return;
        }
        let mut stats = lock(&self.stats);
        let stats = &mut *stats;
        self.sending
            .write_due(rtc, now, wallclock_us, &mut self.scratch, |p, written| {
                if !written {
                    stats.write_failures += 1;
                    return;
                }
                match p.kind {
                    PayloadKind::Audio => stats.audio_packets += 1,
                    PayloadKind::Video => {
                        if let Some(n) = stats.video_packets.get_mut(usize::from(p.layer)) {
                            *n += 1;
                        }
                    }
                }
                stats.first_sent_at.get_or_insert(now);
            });
        for layer in self.sending.layers() {
            let Some(index) = layer.source.layer().map(usize::from) else {
                continue;
            };
            if let Some(n) = stats.keyframes.get_mut(index) {
                *n = layer.source.keyframes();
            }
            if let Some(paused) = stats.paused.get_mut(index) {
                *paused = layer.paused;
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.sending.next_due()
    }

    fn on_event(&mut self, _now: Instant, _rtc: &mut Rtc, event: Event) {
        if let Event::KeyframeRequest(req) = event {
            lock(&self.stats).keyframe_requests += 1;
            self.sending.request_keyframe(&req);
        }
    }

    fn on_command(&mut self, _now: Instant, _rtc: &mut Rtc, command: PublisherCommand) {
        match command {
            PublisherCommand::PauseLayer(layer) => self.sending.pause_layer(layer, true),
            PublisherCommand::ResumeLayer(layer) => self.sending.pause_layer(layer, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video_offer(codec: VideoCodec) -> String {
        let mut rtc = peer::sending_rtc(SocketAddr::from(([127, 0, 0, 1], 9)), codec).expect("rtc");
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, _pending) = change.apply().expect("an offer");
        offer.to_sdp_string()
    }

    #[test]
    fn the_offer_names_only_the_configured_video_codec() {
        let h264 = video_offer(VideoCodec::H264);
        assert!(h264.contains("H264/90000"), "{h264}");
        assert!(!h264.contains("VP8/90000"), "{h264}");
        assert!(h264.contains("packetization-mode=1"), "{h264}");
        assert!(!h264.contains("packetization-mode=0"), "{h264}");
        assert!(h264.contains("profile-level-id=42e01f"), "{h264}");

        let vp8 = video_offer(VideoCodec::Vp8);
        assert!(vp8.contains("VP8/90000"), "{vp8}");
        assert!(!vp8.contains("H264/90000"), "{vp8}");
    }
}
