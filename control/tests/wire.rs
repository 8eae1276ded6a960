//! The node's media as it is on the wire, read with parsers that are not str0m's (the `rtp` and
//! `rtcp` crates): a subscriber keeps copies of the datagrams it receives, and the test checks
//! the clear-text parts of SRTP and SRTCP (RFC 3711 leaves the RTP header and the first eight
//! bytes of RTCP unencrypted) against RFC 3550, RFC 7983 and the SDP answer.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use support::{Server, expect_media};
use tools::PayloadKind::{Audio, Video};
use tools::VideoConfig;
use tools::reception::CapturedDatagram;
use tools::whip::candidate_addrs;
use webrtc_util::Unmarshal;

/// Datagrams the subscriber keeps: far more than the test receives (about 200 a second), so
/// the capture covers the whole session.
const CAPTURE_LIMIT: usize = 10_000;

/// How long media flows once the subscriber receives both kinds.
const MEDIA_TIME: Duration = Duration::from_secs(2);

/// RTP clock ticks of one 20 ms Opus packet (the publisher's audio packet interval).
const AUDIO_TICKS: u32 = 960;

/// RTP clock ticks of one frame at the publisher's 30 fps on the 90 kHz video clock.
const VIDEO_FRAME_TICKS: u32 = 3000;

/// Loss allowed per stream, as a share of its sequence number span. Loopback loses nothing;
/// this only absorbs a receive thread stalled long enough on a loaded machine to overflow its
/// socket buffer.
const MAX_LOSS: f64 = 0.01;

/// Smallest SRTP/SRTCP authentication tag (AES_CM_128_HMAC_SHA1_80; the AEAD profiles use 16).
const MIN_AUTH_TAG: usize = 10;

/// RFC 7983 §7: what a datagram's first byte says it is, and for RTP/RTCP the second byte
/// (RFC 5761 §4: RTCP packet types 192-223 never collide with RTP payload types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    Other,
}

fn classify(datagram: &[u8]) -> Class {
    match datagram {
        [0..=3, ..] => Class::Stun,
        [20..=63, ..] => Class::Dtls,
        [128..=191, 192..=223, ..] => Class::Rtcp,
        [128..=191, ..] => Class::Rtp,
        _ => Class::Other,
    }
}

/// Payload types an SDP answer mapped, per codec, and the SSRCs it announced per media kind.
#[derive(Debug, Default)]
struct Negotiated {
    opus: BTreeSet<u8>,
    vp8: BTreeSet<u8>,
    /// RTX payload types of the video section.
    rtx: BTreeSet<u8>,
    /// `a=ssrc:` ids by `m=` kind (`audio` / `video`).
    ssrcs: BTreeMap<String, BTreeSet<u32>>,
}

/// Reads the `m=`, `a=rtpmap:` and `a=ssrc:` lines of an SDP.
fn negotiated(sdp: &str) -> Negotiated {
    let mut n = Negotiated::default();
    let mut kind = String::new();
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            kind = m.split_whitespace().next().unwrap_or_default().to_string();
        } else if let Some(map) = line.strip_prefix("a=rtpmap:") {
            let mut parts = map.split_whitespace();
            let (Some(pt), Some(encoding)) = (parts.next(), parts.next()) else {
                panic!("malformed rtpmap line in the answer: {line:?}");
            };
            let pt: u8 = pt
                .parse()
                .unwrap_or_else(|_| panic!("rtpmap payload type is not a number: {line:?}"));
            let name = encoding.split('/').next().unwrap_or_default();
            match (kind.as_str(), name.to_ascii_lowercase().as_str()) {
                ("audio", "opus") => n.opus.insert(pt),
                ("video", "vp8") => n.vp8.insert(pt),
                ("video", "rtx") => n.rtx.insert(pt),
                _ => false,
            };
        } else if let Some(ssrc) = line.strip_prefix("a=ssrc:") {
            if let Some(id) = ssrc.split_whitespace().next().and_then(|s| s.parse().ok()) {
                n.ssrcs.entry(kind.clone()).or_default().insert(id);
            }
        }
    }
    n
}

/// One RTP header as the `rtp` crate read it.
#[derive(Debug, Clone, Copy)]
struct RtpSeen {
    /// Index of the datagram in the capture.
    index: usize,
    seq: u16,
    timestamp: u32,
    marker: bool,
    pt: u8,
}

/// Sequence facts about one SSRC's packets in arrival order.
#[derive(Debug, Default)]
struct SeqReport {
    packets: usize,
    /// Sequence numbers skipped between consecutive arrivals.
    missing: u64,
    /// Span from the first to the last sequence number (inclusive), unwrapped.
    span: u64,
    duplicates: u64,
    /// Arrivals behind the previous one (wrapping comparison).
    backwards: u64,
    /// Arrivals whose timestamp is behind the previous arrival's (wrapping comparison).
    timestamp_regressions: u64,
}

fn seq_report(packets: &[RtpSeen]) -> SeqReport {
    let mut r = SeqReport {
        packets: packets.len(),
        span: u64::from(!packets.is_empty()),
        ..SeqReport::default()
    };
    for pair in packets.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        match b.seq.wrapping_sub(a.seq) {
            0 => r.duplicates += 1,
            step if step >= 0x8000 => r.backwards += 1,
            step => {
                r.missing += u64::from(step - 1);
                r.span += u64::from(step);
            }
        }
        if (b.timestamp.wrapping_sub(a.timestamp) as i32) < 0 {
            r.timestamp_regressions += 1;
        }
    }
    r
}

/// Everything the capture shows, parsed.
#[derive(Debug, Default)]
struct Wire {
    classes: BTreeMap<Class, usize>,
    rtp: BTreeMap<u32, Vec<RtpSeen>>,
    /// RTCP packet type of the first (clear-text) header of each SRTCP datagram, with the
    /// sender SSRC that follows it.
    rtcp_first: Vec<(u8, u32)>,
    sources: BTreeSet<SocketAddr>,
}

fn parse_capture(datagrams: &[CapturedDatagram]) -> Wire {
    let mut wire = Wire::default();
    for (index, d) in datagrams.iter().enumerate() {
        let bytes = &d.bytes[..];
        let class = classify(bytes);
        *wire.classes.entry(class).or_default() += 1;
        wire.sources.insert(d.source);
        let head = &bytes[..bytes.len().min(32)];
        match class {
            Class::Rtp => {
                let mut buf = bytes;
                let h = rtp::header::Header::unmarshal(&mut buf).unwrap_or_else(|e| {
                    panic!("datagram {index}: the RTP header does not parse: {e}; {head:02x?}")
                });
                assert_eq!(h.version, 2, "datagram {index}: RTP version; {head:02x?}");
                assert!(
                    buf.len() >= MIN_AUTH_TAG,
                    "datagram {index}: {} bytes after a {}-byte RTP header leave no room for \
                     the SRTP authentication tag; {head:02x?}",
                    buf.len(),
                    bytes.len() - buf.len()
                );
                wire.rtp.entry(h.ssrc).or_default().push(RtpSeen {
                    index,
                    seq: h.sequence_number,
                    timestamp: h.timestamp,
                    marker: h.marker,
                    pt: h.payload_type,
                });
            }
            Class::Rtcp => {
                let mut buf = bytes;
                let h = rtcp::header::Header::unmarshal(&mut buf).unwrap_or_else(|e| {
                    panic!("datagram {index}: the RTCP header does not parse: {e}; {head:02x?}")
                });
                let pt = bytes[1];
                assert_eq!(
                    h.packet_type as u8, pt,
                    "datagram {index}: the rtcp crate does not know RTCP packet type {pt}; \
                     {head:02x?}"
                );
                // SRTCP: first packet, then the E flag + index word, then the tag.
                let first_len = (usize::from(h.length) + 1) * 4;
                assert!(
                    first_len + 4 + MIN_AUTH_TAG <= bytes.len(),
                    "datagram {index}: the first RTCP packet claims {first_len} bytes, more than \
                     a {}-byte SRTCP datagram holds; {head:02x?}",
                    bytes.len()
                );
                let sender = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                wire.rtcp_first.push((pt, sender));
            }
            Class::Stun | Class::Dtls => {}
            Class::Other => panic!(
                "datagram {index} fits no RFC 7983 range (first byte {}); {head:02x?}",
                bytes[0]
            ),
        }
    }
    wire
}

#[test]
fn media_on_the_wire_parses_with_independent_parsers() {
    let server = Server::start();
    let publisher = server.publish("wire", true, Some(VideoConfig::default()));
    let sub = server.subscribe_with("wire", |c| c.capture_raw(CAPTURE_LIMIT));
    expect_media(&sub, Audio, "subscriber");
    expect_media(&sub, Video, "subscriber");
    thread::sleep(MEDIA_TIME);
    let datagrams = sub.captured();
    let reception = sub.reception();
    let answer = sub.answer().to_string();
    assert!(
        datagrams.len() < CAPTURE_LIMIT,
        "the capture filled up ({} datagrams): raise CAPTURE_LIMIT",
        datagrams.len()
    );

    let wire = parse_capture(&datagrams);
    let n = negotiated(&answer);
    let ctx = || format!("classes {:?}\nanswer:\n{answer}", wire.classes);

    // RFC 7983: ICE, DTLS and SRTP/SRTCP all arrive on the one 5-tuple the answer named.
    for class in [Class::Stun, Class::Dtls, Class::Rtp, Class::Rtcp] {
        assert!(
            wire.classes.get(&class).is_some_and(|n| *n > 0),
            "no {class:?} datagram among {}; {}",
            datagrams.len(),
            ctx()
        );
    }
    let candidates: BTreeSet<SocketAddr> = candidate_addrs(&answer).into_iter().collect();
    assert!(
        wire.sources.is_subset(&candidates),
        "datagrams came from {:?}, the answer's candidates are {candidates:?}",
        wire.sources
    );

    assert!(
        !n.opus.is_empty() && !n.vp8.is_empty(),
        "the answer maps no Opus or no VP8 payload type: {n:?}; {}",
        ctx()
    );
    let mut audio = Vec::new();
    let mut video = Vec::new();
    let mut rtx = Vec::new();
    for (ssrc, packets) in &wire.rtp {
        let pts: BTreeSet<u8> = packets.iter().map(|p| p.pt).collect();
        if pts.is_subset(&n.opus) {
            audio.push(*ssrc);
        } else if pts.is_subset(&n.vp8) {
            video.push(*ssrc);
        } else if pts.is_subset(&n.rtx) {
            rtx.push(*ssrc);
        } else {
            panic!(
                "SSRC {ssrc} carries payload types {pts:?}, not all of one negotiated codec \
                 (opus {:?}, VP8 {:?}, rtx {:?}); {}",
                n.opus,
                n.vp8,
                n.rtx,
                ctx()
            );
        }
    }
    assert_eq!(
        (audio.len(), video.len()),
        (1, 1),
        "exactly one audio and one video SSRC should carry media: audio {audio:?}, video \
         {video:?}, rtx {rtx:?}"
    );
    let (audio, video) = (audio[0], video[0]);

    // The answer announces the SSRCs the node sends with (when it announces any).
    let rtx_kinds = rtx.iter().map(|s| ("video", *s));
    for (kind, ssrc) in [("audio", audio), ("video", video)]
        .into_iter()
        .chain(rtx_kinds)
    {
        if let Some(announced) = n.ssrcs.get(kind) {
            assert!(
                announced.contains(&ssrc),
                "{kind} arrives on SSRC {ssrc}, the answer announces {announced:?}"
            );
        }
    }
    // str0m read the same SSRCs from the same datagrams.
    for (kind, ssrc) in [(Audio, audio), (Video, video)] {
        let seen: Vec<u32> = reception.streams(kind).iter().map(|s| *s.ssrc).collect();
        assert_eq!(
            seen,
            vec![ssrc],
            "{kind}: str0m and the rtp crate disagree on the SSRC"
        );
    }

    let reports: BTreeMap<u32, SeqReport> = [audio, video]
        .into_iter()
        .map(|ssrc| (ssrc, seq_report(&wire.rtp[&ssrc])))
        .collect();
    for (what, ssrc, min_packets) in [("audio", audio, 50), ("video", video, 100)] {
        let r = &reports[&ssrc];
        assert!(
            r.packets >= min_packets,
            "{what}: only {} RTP packets captured on SSRC {ssrc}",
            r.packets
        );
        assert_eq!(
            (r.duplicates, r.backwards),
            (0, 0),
            "{what} SSRC {ssrc}: sequence numbers repeat or go backwards: {r:?}"
        );
        assert!(
            r.missing as f64 <= MAX_LOSS * r.span as f64,
            "{what} SSRC {ssrc}: sequence numbers not consecutive modulo 2^16 ({} of {} \
             missing, {:.0}% allowed): {r:?}",
            r.missing,
            r.span,
            MAX_LOSS * 100.0
        );
        assert_eq!(
            r.timestamp_regressions, 0,
            "{what} SSRC {ssrc}: RTP timestamps went backwards: {r:?}"
        );
    }

    // Timestamps advance by whole packets (audio) and frames (video): the node shifts the
    // publisher's clock by a constant. A stalled publisher skips ticks, hence multiples.
    for pair in wire.rtp[&audio].windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let step = b.timestamp.wrapping_sub(a.timestamp);
        if b.seq == a.seq.wrapping_add(1) {
            assert!(
                step > 0 && step % AUDIO_TICKS == 0,
                "audio timestamp step {step} between seq {} and {} (datagrams {} and {}) is not \
                 a positive multiple of {AUDIO_TICKS}",
                a.seq,
                b.seq,
                a.index,
                b.index
            );
        }
    }
    let video_packets = &wire.rtp[&video];
    for pair in video_packets.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let step = b.timestamp.wrapping_sub(a.timestamp);
        assert!(
            step % VIDEO_FRAME_TICKS == 0,
            "video timestamp step {step} between seq {} and {} is not a multiple of \
             {VIDEO_FRAME_TICKS} (30 fps at 90 kHz)",
            a.seq,
            b.seq
        );
        // A frame's last packet carries the marker; the next packet starts a new frame.
        if step != 0 && b.seq == a.seq.wrapping_add(1) {
            assert!(
                a.marker,
                "video seq {} ends the frame at timestamp {} without the marker bit \
                 (next packet seq {} has timestamp {})",
                a.seq, a.timestamp, b.seq, b.timestamp
            );
        }
    }
    let markers = video_packets.iter().filter(|p| p.marker).count();
    let frames: BTreeSet<u32> = video_packets.iter().map(|p| p.timestamp).collect();
    assert!(
        markers + 1 >= frames.len() && markers > 0,
        "{markers} video packets carry the marker bit for {} frames",
        frames.len()
    );
    for p in video_packets.iter().filter(|p| p.marker) {
        assert!(
            !wire.rtp[&video]
                .iter()
                .any(|q| q.timestamp == p.timestamp && q.seq.wrapping_sub(p.seq) as i16 > 0),
            "video seq {} carries the marker bit but a later packet of its frame (timestamp \
             {}) follows",
            p.seq,
            p.timestamp
        );
    }

    // Retransmissions only repair gaps: none without loss, and not more than a few per gap.
    // The RTX SSRC also carries the bandwidth estimator's probes (padding, and old packets
    // resent as padding), which the wire cannot tell from repairs: count the node's own
    // retransmissions in answer to NACKs (`sfu_rtx_sent_total`, probes excluded).
    let video_report = &reports[&video];
    let rtx_packets: usize = rtx.iter().map(|s| wire.rtp[s].len()).sum();
    let repairs = server.metrics().sum("sfu_rtx_sent_total") as u64;
    assert!(
        repairs <= 3 * video_report.missing,
        "the node retransmitted {repairs} packets for {} missing video packets ({rtx_packets} \
         datagrams on the RTX SSRCs {rtx:?}, probes included): it retransmits without loss",
        video_report.missing
    );

    // SRTCP: the node reports on what it sends. Only the first packet of a compound datagram
    // is readable, and str0m puts sender reports first; video reports every second.
    let types: BTreeSet<u8> = wire.rtcp_first.iter().map(|(t, _)| *t).collect();
    assert!(
        types.iter().all(|t| (200..=207).contains(t)),
        "RTCP packet types outside SR/RR/SDES/BYE/APP/RTPFB/PSFB/XR: {types:?}"
    );
    let reported: BTreeSet<u32> = wire
        .rtcp_first
        .iter()
        .filter(|(t, _)| *t == 200)
        .map(|(_, ssrc)| *ssrc)
        .collect();
    assert!(
        reported.contains(&video),
        "no Sender Report (type 200) for the video SSRC {video}; SRs name {reported:?}, first \
         RTCP types seen {:?}",
        wire.rtcp_first
    );
    assert!(
        reported.is_subset(&BTreeSet::from([audio, video])),
        "Sender Reports for SSRCs the node does not send media on: {reported:?} (audio \
         {audio}, video {video})"
    );

    assert_eq!(publisher.stats().write_failures, 0);
    sub.close().expect("DELETE subscriber");
    publisher.close().expect("DELETE publisher");
}

#[test]
fn classification_follows_rfc_7983() {
    assert_eq!(classify(&[0, 1, 0, 0]), Class::Stun);
    assert_eq!(classify(&[22, 254, 253]), Class::Dtls);
    assert_eq!(classify(&[0x80, 96, 0, 1]), Class::Rtp);
    assert_eq!(classify(&[0x80, 0x80 | 96, 0, 1]), Class::Rtp, "marker set");
    assert_eq!(classify(&[0x80, 200, 0, 6]), Class::Rtcp);
    assert_eq!(classify(&[0x81, 206, 0, 2]), Class::Rtcp);
    assert_eq!(classify(&[64, 0]), Class::Other);
    assert_eq!(classify(&[]), Class::Other);
}
