//! Rooms that span nodes, on the deterministic test kit: two (or three) nodes whose relay
//! endpoints share a room over a simulated link (stream frames reliable, media datagrams on
//! the seeded network). The subscriber on the relay node must see the origin's publisher as
//! if it were local: contiguous sequence numbers, keyframes on request, repairs of a lossy hop,
//! the publisher leaving when the origin goes away, and no loops with three nodes.

mod common;

use std::time::Duration;

use common::*;
use sfu_core::engine::Command;
use sfu_core::proto::{Layer, NodeResponse, SetSubscription, SubscribePolicy};
use sfu_core::testkit::net::NetConfig;
use sfu_core::testkit::peer::PublishMedia;
use sfu_core::testkit::{Kit, PeerRef, relay_datagram};

/// A publisher on node 0, a subscriber of the same room on node 1 that relays the room from
/// node 0, both connected; the link between the nodes is up.
fn relayed_room(kit: &mut Kit, media: PublishMedia) -> (PeerRef, PeerRef) {
    kit.link_relay(0, 1);
    let publisher = kit.publish(0, 0, "r", "alice", media).expect("publish");
    kit.relay_room(1, "r", 0);
    let sub = kit
        .subscribe(1, 0, "r", "bob", WATCH, SubscribePolicy::NewestOther)
        .expect("subscribe");
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[publisher, sub])));
    (publisher, sub)
}

#[test]
fn a_subscriber_on_another_node_gets_the_publisher_through_the_relay() {
    let mut kit = Kit::new(&[1, 1], NetConfig::default());
    let (publisher, sub) = relayed_room(&mut kit, AV);
    kit.run_for(Duration::from_secs(3));
    let tag = kit.peer(publisher).tag;
    for (slot, what) in [(0, "audio"), (1, "video")] {
        let received = kit.peer(sub).received_on(slot);
        assert!(received.len() > 50, "{what}: {} packets", received.len());
        assert_contiguous(received, what);
        assert!(received.iter().all(|r| r.publisher == tag), "{what}");
        // One more hop of 5 ms than a local subscriber's 10 ms, plus the kit's steps.
        let late = received
            .iter()
            .skip(5)
            .filter(|r| r.latency > Duration::from_micros(15_100))
            .count();
        assert_eq!(late, 0, "{what}: packets later than the two hops");
    }
    let origin = kit.nodes[0].relay.stats().clone();
    let relay = kit.nodes[1].relay.stats().clone();
    // Each packet crossed the link once, and arrived once.
    assert!(origin.packets_out > 100, "{origin:?}");
    assert_eq!(
        origin.packets_out, relay.packets_in,
        "{origin:?} / {relay:?}"
    );
    assert_eq!(relay.dropped_malformed, 0);
}

#[test]
fn a_track_crosses_the_link_once_however_many_subscribers_it_has_there() {
    let mut kit = Kit::new(&[1, 2], NetConfig::default());
    let (_, first) = relayed_room(&mut kit, AV);
    let mut subs = vec![first];
    for i in 0..5 {
        subs.push(
            kit.subscribe(
                1,
                i % 2,
                "r",
                &format!("viewer{i}"),
                WATCH,
                SubscribePolicy::NewestOther,
            )
            .expect("subscribe"),
        );
    }
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &subs)));
    let before = kit.nodes[0].relay.stats().packets_out;
    kit.run_for(Duration::from_secs(2));
    let crossed = kit.nodes[0].relay.stats().packets_out - before;
    let delivered: usize = subs.iter().map(|s| kit.peer(*s).received_on(1).len()).sum();
    // Audio 50/s + video; six subscribers receive, but the link carries one copy.
    assert!(
        crossed > 100 && crossed < 2 * 400,
        "{crossed} packets crossed"
    );
    assert!(delivered as u64 > 4 * crossed / 2, "{delivered} delivered");
    for (i, s) in subs.iter().enumerate() {
        assert_contiguous(kit.peer(*s).received_on(1), &format!("viewer {i} video"));
    }
}

#[test]
fn packets_lost_on_the_hop_are_repaired_from_the_origin() {
    // 10 % of the datagrams between the nodes are lost (the peers' own legs are clean): the
    // relay node NACKs the gaps and the origin resends, so the subscriber sees no hole.
    let net = NetConfig {
        seed: 7,
        loss: 0.10,
        loss_min_len: 0,
        lossy: relay_datagram,
        ..NetConfig::default()
    };
    let mut kit = Kit::new(&[1, 1], net);
    let (_, sub) = relayed_room(&mut kit, AV);
    kit.run_for(Duration::from_secs(4));
    // Settle: the last NACKs and repairs land.
    kit.net.set_loss(0.0);
    kit.run_for(Duration::from_millis(500));
    let relay = kit.nodes[1].relay.stats().clone();
    let origin = kit.nodes[0].relay.stats().clone();
    assert!(kit.net.lost > 20, "the hop lost {} datagrams", kit.net.lost);
    assert!(
        relay.nacks_sent > 0 && origin.retransmitted > 0,
        "{relay:?} {origin:?}"
    );
    // The link's figures: every loss seen (first losses only, at most what the network
    // dropped, repairs lost too included there), none left unrepaired.
    let link = kit.nodes[1].relay.link_stats()[0].clone();
    assert!(
        link.lost > 10 && link.lost <= kit.net.lost,
        "{link:?}, {} lost",
        kit.net.lost
    );
    assert_eq!(link.unrepaired, 0, "{link:?}");
    for (slot, what) in [(0, "audio"), (1, "video")] {
        let received = kit.peer(sub).received_on(slot);
        assert!(received.len() > 100, "{what}: {}", received.len());
        assert_contiguous(received, what);
    }
}

#[test]
fn simulcast_layers_and_keyframes_work_through_the_relay() {
    let mut kit = Kit::new(&[1, 1], NetConfig::default());
    let (publisher, sub) = relayed_room(&mut kit, SIMULCAST);
    kit.run_for(Duration::from_secs(3));
    let video = kit.peer(sub).received_on(1);
    assert_contiguous(video, "video");
    // The highest layer is forwarded.
    assert_eq!(video.last().map(|r| r.layer), Some(2));

    // The subscriber asks for a keyframe: its node passes it to the origin, which asks the
    // publisher.
    let (asked, relayed) = (
        kit.peer(publisher).keyframe_requests,
        kit.nodes[1].relay.stats().keyframe_requests_sent,
    );
    assert!(kit.peer_mut(sub).request_keyframe(1));
    kit.run_for(Duration::from_millis(600));
    assert!(kit.nodes[1].relay.stats().keyframe_requests_sent > relayed);
    assert!(kit.peer(publisher).keyframe_requests > asked);

    // The top layer stops at the publisher: the subscriber moves down through the relay
    // (layer timeout, then a keyframe of layer 1 asked through the link), without a hole.
    let relayed = kit.nodes[1].relay.stats().keyframe_requests_sent;
    kit.peer_mut(publisher).pause_layer(2, true);
    kit.run_for(Duration::from_secs(3));
    let video = kit.peer(sub).received_on(1);
    assert_eq!(video.last().map(|r| r.layer), Some(1));
    assert_contiguous(video, "video after the switch");
    assert!(kit.nodes[1].relay.stats().keyframe_requests_sent > relayed);
}

/// The subscriber's video slot (1) follows its track up to `max_layer`, or pauses.
fn limit_video(kit: &mut Kit, sub: PeerRef, max_layer: Layer, paused: bool) {
    let session = kit.session(sub);
    let command = Command::SetSubscription(SetSubscription {
        session,
        slot: 1,
        max_layer,
        paused,
    });
    assert_eq!(kit.command(1, session, command), NodeResponse::Done);
}

#[test]
fn only_the_layers_the_relay_nodes_subscribers_may_follow_cross_the_link() {
    let mut kit = Kit::new(&[1, 1], NetConfig::default());
    let (_, sub) = relayed_room(&mut kit, SIMULCAST);
    kit.run_for(Duration::from_secs(2));
    let by_layer = |kit: &Kit| kit.nodes[0].relay.stats().packets_out_by_layer;
    assert!(
        by_layer(&kit).iter().all(|&n| n > 0),
        "{:?}",
        by_layer(&kit)
    );

    // The only subscriber wants the lowest layer: the upper two stop crossing.
    limit_video(&mut kit, sub, Layer(0), false);
    kit.run_for(Duration::from_millis(500));
    let before = by_layer(&kit);
    kit.run_for(Duration::from_secs(2));
    let after = by_layer(&kit);
    assert_eq!(after[1..], before[1..], "layers 1 and 2 still crossed");
    assert!(after[0] > before[0] + 50, "{before:?} -> {after:?}");
    let video = kit.peer(sub).received_on(1);
    assert_eq!(video.last().map(|r| r.layer), Some(0));
    assert_contiguous(video, "video down to layer 0");

    // Back to every layer: they cross again and the subscriber climbs to the top one (as its
    // bandwidth allocation lets it: a step up waits 2 s, docs/architecture.md "Bandwidth").
    limit_video(&mut kit, sub, Layer::HIGH, false);
    kit.run_for(Duration::from_secs(2));
    let back = by_layer(&kit);
    assert!(
        back[1] > after[1] && back[2] > after[2],
        "{after:?} -> {back:?}"
    );
    let top = |k: &Kit| k.peer(sub).received_on(1).last().map(|r| r.layer) == Some(2);
    assert!(kit.run_until(Duration::from_secs(10), top));
    let video = kit.peer(sub).received_on(1);
    assert_contiguous(video, "video back up to layer 2");

    // Paused: no video crosses, only the audio the subscriber still gets.
    limit_video(&mut kit, sub, Layer::HIGH, true);
    kit.run_for(Duration::from_millis(500));
    let (sent, heard) = (
        kit.nodes[0].relay.stats().packets_out,
        kit.peer(sub).received_on(0).len(),
    );
    kit.run_for(Duration::from_secs(2));
    let sent = kit.nodes[0].relay.stats().packets_out - sent;
    let heard = kit.peer(sub).received_on(0).len() - heard;
    assert!(heard > 50, "audio still flows: {heard}");
    assert!(
        sent.abs_diff(heard as u64) <= 2,
        "{sent} sent for {heard} audio packets"
    );
}

#[test]
fn the_origin_going_away_ends_the_relayed_tracks_and_a_new_link_brings_them_back() {
    let mut kit = Kit::new(&[1, 1], NetConfig::default());
    let (_, sub) = relayed_room(&mut kit, AV);
    kit.run_for(Duration::from_secs(2));
    kit.cut_relay(0, 1);
    let before = kit.peer(sub).received_on(1).len();
    kit.run_for(Duration::from_secs(2));
    let during = kit.peer(sub).received_on(1).len() - before;
    assert!(
        during < 10,
        "{during} video packets arrived while the link was cut"
    );
    assert!(
        kit.nodes[1].engines[0]
            .rooms()
            .all(|(_, r)| r.tracks().is_empty()),
        "the relayed tracks ended on the relay node"
    );

    // The link comes back: the room is joined again, the tracks are announced once more
    // (the same ids: one track each, no duplicate) and media resumes with a keyframe.
    kit.link_relay(0, 1);
    kit.run_for(Duration::from_secs(2));
    let after = kit.peer(sub).received_on(1).len() - before - during;
    assert!(after > 30, "{after} video packets after the link came back");
    let tracks: usize = kit.nodes[1].engines[0]
        .rooms()
        .map(|(_, r)| r.tracks().len())
        .sum();
    assert_eq!(tracks, 2, "audio and video, once each");
}

#[test]
fn an_origin_given_up_is_no_longer_relayed_from() {
    // The shell gives up an origin whose link stayed closed: the room is no longer relayed
    // from it (nothing left to rejoin when a link to it comes up), until control asks again.
    let mut kit = Kit::new(&[1, 1], NetConfig::default());
    let (_, sub) = relayed_room(&mut kit, AV);
    kit.run_for(Duration::from_secs(1));
    kit.cut_relay(0, 1);
    kit.run_for(Duration::from_secs(1));
    let origin = kit.nodes[0].id.clone();
    let now = kit.now();
    assert_eq!(kit.nodes[1].relay.forget_origin(now, &origin), 1);
    assert_eq!(kit.nodes[1].relay.relayed_rooms().count(), 0);
    let sent = kit.nodes[0].relay.stats().packets_out;
    kit.link_relay(0, 1);
    kit.run_for(Duration::from_secs(1));
    assert_eq!(
        kit.nodes[0].relay.stats().packets_out,
        sent,
        "nothing joined again"
    );
    // Control asks again: the subscriber, still there, gets the publisher again.
    let before = kit.peer(sub).received_on(1).len();
    kit.relay_room(1, "r", 0);
    kit.run_for(Duration::from_secs(2));
    assert!(kit.peer(sub).received_on(1).len() > before + 50);
}

#[test]
fn with_three_nodes_a_relayed_track_is_never_relayed_again() {
    // Node 1 relays from 0, node 2 relays from 1 (a misconfiguration control never makes):
    // node 1 has no track of its own, so nothing reaches node 2, and nothing loops back.
    let mut kit = Kit::new(&[1, 1, 1], NetConfig::default());
    let (_, _sub) = relayed_room(&mut kit, AV);
    kit.link_relay(1, 2);
    kit.relay_room(2, "r", 1);
    let far = kit
        .subscribe(2, 0, "r", "carol", WATCH, SubscribePolicy::NewestOther)
        .expect("subscribe");
    kit.run_for(Duration::from_secs(3));
    assert!(kit.peer(far).received_on(1).is_empty());
    assert_eq!(kit.nodes[1].relay.stats().packets_out, 0);
    assert_eq!(kit.nodes[0].relay.stats().packets_in, 0);
}

#[test]
fn a_room_on_three_nodes_is_relayed_from_each_of_the_others() {
    // What control does when a room's third node gets a session: node 2 relays the room
    // from node 0 (the publisher's) and from node 1 (a subscriber's). Relaying from one more
    // node adds that node's tracks; it must not replace what comes from the first.
    let mut kit = Kit::new(&[1, 1, 1], NetConfig::default());
    let (publisher, _sub) = relayed_room(&mut kit, AV);
    kit.link_relay(0, 2);
    kit.link_relay(1, 2);
    kit.relay_room(2, "r", 0);
    let far = kit
        .subscribe(2, 0, "r", "carol", WATCH, SubscribePolicy::NewestOther)
        .expect("subscribe");
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[far])));
    kit.relay_room(2, "r", 1);
    kit.relay_room(1, "r", 2);
    kit.relay_room(0, "r", 2);
    kit.run_for(Duration::from_secs(1));
    let before = kit.peer(far).received_on(1).len();
    kit.run_for(Duration::from_secs(2));
    let video = kit.peer(far).received_on(1);
    assert!(video.len() > before + 50, "{before} -> {}", video.len());
    assert_contiguous(video, "video");
    let tag = kit.peer(publisher).tag;
    assert!(video.iter().all(|r| r.publisher == tag));
    assert_eq!(kit.nodes[2].relay.relayed_rooms().count(), 2);
    // Nodes 1 and 2 publish nothing, so nothing crosses from them.
    assert_eq!(kit.nodes[1].relay.stats().packets_out, 0);
    assert_eq!(kit.nodes[2].relay.stats().packets_out, 0);
}

#[test]
fn the_idle_time_is_controls_to_choose() {
    // Control passes `cascade.idle_secs` with each relay request: 5 s here.
    let mut kit = Kit::new(&[1, 1], NetConfig::default());
    kit.link_relay(0, 1);
    let _publisher = kit.publish(0, 0, "r", "alice", AV).expect("publish");
    kit.relay_room_idle(1, "r", 0, Some(Duration::from_secs(5)));
    kit.run_for(Duration::from_secs(4));
    assert_eq!(kit.nodes[1].relay.relayed_rooms().count(), 1);
    kit.run_for(Duration::from_secs(2));
    assert_eq!(kit.nodes[1].relay.relayed_rooms().count(), 0);
}

#[test]
fn a_relayed_room_without_subscribers_is_left_after_the_idle_time() {
    let mut kit = Kit::new(&[1, 1], NetConfig::default());
    let (_, sub) = relayed_room(&mut kit, AV);
    kit.run_for(Duration::from_secs(1));
    assert!(kit.nodes[0].relay.stats().packets_out > 0);
    kit.close(sub);
    // Idle for 30 s (the default): then the relay node leaves and the origin stops sending.
    kit.run_for(Duration::from_secs(29));
    assert_eq!(kit.nodes[1].relay.relayed_rooms().count(), 1, "not before");
    kit.run_for(Duration::from_secs(2));
    assert_eq!(kit.nodes[1].relay.relayed_rooms().count(), 0);
    // The node may release the room's key.
    assert_eq!(
        kit.nodes[1].relay.poll_released().map(|r| r.to_string()),
        Some("r".to_string())
    );
    let sent = kit.nodes[0].relay.stats().packets_out;
    kit.run_for(Duration::from_secs(2));
    assert_eq!(
        kit.nodes[0].relay.stats().packets_out,
        sent,
        "the origin stopped"
    );
}
