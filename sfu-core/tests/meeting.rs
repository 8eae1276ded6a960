//! Meetings on the deterministic test kit: six participants each receiving the five others,
//! joins and leaves mid-call, pause and resume, subscriber connections that grow by
//! renegotiation, active speakers ranked from scripted audio levels across workers, and
//! simulcast layers chosen by each subscriber's bandwidth estimate behind a bottleneck, and
//! connection quality judged from what the peers' reports say of a lossy network.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

mod common;

use common::*;
use sfu_core::engine::Command;
use sfu_core::proto::{
    AudioFloor, Layer, NodeEvent, NodeResponse, ParticipantId, Quality, SessionId, SetSubscription,
    Subscribe, SubscribePolicy, TrackId,
};
use sfu_core::testkit::net::{Bottleneck, Datagram, NetConfig};
use sfu_core::testkit::peer::{PublishMedia, SubscribeMedia};
use sfu_core::testkit::{Kit, PeerRef};

const VOICE: PublishMedia = PublishMedia {
    audio: true,
    video_layers: 0,
};
/// Speech: -30 dBov with the voice flag. Silence: -127 dBov, no voice.
const SPEAKING: Option<(u8, bool)> = Some((30, true));
const SILENT: Option<(u8, bool)> = Some((127, false));

/// The speaker lists the node reported for room `room`, in order.
fn speaker_events(kit: &Kit) -> Vec<Vec<TrackId>> {
    kit.nodes[0]
        .events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Speakers { speakers, .. } => Some(speakers.clone()),
            _ => None,
        })
        .collect()
}

fn audio_track(kit: &Kit, peer: PeerRef) -> TrackId {
    TrackId {
        session: kit.session(peer),
        index: 0,
    }
}

/// The speakers worker `worker` of node 0 knows for its (only) room.
fn worker_speakers(kit: &Kit, worker: usize) -> Vec<ParticipantId> {
    let engine = &kit.nodes[0].engines[worker];
    engine
        .rooms()
        .next()
        .map(|(_, room)| room.speakers.clone())
        .unwrap_or_default()
}

fn last_speakers(kit: &Kit) -> Vec<TrackId> {
    speaker_events(kit).last().cloned().unwrap_or_default()
}

#[test]
fn active_speakers_follow_scripted_levels_across_workers() {
    // Two publishers on different workers: one worker ranks the room from both's speech.
    let mut kit = Kit::new(&[2], NetConfig::default());
    let ada = kit.publish(0, 0, "talk", "ada", VOICE).expect("ada");
    let bob = kit.publish(0, 1, "talk", "bob", VOICE).expect("bob");
    kit.peer_mut(ada).audio_level = SILENT;
    kit.peer_mut(bob).audio_level = SILENT;
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[ada, bob])));
    kit.run_for(Duration::from_secs(2));
    assert!(speaker_events(&kit).is_empty(), "silence names no speaker");
    let (ada_track, bob_track) = (audio_track(&kit, ada), audio_track(&kit, bob));

    // Ada talks: she becomes the speaker within a fraction of a second of steady speech.
    kit.peer_mut(ada).audio_level = SPEAKING;
    assert!(
        kit.run_until(Duration::from_secs(2), |k| last_speakers(k)
            == vec![ada_track]),
        "ada is named: {:?}",
        speaker_events(&kit)
    );
    let reports = speaker_events(&kit).len();

    // A subscriber joins on the worker that does not rank the room: that worker learns the
    // speakers from the ranking worker (for bandwidth allocation), at once and on changes.
    let watcher = kit
        .subscribe(0, 1, "talk", "eve", WATCH, SubscribePolicy::NewestOther)
        .expect("watcher");
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[watcher])));
    assert_eq!(
        worker_speakers(&kit, 1),
        vec![ParticipantId::from_identity("ada")]
    );

    // Bob coughs (60 ms of speech) while Ada goes on: nothing changes.
    kit.peer_mut(bob).audio_level = SPEAKING;
    kit.run_for(Duration::from_millis(60));
    kit.peer_mut(bob).audio_level = SILENT;
    kit.run_for(Duration::from_secs(2));
    assert_eq!(
        speaker_events(&kit).len(),
        reports,
        "a cough is not a speaker: {:?}",
        speaker_events(&kit)
    );

    // Ada pauses between sentences (0.8 s): she stays the speaker.
    kit.peer_mut(ada).audio_level = SILENT;
    kit.run_for(Duration::from_millis(800));
    kit.peer_mut(ada).audio_level = SPEAKING;
    kit.run_for(Duration::from_secs(1));
    assert_eq!(
        speaker_events(&kit).len(),
        reports,
        "a pause keeps the tile"
    );

    // Ada stops, Bob talks: Bob takes over, and once Ada's hold runs out he is alone.
    kit.peer_mut(ada).audio_level = SILENT;
    kit.peer_mut(bob).audio_level = SPEAKING;
    assert!(
        kit.run_until(Duration::from_secs(5), |k| last_speakers(k)
            == vec![bob_track]),
        "bob alone: {:?}",
        speaker_events(&kit)
    );
    assert!(
        speaker_events(&kit)
            .iter()
            .skip(reports)
            .all(|list| list.first() == Some(&bob_track) || list.first() == Some(&ada_track)),
        "every list in between is led by one of them"
    );
    assert_eq!(
        worker_speakers(&kit, 1),
        vec![ParticipantId::from_identity("bob")]
    );

    // Bob leaves mid-sentence: the list empties at once, not after a hold.
    let before = speaker_events(&kit).len();
    kit.close(bob);
    assert!(
        kit.run_until(Duration::from_millis(500), |k| speaker_events(k).len()
            > before
            && last_speakers(k).is_empty()),
        "bob's leaving empties the list: {:?}",
        speaker_events(&kit)
    );
}

/// One participant: its publisher and its subscriber connection.
#[derive(Debug, Clone, Copy)]
struct Participant {
    publisher: PeerRef,
    subscriber: PeerRef,
}

/// Five audio and five video receiving sections: one audio and five video at first, four
/// more audio by renegotiation, so slots 0 and 6..=9 are audio, 1..=5 video.
const OTHERS: usize = 5;
fn audio_slot(k: usize) -> u16 {
    if k == 0 { 0 } else { (OTHERS + k) as u16 }
}
fn video_slot(k: usize) -> u16 {
    (1 + k) as u16
}

fn join(kit: &mut Kit, i: usize) -> Participant {
    let name = format!("p{i}");
    let publisher = kit.publish(0, i % 2, "meet", &name, AV).expect("publish");
    let media = SubscribeMedia {
        audio: true,
        video_slots: OTHERS,
    };
    let subscriber = kit
        .subscribe(
            0,
            (i + 1) % 2,
            "meet",
            &name,
            media,
            SubscribePolicy::Explicit,
        )
        .expect("subscribe");
    match kit.add_receivers(subscriber, OTHERS - 1, 0) {
        NodeResponse::SessionCreated(c) => {
            assert_eq!(c.slots.len(), 2 * OTHERS, "the new sections are slots");
            assert_eq!(c.slot_mids.len(), 2 * OTHERS);
        }
        other => panic!("renegotiation refused: {other:?}"),
    }
    Participant {
        publisher,
        subscriber,
    }
}

/// `who`'s subscriber receives `from` on its `k`-th pair of slots.
fn subscribe(kit: &mut Kit, who: Participant, k: usize, from: Participant) {
    let session = kit.session(who.subscriber);
    let publisher = kit.session(from.publisher);
    for (slot, index) in [(audio_slot(k), 0), (video_slot(k), 1)] {
        let command = Command::Subscribe(Subscribe {
            session,
            slot,
            track: TrackId {
                session: publisher,
                index,
            },
            max_layer: Layer::HIGH,
        });
        assert_eq!(kit.command(0, session, command), NodeResponse::Done);
    }
}

fn received(kit: &Kit, who: Participant, slot: u16) -> usize {
    kit.peer(who.subscriber).received_on(slot as usize).len()
}

/// Every slot pair `k` of `who` carries `from`'s audio and video: all of the recent packets
/// come from `from`, and no sequence number is missing.
fn assert_carries(kit: &Kit, who: Participant, k: usize, from: Participant, what: &str) {
    let tag = kit.peer(from.publisher).tag;
    for slot in [audio_slot(k), video_slot(k)] {
        let got = kit.peer(who.subscriber).received_on(slot as usize);
        assert!(got.len() > 40, "{what}: slot {slot}: {} packets", got.len());
        let recent = &got[got.len() - 20..];
        assert!(
            recent.iter().all(|r| r.publisher == tag),
            "{what}: slot {slot} carries someone else"
        );
        assert_contiguous(got, &format!("{what}: slot {slot}"));
    }
}

/// Push to talk: with the floor held, every listener gets the holder's audio and nobody
/// else's (the others' packets stop at the node), video goes on; the floor passes within one
/// audio packet interval plus the network's delay; a free floor lets no audio through, an open
/// one all of it again.
#[test]
fn push_to_talk_forwards_only_the_floor_holders_audio() {
    const N: usize = 4;
    let mut kit = Kit::new(&[2], NetConfig::default());
    let people: Vec<Participant> = (0..N).map(|i| join(&mut kit, i)).collect();
    let everyone: Vec<PeerRef> = people
        .iter()
        .flat_map(|p| [p.publisher, p.subscriber])
        .collect();
    assert!(kit.run_until(Duration::from_secs(10), |k| connected(k, &everyone)));
    // `from[i][k]`: whom listener i hears on its k-th slot pair.
    let mut from = vec![Vec::new(); N];
    for i in 0..N {
        for (k, j) in (0..N).filter(|j| *j != i).enumerate() {
            subscribe(&mut kit, people[i], k, people[j]);
            from[i].push(j);
        }
    }
    kit.run_for(Duration::from_secs(2));
    // Audio packets each listener has had on each slot pair so far.
    let audio = |kit: &Kit| -> Vec<Vec<usize>> {
        (0..N)
            .map(|i| {
                (0..N - 1)
                    .map(|k| received(kit, people[i], audio_slot(k)))
                    .collect()
            })
            .collect()
    };
    let video = |kit: &Kit| -> usize {
        (0..N)
            .flat_map(|i| (0..N - 1).map(move |k| (i, k)))
            .map(|(i, k)| received(kit, people[i], video_slot(k)))
            .sum()
    };
    let gated = |kit: &Kit| -> u64 {
        kit.nodes[0]
            .metrics
            .iter()
            .map(|m| m.floor_dropped.load(Relaxed))
            .sum()
    };
    let holds = |p: usize| AudioFloor::Held(ParticipantId::from_identity(&format!("p{p}")));
    // A packet already on the wire when the floor changes still arrives.
    const IN_FLIGHT: usize = 2;

    for holder in [0, 2] {
        kit.set_floor(0, "meet", holds(holder));
        let (before, video_before) = (audio(&kit), video(&kit));
        kit.run_for(Duration::from_secs(2));
        let after = audio(&kit);
        for i in 0..N {
            for k in 0..N - 1 {
                let got = after[i][k] - before[i][k];
                if from[i][k] == holder {
                    assert!(
                        got >= 90,
                        "p{i} hears the holder p{holder}: {got} packets in 2 s"
                    );
                } else {
                    assert!(
                        got <= IN_FLIGHT,
                        "p{i} hears p{} without the floor: {got} packets",
                        from[i][k]
                    );
                }
            }
        }
        assert!(video(&kit) > video_before + 500, "video goes on");
    }
    assert!(gated(&kit) > 0);

    // The floor passes from p2 to p3: how long until each listener hears p3.
    kit.set_floor(0, "meet", holds(3));
    let passed = kit.now();
    let before = audio(&kit);
    let heard = |kit: &Kit| {
        (0..3).all(|i| {
            let k = from[i].iter().position(|&j| j == 3).expect("p3 is heard");
            received(kit, people[i], audio_slot(k)) > before[i][k]
        })
    };
    assert!(kit.run_until(Duration::from_secs(1), heard));
    let took = kit.now() - passed;
    let network = NetConfig::default().delay * 2;
    assert!(
        took <= sfu_core::testkit::peer::AUDIO_INTERVAL + network + Duration::from_millis(5),
        "the floor passed in {took:?}"
    );

    // Free: no audio at all; open: everyone's again.
    kit.set_floor(0, "meet", AudioFloor::Free);
    kit.run_for(Duration::from_millis(100));
    let before = audio(&kit);
    kit.run_for(Duration::from_secs(1));
    assert_eq!(audio(&kit), before, "a free floor lets no audio through");
    kit.set_floor(0, "meet", AudioFloor::Open);
    let before = audio(&kit);
    kit.run_for(Duration::from_secs(1));
    let after = audio(&kit);
    for i in 0..N {
        for k in 0..N - 1 {
            assert!(
                after[i][k] >= before[i][k] + 40,
                "p{i} hears p{} again",
                from[i][k]
            );
        }
    }
    for (i, p) in people.iter().enumerate() {
        for k in 0..N - 1 {
            let got = kit.peer(p.subscriber).received_on(audio_slot(k) as usize);
            assert_contiguous(got, &format!("p{i} audio slot {k} across floor changes"));
        }
    }
}

#[test]
fn six_participants_each_receive_the_five_others_through_joins_leaves_and_pauses() {
    let mut kit = Kit::new(&[2], NetConfig::default());
    let mut people: Vec<Participant> = (0..6).map(|i| join(&mut kit, i)).collect();
    let everyone: Vec<PeerRef> = people
        .iter()
        .flat_map(|p| [p.publisher, p.subscriber])
        .collect();
    assert!(kit.run_until(Duration::from_secs(10), |k| connected(k, &everyone)));
    for i in 0..6 {
        let others: Vec<usize> = (0..6).filter(|j| *j != i).collect();
        for (k, j) in others.into_iter().enumerate() {
            subscribe(&mut kit, people[i], k, people[j]);
        }
    }
    kit.run_for(Duration::from_secs(4));
    for i in 0..6 {
        let others: Vec<usize> = (0..6).filter(|j| *j != i).collect();
        for (k, j) in others.into_iter().enumerate() {
            assert_carries(&kit, people[i], k, people[j], &format!("p{i} from p{j}"));
        }
    }

    // p5 leaves; p6 joins and takes p5's slots on everyone else's connection: each slot keeps
    // one continuous stream across the switch.
    let p5 = people.pop().expect("p5");
    kit.close(p5.publisher);
    kit.close(p5.subscriber);
    let p6 = join(&mut kit, 6);
    assert!(kit.run_until(Duration::from_secs(10), |k| connected(
        k,
        &[p6.publisher, p6.subscriber]
    )));
    for (i, p) in people.clone().into_iter().enumerate() {
        // p5 was the last of everyone's others: slot pair 4.
        subscribe(&mut kit, p, OTHERS - 1, p6);
        subscribe(&mut kit, p6, i, p);
    }
    kit.run_for(Duration::from_secs(4));
    for (i, p) in people.iter().enumerate() {
        assert_carries(&kit, *p, OTHERS - 1, p6, &format!("p{i} from p6"));
        assert_carries(&kit, p6, i, *p, &format!("p6 from p{i}"));
    }

    // p0 pauses p1's video (a tile out of view): nothing more arrives; resumed, it flows
    // again, with no gap in the sequence.
    let p0 = people[0];
    let session = kit.session(p0.subscriber);
    let set = |paused| {
        Command::SetSubscription(SetSubscription {
            session,
            slot: video_slot(0),
            max_layer: Layer::HIGH,
            paused,
        })
    };
    assert_eq!(kit.command(0, session, set(true)), NodeResponse::Done);
    kit.run_for(Duration::from_millis(200)); // what was in flight lands
    let paused_at = received(&kit, p0, video_slot(0));
    kit.run_for(Duration::from_secs(2));
    assert_eq!(
        received(&kit, p0, video_slot(0)),
        paused_at,
        "a paused slot sends nothing"
    );
    let audio_before = received(&kit, p0, audio_slot(0));
    assert!(audio_before > 0);
    assert_eq!(kit.command(0, session, set(false)), NodeResponse::Done);
    kit.run_for(Duration::from_secs(2));
    assert!(
        received(&kit, p0, video_slot(0)) > paused_at + 30,
        "resumed"
    );
    assert_carries(&kit, p0, 0, people[1], "p0 from p1 after a pause");
}

/// Packets per frame of the q, h and f layers: about 260, 500 and 1000 kbit/s on the wire.
const LAYER_PACKETS: [usize; 3] = [1, 2, 4];

/// The layer of the last `n` video packets `peer` received, if they all share one.
fn recent_layer(kit: &Kit, peer: PeerRef, n: usize) -> Option<u8> {
    let got = kit.peer(peer).received_on(1);
    let recent = got.get(got.len().checked_sub(n)?..)?;
    let layer = recent.first()?.layer;
    recent.iter().all(|r| r.layer == layer).then_some(layer)
}

/// One simulcast publisher, two subscribers on the other worker: one with a free downlink
/// gets the top layer; one behind a 400 kbit/s bottleneck is brought down to a layer that fits
/// by its bandwidth estimate, and its audio goes on without a gap; once the bottleneck is
/// lifted it climbs back to the top layer.
#[test]
fn a_subscriber_behind_a_bottleneck_gets_a_lower_layer_keeps_its_audio_and_climbs_back() {
    let mut kit = Kit::new(&[2], NetConfig::default());
    let publisher = kit.publish(0, 0, "bwe", "cam", SIMULCAST).expect("publish");
    kit.peer_mut(publisher).layer_packets = LAYER_PACKETS;
    let newest = SubscribePolicy::NewestOther;
    let free = kit
        .subscribe(0, 1, "bwe", "free", WATCH, newest)
        .expect("free");
    let thin = kit
        .subscribe(0, 1, "bwe", "thin", WATCH, newest)
        .expect("thin");
    let thin_addr = kit.peer(thin).addr;
    let bottleneck = Bottleneck {
        bits_per_second: 400_000,
        max_queue: Duration::from_millis(300),
    };
    kit.net.set_bottleneck(thin_addr, Some(bottleneck));
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(
        k,
        &[publisher, free, thin]
    )));

    assert!(
        kit.run_until(Duration::from_secs(30), |k| recent_layer(k, free, 60)
            == Some(2)
            && recent_layer(k, thin, 60).is_some_and(|l| l < 2)),
        "free on {:?}, thin on {:?}",
        recent_layer(&kit, free, 60),
        recent_layer(&kit, thin, 60)
    );
    // It stays there: no flapping back up while the bottleneck holds.
    let switches = |k: &Kit| k.nodes[0].metrics[1].bandwidth_switches.load(Relaxed);
    let before = switches(&kit);
    kit.run_for(Duration::from_secs(10));
    assert!(recent_layer(&kit, thin, 150).is_some_and(|l| l < 2));
    assert_eq!(recent_layer(&kit, free, 150), Some(2));
    assert!(
        switches(&kit) <= before + 1,
        "{} switches in 10 s",
        switches(&kit) - before
    );
    let audio = kit.peer(thin).received_on(0);
    assert!(audio.len() > 500, "{} audio packets", audio.len());
    assert_contiguous(audio, "audio behind the bottleneck");

    // The bottleneck is lifted: the estimate grows into the top layer.
    kit.net.set_bottleneck(thin_addr, None);
    assert!(
        kit.run_until(Duration::from_secs(30), |k| recent_layer(k, thin, 60)
            == Some(2)),
        "thin stays on {:?}",
        recent_layer(&kit, thin, 60)
    );
    assert_contiguous(kit.peer(thin).received_on(0), "audio throughout");
}

/// With `node.bandwidth_pause` on, a subscriber behind a link too thin for even the lowest
/// layer has its video paused (counted, and its quality poor) and from then on its audio
/// arrives without a gap; once the link is free again the video comes back. With it off (the other tests),
/// the lowest layer is kept.
#[test]
fn with_pausing_on_a_link_too_thin_for_any_layer_pauses_the_video_and_keeps_the_audio() {
    let mut kit = Kit::new(&[2], NetConfig::default());
    kit.bandwidth.allow_pause = true;
    let publisher = kit
        .publish(0, 0, "thin", "cam", SIMULCAST)
        .expect("publish");
    kit.peer_mut(publisher).layer_packets = LAYER_PACKETS;
    let newest = SubscribePolicy::NewestOther;
    let thin = kit
        .subscribe(0, 1, "thin", "thin", WATCH, newest)
        .expect("thin");
    let thin_addr = kit.peer(thin).addr;
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[publisher, thin])));
    // Video flows, then the link narrows below the lowest layer (about 260 kbit/s).
    assert!(kit.run_until(Duration::from_secs(10), |k| {
        recent_layer(k, thin, 30).is_some()
    }));
    let bottleneck = Bottleneck {
        bits_per_second: 120_000,
        max_queue: Duration::from_millis(300),
    };
    kit.net.set_bottleneck(thin_addr, Some(bottleneck));
    let paused = |k: &Kit| k.nodes[0].metrics[1].bandwidth_paused_tracks.load(Relaxed);
    assert!(
        kit.run_until(Duration::from_secs(30), |k| paused(k) == 1),
        "never paused"
    );
    kit.run_for(Duration::from_millis(500)); // what was queued drains
    // The newest video packet: str0m's probes may resend older ones (as padding, on RTX),
    // but nothing new is forwarded while paused.
    let newest = |k: &Kit| k.peer(thin).received_on(1).iter().map(|r| r.seq).max();
    let video_at = newest(&kit);
    let audio_at = kit.peer(thin).received_on(0).len();
    kit.run_for(Duration::from_secs(3));
    assert_eq!(paused(&kit), 1);
    assert_eq!(newest(&kit), video_at, "video forwarded while paused");
    assert!(
        kit.peer(thin).received_on(0).len() > audio_at + 100,
        "audio stops while the video is paused"
    );
    let session = kit.session(thin);
    assert_eq!(qualities(&kit, session).last(), Some(&Quality::Poor));

    // The link is free again: probes find it and the video resumes.
    kit.net.set_bottleneck(thin_addr, None);
    assert!(
        kit.run_until(Duration::from_secs(30), |k| paused(k) == 0
            && newest(k) > video_at.map(|s| s + 50)),
        "the video never came back"
    );
    // Until the pause the link was overfull and dropped some of everything. From it on audio
    // has the link nearly to itself: str0m's probes, short bursts above the link's rate, can
    // still push a packet or two out of the bottleneck's queue, but no more.
    let mut seqs: Vec<u64> = kit.peer(thin).received_on(0)[audio_at..]
        .iter()
        .map(|r| r.seq)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let span = seqs[seqs.len() - 1] - seqs[0] + 1;
    let missing = span - seqs.len() as u64;
    assert!(
        span > 100 && missing * 100 <= span,
        "audio from the pause on: {missing} of {span} missing"
    );
}

/// The qualities the node reported for `session`, in order.
fn qualities(kit: &Kit, session: SessionId) -> Vec<Quality> {
    kit.nodes[0]
        .events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Quality {
                session: s,
                quality,
                ..
            } if *s == session => Some(*quality),
            _ => None,
        })
        .collect()
}

/// Datagrams to the third peer the kit creates (10.1.0.3): the subscriber behind loss below.
fn to_third_peer(d: &Datagram) -> bool {
    d.to.ip() == IpAddr::V4(Ipv4Addr::new(10, 1, 0, 3))
}

#[test]
fn a_subscriber_behind_loss_is_poor_and_a_clean_one_is_not() {
    // 20 % of the video sent to Carol is lost (the kit loses only large datagrams: video, not
    // audio or RTCP); Bob's path and Alice's are clean. Every fifth datagram, not 20 % at
    // random: a random loss has quiet seconds now and then, and two of them just before the
    // network heals would start the upgrade's hold early (one run in a few dozen did).
    let net = NetConfig {
        loss_every: 5,
        lossy: to_third_peer,
        ..NetConfig::default()
    };
    let mut kit = Kit::new(&[1], net);
    let alice = kit.publish(0, 0, "q", "alice", AV).expect("alice");
    let bob = kit
        .subscribe(0, 0, "q", "bob", WATCH, SubscribePolicy::NewestOther)
        .expect("bob");
    let carol = kit
        .subscribe(0, 0, "q", "carol", WATCH, SubscribePolicy::NewestOther)
        .expect("carol");
    assert_eq!(
        kit.peer(carol).addr.ip(),
        IpAddr::V4(Ipv4Addr::new(10, 1, 0, 3))
    );
    assert!(kit.run_until(Duration::from_secs(10), |k| connected(
        k,
        &[alice, bob, carol]
    )));
    let (alice_s, bob_s, carol_s) = (kit.session(alice), kit.session(bob), kit.session(carol));
    assert!(
        kit.run_until(Duration::from_secs(10), |k| qualities(k, carol_s).last()
            == Some(&Quality::Poor)),
        "carol is poor: {:?}",
        qualities(&kit, carol_s)
    );
    kit.run_for(Duration::from_secs(10));
    assert_eq!(qualities(&kit, carol_s).last(), Some(&Quality::Poor));
    for (who, session) in [("alice", alice_s), ("bob", bob_s)] {
        let seen = qualities(&kit, session);
        assert_eq!(seen, [Quality::Excellent], "{who} is excellent throughout");
    }

    // The network heals: Carol comes back up, but not before the hold.
    kit.net.set_loss_every(0);
    let healed = kit.now();
    let hold = sfu_core::engine::quality::QualityConfig::default().hold;
    assert!(
        kit.run_until(Duration::from_secs(20), |k| qualities(k, carol_s).last()
            != Some(&Quality::Poor)),
        "carol recovers: {:?}",
        qualities(&kit, carol_s)
    );
    assert!(
        kit.now() >= healed + hold,
        "an upgrade waits out the hold: {:?} after healing",
        kit.now() - healed
    );
    let after = qualities(&kit, carol_s);
    assert!(
        matches!(after.last(), Some(Quality::Good | Quality::Excellent)),
        "{after:?}"
    );
    assert!(
        !after.contains(&Quality::Lost),
        "carol was never lost: {after:?}"
    );
}

#[test]
fn a_vanished_participant_is_lost_before_its_session_ends() {
    let mut kit = Kit::new(&[1], NetConfig::default());
    let alice = kit.publish(0, 0, "q", "alice", AV).expect("alice");
    let bob = kit
        .subscribe(0, 0, "q", "bob", WATCH, SubscribePolicy::NewestOther)
        .expect("bob");
    assert!(kit.run_until(Duration::from_secs(5), |k| connected(k, &[alice, bob])));
    kit.run_for(Duration::from_secs(3));
    let bob_s = kit.session(bob);
    assert_eq!(qualities(&kit, bob_s), [Quality::Excellent]);
    kit.vanish(bob);
    let ended = |k: &Kit| {
        k.nodes[0]
            .events
            .iter()
            .position(|e| matches!(e, NodeEvent::SessionEnded { session, .. } if *session == bob_s))
    };
    assert!(kit.run_until(Duration::from_secs(20), |k| ended(k).is_some()));
    let lost = kit.nodes[0].events.iter().position(|e| {
        matches!(e, NodeEvent::Quality { session, quality: Quality::Lost, .. } if *session == bob_s)
    });
    assert!(
        lost.is_some_and(|l| Some(l) < ended(&kit)),
        "lost, then ended: {:?}",
        kit.nodes[0].events
    );
    assert_eq!(qualities(&kit, bob_s), [Quality::Excellent, Quality::Lost]);
    assert_eq!(qualities(&kit, kit.session(alice)), [Quality::Excellent]);
}
