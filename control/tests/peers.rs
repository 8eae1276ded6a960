//! The synthetic peers of `tools` against the real server: what a publisher sends (keyframes,
//! simulcast layers, a paused layer) and what a subscriber does on its own side (keyframe
//! requests, loss on purpose) is checked end to end. These ran against a mock SFU inside
//! `tools` before; the mock is gone, the assertions are kept.

mod support;

use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

use support::{CONNECT_TIMEOUT, Server, wait_until};
use tools::PayloadKind::{Audio, Video};
use tools::reception::DroppedPacket;
use tools::subscriber::IncomingLoss;
use tools::{ReceivedPacket, VideoConfig};

/// How long media may take to reach a count the test waits for.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(5);

/// An early subscriber (there before the publisher) and a late one (whose join makes the
/// server ask the publisher for a keyframe) both get audio and video intact, each kind on one
/// SSRC with consecutive sequence numbers, constant offsets to the source's packet counters
/// and timestamps, and video starting on a keyframe.
#[test]
fn media_flows_intact_to_early_and_late_subscribers() {
    let server = Server::start();
    let early = server.subscribe("intact");
    // No periodic keyframe after the first: the late subscriber's comes on request.
    let publisher = server.publish(
        "intact",
        true,
        Some(VideoConfig {
            keyframe_interval: 0,
            ..VideoConfig::default()
        }),
    );
    assert!(publisher.ice_connected());
    assert!(early.wait_packets(Video, 30, MEDIA_TIMEOUT));

    let requests_before = publisher.keyframe_requests();
    let late = server.subscribe("intact");
    assert!(late.wait_packets(Video, 30, MEDIA_TIMEOUT));
    assert!(late.wait_packets(Audio, 10, MEDIA_TIMEOUT));
    assert!(publisher.keyframe_requests() > requests_before);

    for (who, s) in [("early", &early), ("late", &late)] {
        let r = s.reception();
        assert_eq!(
            r.audio.corrupt + r.video.corrupt,
            0,
            "{who}: {:?}",
            r.first_corruption
        );
        assert!(
            r.first_packet(Video).is_some_and(|p| p.starts_keyframe()),
            "{who}: video must open with a keyframe"
        );
        for kind in [Audio, Video] {
            let streams = r.streams(kind);
            assert_eq!(streams.len(), 1, "{who} {kind}: {streams:?}");
            assert!(streams[0].is_clean(), "{who} {kind}: {streams:?}");
            assert_eq!(streams[0].seq_offsets, 1, "{who} {kind}: {streams:?}");
            assert_eq!(streams[0].timestamp_offsets, 1, "{who} {kind}: {streams:?}");
        }
    }
    let stats = publisher.stats();
    assert_eq!(stats.write_failures, 0);
    assert!(
        stats.keyframes[0] >= 2,
        "the first and a requested one: {stats:?}"
    );
    publisher.close().expect("delete publisher");
    early.close().expect("delete subscriber");
    late.close().expect("delete subscriber");
}

/// A simulcast publisher sends all three layers; a subscriber gets the top one only.
#[test]
fn simulcast_layers_are_all_sent() {
    let server = Server::start();
    let publisher = server.publish(
        "layers",
        false,
        Some(VideoConfig {
            simulcast: true,
            ..VideoConfig::default()
        }),
    );
    // The subscriber starts on a low layer while its bandwidth estimate grows and climbs to
    // the top one (docs/architecture.md, "Bandwidth"); on loopback it gets there.
    let sub = server.subscribe("layers");
    assert!(sub.wait_packets(Video, 60, MEDIA_TIMEOUT));
    let stats = publisher.stats();
    assert!(stats.video_packets.iter().all(|n| *n > 0), "{stats:?}");
    let climbed = wait_until(Duration::from_secs(30), || {
        let r = sub.reception();
        r.streams(Video)
            .first()
            .is_some_and(|s| s.layers.contains(&2))
    });
    let r = sub.reception();
    let streams = r.streams(Video);
    assert!(climbed, "never reached layer f: {streams:?}");
    assert_eq!(
        streams.len(),
        1,
        "one outgoing stream across the climb: {streams:?}"
    );
    assert!(streams[0].layers.is_subset(&BTreeSet::from([0, 1, 2])));
    assert_eq!(r.video.corrupt, 0, "{:?}", r.first_corruption);
    assert_eq!(r.audio.packets, 0);
}

/// A keyframe request the subscriber's owner asks for goes out (counted once) and reaches the
/// publisher through the server.
#[test]
fn a_subscriber_keyframe_request_reaches_the_publisher() {
    let server = Server::start();
    let sub = server.subscribe("pli");
    let publisher = server.publish("pli", false, Some(VideoConfig::default()));
    assert!(sub.wait_packets(Video, 10, MEDIA_TIMEOUT));
    let before = publisher.keyframe_requests();
    assert!(sub.request_keyframe());
    assert!(wait_until(CONNECT_TIMEOUT, || sub
        .reception()
        .keyframe_requests_sent
        == 1));
    assert!(
        wait_until(CONNECT_TIMEOUT, || publisher.keyframe_requests() > before),
        "the publisher got no keyframe request after the subscriber's PLI"
    );
}

/// A paused layer stops at a frame boundary while the others go on, and resumes where it
/// stopped: the next packet carries the next source counter, and the RTP clock has moved on
/// by the pause. The node's layer timeout is set far above the pause (however slow the
/// machine), so the subscriber stays on the paused layer throughout and sees the resumed
/// packets directly; and bandwidth estimation is off, so that the subscriber is on f however
/// busy the machine (a loaded machine's delays read as a thin downlink, and which layer an
/// estimate allows is the allocation tests' matter, on simulated time).
#[test]
fn a_paused_layer_stops_at_a_frame_boundary_and_resumes_without_a_gap() {
    const F: u8 = 2;
    // Longer than the source's catch-up limit (200 ms), so the RTP clock skips the missed
    // frames instead of bursting them.
    const PAUSE: Duration = Duration::from_millis(300);
    let server = Server::start_with(
        1,
        &[
            ("SFU__NODE__LAYER_TIMEOUT_MS", "60000"),
            ("SFU__NODE__BANDWIDTH_ESTIMATION", "false"),
        ],
        &[],
    );
    let publisher = server.publish(
        "pause",
        false,
        Some(VideoConfig {
            simulcast: true,
            ..VideoConfig::default()
        }),
    );
    let sub = server.subscribe("pause");
    // The server may start the subscriber on a lower layer and move it up to f on a keyframe:
    // what happens from then on is judged.
    assert!(
        wait_until(MEDIA_TIMEOUT, || sub.with_reception(|r| r
            .packets_of(Video)
            .filter_map(decoded_f)
            .count()
            >= 30)),
        "the subscriber should follow f"
    );
    let on_f = sub.with_reception(|r| {
        r.packets
            .iter()
            .position(|p| decoded_f(p).is_some())
            .expect("f arrived")
    });

    assert!(publisher.pause_layer(F));
    assert!(publisher.wait_layer_paused(F, true, MEDIA_TIMEOUT));
    let paused = publisher.stats();
    assert_eq!(paused.paused, vec![false, false, true]);
    let f_sent = paused.video_packets[usize::from(F)];
    // Everything sent has arrived once the subscriber's last counter is the last one sent.
    let last_f = || {
        sub.with_reception(|r| {
            r.packets_of(Video)
                .filter_map(decoded_f)
                .last()
                .map(|(p, h)| (p.clone(), *h))
        })
    };
    assert!(
        wait_until(MEDIA_TIMEOUT, || last_f()
            .is_some_and(|(_, h)| h.counter + 1 == f_sent)),
        "the subscriber should get every f packet sent before the pause: last {:?}, sent {f_sent}",
        last_f()
    );
    thread::sleep(PAUSE);
    let later = publisher.stats();
    assert_eq!(later.video_packets[usize::from(F)], f_sent, "f is silent");
    assert!(
        later.video_packets[1] > paused.video_packets[1],
        "h goes on"
    );
    assert!(
        later.video_packets[0] > paused.video_packets[0],
        "q goes on"
    );
    let (before_pause, header) = last_f().expect("f arrived");
    assert!(
        before_pause.marker && header.end_of_frame,
        "the pause waits for the end of a frame: {before_pause:?}"
    );

    assert!(publisher.resume_layer(F));
    assert!(publisher.wait_layer_paused(F, false, MEDIA_TIMEOUT));
    let resumed_from = sub.packets(Video);
    assert!(sub.wait_packets(Video, resumed_from + 30, MEDIA_TIMEOUT));
    let mut r = sub.reception();
    r.packets.drain(..on_f);
    let stream = &r.streams(Video)[0];
    // Sequence numbers run on across the pause, one-to-one with the source's packets: no
    // source packet was skipped.
    assert!(stream.is_clean(), "{stream:?}");
    assert_eq!(stream.seq_offsets, 1, "{stream:?}");
    assert_eq!(stream.layers, BTreeSet::from([F]), "{stream:?}");
    assert_eq!(r.video.corrupt, 0, "{:?}", r.first_corruption);
    let i = r
        .packets
        .iter()
        .position(|p| p.decoded().is_some_and(|d| d.header.counter == f_sent))
        .expect("the first packet after the pause arrived");
    let (before, after) = (&r.packets[i - 1], &r.packets[i]);
    assert_eq!(
        before.decoded().map(|d| d.header.counter + 1),
        Some(f_sent),
        "{before:?}"
    );
    // The RTP clock moved on by the pause.
    let gap = after.rtp_time.wrapping_sub(before.rtp_time);
    let pause_ticks = PAUSE.as_millis() as u32 * 90;
    assert!(
        gap >= pause_ticks,
        "timestamp advanced only {gap} ticks over the pause"
    );
}

fn decoded_f(p: &ReceivedPacket) -> Option<(&ReceivedPacket, &tools::pattern::PatternHeader)> {
    p.decoded()
        .filter(|d| d.header.layer == 2)
        .map(|d| (p, &d.header))
}

/// Loss configured on a subscriber drops exactly the chosen packets of the main SSRC, before
/// its `Rtc` sees them. Audio is never retransmitted: what was dropped stays missing. Video
/// losses are NACKed and come back on the RTX SSRC (their arrival is the repair test's
/// subject, in resilience.rs); here they must not shift the loss positions, which count the
/// main SSRC only.
#[test]
fn configured_loss_drops_exactly_the_chosen_packets() {
    let server = Server::start();
    let audio_loss = IncomingLoss::every(Audio, 10);
    let video_loss = IncomingLoss {
        kind: Video,
        every: 30,
        burst: 2,
    };
    let sub = server.subscribe_with("loss", |c| c.lose(audio_loss).lose(video_loss));
    let publisher = server.publish("loss", true, Some(VideoConfig::default()));
    assert!(sub.wait_packets(Video, 150, MEDIA_TIMEOUT));
    assert!(sub.wait_packets(Audio, 50, MEDIA_TIMEOUT));
    drop(publisher);
    // Let retransmissions in flight land before reading.
    thread::sleep(Duration::from_millis(300));
    let r = sub.reception();

    for (kind, expected) in [(Audio, audio_loss), (Video, video_loss)] {
        let arrived: Vec<&ReceivedPacket> = r.packets_of(kind).collect();
        let dropped: Vec<&DroppedPacket> = r.dropped_of(kind).collect();
        assert!(dropped.len() >= 4, "{kind}: {dropped:?}");
        // Positions count delivered and dropped packets together, in sequence order
        // (loopback does not reorder); a repaired packet is one position.
        let mut all: Vec<u16> = arrived.iter().map(|p| p.seq).collect();
        all.extend(dropped.iter().map(|d| d.seq));
        all.sort_by_key(|seq| seq.wrapping_sub(arrived[0].seq));
        all.dedup();
        let lost: Vec<u16> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| expected.loses(*i as u64 + 1))
            .map(|(_, seq)| *seq)
            .collect();
        let dropped_seqs: Vec<u16> = dropped.iter().map(|d| d.seq).collect();
        assert_eq!(dropped_seqs, lost, "{kind}");
        let stream = &r.streams(kind)[0];
        assert_eq!(stream.duplicates, 0, "{stream:?}");
        // Every loss not repaired before the last arrival shows as a gap; none other does.
        let span = stream.last_ext_seq - stream.first_ext_seq;
        let unrepaired = r.unrepaired(kind);
        let inside = unrepaired
            .iter()
            .filter(|d| u64::from(d.seq.wrapping_sub(arrived[0].seq)) < span)
            .count();
        assert_eq!(stream.missing, inside as u64, "{kind}: {stream:?}");
        match kind {
            Audio => {
                // Nothing repairs audio.
                assert_eq!(unrepaired.len(), dropped.len(), "{kind}");
                assert_eq!(r.totals(kind).repairs, 0);
                assert_eq!(stream.reordered, 0, "{stream:?}");
            }
            Video => {
                // Repairs arrive after later packets: the only reordering there is.
                assert!(stream.reordered <= r.totals(kind).repairs, "{stream:?}");
            }
        }
    }
}
