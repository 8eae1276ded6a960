//! Property tests of the relay link's wire format: every control frame survives the stream
//! codec; every packet survives the datagrams it is cut into, whatever the datagram limit and
//! the order they arrive in; a lost fragment loses its packet only; arbitrary bytes never panic
//! the reassembler and keep its memory bounded.

mod generate;

use generate::*;
use proptest::prelude::*;
use sfu_proto::frame::{self, DEFAULT_MAX_FRAME};
use sfu_proto::relay::*;
use sfu_proto::*;

fn node() -> impl Strategy<Value = NodeId> {
    name(NodeId::MAX_LEN).prop_map(|n| n.parse().expect("valid by construction"))
}

fn relay_frame() -> impl Strategy<Value = RelayFrame> {
    prop_oneof![
        (any::<u16>(), node(), any::<[u8; LINK_TOKEN_LEN]>()).prop_map(|(version, node, token)| {
            RelayFrame::Hello {
                version,
                node,
                token,
            }
        }),
        ".{0,40}".prop_map(|reason| RelayFrame::Refused { reason }),
        room().prop_map(|room| RelayFrame::Join { room }),
        room().prop_map(|room| RelayFrame::Leave { room }),
        (room(), track_info(), any::<u64>(), any::<u64>()).prop_map(
            |(room, info, participant, order)| RelayFrame::TrackPublished {
                room,
                track: RelayedTrack {
                    info,
                    participant: ParticipantId(participant),
                    order,
                },
            }
        ),
        (room(), track()).prop_map(|(room, track)| RelayFrame::TrackUnpublished { room, track }),
        (track(), any::<u8>()).prop_map(|(track, mask)| RelayFrame::Layers { track, mask }),
        (track(), layer()).prop_map(|(track, layer)| RelayFrame::KeyframeRequest { track, layer }),
        (
            track(),
            layer(),
            proptest::collection::vec(any::<u64>(), 0..MAX_NACK)
        )
            .prop_map(|(track, layer, seqs)| RelayFrame::Nack { track, layer, seqs }),
    ]
}

/// A permutation of `0..n` from a seed (Fisher-Yates with a small LCG: deterministic).
fn shuffled(n: usize, mut seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (seed >> 33) as usize % (i + 1));
    }
    order
}

proptest! {
    #[test]
    fn control_frames_survive_the_stream_codec(frames in proptest::collection::vec(relay_frame(), 1..8)) {
        let mut bytes = Vec::new();
        for f in &frames {
            frame::encode(f, DEFAULT_MAX_FRAME, &mut bytes).expect("encode");
        }
        let mut decoder = FrameDecoder::<RelayFrame>::default();
        decoder.extend(&bytes);
        for f in &frames {
            let got = decoder.decode().expect("decodes");
            prop_assert_eq!(got.as_ref(), Some(f));
        }
        prop_assert_eq!(decoder.decode().expect("nothing left"), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_control_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        decode_all::<RelayFrame>(&bytes);
    }

    /// Whole or in fragments, in any order, a packet comes out as it went in; below the
    /// smallest workable limit encoding says so instead.
    #[test]
    fn a_packet_survives_its_datagrams_in_any_order(
        header in media_header(),
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
        limit in 8usize..1600,
        packet in any::<u32>(),
        seed in any::<u64>(),
    ) {
        let datagrams = match encode_media(&header, &payload, limit, packet) {
            Ok(d) => d,
            Err(DatagramError::TooLarge { .. }) => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        };
        prop_assert!(datagrams.len() <= MAX_FRAGMENTS);
        for d in &datagrams {
            prop_assert!(d.len() <= limit, "{} > {limit}", d.len());
        }
        let mut r = Reassembler::new();
        let order = shuffled(datagrams.len(), seed);
        let (last, first) = order.split_last().expect("at least one datagram");
        for &i in first {
            prop_assert_eq!(r.push(&datagrams[i]).expect("valid"), None);
        }
        let got = r.push(&datagrams[*last]).expect("valid").expect("complete");
        prop_assert_eq!(got.header, header);
        prop_assert_eq!(&got.payload[..], &payload[..]);
        prop_assert_eq!(r.pending(), 0);
    }

    /// A lost fragment loses its packet and nothing else: later packets come through, and
    /// the incomplete one is given up once MAX_PENDING newer ones have started.
    #[test]
    fn a_lost_fragment_loses_only_its_packet(
        header in media_header(),
        payload in proptest::collection::vec(any::<u8>(), 200..1200),
        lost in any::<prop::sample::Index>(),
    ) {
        let limit = 300;
        let first = encode_media(&header, &payload, limit, 0).expect("fits 8 fragments");
        prop_assume!(first.len() > 1);
        let mut r = Reassembler::new();
        let lost = lost.index(first.len());
        for (i, d) in first.iter().enumerate() {
            if i != lost {
                prop_assert_eq!(r.push(d).expect("valid"), None);
            }
        }
        for packet in 1..=MAX_PENDING as u32 {
            let mut got = None;
            for d in encode_media(&header, &payload, limit, packet).expect("encode") {
                got = r.push(&d).expect("valid");
            }
            prop_assert!(got.is_some(), "packet {packet} came through");
        }
        prop_assert_eq!(r.pending(), 0);
        prop_assert_eq!(r.abandoned(), 1);
    }

    /// Bytes from anywhere: an error or a packet, never a panic, and at most MAX_PENDING
    /// packets collected at once.
    #[test]
    fn arbitrary_datagrams_never_panic_the_reassembler(
        datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..200),
    ) {
        let mut r = Reassembler::new();
        for d in &datagrams {
            let _ = r.push(d);
            prop_assert!(r.pending() <= MAX_PENDING);
        }
    }
}

#[test]
fn foreign_datagrams_are_named() {
    let mut r = Reassembler::new();
    assert_eq!(r.push(&[]), Err(DatagramError::Empty));
    assert_eq!(r.push(&[0x7f, 1, 2]), Err(DatagramError::UnknownKind(0x7f)));
    // A fragment that claims to be the 3rd of 2.
    let bad = [0x02, 0, 0, 0, 9, 2, 2, 0xaa];
    assert!(matches!(r.push(&bad), Err(DatagramError::Malformed(_))));
}
