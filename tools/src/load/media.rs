//! The media a load publisher sends and the one thing a load subscriber reads back. Sans-IO:
//! callers pass `Instant`s and wall-clock microseconds.
//!
//! - [`OpusLike`]: a packet every 20 ms of 60-160 bytes, optionally with DTX: silences in which
//!   only a header-sized packet goes out every 400 ms.
//! - [`VideoLayerSource`]: frames at a fixed rate sized for a bitrate, keyframes
//!   [`KEYFRAME_RATIO`] times a delta frame, every frame split into equal-size packets that
//!   the caller sends as one burst (so UDP GSO can send the burst in one system call).
//! - [`decode_header`]: the light receive path, the test-pattern header alone.
//!
//! Every packet carries the [`pattern`] header: a per-stream counter and the send time. The
//! counter's top bits name the publisher ([`counter_base`]), so a subscriber whose track moves
//! from one publisher to another, or between simulcast layers, sees a new stream instead of a
//! jump in one.

use std::time::{Duration, Instant};

use crate::pattern::{
    self, HEADER_LEN, MAGIC, PatternHeader, PayloadKind, VideoCodec, VideoFraming, be_u32, be_u64,
    header_checksum,
};
use crate::source::{AUDIO_INTERVAL, MAX_VIDEO_PAYLOAD, Schedule};

use super::scenario::MediaModel;

/// Bits of a pattern counter below the publisher number.
pub const COUNTER_SHIFT: u32 = 40;

/// First counter of every stream of publisher `publisher` (0-based, run-wide).
pub fn counter_base(publisher: u32) -> u64 {
    (u64::from(publisher) + 1) << COUNTER_SHIFT
}

/// The publisher number a counter belongs to (`None` for counters not made by this module).
pub fn publisher_of(counter: u64) -> Option<u32> {
    let high = counter >> COUNTER_SHIFT;
    (high >= 1 && high <= u64::from(u32::MAX) + 1).then(|| (high - 1) as u32)
}

/// A keyframe is this many times the size of a delta frame of the same layer.
pub const KEYFRAME_RATIO: usize = 5;

/// Audio packets per second.
const AUDIO_PPS: f64 = 50.0;

/// RTP clock ticks per audio packet (48 kHz × 20 ms).
const AUDIO_TICKS: u32 = 960;

/// While silent under DTX, one packet every this many 20 ms ticks (400 ms, as Opus does).
const DTX_SILENCE_EVERY: u64 = 20;

/// Talk spurts and silences under DTX, in 20 ms ticks (1-5 s talking, 0.5-4 s silent).
const DTX_TALK_TICKS: (u64, u64) = (50, 250);
const DTX_SILENCE_TICKS: (u64, u64) = (25, 200);

/// RTP clock rate of video.
const VIDEO_CLOCK: u32 = 90_000;

/// Payload bytes a video packet carries at most (the same bound the test sources use).
pub const MAX_PAYLOAD: usize = MAX_VIDEO_PAYLOAD;

/// One RTP packet to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPacket {
    /// Extended RTP sequence number.
    pub seq: u64,
    pub rtp_time: u32,
    pub marker: bool,
    pub payload: Vec<u8>,
}

/// A small deterministic generator (xorshift64*): media shapes need variety, not quality.
#[derive(Debug, Clone)]
pub struct Shape(u64);

impl Shape {
    pub fn new(seed: u64) -> Self {
        Shape(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Opus-like audio: 20 ms packets of 60-160 bytes; with DTX, talk spurts and silences.
#[derive(Debug, Clone)]
pub struct OpusLike {
    schedule: Schedule,
    counter: u64,
    seq: u64,
    rtp_base: u32,
    shape: Shape,
    dtx: bool,
    /// Under DTX: ticks left in the current spurt or silence, and which it is.
    phase_left: u64,
    talking: bool,
    /// The next packet opens a talk spurt (RTP marker).
    spurt_start: bool,
    silence_tick: u64,
}

impl OpusLike {
    pub fn new(publisher: u32, first_seq: u16, rtp_base: u32, dtx: bool, seed: u64) -> Self {
        let mut shape = Shape::new(seed);
        let phase_left = shape.range(DTX_TALK_TICKS.0, DTX_TALK_TICKS.1);
        Self {
            schedule: Schedule::new(AUDIO_INTERVAL),
            counter: counter_base(publisher),
            seq: u64::from(first_seq),
            rtp_base,
            shape,
            dtx,
            phase_left,
            talking: true,
            spurt_start: true,
            silence_tick: 0,
        }
    }

    /// When the next tick is due; `None` before the first poll.
    pub fn next_due(&self) -> Option<Instant> {
        self.schedule.next_due
    }

    /// The packet due at `now`, if one is. Under DTX, a due tick in a silence usually sends
    /// nothing: the counter only counts sent packets, so receivers see no gap.
    pub fn poll(&mut self, now: Instant, wallclock_us: u64) -> Option<MediaPacket> {
        loop {
            let tick = self.schedule.poll(now)?;
            if let Some(p) = self.tick(tick, wallclock_us) {
                return Some(p);
            }
        }
    }

    fn tick(&mut self, tick: u64, wallclock_us: u64) -> Option<MediaPacket> {
        let body_len = if self.dtx {
            if self.phase_left == 0 {
                self.talking = !self.talking;
                self.phase_left = if self.talking {
                    self.spurt_start = true;
                    self.shape.range(DTX_TALK_TICKS.0, DTX_TALK_TICKS.1)
                } else {
                    self.silence_tick = 0;
                    self.shape.range(DTX_SILENCE_TICKS.0, DTX_SILENCE_TICKS.1)
                };
            }
            self.phase_left -= 1;
            if self.talking {
                self.voice_body_len()
            } else {
                let send = self.silence_tick % DTX_SILENCE_EVERY == 0;
                self.silence_tick += 1;
                if !send {
                    return None;
                }
                // A comfort-noise frame: the pattern header alone.
                0
            }
        } else {
            self.voice_body_len()
        };
        let rtp_time = self
            .rtp_base
            .wrapping_add((tick as u32).wrapping_mul(AUDIO_TICKS));
        let payload = PatternHeader::audio(
            self.counter,
            tick as u32,
            rtp_time,
            wallclock_us,
            body_len as u32,
        )
        .to_payload();
        let marker = std::mem::take(&mut self.spurt_start);
        let packet = MediaPacket {
            seq: self.seq,
            rtp_time,
            marker,
            payload,
        };
        self.counter += 1;
        self.seq += 1;
        Some(packet)
    }

    /// 60-160 payload bytes, mostly 70-110, like Opus voice at 24-48 kbit/s.
    fn voice_body_len(&mut self) -> usize {
        let bytes = if self.shape.range(0, 9) == 0 {
            self.shape.range(110, 160)
        } else {
            self.shape.range(70, 110)
        };
        bytes as usize - HEADER_LEN
    }
}

/// Shape of one video layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// Simulcast rid (`q`, `h`, `f`), `None` without simulcast.
    pub rid: Option<&'static str>,
    /// Layer index written in the test pattern (0 = lowest).
    pub index: u8,
    pub kbps: u32,
    pub dimensions: (u16, u16),
}

/// The layers a publisher sends for a top-layer bitrate: one, or q/h/f at 1/10, 1/3 and all of it.
pub fn layers(simulcast: bool, top_kbps: u32) -> Vec<LayerSpec> {
    if !simulcast {
        return vec![LayerSpec {
            rid: None,
            index: 0,
            kbps: top_kbps,
            dimensions: (1280, 720),
        }];
    }
    [
        ("q", top_kbps / 10, (320, 180)),
        ("h", top_kbps / 3, (640, 360)),
        ("f", top_kbps, (1280, 720)),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (rid, kbps, dimensions))| LayerSpec {
        rid: Some(rid),
        index: i as u8,
        kbps: kbps.max(30),
        dimensions,
    })
    .collect()
}

/// Frame sizes of a layer: delta frames around `delta_bytes`, keyframes [`KEYFRAME_RATIO`]
/// times larger, averaging the layer's bitrate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameSizes {
    pub delta_bytes: usize,
    pub key_bytes: usize,
    /// Frames from one periodic keyframe to the next.
    pub keyframe_every: u32,
}

impl FrameSizes {
    pub fn new(kbps: u32, fps: u32, keyframe_interval_s: f64) -> Self {
        let fps = fps.max(1);
        let avg = f64::from(kbps) * 1000.0 / 8.0 / f64::from(fps);
        let every = ((keyframe_interval_s * f64::from(fps)).round() as u32).max(1);
        let k = f64::from(every);
        // (every - 1) delta frames and one keyframe of RATIO deltas average `avg`.
        let delta = avg * k / (k - 1.0 + KEYFRAME_RATIO as f64);
        let delta_bytes = (delta.round() as usize).max(min_frame_bytes());
        Self {
            delta_bytes,
            key_bytes: delta_bytes * KEYFRAME_RATIO,
            keyframe_every: every,
        }
    }
}

/// The smallest frame: one packet holding the VP8 keyframe header and the pattern header.
fn min_frame_bytes() -> usize {
    pattern::VP8_DESCRIPTOR_LEN + pattern::VP8_KEY_HEADER_LEN + HEADER_LEN
}

/// Packets a frame of `bytes` is split into.
pub fn packets_per_frame(bytes: usize) -> usize {
    bytes.div_ceil(MAX_PAYLOAD).clamp(1, 255)
}

/// One VP8-like video layer: a frame every `1/fps` s, sent as a burst of equal-size packets
/// sharing an RTP timestamp, marker on the last; periodic and requested keyframes.
#[derive(Debug, Clone)]
pub struct VideoLayerSource {
    spec: LayerSpec,
    sizes: FrameSizes,
    schedule: Schedule,
    ticks_per_frame: u32,
    force_keyframe: bool,
    frames_since_keyframe: u32,
    frame: u32,
    counter: u64,
    seq: u64,
    rtp_base: u32,
    shape: Shape,
    keyframes: u64,
}

impl VideoLayerSource {
    pub fn new(
        spec: LayerSpec,
        publisher: u32,
        fps: u32,
        keyframe_interval_s: f64,
        first_seq: u16,
        rtp_base: u32,
        seed: u64,
    ) -> Self {
        let fps = fps.clamp(1, 120);
        let sizes = FrameSizes::new(spec.kbps, fps, keyframe_interval_s);
        Self {
            spec,
            sizes,
            schedule: Schedule::new(Duration::from_secs(1) / fps),
            ticks_per_frame: VIDEO_CLOCK / fps,
            force_keyframe: true,
            frames_since_keyframe: 0,
            frame: 0,
            counter: counter_base(publisher),
            seq: u64::from(first_seq),
            rtp_base,
            shape: Shape::new(seed),
            keyframes: 0,
        }
    }

    pub fn spec(&self) -> &LayerSpec {
        &self.spec
    }

    pub fn sizes(&self) -> FrameSizes {
        self.sizes
    }

    /// When the next frame is due; `None` before the first poll.
    pub fn next_due(&self) -> Option<Instant> {
        self.schedule.next_due
    }

    /// The next frame is a keyframe.
    pub fn request_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    pub fn keyframes(&self) -> u64 {
        self.keyframes
    }

    /// Appends the packets of the frame due at `now` (if one is) to `out`; returns how many.
    pub fn poll_frame(
        &mut self,
        now: Instant,
        wallclock_us: u64,
        out: &mut Vec<MediaPacket>,
    ) -> usize {
        let Some(tick) = self.schedule.poll(now) else {
            return 0;
        };
        let rtp_time = self
            .rtp_base
            .wrapping_add((tick as u32).wrapping_mul(self.ticks_per_frame));
        let keyframe =
            self.force_keyframe || self.frames_since_keyframe >= self.sizes.keyframe_every;
        if keyframe {
            self.force_keyframe = false;
            self.frames_since_keyframe = 0;
            self.keyframes += 1;
        }
        self.frames_since_keyframe += 1;
        let nominal = if keyframe {
            self.sizes.key_bytes
        } else {
            self.sizes.delta_bytes
        };
        // ±10% from frame to frame, as an encoder's output varies.
        let vary = self.shape.range(90, 110) as usize;
        let frame_len = (nominal * vary / 100).max(min_frame_bytes());
        let count = packets_per_frame(frame_len);
        // Equal shares: every packet of the frame has the same payload size.
        let share = frame_len.div_ceil(count).max(min_frame_bytes());
        for index in 0..count {
            let start = index == 0;
            let end = index + 1 == count;
            let mut payload = Vec::with_capacity(share);
            pattern::write_vp8_prefix(
                &mut payload,
                start,
                keyframe,
                frame_len,
                self.spec.dimensions,
            );
            let header = PatternHeader {
                kind: PayloadKind::Video,
                layer: self.spec.index,
                keyframe,
                end_of_frame: end,
                index: index as u8,
                counter: self.counter,
                frame: self.frame,
                rtp_time,
                sent_us: wallclock_us,
                body_len: (share - payload.len() - HEADER_LEN) as u32,
            };
            pattern::encode_pattern(&header, &mut payload);
            out.push(MediaPacket {
                seq: self.seq,
                rtp_time,
                marker: end,
                payload,
            });
            self.counter += 1;
            self.seq += 1;
        }
        self.frame = self.frame.wrapping_add(1);
        count
    }
}

/// What the light receive path needs from a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    pub kind: PayloadKind,
    pub layer: u8,
    pub counter: u64,
    pub sent_us: u64,
}

/// Reads the test-pattern header of an RTP payload (audio, or VP8/H264-framed video) without
/// checking the body: magic, header checksum and length only. `None`: not an intact pattern.
pub fn decode_header(payload: &[u8]) -> Option<PacketInfo> {
    let offset = if payload.starts_with(&MAGIC) {
        0
    } else {
        let framing: VideoFraming = match pattern::sniff_video_codec(*payload.first()?) {
            VideoCodec::Vp8 => pattern::parse_vp8(payload).ok()?,
            VideoCodec::H264 => pattern::parse_h264(payload).ok()?,
        };
        framing.data_offset
    };
    let rest = payload.get(offset..)?;
    let head = rest.get(..HEADER_LEN)?;
    if head[..4] != MAGIC || header_checksum(&head[..36]) != be_u32(&head[36..40]) {
        return None;
    }
    let kind = PayloadKind::from_byte(head[4])?;
    let body_len = be_u32(&head[32..36]) as usize;
    if rest.len() != HEADER_LEN + body_len {
        return None;
    }
    Some(PacketInfo {
        kind,
        layer: head[5],
        counter: be_u64(&head[8..16]),
        sent_us: be_u64(&head[24..32]),
    })
}

/// Average packets per second audio sends: 50, or under DTX the talk share of 50 plus one
/// packet per 400 ms of silence.
pub fn audio_pps(dtx: bool) -> f64 {
    if !dtx {
        return AUDIO_PPS;
    }
    let talk = (DTX_TALK_TICKS.0 + DTX_TALK_TICKS.1) as f64 / 2.0;
    let silence = (DTX_SILENCE_TICKS.0 + DTX_SILENCE_TICKS.1) as f64 / 2.0;
    let talk_share = talk / (talk + silence);
    AUDIO_PPS * (talk_share + (1.0 - talk_share) / DTX_SILENCE_EVERY as f64)
}

/// Average packets per second one publisher sends (all layers, audio included).
pub fn publisher_pps(
    media: MediaModel,
    top_kbps: u32,
    fps: u32,
    keyframe_interval_s: f64,
    dtx: bool,
) -> f64 {
    let audio = if media.has_audio() {
        audio_pps(dtx)
    } else {
        0.0
    };
    if !media.has_video() {
        return audio;
    }
    let video: f64 = layers(media.simulcast(), top_kbps)
        .iter()
        .map(|layer| {
            let sizes = FrameSizes::new(layer.kbps, fps, keyframe_interval_s);
            let k = f64::from(sizes.keyframe_every);
            let per_frame = ((k - 1.0) * packets_per_frame(sizes.delta_bytes) as f64
                + packets_per_frame(sizes.key_bytes) as f64)
                / k;
            per_frame * f64::from(fps.max(1))
        })
        .sum();
    audio + video
}

/// The bitrate that meets a packet-rate target, and how close it came.
#[derive(Debug, Clone, PartialEq)]
pub struct SolvedRate {
    pub kbps: u32,
    /// Packets per second per publisher at `kbps`.
    pub pps: f64,
    /// Why the target could not be met, if it could not.
    pub note: Option<String>,
}

/// The top-layer video bitrate at which one publisher sends closest to `target_pps` packets
/// per second. Packet counts grow in steps (a packet per 1100 bytes of frame), so the result
/// is the nearest step.
pub fn kbps_for_target_pps(
    media: MediaModel,
    fps: u32,
    keyframe_interval_s: f64,
    dtx: bool,
    target_pps: f64,
) -> SolvedRate {
    const MIN_KBPS: u32 = 30;
    const MAX_KBPS: u32 = 50_000;
    let pps = |kbps| publisher_pps(media, kbps, fps, keyframe_interval_s, dtx);
    let (lowest, highest) = (pps(MIN_KBPS), pps(MAX_KBPS));
    if target_pps <= lowest {
        return SolvedRate {
            kbps: MIN_KBPS,
            pps: lowest,
            note: Some(format!(
                "{target_pps:.0} pps per publisher is below the {lowest:.0} pps this media sends at {fps} fps (lower --fps)"
            )),
        };
    }
    if target_pps >= highest {
        return SolvedRate {
            kbps: MAX_KBPS,
            pps: highest,
            note: Some(format!(
                "{target_pps:.0} pps per publisher is above the {highest:.0} pps of {MAX_KBPS} kbps (add publishers)"
            )),
        };
    }
    // Smallest bitrate sending at least the target (pps is non-decreasing in kbps).
    let (mut lo, mut hi) = (MIN_KBPS, MAX_KBPS);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pps(mid) >= target_pps {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let above = (lo, pps(lo));
    let below = (lo - 1, pps(lo - 1));
    let (kbps, pps) = if (above.1 - target_pps).abs() <= (target_pps - below.1).abs() {
        above
    } else {
        below
    };
    SolvedRate {
        kbps,
        pps,
        note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_audio(dtx: bool, secs: u64) -> Vec<MediaPacket> {
        let t0 = Instant::now();
        let mut src = OpusLike::new(3, 100, 5000, dtx, 42);
        let mut out = Vec::new();
        for ms in 0..=secs * 1000 {
            while let Some(p) = src.poll(t0 + Duration::from_millis(ms), 7) {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn audio_sends_every_20ms_with_opus_like_sizes() {
        let packets = run_audio(false, 2);
        assert_eq!(packets.len(), 101, "t = 0, 20, .., 2000 ms");
        for (i, p) in packets.iter().enumerate() {
            assert!((60..=160).contains(&p.payload.len()), "{}", p.payload.len());
            assert_eq!(p.seq, 100 + i as u64);
            assert_eq!(p.rtp_time, 5000 + 960 * i as u32);
            let info = decode_header(&p.payload).expect("intact");
            assert_eq!(info.kind, PayloadKind::Audio);
            assert_eq!(info.counter, counter_base(3) + i as u64);
            assert_eq!(publisher_of(info.counter), Some(3));
            assert_eq!(info.sent_us, 7);
            // The full decoder agrees.
            let full = pattern::decode_payload(PayloadKind::Audio, &p.payload).expect("intact");
            assert_eq!(full.header.counter, info.counter);
        }
        assert!(packets[0].marker);
        assert!(!packets[1].marker);
    }

    #[test]
    fn dtx_silences_send_sparse_packets_without_counter_gaps() {
        let packets = run_audio(true, 30);
        let n = packets.len() as f64;
        // Fewer than the 1501 of continuous audio, about what audio_pps predicts.
        assert!(n < 1400.0, "{n}");
        assert!((n / 30.0 - audio_pps(true)).abs() < 12.0, "{n}");
        let counters: Vec<u64> = packets
            .iter()
            .map(|p| decode_header(&p.payload).expect("intact").counter)
            .collect();
        assert!(counters.windows(2).all(|w| w[1] == w[0] + 1), "no gaps");
        let seqs: Vec<u64> = packets.iter().map(|p| p.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "no gaps");
        // Comfort noise: header-only packets, 400 ms apart in RTP time.
        let tiny: Vec<&MediaPacket> = packets
            .iter()
            .filter(|p| p.payload.len() == HEADER_LEN)
            .collect();
        assert!(tiny.len() >= 5, "{}", tiny.len());
        assert!(
            tiny.windows(2)
                .any(|w| w[1].rtp_time.wrapping_sub(w[0].rtp_time) == 960 * 20)
        );
        // A marker opens each talk spurt after the first.
        assert!(packets.iter().filter(|p| p.marker).count() >= 3);
    }

    fn run_video(kbps: u32, fps: u32, secs: u64) -> (VideoLayerSource, Vec<Vec<MediaPacket>>) {
        let t0 = Instant::now();
        let spec = layers(false, kbps).remove(0);
        let mut src = VideoLayerSource::new(spec, 0, fps, 1.0, 0, 0, 9);
        let mut frames = Vec::new();
        for ms in 0..secs * 1000 {
            let mut frame = Vec::new();
            if src.poll_frame(t0 + Duration::from_millis(ms), 0, &mut frame) > 0 {
                frames.push(frame);
            }
        }
        (src, frames)
    }

    #[test]
    fn video_frames_are_bursts_of_equal_packets_at_the_bitrate() {
        let (src, frames) = run_video(2000, 30, 4);
        assert_eq!(frames.len(), 120);
        let sizes = src.sizes();
        assert_eq!(sizes.keyframe_every, 30);
        assert_eq!(sizes.key_bytes, sizes.delta_bytes * KEYFRAME_RATIO);
        let mut bytes = 0;
        for (n, frame) in frames.iter().enumerate() {
            let len = frame[0].payload.len();
            assert!(frame.iter().all(|p| p.payload.len() == len), "equal sizes");
            assert!(len <= MAX_PAYLOAD);
            assert!(frame.last().is_some_and(|p| p.marker));
            assert_eq!(frame.iter().filter(|p| p.marker).count(), 1);
            assert!(frame.iter().all(|p| p.rtp_time == frame[0].rtp_time));
            let keyframe = n % 30 == 0;
            for (i, p) in frame.iter().enumerate() {
                let d = pattern::decode_payload(PayloadKind::Video, &p.payload).expect("intact");
                assert_eq!(d.header.keyframe, keyframe);
                assert_eq!(d.starts_keyframe(), keyframe && i == 0);
                assert_eq!(
                    decode_header(&p.payload).map(|h| h.counter),
                    Some(d.header.counter)
                );
            }
            bytes += frame.iter().map(|p| p.payload.len()).sum::<usize>();
        }
        let kbps = bytes as f64 * 8.0 / 4.0 / 1000.0;
        assert!((kbps - 2000.0).abs() < 200.0, "{kbps} kbps");
        // Keyframes are several times larger than delta frames.
        assert!(frames[0].len() >= 3 * frames[1].len());
    }

    #[test]
    fn requested_keyframe_comes_next() {
        let t0 = Instant::now();
        let mut src = VideoLayerSource::new(layers(false, 500).remove(0), 0, 30, 100.0, 0, 0, 1);
        let mut out = Vec::new();
        src.poll_frame(t0, 0, &mut out);
        out.clear();
        src.request_keyframe();
        src.poll_frame(t0 + Duration::from_millis(34), 0, &mut out);
        let d = pattern::decode_payload(PayloadKind::Video, &out[0].payload).expect("intact");
        assert!(d.starts_keyframe());
        assert_eq!(src.keyframes(), 2);
    }

    #[test]
    fn simulcast_layers_split_the_bitrate() {
        let l = layers(true, 1500);
        let rids: Vec<_> = l.iter().map(|l| l.rid).collect();
        assert_eq!(rids, [Some("q"), Some("h"), Some("f")]);
        let kbps: Vec<u32> = l.iter().map(|l| l.kbps).collect();
        assert_eq!(kbps, [150, 500, 1500]);
        assert_eq!(layers(true, 100)[0].kbps, 30, "floor");
    }

    #[test]
    fn header_decoding_rejects_damage_without_panicking() {
        let (_, frames) = run_video(800, 30, 1);
        let p = &frames[0][0].payload;
        assert!(decode_header(p).is_some());
        for i in 0..p.len().min(60) {
            let mut bad = p.clone();
            bad[i] ^= 0x10;
            // Flips in the body are not checked (light path); in the headers they are.
            if i < 11 + HEADER_LEN {
                let d = decode_header(&bad);
                assert!(
                    d.is_none() || d.map(|d| d.counter) == decode_header(p).map(|d| d.counter),
                    "flip at {i}"
                );
            }
        }
        assert!(decode_header(&p[..p.len() - 1]).is_none(), "truncated");
        assert!(decode_header(&[]).is_none());
        let mut state = 7_u64;
        for len in 0..200 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 33) as u8
                })
                .collect();
            let _ = decode_header(&garbage);
        }
    }

    #[test]
    fn pps_solver_meets_reachable_targets() {
        for media in [MediaModel::Video, MediaModel::AudioVideoSimulcast] {
            for target in [200.0, 500.0, 1000.0] {
                let s = kbps_for_target_pps(media, 30, 3.0, false, target);
                assert!(s.note.is_none(), "{media} {target}: {s:?}");
                assert!(
                    (s.pps - target).abs() / target < 0.1,
                    "{media} {target}: {s:?}"
                );
            }
        }
        let low = kbps_for_target_pps(MediaModel::VideoSimulcast, 30, 3.0, false, 10.0);
        assert!(low.note.is_some());
        assert_eq!(low.kbps, 30);
    }
}
