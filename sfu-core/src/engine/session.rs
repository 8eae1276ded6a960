//! One WebRTC peer on a worker: the str0m `Rtc` plus what forwarding needs to know about it
//! (a publisher's tracks and incoming streams, a subscriber's outgoing tracks and what each
//! one is subscribed to). Every call into str0m goes through [`Session::guard`], which turns
//! a panic inside the WebRTC stack into an error for this session alone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use sfu_proto::{
    AudioLevel, Layer, MediaHeader, NodeError, ParticipantId, RoomId, SessionId, SessionKind,
    SubscribePolicy, TrackId, WorkerId,
};
use str0m::bwe::Bitrate;
use str0m::change::SdpOffer;
use str0m::channel::{ChannelData, ChannelId, Reliability};
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::Frequency;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt, Rid, Rids};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, Ssrc};
use str0m::stats::{MediaEgressStats, MediaIngressStats};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::allocation::{Allocation, Allocator, Grant, Policy};
use super::codec;
use super::data::{DataChannels, DataRefused};
use super::demux;
use super::forward::{MediaPacket, Rewritten, TrackForwarder};
use super::quality::{QualityConfig, QualityScorer};
use super::room::{Subscription, Want};
use crate::ids::RoomKey;
use crate::metrics::FeedbackCounts;

/// Minimum spacing of keyframe requests sent to one publisher layer.
pub const PUBLISHER_KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// How often str0m reports a session's stream statistics, the source of the feedback
/// counters (see [`FeedbackLedger`]). One small event per stream per interval.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Where a subscriber session's bandwidth estimate starts: enough for audio and a low video
/// layer, so a subscriber on a thin link is not flooded before the first feedback; probing
/// finds more within seconds.
pub const INITIAL_ESTIMATE_KBPS: u64 = 300;

/// A change of the bitrates told to str0m's estimator smaller than this fraction is not passed
/// on: a raised desired bitrate may start a probe, and measured layer rates wobble.
const BITRATE_CHANGE: f64 = 0.1;
/// Most video packets a subscriber's stream keeps for resends, whatever their age (str0m's
/// count bound; the time bound is `node.rtx_cache_ms`).
const RTX_CACHE_PACKETS: usize = 1000;
/// Queued resends are dropped when they would make more than this share of a stream's
/// bytes (str0m's default).
const RTX_RATIO_CAP: Option<f32> = Some(0.15);

/// A session's call into str0m panicked or failed fatally.
#[derive(Debug)]
pub struct SessionBroken(pub String);

/// A publisher's incoming stream, learned from its first packet.
#[derive(Debug, Clone)]
struct IngressStream {
    mid: Mid,
    rid: Option<Rid>,
    /// The published track's index (its media section's position in the offer).
    index: u16,
    kind: MediaKind,
    layer: Layer,
    last_timestamp: Option<u32>,
    /// The payload type of the last packet and what it maps to, so that a stream whose
    /// payload type does not change (nearly all) looks its format up once.
    format: Option<(Pt, Option<IngressFormat>)>,
}

/// What a payload type maps to on an incoming stream.
#[derive(Debug, Clone, Copy)]
struct IngressFormat {
    codec: Codec,
    proto: sfu_proto::Codec,
    format: sfu_proto::FormatParams,
    clock_rate: u32,
}

/// A track a publisher sends: one per receiving media section of its offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedMedia {
    pub index: u16,
    pub mid: Mid,
    pub kind: MediaKind,
    /// Simulcast layers the offer announced (1 without simulcast).
    pub layers: u8,
}

/// A subscriber's outgoing track (a "slot"): what it is subscribed to and how it forwards.
#[derive(Debug)]
pub struct EgressTrack {
    pub mid: Mid,
    pub kind: sfu_proto::MediaKind,
    pub subscription: Subscription,
    pub forwarder: TrackForwarder,
    /// What bandwidth allocation lets this track send ([`super::allocation`]).
    pub grant: Grant,
    /// The SSRC str0m sends the track's media on (its resends and padding go on the repair
    /// SSRC, for video when the subscriber offered RTX).
    ssrc: Option<Ssrc>,
    /// Datagrams that left on `ssrc`: str0m's first sends, never a resend or padding.
    sent: u64,
    /// Resends counted so far (see [`Session::egress_feedback`]).
    resent: u64,
    /// Payload type the subscriber negotiated for each codec and format forwarded so far.
    pts: Vec<((sfu_proto::Codec, sfu_proto::FormatParams), Option<Pt>)>,
}

impl EgressTrack {
    /// The subscription as forwarding applies it: the client's, limited by the bandwidth
    /// grant.
    pub fn forwarding(&self) -> Subscription {
        let mut subscription = self.subscription;
        match self.grant {
            Grant::Open => {}
            Grant::Layer(layer) => subscription.max_layer = subscription.max_layer.min(layer),
            Grant::Paused => subscription.paused = true,
        }
        subscription
    }
}

/// What a forwarded packet came to, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    Written,
    Skipped,
    CodecMismatch,
}

/// An SDP offer that parsed. Parsing is cheap next to building a session (DTLS key shares), so
/// the node parses where the request arrives and rejects garbage before it takes a place in
/// the set-up queue.
#[derive(Debug)]
pub struct Offer {
    sdp: SdpOffer,
    /// The offer lists `goog-remb` (a publisher that understands REMB gets our estimate).
    remb: bool,
}

impl Offer {
    /// Parse an offer; the error is the one the client sees (400).
    pub fn parse(sdp: &str) -> Result<Offer, NodeError> {
        let remb = sdp.contains("goog-remb");
        let parsed = catch_unwind(|| SdpOffer::from_sdp_string(sdp))
            .map_err(|panic| {
                NodeError::BadOffer(format!("SDP parser failed: {}", panic_message(&panic)))
            })?
            .map_err(|e| NodeError::BadOffer(format!("SDP does not parse: {e}")))?;
        Ok(Offer { sdp: parsed, remb })
    }
}

/// Who a new session is and where it belongs; everything [`Session::accept`] needs besides
/// the offer.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub id: SessionId,
    pub room: RoomKey,
    pub room_id: RoomId,
    pub kind: SessionKind,
    pub identity: String,
    pub policy: SubscribePolicy,
    /// A subscriber session estimates its downlink and allocates layers by it under this
    /// policy (`node.bandwidth_estimation`, `node.bandwidth_pause`); `None`: no estimation,
    /// the client's subscriptions alone decide.
    pub bandwidth: Option<Policy>,
    /// How long a subscriber's video packets are kept for resends (`node.rtx_cache_ms`).
    pub rtx_cache: Duration,
}

#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub room: RoomKey,
    pub room_id: RoomId,
    pub kind: SessionKind,
    pub identity: String,
    /// Who this session belongs to: a subscriber is never sent its own participant's media
    /// by the "newest other" policy.
    pub participant: ParticipantId,
    policy: SubscribePolicy,
    /// Publication order on the node (set when a worker adopts the session).
    pub order: u64,
    rtc: Rtc,
    pub created: Instant,
    pub last_input: Instant,
    /// ICE + DTLS done; media may flow.
    pub connected: bool,
    /// A datagram from the client has arrived (at least its first STUN check).
    pub contacted: bool,
    /// Next time str0m wants a `Timeout` input (`None` while it is being recomputed).
    pub deadline: Option<Instant>,
    /// A publisher's tracks.
    pub published: Vec<PublishedMedia>,
    ingress: HashMap<Ssrc, IngressStream>,
    keyframe_sent: HashMap<(u16, Layer), Instant>,
    /// A subscriber's outgoing tracks, by slot.
    pub tracks: Vec<EgressTrack>,
    /// The publisher negotiated `goog-remb`: it expects REMB as well as TWCC feedback.
    remb: bool,
    /// Feedback totals str0m has reported so far, to turn them into increments.
    feedback: FeedbackLedger,
    /// The data channels the client opened.
    data: DataChannels,
    /// A subscriber's latest bandwidth estimate (bits per second), once str0m has one.
    pub estimate: Option<u64>,
    /// How long video packets are kept for resends (subscriber sessions).
    rtx_cache: Duration,
    /// A subscriber's bandwidth allocation across its tracks.
    pub allocator: Allocator,
    /// (minimum, desired) bits per second last told to str0m's estimator.
    bwe_bitrates: (u64, u64),
    /// Video tracks the allocation pauses for bandwidth now (counted in the worker's gauge).
    pub bandwidth_paused: u32,
    /// Media was written since the last drain: with estimation on, str0m's pacer learns of it
    /// only in its next `handle_timeout`.
    pub written: bool,
    /// When each packet forwarded to it since its last drain arrived at the node: the drain
    /// hands them to the engine's delay accounting with the datagrams it produced.
    pub unhanded: Vec<Instant>,
    /// How well its media gets through, from str0m's stats (`NodeEvent::Quality`).
    pub quality: QualityScorer,
}

impl Session {
    /// Answer `offer_sdp` with a new ICE-lite session whose only candidate is `candidate_addr`.
    /// Returns the session and the answer SDP. This is the expensive part of session set-up
    /// (SDP parsing, codec negotiation): the node runs it off the media workers.
    pub fn accept(
        spec: SessionSpec,
        offer: Offer,
        candidate_addr: SocketAddr,
        dtls_cert: Option<DtlsCert>,
        initial_seq: impl FnMut() -> u16,
        now: Instant,
    ) -> Result<(Session, String), NodeError> {
        let Offer { sdp, remb } = offer;
        let remb = remb && spec.kind == SessionKind::Publish;
        let result = catch_unwind(AssertUnwindSafe(|| {
            Self::accept_parsed(spec, sdp, candidate_addr, dtls_cert, initial_seq, now)
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

    fn accept_parsed(
        spec: SessionSpec,
        offer: SdpOffer,
        candidate_addr: SocketAddr,
        dtls_cert: Option<DtlsCert>,
        mut initial_seq: impl FnMut() -> u16,
        now: Instant,
    ) -> Result<(Session, String), NodeError> {
        let mut config = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_stats_interval(Some(STATS_INTERVAL));
        // A session that sends media estimates its subscriber's downlink (TWCC: the transport
        // sequence extension and `transport-cc` feedback are in str0m's defaults, so the answer
        // has them when the offer does). str0m then also sends padding, on the RTX SSRC or in
        // spurious resends: retransmissions are counted from its stats, not from that SSRC
        // (see `egress_feedback`).
        if spec.kind == SessionKind::Subscribe && spec.bandwidth.is_some() {
            config = config.enable_bwe(Some(Bitrate::kbps(INITIAL_ESTIMATE_KBPS)));
        }
        if let Some(cert) = dtls_cert {
            config = config.set_dtls_cert(cert);
        }
        speech_opus(&mut config);
        let mut rtc = config.build(now);
        let candidate = Candidate::host(candidate_addr, "udp")
            .map_err(|e| NodeError::SessionFailed(format!("host candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| NodeError::BadOffer(format!("offer not acceptable: {e}")))?;

        let kind = spec.kind;
        let mut session = Session {
            id: spec.id,
            room: spec.room,
            room_id: spec.room_id,
            kind,
            participant: ParticipantId::from_identity(&spec.identity),
            identity: spec.identity,
            policy: spec.policy,
            order: 0,
            rtc,
            created: now,
            last_input: now,
            connected: false,
            contacted: false,
            deadline: None,
            published: Vec::new(),
            ingress: HashMap::new(),
            keyframe_sent: HashMap::new(),
            tracks: Vec::new(),
            remb: false,
            feedback: FeedbackLedger::default(),
            data: DataChannels::new(now),
            estimate: None,
            allocator: Allocator::new(spec.bandwidth.unwrap_or_default()),
            rtx_cache: spec.rtx_cache,
            bwe_bitrates: (0, 0),
            bandwidth_paused: 0,
            written: false,
            unhanded: Vec::new(),
            quality: QualityScorer::new(kind, QualityConfig::default()),
        };

        let answer_sdp = answer.to_sdp_string();
        session.apply_sections(&answer_sdp, &mut initial_seq);
        // A room participant's receiving connection may start with its data channel alone,
        // before there is anything to receive.
        let data_only = kind == SessionKind::Subscribe && answer_sdp.contains("m=application");
        if session.published.is_empty() && session.tracks.is_empty() && !data_only {
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

    /// Take a new offer on this live session (tracks added or removed, ICE restarted). Returns
    /// the answer and the tracks the offer stopped sending (a publisher's sections that are no
    /// longer receiving); new tracks and slots are appended to `published` and `tracks`. A
    /// slot is never removed, so slot numbers stay valid: a slot whose section the client
    /// stopped carries nothing until the client reuses it.
    pub fn renegotiate(
        &mut self,
        offer: Offer,
        mut initial_seq: impl FnMut() -> u16,
    ) -> Result<(String, Vec<PublishedMedia>), NodeError> {
        let Offer { sdp, .. } = offer;
        let answer = self
            .guard(|rtc| rtc.sdp_api().accept_offer(sdp))
            .map_err(|broken| {
                NodeError::SessionFailed(format!("the WebRTC stack failed: {}", broken.0))
            })?
            .map_err(|e| NodeError::BadOffer(format!("offer not acceptable: {e}")))?;
        let answer_sdp = answer.to_sdp_string();
        let removed = self.apply_sections(&answer_sdp, &mut initial_seq);
        Ok((answer_sdp, removed))
    }

    /// Bring the session's tracks and slots in line with an answer it just gave: a publisher
    /// section that receives is a published track, a subscriber section that sends is a slot.
    /// Returns the published tracks whose sections no longer receive (now removed).
    fn apply_sections(
        &mut self,
        answer_sdp: &str,
        initial_seq: &mut impl FnMut() -> u16,
    ) -> Vec<PublishedMedia> {
        let mut removed = Vec::new();
        for (index, mid) in answer_mids(answer_sdp).into_iter().enumerate() {
            let Some(media) = self.rtc.media(mid) else {
                continue; // a data channel section
            };
            let (media_kind, direction) = (media.kind(), media.direction());
            let layers = match media.rids_rx() {
                Rids::Specific(rids) => rids.len().clamp(1, Layer::COUNT) as u8,
                _ => 1,
            };
            let Ok(index) = u16::try_from(index) else {
                break; // more sections than any real client offers
            };
            match self.kind {
                SessionKind::Publish => {
                    let known = self.published.iter().position(|p| p.mid == mid);
                    match (known, direction.is_receiving()) {
                        (None, true) => self.published.push(PublishedMedia {
                            index,
                            mid,
                            kind: media_kind,
                            layers,
                        }),
                        (Some(at), false) => removed.push(self.published.remove(at)),
                        _ => {}
                    }
                }
                SessionKind::Subscribe => {
                    if !direction.is_sending() || self.tracks.iter().any(|t| t.mid == mid) {
                        continue;
                    }
                    // Unpaced: what is forwarded was paced by its publisher already, and a
                    // pacer would hold packets back by the estimate, adding latency; the
                    // estimator still sees every packet, and pads and probes paced.
                    // Video is kept for resends for `rtx_cache` (at most RTX_CACHE_PACKETS)
                    // instead of str0m's 3 s: per subscriber, each packet kept costs its
                    // bookkeeping (the payload is the publisher's, shared).
                    let rtx_cache = self.rtx_cache;
                    let ssrc = self.rtc.direct_api().stream_tx_by_mid(mid, None).map(|s| {
                        s.set_unpaced(true);
                        if media_kind == str0m::media::MediaKind::Video {
                            s.set_rtx_cache(RTX_CACHE_PACKETS, rtx_cache, RTX_RATIO_CAP);
                        }
                        s.ssrc()
                    });
                    let want = match self.policy {
                        SubscribePolicy::Explicit => Want::Nothing,
                        SubscribePolicy::NewestOther => Want::NewestOther,
                        SubscribePolicy::Participant(p) => Want::NewestOf(p),
                    };
                    self.tracks.push(EgressTrack {
                        mid,
                        kind: proto_kind(media_kind),
                        subscription: Subscription::new(want),
                        forwarder: TrackForwarder::new(proto_kind(media_kind), initial_seq()),
                        grant: Grant::Open,
                        ssrc,
                        sent: 0,
                        resent: 0,
                        pts: Vec::new(),
                    });
                }
            }
        }
        removed
    }

    /// Our ICE username fragment (the demux key for new addresses).
    pub fn local_ufrag(&mut self) -> String {
        self.rtc.direct_api().local_ice_credentials().ufrag
    }

    /// Run `f` on the `Rtc`, converting a panic into [`SessionBroken`].
    pub fn guard<T>(&mut self, f: impl FnOnce(&mut Rtc) -> T) -> Result<T, SessionBroken> {
        let rtc = &mut self.rtc;
        guarded(|| f(rtc))
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
        self.contacted = true;
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

    /// What the last `Output::Timeout` is for (for logs).
    pub fn timeout_reason(&self) -> str0m::Reason {
        self.rtc.last_timeout_reason()
    }

    /// Next output of the `Rtc`; `Output::Timeout` ends a drain.
    pub fn poll_output(&mut self) -> Result<Option<Output>, SessionBroken> {
        self.guard(|rtc| rtc.poll_output().ok())
    }

    /// The next output of the `Rtc` that is not a datagram, handing the datagrams before it
    /// (at most `max`) to `send` as they come, counted ([`Session::count_transmit`]). The
    /// drain's path: one panic guard around a run of datagrams, not one per datagram, and no
    /// datagram moved through it. Returns how many went to `send` and what ended the run.
    pub fn poll_until_event(
        &mut self,
        max: usize,
        mut send: impl FnMut(SocketAddr, Vec<u8>),
    ) -> Result<(usize, Polled), SessionBroken> {
        let Self { rtc, tracks, .. } = self;
        let run = || {
            let mut sent = 0;
            while sent < max {
                match rtc.poll_output() {
                    Ok(Output::Transmit(t)) => {
                        count_first_send(tracks, &t.contents);
                        send(t.destination, t.contents.into());
                        sent += 1;
                    }
                    Ok(output) => return (sent, Polled::Output(output)),
                    Err(_) => return (sent, Polled::Failed),
                }
            }
            (sent, Polled::Budget)
        };
        guarded(run)
    }

    /// Note `datagram`, an output of this session, for the retransmission count: an RTP packet
    /// on a track's media SSRC is a first send. Reads the clear-text RTP header only: a few
    /// byte comparisons per datagram.
    pub fn count_transmit(&mut self, datagram: &[u8]) {
        count_first_send(&mut self.tracks, datagram);
    }

    /// The feedback in one of str0m's periodic egress stats events that is new since the
    /// previous event for the same stream, and the packets resent in answer to NACKs since.
    ///
    /// str0m's packet count of a send stream is its first sends plus its NACK resends; padding
    /// (blank packets on the RTX SSRC, or old packets resent unasked to fill a probe) is not in
    /// it. Resends are that count less the first sends seen leaving ([`Session::count_transmit`]).
    /// A send the stats already counted but that has not been seen yet makes the difference
    /// briefly too small, so only growth past the largest difference reported is counted: the
    /// counter may lag by a packet, never count padding or count twice.
    pub fn egress_feedback(&mut self, stats: &MediaEgressStats) -> FeedbackCounts {
        let mut counts = self.feedback.egress(stats);
        if stats.rid.is_none() {
            if let Some(track) = self.tracks.iter_mut().find(|t| t.mid == stats.mid) {
                let resent = stats.packets.saturating_sub(track.sent);
                counts.retransmissions = resent.saturating_sub(track.resent);
                track.resent = track.resent.max(resent);
            }
        }
        counts
    }

    /// Apply a bandwidth allocation: each changed grant to its track (a paused one stops at
    /// once; a lower or higher layer is switched to at its next keyframe by the forwarder),
    /// and the bitrates to str0m's estimator when they moved by more than [`BITRATE_CHANGE`].
    pub fn apply_allocation(&mut self, allocation: &Allocation) -> Result<(), SessionBroken> {
        for &(slot, grant) in &allocation.changed {
            if let Some(track) = self.tracks.get_mut(slot) {
                if grant == Grant::Paused && track.grant != Grant::Paused {
                    track.forwarder.reset();
                }
                track.grant = grant;
            }
        }
        let wanted = (allocation.minimum_bps, allocation.desired_bps);
        let moved =
            |old: u64, new: u64| old.abs_diff(new) as f64 > BITRATE_CHANGE * old.max(new) as f64;
        if moved(self.bwe_bitrates.0, wanted.0) || moved(self.bwe_bitrates.1, wanted.1) {
            self.bwe_bitrates = wanted;
            self.guard(|rtc| {
                rtc.bwe()
                    .set_bitrate(Bitrate::bps(wanted.0), Bitrate::bps(wanted.1))
            })?;
        }
        Ok(())
    }

    /// As [`Session::egress_feedback`], for an ingress stats event.
    pub fn ingress_feedback(&mut self, stats: &MediaIngressStats) -> FeedbackCounts {
        self.feedback.ingress(stats)
    }

    /// Feedback received since str0m's last stats event, collected before the session ends so
    /// that its last second is counted too. str0m reports only on its stats tick, so the
    /// session's clock is moved on to the next tick (`now + STATS_INTERVAL`) and drained; every
    /// other output is discarded, the session is going. Only egress stats (feedback *received*
    /// from a subscriber) are taken: str0m counts a NACK toward a publisher when it generates
    /// one, and moving the clock on would generate NACKs that are never sent. So a publisher's
    /// NACKs from its last interval before it ends are not counted.
    pub fn final_feedback(&mut self, now: Instant) -> Result<FeedbackCounts, SessionBroken> {
        let mut total = FeedbackCounts::default();
        if !self.connected || self.tracks.is_empty() {
            return Ok(total);
        }
        self.handle_timeout(now + STATS_INTERVAL)?;
        // Bounded, as the worker's drain: at most a few stats events per track come out.
        for _ in 0..10_000 {
            match self.poll_output()? {
                Some(Output::Event(Event::MediaEgressStats(stats))) => {
                    total += self.egress_feedback(&stats);
                }
                Some(Output::Transmit(t)) => self.count_transmit(&t.contents),
                Some(Output::Timeout(_)) | None => break,
                Some(_) => {}
            }
        }
        Ok(total)
    }

    /// The client opened data channel `id` (its DCEP handshake is done). Returns whether the
    /// session uses it and whether it is reliable.
    pub fn data_channel_opened(&mut self, id: ChannelId) -> Result<(bool, bool), SessionBroken> {
        // An out-of-band negotiated channel has no config: take it as reliable, the
        // browsers' default.
        let reliable = self.guard(|rtc| {
            rtc.channel(id)
                .and_then(|c| c.config().map(|c| c.reliability == Reliability::Reliable))
                .unwrap_or(true)
        })?;
        Ok((self.data.opened(id, reliable), reliable))
    }

    pub fn data_channel_closed(&mut self, id: ChannelId) {
        self.data.closed(id);
    }

    /// A data channel message from the client: whether it came reliably and its text.
    pub fn data_received(
        &mut self,
        message: ChannelData,
        now: Instant,
    ) -> Result<(bool, String), DataRefused> {
        self.data.receive(message, now)
    }

    /// Send `text` to the client on its channel of this class (see
    /// [`DataChannels::channel_for`]). The outer error: str0m failed, the session is broken.
    pub fn send_data(
        &mut self,
        reliable: bool,
        text: &str,
    ) -> Result<Result<(), DataRefused>, SessionBroken> {
        let id = match self.data.channel_for(reliable) {
            Ok(id) => id,
            Err(refused) => return Ok(Err(refused)),
        };
        let written =
            self.guard(|rtc| rtc.channel(id).map(|mut c| c.write(false, text.as_bytes())))?;
        Ok(match written {
            Some(Ok(true)) => Ok(()),
            Some(Ok(false)) => Err(DataRefused::BufferFull),
            Some(Err(_)) | None => {
                // The channel went away under us: forget it.
                self.data.closed(id);
                Err(DataRefused::NoChannel)
            }
        })
    }

    pub fn is_alive(&self) -> bool {
        self.rtc.is_alive()
    }

    pub fn disconnect(&mut self) {
        let _ = self.guard(|rtc| rtc.disconnect());
    }

    /// Turn a publisher's decrypted RTP packet into a [`MediaPacket`] for fan-out. `None` for
    /// padding, unknown streams and codecs the node does not forward.
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
        let entry = match self.ingress.get_mut(&ssrc) {
            Some(entry) => entry,
            None => {
                let stream = self.guard(|rtc| {
                    let stream = rtc
                        .direct_api()
                        .stream_rx(&ssrc)
                        .map(|s| (s.mid(), s.rid()))?;
                    let kind = rtc.media(stream.0)?.kind();
                    Some((stream, kind))
                })?;
                let Some(((mid, rid), kind)) = stream else {
                    return Ok(None);
                };
                let Some(published) = self.published.iter().find(|p| p.mid == mid) else {
                    return Ok(None);
                };
                let index = published.index;
                self.ingress.entry(ssrc).or_insert(IngressStream {
                    mid,
                    rid,
                    index,
                    kind,
                    layer: Layer::from_rid(rid.as_deref()),
                    last_timestamp: None,
                    format: None,
                })
            }
        };
        let (index, kind, layer) = (entry.index, entry.kind, entry.layer);
        let frame_start = entry.last_timestamp != Some(packet.header.timestamp);
        entry.last_timestamp = Some(packet.header.timestamp);
        let cached = entry.format.filter(|(p, _)| *p == pt).map(|(_, f)| f);
        let found = match cached {
            Some(found) => found,
            None => {
                let found = self.guard(|rtc| {
                    let params = rtc.codec_config().find(|p| p.pt() == pt)?;
                    let spec = params.spec();
                    Some(IngressFormat {
                        codec: spec.codec,
                        proto: codec::to_proto(spec.codec)?,
                        format: codec::format_to_proto(&spec.format),
                        clock_rate: spec.clock_rate.get(),
                    })
                })?;
                if let Some(entry) = self.ingress.get_mut(&ssrc) {
                    entry.format = Some((pt, found));
                }
                found
            }
        };
        // A payload type without a format, or a codec the node does not forward.
        let Some(IngressFormat {
            codec,
            proto: proto_codec,
            format,
            clock_rate,
        }) = found
        else {
            return Ok(None);
        };
        let keyframe =
            kind == MediaKind::Video && codec::starts_keyframe(codec, &packet.payload, frame_start);
        let ext = &packet.header.ext_vals;
        Ok(Some(MediaPacket {
            room: self.room,
            origin: worker,
            header: MediaHeader {
                track: TrackId {
                    session: self.id,
                    index,
                },
                participant: self.participant,
                kind: proto_kind(kind),
                layer,
                codec: proto_codec,
                format,
                clock_rate,
                seq: *packet.seq_no,
                timestamp: packet.header.timestamp,
                marker: packet.header.marker,
                keyframe,
                audio_level: ext.audio_level.map(|level| AudioLevel {
                    level: level.unsigned_abs().min(127),
                    voice: ext.voice_activity.unwrap_or(false),
                }),
            },
            vp8: codec::vp8_descriptor(proto_codec, &packet.payload),
            payload: packet.payload,
            arrival: now,
        }))
    }

    /// Ask this publisher for a keyframe on one layer of its video track `index`, at most once per
    /// [`PUBLISHER_KEYFRAME_INTERVAL`]. Returns whether a request went out.
    pub fn request_keyframe(
        &mut self,
        index: u16,
        layer: Layer,
        now: Instant,
    ) -> Result<bool, SessionBroken> {
        let key = (index, layer);
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
            .find(|s| s.index == index && s.kind == MediaKind::Video && s.layer == layer)
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
        rewritten: Rewritten,
    ) -> Result<Forwarded, SessionBroken> {
        let header = &packet.header;
        let Some(track) = self.tracks.get(index) else {
            return Ok(Forwarded::Skipped);
        };
        let mid = track.mid;
        let key = (header.codec, header.format);
        let cached = track.pts.iter().find(|(k, _)| *k == key).map(|(_, pt)| *pt);
        let pt = match cached {
            Some(pt) => pt,
            None => {
                let codec = codec::from_proto(header.codec);
                let format = codec::format_from_proto(&header.format);
                let pt = self.guard(|rtc| negotiated_pt(rtc, mid, codec, &format))?;
                if let Some(track) = self.tracks.get_mut(index) {
                    track.pts.push((key, pt));
                }
                pt
            }
        };
        let Some(pt) = pt else {
            return Ok(Forwarded::CodecMismatch);
        };
        let mut write = RtpWrite::new(
            pt,
            rewritten.seq.into(),
            rewritten.timestamp,
            packet.arrival,
            packet.payload.clone(),
        )
        .marker(header.marker)
        .nackable(header.kind == sfu_proto::MediaKind::Video);
        // Each builder call moves the whole write (extension values included): only audio
        // carries values of its own.
        if let Some(level) = header.audio_level {
            write = write.ext_vals(ExtensionValues {
                audio_level: Some(-(level.level.min(127) as i8)),
                voice_activity: Some(level.voice),
                ..ExtensionValues::default()
            });
        }
        if let (Some(descriptor), Some(picture)) = (&packet.vp8, rewritten.vp8) {
            if let Some(patch) = codec::vp8_patch(descriptor, picture) {
                write = write.vp8_patch(patch);
            }
        }
        self.written = true;
        self.guard(|rtc| match rtc.direct_api().stream_tx_by_mid(mid, None) {
            Some(stream) => {
                stream.write_rtp(write);
                Forwarded::Written
            }
            None => Forwarded::Skipped,
        })
    }
}

/// Run `f`, converting a panic into [`SessionBroken`]: the one guard every call into str0m
/// goes through.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, SessionBroken> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| SessionBroken(panic_message(&p)))
}

/// What ended a run of [`Session::poll_until_event`]. As large as str0m's `Output`, as an
/// `Option<Output>` would be: it is returned once per run, and boxing would allocate there.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Polled {
    /// An output other than a datagram (never `Output::Transmit`).
    Output(Output),
    /// `max` datagrams went out; there may be more.
    Budget,
    /// str0m returned an error: the session is unusable.
    Failed,
}

/// [`Session::count_transmit`] on the tracks alone, so a run can count while str0m is
/// borrowed.
fn count_first_send(tracks: &mut [EgressTrack], datagram: &[u8]) {
    if tracks.is_empty() {
        return;
    }
    let Some(ssrc) = demux::rtp_ssrc(datagram).map(Ssrc::from) else {
        return;
    };
    if let Some(track) = tracks.iter_mut().find(|t| t.ssrc == Some(ssrc)) {
        track.sent += 1;
    }
}

/// str0m's media kind as the protocol's.
pub fn proto_kind(kind: MediaKind) -> sfu_proto::MediaKind {
    match kind {
        MediaKind::Audio => sfu_proto::MediaKind::Audio,
        MediaKind::Video => sfu_proto::MediaKind::Video,
    }
}

/// Feedback totals from str0m's stats, per stream, turned into increments for the worker's
/// counters.
///
/// str0m counts feedback per stream as running totals (`MediaEgressStats::{nacks, plis, firs}`
/// for what a subscriber sent us, `MediaIngressStats::nacks` for what we sent a publisher) and
/// reports them every [`STATS_INTERVAL`]. Summing the live sessions' latest totals would make a
/// counter fall when a session ends; instead each report adds its increase over the stream's
/// previous report to the worker's monotonic counters, and the last partial interval of a
/// closing subscriber is collected by [`Session::final_feedback`]. Nothing here runs per packet.
#[derive(Debug, Default)]
struct FeedbackLedger {
    /// Last reported (NACKs, PLIs, FIRs) received, per outgoing stream.
    egress: Vec<(StreamKey, [u64; 3])>,
    /// Last reported NACKs sent, per incoming stream.
    ingress: Vec<(StreamKey, u64)>,
}

/// A stream as str0m's stats name it.
type StreamKey = (Mid, Option<Rid>);

impl FeedbackLedger {
    fn egress(&mut self, stats: &MediaEgressStats) -> FeedbackCounts {
        let last = entry(&mut self.egress, (stats.mid, stats.rid), [0; 3]);
        let [nacks, plis, firs] = last;
        FeedbackCounts {
            nacks_received: increase(nacks, stats.nacks),
            plis_received: increase(plis, stats.plis),
            firs_received: increase(firs, stats.firs),
            ..FeedbackCounts::default()
        }
    }

    fn ingress(&mut self, stats: &MediaIngressStats) -> FeedbackCounts {
        let last = entry(&mut self.ingress, (stats.mid, stats.rid), 0);
        FeedbackCounts {
            nacks_sent: increase(last, stats.nacks),
            ..FeedbackCounts::default()
        }
    }
}

/// The value kept for `key`, inserted as `initial` on first sight (a session has a handful of
/// streams: a scan beats a map).
fn entry<K: PartialEq, V>(entries: &mut Vec<(K, V)>, key: K, initial: V) -> &mut V {
    let index = match entries.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            entries.push((key, initial));
            entries.len() - 1
        }
    };
    &mut entries[index].1
}

/// How much a running total grew since `last`, which becomes `total`. A total below `last`
/// (str0m replaced the stream, or dropped one of the SSRCs it sums) counts nothing: from
/// there on the counter follows the new total, so nothing is ever counted twice.
fn increase(last: &mut u64, total: u64) -> u64 {
    let grown = total.saturating_sub(*last);
    *last = total;
    grown
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

/// Starting sequence numbers for new outgoing tracks: a xorshift stream from `seed`, so that
/// a subscriber's streams do not start at predictable numbers and tests can fix them.
pub fn sequence_starts(seed: u64) -> impl FnMut() -> u16 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u16
    }
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

/// Opus as the answer offers it: in-band FEC (a lost packet is rebuilt from the next one's
/// redundancy) and DTX (a silent microphone sends a comfort-noise frame every 400 ms instead
/// of 50 packets/s; most of a voice channel's microphones are silent at any time). The answer
/// carries our format parameters, so the publisher's encoder follows them. The other codecs
/// are str0m's defaults, in str0m's order.
fn speech_opus(config: &mut RtcConfig) {
    let codecs = config.codec_config();
    codecs.clear();
    codecs.add_config(
        Pt::from(111),
        None,
        Codec::Opus,
        Frequency::FORTY_EIGHT_KHZ,
        Some(2),
        FormatParams {
            min_p_time: Some(10),
            use_inband_fec: Some(true),
            use_dtx: Some(true),
            ..Default::default()
        },
    );
    codecs.enable_vp8(true);
    codecs.enable_h264(true);
    codecs.enable_h265(true);
    codecs.enable_vp9(true);
    codecs.enable_av1(true);
}

#[cfg(test)]
// Tests take a real instant as the origin of their simulated time.
#[allow(clippy::disallowed_methods)]
mod tests {
    use sfu_proto::SubscribePolicy;
    use str0m::change::SdpAnswer;
    use str0m::media::Direction;

    use super::*;

    fn spec(kind: SessionKind) -> SessionSpec {
        SessionSpec {
            id: SessionId::from_u128(1),
            room: RoomKey(1),
            room_id: "r".parse().expect("room"),
            kind,
            identity: "test".into(),
            policy: SubscribePolicy::NewestOther,
            bandwidth: Some(Policy::default()),
            rtx_cache: Duration::from_secs(1),
        }
    }

    const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const CLIENT: SocketAddr = SocketAddr::new(LOCALHOST, 5000);
    const SERVER: SocketAddr = SocketAddr::new(LOCALHOST, 6000);
    /// Simulated time per step of a [`Link`].
    const TICK: Duration = Duration::from_millis(5);

    /// A publisher's microphone is answered with Opus FEC and DTX, so its encoder uses both.
    #[test]
    fn a_publisher_answer_asks_opus_for_fec_and_dtx() {
        let now = Instant::now();
        let mut client = Rtc::builder().set_rtp_mode(true).build(now);
        client.add_local_candidate(Candidate::host(CLIENT, "udp").expect("host candidate"));
        let mut change = client.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, _pending) = change.apply().expect("an offer");
        let (_session, answer) = Session::accept(
            spec(SessionKind::Publish),
            Offer::parse(&offer.to_sdp_string()).expect("the offer parses"),
            SERVER,
            None,
            || 100,
            now,
        )
        .expect("the offer is accepted");
        let opus_fmtp = answer
            .lines()
            .find(|l| l.starts_with("a=fmtp:111 "))
            .unwrap_or_else(|| panic!("no Opus fmtp in the answer:\n{answer}"));
        assert!(opus_fmtp.contains("useinbandfec=1"), "{opus_fmtp}");
        assert!(opus_fmtp.contains("usedtx=1"), "{opus_fmtp}");
    }

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
            spec(SessionKind::Subscribe),
            Offer::parse(&offer.to_sdp_string()).expect("the offer parses"),
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
        let announced = video_rx.rtx();
        assert!(
            announced.is_some(),
            "no RTX SSRC for video, so the subscriber would never NACK:\n{answer}"
        );
        let audio_rx = api
            .stream_rx_by_mid(audio, None)
            .expect("the answer announces the audio SSRC");
        assert_eq!(audio_rx.rtx(), None, "{answer}");
        // The session sends on the SSRCs it announced, and counts first sends on the main one.
        let mut session = session;
        let sent: Vec<_> = session
            .tracks
            .iter()
            .map(|t| (t.ssrc, t.mid))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(ssrc, mid)| {
                let rtx = session
                    .rtc
                    .direct_api()
                    .stream_tx_by_mid(mid, None)
                    .and_then(|s| s.rtx());
                (ssrc.is_some(), rtx)
            })
            .collect();
        assert_eq!(sent, vec![(true, None), (true, announced)]);
    }

    /// A plain str0m peer (`client`) and one of our sessions on a lossless, zero-delay wire,
    /// on simulated time. Counts from the session's outputs what the worker counts.
    struct Link {
        now: Instant,
        client: Rtc,
        session: Session,
        /// Packets lost on the way to the client.
        loss: Option<Loss>,
        feedback: FeedbackCounts,
        /// Datagrams the session sent on an RTX SSRC: resends and padding.
        rtx_datagrams: u64,
        /// The client's own stats: NACKs it sent (ingress) and received (egress).
        client_nacks_sent: u64,
        client_nacks_received: u64,
    }

    /// RTP packets on `ssrc` toward the client are counted from 0; those at `positions` are lost.
    struct Loss {
        ssrc: Ssrc,
        positions: Vec<u64>,
        seen: u64,
    }

    /// Which end of a [`Link`] writes media.
    #[derive(Clone, Copy)]
    enum Writer {
        Client,
        Session,
    }

    impl Link {
        /// Connect a client offering `media` to a new session of `kind`; returns the mids.
        fn connect(kind: SessionKind, media: &[(MediaKind, Direction)]) -> (Link, Vec<Mid>) {
            let now = Instant::now();
            let mut client = Rtc::builder()
                .set_rtp_mode(true)
                .set_stats_interval(Some(STATS_INTERVAL))
                .build(now);
            client.add_local_candidate(Candidate::host(CLIENT, "udp").expect("host candidate"));
            let mut change = client.sdp_api();
            let mids: Vec<Mid> = media
                .iter()
                .map(|(kind, dir)| change.add_media(*kind, *dir, None, None, None))
                .collect();
            let (offer, pending) = change.apply().expect("an offer");
            let (session, answer) = Session::accept(
                spec(kind),
                Offer::parse(&offer.to_sdp_string()).expect("the offer parses"),
                SERVER,
                None,
                || 1000,
                now,
            )
            .expect("the offer is accepted");
            let answer = SdpAnswer::from_sdp_string(&answer).expect("the answer parses");
            client
                .sdp_api()
                .accept_answer(pending, answer)
                .expect("the client takes the answer");
            let mut link = Link {
                now,
                client,
                session,
                loss: None,
                feedback: FeedbackCounts::default(),
                rtx_datagrams: 0,
                client_nacks_sent: 0,
                client_nacks_received: 0,
            };
            link.run_for(Duration::from_millis(200));
            assert!(link.session.connected, "ICE + DTLS did not complete");
            (link, mids)
        }

        fn run_for(&mut self, duration: Duration) {
            let until = self.now + duration;
            while self.now < until {
                self.now += TICK;
                self.client
                    .handle_input(Input::Timeout(self.now))
                    .expect("client timeout");
                self.session.handle_timeout(self.now).expect("no panic");
                self.exchange();
            }
        }

        /// Deliver datagrams both ways until both ends are quiet.
        fn exchange(&mut self) {
            while self.drain_client() + self.drain_session() > 0 {}
        }

        fn drain_client(&mut self) -> usize {
            let mut sent = 0;
            loop {
                match self.client.poll_output().expect("client output") {
                    Output::Timeout(_) => return sent,
                    Output::Transmit(t) => {
                        sent += 1;
                        let accepted = self
                            .session
                            .handle_datagram(self.now, CLIENT, SERVER, &t.contents)
                            .expect("no panic");
                        assert!(accepted, "the session refused a datagram");
                    }
                    Output::Event(Event::MediaIngressStats(s)) => self.client_nacks_sent = s.nacks,
                    Output::Event(Event::MediaEgressStats(s)) => {
                        self.client_nacks_received = s.nacks
                    }
                    Output::Event(_) => {}
                }
            }
        }

        /// As the worker's drain: count retransmissions and fold stats into `feedback`.
        fn drain_session(&mut self) -> usize {
            let mut sent = 0;
            loop {
                match self.session.poll_output().expect("no panic") {
                    None | Some(Output::Timeout(_)) => return sent,
                    Some(Output::Transmit(t)) => {
                        sent += 1;
                        self.session.count_transmit(&t.contents);
                        let ssrc = demux::rtp_ssrc(&t.contents).map(Ssrc::from);
                        let rtx = |s: &mut Session| -> Vec<Option<Ssrc>> {
                            let mids: Vec<Mid> = s.tracks.iter().map(|t| t.mid).collect();
                            let mut api = s.rtc.direct_api();
                            mids.into_iter()
                                .map(|mid| api.stream_tx_by_mid(mid, None).and_then(|s| s.rtx()))
                                .collect()
                        };
                        if ssrc.is_some() && rtx(&mut self.session).contains(&ssrc) {
                            self.rtx_datagrams += 1;
                        }
                        if self.loses(&t.contents) {
                            continue;
                        }
                        let input = Input::Receive(
                            self.now,
                            Receive {
                                proto: Protocol::Udp,
                                source: SERVER,
                                destination: CLIENT,
                                contents: (&t.contents[..]).try_into().expect("a datagram"),
                            },
                        );
                        self.client.handle_input(input).expect("client input");
                    }
                    Some(Output::Event(Event::Connected)) => self.session.connected = true,
                    Some(Output::Event(Event::MediaEgressStats(s))) => {
                        self.feedback += self.session.egress_feedback(&s);
                    }
                    Some(Output::Event(Event::MediaIngressStats(s))) => {
                        self.feedback += self.session.ingress_feedback(&s);
                    }
                    Some(Output::Event(_)) => {}
                }
            }
        }

        fn loses(&mut self, datagram: &[u8]) -> bool {
            let Some(loss) = &mut self.loss else {
                return false;
            };
            if demux::rtp_ssrc(datagram).map(Ssrc::from) != Some(loss.ssrc) {
                return false;
            }
            loss.seen += 1;
            loss.positions.contains(&(loss.seen - 1))
        }

        /// Write `count` VP8 packets numbered from `first`, one per 20 ms, on the `writer`'s
        /// stream for `mid`, skipping the sequence numbers in `skip`.
        fn write_video(&mut self, writer: Writer, mid: Mid, first: u64, count: u64, skip: &[u64]) {
            for seq in first..first + count {
                if !skip.contains(&seq) {
                    let now = self.now;
                    let rtc = match writer {
                        Writer::Client => &mut self.client,
                        Writer::Session => &mut self.session.rtc,
                    };
                    let pt = negotiated_pt(rtc, mid, Codec::Vp8, &FormatParams::default())
                        .expect("VP8 negotiated");
                    let write =
                        RtpWrite::new(pt, seq.into(), seq as u32 * 3000, now, vec![7u8; 200])
                            .marker(true)
                            .nackable(true);
                    rtc.direct_api()
                        .stream_tx_by_mid(mid, None)
                        .expect("a video send stream")
                        .write_rtp(write);
                }
                self.run_for(Duration::from_millis(20));
            }
        }
    }

    /// The drain's run hands datagrams over as they come, at most its budget per call, and
    /// counts each first send of a track; a run never ends at a datagram.
    #[test]
    fn a_run_hands_over_datagrams_up_to_its_budget() {
        let (mut link, mids) = Link::connect(
            SessionKind::Subscribe,
            &[(MediaKind::Video, Direction::RecvOnly)],
        );
        let video = mids[0];
        link.exchange();
        let ssrc = link.session.tracks[0].ssrc.expect("the video track's SSRC");
        let first_sends = link.session.tracks[0].sent;
        let pt = negotiated_pt(
            &link.session.rtc,
            video,
            Codec::Vp8,
            &FormatParams::default(),
        )
        .expect("VP8 negotiated");
        for seq in 1..=5_u64 {
            let write = RtpWrite::new(pt, seq.into(), 3000, link.now, vec![7u8; 200]);
            link.session
                .rtc
                .direct_api()
                .stream_tx_by_mid(video, None)
                .expect("a video send stream")
                .write_rtp(write);
        }
        link.session.handle_timeout(link.now).expect("no panic");

        // A budget of one: every datagram ends its run; str0m's timeouts are served as the
        // engine serves them (its pacer releases packets at timeouts).
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut budget_spent = 0;
        let media = |got: &[Vec<u8>]| {
            got.iter()
                .filter(|d| demux::rtp_ssrc(d).map(Ssrc::from) == Some(ssrc))
                .count()
        };
        for _ in 0..1000 {
            let before = got.len();
            let (sent, next) = link
                .session
                .poll_until_event(1, |_, d| got.push(d))
                .expect("no panic");
            assert_eq!(got.len(), before + sent);
            match next {
                Polled::Budget => {
                    assert_eq!(sent, 1);
                    budget_spent += 1;
                }
                Polled::Output(Output::Timeout(t)) => {
                    assert_eq!(sent, 0, "a run that sent would have ended at its budget");
                    if media(&got) == 5 {
                        break;
                    }
                    link.now = link.now.max(t);
                    link.session.handle_timeout(link.now).expect("no panic");
                }
                Polled::Output(Output::Transmit(_)) => panic!("a run ended at a datagram"),
                Polled::Output(_) => {}
                Polled::Failed => panic!("the session failed"),
            }
        }
        assert_eq!(budget_spent, got.len(), "each datagram ended a run of one");
        assert_eq!(media(&got), 5, "every packet written went out once");
        assert_eq!(link.session.tracks[0].sent, first_sends + 5);
    }

    /// A subscriber that loses video packets NACKs them; the session resends each once on the
    /// RTX SSRC, and its stats count every NACK message the subscriber sent. The session's
    /// bandwidth estimation also sends padding on the RTX SSRC: the retransmission count is
    /// exactly the four resends all the same. A PLI right before the session ends is counted
    /// by `final_feedback`, before any stats tick.
    #[test]
    fn a_subscriber_session_counts_nacks_plis_and_retransmissions() {
        let (mut link, mids) = Link::connect(
            SessionKind::Subscribe,
            &[
                (MediaKind::Audio, Direction::RecvOnly),
                (MediaKind::Video, Direction::RecvOnly),
            ],
        );
        let video = mids[1];
        let video_ssrc = link
            .session
            .rtc
            .direct_api()
            .stream_tx_by_mid(video, None)
            .expect("video send stream")
            .ssrc();
        link.loss = Some(Loss {
            ssrc: video_ssrc,
            positions: vec![5, 12, 13, 30],
            seen: 0,
        });
        link.write_video(Writer::Session, video, 1, 50, &[]);
        link.run_for(STATS_INTERVAL * 2);
        assert_eq!(
            link.feedback.retransmissions, 4,
            "one resend per lost packet"
        );

        // The estimator is asked to sustain more than the media: it pads on the RTX SSRC,
        // blank packets and old ones resent unasked. None of that is a retransmission.
        let before = link.rtx_datagrams;
        link.session
            .guard(|rtc| rtc.bwe().set_bitrate(Bitrate::kbps(600), Bitrate::mbps(1)))
            .expect("no panic");
        link.write_video(Writer::Session, video, 51, 50, &[]);
        link.run_for(STATS_INTERVAL * 2);

        assert!(
            link.rtx_datagrams > before + 50,
            "the estimator padded on the RTX SSRC ({} datagrams there), so the count is tested",
            link.rtx_datagrams - before
        );
        assert!(link.client_nacks_sent > 0, "the client never NACKed");
        assert_eq!(
            link.feedback,
            FeedbackCounts {
                nacks_received: link.client_nacks_sent,
                retransmissions: 4,
                ..FeedbackCounts::default()
            },
            "the session must count each NACK the client sent"
        );

        link.client
            .direct_api()
            .stream_rx_by_mid(video, None)
            .expect("video receive stream")
            .request_keyframe(KeyframeRequestKind::Pli);
        link.run_for(TICK * 2);
        let last = link.session.final_feedback(link.now).expect("no panic");
        assert_eq!(
            last,
            FeedbackCounts {
                plis_received: 1,
                ..FeedbackCounts::default()
            }
        );
    }

    /// A publisher's stream with a gap: the session NACKs it (and retries: nothing comes back,
    /// the client never sent those packets), and counts exactly the NACKs the client received.
    #[test]
    fn a_publisher_session_counts_the_nacks_it_sends() {
        let (mut link, mids) = Link::connect(
            SessionKind::Publish,
            &[(MediaKind::Video, Direction::SendOnly)],
        );
        link.write_video(Writer::Client, mids[0], 100, 30, &[110, 111]);
        // Long enough for the session to give up retrying and for both ends' stats to follow.
        link.run_for(STATS_INTERVAL * 4);
        assert!(
            link.feedback.nacks_sent > 0,
            "the session never NACKed the gap"
        );
        assert_eq!(
            link.feedback,
            FeedbackCounts {
                nacks_sent: link.client_nacks_received,
                ..FeedbackCounts::default()
            }
        );
        assert_eq!(link.rtx_datagrams, 0, "a publisher session sends no media");
    }

    fn egress(mid: &str, nacks: u64, plis: u64, firs: u64) -> MediaEgressStats {
        MediaEgressStats {
            mid: Mid::from(mid),
            rid: None,
            bytes: 1,
            packets: 1,
            firs,
            plis,
            nacks,
            rtt: None,
            loss: None,
            timestamp: Instant::now(),
            remote: None,
        }
    }

    /// Running totals become increments per stream; a total that falls (a replaced stream)
    /// counts nothing and becomes the new base.
    #[test]
    fn the_ledger_turns_running_totals_into_increments() {
        let mut ledger = FeedbackLedger::default();
        let got = |nacks_received, plis_received, firs_received| FeedbackCounts {
            nacks_received,
            plis_received,
            firs_received,
            ..FeedbackCounts::default()
        };
        assert_eq!(ledger.egress(&egress("0", 3, 1, 0)), got(3, 1, 0));
        assert_eq!(ledger.egress(&egress("1", 2, 0, 1)), got(2, 0, 1));
        assert_eq!(ledger.egress(&egress("0", 3, 1, 0)), got(0, 0, 0));
        assert_eq!(ledger.egress(&egress("0", 7, 2, 0)), got(4, 1, 0));
        assert_eq!(ledger.egress(&egress("0", 1, 0, 0)), got(0, 0, 0));
        assert_eq!(ledger.egress(&egress("0", 2, 0, 0)), got(1, 0, 0));
        assert_eq!(ledger.egress(&egress("1", 2, 0, 1)), got(0, 0, 0));
    }
}
