//! Video codecs besides VP8 through the real server: an H264 publisher's packetization (STAP-A
//! parameter sets, FU-A fragments) reaches every subscriber intact, under the payload type that
//! subscriber negotiated, starting at a keyframe.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::Duration;

use support::{
    DRAIN, KeyframeBaseline, Server, assert_audio_and_video_delivery, expect_audio_and_video,
    expect_media, media_window,
};
use tools::PayloadKind::{Audio, Video};
use tools::pattern::H264Packet;
use tools::publisher::{VideoCodec, VideoConfig};
use tools::{Reception, Subscriber};

fn h264(keyframe_interval: u32) -> Option<VideoConfig> {
    Some(VideoConfig {
        codec: VideoCodec::H264,
        keyframe_interval,
        ..VideoConfig::default()
    })
}

/// The payload types an SDP's video section maps to `codec` (e.g. `H264`), each with its fmtp
/// parameters (empty when there is no `a=fmtp` line).
fn video_pts(sdp: &str, codec: &str) -> BTreeMap<u8, String> {
    let mut in_video = false;
    let mut pts = BTreeMap::new();
    let mut fmtp = BTreeMap::new();
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            in_video = line.starts_with("m=video");
            continue;
        }
        if !in_video {
            continue;
        }
        let (pt, rest) = if let Some(rtpmap) = line.strip_prefix("a=rtpmap:") {
            match rtpmap.split_once(' ') {
                Some((pt, name)) if name.split('/').next() == Some(codec) => (pt, None),
                _ => continue,
            }
        } else if let Some(params) = line.strip_prefix("a=fmtp:") {
            match params.split_once(' ') {
                Some((pt, params)) => (pt, Some(params)),
                None => continue,
            }
        } else {
            continue;
        };
        let Ok(pt) = pt.parse::<u8>() else { continue };
        match rest {
            None => {
                pts.insert(pt, String::new());
            }
            Some(params) => {
                fmtp.insert(pt, params.to_string());
            }
        }
    }
    for (pt, params) in &mut pts {
        if let Some(p) = fmtp.remove(pt) {
            *params = p;
        }
    }
    pts
}

/// A subscriber whose answer accepted H264 video (else no H264 publisher can reach it).
fn subscribe_h264(server: &Server, room: &str) -> Subscriber {
    let sub = server.subscribe(room);
    assert!(
        !video_pts(sub.answer(), "H264").is_empty(),
        "the subscriber's answer maps no H264 payload type: did its offer (tools::load::negotiate::offering_rtc) \
         include H264?\n{}",
        sub.answer()
    );
    sub
}

fn packetization_mode_1(fmtp: &str) -> bool {
    fmtp.split(';').any(|p| p.trim() == "packetization-mode=1")
}

/// Checks that all of `r`'s video came as H264 under one payload type that the subscriber's
/// answer maps to H264 with packetization-mode 1, starting at a keyframe's parameter sets.
fn assert_h264_video(who: &str, sub: &Subscriber, r: &Reception) {
    let answered = video_pts(sub.answer(), "H264");
    assert!(
        !answered.is_empty(),
        "{who}: the answer maps no H264 payload type:\n{}",
        sub.answer()
    );
    let pts: BTreeSet<u8> = r.packets_of(Video).map(|p| *p.pt).collect();
    assert_eq!(
        pts.len(),
        1,
        "{who}: video should arrive under one payload type, got {pts:?}"
    );
    let pt = pts.first().copied().unwrap_or_default();
    let fmtp = answered.get(&pt).unwrap_or_else(|| {
        panic!(
            "{who}: video arrived as PT {pt}, which the answer does not map to H264: {answered:?}"
        )
    });
    assert!(
        packetization_mode_1(fmtp),
        "{who}: PT {pt} carries STAP-A and FU-A packets, but the answer gives it `{fmtp}` \
         (packetization-mode 0 allows single NAL units only)"
    );

    let not_h264 = r
        .packets_of(Video)
        .filter(|p| p.decoded().and_then(|d| d.codec()) != Some(VideoCodec::H264))
        .count();
    assert_eq!(not_h264, 0, "{who}: video packets without H264 framing");
    let first = r.first_packet(Video).expect("video arrived");
    let framing = first
        .decoded()
        .and_then(|d| d.framing().and_then(|f| f.h264));
    assert!(
        first.starts_keyframe() && framing == Some(H264Packet::ParameterSets),
        "{who}: video must start with a keyframe's STAP-A (SPS, PPS), got {framing:?} in {first:?}"
    );
    // 4000-byte frames go as FU-A runs; decoding checked every S and E bit against the pattern.
    let fragments: Vec<_> = r
        .packets_of(Video)
        .filter_map(|p| p.decoded().and_then(|d| d.framing().and_then(|f| f.h264)))
        .filter(|h| matches!(h, H264Packet::Fragment { .. }))
        .collect();
    assert!(
        fragments
            .iter()
            .any(|h| matches!(h, H264Packet::Fragment { start: true, .. }))
            && fragments
                .iter()
                .any(|h| matches!(h, H264Packet::Fragment { end: true, .. })),
        "{who}: 4000-byte frames should arrive as FU-A fragments"
    );
}

#[test]
fn h264_publisher_reaches_two_subscribers_intact() {
    let server = Server::start();
    let publisher = server.publish("h264", true, h264(60));
    let offered = video_pts(publisher.answer(), "H264");
    assert!(
        !offered.is_empty() && offered.values().all(|f| packetization_mode_1(f)),
        "the publisher's answer should accept H264 with packetization-mode 1 only: {offered:?}"
    );
    assert!(
        video_pts(publisher.answer(), "VP8").is_empty(),
        "the publisher offered only H264"
    );

    let subs: Vec<_> = (0..2).map(|_| subscribe_h264(&server, "h264")).collect();
    expect_audio_and_video(&subs);
    let (from, to) = media_window(&publisher);

    for (i, s) in subs.iter().enumerate() {
        let r = s.reception();
        let who = format!("subscriber {i}");
        assert_audio_and_video_delivery(&who, &r, &from, &to);
        assert_h264_video(&who, s, &r);
    }
    assert_eq!(publisher.stats().write_failures, 0);
    let m = server.metrics();
    assert_eq!(
        m.sum_where("sfu_udp_dropped_total", &[("reason", "codec_mismatch")]),
        0.0,
        "the server found no H264 payload type for a subscriber"
    );

    for s in subs {
        s.close().expect("DELETE subscriber");
    }
    publisher.close().expect("DELETE publisher");
}

#[test]
fn late_subscriber_gets_an_h264_keyframe_first() {
    let server = Server::start();
    // No periodic keyframes within the test: only a request can produce one.
    let publisher = server.publish("h264-late", true, h264(100_000));
    thread::sleep(Duration::from_secs(2));
    let baseline = KeyframeBaseline::take(&server, &publisher);

    let late = subscribe_h264(&server, "h264-late");
    expect_media(&late, Video, "late subscriber");
    expect_media(&late, Audio, "late subscriber");

    baseline.assert_keyframe_requested(&server, &publisher, "the H264 publisher");
    thread::sleep(DRAIN);
    let r = late.reception();
    assert_eq!(r.video.corrupt, 0, "{:?}", r.first_corruption);
    assert_h264_video("late subscriber", &late, &r);
}
