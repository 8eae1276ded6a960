//! Micro-benchmarks of the forwarding hot path, each on one thread of this process (the ring
//! hop on two):
//!
//! - `demux/rtp_known_source`: classify a datagram and find its session among 1000 by source
//!   address (every media packet); `demux/stun_first_contact`: the same for a STUN request from
//!   a new address, found by its USERNAME (once per ICE candidate pair);
//! - `rewrite/video`: one subscriber track's forwarding decision and header rewrite for one
//!   packet ([`TrackForwarder::handle_packet`]);
//! - `forward_to_n/{1,10,100}`: a publisher's video packet arriving from another worker,
//!   forwarded to N local subscribers until every SRTP datagram is handed out: per subscriber
//!   the rewrite, str0m's packetisation and AES-GCM SRTP, and the engine's bookkeeping
//!   ([`Engine::handle_cross_worker`], then [`Engine::poll_transmit`] until empty). Criterion's
//!   throughput line gives the datagrams per second of one core, without the kernel;
//! - `ring_hop/media_round_trip`: a packet reference to another worker's thread through its
//!   mailbox ring and back through ours (two hops, spinning, no wake-ups).
//!
//! The subscribers are real str0m peers connected through the deterministic test kit
//! ([`sfu_core::testkit`]); once connected, the engine is driven directly on simulated time.
//! Each `forward_to_n` run checks that every packet reached every subscriber.
//!
//! `cargo bench -p sfu-core --bench hot_path` (figures in bench/RESULTS.md).

// A benchmark measures wall-clock time; the engine still only sees simulated time.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sfu_core::engine::demux::{Demux, Route};
use sfu_core::engine::forward::{MediaPacket, Selection, TrackForwarder};
use sfu_core::engine::{CrossWorker, PeerId};
use sfu_core::io::Waker;
use sfu_core::mailbox::Mailbox;
use sfu_core::proto::{MediaKind, SubscribePolicy};
use sfu_core::testkit::net::NetConfig;
use sfu_core::testkit::peer::{PublishMedia, SubscribeMedia};
use sfu_core::testkit::{Kit, PeerRef, VIDEO_PT};

/// Simulated time between two forwarded packets: short, so that a whole run stays within a
/// few simulated seconds (no session times out) and far from any pacing limit.
const PACKET_SPACING: Duration = Duration::from_micros(1);

/// One node of two workers: a video publisher on worker 0, `n` video subscribers on worker 1,
/// all connected, and one packet of the publisher as worker 0 hands it to worker 1.
struct Fanout {
    kit: Kit,
    packet: Arc<MediaPacket>,
    now: Instant,
    next_seq: u64,
    frame_timestamp: u32,
    subscribers: usize,
}

impl Fanout {
    fn new(subscribers: usize) -> Self {
        let mut kit = Kit::new(&[2], NetConfig::default());
        let video = PublishMedia {
            audio: false,
            video_layers: 1,
        };
        let publisher = kit
            .publish(0, 0, "bench", "publisher", video)
            .expect("publish");
        let subs: Vec<PeerRef> = (0..subscribers)
            .map(|i| {
                let media = SubscribeMedia {
                    audio: false,
                    video_slots: 1,
                };
                kit.subscribe(
                    0,
                    1,
                    "bench",
                    &format!("s{i}"),
                    media,
                    SubscribePolicy::default(),
                )
                .expect("subscribe")
            })
            .collect();
        let connected = kit.run_until(Duration::from_secs(30), |kit| {
            subs.iter().all(|&s| !kit.peer(s).received_on(0).is_empty())
        });
        assert!(connected, "every subscriber receives video");
        let (packet, now) = capture_media(&mut kit, publisher);
        Self {
            kit,
            next_seq: packet.header.seq + 1,
            frame_timestamp: packet.header.timestamp,
            packet,
            now,
            subscribers,
        }
    }

    /// Forward the next packet to every subscriber; returns the datagrams handed out.
    fn forward_one(&mut self) -> usize {
        self.forward_frame(1)
    }

    /// Hand the next `packets` packets (one frame) to the worker together, as a receive batch
    /// holding a frame does, then drain: returns the datagrams handed out.
    fn forward_frame(&mut self, packets: usize) -> usize {
        self.now += PACKET_SPACING;
        let engine = &mut self.kit.nodes[0].engines[1];
        self.frame_timestamp = self.frame_timestamp.wrapping_add(90);
        for _ in 0..packets {
            let mut packet = MediaPacket::clone(&self.packet);
            packet.header.seq = self.next_seq;
            packet.header.timestamp = self.frame_timestamp;
            packet.header.keyframe = false;
            packet.arrival = self.now;
            self.next_seq += 1;
            engine.handle_cross_worker(self.now, CrossWorker::Media(Arc::new(packet)));
        }
        let mut sent = 0;
        if engine.poll_timeout() <= self.now {
            engine.handle_timeout(self.now);
        }
        while let Some(transmit) = engine.poll_transmit() {
            black_box(&transmit);
            sent += usize::from(
                transmit
                    .contents
                    .get(1)
                    .is_some_and(|b| b & 0x7f == VIDEO_PT),
            );
        }
        engine.sends_handed(self.now);
        // Forwarding records are the test kit's; a worker drops them.
        drop(engine.take_forwarded());
        sent
    }
}

/// Let the publisher send until worker 0 hands a video packet to worker 1; the packet and the
/// simulated time then.
fn capture_media(kit: &mut Kit, publisher: PeerRef) -> (Arc<MediaPacket>, Instant) {
    let mut now = kit.now();
    for _ in 0..1000 {
        now += Duration::from_millis(5);
        let peer = &mut kit.peers[publisher.0].peer;
        peer.handle_timeout(now);
        let from = peer.addr;
        let mut out = Vec::new();
        peer.drain(|to, contents| out.push((to, contents)));
        let node = &mut kit.nodes[0];
        for (to, contents) in out {
            node.engines[0].handle_datagram(now, from, to, &contents);
        }
        while node.engines[0].poll_transmit().is_some() {}
        let mut found = None;
        while let Some((_, message)) = node.engines[0].poll_cross_worker() {
            if let CrossWorker::Media(packet) = message {
                if packet.header.kind == MediaKind::Video {
                    found = Some(packet);
                }
            }
        }
        if let Some(packet) = found {
            return (packet, now);
        }
    }
    panic!("the publisher's video never reached the other worker");
}

/// `HOT_PATH_FORWARD=SUBSCRIBERS:PACKETS[:FRAME]`: instead of the benchmarks, forward PACKETS
/// packets to SUBSCRIBERS subscribers once, FRAME packets at a time (1 if not given; a receive
/// batch holding a video frame's packets is drained together), check that each reached every
/// subscriber, and exit. Run under
/// `valgrind --tool=callgrind --toggle-collect='*forward_counted*'`, this counts the
/// instructions of the forwarding path alone: the same count on every run, where its time on
/// a shared machine moves by 10-20 % (bench/README.md).
fn forward_counted_from_env() {
    let Ok(spec) = std::env::var("HOT_PATH_FORWARD") else {
        return;
    };
    let numbers: Vec<usize> = spec.split(':').filter_map(|n| n.parse().ok()).collect();
    let (subscribers, packets, frame) = match numbers[..] {
        [s, p] if spec.split(':').count() == 2 => (s, p, 1),
        [s, p, f] if f > 0 && p % f == 0 => (s, p, f),
        _ => {
            eprintln!(
                "HOT_PATH_FORWARD={spec}: expected SUBSCRIBERS:PACKETS[:FRAME] with FRAME \
                 dividing PACKETS, e.g. 100:200 or 100:200:4"
            );
            std::process::exit(2);
        }
    };
    let mut fanout = Fanout::new(subscribers);
    let sent = forward_counted(&mut fanout, packets, frame);
    assert_eq!(
        sent,
        subscribers * packets,
        "every packet went to every subscriber"
    );
    eprintln!(
        "forwarded {packets} packets, {frame} at a time, to {subscribers} subscribers: {sent} datagrams"
    );
    std::process::exit(0);
}

#[inline(never)]
fn forward_counted(fanout: &mut Fanout, packets: usize, frame: usize) -> usize {
    (0..packets / frame)
        .map(|_| fanout.forward_frame(frame))
        .sum()
}

fn forward_to_n(c: &mut Criterion) {
    forward_counted_from_env();
    let mut group = c.benchmark_group("forward_to_n");
    for n in [1, 10, 100] {
        let mut fanout = Fanout::new(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(n.to_string(), |b| {
            b.iter_custom(|iters| {
                let mut sent = 0;
                let start = Instant::now();
                for _ in 0..iters {
                    sent += fanout.forward_one();
                }
                let elapsed = start.elapsed();
                assert_eq!(
                    sent,
                    iters as usize * fanout.subscribers,
                    "every packet went to every subscriber"
                );
                elapsed
            });
        });
    }
    group.finish();
}

fn rewrite(c: &mut Criterion) {
    let fanout = Fanout::new(1);
    let packet = MediaPacket::clone(&fanout.packet);
    let target = Some(Selection {
        track: packet.header.track,
        layer: packet.header.layer,
    });
    let mut forwarder = TrackForwarder::new(MediaKind::Video, 1000);
    let mut first = packet.clone();
    first.header.keyframe = true;
    let now = fanout.now;
    assert!(
        forwarder
            .handle_packet(&first, target, now)
            .forward
            .is_some(),
        "the keyframe starts the track"
    );
    let mut next = packet;
    next.header.keyframe = false;
    c.bench_function("rewrite/video", |b| {
        b.iter(|| {
            next.header.seq += 1;
            next.header.timestamp = next.header.timestamp.wrapping_add(90);
            let decision = forwarder.handle_packet(black_box(&next), target, now);
            black_box(decision.forward.expect("forwarded"))
        });
    });
}

/// A STUN binding request whose USERNAME is `local:remote`.
fn stun_request(local: &str) -> Vec<u8> {
    let username = format!("{local}:remote");
    let padded = username.len().div_ceil(4) * 4;
    let mut d = vec![0x00, 0x01];
    d.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
    d.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    d.extend_from_slice(&[7; 12]);
    d.extend_from_slice(&0x0006u16.to_be_bytes());
    d.extend_from_slice(&(username.len() as u16).to_be_bytes());
    d.extend_from_slice(username.as_bytes());
    d.resize(20 + 4 + padded, 0);
    d
}

fn source(i: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i)), 40_000)
}

fn demux(c: &mut Criterion) {
    const SESSIONS: u32 = 1000;
    let mut demux = Demux::default();
    for i in 0..SESSIONS {
        demux.add_session(PeerId(i), format!("ufrag{i:04}"));
        assert_eq!(
            demux.route(source(i), &stun_request(&format!("ufrag{i:04}"))),
            Route::Session(PeerId(i))
        );
    }
    let mut rtp = vec![0u8; 1200];
    rtp[0] = 0x80;
    rtp[1] = VIDEO_PT;
    let known = source(SESSIONS / 2);
    c.bench_function("demux/rtp_known_source", |b| {
        b.iter(|| black_box(demux.route(black_box(known), black_box(&rtp))));
    });
    let request = stun_request("ufrag0500");
    c.bench_function("demux/stun_first_contact", |b| {
        b.iter_batched_ref(
            Demux::default,
            |fresh| {
                fresh.add_session(PeerId(500), "ufrag0500".into());
                black_box(fresh.route(source(SESSIONS + 1), &request))
            },
            BatchSize::SmallInput,
        );
    });
}

fn ring_hop(c: &mut Criterion) {
    let packet = Fanout::new(1).packet;
    let there = Arc::new(Mailbox::new(1024, Waker::new().expect("eventfd")));
    let back = Arc::new(Mailbox::new(1024, Waker::new().expect("eventfd")));
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let (there, back, stop) = (there.clone(), back.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match there.pop() {
                    Some(message) => {
                        let _ = back.push(message);
                    }
                    None => std::hint::spin_loop(),
                }
            }
        })
    };
    c.bench_function("ring_hop/media_round_trip", |b| {
        b.iter(|| {
            assert!(there.push(CrossWorker::Media(packet.clone())).is_ok());
            loop {
                if let Some(message) = back.pop() {
                    break black_box(message);
                }
                std::hint::spin_loop();
            }
        });
    });
    stop.store(true, Ordering::Relaxed);
    echo.join().expect("echo thread");
}

criterion_group!(benches, demux, rewrite, forward_to_n, ring_hop);
criterion_main!(benches);
