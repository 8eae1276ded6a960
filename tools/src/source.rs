//! Synthetic media sources: when the next packet is due and what it carries. Sans-IO: the
//! caller passes the current `Instant` and wall-clock time and writes the packets out itself.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::pattern::{self, H264Packet, PatternHeader, PayloadKind, VideoCodec};

/// Audio packet interval (one Opus frame).
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);

/// RTP clock ticks per audio packet (48 kHz × 20 ms).
const AUDIO_TICKS: u32 = 960;

/// RTP clock rate of video.
const VIDEO_CLOCK: u32 = 90_000;

/// Largest RTP payload a video packet carries; with RTP header, extensions and the SRTP tag it
/// stays under str0m's datagram MTU.
pub const MAX_VIDEO_PAYLOAD: usize = 1100;

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

/// Periodic ticks with lag handling, shared by the sources here and the load generator's.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    interval: Duration,
    pub(crate) next_due: Option<Instant>,
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

/// An Opus-like audio source: one 60-120 byte packet every 20 ms.
#[derive(Debug)]
pub struct AudioSource {
    schedule: Schedule,
    counter: u64,
    first_seq: u64,
    rtp_base: u32,
}

impl AudioSource {
    pub fn new(first_seq: u16, rtp_base: u32) -> Self {
        Self {
            schedule: Schedule::new(AUDIO_INTERVAL),
            counter: 0,
            first_seq: u64::from(first_seq),
            rtp_base,
        }
    }

    /// When the next packet is due; `None` before the first poll (the first poll starts it).
    pub fn next_due(&self) -> Option<Instant> {
        self.schedule.next_due
    }

    /// Packets produced so far.
    pub fn packets(&self) -> u64 {
        self.counter
    }

    pub fn poll(&mut self, now: Instant, wallclock_us: u64) -> Option<OutgoingPacket> {
        let tick = self.schedule.poll(now)?;
        let counter = self.counter;
        self.counter += 1;
        let rtp_time = self
            .rtp_base
            .wrapping_add((tick as u32).wrapping_mul(AUDIO_TICKS));
        // 60-120 bytes in all, varying like a VBR codec.
        let body_len = 20 + (counter * 37 % 61) as u32;
        let payload =
            PatternHeader::audio(counter, counter as u32, rtp_time, wallclock_us, body_len)
                .to_payload();
        Some(OutgoingPacket {
            kind: PayloadKind::Audio,
            layer: 0,
            seq: self.first_seq + counter,
            rtp_time,
            marker: counter == 0,
            keyframe: false,
            payload,
        })
    }
}

/// Shape of one video layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoLayer {
    /// Simulcast rid, `None` without simulcast.
    pub rid: Option<String>,
    /// Layer index written in the test pattern (0 = lowest).
    pub index: u8,
    /// Bytes of a delta frame; keyframes are twice as large.
    pub frame_bytes: usize,
    /// Picture size announced in keyframes.
    pub dimensions: (u16, u16),
}

impl VideoLayer {
    /// A single (non-simulcast) layer.
    pub fn single(frame_bytes: usize) -> Self {
        Self {
            rid: None,
            index: 0,
            frame_bytes,
            dimensions: (1280, 720),
        }
    }

    /// The three simulcast layers q, h, f, the full layer with `full_frame_bytes` per frame.
    pub fn simulcast(full_frame_bytes: usize) -> Vec<Self> {
        let shapes = [
            ("q", full_frame_bytes / 10, (320, 180)),
            ("h", full_frame_bytes / 3, (640, 360)),
            ("f", full_frame_bytes, (1280, 720)),
        ];
        shapes
            .into_iter()
            .enumerate()
            .map(|(i, (rid, bytes, dimensions))| Self {
                rid: Some(rid.to_string()),
                index: i as u8,
                frame_bytes: bytes.max(200),
                dimensions,
            })
            .collect()
    }
}

/// A VP8-like (or, [`VideoSource::with_codec`], H264-like) video source for one layer: frames
/// at a fixed rate, split into packets that share an RTP timestamp, marker on the last;
/// periodic and on-demand keyframes.
#[derive(Debug)]
pub struct VideoSource {
    layer: VideoLayer,
    codec: VideoCodec,
    schedule: Schedule,
    ticks_per_frame: u32,
    keyframe_interval: u32,
    force_keyframe: bool,
    frames_since_keyframe: u32,
    frame: u32,
    counter: u64,
    first_seq: u64,
    rtp_base: u32,
    keyframes: u64,
    queue: VecDeque<OutgoingPacket>,
    /// When the frame in `queue` was produced.
    frame_started: Option<Instant>,
}

impl VideoSource {
    /// `keyframe_interval` in frames (0: only the first frame and requested ones).
    pub fn new(
        layer: VideoLayer,
        fps: u32,
        keyframe_interval: u32,
        first_seq: u16,
        rtp_base: u32,
    ) -> Self {
        let fps = fps.clamp(1, 120);
        Self {
            layer,
            codec: VideoCodec::Vp8,
            schedule: Schedule::new(Duration::from_secs(1) / fps),
            ticks_per_frame: VIDEO_CLOCK / fps,
            keyframe_interval,
            force_keyframe: true,
            frames_since_keyframe: 0,
            frame: 0,
            counter: 0,
            first_seq: u64::from(first_seq),
            rtp_base,
            keyframes: 0,
            queue: VecDeque::new(),
            frame_started: None,
        }
    }

    /// Frames the payloads for `codec` instead of VP8.
    pub fn with_codec(mut self, codec: VideoCodec) -> Self {
        self.codec = codec;
        self
    }

    pub fn layer(&self) -> &VideoLayer {
        &self.layer
    }

    pub fn codec(&self) -> VideoCodec {
        self.codec
    }

    /// When the next packet is due: now if a frame is half sent, else the next frame time.
    pub fn next_due(&self) -> Option<Instant> {
        if self.queue.is_empty() {
            self.schedule.next_due
        } else {
            // The rest of a frame goes out back to back.
            self.frame_started
        }
    }

    /// The next frame is a keyframe.
    pub fn request_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// Packets produced so far.
    pub fn packets(&self) -> u64 {
        self.counter
    }

    /// Keyframes produced so far.
    pub fn keyframes(&self) -> u64 {
        self.keyframes
    }

    pub fn poll(&mut self, now: Instant, wallclock_us: u64) -> Option<OutgoingPacket> {
        if let Some(p) = self.queue.pop_front() {
            return Some(p);
        }
        let tick = self.schedule.poll(now)?;
        let rtp_time = self
            .rtp_base
            .wrapping_add((tick as u32).wrapping_mul(self.ticks_per_frame));
        self.frame_started = Some(now);
        self.packetize_frame(rtp_time, wallclock_us);
        self.queue.pop_front()
    }

    fn packetize_frame(&mut self, rtp_time: u32, wallclock_us: u64) {
        let keyframe = self.force_keyframe
            || (self.keyframe_interval > 0 && self.frames_since_keyframe >= self.keyframe_interval);
        if keyframe {
            self.force_keyframe = false;
            self.frames_since_keyframe = 0;
            self.keyframes += 1;
        }
        self.frames_since_keyframe += 1;
        let frame_len = if keyframe {
            self.layer.frame_bytes * 2
        } else {
            self.layer.frame_bytes
        };
        let target = MAX_VIDEO_PAYLOAD - 100;
        // An H264 keyframe needs a packet for its parameter sets and one for its slice.
        let min_count = if keyframe && self.codec == VideoCodec::H264 {
            2
        } else {
            1
        };
        let count = frame_len.div_ceil(target).clamp(min_count, 255);
        let share = frame_len / count;
        for index in 0..count {
            let start = index == 0;
            let end = index + 1 == count;
            let mut payload = Vec::with_capacity(MAX_VIDEO_PAYLOAD);
            let h264 =
                (self.codec == VideoCodec::H264).then(|| h264_packet(keyframe, index, count));
            let prefix_len = match h264 {
                Some(packet) => packet.prefix_len(),
                None => {
                    pattern::write_vp8_prefix(
                        &mut payload,
                        start,
                        keyframe,
                        frame_len,
                        self.layer.dimensions,
                    );
                    payload.len()
                }
            };
            let used = prefix_len + pattern::HEADER_LEN;
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
            self.queue.push_back(OutgoingPacket {
                kind: PayloadKind::Video,
                layer: self.layer.index,
                seq: self.first_seq + self.counter,
                rtp_time,
                marker: end,
                keyframe,
                payload,
            });
            self.counter += 1;
        }
        self.frame = self.frame.wrapping_add(1);
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

/// An audio or a video source, driven the same way by the peers that send media.
#[derive(Debug)]
pub(crate) enum Source {
    Audio(AudioSource),
    Video(VideoSource),
}

impl Source {
    pub(crate) fn poll(&mut self, now: Instant, wallclock_us: u64) -> Option<OutgoingPacket> {
        match self {
            Source::Audio(s) => s.poll(now, wallclock_us),
            Source::Video(s) => s.poll(now, wallclock_us),
        }
    }

    pub(crate) fn next_due(&self) -> Option<Instant> {
        match self {
            Source::Audio(s) => s.next_due(),
            Source::Video(s) => s.next_due(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::decode_payload;

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
            assert!((60..=120).contains(&p.payload.len()), "{}", p.payload.len());
            let d = decode_payload(PayloadKind::Audio, &p.payload).expect("intact");
            assert_eq!(d.header.counter, i as u64);
        }
    }

    #[test]
    fn video_frames_share_timestamp_and_end_with_marker() {
        let t0 = Instant::now();
        let mut src = VideoSource::new(VideoLayer::single(4000), 30, 10, 7, 0);
        let mut sent = Vec::new();
        for ms in 0..=400 {
            let now = t0 + Duration::from_millis(ms);
            while let Some(p) = src.poll(now, 0) {
                sent.push(p);
            }
        }
        let frames: Vec<Vec<&OutgoingPacket>> = sent
            .chunk_by(|a, b| a.rtp_time == b.rtp_time)
            .map(|c| c.iter().collect())
            .collect();
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
        let seqs: Vec<u64> = sent.iter().map(|p| p.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(frames[1][0].rtp_time, 3000);
    }

    /// Runs a source for `ms` milliseconds and groups its packets by frame.
    fn frames(mut src: VideoSource, ms: u64) -> Vec<Vec<OutgoingPacket>> {
        let t0 = Instant::now();
        let mut sent: Vec<OutgoingPacket> = Vec::new();
        for ms in 0..=ms {
            while let Some(p) = src.poll(t0 + Duration::from_millis(ms), 0) {
                sent.push(p);
            }
        }
        let seqs: Vec<u64> = sent.iter().map(|p| p.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        sent.chunk_by(|a, b| a.rtp_time == b.rtp_time)
            .map(<[OutgoingPacket]>::to_vec)
            .collect()
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
        let src =
            VideoSource::new(VideoLayer::single(4000), 30, 10, 7, 0).with_codec(VideoCodec::H264);
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
        let src =
            VideoSource::new(VideoLayer::single(300), 30, 3, 0, 0).with_codec(VideoCodec::H264);
        let frames = frames(src, 100);
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
        let mut src = VideoSource::new(VideoLayer::single(1000), 30, 0, 0, 0);
        let mut key = Vec::new();
        for ms in 0..200 {
            if ms == 100 {
                src.request_keyframe();
            }
            while let Some(p) = src.poll(t0 + Duration::from_millis(ms), 0) {
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
}
