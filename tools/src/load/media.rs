//! What the load generator adds to the [`source`](crate::source)s: run-wide counters that
//! name the publisher, and the packet rates a scenario implies. Sans-IO.
//!
//! - [`counter_base`]: a stream's first pattern counter. Its top bits name the publisher, so a
//!   subscriber whose track moves from one publisher to another, or between simulcast layers,
//!   sees a new stream instead of a jump in one.
//! - [`publisher_pps`], [`kbps_for_target_pps`]: packet rates for `--target-pps`.

use crate::source::{
    AUDIO_PPS, DTX_SILENCE_EVERY, DTX_SILENCE_TICKS, DTX_TALK_TICKS, FrameSizes, VideoLayer,
    packets_per_frame,
};

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

/// Lowest bitrate of a video layer, kbit/s.
pub const MIN_LAYER_KBPS: u32 = 30;

/// The layers a publisher sends for a top-layer bitrate, each with its bitrate.
pub fn layers(simulcast: bool, top_kbps: u32) -> Vec<(VideoLayer, u32)> {
    VideoLayer::all(simulcast)
        .into_iter()
        .map(|layer| {
            let kbps = layer.share(top_kbps, MIN_LAYER_KBPS);
            (layer, kbps)
        })
        .collect()
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
        .map(|(_, kbps)| {
            let sizes = FrameSizes::for_bitrate(*kbps, fps, keyframe_interval_s);
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
    use std::time::{Duration, Instant};

    use super::*;
    use crate::pattern::{self, HEADER_LEN, PayloadKind, decode_header};
    use crate::source::{
        AudioSource, KEYFRAME_RATIO, MAX_VIDEO_PAYLOAD, OutgoingPacket, VideoSource,
    };

    fn run_audio(dtx: bool, secs: u64) -> Vec<OutgoingPacket> {
        let t0 = Instant::now();
        let mut src = AudioSource::new(100, 5000)
            .counted_from(counter_base(3))
            .seeded(42)
            .with_dtx(dtx);
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
        let tiny: Vec<&OutgoingPacket> = packets
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

    fn run_video(kbps: u32, fps: u32, secs: u64) -> (VideoSource, Vec<Vec<OutgoingPacket>>) {
        let t0 = Instant::now();
        let (layer, kbps) = layers(false, kbps).remove(0);
        let sizes = FrameSizes::for_bitrate(kbps, fps, 1.0);
        let mut src = VideoSource::new(layer, sizes, fps, 0, 0)
            .counted_from(counter_base(0))
            .varying(9);
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
            assert!(len <= MAX_VIDEO_PAYLOAD);
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
