//! Setting a peer up, on a signaling thread: its socket and `Rtc`, the [`SdpClient`] the
//! protocol negotiates through, the address overrides a test relay needs, and what media the
//! answer accepted. The result, a [`NewPeer`], is handed to a shard.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use quinn_udp::{UdpSockRef, UdpSocketState};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::{Rtc, RtcError};

use super::media;
use super::protocol::{PeerFailure, Protocol, SdpClient, SessionHandle};
use super::scenario::{MediaModel, Scenario};
use crate::pattern::VideoCodec;
use crate::peer;
use crate::send::{SendLayer, SendTrack, Sending};
use crate::source::{AudioSource, FrameSizes, Shape, Source, VideoLayer, VideoSource};

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

/// What the setup needs besides the plan.
#[derive(Debug, Clone)]
pub struct SetupConfig {
    pub media: MediaModel,
    pub video_kbps: u32,
    pub fps: u32,
    pub keyframe_interval_s: f64,
    pub dtx: bool,
    pub bind_ip: IpAddr,
    /// `(from, to)`: where the server's SDP names candidate `from`, send to `to` instead.
    pub remote_overrides: Arc<[(SocketAddr, SocketAddr)]>,
    /// Subscribers count as joined at their first media packet when the room has publishers,
    /// otherwise when DTLS is up.
    pub room_has_publishers: bool,
}

impl SetupConfig {
    pub fn new(s: &Scenario, bind_ip: IpAddr, overrides: &[(SocketAddr, SocketAddr)]) -> Self {
        Self {
            media: s.media,
            video_kbps: s.video_kbps,
            fps: s.video_fps,
            keyframe_interval_s: s.keyframe_interval_s,
            dtx: s.audio_dtx,
            bind_ip,
            remote_overrides: overrides.into(),
            room_has_publishers: s.publishers > 0,
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
    pub media: NewMedia,
}

/// The media a peer sends or expects, as negotiated.
#[derive(Debug)]
pub enum NewMedia {
    Publisher(Sending),
    Subscriber { expect_media: bool },
}

/// Binds the socket, negotiates through `protocol` and returns the peer ready for a shard.
/// On failure after the server created a session, the session is deleted (best effort).
pub fn setup(
    plan: &PeerPlan,
    config: &SetupConfig,
    protocol: &dyn Protocol,
    room: &str,
) -> Result<NewPeer, PeerFailure> {
    let socket_err = |e: std::io::Error| PeerFailure::Socket(e.to_string());
    let socket = UdpSocket::bind(SocketAddr::new(config.bind_ip, 0)).map_err(socket_err)?;
    socket.set_nonblocking(true).map_err(socket_err)?;
    let local = socket.local_addr().map_err(socket_err)?;
    // Socket options for batched I/O (GRO, packet info); GSO support is probed once.
    let udp = UdpSocketState::new(UdpSockRef::from(&socket)).map_err(socket_err)?;
    let mut rtc = load_rtc(local, plan.role).map_err(|e| PeerFailure::BadSdp(e.to_string()))?;
    let mut client = Negotiation {
        rtc: &mut rtc,
        plan,
        config,
        pending: None,
        audio_mid: None,
        video_mid: None,
    };
    let identity = plan.identity();
    let started = Instant::now();
    let session = match plan.role {
        PeerRole::Publisher => protocol.publish(room, &identity, &mut client)?,
        PeerRole::Subscriber => protocol.subscribe(room, &identity, &mut client)?,
    };
    let (audio_mid, video_mid) = (client.audio_mid, client.video_mid);
    let media = match plan.role {
        PeerRole::Subscriber => Ok(NewMedia::Subscriber {
            expect_media: config.room_has_publishers,
        }),
        PeerRole::Publisher => publisher_media(&rtc, plan, config, audio_mid, video_mid),
    };
    let media = match media {
        Ok(m) => m,
        Err(e) => {
            let _ = protocol.leave(&session);
            return Err(e);
        }
    };
    Ok(NewPeer {
        plan: plan.clone(),
        socket,
        udp,
        local,
        rtc,
        started,
        session,
        media,
    })
}

/// The `Rtc` of a load peer: the offering, ICE-controlling side, RTP mode, one host
/// candidate. Publishers offer Opus and VP8 only, so the answer cannot pick another codec
/// for the VP8-framed payloads; subscribers take what the server sends.
fn load_rtc(local: SocketAddr, role: PeerRole) -> Result<Rtc, RtcError> {
    match role {
        PeerRole::Subscriber => peer::client_rtc(local),
        PeerRole::Publisher => peer::sending_rtc(local, VideoCodec::Vp8),
    }
}

/// The media sources of a publisher, for the payload types the answer accepted.
fn publisher_media(
    rtc: &Rtc,
    plan: &PeerPlan,
    config: &SetupConfig,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
) -> Result<NewMedia, PeerFailure> {
    // Random-looking but reproducible starting points per publisher.
    let seed = u64::from(plan.publisher) << 8 | u64::from(plan.generation);
    let mut shape = Shape::new(seed);
    let counter = media::counter_base(plan.publisher);
    let mut tracks = Vec::new();
    if let Some(mid) = audio_mid {
        let pt = negotiated_pt(rtc, mid, Codec::Opus)?;
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
    if let Some(mid) = video_mid {
        let pt = negotiated_pt(rtc, mid, Codec::Vp8)?;
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
    Ok(NewMedia::Publisher(Sending::new(tracks)))
}

/// The payload type the answer accepted for `codec` on `mid`.
fn negotiated_pt(rtc: &Rtc, mid: Mid, codec: Codec) -> Result<Pt, PeerFailure> {
    peer::accepted_pt(rtc, mid, codec).map_err(PeerFailure::BadSdp)
}

/// The [`SdpClient`] a protocol drives for one peer.
struct Negotiation<'a> {
    rtc: &'a mut Rtc,
    plan: &'a PeerPlan,
    config: &'a SetupConfig,
    pending: Option<SdpPendingOffer>,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
}

impl SdpClient for Negotiation<'_> {
    fn create_offer(&mut self) -> Result<String, PeerFailure> {
        let media = self.config.media;
        let dir = match self.plan.role {
            PeerRole::Publisher => Direction::SendOnly,
            PeerRole::Subscriber => Direction::RecvOnly,
        };
        let mut change = self.rtc.sdp_api();
        if media.has_audio() {
            self.audio_mid = Some(change.add_media(MediaKind::Audio, dir, None, None, None));
        }
        if media.has_video() {
            let simulcast =
                (self.plan.role == PeerRole::Publisher && media.simulcast()).then(|| {
                    let mut s = Simulcast::new();
                    for rid in VideoLayer::all(true).iter().filter_map(|l| l.rid) {
                        s.add_send_layer(SimulcastLayer::new(rid));
                    }
                    s
                });
            self.video_mid = Some(change.add_media(MediaKind::Video, dir, None, None, simulcast));
        }
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| PeerFailure::BadSdp("nothing to offer".into()))?;
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    fn accept_answer(&mut self, answer: &str) -> Result<(), PeerFailure> {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| PeerFailure::Signaling("an answer without an offer".into()))?;
        let answer = rewrite_candidates(answer, &self.config.remote_overrides);
        let answer = SdpAnswer::from_sdp_string(&answer)
            .map_err(|e| PeerFailure::BadSdp(format!("the answer does not parse: {e}")))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| PeerFailure::BadSdp(format!("the answer was refused: {e}")))
    }

    fn answer_offer(&mut self, offer: &str) -> Result<String, PeerFailure> {
        let offer_text = rewrite_candidates(offer, &self.config.remote_overrides);
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
                MediaKind::Audio => self.audio_mid = self.audio_mid.or(Some(mid)),
                MediaKind::Video => self.video_mid = self.video_mid.or(Some(mid)),
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
        let config = SetupConfig {
            media: MediaModel::AudioVideoSimulcast,
            video_kbps: 1000,
            fps: 30,
            keyframe_interval_s: 3.0,
            dtx: false,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            remote_overrides: Arc::from(Vec::new()),
            room_has_publishers: true,
        };
        let plan = PeerPlan {
            id: PeerId(0),
            role: PeerRole::Publisher,
            room: 0,
            publisher: 0,
            generation: 0,
        };
        let local: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let mut rtc = load_rtc(local, plan.role).expect("rtc");
        let mut client = Negotiation {
            rtc: &mut rtc,
            plan: &plan,
            config: &config,
            pending: None,
            audio_mid: None,
            video_mid: None,
        };
        let offer = client.create_offer().expect("offer");
        assert!(offer.contains("m=audio"), "{offer}");
        assert!(offer.contains("m=video"), "{offer}");
        assert!(offer.contains("a=simulcast:send q;h;f"), "{offer}");
        assert!(offer.contains("a=sendonly"), "{offer}");
        assert!(!offer.contains("H264"), "{offer}");
        assert!(client.accept_answer("garbage").is_err());
    }
}
