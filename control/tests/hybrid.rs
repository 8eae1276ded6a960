//! Hybrid rooms (docs/hybrid.md) through the real `control` binary with scripted clients: a
//! room peer to peer while small, prewarmed, moved to the SFU at `sfu_at` and back at
//! `p2p_at`; switches acknowledged, retried and timed out; a switch during a switch; the
//! peer-to-peer signaling relay.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::Server;
use support::rtc::{Client, Offerer, recv_sections};
use tools::token::{Grants, dev_token};
use tools::whip::{HttpRequest, Method};

/// Hybrid rooms on, with a short ack timeout; and a patient node: the test peers offer but
/// never connect, and their tracks must outlive `node.first_contact_timeout_secs`.
const HYBRID: [(&str, &str); 5] = [
    ("SFU__HYBRID__ENABLED", "true"),
    ("SFU__HYBRID__ACK_TIMEOUT_SECS", "3"),
    ("SFU__HYBRID__RETRY_MS", "500"),
    ("SFU__NODE__FIRST_CONTACT_TIMEOUT_SECS", "600"),
    ("SFU__NODE__CONNECT_TIMEOUT_SECS", "600"),
];

fn server() -> Server {
    Server::start_with(1, &HYBRID, &[])
}

/// Give `room` its own thresholds (the room admin's `PUT .../settings`).
fn thresholds(server: &Server, room: &str, sfu_at: u32, p2p_at: u32, prewarm_at: u32) {
    let admin = dev_token(
        room,
        "admin",
        Grants {
            admin: true,
            ..Grants::PUBLISH_SUBSCRIBE
        },
    )
    .expect("token");
    let body = json!({"hybrid": {"sfu_at": sfu_at, "p2p_at": p2p_at, "prewarm_at": prewarm_at}})
        .to_string();
    let target = format!("/api/rooms/{room}/settings");
    let r = server
        .client
        .request(&HttpRequest {
            method: Method::Put,
            target: &target,
            content_type: Some("application/json"),
            bearer: Some(&admin),
            body: body.as_bytes(),
        })
        .expect("PUT settings");
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn switch(client: &mut Client, to: &str) -> u64 {
    let m = client
        .expect_where(|m| m["type"] == "switch" && m["to"] == to)
        .await;
    m["epoch"].as_u64().expect("epoch")
}

async fn ack(client: &mut Client, epoch: u64) {
    client
        .send(json!({"type": "switch_ack", "epoch": epoch}))
        .await;
}

fn switches(server: &Server, to: &str) -> f64 {
    server
        .metrics()
        .sum_where("sfu_room_switches_total", &[("to", to)])
}

fn wait_switches(server: &Server, to: &str, n: f64) {
    assert!(
        support::wait_until(Duration::from_secs(20), || switches(server, to) >= n),
        "{n} switch(es) to {to} completed; metrics say {}",
        switches(server, to)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_goes_peer_to_peer_then_through_the_sfu_and_back() {
    let server = server();
    let room = "voice";
    let mut clients: Vec<(String, Client)> = Vec::new();
    // 1..7 join peer to peer; from the 6th the room prewarms.
    for i in 1..=7 {
        let identity = format!("p{i}");
        let (mut c, joined) = Client::join(&server, room, &identity).await;
        assert_eq!(joined["mode"], "p2p", "{identity}: {joined}");
        let welcome = c.expect("mode").await;
        assert_eq!(
            (welcome["mode"].as_str(), welcome["epoch"].as_u64()),
            (Some("p2p"), Some(0))
        );
        assert_eq!(welcome["prewarm"], i >= 6, "{identity}: {welcome}");
        clients.push((identity, c));
    }
    // The first five were told when the sixth joined; the sixth and seventh as they joined.
    for (identity, c) in clients.iter_mut().take(5) {
        let prewarm = c.expect("prewarm").await;
        assert_eq!(prewarm["on"], true, "{identity}");
    }
    // Peer to peer, a prewarmed publisher's tracks are listed but nobody is subscribed to them.
    let (_mic, answer, _) = clients[0].1.publish_mic_and_camera().await;
    assert_eq!(answer["tracks"].as_array().map(Vec::len), Some(2));
    clients[1]
        .1
        .expect_where(|m| m["type"] == "track_published")
        .await;
    // The relay: p2 offers to p1, which gets it from p2; an unknown peer is an error.
    let signal = json!({"sdp": "v=0 (an offer)", "type": "offer"});
    clients[1]
        .1
        .send(json!({"type": "p2p_signal", "to": "p1", "data": signal}))
        .await;
    let got = clients[0].1.expect("p2p_signal").await;
    assert_eq!((got["from"].as_str(), &got["data"]), (Some("p2"), &signal));
    let e = clients[1]
        .1
        .request(json!({"type": "p2p_signal", "to": "nobody", "data": {}}))
        .await;
    assert_eq!(e["code"], "unknown_participant");

    // The 8th moves everyone to the SFU: all eight are told, and subscribed to what is
    // published.
    let (p8, joined) = Client::join(&server, room, "p8").await;
    assert_eq!(joined["mode"], "p2p");
    clients.push(("p8".into(), p8));
    let mut epoch = 0;
    for (identity, c) in clients.iter_mut() {
        epoch = switch(c, "sfu").await;
        assert_eq!(epoch, 1, "{identity}");
    }
    let renegotiate = clients[1].1.expect("renegotiate").await;
    assert_eq!(
        renegotiate["audio"], 1,
        "through the SFU, p2 receives p1: {renegotiate}"
    );
    for (_, c) in clients.iter_mut() {
        ack(c, epoch).await;
    }
    wait_switches(&server, "sfu", 1.0);
    // A 9th joins straight into the SFU.
    let (mut p9, joined) = Client::join(&server, room, "p9").await;
    assert_eq!(
        (joined["mode"].as_str(), joined["epoch"].as_u64()),
        (Some("sfu"), Some(1))
    );
    let welcome = p9.expect("mode").await;
    assert_eq!(welcome["mode"], "sfu");

    // Down to 6: still the SFU (the hysteresis); at 5 everyone moves back.
    p9.request(json!({"type": "leave"})).await;
    for _ in 0..2 {
        let (_, mut c) = clients.pop().expect("a client");
        c.request(json!({"type": "leave"})).await;
    }
    assert_eq!(switches(&server, "p2p"), 0.0);
    let (_, mut c) = clients.pop().expect("a client");
    c.request(json!({"type": "leave"})).await;
    assert_eq!(clients.len(), 5);
    for (identity, c) in clients.iter_mut() {
        epoch = switch(c, "p2p").await;
        assert_eq!(epoch, 2, "{identity}");
    }
    // One more leaves before acknowledging: nobody waits for it.
    let (_, mut c) = clients.pop().expect("a client");
    c.request(json!({"type": "leave"})).await;
    for (_, c) in clients.iter_mut() {
        ack(c, epoch).await;
    }
    wait_switches(&server, "p2p", 1.0);
    // Peer to peer again, nothing comes through the SFU: p2's receiving sections carry none
    // of p1's tracks.
    let mut receiver = Offerer::new();
    let (sdp, _) = receiver.offer(&recv_sections(1, 1));
    let answer = clients[1]
        .1
        .request(json!({"type": "subscriber_offer", "sdp": sdp}))
        .await;
    assert_eq!(answer["type"], "subscriber_answer", "{answer}");
    let slots = answer["slots"].as_array().expect("slots");
    assert!(
        slots.iter().all(|s| s.get("track").is_none()),
        "peer to peer, the SFU carries nothing: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_never_acknowledges_is_retried_then_removed() {
    let server = server();
    let room = "stubborn";
    thresholds(&server, room, 3, 1, 2);
    let (mut a, _) = Client::join(&server, room, "a").await;
    let (mut b, _) = Client::join(&server, room, "b").await;
    let (mut c, _) = Client::join(&server, room, "c").await;
    let epoch = switch(&mut a, "sfu").await;
    ack(&mut a, epoch).await;
    let epoch_b = switch(&mut b, "sfu").await;
    ack(&mut b, epoch_b).await;
    // C is told again (every retry_ms), then removed at ack_timeout_secs.
    switch(&mut c, "sfu").await;
    let again = switch(&mut c, "sfu").await;
    assert_eq!(again, epoch, "a retry repeats the epoch");
    let removed = c
        .expect_where_within(Duration::from_secs(15), |m| m["type"] == "error")
        .await;
    assert_eq!(removed["code"], "removed", "{removed}");
    assert!(
        removed["message"]
            .as_str()
            .is_some_and(|m| m.contains("hybrid.ack_timeout_secs")),
        "{removed}"
    );
    for other in [&mut a, &mut b] {
        let left = other
            .expect_where(|m| m["type"] == "participant_left" && m["identity"] == "c")
            .await;
        assert_eq!(left["reason"], "removed");
    }
    wait_switches(&server, "sfu", 1.0);
    let failed = server.metrics().sum("sfu_room_switch_failed_acks_total");
    assert_eq!(failed, 1.0);
    let took = server.metrics().sum("sfu_room_switch_seconds_sum");
    assert!(took >= 2.5, "the switch lasted until the timeout: {took} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_back_waits_for_the_switch_in_flight() {
    let server = server();
    let room = "shrinking";
    thresholds(&server, room, 3, 1, 2);
    let (mut a, _) = Client::join(&server, room, "a").await;
    let (b, _) = Client::join(&server, room, "b").await;
    let (c, _) = Client::join(&server, room, "c").await;
    let up = switch(&mut a, "sfu").await;
    ack(&mut a, up).await;
    // B and C leave while the move up waits for them: it completes with A alone, and only
    // then does the room move back down.
    for mut gone in [b, c] {
        gone.request(json!({"type": "leave"})).await;
    }
    let down = switch(&mut a, "p2p").await;
    assert_eq!(down, up + 1);
    // A stale acknowledgement counts for nothing; the right one completes it.
    ack(&mut a, up).await;
    ack(&mut a, down).await;
    wait_switches(&server, "p2p", 1.0);
    assert_eq!(switches(&server, "sfu"), 1.0);
    let _: Vec<Value> = a.drain().await;
}
