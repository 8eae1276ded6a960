//! Client peers for the test kit: str0m `Rtc`s in RTP mode that publish test media (audio and
//! VP8-framed video, optionally three simulcast layers) or receive and record what a node
//! sends them. Payloads carry the publisher's tag and layer, so a subscriber can tell whose
//! packet it got.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, Vp8Descriptor};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

/// Audio packet interval.
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Video frame interval.
pub const VIDEO_INTERVAL: Duration = Duration::from_millis(33);
/// Packets per video frame.
pub const PACKETS_PER_FRAME: usize = 2;
/// Video payload size: large enough for the kit's network to lose.
pub const VIDEO_PAYLOAD: usize = 900;
/// Simulcast rids, lowest first.
pub const RIDS: [&str; 3] = ["q", "h", "f"];

/// What a publisher sends.
#[derive(Debug, Clone, Copy)]
pub struct PublishMedia {
    pub audio: bool,
    /// 0 = no video, 1 = one layer, 3 = simulcast q/h/f.
    pub video_layers: usize,
}

/// What a subscriber asks for: one audio slot and this many video slots.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeMedia {
    pub audio: bool,
    pub video_slots: usize,
}

/// One RTP packet a subscriber received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Extended sequence number on the subscriber's stream.
    pub seq: u64,
    pub timestamp: u32,
    /// Tag of the publisher that sent it (see [`Peer::tag`]).
    pub publisher: u32,
    /// Simulcast layer it was sent on (0 without simulcast).
    pub layer: u8,
    /// Video: the VP8 PictureID and TL0PICIDX it arrived with (after any rewrite).
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
    /// From the publisher writing it to this peer reading it, in simulated time.
    pub latency: Duration,
}

#[derive(Debug)]
struct SendLayer {
    rid: Option<Rid>,
    index: u8,
    seq: u64,
    timestamp: u32,
    keyframe_pending: bool,
    paused: bool,
    /// This layer's own VP8 picture numbering, as an encoder keeps it per simulcast layer.
    picture_id: u16,
    tl0_pic_idx: u8,
}

#[derive(Debug)]
struct SendTrack {
    mid: Mid,
    kind: MediaKind,
    pt: Option<Pt>,
    layers: Vec<SendLayer>,
    next: Instant,
}

/// A client peer.
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The kit's time origin: payloads carry their send time as an offset from it.
    origin: Instant,
    pub tag: u32,
    pub rtc: Rtc,
    tracks: Vec<SendTrack>,
    /// A subscriber's receiving mids in offer order (slot order on the node).
    pub recv_mids: Vec<(Mid, MediaKind)>,
    /// What a subscriber received, per mid.
    pub received: HashMap<Mid, Vec<Received>>,
    pub connected: bool,
    pub failed: bool,
    /// Keyframe requests a publisher got from the node.
    pub keyframe_requests: u64,
    /// The audio level (RFC 6464 -dBov, 0 loudest) and voice flag a publisher puts in its audio
    /// packets; `None`: no level extension.
    pub audio_level: Option<(u8, bool)>,
    /// Packets per video frame of each simulcast layer (lowest first; a single-layer track
    /// uses the first): unequal counts give the layers unequal bitrates.
    pub layer_packets: [usize; 3],
    deadline: Option<Instant>,
    /// Time of the latest input.
    now: Instant,
}

impl Peer {
    fn rtc(addr: SocketAddr, now: Instant) -> Rtc {
        // Every peer shares the kit's simulated clock; nothing here reads a real one.
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("a host candidate"));
        rtc
    }

    fn new(
        addr: SocketAddr,
        origin: Instant,
        tag: u32,
        rtc: Rtc,
        tracks: Vec<SendTrack>,
        recv_mids: Vec<(Mid, MediaKind)>,
        now: Instant,
    ) -> Peer {
        Peer {
            addr,
            origin,
            tag,
            rtc,
            tracks,
            recv_mids,
            received: HashMap::new(),
            connected: false,
            failed: false,
            keyframe_requests: 0,
            audio_level: None,
            layer_packets: [PACKETS_PER_FRAME; 3],
            deadline: Some(now),
            now,
        }
    }

    /// A publisher and its offer.
    pub fn publisher(
        addr: SocketAddr,
        tag: u32,
        media: PublishMedia,
        origin: Instant,
        now: Instant,
    ) -> (Peer, String, SdpPendingOffer) {
        let mut rtc = Self::rtc(addr, now);
        let mut change = rtc.sdp_api();
        let mut tracks = Vec::new();
        if media.audio {
            let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            tracks.push((mid, MediaKind::Audio, vec![None]));
        }
        if media.video_layers > 0 {
            let (simulcast, rids) = if media.video_layers > 1 {
                let mut s = Simulcast::new();
                for rid in RIDS {
                    s.add_send_layer(SimulcastLayer::new(rid));
                }
                (Some(s), RIDS.iter().map(|r| Some(Rid::from(*r))).collect())
            } else {
                (None, vec![None])
            };
            let mid =
                change.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast);
            tracks.push((mid, MediaKind::Video, rids));
        }
        let (offer, pending) = change.apply().expect("an offer");
        let tracks = tracks
            .into_iter()
            .map(|(mid, kind, rids)| SendTrack {
                mid,
                kind,
                pt: None,
                layers: rids
                    .into_iter()
                    .enumerate()
                    .map(|(i, rid)| SendLayer {
                        rid,
                        index: i as u8,
                        seq: 1000 * (i as u64 + 1),
                        timestamp: 0,
                        keyframe_pending: true,
                        paused: false,
                        // Far apart per layer (and per publisher), as real encoders' are.
                        picture_id: ((tag as usize * 7 + i * 11_000) % 32_768) as u16,
                        tl0_pic_idx: (tag as u8).wrapping_mul(31).wrapping_add(i as u8 * 85),
                    })
                    .collect(),
                next: now,
            })
            .collect();
        let peer = Self::new(addr, origin, tag, rtc, tracks, Vec::new(), now);
        (peer, offer.to_sdp_string(), pending)
    }

    /// A subscriber and its offer.
    pub fn subscriber(
        addr: SocketAddr,
        tag: u32,
        media: SubscribeMedia,
        origin: Instant,
        now: Instant,
    ) -> (Peer, String, SdpPendingOffer) {
        let mut rtc = Self::rtc(addr, now);
        let mut change = rtc.sdp_api();
        let mut recv_mids = Vec::new();
        if media.audio {
            let mid = change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
            recv_mids.push((mid, MediaKind::Audio));
        }
        for _ in 0..media.video_slots {
            let mid = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
            recv_mids.push((mid, MediaKind::Video));
        }
        let (offer, pending) = change.apply().expect("an offer");
        let peer = Self::new(addr, origin, tag, rtc, Vec::new(), recv_mids, now);
        (peer, offer.to_sdp_string(), pending)
    }

    /// A new offer of the subscriber's connection with `audio` and `video` more receiving
    /// sections (appended: the node's new slots, in this order).
    pub fn add_receivers(&mut self, audio: usize, video: usize) -> (String, SdpPendingOffer) {
        let mut change = self.rtc.sdp_api();
        let kinds = std::iter::repeat_n(MediaKind::Audio, audio)
            .chain(std::iter::repeat_n(MediaKind::Video, video));
        for kind in kinds {
            let mid = change.add_media(kind, Direction::RecvOnly, None, None, None);
            self.recv_mids.push((mid, kind));
        }
        let (offer, pending) = change.apply().expect("an offer");
        (offer.to_sdp_string(), pending)
    }

    /// Take the node's answer.
    pub fn accept_answer(&mut self, pending: SdpPendingOffer, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).expect("the node's answer parses");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("the client takes the answer");
        for track in &mut self.tracks {
            let codec = match track.kind {
                MediaKind::Audio => Codec::Opus,
                MediaKind::Video => Codec::Vp8,
            };
            track.pt = accepted_pt(&self.rtc, track.mid, codec);
        }
    }

    /// Stop (or resume) sending simulcast layer `index` of the video track.
    pub fn pause_layer(&mut self, index: u8, paused: bool) {
        for track in &mut self.tracks {
            for layer in &mut track.layers {
                if track.kind == MediaKind::Video && layer.index == index {
                    layer.paused = paused;
                    layer.keyframe_pending |= !paused;
                }
            }
        }
    }

    /// When this peer next needs [`Peer::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let media = self
            .tracks
            .iter()
            .filter(|t| self.connected && t.pt.is_some())
            .map(|t| t.next)
            .min();
        match (self.deadline, media) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, contents: &[u8]) {
        self.now = now;
        let Ok(contents) = contents.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: self.addr,
                contents,
            },
        );
        if self.rtc.handle_input(input).is_err() {
            self.failed = true;
        }
    }

    /// Time passed: send due media, let str0m run its timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.connected {
            self.send_due(now);
        }
        if self.rtc.handle_input(Input::Timeout(now)).is_err() {
            self.failed = true;
        }
    }

    fn send_due(&mut self, now: Instant) {
        let tag = self.tag;
        let origin = self.origin;
        let level = self.audio_level.map(|(level, voice)| ExtensionValues {
            audio_level: Some(-(level.min(127) as i8)),
            voice_activity: Some(voice),
            ..Default::default()
        });
        let layer_packets = self.layer_packets;
        for track in &mut self.tracks {
            let Some(pt) = track.pt else { continue };
            while track.next <= now {
                let at = track.next;
                let sent = at.saturating_duration_since(origin).as_micros() as u64;
                let (interval, ticks) = match track.kind {
                    MediaKind::Audio => (AUDIO_INTERVAL, 960),
                    MediaKind::Video => (VIDEO_INTERVAL, 3000),
                };
                track.next += interval;
                for layer in track.layers.iter_mut().filter(|l| !l.paused) {
                    layer.timestamp = layer.timestamp.wrapping_add(ticks);
                    let packets = match track.kind {
                        MediaKind::Audio => 1,
                        MediaKind::Video => layer_packets[usize::from(layer.index).min(2)],
                    };
                    let keyframe = std::mem::take(&mut layer.keyframe_pending);
                    if track.kind == MediaKind::Video {
                        layer.picture_id = (layer.picture_id + 1) % 32_768;
                        layer.tl0_pic_idx = layer.tl0_pic_idx.wrapping_add(1);
                    }
                    for i in 0..packets {
                        layer.seq += 1;
                        let payload = match track.kind {
                            MediaKind::Audio => media_payload(&[], tag, layer.index, sent, 60),
                            MediaKind::Video => {
                                // VP8 payload descriptor (RFC 7741), as Chrome writes
                                // it: X, and S=1 on the frame's first packet; I, L and T;
                                // a 15-bit PictureID, TL0PICIDX, TID 0; then the VP8
                                // header whose P bit is 0 on a keyframe.
                                let first = if i == 0 { 0x90 } else { 0x80 };
                                let header = if keyframe { 0x00 } else { 0x01 };
                                let id = layer.picture_id;
                                media_payload(
                                    &[
                                        first,
                                        0xe0,
                                        0x80 | (id >> 8) as u8,
                                        id as u8,
                                        layer.tl0_pic_idx,
                                        0x00,
                                        header,
                                    ],
                                    tag,
                                    layer.index,
                                    sent,
                                    VIDEO_PAYLOAD,
                                )
                            }
                        };
                        let mut api = self.rtc.direct_api();
                        let Some(tx) = api.stream_tx_by_mid(track.mid, layer.rid) else {
                            continue;
                        };
                        let mut write =
                            RtpWrite::new(pt, layer.seq.into(), layer.timestamp, at, payload)
                                .marker(i + 1 == packets)
                                .nackable(track.kind == MediaKind::Video);
                        if let (MediaKind::Audio, Some(ext)) = (track.kind, &level) {
                            write = write.ext_vals(ext.clone());
                        }
                        tx.write_rtp(write);
                    }
                }
            }
        }
    }

    /// Drain str0m's outputs: datagrams to send go to `transmit`.
    pub fn drain(&mut self, mut transmit: impl FnMut(SocketAddr, Vec<u8>)) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.deadline = Some(t);
                    return;
                }
                Ok(Output::Transmit(t)) => transmit(t.destination, t.contents.into()),
                Ok(Output::Event(event)) => self.handle_event(event),
                Err(_) => {
                    self.failed = true;
                    self.deadline = None;
                    return;
                }
            }
        }
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Connected => self.connected = true,
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.connected = false
            }
            Event::KeyframeRequest(req) => {
                self.keyframe_requests += 1;
                for track in self.tracks.iter_mut().filter(|t| t.mid == req.mid) {
                    for layer in &mut track.layers {
                        if req.rid.is_none() || req.rid == layer.rid {
                            layer.keyframe_pending = true;
                        }
                    }
                }
            }
            Event::RtpPacket(packet) => {
                let mid = self
                    .rtc
                    .direct_api()
                    .stream_rx(&packet.header.ssrc)
                    .map(|s| s.mid());
                let Some(mid) = mid else { return };
                let Some((publisher, layer, sent)) = read_tag(&packet.payload) else {
                    return;
                };
                let vp8 = (packet.payload.first() != Some(&TAG_MAGIC[0]))
                    .then(|| Vp8Descriptor::parse(&packet.payload).ok())
                    .flatten();
                let arrived = self.now.saturating_duration_since(self.origin);
                self.received.entry(mid).or_default().push(Received {
                    seq: *packet.seq_no,
                    timestamp: packet.header.timestamp,
                    publisher,
                    layer,
                    picture_id: vp8.and_then(|d| d.picture_id()),
                    tl0_pic_idx: vp8.and_then(|d| d.tl0_pic_idx()),
                    latency: arrived.saturating_sub(Duration::from_micros(sent)),
                });
            }
            _ => {}
        }
    }

    /// A subscriber asks for a keyframe (PLI) on its `slot`-th receiving track, as a decoder
    /// that lost its picture would. Returns whether str0m had a stream to ask on.
    pub fn request_keyframe(&mut self, slot: usize) -> bool {
        let Some((mid, _)) = self.recv_mids.get(slot).copied() else {
            return false;
        };
        self.rtc
            .direct_api()
            .stream_rx_by_mid(mid, None)
            .map(|s| s.request_keyframe(str0m::media::KeyframeRequestKind::Pli))
            .is_some()
    }

    /// What the subscriber received on its `slot`-th receiving track.
    pub fn received_on(&self, slot: usize) -> &[Received] {
        self.recv_mids
            .get(slot)
            .and_then(|(mid, _)| self.received.get(mid))
            .map_or(&[], Vec::as_slice)
    }
}

/// Marker that starts the tag inside a payload (after any codec header).
const TAG_MAGIC: [u8; 2] = [0xA5, 0x5A];

fn media_payload(header: &[u8], tag: u32, layer: u8, sent: u64, len: usize) -> Arc<[u8]> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(header);
    p.extend_from_slice(&TAG_MAGIC);
    p.extend_from_slice(&tag.to_be_bytes());
    p.push(layer);
    p.extend_from_slice(&sent.to_be_bytes());
    p.resize(len.max(p.len()), 0x42);
    p.into()
}

/// The tag of a payload: at its start (audio), or after the VP8 descriptor and header that
/// [`Peer`] writes (video: 7 bytes, whose PictureID could itself read as the marker).
fn read_tag(payload: &[u8]) -> Option<(u32, u8, u64)> {
    let at = if payload.starts_with(&TAG_MAGIC) {
        0
    } else {
        7
    };
    if payload.get(at..at + 2)? != TAG_MAGIC {
        return None;
    }
    let start = at + 2;
    let tag: [u8; 4] = payload.get(start..start + 4)?.try_into().ok()?;
    let layer = *payload.get(start + 4)?;
    let sent: [u8; 8] = payload.get(start + 5..start + 13)?.try_into().ok()?;
    Some((u32::from_be_bytes(tag), layer, u64::from_be_bytes(sent)))
}

fn accepted_pt(rtc: &Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let media = rtc.media(mid)?;
    media.remote_pts().iter().copied().find(|pt| {
        rtc.codec_config()
            .find(|p| p.pt() == *pt)
            .is_some_and(|p| p.spec().codec == codec)
    })
}
