//! What the test-kit test files share: the peers' media and the checks on what they received.

#![allow(dead_code)] // each test file uses its own subset

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
}
