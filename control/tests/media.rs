//! Media through the real server: synthetic publishers and subscribers over WHIP/WHEP, checking
//! what arrives packet by packet (test-pattern payloads, sequence numbers, timestamps).

mod support;

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    KeyframeBaseline, MIN_DELIVERY, Server, assert_audio_and_video_delivery, assert_delivery,
    candidate_ports, expect_audio_and_video, expect_media, media_window, sent, wait_until,
};
use tools::PayloadKind::{Audio, Video};
use tools::VideoConfig;

fn video(keyframe_interval: u32) -> Option<VideoConfig> {
    Some(VideoConfig {
        keyframe_interval,
        ..VideoConfig::default()
    })
}

#[test]
fn one_publisher_three_subscribers_receive_everything_intact() {
    let server = Server::start();
    let publisher = server.publish("fanout", true, video(60));
    let subs: Vec<_> = (0..3).map(|_| server.subscribe("fanout")).collect();
    expect_audio_and_video(&subs);
    let (from, to) = media_window(&publisher);

    for (i, s) in subs.iter().enumerate() {
        let r = s.reception();
        let who = format!("subscriber {i}");
        assert_audio_and_video_delivery(&who, &r, &from, &to);
        let first = r.first_packet(Video).expect("video arrived");
        assert!(
            first.starts_keyframe(),
            "{who}: video must start with a keyframe, got {first:?}"
        );
    }
    assert_eq!(publisher.stats().write_failures, 0);

    let m = server.metrics();
    assert!(m.sum("sfu_packets_in_total") > 0.0);
    assert!(m.sum("sfu_packets_out_total") > 0.0);
    assert!(m.sum("sfu_bytes_in_total") > 0.0);
    assert!(m.sum("sfu_bytes_out_total") > m.sum("sfu_bytes_in_total"));
    assert_eq!(m.sum_where("sfu_sessions", &[("kind", "publish")]), 1.0);
    assert_eq!(m.sum_where("sfu_sessions", &[("kind", "subscribe")]), 3.0);
    // Each subscriber's packets of a video frame left in UDP GSO sends (on by default; Linux
    // 4.18+), and every subscriber still got every packet intact and in order (above).
    let (gso_sends, gso_datagrams) = (
        m.sum("sfu_gso_sends_total"),
        m.sum("sfu_gso_datagrams_total"),
    );
    assert!(
        gso_sends > 0.0 && gso_datagrams >= 2.0 * gso_sends,
        "expected GSO sends of several datagrams: {gso_sends} sends, {gso_datagrams} datagrams"
    );
    assert!(gso_datagrams < m.sum("sfu_packets_out_total"));

    for s in subs {
        s.close().expect("DELETE subscriber");
    }
    publisher.close().expect("DELETE publisher");
}

#[test]
fn late_subscriber_gets_a_keyframe_first() {
    let server = Server::start();
    // No periodic keyframes within the test: only a request can produce one.
    let publisher = server.publish("late", true, video(100_000));
    thread::sleep(Duration::from_secs(2));
    let baseline = KeyframeBaseline::take(&server, &publisher);

    let late = server.subscribe("late");
    expect_media(&late, Video, "late subscriber");
    expect_media(&late, Audio, "late subscriber");

    baseline.assert_keyframe_requested(&server, &publisher, "the publisher");
    let r = late.reception();
    let first = r.first_packet(Video).expect("video arrived");
    assert!(
        first.starts_keyframe(),
        "the late subscriber's first video packet must open a keyframe, got {first:?}"
    );
    assert_eq!(r.video.corrupt, 0, "{:?}", r.first_corruption);
}

#[test]
fn deleting_the_publisher_stops_forwarding() {
    let server = Server::start();
    let mut publisher = server.publish("delete", true, video(30));
    let sub = server.subscribe("delete");
    expect_media(&sub, Audio, "subscriber");
    expect_media(&sub, Video, "subscriber");
    assert!(sub.wait_packets(Video, 30, Duration::from_secs(2)));

    // The publisher keeps sending after DELETE: only the server can stop the flow.
    publisher.delete_session().expect("DELETE publisher");
    let deleted_at = Instant::now();
    let total = || sub.packets(Audio) + sub.packets(Video);
    thread::sleep(Duration::from_secs(1));
    let after_1s = total();
    let sent_after_1s = publisher.stats();
    thread::sleep(Duration::from_millis(500));
    let sent_later = publisher.stats();
    assert!(
        sent_later.audio_packets > sent_after_1s.audio_packets,
        "the publisher should still be sending"
    );
    assert_eq!(
        total(),
        after_1s,
        "the subscriber still receives media {:?} after the publisher's DELETE",
        deleted_at.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(1), || {
            server
                .metrics()
                .sum_where("sfu_sessions", &[("kind", "publish")])
                == 0.0
        }),
        "sfu_sessions{{kind=\"publish\"}} still counts the deleted publisher"
    );
    assert!(
        sub.state().running(),
        "the subscriber's session should survive"
    );
}

#[test]
fn subscribers_on_both_workers_all_receive_everything() {
    let server = Server::start_with_workers(2);
    let publisher = server.publish("spread", true, video(60));
    let subs: Vec<_> = (0..4).map(|_| server.subscribe("spread")).collect();

    let ports: BTreeSet<u16> = subs
        .iter()
        .flat_map(|s| candidate_ports(s.answer()))
        .collect();
    assert_eq!(
        ports.len(),
        2,
        "4 subscribers on a 2-worker node should use both workers' ports, got {ports:?}"
    );
    let m = server.metrics();
    let by_worker = m.by_label("sfu_sessions", "worker", &[("kind", "subscribe")]);
    assert!(
        by_worker.len() == 2 && by_worker.values().all(|n| *n >= 1.0),
        "sfu_sessions{{kind=\"subscribe\"}} by worker: {by_worker:?}"
    );
    assert_eq!(by_worker.values().sum::<f64>(), 4.0);

    expect_audio_and_video(&subs);
    let (from, to) = media_window(&publisher);
    for (i, s) in subs.iter().enumerate() {
        let r = s.reception();
        let who = format!("subscriber {i} (ports {:?})", candidate_ports(s.answer()));
        assert_audio_and_video_delivery(&who, &r, &from, &to);
    }
}

#[test]
fn simulcast_subscriber_receives_the_full_layer_only() {
    let server = Server::start();
    let simulcast = VideoConfig {
        simulcast: true,
        ..VideoConfig::default()
    };
    let publisher = server.publish("simulcast", true, Some(simulcast));
    let sub = server.subscribe("simulcast");
    expect_media(&sub, Video, "subscriber");
    expect_media(&sub, Audio, "subscriber");
    // The subscriber starts on a low layer and climbs as its bandwidth estimate grows
    // (docs/architecture.md, "Bandwidth"); on loopback it reaches the top one.
    let video_layers = || -> Vec<u8> {
        sub.reception()
            .packets_of(Video)
            .filter_map(|p| p.decoded().map(|d| d.header.layer))
            .collect()
    };
    let at_top = wait_until(Duration::from_secs(30), || {
        let layers = video_layers();
        layers.len() > 100 && layers[layers.len() - 100..].iter().all(|l| *l == 2)
    });
    assert!(at_top, "never climbed to layer f");
    let before = video_layers().len();
    let (from, to) = media_window(&publisher);

    assert!(
        to.video_packets.iter().all(|n| *n > 0),
        "the publisher should send all three layers: {to:?}"
    );
    let r = sub.reception();
    let layers: BTreeSet<u8> = r
        .packets_of(Video)
        .filter_map(|p| p.decoded().map(|d| d.header.layer))
        .skip(before)
        .collect();
    assert_eq!(
        layers,
        BTreeSet::from([2]),
        "once on layer f (index 2), the subscriber should receive only it"
    );
    // Every layer-f packet sent in the window arrived, on the one SSRC the climb kept. (The
    // stream as a whole also carries the climb, each switch a new rewrite offset, which
    // `assert_delivery`'s one-offset check does not allow for.)
    let (lo, hi) = (sent(&from, Video, 2), sent(&to, Video, 2));
    let received = r.source_counters(Video, 2).range(lo..hi).count() as u64;
    assert!(
        hi > lo && received as f64 >= MIN_DELIVERY * (hi - lo) as f64,
        "received {received} of the {} layer-f packets sent",
        hi - lo
    );
    assert_eq!(r.streams(Video).len(), 1, "{:#?}", r.streams(Video));
    assert_delivery("subscriber", &r, Audio, 0, &from, &to);
    assert!(r.first_packet(Video).is_some_and(|p| p.starts_keyframe()));
}
