//! Media through the real server when things go wrong between the peers: packets lost on the
//! way to a subscriber (repaired by NACK and RTX retransmission from the subscriber's session)
//! and a simulcast layer that stops and comes back (the subscriber falls back to the next
//! layer down and returns, on keyframes, with one continuous stream).

mod support;

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use support::{Server, expect_media, wait_until};
use tools::PayloadKind::{self, Audio, Video};
use tools::pattern::PatternHeader;
use tools::subscriber::IncomingLoss;
use tools::{ReceivedPacket, Reception, VideoConfig};

/// How long media flows under loss.
const LOSSY_TIME: Duration = Duration::from_secs(4);

/// A dropped packet must be back within this long. str0m on the subscriber side NACKs a gap
/// after a few milliseconds on loopback and retries a lost retransmission after about one RTT,
/// so this is slack for a loaded machine, not a protocol figure.
const REPAIR_WINDOW: Duration = Duration::from_secs(1);

/// Lose every 20th video packet (5 %) on arrival at the subscriber...
const VIDEO_LOSS_EVERY: u64 = 20;

/// ... and bursts of three consecutive ones every 64 (NACKs with several packets).
const VIDEO_BURST: IncomingLoss = IncomingLoss {
    kind: Video,
    every: 64,
    burst: 3,
};

/// Lose every 25th audio packet (4 %). Audio is not retransmitted: these stay lost.
const AUDIO_LOSS_EVERY: u64 = 25;

/// Longest a layer switch may take in the simulcast test. The expected figure is about 0.6 s
/// (see the test's comment); the rest is slack for a loaded machine.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Simulcast layer indices (as in the test pattern).
const H: u8 = 1;
const F: u8 = 2;

/// The SFU's per-subscriber session keeps the video it sent in str0m's RTX cache and answers
/// the subscriber's NACKs from it, on the RTX SSRC the answer announced. The subscriber loses
/// every 20th video packet, bursts of three every 64, and every 25th audio packet before its
/// `Rtc` sees them (about 9 % of video, 4 % of audio); str0m's
/// receive side detects the video gaps and NACKs them. Every lost video packet must come back
/// (same SSRC and sequence number, intact payload of the same source packet), carried by RTX;
/// audio (Opus, no RTX negotiated, never NACKed) must stay lost, exactly the dropped packets.
#[test]
fn lost_video_packets_are_retransmitted_to_the_subscriber() {
    let server = Server::start();
    let publisher = server.publish(
        "nack",
        true,
        Some(VideoConfig {
            keyframe_interval: 60,
            ..VideoConfig::default()
        }),
    );
    let sub = server.subscribe_with("nack", |c| {
        c.lose(IncomingLoss::every(Video, VIDEO_LOSS_EVERY))
            .lose(VIDEO_BURST)
            .lose(IncomingLoss::every(Audio, AUDIO_LOSS_EVERY))
    });
    expect_media(&sub, Video, "lossy subscriber");
    expect_media(&sub, Audio, "lossy subscriber");

    thread::sleep(LOSSY_TIME);
    // Only losses older than the repair window are judged; the flow goes on meanwhile.
    let judged_until = Instant::now();
    thread::sleep(REPAIR_WINDOW);
    let r = sub.reception();
    let sent = publisher.stats();
    // Read after the reception: every RTX datagram in `r` was counted before it was sent.
    let metrics = server.metrics();

    // The loss was really applied.
    let video_dropped: Vec<_> = r
        .dropped_of(Video)
        .filter(|d| d.at < judged_until)
        .copied()
        .collect();
    let min_drops = 30; // ~150 video packets/s for 4 s at ~9 %: ~50
    assert!(
        video_dropped.len() >= min_drops,
        "expected at least {min_drops} video packets lost on purpose, got {} (received {}, \
         publisher sent {:?})",
        video_dropped.len(),
        r.video.packets,
        sent.video_packets
    );

    // Every one came back, intact, as the same source packet under the same number.
    let unrepaired: Vec<_> = r
        .unrepaired(Video)
        .into_iter()
        .filter(|d| d.at < judged_until)
        .collect();
    assert!(
        unrepaired.is_empty(),
        "{} of {} lost video packets were never retransmitted (RTX datagrams received: {}); \
         the first: {:?}",
        unrepaired.len(),
        video_dropped.len(),
        r.video.repairs,
        &unrepaired[..unrepaired.len().min(3)],
    );
    assert!(
        r.video.repairs >= video_dropped.len() as u64,
        "each repaired packet must have arrived on the RTX SSRC: {} RTX datagrams for {} \
         repaired packets",
        r.video.repairs,
        video_dropped.len()
    );
    assert_eq!(
        r.video.corrupt, 0,
        "video payloads corrupted (first: {:?})",
        r.first_corruption
    );
    let video = one_stream(&r, Video);
    assert_eq!(video.duplicates, 0, "{video:#?}");
    assert_eq!(
        video.seq_offsets, 1,
        "a retransmission carried another source packet than the one lost: {video:#?}"
    );
    assert_eq!(video.timestamp_offsets, 1, "{video:#?}");
    // Repairs arrive after later packets: that is the only reordering there is.
    assert!(
        video.reordered <= r.dropped_of(Video).count() as u64,
        "more reordering than repairs: {video:#?}"
    );
    // Whatever is still missing is a loss too recent to judge.
    let recent = r.dropped_of(Video).count() - video_dropped.len();
    assert!(
        video.missing <= recent as u64,
        "{} video sequence numbers missing, but only {recent} losses are younger than the \
         repair window: {video:#?}",
        video.missing
    );

    // Audio: exactly the dropped packets are missing, nothing was resent.
    let audio_dropped: BTreeSet<u16> = r.dropped_of(Audio).map(|d| d.seq).collect();
    assert!(
        audio_dropped.len() >= 5,
        "expected audio packets lost on purpose, got {audio_dropped:?}"
    );
    assert_eq!(r.audio.repairs, 0, "audio has no RTX stream");
    assert_eq!(
        missing_seqs(&r, Audio),
        audio_dropped
            .iter()
            .copied()
            .filter(|seq| within_span(&r, Audio, *seq))
            .collect::<BTreeSet<_>>(),
        "the audio sequence numbers missing must be exactly the ones dropped"
    );
    assert_eq!(r.unrepaired(Audio).len(), audio_dropped.len());

    // The node's counters saw the repair: the subscriber's NACKs (str0m reports them once a
    // second; the loss ran for 5) and retransmissions. The RTX datagrams the subscriber got
    // also carry the bandwidth estimator's padding (blank, or old packets resent unasked,
    // which may repair a loss before it is NACKed), which the counter leaves out.
    let nacks_received = metrics.sum("sfu_nacks_received_total");
    let rtx_sent = metrics.sum("sfu_rtx_sent_total");
    assert!(
        nacks_received > 0.0,
        "sfu_nacks_received_total is 0 after {} video packets were lost and NACKed",
        video_dropped.len()
    );
    assert!(
        rtx_sent > 0.0,
        "sfu_rtx_sent_total is 0, but the subscriber received {} RTX datagrams",
        r.video.repairs
    );
    // The rest of the feedback series are on the page too (their values are checked in
    // feedback.rs and in sfu-core's session tests, which make a publisher's packets go missing).
    for series in [
        "sfu_nacks_sent_total",
        "sfu_keyframe_requests_received_total",
    ] {
        assert!(metrics.has(series), "{series} missing from /metrics");
    }
    eprintln!(
        "NACK/RTX: {} video packets lost on purpose and judged, all repaired ({} lost in all, \
         {} RTX datagrams); {} audio packets lost and left lost; node: {nacks_received} NACKs \
         received, {rtx_sent} RTX packets sent, {} NACKs sent",
        video_dropped.len(),
        r.dropped_of(Video).count(),
        r.video.repairs,
        audio_dropped.len(),
        metrics.sum("sfu_nacks_sent_total"),
    );
}

/// A subscriber follows the top simulcast layer f. The publisher stops sending f (as a browser
/// does when it runs short of bandwidth): the SFU notices after `forward::LAYER_TIMEOUT`
/// (500 ms) without an f packet, asks the publisher for a keyframe on h (the next layer
/// down), and switches the subscriber to h at that keyframe. Expected time from the last f
/// packet to the first h packet: 500 ms + up to one h frame (33 ms) for the next h packet to
/// trigger the decision + the PLI round trip + up to one frame until the keyframe, about
/// 0.6 s (0.54 s measured on loopback). When f resumes, the SFU asks for an f keyframe and
/// switches back up at it (about 30 ms: one PLI round trip and one frame).
///
/// The subscriber must see one SSRC with consecutive sequence numbers and forward-moving
/// timestamps throughout, layers in the order f, h, f, each run starting with a keyframe of
/// its layer and carrying that layer's source packets without a gap, and every f packet sent
/// before the pause.
#[test]
fn simulcast_subscriber_falls_back_to_h_when_f_stops_and_returns_when_it_resumes() {
    let server = Server::start();
    // No periodic keyframes: each layer switch waits for a keyframe the SFU asked for.
    let publisher = server.publish(
        "fallback",
        true,
        Some(VideoConfig {
            simulcast: true,
            keyframe_interval: 0,
            ..VideoConfig::default()
        }),
    );
    let sub = server.subscribe("fallback");
    expect_media(&sub, Video, "subscriber");
    assert!(
        sub.wait_packets(Video, 60, Duration::from_secs(5)),
        "the subscriber should receive video steadily before the pause"
    );
    // It starts on a low layer and climbs to f as its bandwidth estimate grows
    // (docs/architecture.md, "Bandwidth").
    let on_f = || {
        sub.with_reception(|r| {
            let layers: Vec<u8> = r
                .packets_of(Video)
                .filter_map(|p| p.decoded().map(|d| d.header.layer))
                .collect();
            layers.len() > 60 && layers[layers.len() - 60..].iter().all(|l| *l == F)
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), on_f),
        "before the pause the subscriber follows f: {:?}",
        layers_received(&sub.reception())
    );

    // Stop f.
    let keyframes_before = publisher.stats().keyframes;
    assert!(publisher.pause_layer(F));
    assert!(
        publisher.wait_layer_paused(F, true, Duration::from_secs(2)),
        "the publisher did not pause f"
    );
    let paused = publisher.stats();
    let f_sent_before_pause = paused.video_packets[usize::from(F)];
    assert!(
        wait_until(SWITCH_TIMEOUT, || has_layer_after(&sub, H, None)),
        "no h video within {SWITCH_TIMEOUT:?} after f stopped (video packets {})",
        sub.packets(Video)
    );
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        publisher.stats().video_packets[usize::from(F)],
        f_sent_before_pause,
        "f must stay silent while paused"
    );

    // Resume f.
    let resumed_at = Instant::now();
    assert!(publisher.resume_layer(F));
    assert!(
        publisher.wait_layer_paused(F, false, Duration::from_secs(2)),
        "the publisher did not resume f"
    );
    assert!(
        wait_until(SWITCH_TIMEOUT, || has_layer_after(
            &sub,
            F,
            Some(resumed_at)
        )),
        "no f video within {SWITCH_TIMEOUT:?} after f resumed"
    );
    thread::sleep(Duration::from_secs(1));

    let r = sub.reception();
    assert_eq!(
        r.video.corrupt, 0,
        "video payloads corrupted (first: {:?})",
        r.first_corruption
    );
    let stream = one_stream(&r, Video);
    assert!(
        stream.missing == 0 && stream.duplicates == 0 && stream.reordered == 0,
        "the subscriber's video sequence numbers must run on without a gap across both \
         switches: {stream:#?}"
    );
    assert_eq!(
        stream.timestamp_regressions, 0,
        "RTP timestamps went backwards at a switch: {stream:#?}"
    );

    let video: Vec<&ReceivedPacket> = r.packets_of(Video).collect();
    let runs = layer_runs(&video);
    // From the end of the climb on.
    let climbed = runs
        .iter()
        .position(|run| run[0].1.layer == F)
        .expect("an f run");
    let runs = &runs[climbed..];
    let order: Vec<u8> = runs.iter().map(|run| run[0].1.layer).collect();
    assert_eq!(order, vec![F, H, F], "layers in arrival order");

    for (i, run) in runs.iter().enumerate() {
        let (first, header) = run[0];
        assert!(
            first.starts_keyframe(),
            "run {i} (layer {}) must open with a keyframe of its layer, got {first:?}",
            header.layer
        );
        // Within a run the SFU forwards every source packet: no decode gap.
        for pair in run.windows(2) {
            let ((a, ha), (b, hb)) = (pair[0], pair[1]);
            assert_eq!(
                (b.ext_seq - a.ext_seq, hb.counter - ha.counter),
                (1, 1),
                "run {i}: source packets skipped between {a:?} and {b:?}"
            );
        }
        if i > 0 {
            // Timestamps across the switch advance by about the time that passed between
            // the two packets (the SFU measures it on arrival; the send times stand in for it,
            // immune to the receiving thread's scheduling).
            let (prev, prev_header) = *runs[i - 1].last().expect("runs are not empty");
            let ticks = first.rtp_time.wrapping_sub(prev.rtp_time);
            let elapsed = sent_between(&prev_header, &header);
            let elapsed_ticks = elapsed.as_secs_f64() * 90_000.0;
            assert!(
                (f64::from(ticks) - elapsed_ticks).abs() < 0.25 * 90_000.0,
                "run {i}: the timestamp advanced {ticks} ticks across the switch, for \
                 {elapsed:?} ({elapsed_ticks:.0} ticks) between the two packets' send times"
            );
        }
    }

    // The first f run holds every f packet up to the pause, ending on a frame boundary.
    let (last_f, last_f_header) = *runs[0].last().expect("runs are not empty");
    assert_eq!(
        last_f_header.counter + 1,
        f_sent_before_pause,
        "the subscriber should get every f packet sent before the pause"
    );
    assert!(last_f.marker && last_f_header.end_of_frame, "{last_f:?}");

    // The h keyframe was sent on a request the SFU made no earlier than 500 ms after the
    // last f packet reached it, which was after the publisher sent it.
    let (_, first_h_header) = runs[1][0];
    let fallback = sent_between(&last_f_header, &first_h_header);
    assert!(
        fallback >= Duration::from_millis(490),
        "fell back {fallback:?} after the last f packet was sent: before f could be \
         considered stopped (500 ms)"
    );
    let (last_h, _) = *runs[1].last().expect("runs are not empty");
    let (first_f_again, _) = runs[2][0];
    eprintln!(
        "simulcast: f -> h keyframe sent {fallback:?} after the last f packet; back on f \
         {:?} after f resumed",
        first_f_again.at.saturating_duration_since(resumed_at)
    );
    assert!(
        last_h.at >= resumed_at,
        "h should have carried the subscriber until f came back"
    );

    // Both switches were made on keyframes the SFU asked for (no periodic ones).
    let keyframes_after = publisher.stats().keyframes;
    for layer in [H, F] {
        let l = usize::from(layer);
        assert!(
            keyframes_after[l] > keyframes_before[l],
            "layer {layer}: no keyframe was requested for the switch \
             ({keyframes_before:?} -> {keyframes_after:?})"
        );
    }

    // Audio was not disturbed.
    let audio = one_stream(&r, Audio);
    assert!(audio.is_clean(), "{audio:#?}");
}

/// Time between the publisher sending packet `a` and packet `b` (wall clock, from the
/// test pattern).
fn sent_between(a: &PatternHeader, b: &PatternHeader) -> Duration {
    Duration::from_micros(b.sent_us.saturating_sub(a.sent_us))
}

/// The one stream of `kind` in `r`; panics unless there is exactly one SSRC.
fn one_stream(r: &Reception, kind: PayloadKind) -> tools::StreamReport {
    let mut streams = r.streams(kind);
    assert_eq!(
        streams.len(),
        1,
        "{kind} should arrive on exactly one SSRC: {streams:#?}"
    );
    streams.remove(0)
}

/// Sequence numbers (16-bit) between the first and the last received of `kind` that never
/// arrived.
fn missing_seqs(r: &Reception, kind: PayloadKind) -> BTreeSet<u16> {
    let seen: BTreeSet<u64> = r.packets_of(kind).map(|p| p.ext_seq).collect();
    let (Some(first), Some(last)) = (seen.first(), seen.last()) else {
        return BTreeSet::new();
    };
    (*first..=*last)
        .filter(|s| !seen.contains(s))
        .map(|s| s as u16)
        .collect()
}

/// Whether a 16-bit sequence number lies between the first and the last received of `kind`
/// (the test runs far shorter than a sequence number wrap).
fn within_span(r: &Reception, kind: PayloadKind, seq: u16) -> bool {
    let seen: BTreeSet<u64> = r.packets_of(kind).map(|p| p.ext_seq).collect();
    let (Some(first), Some(last)) = (seen.first(), seen.last()) else {
        return false;
    };
    (*first..=*last).any(|s| s as u16 == seq)
}

fn layers_received(r: &Reception) -> BTreeSet<u8> {
    r.packets_of(Video)
        .filter_map(|p| p.decoded().map(|d| d.header.layer))
        .collect()
}

/// Whether a video packet of `layer` arrived (after `after`, if given).
fn has_layer_after(sub: &tools::Subscriber, layer: u8, after: Option<Instant>) -> bool {
    sub.with_reception(|r| {
        r.packets_of(Video).any(|p| {
            after.is_none_or(|t| p.at >= t) && p.decoded().is_some_and(|d| d.header.layer == layer)
        })
    })
}

/// Intact video packets grouped into runs of the same layer, in arrival order.
fn layer_runs<'a>(packets: &[&'a ReceivedPacket]) -> Vec<Vec<(&'a ReceivedPacket, PatternHeader)>> {
    let mut runs: Vec<Vec<(&ReceivedPacket, PatternHeader)>> = Vec::new();
    for p in packets {
        let Some(d) = p.decoded() else { continue };
        match runs.last_mut() {
            Some(run) if run[0].1.layer == d.header.layer => run.push((p, d.header)),
            _ => runs.push(vec![(p, d.header)]),
        }
    }
    runs
}
