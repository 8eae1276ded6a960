//! What the test-kit test files share: the peers' media and the checks on what they received.

#![allow(dead_code)] // each test file uses its own subset

use sfu_core::proto::SubscribePolicy;
use sfu_core::testkit::peer::{PublishMedia, Received, SubscribeMedia};
use sfu_core::testkit::{Kit, PeerRef};

pub const AV: PublishMedia = PublishMedia {
    audio: true,
    video_layers: 1,
};
pub const SIMULCAST: PublishMedia = PublishMedia {
    audio: true,
    video_layers: 3,
};
pub const WATCH: SubscribeMedia = SubscribeMedia {
    audio: true,
    video_slots: 1,
};

/// `count` viewers (`viewer0`, …) of room `r` on node 0, taking turns over its first `workers`
/// workers, each `WATCH`ing the newest other publisher.
pub fn viewers(kit: &mut Kit, count: usize, workers: usize) -> Vec<PeerRef> {
    (0..count)
        .map(|i| {
            let name = format!("viewer{i}");
            kit.subscribe(
                0,
                i % workers,
                "r",
                &name,
                WATCH,
                SubscribePolicy::NewestOther,
            )
            .expect("subscribe")
        })
        .collect()
}

pub fn connected(kit: &Kit, peers: &[PeerRef]) -> bool {
    peers.iter().all(|p| kit.peer(*p).connected)
}

/// Sequence numbers received on a slot, in arrival order, deduplicated (a repaired packet may
/// arrive twice), must form one contiguous run: nothing the subscriber was sent is missing.
pub fn assert_contiguous(received: &[Received], what: &str) {
    let mut seqs: Vec<u64> = received.iter().map(|r| r.seq).collect();
    assert!(!seqs.is_empty(), "{what}: nothing received");
    seqs.sort_unstable();
    seqs.dedup();
    let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
    let missing = (last - first + 1) as usize - seqs.len();
    let holes: Vec<u64> = seqs
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| w[0])
        .collect();
    assert_eq!(
        missing, 0,
        "{what}: {missing} holes in {first}..={last}, after {holes:?}"
    );
    assert_pictures_continue(received, what);
}

/// What a receiver's VP8 depacketizer needs across layer switches and publisher changes: in
/// the order of the sequence numbers, each video packet's PictureID is its predecessor's (the
/// same picture) or the next one, and TL0PICIDX with it (every test picture is a base-layer
/// one). Pairs around a hole are not judged. Returns how many picture steps were checked.
pub fn assert_pictures_continue(received: &[Received], what: &str) -> usize {
    let mut video: Vec<&Received> = received.iter().filter(|r| r.picture_id.is_some()).collect();
    video.sort_by_key(|r| r.seq);
    video.dedup_by_key(|r| r.seq);
    let mut steps = 0;
    for pair in video.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.seq != a.seq + 1 {
            continue;
        }
        let (Some(pa), Some(pb)) = (a.picture_id, b.picture_id) else {
            continue;
        };
        let step = (pb + 32_768 - pa) % 32_768;
        assert!(
            step <= 1,
            "{what}: PictureID {pa} then {pb} at seq {} -> {}",
            a.seq,
            b.seq
        );
        let tl0_step = b
            .tl0_pic_idx
            .zip(a.tl0_pic_idx)
            .map(|(b, a)| b.wrapping_sub(a));
        assert_eq!(
            tl0_step,
            Some(step as u8),
            "{what}: TL0PICIDX {:?} then {:?} at seq {} -> {}",
            a.tl0_pic_idx,
            b.tl0_pic_idx,
            a.seq,
            b.seq
        );
        steps += usize::from(step == 1);
    }
    steps
}
