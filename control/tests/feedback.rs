//! Feedback toward publishers: subscribers' keyframe requests are forwarded to the layer they
//! watch, throttled to at most one per publisher layer per 500 ms however many subscribers ask.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use support::{Server, expect_media};
use tools::PayloadKind::{Audio, Video};
use tools::VideoConfig;

#[test]
fn subscriber_plis_reach_the_publisher_throttled() {
    let server = Server::start();
    // No periodic keyframes: every keyframe the publisher sends below answers a request.
    let video = Some(VideoConfig {
        keyframe_interval: 100_000,
        ..VideoConfig::default()
    });
    let publisher = server.publish("pli", true, video);
    let subs: Vec<_> = (0..3).map(|_| server.subscribe("pli")).collect();
    for (i, s) in subs.iter().enumerate() {
        expect_media(s, Video, &format!("subscriber {i}"));
        expect_media(s, Audio, &format!("subscriber {i}"));
    }
    // Let the join-time requests age past the throttle window.
    thread::sleep(Duration::from_millis(700));
    let before = publisher.keyframe_requests();

    // 3 subscribers x one PLI every 50 ms for 2 s = about 120 requests.
    let storm = Duration::from_secs(2);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < storm {
        for s in &subs {
            assert!(s.request_keyframe(), "subscriber thread is running");
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    for s in &subs {
        sent += s.reception().keyframe_requests_sent;
    }
    let forwarded = publisher.keyframe_requests() - before;
    let window = storm.as_millis() as u64 / 500;
    eprintln!("PLIs sent by subscribers: {sent}; keyframe requests at the publisher: {forwarded}");
    assert!(sent >= 60, "subscribers sent only {sent} PLIs");
    assert!(
        forwarded >= 1,
        "none of {sent} subscriber PLIs reached the publisher"
    );
    assert!(
        forwarded <= window + 2,
        "{forwarded} keyframe requests reached the publisher for {sent} PLIs in {storm:?}: \
         the throttle allows at most one per 500 ms (≈{window})"
    );
    // Each forwarded request made the publisher send a keyframe, and subscribers got it.
    for (i, s) in subs.iter().enumerate() {
        let keyframes = s
            .reception()
            .packets_of(Video)
            .filter(|p| p.starts_keyframe())
            .count();
        assert!(keyframes >= 2, "subscriber {i} saw {keyframes} keyframes");
    }
    for s in subs {
        s.close().expect("DELETE subscriber");
    }
    // A closing session hands in the feedback str0m has not reported yet, so after the
    // DELETEs the node has counted every PLI that reached it: each one the subscribers asked
    // for, unless two requests were folded into one RTCP PLI on the subscriber's side.
    let m = server.metrics();
    let plis = m.sum_where("sfu_keyframe_requests_received_total", &[("kind", "pli")]);
    let firs = m.sum_where("sfu_keyframe_requests_received_total", &[("kind", "fir")]);
    eprintln!("PLIs counted by the node: {plis}, FIRs: {firs}");
    assert!(
        plis <= sent as f64 && plis >= 0.9 * sent as f64,
        "sfu_keyframe_requests_received_total{{kind=\"pli\"}} is {plis}; the subscribers sent \
         {sent} PLIs"
    );
    assert_eq!(firs, 0.0, "the subscribers sent no FIR");
    // The other direction: every request the publisher got was sent, and counted, by the node.
    let to_publisher = m.sum("sfu_keyframe_requests_total");
    assert!(
        to_publisher >= publisher.keyframe_requests() as f64 && to_publisher < plis,
        "sfu_keyframe_requests_total is {to_publisher}: it counts the (throttled) requests to \
         the publisher, which got {}",
        publisher.keyframe_requests()
    );
    publisher.close().expect("DELETE publisher");
}
