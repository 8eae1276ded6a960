//! The media engine on the deterministic test kit: simulated time, a seeded in-memory network
//! and str0m peers, no sockets and no sleeps. Each test runs seconds to minutes of simulated
//! time and gives the same result every run.

use std::time::Duration;

mod common;

use common::*;
use sfu_core::engine::{Command, HANDOVER_CHUNK};
use sfu_core::proto::{
    EndReason, Layer, MediaKind, NodeEvent, NodeResponse, SetSubscription, Subscribe,
    SubscribePolicy, TrackId,
};
use sfu_core::testkit::net::NetConfig;
use sfu_core::testkit::peer::SubscribeMedia;
use sfu_core::testkit::{Kit, PeerRef};

#[test]
fn a_subscriber_gets_every_packet_one_network_round_later() {
    // No jitter, 5 ms each way: once both peers are connected, every packet must arrive 10 ms
    // after it was written (plus the kit's 10 µs steps for str0m's pacers), so no forwarding
    // work waited for a later loop pass, a session timer or a housekeeping tick.
    let mut kit = Kit::new(&[1], NetConfig::default());
    let publisher = kit.publish(0, 0, "r", "alice", AV).expect("publish");
    let sub = kit
        .subscribe(0, 0, "r", "bob", WATCH, SubscribePolicy::NewestOther)
        .expect("subscribe");
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[publisher, sub])));
    kit.run_for(Duration::from_secs(3));
    for slot in 0..2 {
        let received = kit.peer(sub).received_on(slot);
        assert!(
            received.len() > 50,
            "slot {slot}: {} packets",
            received.len()
        );
        assert_contiguous(received, &format!("slot {slot}"));
        assert!(
            received
                .iter()
                .all(|r| r.publisher == kit.peer(publisher).tag)
        );
        // The first packets waited for the subscriber's DTLS handshake to finish.
        let late: Vec<Duration> = received
            .iter()
            .skip(3)
            .map(|r| r.latency)
            .filter(|l| *l > Duration::from_micros(10_050))
            .collect();
        assert!(
            late.is_empty(),
            "slot {slot}: latencies above 10 ms: {late:?}"
        );
    }
    // The node's forwarding-delay histogram says the same from inside: every copy was handed
    // to the socket in the pass its packet arrived in (no simulated time passed).
    let stats = kit.nodes[0].metrics[0].snapshot(0, 0);
    let copies: u64 = stats.forward_delay.iter().sum();
    assert!(copies > 100, "{stats:?}");
    assert_eq!(copies, stats.rtp_forwarded, "one delay per copy written");
    assert_eq!(
        stats.forward_delay[0], copies,
        "all within the first bucket"
    );
    assert_eq!(stats.forward_delay_sum_us, 0);
}

#[test]
fn a_large_fan_out_leaves_in_chunks_and_nothing_is_lost() {
    // 64 subscribers of one publisher on one worker: each packet makes 64 copies. The engine
    // stops at a chunk of datagrams until the shell took it, so no handover carries a whole
    // packet's fan-out, and every subscriber still gets every packet. Each pass starts the
    // fan-out one subscriber further, so the first copy goes to each of them in turn.
    const SUBSCRIBERS: usize = 64;
    let mut kit = Kit::new(&[1], NetConfig::default());
    let publisher = kit.publish(0, 0, "r", "alice", AV).expect("publish");
    let subs = viewers(&mut kit, SUBSCRIBERS, 1);
    let mut all = subs.clone();
    all.push(publisher);
    assert!(kit.run_until(Duration::from_secs(10), |k| connected(k, &all)));
    kit.run_for(Duration::from_secs(2));
    for (i, sub) in subs.iter().enumerate() {
        for slot in 0..2 {
            assert_contiguous(
                kit.peer(*sub).received_on(slot),
                &format!("subscriber {i} slot {slot}"),
            );
        }
    }
    let largest = kit.nodes[0].largest_handover;
    // A chunk ends after the session that reached it, whose drain adds a packet or two (a
    // resend with them at most).
    assert!(
        (1..=HANDOVER_CHUNK + 4).contains(&largest),
        "largest handover {largest} RTP datagrams"
    );
    assert!(
        largest < SUBSCRIBERS,
        "a packet's fan-out left in one handover"
    );
    let firsts = &kit.nodes[0].first_rtp_to;
    assert!(
        firsts.len() >= SUBSCRIBERS / 2,
        "the first copy of a pass went to {} subscribers of {SUBSCRIBERS}: {firsts:?}",
        firsts.len()
    );
    let stats = kit.nodes[0].metrics[0].snapshot(0, 0);
    let copies: u64 = stats.forward_delay.iter().sum();
    assert!(copies > (SUBSCRIBERS * 100) as u64, "{stats:?}");
    assert_eq!(copies, stats.rtp_forwarded, "one delay per copy written");
}

#[test]
fn subscribers_on_every_worker_get_the_publishers_media() {
    let mut kit = Kit::new(&[3], NetConfig::default());
    let publisher = kit.publish(0, 0, "r", "alice", SIMULCAST).expect("publish");
    let subs = viewers(&mut kit, 6, 3);
    let mut all = subs.clone();
    all.push(publisher);
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &all)));
    kit.run_for(Duration::from_secs(4));
    for (i, sub) in subs.iter().enumerate() {
        let video = kit.peer(*sub).received_on(1);
        assert_contiguous(video, &format!("subscriber {i} video"));
        // The highest layer being sent is the one forwarded.
        assert_eq!(video.last().map(|r| r.layer), Some(2), "subscriber {i}");
        assert_contiguous(
            kit.peer(*sub).received_on(0),
            &format!("subscriber {i} audio"),
        );
    }
    let tracks: Vec<u64> = kit.nodes[0]
        .metrics
        .iter()
        .map(|m| m.snapshot(0, 0).published_tracks)
        .collect();
    assert_eq!(
        tracks,
        vec![2, 0, 0],
        "audio and video, published on worker 0"
    );
    // One reference per interested worker: each of the other two workers knows the room.
    for w in 1..3 {
        assert_eq!(kit.nodes[0].engines[w].room_count(), 1);
    }
    // Each worker times the copies it writes, those of packets from another worker too.
    for w in 0..3 {
        let stats = kit.nodes[0].metrics[w].snapshot(0, 0);
        let copies: u64 = stats.forward_delay.iter().sum();
        assert!(copies > 0, "worker {w}: {stats:?}");
        assert_eq!(
            copies, stats.rtp_forwarded,
            "worker {w}: one delay per copy"
        );
    }
}

#[test]
fn keyframe_requests_reach_the_publisher_at_most_once_per_layer_per_interval() {
    // Twelve subscribers on three workers join one by one; each needs a keyframe to start,
    // but the publisher's layer is asked at most every 500 ms.
    let mut kit = Kit::new(&[3], NetConfig::default());
    let publisher = kit.publish(0, 0, "r", "alice", AV).expect("publish");
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[publisher])));
    kit.run_for(Duration::from_secs(1));
    let before = kit.peer(publisher).keyframe_requests;
    let mut subs = Vec::new();
    for i in 0..12 {
        subs.push(
            kit.subscribe(
                0,
                i % 3,
                "r",
                &format!("v{i}"),
                WATCH,
                SubscribePolicy::NewestOther,
            )
            .expect("subscribe"),
        );
        kit.run_for(Duration::from_millis(100));
    }
    kit.run_for(Duration::from_secs(2));
    let asked = kit.peer(publisher).keyframe_requests - before;
    // 3.2 s of joins and settling: at most one request per 500 ms, plus the first.
    assert!(
        (1..=8).contains(&asked),
        "{asked} keyframe requests reached the publisher"
    );
    for (i, sub) in subs.iter().enumerate() {
        assert!(
            !kit.peer(*sub).received_on(1).is_empty(),
            "subscriber {i} got no video"
        );
    }
}

#[test]
fn a_storm_of_subscriber_plis_reaches_the_publisher_throttled() {
    // Three subscribers on three workers each send a PLI every 50 ms for 2 s (120 in all);
    // the publisher's layer is asked at most once per 500 ms, and every subscriber gets the
    // keyframes that answer.
    let mut kit = Kit::new(&[3], NetConfig::default());
    let publisher = kit.publish(0, 0, "r", "alice", AV).expect("publish");
    let subs: Vec<PeerRef> = (0..3)
        .map(|i| {
            kit.subscribe(
                0,
                i,
                "r",
                &format!("v{i}"),
                WATCH,
                SubscribePolicy::NewestOther,
            )
            .expect("subscribe")
        })
        .collect();
    let mut all = subs.clone();
    all.push(publisher);
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &all)));
    // Let the join-time requests age past the throttle window.
    kit.run_for(Duration::from_secs(1));
    let before = kit.peer(publisher).keyframe_requests;
    let mut sent = 0;
    for _ in 0..40 {
        for s in &subs {
            sent += u32::from(kit.peer_mut(*s).request_keyframe(1));
        }
        kit.run_for(Duration::from_millis(50));
    }
    kit.run_for(Duration::from_millis(300));
    let forwarded = kit.peer(publisher).keyframe_requests - before;
    assert_eq!(sent, 120, "every subscriber had a stream to ask on");
    assert!(
        (3..=5).contains(&forwarded),
        "{forwarded} keyframe requests reached the publisher for {sent} PLIs in 2 s"
    );
    let received: u64 = (0..3)
        .map(|w| kit.nodes[0].metrics[w].snapshot(0, 0))
        .map(|m| m.plis_received)
        .sum();
    assert!(received >= 100, "the node counted {received} PLIs");
}

#[test]
fn a_subscriber_outlives_a_vanished_publisher_and_follows_the_next_one() {
    let mut kit = Kit::with_config(&[2], NetConfig::default(), |c| {
        c.ice_timeout = Duration::from_secs(2);
    });
    let first = kit.publish(0, 0, "r", "alice", AV).expect("publish");
    let sub = kit
        .subscribe(0, 1, "r", "bob", WATCH, SubscribePolicy::NewestOther)
        .expect("subscribe");
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[first, sub])));
    kit.run_for(Duration::from_secs(1));
    kit.vanish(first);
    assert!(kit.run_until(Duration::from_secs(10), |k| {
        k.nodes[0].engines[0].session_count() == 0
    }));
    // Two more ICE timeouts: the subscriber, which keeps sending RTCP and STUN, stays.
    kit.run_for(Duration::from_secs(4));
    assert_eq!(kit.nodes[0].engines[1].session_count(), 1);
    let before = kit.peer(sub).received_on(1).len();
    let next = kit.publish(0, 0, "r", "carol", AV).expect("publish");
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[next])));
    kit.run_for(Duration::from_secs(2));
    let video = kit.peer(sub).received_on(1);
    assert!(
        video.len() > before + 30,
        "no media from the next publisher"
    );
    assert_eq!(video.last().map(|r| r.publisher), Some(kit.peer(next).tag));
    assert_contiguous(video, "video across the change of publisher");
}

#[test]
fn a_session_nobody_contacts_is_reaped_long_before_the_connect_timeout() {
    // Defaults: first contact 5 s, connect timeout 20 s. An offer nobody follows up with ICE
    // (a closed tab, or a flood of offers) holds its session 5 s, not 20.
    let mut kit = Kit::new(&[1], NetConfig::default());
    let silent = kit
        .subscribe(0, 0, "r", "ghost", WATCH, SubscribePolicy::NewestOther)
        .expect("subscribe");
    kit.vanish(silent);
    let slow_but_alive = kit
        .subscribe(0, 0, "r", "bob", WATCH, SubscribePolicy::NewestOther)
        .expect("subscribe");
    let start = kit.now();
    assert!(kit.run_until(Duration::from_secs(20), |k| {
        k.nodes[0].engines[0].session_count() == 1
    }));
    let after = kit.now() - start;
    assert!(
        after > Duration::from_secs(5) && after < Duration::from_secs(6),
        "reaped {after:?} after set-up"
    );
    let reasons: Vec<EndReason> = kit.nodes[0]
        .events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::SessionEnded { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, vec![EndReason::ConnectTimeout]);
    assert!(
        kit.peer(slow_but_alive).connected,
        "the peer that did ICE stays"
    );
}

#[test]
fn vanished_peers_are_reaped_and_every_end_is_reported() {
    let mut kit = Kit::with_config(&[2], NetConfig::default(), |c| {
        c.ice_timeout = Duration::from_secs(3);
        c.connect_timeout = Duration::from_secs(4);
    });
    let publisher = kit.publish(0, 0, "r", "alice", AV).expect("publish");
    let subs: Vec<PeerRef> = (0..4)
        .map(|i| {
            kit.subscribe(
                0,
                i % 2,
                "r",
                &format!("v{i}"),
                WATCH,
                SubscribePolicy::NewestOther,
            )
            .expect("subscribe")
        })
        .collect();
    // One never connects at all.
    let never = kit
        .subscribe(0, 1, "r", "ghost", WATCH, SubscribePolicy::NewestOther)
        .expect("subscribe");
    kit.vanish(never);
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &subs)));
    kit.run_for(Duration::from_secs(1));
    kit.vanish(publisher);
    for s in &subs {
        kit.vanish(*s);
    }
    assert!(kit.run_until(Duration::from_secs(30), |k| {
        k.nodes[0].engines.iter().all(|e| e.session_count() == 0)
    }));
    let node = &kit.nodes[0];
    let ended: Vec<EndReason> = node
        .events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::SessionEnded { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(ended.len(), 6, "{ended:?}");
    assert_eq!(
        ended
            .iter()
            .filter(|r| **r == EndReason::ConnectTimeout)
            .count(),
        1
    );
    assert!(ended.iter().all(|r| matches!(
        r,
        EndReason::ConnectTimeout | EndReason::IceTimeout | EndReason::Disconnected
    )));
    assert_eq!(node.directory_len(), 0);
    for e in &node.engines {
        assert_eq!(e.room_count(), 0, "room state left behind on {e:?}");
    }
    let reaped: u64 = node
        .metrics
        .iter()
        .map(|m| m.snapshot(0, 0).sessions_reaped)
        .sum();
    assert_eq!(reaped, 6);
}

#[test]
fn interest_ends_with_a_subscriber_that_ends_right_after_it_was_created() {
    // The race the node's old interest counting lost: a subscriber on another worker ends
    // before anything else happens. The publisher's worker must stop sending to that worker.
    let mut kit = Kit::new(&[2], NetConfig::default());
    let publisher = kit.publish(0, 0, "r", "alice", AV).expect("publish");
    let sub = kit
        .subscribe(0, 1, "r", "bob", WATCH, SubscribePolicy::NewestOther)
        .expect("subscribe");
    assert_eq!(kit.close(sub), NodeResponse::Done);
    let room = kit.nodes[0].engines[0]
        .rooms()
        .next()
        .map(|(key, _)| *key)
        .expect("the publisher's room");
    let remote = kit.nodes[0].engines[0]
        .room(room)
        .map(|r| r.remote_workers.clone());
    assert_eq!(remote, Some(vec![]), "worker 0 still pushes to worker 1");
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[publisher])));
    kit.run_for(Duration::from_secs(1));
    // Worker 1 holds the room only as announced tracks, and nothing crossed the ring.
    assert_eq!(kit.nodes[0].engines[1].session_count(), 0);
    assert_eq!(kit.close(publisher), NodeResponse::Done);
    kit.run_for(Duration::from_millis(100));
    for e in &kit.nodes[0].engines {
        assert_eq!(e.room_count(), 0);
    }
}

#[test]
fn explicit_subscriptions_pick_a_track_cap_its_layer_and_pause() {
    let mut kit = Kit::new(&[2], NetConfig::default());
    let alice = kit.publish(0, 0, "r", "alice", SIMULCAST).expect("publish");
    let carol = kit.publish(0, 1, "r", "carol", SIMULCAST).expect("publish");
    let bob = kit
        .subscribe(
            0,
            1,
            "r",
            "bob",
            SubscribeMedia {
                audio: false,
                video_slots: 2,
            },
            SubscribePolicy::Explicit,
        )
        .expect("subscribe");
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(
        k,
        &[alice, carol, bob]
    )));
    kit.run_for(Duration::from_secs(1));
    assert!(
        kit.peer(bob).received_on(0).is_empty(),
        "explicit: nothing until subscribed"
    );
    let video_of = |kit: &Kit, p: PeerRef| -> TrackId {
        kit.peers[p.0]
            .created
            .tracks
            .iter()
            .find(|t| t.kind == MediaKind::Video)
            .map(|t| t.track)
            .expect("a video track")
    };
    let session = kit.session(bob);
    for (slot, publisher, layer) in [(0u16, alice, Layer(2)), (1, carol, Layer(0))] {
        let track = video_of(&kit, publisher);
        let r = kit.command(
            0,
            session,
            Command::Subscribe(Subscribe {
                session,
                slot,
                track,
                max_layer: layer,
            }),
        );
        assert_eq!(r, NodeResponse::Done);
    }
    // Slot 0 reaches its cap, the top layer, once bob's bandwidth estimate has grown into it
    // (it starts low, docs/architecture.md "Bandwidth").
    let at_top = |k: &Kit| {
        let got = k.peer(bob).received_on(0);
        got.len() > 30 && got[got.len() - 30..].iter().all(|r| r.layer == 2)
    };
    assert!(kit.run_until(Duration::from_secs(10), at_top));
    let slot0 = kit.peer(bob).received_on(0).to_vec();
    let slot1 = kit.peer(bob).received_on(1).to_vec();
    assert_contiguous(&slot0, "slot 0");
    assert_contiguous(&slot1, "slot 1");
    assert!(slot0.iter().all(|r| r.publisher == kit.peer(alice).tag));
    assert!(
        slot1
            .iter()
            .all(|r| r.publisher == kit.peer(carol).tag && r.layer == 0)
    );

    // Pause slot 0: nothing more arrives; resume: it continues the same sequence.
    let set = |paused| {
        Command::SetSubscription(SetSubscription {
            session,
            slot: 0,
            max_layer: Layer(1),
            paused,
        })
    };
    assert_eq!(kit.command(0, session, set(true)), NodeResponse::Done);
    kit.run_for(Duration::from_millis(100));
    let paused_at = kit.peer(bob).received_on(0).len();
    kit.run_for(Duration::from_secs(1));
    assert_eq!(
        kit.peer(bob).received_on(0).len(),
        paused_at,
        "paused, yet packets came"
    );
    assert_eq!(kit.command(0, session, set(false)), NodeResponse::Done);
    kit.run_for(Duration::from_secs(2));
    let after = kit.peer(bob).received_on(0).to_vec();
    assert!(after.len() > paused_at + 20);
    assert_contiguous(&after, "slot 0 across the pause");
    assert_eq!(
        after.last().map(|r| r.layer),
        Some(1),
        "capped at layer 1 after resuming"
    );

    // A slot cannot take a track of the other kind, nor a track that does not exist.
    let audio = kit.peers[alice.0].created.tracks[0].track;
    let wrong = kit.command(
        0,
        session,
        Command::Subscribe(Subscribe {
            session,
            slot: 1,
            track: audio,
            max_layer: Layer(2),
        }),
    );
    assert!(matches!(wrong, NodeResponse::Error(_)), "{wrong:?}");
}

#[test]
fn two_nodes_in_one_kit_are_independent() {
    // Two engines standing for two nodes: the same room name on each is a different room
    // until a cascade joins them.
    let mut kit = Kit::new(&[1, 1], NetConfig::default());
    let a = kit.publish(0, 0, "r", "alice", AV).expect("publish");
    let on_a = kit
        .subscribe(0, 0, "r", "bob", WATCH, SubscribePolicy::NewestOther)
        .expect("subscribe");
    let on_b = kit
        .subscribe(1, 0, "r", "carol", WATCH, SubscribePolicy::NewestOther)
        .expect("subscribe");
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[a, on_a, on_b])));
    kit.run_for(Duration::from_secs(2));
    assert!(!kit.peer(on_a).received_on(1).is_empty());
    assert!(kit.peer(on_b).received_on(1).is_empty());
}

/// What the randomized test remembers about a subscriber.
#[derive(Debug)]
struct Watcher {
    peer: PeerRef,
    explicit: bool,
    /// The publisher tag it must never get (it shares that publisher's identity).
    own: Option<u32>,
    /// Explicit slot: (packets received when last subscribed, the publisher subscribed to).
    subscribed: Option<(usize, u32)>,
}

/// Publishers and subscribers join, leave (politely or by vanishing), switch layers, pause
/// and resume subscriptions, over minutes of simulated time on a network that loses (2 % of
/// video first transmissions) and reorders packets on the way to subscribers. (The way in stays in order: a keyframe's later
/// packets that overtake its first one across a layer switch are not forwarded, a known gap
/// of the forwarder.) After every step each live subscriber's streams are contiguous (what was
/// lost is repaired), explicit subscriptions deliver only what they asked for, nobody gets
/// their own media by the newest-other policy, and at the end nothing is left behind.
#[test]
fn random_rooms_keep_every_stream_contiguous_and_leak_nothing() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    for seed in [1u64, 2, 3] {
        let net = NetConfig {
            seed,
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(3),
            loss: 0.02,
            loss_every: 0,
            loss_min_len: 500,
            // Lost on the way to subscribers, and only first transmissions: every loss is
            // repairable, so a hole left is the engine's.
            lossy: sfu_core::testkit::node_video_first_sends,
        };
        let mut kit = Kit::with_config(&[2], net, |c| {
            c.ice_timeout = Duration::from_secs(3);
            c.connect_timeout = Duration::from_secs(4);
        });
        let mut rng = StdRng::seed_from_u64(seed);
        let mut publishers: Vec<(PeerRef, String)> = Vec::new();
        let mut watchers: Vec<Watcher> = Vec::new();
        let mut created = 0usize;
        let mut names = 0u32;
        for step in 0..80 {
            match rng.random_range(0..6) {
                0 if publishers.len() < 3 => {
                    names += 1;
                    let identity = format!("p{names}");
                    let media = if rng.random_bool(0.5) { SIMULCAST } else { AV };
                    let p = kit
                        .publish(0, rng.random_range(0..2), "room", &identity, media)
                        .expect("publish");
                    publishers.push((p, identity));
                    created += 1;
                }
                1 if !publishers.is_empty() => {
                    let (p, _) = publishers.remove(rng.random_range(0..publishers.len()));
                    if rng.random_bool(0.5) {
                        kit.close(p);
                    } else {
                        kit.vanish(p);
                    }
                }
                2 if watchers.len() < 6 => {
                    let explicit = rng.random_bool(0.4);
                    // Sometimes a participant watches under a publisher's identity.
                    let shared = (!explicit && !publishers.is_empty() && rng.random_bool(0.3))
                        .then(|| publishers[rng.random_range(0..publishers.len())].clone());
                    names += 1;
                    let identity = shared
                        .as_ref()
                        .map_or_else(|| format!("w{names}"), |(_, id)| id.clone());
                    let policy = if explicit {
                        SubscribePolicy::Explicit
                    } else {
                        SubscribePolicy::NewestOther
                    };
                    let w = kit
                        .subscribe(0, rng.random_range(0..2), "room", &identity, WATCH, policy)
                        .expect("subscribe");
                    created += 1;
                    watchers.push(Watcher {
                        peer: w,
                        explicit,
                        own: shared.map(|(p, _)| kit.peer(p).tag),
                        subscribed: None,
                    });
                }
                3 if !watchers.is_empty() => {
                    let w = watchers.remove(rng.random_range(0..watchers.len()));
                    if rng.random_bool(0.5) {
                        kit.close(w.peer);
                    } else {
                        kit.vanish(w.peer);
                    }
                }
                4 if !publishers.is_empty() => {
                    let (p, _) = publishers[rng.random_range(0..publishers.len())].clone();
                    let paused = rng.random_bool(0.5);
                    kit.peer_mut(p).pause_layer(2, paused);
                }
                _ if !watchers.is_empty() && !publishers.is_empty() => {
                    let wi = rng.random_range(0..watchers.len());
                    let (p, _) = publishers[rng.random_range(0..publishers.len())].clone();
                    let session = kit.session(watchers[wi].peer);
                    let layer = Layer(rng.random_range(0..3));
                    if watchers[wi].explicit && rng.random_bool(0.6) {
                        let track = kit.peers[p.0]
                            .created
                            .tracks
                            .iter()
                            .find(|t| t.kind == MediaKind::Video)
                            .map(|t| t.track)
                            .expect("video");
                        let r = kit.command(
                            0,
                            session,
                            Command::Subscribe(Subscribe {
                                session,
                                slot: 1,
                                track,
                                max_layer: layer,
                            }),
                        );
                        if r == NodeResponse::Done {
                            let seen = kit.peer(watchers[wi].peer).received_on(1).len();
                            watchers[wi].subscribed = Some((seen, kit.peer(p).tag));
                        }
                    } else {
                        let paused = rng.random_bool(0.3);
                        kit.command(
                            0,
                            session,
                            Command::SetSubscription(SetSubscription {
                                session,
                                slot: 1,
                                max_layer: layer,
                                paused,
                            }),
                        );
                    }
                }
                _ => {}
            }
            kit.run_for(Duration::from_millis(1500));
            for w in &watchers {
                check_watcher(&kit, w, seed, step);
            }
        }
        // Everyone leaves; after the timeouts nothing is left anywhere.
        let all: Vec<PeerRef> = publishers
            .iter()
            .map(|(p, _)| *p)
            .chain(watchers.iter().map(|w| w.peer))
            .collect();
        for p in all {
            kit.close(p);
        }
        assert!(
            kit.run_until(Duration::from_secs(30), |k| {
                k.nodes[0]
                    .engines
                    .iter()
                    .all(|e| e.session_count() == 0 && e.room_count() == 0)
            }),
            "seed {seed}: state left behind: {:?}",
            kit.nodes[0].engines
        );
        let node = &kit.nodes[0];
        let ended = node
            .events
            .iter()
            .filter(|e| matches!(e, NodeEvent::SessionEnded { .. }))
            .count();
        assert_eq!(
            ended, created,
            "seed {seed}: every session's end is reported once"
        );
        assert_eq!(node.directory_len(), 0);
        let published = node
            .events
            .iter()
            .filter(|e| matches!(e, NodeEvent::TrackPublished(_)))
            .count();
        let unpublished = node
            .events
            .iter()
            .filter(|e| matches!(e, NodeEvent::TrackUnpublished { .. }))
            .count();
        assert_eq!(published, unpublished, "seed {seed}");
        for m in &node.metrics {
            let stats = m.snapshot(0, 0);
            assert_eq!(stats.session_panics, 0);
            assert_eq!(
                (
                    stats.publish_sessions,
                    stats.subscribe_sessions,
                    stats.published_tracks
                ),
                (0, 0, 0),
                "seed {seed}: gauges back to zero"
            );
        }
    }
}

/// Packets more than this many sequence numbers behind the newest are past repair time.
const SETTLED: u64 = 60;

fn check_watcher(kit: &Kit, w: &Watcher, seed: u64, step: usize) {
    let peer = kit.peer(w.peer);
    let session = kit.session(w.peer);
    for slot in 0..2 {
        // What the engine wrote on this track: one contiguous run of sequence numbers,
        // across layer switches, publisher changes, pauses and resubscriptions.
        if let Some(written) = kit.nodes[0].forwarded.get(&(session, slot as u16)) {
            let mut seqs = written.clone();
            seqs.sort_unstable();
            let before = seqs.len();
            seqs.dedup();
            assert_eq!(
                seqs.len(),
                before,
                "seed {seed} step {step}: {:?} slot {slot}: a sequence number written twice",
                w.peer
            );
            let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
            let missing = (last - first + 1) as usize - seqs.len();
            assert_eq!(
                missing, 0,
                "seed {seed} step {step}: {:?} slot {slot}: the engine skipped {missing} in {first}..={last}",
                w.peer
            );
        }
        // What the subscriber received: the same, once repairs had time (audio is never
        // lost; video losses are repaired by NACK and RTX).
        let received = peer.received_on(slot);
        if received.is_empty() {
            continue;
        }
        // Pictures count on across every switch the forwarder made.
        assert_pictures_continue(
            received,
            &format!("seed {seed} step {step}: watcher {:?} slot {slot}", w.peer),
        );
        let mut seqs: Vec<u64> = received.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let newest = seqs[seqs.len() - 1];
        let settled: Vec<u64> = seqs
            .into_iter()
            .filter(|s| *s + SETTLED <= newest)
            .collect();
        if let (Some(first), Some(last)) = (settled.first(), settled.last()) {
            let missing = (last - first + 1) as usize - settled.len();
            // str0m's NACK/RTX repair now and then leaves a lost packet unrepaired (seen in
            // about one run in ten of this test, one packet); that is the WebRTC stack's
            // doing, not the engine's, whose own output is checked exactly above.
            assert!(
                missing <= 2,
                "seed {seed} step {step}: watcher {:?} slot {slot}: {missing} holes in {first}..={last}",
                w.peer
            );
        }
        if let Some(own) = w.own {
            assert!(
                received.iter().all(|r| r.publisher != own),
                "seed {seed} step {step}: {:?} got its own media",
                w.peer
            );
        }
    }
    if let Some((from, tag)) = w.subscribed {
        // After a subscribe: the old selection until the new one's keyframe, then only the
        // new one, never back, in the order of the sequence numbers the forwarder gave them
        // (what a receiver plays). Arrival order may differ: an old packet lost on the way and
        // repaired after the switch arrives late, and padding resends old packets unasked.
        let all = peer.received_on(1);
        let mut seen: std::collections::HashSet<u64> = all[..from].iter().map(|r| r.seq).collect();
        let mut after: Vec<(u64, u32)> = all[from..]
            .iter()
            .filter(|r| seen.insert(r.seq))
            .map(|r| (r.seq, r.publisher))
            .collect();
        after.sort_unstable();
        let after: Vec<u32> = after.into_iter().map(|(_, publisher)| publisher).collect();
        if let Some(first_new) = after.iter().position(|p| *p == tag) {
            assert!(
                after[first_new..].iter().all(|p| *p == tag),
                "seed {seed} step {step}: {:?} left its subscription: {after:?}",
                w.peer
            );
        }
    }
}
