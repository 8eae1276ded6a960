//! Generators of the protocol's values for the property tests.

#![allow(dead_code)] // each test file uses its own subset

use proptest::prelude::*;
use sfu_proto::*;

pub fn name(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9._-]{{1,{max}}}")).expect("regex")
}

pub fn session() -> impl Strategy<Value = SessionId> {
    any::<u128>().prop_map(SessionId::from_u128)
}

pub fn track() -> impl Strategy<Value = TrackId> {
    (session(), any::<u16>()).prop_map(|(session, index)| TrackId { session, index })
}

pub fn kind() -> impl Strategy<Value = MediaKind> {
    prop_oneof![Just(MediaKind::Audio), Just(MediaKind::Video)]
}

pub fn room() -> impl Strategy<Value = RoomId> {
    name(RoomId::MAX_LEN).prop_map(|n| n.parse().expect("valid by construction"))
}

pub fn track_info() -> impl Strategy<Value = TrackInfo> {
    (track(), room(), ".{0,40}", kind(), 1u8..=3).prop_map(
        |(track, room, identity, kind, layers)| TrackInfo {
            track,
            room,
            identity,
            kind,
            layers,
        },
    )
}

pub fn layer() -> impl Strategy<Value = Layer> {
    (0..Layer::COUNT as u8).prop_map(Layer)
}

pub fn media_header() -> impl Strategy<Value = MediaHeader> {
    let codec = prop_oneof![
        Just(Codec::Opus),
        Just(Codec::Vp8),
        Just(Codec::H264),
        Just(Codec::Av1)
    ];
    let level = proptest::option::of((0u8..=127, any::<bool>()))
        .prop_map(|l| l.map(|(level, voice)| AudioLevel { level, voice }));
    (
        (track(), any::<u64>(), kind(), layer(), codec),
        (any::<u32>(), any::<u64>(), any::<u32>()),
        (
            any::<bool>(),
            any::<bool>(),
            level,
            proptest::option::of(any::<u32>()),
        ),
    )
        .prop_map(
            |(
                (track, participant, kind, layer, codec),
                (clock_rate, seq, timestamp),
                (marker, keyframe, audio_level, profile_level_id),
            )| MediaHeader {
                track,
                participant: ParticipantId(participant),
                kind,
                layer,
                codec,
                format: FormatParams {
                    profile_level_id,
                    ..FormatParams::default()
                },
                clock_rate,
                seq,
                timestamp,
                marker,
                keyframe,
                audio_level,
            },
        )
}

/// Feed `bytes` to a decoder with a 256-byte limit and decode until it needs more or fails
/// for good: whatever the bytes, this must return (no panic, no endless loop).
pub fn decode_all<F: serde::de::DeserializeOwned>(bytes: &[u8]) {
    let mut decoder = FrameDecoder::<F>::new(256);
    decoder.extend(bytes);
    for _ in 0..bytes.len() + 1 {
        match decoder.decode() {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) if e.is_fatal() => break,
            Err(_) => {}
        }
    }
}
