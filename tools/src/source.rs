//! Synthetic media sources, the one set the test peers and the load generator send: when the
//! next packet is due and what it carries. Sans-IO: callers pass the current `Instant` and
//! wall-clock microseconds and write the packets out themselves.
//!
//! - [`AudioSource`]: Opus-like, a packet every 20 ms of 60-160 bytes, optionally with DTX
//!   (silences in which only a header-sized packet goes out every 400 ms).
//! - [`VideoSource`]: one VP8- or H264-framed video layer, frames at a fixed rate sized by
//!   [`FrameSizes`], each frame split into equal-size packets polled as one burst (so the
//!   load generator can send it with one GSO call and a paused layer stops at a frame end).
//!
//! Every packet carries the [`pattern`] header: a per-stream counter and the send time.

use std::time::{Duration, Instant};

use crate::pattern::{self, H264Packet, HEADER_LEN, PatternHeader, PayloadKind, VideoCodec};

/// Audio packet interval (one Opus frame).
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);

/// Audio packets per second without DTX.
pub const AUDIO_PPS: f64 = 50.0;

/// RTP clock ticks per audio packet (48 kHz × 20 ms).
const AUDIO_TICKS: u32 = 960;

/// While silent under DTX, one packet every this many 20 ms ticks (400 ms, as Opus does).
pub const DTX_SILENCE_EVERY: u64 = 20;

/// Talk spurts and silences under DTX, in 20 ms ticks (1-5 s talking, 0.5-4 s silent).
pub const DTX_TALK_TICKS: (u64, u64) = (50, 250);
pub const DTX_SILENCE_TICKS: (u64, u64) = (25, 200);

/// RTP clock rate of video.
const VIDEO_CLOCK: u32 = 90_000;

/// Largest RTP payload a video packet carries; with RTP header, extensions and the SRTP tag it
/// stays under str0m's datagram MTU.
pub const MAX_VIDEO_PAYLOAD: usize = 1100;

/// A keyframe is this many times the size of a delta frame of the same layer when sized for
/// a bitrate ([`FrameSizes::for_bitrate`]).
pub const KEYFRAME_RATIO: usize = 5;

/// How far a source may fall behind its schedule before it skips instead of bursting.
const MAX_LAG: Duration = Duration::from_millis(200);

/// One RTP packet a source wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingPacket {
    pub kind: PayloadKind,
    /// Index of the video layer (0 for audio).
    pub layer: u8,
    /// Extended RTP sequence number.
    pub seq: u64,
    pub rtp_time: u32,
    pub marker: bool,
    pub keyframe: bool,
    pub payload: Vec<u8>,
}

/// Periodic ticks with lag handling.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    interval: Duration,
    next_due: Option<Instant>,
    /// Ticks elapsed since start, sent or skipped: drives the RTP clock.
    tick: u64,
}

impl Schedule {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            next_due: None,
            tick: 0,
        }
    }

    /// Returns the tick index when one is due at `now`.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<u64> {
        let due = self.next_due.get_or_insert(now);
        if now < *due {
            return None;
        }
        if now.duration_since(*due) > MAX_LAG {
            // Fell behind (e.g. a stalled thread): skip the missed ticks rather than burst them.
            let missed = now.duration_since(*due).as_nanos() / self.interval.as_nanos().max(1);
            self.tick += missed as u64;
            *due += self.interval * missed as u32;
        }
        let tick = self.tick;
        self.tick += 1;
        *due += self.interval;
        Some(tick)
    }
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
pub struct AudioSource {
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

impl AudioSource {
    /// Continuous audio whose pattern counter starts at 0.
    pub fn new(first_seq: u16, rtp_base: u32) -> Self {
        Self {
            schedule: Schedule::new(AUDIO_INTERVAL),
            counter: 0,
            seq: u64::from(first_seq),
            rtp_base,
            shape: Shape::new(u64::from(rtp_base) << 16 | u64::from(first_seq)),
            dtx: false,
            phase_left: 0,
            talking: true,
            spurt_start: true,
            silence_tick: 0,
        }
    }

    /// The pattern counter starts at `counter` instead of 0.
    pub fn counted_from(mut self, counter: u64) -> Self {
        self.counter = counter;
        self
    }

    /// Packet sizes (and DTX spurts) drawn from `seed`.
    pub fn seeded(mut self, seed: u64) -> Self {
        self.shape = Shape::new(seed);
        self
    }

    /// With DTX: talk spurts and silences.
    pub fn with_dtx(mut self, dtx: bool) -> Self {
        self.dtx = dtx;
        self.phase_left = if dtx {
            self.shape.range(DTX_TALK_TICKS.0, DTX_TALK_TICKS.1)
        } else {
            0
        };
        self
    }

    /// When the next tick is due; `None` before the first poll (the first poll starts it).
    pub fn next_due(&self) -> Option<Instant> {
        self.schedule.next_due
    }

    /// The packet due at `now`, if one is. Under DTX, a due tick in a silence usually sends
    /// nothing: the counter only counts sent packets, so receivers see no gap.
    pub fn poll(&mut self, now: Instant, wallclock_us: u64) -> Option<OutgoingPacket> {
        loop {
            let tick = self.schedule.poll(now)?;
            if let Some(p) = self.tick(tick, wallclock_us) {
                return Some(p);
            }
        }
    }

    fn tick(&mut self, tick: u64, wallclock_us: u64) -> Option<OutgoingPacket> {
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
        let packet = OutgoingPacket {
            kind: PayloadKind::Audio,
            layer: 0,
            seq: self.seq,
            rtp_time,
            marker: std::mem::take(&mut self.spurt_start),
            keyframe: false,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoLayer {
    /// Simulcast rid (`q`, `h`, `f`), `None` without simulcast.
    pub rid: Option<&'static str>,
    /// Layer index written in the test pattern (0 = lowest).
    pub index: u8,
    /// The layer's share of the top layer's bitrate or frame size: `1 / divisor`.
    pub divisor: u32,
    /// Picture size announced in keyframes.
    pub dimensions: (u16, u16),
}

impl VideoLayer {
    /// The layers a publisher sends: one, or q/h/f at 1/10, 1/3 and all of the top layer.
    pub fn all(simulcast: bool) -> Vec<Self> {
        if !simulcast {
            return vec![Self {
                rid: None,
                index: 0,
                divisor: 1,
                dimensions: (1280, 720),
            }];
        }
        [
            ("q", 10, (320, 180)),
            ("h", 3, (640, 360)),
            ("f", 1, (1280, 720)),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (rid, divisor, dimensions))| Self {
            rid: Some(rid),
            index: i as u8,
            divisor,
            dimensions,
        })
        .collect()
    }

    /// This layer's share of `top` (a bitrate or a frame size), at least `floor`.
    pub fn share(&self, top: u32, floor: u32) -> u32 {
        (top / self.divisor).max(floor)
    }
}

/// Frame sizes of a layer and how often keyframes come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSizes {
    pub delta_bytes: usize,
    pub key_bytes: usize,
    /// Frames from one periodic keyframe to the next (0: only the first and requested ones).
    pub keyframe_every: u32,
}

impl FrameSizes {
    /// Delta frames of `delta_bytes`, keyframes twice as large.
    pub fn fixed(delta_bytes: usize, keyframe_every: u32) -> Self {
        let delta_bytes = delta_bytes.max(min_frame_bytes());
        Self {
            delta_bytes,
            key_bytes: delta_bytes * 2,
            keyframe_every,
        }
    }

    /// Delta frames and [`KEYFRAME_RATIO`] times larger keyframes averaging `kbps`.
    pub fn for_bitrate(kbps: u32, fps: u32, keyframe_interval_s: f64) -> Self {
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

/// Packets a VP8 frame of `bytes` is split into.
pub fn packets_per_frame(bytes: usize) -> usize {
    bytes.div_ceil(MAX_VIDEO_PAYLOAD).clamp(1, 255)
}

/// One video layer: a frame every `1/fps` s, polled as a burst of equal-size packets sharing
/// an RTP timestamp, marker on the last; periodic and requested keyframes. VP8-framed unless
/// [`with_codec`](Self::with_codec) says H264.
#[derive(Debug, Clone)]
pub struct VideoSource {
    layer: VideoLayer,
    codec: VideoCodec,
    sizes: FrameSizes,
    schedule: Schedule,
    ticks_per_frame: u32,
    force_keyframe: bool,
    frames_since_keyframe: u32,
    frame: u32,
    counter: u64,
    seq: u64,
    rtp_base: u32,
    /// Varies frame sizes by ±10% when set.
    shape: Option<Shape>,
    keyframes: u64,
}

impl VideoSource {
    pub fn new(
        layer: VideoLayer,
        sizes: FrameSizes,
        fps: u32,
        first_seq: u16,
        rtp_base: u32,
    ) -> Self {
        let fps = fps.clamp(1, 120);
        Self {
            layer,
            codec: VideoCodec::Vp8,
            sizes,
            schedule: Schedule::new(Duration::from_secs(1) / fps),
            ticks_per_frame: VIDEO_CLOCK / fps,
            force_keyframe: true,
            frames_since_keyframe: 0,
            frame: 0,
            counter: 0,
            seq: u64::from(first_seq),
            rtp_base,
            shape: None,
            keyframes: 0,
        }
    }

    /// Frames the payloads for `codec` instead of VP8.
    pub fn with_codec(mut self, codec: VideoCodec) -> Self {
        self.codec = codec;
        self
    }

    /// The pattern counter starts at `counter` instead of 0.
    pub fn counted_from(mut self, counter: u64) -> Self {
        self.counter = counter;
        self
    }

    /// Frame sizes vary by ±10% from frame to frame, as an encoder's output does.
    pub fn varying(mut self, seed: u64) -> Self {
        self.shape = Some(Shape::new(seed));
        self
    }

    pub fn layer(&self) -> &VideoLayer {
        &self.layer
    }

    pub fn codec(&self) -> VideoCodec {
        self.codec
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

    /// Keyframes produced so far.
    pub fn keyframes(&self) -> u64 {
        self.keyframes
    }

    /// Appends the packets of the frame due at `now` (if one is) to `out`; returns how many.
    pub fn poll_frame(
        &mut self,
        now: Instant,
        wallclock_us: u64,
        out: &mut Vec<OutgoingPacket>,
    ) -> usize {
        let Some(tick) = self.schedule.poll(now) else {
            return 0;
        };
        let rtp_time = self
            .rtp_base
            .wrapping_add((tick as u32).wrapping_mul(self.ticks_per_frame));
        let every = self.sizes.keyframe_every;
        let keyframe = self.force_keyframe || (every > 0 && self.frames_since_keyframe >= every);
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
        let vary = self
            .shape
            .as_mut()
            .map_or(100, |s| s.range(90, 110) as usize);
        let frame_len = (nominal * vary / 100).max(min_frame_bytes());
        // An H264 keyframe needs a packet for its parameter sets and one for its slice.
        let min_count = if keyframe && self.codec == VideoCodec::H264 {
            2
        } else {
            1
        };
        let count = packets_per_frame(frame_len).max(min_count);
        // Equal shares: every packet of the frame has the same payload size.
        let share = frame_len.div_ceil(count).max(min_frame_bytes());
        for index in 0..count {
            let end = index + 1 == count;
            let mut payload = Vec::with_capacity(share);
            let h264 =
                (self.codec == VideoCodec::H264).then(|| h264_packet(keyframe, index, count));
            let prefix_len = match h264 {
                Some(packet) => packet.prefix_len(),
                None => {
                    pattern::write_vp8_prefix(
                        &mut payload,
                        index == 0,
                        keyframe,
                        frame_len,
                        self.layer.dimensions,
                    );
                    payload.len()
                }
            };
            let used = prefix_len + HEADER_LEN;
            let header = PatternHeader {
                kind: PayloadKind::Video,
                layer: self.layer.index,
                keyframe,
                end_of_frame: end,
                index: index as u8,
                counter: self.counter,
                frame: self.frame,
                rtp_time,
                sent_us: wallclock_us,
                body_len: share.saturating_sub(used).min(MAX_VIDEO_PAYLOAD - used) as u32,
            };
            match h264 {
                Some(packet) => pattern::encode_h264_payload(packet, &header, &mut payload),
                None => pattern::encode_pattern(&header, &mut payload),
            }
            out.push(OutgoingPacket {
                kind: PayloadKind::Video,
                layer: self.layer.index,
                seq: self.seq,
                rtp_time,
                marker: end,
                keyframe,
                payload,
            });
            self.counter += 1;
            self.seq += 1;
        }
        self.frame = self.frame.wrapping_add(1);
        count
    }
}

/// How packet `index` of a `count`-packet H264 frame is framed: a keyframe opens with its
/// parameter sets; the slice fills the rest, fragmented when it spans several packets.
fn h264_packet(keyframe: bool, index: usize, count: usize) -> H264Packet {
    let first_slice = usize::from(keyframe);
    if index < first_slice {
        return H264Packet::ParameterSets;
    }
    if count - first_slice == 1 {
        return H264Packet::Slice { idr: keyframe };
    }
    H264Packet::Fragment {
        idr: keyframe,
        start: index == first_slice,
        end: index + 1 == count,
    }
}

/// An audio or a video source, driven the same way by every peer that sends media.
#[derive(Debug, Clone)]
pub enum Source {
    Audio(AudioSource),
    Video(VideoSource),
}

impl Source {
    /// Appends what is due at `now` to `out` (every due audio packet, or one video frame);
    /// returns how many.
    pub fn poll(
        &mut self,
        now: Instant,
        wallclock_us: u64,
        out: &mut Vec<OutgoingPacket>,
    ) -> usize {
        match self {
            Source::Audio(s) => {
                let before = out.len();
                out.extend(std::iter::from_fn(|| s.poll(now, wallclock_us)));
                out.len() - before
            }
            Source::Video(s) => s.poll_frame(now, wallclock_us, out),
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        match self {
            Source::Audio(s) => s.next_due(),
            Source::Video(s) => s.next_due(),
        }
    }

    /// Video: the next frame is a keyframe. Audio: nothing.
    pub fn request_keyframe(&mut self) {
        if let Source::Video(s) = self {
            s.request_keyframe();
        }
    }

    /// The video layer index; `None` for audio.
    pub fn layer(&self) -> Option<u8> {
        match self {
            Source::Video(s) => Some(s.layer().index),
            Source::Audio(_) => None,
        }
    }

    /// Keyframes produced so far (0 for audio).
    pub fn keyframes(&self) -> u64 {
        match self {
            Source::Video(s) => s.keyframes(),
            Source::Audio(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::decode_payload;

    fn single(frame_bytes: usize, keyframe_every: u32) -> VideoSource {
        let layer = VideoLayer::all(false).remove(0);
        VideoSource::new(
            layer,
            FrameSizes::fixed(frame_bytes, keyframe_every),
            30,
            7,
            0,
        )
    }

    /// Runs a source for `ms` milliseconds, checks sequence numbers are consecutive, and
    /// groups its packets by frame.
    fn frames(mut src: VideoSource, ms: u64) -> Vec<Vec<OutgoingPacket>> {
        let t0 = Instant::now();
        let mut sent: Vec<OutgoingPacket> = Vec::new();
        for ms in 0..=ms {
            while src.poll_frame(t0 + Duration::from_millis(ms), 0, &mut sent) > 0 {}
        }
        let seqs: Vec<u64> = sent.iter().map(|p| p.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        sent.chunk_by(|a, b| a.rtp_time == b.rtp_time)
            .map(<[OutgoingPacket]>::to_vec)
            .collect()
    }

    #[test]
    fn audio_every_20ms_with_valid_payloads() {
        let t0 = Instant::now();
        let mut src = AudioSource::new(100, 5000);
        let mut sent = Vec::new();
        for ms in 0..=100 {
            let now = t0 + Duration::from_millis(ms);
            while let Some(p) = src.poll(now, 0) {
                sent.push(p);
            }
        }
        assert_eq!(sent.len(), 6, "t=0,20,..,100");
        for (i, p) in sent.iter().enumerate() {
            assert_eq!(p.seq, 100 + i as u64);
            assert_eq!(p.rtp_time, 5000 + 960 * i as u32);
            assert!((60..=160).contains(&p.payload.len()), "{}", p.payload.len());
            let d = decode_payload(PayloadKind::Audio, &p.payload).expect("intact");
            assert_eq!(d.header.counter, i as u64);
        }
        assert!(sent[0].marker && !sent[1].marker);
    }

    #[test]
    fn video_frames_share_timestamp_and_end_with_marker() {
        let frames = frames(single(4000, 10), 400);
        assert_eq!(frames.len(), 13, "frames at 0, 33, .. 400 ms");
        for (n, frame) in frames.iter().enumerate() {
            assert!(frame.len() >= 4, "a 4000 byte frame spans several packets");
            assert!(frame.iter().all(|p| p.payload.len() <= MAX_VIDEO_PAYLOAD));
            let markers: Vec<bool> = frame.iter().map(|p| p.marker).collect();
            assert_eq!(markers.iter().filter(|m| **m).count(), 1);
            assert!(frame.last().is_some_and(|p| p.marker));
            let keyframe = n % 10 == 0;
            for (i, p) in frame.iter().enumerate() {
                let d = decode_payload(PayloadKind::Video, &p.payload).expect("intact");
                assert_eq!(d.header.keyframe, keyframe, "frame {n}");
                assert_eq!(d.starts_keyframe(), keyframe && i == 0);
                assert_eq!(d.header.frame, n as u32);
            }
            assert_eq!(frame[0].payload[0], 0x10);
            assert_eq!(frame[0].payload[1] & 1, u8::from(!keyframe));
            assert!(frame[1..].iter().all(|p| p.payload[0] == 0x00));
        }
        assert_eq!(frames[0][0].seq, 7);
        assert_eq!(frames[1][0].rtp_time, 3000);
    }

    /// NAL types of the units of a STAP-A, walking its 16-bit unit sizes to the payload's end.
    fn stap_a_unit_types(p: &[u8]) -> Vec<u8> {
        assert_eq!(p[0] & 0x1f, 24, "STAP-A");
        let mut types = Vec::new();
        let mut i = 1;
        while i < p.len() {
            let size = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
            assert!(size > 0 && i + 2 + size <= p.len(), "unit at {i} overruns");
            types.push(p[i + 2] & 0x1f);
            i += 2 + size;
        }
        types
    }

    #[test]
    fn h264_keyframes_open_with_parameter_sets_and_slices_are_fragmented() {
        let src = single(4000, 10).with_codec(VideoCodec::H264);
        assert_eq!(src.codec(), VideoCodec::H264);
        let frames = frames(src, 400);
        assert_eq!(frames.len(), 13, "frames at 0, 33, .. 400 ms");
        for (n, frame) in frames.iter().enumerate() {
            let keyframe = n % 10 == 0;
            assert!(frame.len() >= 4, "a 4000 byte frame spans several packets");
            assert!(frame.iter().all(|p| p.payload.len() <= MAX_VIDEO_PAYLOAD));
            assert!(frame.iter().all(|p| p.keyframe == keyframe));
            let markers: Vec<bool> = frame.iter().map(|p| p.marker).collect();
            assert_eq!(markers.iter().filter(|m| **m).count(), 1);
            assert!(frame.last().is_some_and(|p| p.marker));

            let slice = if keyframe {
                // F=0, NRI=3, STAP-A holding SPS, PPS and the SEI unit with the pattern.
                assert_eq!(frame[0].payload[0], 0x78, "frame {n}");
                assert_eq!(stap_a_unit_types(&frame[0].payload), [7, 8, 6]);
                &frame[1..]
            } else {
                &frame[..]
            };
            let (indicator, nal_type) = if keyframe { (0x7c, 5) } else { (0x5c, 1) };
            for (i, p) in slice.iter().enumerate() {
                let (first, last) = (i == 0, i + 1 == slice.len());
                assert_eq!(p.payload[0], indicator, "frame {n} packet {i}: FU-A");
                let fu = p.payload[1];
                assert_eq!(fu & 0x80 != 0, first, "frame {n} packet {i}: S bit");
                assert_eq!(fu & 0x40 != 0, last, "frame {n} packet {i}: E bit");
                assert_eq!(fu & 0x20, 0, "R bit");
                assert_eq!(fu & 0x1f, nal_type, "frame {n} packet {i}: slice type");
            }
            for (i, p) in frame.iter().enumerate() {
                let d = decode_payload(PayloadKind::Video, &p.payload).expect("intact");
                assert_eq!(d.codec(), Some(VideoCodec::H264));
                assert_eq!(d.header.keyframe, keyframe, "frame {n}");
                assert_eq!(d.header.frame, n as u32);
                assert_eq!(d.header.index as usize, i);
                assert_eq!(d.starts_keyframe(), keyframe && i == 0);
            }
        }
    }

    #[test]
    fn small_h264_frames_use_single_nal_units() {
        let frames = frames(single(300, 3).with_codec(VideoCodec::H264), 100);
        assert_eq!(frames.len(), 4);
        // Keyframe: parameter sets, then the whole IDR slice in one NAL unit (NRI 3, type 5).
        assert_eq!(frames[0].len(), 2);
        assert_eq!(stap_a_unit_types(&frames[0][0].payload), [7, 8, 6]);
        assert_eq!(frames[0][1].payload[0], 0x65);
        // Delta frames: one non-IDR slice (NRI 2, type 1).
        for frame in &frames[1..3] {
            assert_eq!(frame.len(), 1);
            assert_eq!(frame[0].payload[0], 0x41);
            assert!(frame[0].marker);
        }
        assert_eq!(frames[3][0].payload[0], 0x78, "keyframe interval 3");
        for p in frames.iter().flatten() {
            let d = decode_payload(PayloadKind::Video, &p.payload).expect("intact");
            assert_eq!(d.starts_keyframe(), p.payload[0] == 0x78);
        }
    }

    #[test]
    fn requested_keyframe_comes_next() {
        let t0 = Instant::now();
        let mut src = single(1000, 0);
        let mut key = Vec::new();
        let mut out = Vec::new();
        for ms in 0..200 {
            if ms == 100 {
                src.request_keyframe();
            }
            out.clear();
            src.poll_frame(t0 + Duration::from_millis(ms), 0, &mut out);
            for p in &out {
                if p.keyframe && !key.contains(&p.rtp_time) {
                    key.push(p.rtp_time);
                }
            }
        }
        assert_eq!(key.len(), 2, "first frame plus the requested one: {key:?}");
        assert_eq!(src.keyframes(), 2);
    }

    #[test]
    fn stalled_source_skips_instead_of_bursting() {
        let t0 = Instant::now();
        let mut src = AudioSource::new(0, 0);
        assert!(src.poll(t0, 0).is_some());
        let late = t0 + Duration::from_secs(2);
        let burst = std::iter::from_fn(|| src.poll(late, 0)).count();
        assert!(burst <= 2, "burst of {burst}");
        // The RTP clock still reflects real time.
        let p = src.poll(late + Duration::from_millis(40), 0).expect("due");
        assert!(p.rtp_time >= 960 * 100);
    }

    #[test]
    fn simulcast_layers_split_the_top_layer() {
        let l = VideoLayer::all(true);
        let rids: Vec<_> = l.iter().map(|l| l.rid).collect();
        assert_eq!(rids, [Some("q"), Some("h"), Some("f")]);
        let kbps: Vec<u32> = l.iter().map(|l| l.share(1500, 30)).collect();
        assert_eq!(kbps, [150, 500, 1500]);
        assert_eq!(l[0].share(100, 30), 30, "floor");
    }
}
