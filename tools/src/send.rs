//! The sending half of every synthetic peer (test publisher, load publisher): its tracks, one
//! per m-line with a [`Source`] per rid, written into the peer's `Rtc` when due; keyframe
//! requests routed to the right layer; layers paused at a frame boundary; what was sent.

use std::time::Instant;

use str0m::Rtc;
use str0m::media::{KeyframeRequest, Mid, Pt, Rid};
use str0m::rtp::RtpWrite;

use crate::pattern::PayloadKind;
use crate::source::{OutgoingPacket, Source};

/// One m-line a peer sends: its payload type and a source per rid (one `None` rid without
/// simulcast).
#[derive(Debug)]
pub struct SendTrack {
    pub mid: Mid,
    pub pt: Pt,
    pub layers: Vec<SendLayer>,
}

/// A source and the rid it is sent under.
#[derive(Debug)]
pub struct SendLayer {
    pub rid: Option<Rid>,
    pub source: Source,
    /// Not sending: no new frame starts (frames are written whole, so it stops at a frame end).
    pub paused: bool,
    /// Packets written.
    pub sent: u64,
}

impl SendLayer {
    pub fn new(rid: Option<Rid>, source: Source) -> Self {
        Self {
            rid,
            source,
            paused: false,
            sent: 0,
        }
    }
}

/// What a sending peer has sent and been asked for so far.
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
    /// Video layers currently not sending, per layer index.
    pub paused: Vec<bool>,
}

/// What a sending peer writes.
#[derive(Debug)]
pub struct Sending {
    tracks: Vec<SendTrack>,
    keyframe_requests: u64,
    write_failures: u64,
    first_sent_at: Option<Instant>,
}

impl Sending {
    pub fn new(tracks: Vec<SendTrack>) -> Self {
        Self {
            tracks,
            keyframe_requests: 0,
            write_failures: 0,
            first_sent_at: None,
        }
    }

    pub fn layers(&self) -> impl Iterator<Item = &SendLayer> {
        self.tracks.iter().flat_map(|t| &t.layers)
    }

    /// When a source not paused next has something due (`None`: before the first write).
    pub fn next_due(&self) -> Option<Instant> {
        self.layers()
            .filter(|l| !l.paused)
            .filter_map(|l| l.source.next_due())
            .min()
    }

    /// Writes every packet due at `now` into `rtc`. `seen(packet, written)` sees each first;
    /// `written` is false when the `Rtc` has no send stream for its mid and rid (the answer
    /// refused the layer). `scratch` is lent for one frame's packets.
    pub fn write_due(
        &mut self,
        rtc: &mut Rtc,
        now: Instant,
        wallclock_us: u64,
        scratch: &mut Vec<OutgoingPacket>,
        mut seen: impl FnMut(&OutgoingPacket, bool),
    ) {
        for track in &mut self.tracks {
            for layer in track.layers.iter_mut().filter(|l| !l.paused) {
                scratch.clear();
                layer.source.poll(now, wallclock_us, scratch);
                for p in scratch.drain(..) {
                    let mut api = rtc.direct_api();
                    let Some(tx) = api.stream_tx_by_mid(track.mid, layer.rid) else {
                        self.write_failures += 1;
                        seen(&p, false);
                        continue;
                    };
                    layer.sent += 1;
                    self.first_sent_at.get_or_insert(now);
                    seen(&p, true);
                    let video = p.kind == PayloadKind::Video;
                    let write = RtpWrite::new(track.pt, p.seq.into(), p.rtp_time, now, p.payload)
                        .marker(p.marker)
                        .nackable(video);
                    tx.write_rtp(write);
                }
            }
        }
    }

    /// The next frame of every layer the request names is a keyframe.
    pub fn request_keyframe(&mut self, req: &KeyframeRequest) {
        self.keyframe_requests += 1;
        for track in self.tracks.iter_mut().filter(|t| t.mid == req.mid) {
            for layer in &mut track.layers {
                if req.rid.is_none() || req.rid == layer.rid {
                    layer.source.request_keyframe();
                }
            }
        }
    }

    /// Pauses (or resumes) every video layer with pattern index `index`.
    pub fn pause_layer(&mut self, index: u8, paused: bool) {
        for track in &mut self.tracks {
            for layer in &mut track.layers {
                if layer.source.layer() == Some(index) {
                    layer.paused = paused;
                }
            }
        }
    }

    /// What was sent so far; video figures indexed by layer.
    pub fn stats(&self) -> PublisherStats {
        let mut stats = PublisherStats {
            keyframe_requests: self.keyframe_requests,
            write_failures: self.write_failures,
            first_sent_at: self.first_sent_at,
            ..PublisherStats::default()
        };
        for layer in self.layers() {
            let Some(index) = layer.source.layer().map(usize::from) else {
                stats.audio_packets += layer.sent;
                continue;
            };
            let n = stats.video_packets.len().max(index + 1);
            stats.video_packets.resize(n, 0);
            stats.keyframes.resize(n, 0);
            stats.paused.resize(n, false);
            stats.video_packets[index] += layer.sent;
            stats.keyframes[index] = layer.source.keyframes();
            stats.paused[index] = layer.paused;
        }
        stats
    }
}
