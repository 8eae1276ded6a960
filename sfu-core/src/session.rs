//! One WebRTC peer on a worker: the str0m `Rtc` plus what the forwarder needs to know about it
//! (a publisher's incoming streams, a subscriber's outgoing tracks). Every call into str0m goes
//! through [`Session::guard`], which turns a panic inside the WebRTC stack into an error for
//! this session alone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, Ssrc};
use str0m::{Candidate, Input, Output, Rtc, RtcConfig};

use crate::api::{NodeError, SessionKind};
use crate::codec;
use crate::forward::{MediaKindKey, MediaPacket, TrackForwarder};
use crate::ids::{Layer, ParticipantId, RoomId, SessionId, WorkerId};

/// Minimum spacing of keyframe requests sent to one publisher layer.
pub const PUBLISHER_KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// A session's call into str0m panicked or failed fatally.
#[derive(Debug)]
pub struct SessionBroken(pub String);

/// A publisher's incoming stream, learned from its first packet.
#[derive(Debug, Clone)]
struct IngressStream {
    mid: Mid,
    rid: Option<Rid>,
    kind: MediaKind,
    layer: Layer,
    last_timestamp: Option<u32>,
}

/// A subscriber's outgoing track.
#[derive(Debug)]
pub struct EgressTrack {
    pub mid: Mid,
    pub forwarder: TrackForwarder,
    /// Payload type the subscriber negotiated for each codec and format forwarded so far.
    pts: Vec<((Codec, FormatParams), Option<Pt>)>,
}

/// What a forwarded packet came to, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    Written,
    Skipped,
    CodecMismatch,
}

#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub room: RoomId,
    pub kind: SessionKind,
    rtc: Rtc,
    pub created: Instant,
    pub last_input: Instant,
    /// ICE + DTLS done; media may flow.
    pub connected: bool,
    /// Next time str0m wants a `Timeout` input (`None` while it is being recomputed).
    pub deadline: Option<Instant>,
    ingress: HashMap<Ssrc, IngressStream>,
    keyframe_sent: HashMap<(MediaKindKey, Layer), Instant>,
    pub tracks: Vec<EgressTrack>,
    /// Who this session belongs to (from the token's identity).
    pub participant: Option<ParticipantId>,
    /// The publisher negotiated `goog-remb`: it expects REMB as well as TWCC feedback.
    remb: bool,
}

impl Session {
    /// Answer `offer_sdp` with a new ICE-lite session whose only candidate is `candidate_addr`.
    /// Returns the session and the answer SDP.
    #[allow(clippy::too_many_arguments)]
    pub fn accept(
        id: SessionId,
        room: RoomId,
        kind: SessionKind,
        offer_sdp: &str,
        candidate_addr: SocketAddr,
        dtls_cert: Option<DtlsCert>,
        initial_seq: impl FnMut() -> u16,
        now: Instant,
    ) -> Result<(Session, String), NodeError> {
        let remb = kind == SessionKind::Publish && offer_sdp.contains("goog-remb");
        let offer = SdpOffer::from_sdp_string(offer_sdp)
            .map_err(|e| NodeError::BadOffer(format!("SDP does not parse: {e}")))?;
        let result = catch_unwind(AssertUnwindSafe(|| {
            Self::accept_parsed(
                id,
                room,
                kind,
                offer,
                candidate_addr,
                dtls_cert,
                initial_seq,
                now,
            )
        }));
        match result {
            Ok(r) => r.map(|(mut session, answer)| {
                session.remb = remb;
                (session, answer)
            }),
            Err(panic) => Err(NodeError::BadOffer(format!(
                "offer rejected by the WebRTC stack: {}",
                panic_message(&panic)
            ))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn accept_parsed(
        id: SessionId,
        room: RoomId,
        kind: SessionKind,
        offer: SdpOffer,
        candidate_addr: SocketAddr,
        dtls_cert: Option<DtlsCert>,
        mut initial_seq: impl FnMut() -> u16,
        now: Instant,
    ) -> Result<(Session, String), NodeError> {
        let mut config = RtcConfig::new().set_ice_lite(true).set_rtp_mode(true);
        if let Some(cert) = dtls_cert {
            config = config.set_dtls_cert(cert);
        }
        let mut rtc = config.build(now);
        let candidate = Candidate::host(candidate_addr, "udp")
            .map_err(|e| NodeError::SessionFailed(format!("host candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| NodeError::BadOffer(format!("offer not acceptable: {e}")))?;

        let mut session = Session {
            id,
            room,
            kind,
            rtc,
            created: now,
            last_input: now,
            connected: false,
            deadline: None,
            ingress: HashMap::new(),
            keyframe_sent: HashMap::new(),
            tracks: Vec::new(),
            remb: false,
            participant: None,
        };

        // Which sections can carry media in our direction?
        let mut usable = 0;
        let answer_sdp = answer.to_sdp_string();
        for mid in answer_mids(&answer_sdp) {
            let Some(media) = session.rtc.media(mid) else {
                continue; // a data channel section
            };
            let (media_kind, direction) = (media.kind(), media.direction());
            match kind {
                SessionKind::Publish if direction.is_receiving() => usable += 1,
                SessionKind::Subscribe if direction.is_sending() => {
                    usable += 1;
                    session.tracks.push(EgressTrack {
                        mid,
                        forwarder: TrackForwarder::new(media_kind, initial_seq()),
                        pts: Vec::new(),
                    });
                }
                _ => {}
            }
        }
        if usable == 0 {
            let what = match kind {
                SessionKind::Publish => {
                    "a WHIP offer needs at least one sendonly or sendrecv audio/video section"
                }
                SessionKind::Subscribe => {
                    "a WHEP offer needs at least one recvonly or sendrecv audio/video section"
                }
            };
            return Err(NodeError::BadOffer(what.to_string()));
        }
        Ok((session, answer_sdp))
    }

    /// Our ICE username fragment (the demux key for new addresses).
    pub fn local_ufrag(&mut self) -> String {
        self.rtc.direct_api().local_ice_credentials().ufrag
    }

    /// Run `f` on the `Rtc`, converting a panic into [`SessionBroken`].
    pub fn guard<T>(&mut self, f: impl FnOnce(&mut Rtc) -> T) -> Result<T, SessionBroken> {
        let rtc = &mut self.rtc;
        catch_unwind(AssertUnwindSafe(|| f(rtc))).map_err(|p| SessionBroken(panic_message(&p)))
    }

    /// Feed one datagram. `Ok(false)` means str0m rejected it (counted by the caller).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) -> Result<bool, SessionBroken> {
        self.last_input = now;
        self.guard(|rtc| {
            let Ok(contents) = datagram.try_into() else {
                return false;
            };
            let input = Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination,
                    contents,
                },
            );
            rtc.handle_input(input).is_ok()
        })
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionBroken> {
        self.guard(|rtc| {
            let _ = rtc.handle_input(Input::Timeout(now));
        })
    }

    /// Next output of the `Rtc`; `Output::Timeout` ends a drain.
    pub fn poll_output(&mut self) -> Result<Option<Output>, SessionBroken> {
        self.guard(|rtc| rtc.poll_output().ok())
    }

    pub fn is_alive(&self) -> bool {
        self.rtc.is_alive()
    }

    pub fn disconnect(&mut self) {
        let _ = self.guard(|rtc| rtc.disconnect());
    }

    /// Turn a publisher's decrypted RTP packet into a [`MediaPacket`] for fan-out.
    pub fn ingress_packet(
        &mut self,
        worker: WorkerId,
        packet: str0m::rtp::RtpPacket,
        now: Instant,
    ) -> Result<Option<MediaPacket>, SessionBroken> {
        if packet.payload.is_empty() {
            return Ok(None); // padding / probing
        }
        let ssrc = packet.header.ssrc;
        let pt = packet.header.payload_type;
        let (stream, params) = self.guard(|rtc| {
            let params = rtc
                .codec_config()
                .find(|p| p.pt() == pt)
                .map(|p| (p.spec().codec, p.spec().format, p.spec().clock_rate.get()));
            let stream = rtc
                .direct_api()
                .stream_rx(&ssrc)
                .map(|s| (s.mid(), s.rid()));
            let kind = stream.and_then(|(mid, _)| rtc.media(mid).map(|m| m.kind()));
            (stream.zip(kind), params)
        })?;
        let Some(((mid, rid), kind)) = stream else {
            return Ok(None);
        };
        let Some((codec, format, clock_rate)) = params else {
            return Ok(None);
        };
        let entry = self.ingress.entry(ssrc).or_insert_with(|| IngressStream {
            mid,
            rid,
            kind,
            layer: Layer::from_rid(rid.as_deref()),
            last_timestamp: None,
        });
        let frame_start = entry.last_timestamp != Some(packet.header.timestamp);
        entry.last_timestamp = Some(packet.header.timestamp);
        let keyframe =
            kind == MediaKind::Video && codec::starts_keyframe(codec, &packet.payload, frame_start);
        let ext = &packet.header.ext_vals;
        Ok(Some(MediaPacket {
            room: self.room,
            source: self.id,
            participant: self.participant,
            source_worker: worker,
            kind,
            layer: entry.layer,
            codec,
            format,
            clock_rate,
            seq: *packet.seq_no,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            keyframe,
            payload: packet.payload,
            arrival: now,
            audio_level: ext
                .audio_level
                .map(|level| (level, ext.voice_activity.unwrap_or(false))),
        }))
    }

    /// Ask this publisher for a keyframe on one video layer, at most once per
    /// [`PUBLISHER_KEYFRAME_INTERVAL`]. Returns whether a request went out.
    pub fn request_keyframe(&mut self, layer: Layer, now: Instant) -> Result<bool, SessionBroken> {
        let key = (MediaKindKey::Video, layer);
        if self
            .keyframe_sent
            .get(&key)
            .is_some_and(|t| now.saturating_duration_since(*t) < PUBLISHER_KEYFRAME_INTERVAL)
        {
            return Ok(false);
        }
        let Some(stream) = self
            .ingress
            .values()
            .find(|s| s.kind == MediaKind::Video && s.layer == layer)
            .cloned()
        else {
            return Ok(false);
        };
        self.keyframe_sent.insert(key, now);
        self.guard(|rtc| {
            rtc.direct_api()
                .stream_rx_by_mid(stream.mid, stream.rid)
                .map(|s| s.request_keyframe(KeyframeRequestKind::Pli))
                .is_some()
        })
    }

    /// Send REMB for every incoming video stream of a publisher that negotiated it. TWCC
    /// feedback (what browsers use when it is negotiated) is generated by str0m itself.
    pub fn send_remb(&mut self, bitrate: str0m::bwe::Bitrate) -> Result<(), SessionBroken> {
        if !self.remb || !self.connected {
            return Ok(());
        }
        let streams: Vec<(Mid, Option<Rid>)> = self
            .ingress
            .values()
            .filter(|s| s.kind == MediaKind::Video)
            .map(|s| (s.mid, s.rid))
            .collect();
        self.guard(|rtc| {
            for (mid, rid) in streams {
                if let Some(s) = rtc.direct_api().stream_rx_by_mid(mid, rid) {
                    s.request_remb(bitrate);
                }
            }
        })
    }

    /// Write one forwarded packet onto the subscriber track `index`.
    pub fn write_forwarded(
        &mut self,
        index: usize,
        packet: &MediaPacket,
        seq: u64,
        timestamp: u32,
    ) -> Result<Forwarded, SessionBroken> {
        let Some(track) = self.tracks.get(index) else {
            return Ok(Forwarded::Skipped);
        };
        let mid = track.mid;
        let cached = track
            .pts
            .iter()
            .find(|(key, _)| *key == (packet.codec, packet.format))
            .map(|(_, pt)| *pt);
        let key = (packet.codec, packet.format);
        let pt = match cached {
            Some(pt) => pt,
            None => {
                let pt = self.guard(|rtc| negotiated_pt(rtc, mid, key.0, &key.1))?;
                if let Some(track) = self.tracks.get_mut(index) {
                    track.pts.push((key, pt));
                }
                pt
            }
        };
        let Some(pt) = pt else {
            return Ok(Forwarded::CodecMismatch);
        };
        let mut ext = ExtensionValues::default();
        if let Some((level, voice)) = packet.audio_level {
            ext.audio_level = Some(level);
            ext.voice_activity = Some(voice);
        }
        let write = RtpWrite::new(
            pt,
            seq.into(),
            timestamp,
            packet.arrival,
            packet.payload.clone(),
        )
        .marker(packet.marker)
        .ext_vals(ext)
        .nackable(packet.kind == MediaKind::Video);
        self.guard(|rtc| match rtc.direct_api().stream_tx_by_mid(mid, None) {
            Some(stream) => {
                stream.write_rtp(write);
                Forwarded::Written
            }
            None => Forwarded::Skipped,
        })
    }
}

/// The subscriber's payload type on `mid` for `codec`, best matching the publisher's format:
/// for H264 the packetization mode must agree (mode 0 cannot carry FU-A/STAP-A), and the
/// same profile is preferred.
fn negotiated_pt(rtc: &Rtc, mid: Mid, codec: Codec, format: &FormatParams) -> Option<Pt> {
    let media = rtc.media(mid)?;
    let config = rtc.codec_config();
    let score = |candidate: &FormatParams| -> Option<u8> {
        if codec == Codec::H264
            && candidate.packetization_mode.unwrap_or(0) != format.packetization_mode.unwrap_or(0)
        {
            return None;
        }
        let profile = u8::from(candidate.profile_level_id == format.profile_level_id);
        let exact = u8::from(candidate == format);
        Some(2 * profile + exact)
    };
    media
        .remote_pts()
        .iter()
        .filter_map(|pt| {
            let params = config.find(|p| p.pt() == *pt && p.spec().codec == codec)?;
            Some((score(&params.spec().format)?, *pt))
        })
        // Highest score; among equals, the subscriber's first preference.
        .fold(None, |best: Option<(u8, Pt)>, (s, pt)| match best {
            Some((b, _)) if b >= s => best,
            _ => Some((s, pt)),
        })
        .map(|(_, pt)| pt)
}

/// Mids of an answer we produced, in order.
fn answer_mids(answer_sdp: &str) -> Vec<Mid> {
    answer_sdp
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(Mid::from)
        .collect()
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use str0m::change::SdpAnswer;
    use str0m::media::Direction;

    use super::*;

    /// A subscriber's str0m sends NACKs only for a stream whose announced SSRC has a repair
    /// (RTX) SSRC next to it, and the SFU can only answer them on one. The answer must pair
    /// the video send stream with an RTX SSRC when the subscriber offered RTX, and leave audio
    /// (Opus, no RTX) without one.
    #[test]
    fn a_subscriber_answer_announces_rtx_for_video_so_the_subscriber_nacks() {
        let now = Instant::now();
        let client_addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        let mut client = Rtc::builder().set_rtp_mode(true).build(now);
        client.add_local_candidate(Candidate::host(client_addr, "udp").expect("host candidate"));
        let mut change = client.sdp_api();
        let audio = change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let video = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change.apply().expect("an offer");

        let (session, answer) = Session::accept(
            SessionId(1),
            RoomId(1),
            SessionKind::Subscribe,
            &offer.to_sdp_string(),
            SocketAddr::from(([127, 0, 0, 1], 6000)),
            None,
            || 100,
            now,
        )
        .expect("the offer is accepted");
        assert_eq!(session.tracks.len(), 2);

        let answer_sdp = SdpAnswer::from_sdp_string(&answer).expect("the answer parses");
        client
            .sdp_api()
            .accept_answer(pending, answer_sdp)
            .expect("the client takes the answer");
        let mut api = client.direct_api();
        let video_rx = api
            .stream_rx_by_mid(video, None)
            .expect("the answer announces the video SSRC");
        assert!(
            video_rx.rtx().is_some(),
            "no RTX SSRC for video, so the subscriber would never NACK:\n{answer}"
        );
        let audio_rx = api
            .stream_rx_by_mid(audio, None)
            .expect("the answer announces the audio SSRC");
        assert_eq!(audio_rx.rtx(), None, "{answer}");
    }
}
