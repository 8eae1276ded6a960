//! Setting a peer up, on a signaling thread (load) or its owner's (test peers): its socket and
//! `Rtc`, the offer for the media it sends or wants, the [`SdpClient`] the protocol negotiates
//! through, the address overrides a test relay needs, and the media built from what the answer
//! accepted. The result, a [`NewPeer`], is handed to a shard.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use quinn_udp::{UdpSockRef, UdpSocketState};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::crypto::CryptoProvider;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::{Candidate, Rtc, RtcError};

use super::media;
use super::peer::PeerMedia;
use super::placement::Placements;
use super::protocol::{PeerFailure, Protocol, SdpClient, SessionHandle};
use super::scenario::{MediaModel, Scenario};
use crate::pattern::VideoCodec;
use crate::peer::PeerState;
use crate::reception::{Mids, Receiving};
use crate::send::{SendLayer, SendTrack, Sending};
use crate::source::{AudioSource, FrameSizes, Shape, Source, VideoLayer, VideoSource};
use crate::whip::Endpoint;

/// A peer's number in the run plan (stable across churn rejoins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    Publisher,
    Subscriber,
}

impl PeerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Publisher => "publisher",
            PeerRole::Subscriber => "subscriber",
        }
    }
}

/// One planned peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    pub id: PeerId,
    pub role: PeerRole,
    /// Room index.
    pub room: u32,
    /// Run-wide publisher number (names its streams' counters); 0 for subscribers.
    pub publisher: u32,
    /// Joins so far minus one: 0 for the first join, +1 per churn rejoin.
    pub generation: u32,
}

impl PeerPlan {
    /// The token identity: unique per join, so a rejoin never collides with the session it
    /// replaces while that one is still being deleted.
    pub fn identity(&self) -> String {
        let role = match self.role {
            PeerRole::Publisher => "pub",
            PeerRole::Subscriber => "sub",
        };
        format!("load-{role}-{}.{}", self.id.0, self.generation)
    }
}

/// What a peer offers: which media lines and, for a publisher, simulcast and its one video
/// codec (a subscriber accepts Opus, VP8 and H264).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub role: PeerRole,
    pub audio: bool,
    pub video: bool,
    pub simulcast: bool,
    pub codec: VideoCodec,
    /// Receiving sections of each offered kind a subscriber asks for: 1, or one per other
    /// participant of a room.
    pub receive_sections: usize,
}

impl Offer {
    /// A load peer's offer: the scenario's media, VP8 for publishers.
    pub fn load(role: PeerRole, media: MediaModel) -> Self {
        Self {
            role,
            audio: media.has_audio(),
            video: media.has_video(),
            simulcast: role == PeerRole::Publisher && media.simulcast(),
            codec: VideoCodec::Vp8,
            receive_sections: 1,
        }
    }
}

/// Where a peer's datagrams go: the address its socket binds to, and `(from, to)` pairs
/// telling it to send to `to` where the server's SDP names candidate `from`.
#[derive(Debug, Clone)]
pub struct Route {
    pub bind_ip: IpAddr,
    pub remote_overrides: Arc<[(SocketAddr, SocketAddr)]>,
}

impl Route {
    /// Straight to the server, from a socket on `bind_ip`.
    pub fn direct(bind_ip: IpAddr) -> Self {
        Self {
            bind_ip,
            remote_overrides: Arc::from(Vec::new()),
        }
    }
}

/// What a load peer's setup needs besides the plan.
#[derive(Debug, Clone)]
pub struct SetupConfig {
    pub media: MediaModel,
    pub video_kbps: u32,
    pub fps: u32,
    pub keyframe_interval_s: f64,
    pub dtx: bool,
    pub route: Route,
    /// Subscribers count as joined at their first media packet when the room has publishers,
    /// otherwise when DTLS is up.
    pub room_has_publishers: bool,
    /// Where each peer's session landed, recorded as it is negotiated.
    pub placements: Arc<Placements>,
}

impl SetupConfig {
    pub fn new(s: &Scenario, bind_ip: IpAddr, overrides: &[(SocketAddr, SocketAddr)]) -> Self {
        Self {
            media: s.media,
            video_kbps: s.video_kbps,
            fps: s.video_fps,
            keyframe_interval_s: s.keyframe_interval_s,
            dtx: s.audio_dtx,
            route: Route {
                bind_ip,
                remote_overrides: overrides.into(),
            },
            room_has_publishers: s.publishers_per_room() > 0,
            placements: Arc::new(Placements::new(
                s.planned_peers() as usize,
                s.total_publishers() as usize,
            )),
        }
    }
}

/// A negotiated peer on its way to a shard.
#[derive(Debug)]
pub struct NewPeer {
    pub plan: PeerPlan,
    /// Bound and non-blocking.
    pub socket: UdpSocket,
    pub udp: UdpSocketState,
    pub local: SocketAddr,
    pub rtc: Rtc,
    /// When the signaling request started (join time counts from here).
    pub started: Instant,
    pub session: SessionHandle,
    /// The SDP the server sent: its answer, or its offer where the server offers.
    pub server_sdp: String,
    pub media: PeerMedia,
    /// What the peer shows its owner while it runs.
    pub state: Arc<PeerState>,
}

/// Sets a load peer up: the scenario's media, sources numbered after the plan. Records where
/// its session landed (a publisher's node before any of its packets exists), and lets a
/// subscriber tell local from relayed packets.
pub fn setup_load(
    plan: &PeerPlan,
    config: &SetupConfig,
    protocol: &dyn Protocol,
    room: &str,
) -> Result<NewPeer, PeerFailure> {
    let offer = Offer::load(plan.role, config.media);
    let result = setup(
        plan,
        &plan.identity(),
        room,
        &offer,
        &config.route,
        protocol,
        load_media(plan, config),
    );
    land(plan, config, result)
}

/// What a load peer does with the media its answer accepted: a publisher's sources, or a
/// subscriber's counting receiver.
pub fn load_media<'a>(
    plan: &'a PeerPlan,
    config: &'a SetupConfig,
) -> impl FnOnce(&Rtc, Mids) -> Result<PeerMedia, PeerFailure> + 'a {
    move |rtc, mids| match plan.role {
        PeerRole::Subscriber => Ok(PeerMedia::Subscriber {
            receiving: Receiving::new(mids),
            expect_media: config.room_has_publishers,
        }),
        PeerRole::Publisher => publisher_media(rtc, plan, config, mids),
    }
}

/// Records where a load peer's session landed (or that it failed), and lets a subscriber
/// tell local from relayed packets.
pub fn land(
    plan: &PeerPlan,
    config: &SetupConfig,
    result: Result<NewPeer, PeerFailure>,
) -> Result<NewPeer, PeerFailure> {
    let placements = &config.placements;
    match result {
        Ok(mut peer) => {
            let landing = placements.land(plan, peer.session.node.as_deref());
            if let PeerMedia::Subscriber { receiving, .. } = &mut peer.media {
                receiving.set_paths(placements.paths_for(landing));
            }
            Ok(peer)
        }
        Err(e) => {
            placements.lift(plan);
            Err(e)
        }
    }
}

/// Binds the socket, negotiates `offer` through `protocol` for `identity` in `room`, and builds
/// the peer's media with `media` from the negotiated `Rtc` and media lines. If the media cannot
/// be built, the session the server created is deleted again (best effort).
pub fn setup(
    plan: &PeerPlan,
    identity: &str,
    room: &str,
    offer: &Offer,
    route: &Route,
    protocol: &dyn Protocol,
    media: impl FnOnce(&Rtc, Mids) -> Result<PeerMedia, PeerFailure>,
) -> Result<NewPeer, PeerFailure> {
    let mut draft = PeerDraft::bind(plan, offer, route)?;
    let session = match offer.role {
        PeerRole::Publisher => protocol.publish(room, identity, &mut draft)?,
        PeerRole::Subscriber => protocol.subscribe(room, identity, &mut draft)?,
    };
    draft.finish(session.clone(), media).inspect_err(|_| {
        let _ = protocol.leave(&session);
    })
}

/// A peer being negotiated: its bound socket and its offering `Rtc`, the [`SdpClient`] a
/// protocol drives. [`finish`](Self::finish) turns it into a [`NewPeer`] once the server has
/// answered.
#[derive(Debug)]
pub struct PeerDraft {
    plan: PeerPlan,
    socket: UdpSocket,
    udp: UdpSocketState,
    local: SocketAddr,
    rtc: Rtc,
    offer: Offer,
    overrides: Arc<[(SocketAddr, SocketAddr)]>,
    pending: Option<SdpPendingOffer>,
    mids: Mids,
    server_sdp: String,
    /// When the signaling began: join times count from here.
    pub started: Instant,
}

impl PeerDraft {
    /// Binds the peer's socket and builds its `Rtc` for `offer`.
    pub fn bind(plan: &PeerPlan, offer: &Offer, route: &Route) -> Result<Self, PeerFailure> {
        let socket_err = |e: std::io::Error| PeerFailure::Socket(e.to_string());
        let socket = UdpSocket::bind(SocketAddr::new(route.bind_ip, 0)).map_err(socket_err)?;
        socket.set_nonblocking(true).map_err(socket_err)?;
        let local = socket.local_addr().map_err(socket_err)?;
        // Socket options for batched I/O (GRO, packet info); GSO support is probed once.
        let udp = UdpSocketState::new(UdpSockRef::from(&socket)).map_err(socket_err)?;
        let rtc = offering_rtc(local, offer).map_err(|e| PeerFailure::BadSdp(e.to_string()))?;
        Ok(Self {
            plan: plan.clone(),
            socket,
            udp,
            local,
            rtc,
            offer: *offer,
            overrides: route.remote_overrides.clone(),
            pending: None,
            mids: Mids::default(),
            server_sdp: String::new(),
            started: Instant::now(),
        })
    }

    /// The media lines of the offer (after [`create_offer`](SdpClient::create_offer)).
    pub fn mids(&self) -> Mids {
        self.mids
    }

    /// The negotiated peer, its media built by `media` from the `Rtc` and media lines.
    pub fn finish(
        self,
        session: SessionHandle,
        media: impl FnOnce(&Rtc, Mids) -> Result<PeerMedia, PeerFailure>,
    ) -> Result<NewPeer, PeerFailure> {
        let media = media(&self.rtc, self.mids)?;
        Ok(NewPeer {
            plan: self.plan,
            socket: self.socket,
            udp: self.udp,
            local: self.local,
            rtc: self.rtc,
            started: self.started,
            session,
            server_sdp: self.server_sdp,
            media,
            state: Arc::new(PeerState::default()),
        })
    }
}

/// The crypto provider all peers of this process share.
fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(str0m::crypto::from_feature_flags()))
        .clone()
}

/// Payload type (and its RTX) a sending peer offers for H264: str0m's default for this profile.
const H264_PT: u8 = 108;
const H264_RTX_PT: u8 = 109;

/// Constrained Baseline level 3.1, as browsers offer first.
const H264_PROFILE_LEVEL_ID: u32 = 0x42e01f;

/// The `Rtc` of a synthetic peer: the offering, ICE-controlling side, in RTP mode, with one
/// host candidate for its socket. A subscriber accepts Opus, VP8 and H264; a publisher offers
/// Opus and only its one video codec (H264 with packetization-mode 1 alone), so the server
/// cannot pick another video codec than the one the payloads are framed for.
fn offering_rtc(local: SocketAddr, offer: &Offer) -> Result<Rtc, RtcError> {
    let mut config = Rtc::builder()
        .set_rtp_mode(true)
        .set_crypto_provider(crypto_provider())
        .clear_codecs()
        .enable_opus(true, false);
    match (offer.role, offer.codec) {
        (PeerRole::Subscriber, _) => config = config.enable_vp8(true).enable_h264(true),
        (PeerRole::Publisher, VideoCodec::Vp8) => config = config.enable_vp8(true),
        (PeerRole::Publisher, VideoCodec::H264) => config.codec_config().add_h264(
            H264_PT.into(),
            Some(H264_RTX_PT.into()),
            true,
            H264_PROFILE_LEVEL_ID,
        ),
    }
    let mut rtc = config.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    Ok(rtc)
}

/// The payload type the answer accepted for `codec` on `mid`.
pub fn accepted_pt(rtc: &Rtc, mid: Mid, codec: Codec) -> Result<Pt, PeerFailure> {
    let media = rtc
        .media(mid)
        .ok_or_else(|| PeerFailure::BadSdp(format!("the answer dropped media {mid}")))?;
    media
        .remote_pts()
        .iter()
        .copied()
        .find(|pt| {
            rtc.codec_config()
                .find(|p| p.pt() == *pt)
                .is_some_and(|p| p.spec().codec == codec)
        })
        .ok_or_else(|| {
            PeerFailure::BadSdp(format!(
                "the answer accepted no {codec:?} payload type on {mid}"
            ))
        })
}

/// A well-formed SDP offer as a publisher (`Whip`: sendonly) or subscriber (`Whep`: recvonly)
/// would send, audio and video, Opus, VP8 and H264, for requests that are meant to fail for
/// other reasons. The offering `Rtc` is thrown away, so no media will ever follow.
pub fn sample_offer(endpoint: Endpoint) -> Result<String, PeerFailure> {
    let dir = match endpoint {
        Endpoint::Whip => Direction::SendOnly,
        Endpoint::Whep => Direction::RecvOnly,
    };
    // A subscriber's `Rtc` accepts every codec the tools know.
    let every_codec = Offer {
        role: PeerRole::Subscriber,
        audio: true,
        video: true,
        simulcast: false,
        codec: VideoCodec::Vp8,
        receive_sections: 1,
    };
    let local = SocketAddr::from(([127, 0, 0, 1], 9));
    let mut rtc =
        offering_rtc(local, &every_codec).map_err(|e| PeerFailure::BadSdp(e.to_string()))?;
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, dir, None, None, None);
    change.add_media(MediaKind::Video, dir, None, None, None);
    let (offer, _pending) = change
        .apply()
        .ok_or_else(|| PeerFailure::BadSdp("nothing to offer".into()))?;
    Ok(offer.to_sdp_string())
}

/// The media sources of a load publisher, for the payload types the answer accepted.
fn publisher_media(
    rtc: &Rtc,
    plan: &PeerPlan,
    config: &SetupConfig,
    mids: Mids,
) -> Result<PeerMedia, PeerFailure> {
    // Random-looking but reproducible starting points per publisher.
    let seed = u64::from(plan.publisher) << 8 | u64::from(plan.generation);
    let mut shape = Shape::new(seed);
    let counter = media::counter_base(plan.publisher);
    let mut tracks = Vec::new();
    if let Some(mid) = mids.audio {
        let pt = accepted_pt(rtc, mid, Codec::Opus)?;
        let source = AudioSource::new(shape.range(0, 30_000) as u16, shape.next_u64() as u32)
            .counted_from(counter)
            .seeded(shape.next_u64())
            .with_dtx(config.dtx);
        tracks.push(SendTrack {
            mid,
            pt,
            layers: vec![SendLayer::new(None, Source::Audio(source))],
        });
    }
    if let Some(mid) = mids.video {
        let pt = accepted_pt(rtc, mid, Codec::Vp8)?;
        let layers = media::layers(config.media.simulcast(), config.video_kbps)
            .into_iter()
            .map(|(layer, kbps)| {
                let rid = layer.rid.map(Rid::from);
                let sizes = FrameSizes::for_bitrate(kbps, config.fps, config.keyframe_interval_s);
                let source = VideoSource::new(
                    layer,
                    sizes,
                    config.fps,
                    shape.range(0, 30_000) as u16,
                    shape.next_u64() as u32,
                )
                .counted_from(counter)
                .varying(shape.next_u64());
                SendLayer::new(rid, Source::Video(source))
            })
            .collect();
        tracks.push(SendTrack { mid, pt, layers });
    }
    Ok(PeerMedia::Publisher {
        sending: Sending::new(tracks),
        stats: None,
    })
}

impl SdpClient for PeerDraft {
    fn create_offer(&mut self) -> Result<String, PeerFailure> {
        let offer = self.offer;
        let (dir, sections) = match offer.role {
            PeerRole::Publisher => (Direction::SendOnly, 1),
            PeerRole::Subscriber => (Direction::RecvOnly, offer.receive_sections.max(1)),
        };
        let mut change = self.rtc.sdp_api();
        if offer.audio {
            for _ in 0..sections {
                let mid = change.add_media(MediaKind::Audio, dir, None, None, None);
                self.mids.audio = self.mids.audio.or(Some(mid));
            }
        }
        if offer.video && offer.role == PeerRole::Subscriber {
            for _ in 0..sections {
                let mid = change.add_media(MediaKind::Video, dir, None, None, None);
                self.mids.video = self.mids.video.or(Some(mid));
            }
        } else if offer.video {
            let simulcast = offer.simulcast.then(|| {
                let mut s = Simulcast::new();
                for rid in VideoLayer::all(true).iter().filter_map(|l| l.rid) {
                    s.add_send_layer(SimulcastLayer::new(rid));
                }
                s
            });
            self.mids.video = Some(change.add_media(MediaKind::Video, dir, None, None, simulcast));
        }
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| PeerFailure::BadSdp("nothing to offer: no audio and no video".into()))?;
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    fn accept_answer(&mut self, answer: &str) -> Result<(), PeerFailure> {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| PeerFailure::Signaling("an answer without an offer".into()))?;
        self.server_sdp = answer.to_string();
        let answer = rewrite_candidates(answer, &self.overrides);
        let answer = SdpAnswer::from_sdp_string(&answer)
            .map_err(|e| PeerFailure::BadSdp(format!("the answer does not parse: {e}")))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| PeerFailure::BadSdp(format!("the answer was refused: {e}")))
    }

    fn answer_offer(&mut self, offer: &str) -> Result<String, PeerFailure> {
        self.server_sdp = offer.to_string();
        let offer_text = rewrite_candidates(offer, &self.overrides);
        let offer = SdpOffer::from_sdp_string(&offer_text)
            .map_err(|e| PeerFailure::BadSdp(format!("the offer does not parse: {e}")))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| PeerFailure::BadSdp(format!("the offer was refused: {e}")))?;
        // The server chose the media lines; remember the first of each kind.
        for (kind, mid) in media_mids(&offer_text) {
            match kind {
                MediaKind::Audio => self.mids.audio = self.mids.audio.or(Some(mid)),
                MediaKind::Video => self.mids.video = self.mids.video.or(Some(mid)),
            }
        }
        Ok(answer.to_sdp_string())
    }
}

/// The `(kind, mid)` of each audio and video section of an SDP, in order.
fn media_mids(sdp: &str) -> Vec<(MediaKind, Mid)> {
    let mut out = Vec::new();
    let mut kind = None;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            kind = match m.split(' ').next() {
                Some("audio") => Some(MediaKind::Audio),
                Some("video") => Some(MediaKind::Video),
                _ => None,
            };
        } else if let (Some(k), Some(mid)) = (kind, line.strip_prefix("a=mid:")) {
            out.push((k, Mid::from(mid.trim())));
            kind = None;
        }
    }
    out
}

/// Rewrites the address of every UDP `a=candidate` line naming an override's `from` to its
/// `to`, keeping everything else byte for byte.
pub fn rewrite_candidates(sdp: &str, overrides: &[(SocketAddr, SocketAddr)]) -> String {
    if overrides.is_empty() {
        return sdp.to_string();
    }
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let (body, ending) = match line.strip_suffix("\r\n") {
            Some(b) => (b, "\r\n"),
            None => match line.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (line, ""),
            },
        };
        match rewrite_candidate_line(body, overrides) {
            Some(rewritten) => {
                out.push_str(&rewritten);
                out.push_str(ending);
            }
            None => out.push_str(line),
        }
    }
    out
}

fn rewrite_candidate_line(line: &str, overrides: &[(SocketAddr, SocketAddr)]) -> Option<String> {
    let rest = line.strip_prefix("a=candidate:")?;
    // foundation component transport priority address port typ ...
    let mut fields: Vec<&str> = rest.split(' ').collect();
    if fields.len() < 6 || !fields[2].eq_ignore_ascii_case("udp") {
        return None;
    }
    let ip: IpAddr = fields[4].parse().ok()?;
    let port: u16 = fields[5].parse().ok()?;
    let from = SocketAddr::new(ip, port);
    let (_, to) = overrides.iter().find(|(f, _)| *f == from)?;
    let (ip, port) = (to.ip().to_string(), to.port().to_string());
    fields[4] = &ip;
    fields[5] = &port;
    Some(format!("a=candidate:{}", fields.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n\
        a=candidate:2 1 udp 2130706431 127.0.0.1 40001 typ host\r\n\
        a=candidate:3 1 tcp 2130706431 127.0.0.1 40000 typ host tcptype passive\r\n\
        a=mid:0\r\n";

    #[test]
    fn overrides_rewrite_only_matching_udp_candidates() {
        let from: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let to: SocketAddr = "127.0.0.2:5555".parse().expect("addr");
        let out = rewrite_candidates(ANSWER, &[(from, to)]);
        assert_eq!(
            out,
            ANSWER.replace(
                "udp 2130706431 127.0.0.1 40000",
                "udp 2130706431 127.0.0.2 5555"
            )
        );
        assert!(
            out.contains("tcp 2130706431 127.0.0.1 40000"),
            "TCP untouched"
        );
        assert!(out.contains("127.0.0.1 40001"), "other ports untouched");
        assert_eq!(rewrite_candidates(ANSWER, &[]), ANSWER);
    }

    #[test]
    fn rewriting_keeps_line_endings_and_ignores_garbage() {
        let from: SocketAddr = "[::1]:9".parse().expect("addr");
        let to: SocketAddr = "127.0.0.1:10".parse().expect("addr");
        let sdp = "a=candidate:1 1 UDP 1 ::1 9 typ host\na=candidate:x\na=candidate:1 1 udp 1 nope 9 typ host";
        let out = rewrite_candidates(sdp, &[(from, to)]);
        assert_eq!(
            out,
            "a=candidate:1 1 UDP 1 127.0.0.1 10 typ host\na=candidate:x\na=candidate:1 1 udp 1 nope 9 typ host"
        );
    }

    #[test]
    fn mids_are_read_per_media_section() {
        let sdp = "v=0\r\nm=video 9 X 96\r\na=mid:v1\r\nm=application 9 X\r\na=mid:d\r\nm=audio 9 X 111\r\na=mid:a0\r\n";
        assert_eq!(
            media_mids(sdp),
            vec![
                (MediaKind::Video, Mid::from("v1")),
                (MediaKind::Audio, Mid::from("a0"))
            ]
        );
    }

    #[test]
    fn identities_are_unique_per_join() {
        let mut plan = PeerPlan {
            id: PeerId(7),
            role: PeerRole::Subscriber,
            room: 0,
            publisher: 0,
            generation: 0,
        };
        let first = plan.identity();
        plan.generation = 1;
        assert_ne!(first, plan.identity());
        assert_eq!(first, "load-sub-7.0");
    }

    #[test]
    fn offers_carry_the_planned_media() {
        let offer = Offer::load(PeerRole::Publisher, MediaModel::AudioVideoSimulcast);
        let route = Route::direct(IpAddr::from([127, 0, 0, 1]));
        let mut client = PeerDraft::bind(&plan(PeerRole::Publisher), &offer, &route).expect("bind");
        let sdp = client.create_offer().expect("offer");
        assert!(sdp.contains("m=audio"), "{sdp}");
        assert!(sdp.contains("m=video"), "{sdp}");
        assert!(sdp.contains("a=simulcast:send q;h;f"), "{sdp}");
        assert!(sdp.contains("a=sendonly"), "{sdp}");
        assert!(!sdp.contains("H264"), "{sdp}");
        assert!(client.accept_answer("garbage").is_err());
    }

    fn plan(role: PeerRole) -> PeerPlan {
        PeerPlan {
            id: PeerId(0),
            role,
            room: 0,
            publisher: 0,
            generation: 0,
        }
    }

    #[test]
    fn a_room_subscriber_offers_a_section_per_other_participant_and_kind() {
        let offer = Offer {
            receive_sections: 4,
            ..Offer::load(PeerRole::Subscriber, MediaModel::AudioVideo)
        };
        let route = Route::direct(IpAddr::from([127, 0, 0, 1]));
        let mut client =
            PeerDraft::bind(&plan(PeerRole::Subscriber), &offer, &route).expect("bind");
        let sdp = client.create_offer().expect("offer");
        assert_eq!(sdp.matches("m=audio").count(), 4, "{sdp}");
        assert_eq!(sdp.matches("m=video").count(), 4, "{sdp}");
        assert_eq!(sdp.matches("a=recvonly").count(), 8, "{sdp}");
        let mids = client.mids();
        assert!(mids.audio.is_some() && mids.video.is_some());
    }

    #[test]
    fn a_publisher_offers_only_its_video_codec() {
        let offer = |codec| {
            let offer = Offer {
                role: PeerRole::Publisher,
                audio: false,
                video: true,
                simulcast: false,
                codec,
                receive_sections: 1,
            };
            let local: SocketAddr = "127.0.0.1:9".parse().expect("addr");
            let mut rtc = offering_rtc(local, &offer).expect("rtc");
            let mut change = rtc.sdp_api();
            change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            let (offer, _pending) = change.apply().expect("an offer");
            offer.to_sdp_string()
        };
        let h264 = offer(VideoCodec::H264);
        assert!(h264.contains("H264/90000"), "{h264}");
        assert!(!h264.contains("VP8/90000"), "{h264}");
        assert!(h264.contains("packetization-mode=1"), "{h264}");
        assert!(!h264.contains("packetization-mode=0"), "{h264}");
        assert!(h264.contains("profile-level-id=42e01f"), "{h264}");

        let vp8 = offer(VideoCodec::Vp8);
        assert!(vp8.contains("VP8/90000"), "{vp8}");
        assert!(!vp8.contains("H264/90000"), "{vp8}");
    }

    #[test]
    fn sample_offers_have_the_endpoint_direction() {
        let whip = sample_offer(Endpoint::Whip).expect("offer");
        assert!(whip.contains("a=sendonly") && !whip.contains("a=recvonly"));
        let whep = sample_offer(Endpoint::Whep).expect("offer");
        assert!(whep.contains("a=recvonly") && !whep.contains("a=sendonly"));
        for sdp in [whip, whep] {
            assert!(
                sdp.contains("H264/90000") && sdp.contains("VP8/90000"),
                "{sdp}"
            );
        }
    }
}
