//! Property tests of the wire format: every frame survives encoding, in any chunking of the
//! stream; arbitrary bytes never panic the decoder; and whatever arbitrary bytes decode to
//! encodes back to a frame that decodes the same.

mod generate;

use generate::*;
use proptest::prelude::*;
use sfu_proto::frame::{self, CodecError, DEFAULT_MAX_FRAME};
use sfu_proto::*;

/// A socket address as the wire carries it: address and port (an IPv6 scope id and flow
/// label are not part of it).
fn socket_addr() -> impl Strategy<Value = std::net::SocketAddr> {
    (any::<std::net::IpAddr>(), any::<u16>()).prop_map(std::net::SocketAddr::from)
}

fn request() -> impl Strategy<Value = NodeRequest> {
    prop_oneof![
        (
            session(),
            room(),
            any::<bool>(),
            ".{0,40}",
            ".{0,2000}",
            any::<bool>()
        )
            .prop_map(|(session, room, publish, identity, offer_sdp, explicit)| {
                NodeRequest::CreateSession(CreateSession {
                    session,
                    room,
                    kind: if publish {
                        SessionKind::Publish
                    } else {
                        SessionKind::Subscribe
                    },
                    identity,
                    offer_sdp,
                    policy: if explicit {
                        SubscribePolicy::Explicit
                    } else {
                        SubscribePolicy::NewestOther
                    },
                })
            }),
        session().prop_map(|session| NodeRequest::CloseSession { session }),
        (session(), any::<u16>(), track(), 0u8..3).prop_map(|(session, slot, track, l)| {
            NodeRequest::Subscribe(Subscribe {
                session,
                slot,
                track,
                max_layer: Layer(l),
            })
        }),
        (session(), any::<u16>(), 0u8..3, any::<bool>()).prop_map(|(session, slot, l, paused)| {
            NodeRequest::SetSubscription(SetSubscription {
                session,
                slot,
                max_layer: Layer(l),
                paused,
            })
        }),
        (session(), any::<u16>())
            .prop_map(|(session, slot)| NodeRequest::Unsubscribe { session, slot }),
        Just(NodeRequest::Stats),
        Just(NodeRequest::Health),
        (
            room(),
            name(NodeId::MAX_LEN),
            socket_addr(),
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<[u8; 32]>(),
            any::<u32>()
        )
            .prop_map(|(room, origin, addr, cert, token, idle_secs)| {
                NodeRequest::RelayRoom(RelayRoom {
                    room,
                    origin: origin.parse().expect("valid"),
                    addr,
                    cert,
                    token,
                    idle_secs,
                })
            }),
        (name(NodeId::MAX_LEN), any::<[u8; 32]>()).prop_map(|(peer, token)| {
            NodeRequest::ExpectRelay {
                peer: peer.parse().expect("valid"),
                token,
            }
        }),
        room().prop_map(|room| NodeRequest::RoomRelays { room }),
        (session(), ".{0,300}")
            .prop_map(|(session, offer_sdp)| NodeRequest::Renegotiate { session, offer_sdp }),
    ]
}

fn response() -> impl Strategy<Value = NodeResponse> {
    prop_oneof![
        (
            session(),
            any::<u16>(),
            ".{0,500}",
            proptest::collection::vec(track_info(), 0..3),
            proptest::collection::vec(kind(), 0..3)
        )
            .prop_map(|(session, w, answer_sdp, tracks, slots)| {
                NodeResponse::SessionCreated(SessionCreated {
                    session,
                    worker: WorkerId(w),
                    answer_sdp,
                    tracks,
                    slots,
                    track_mids: vec!["0".into()],
                    slot_mids: vec!["1".into(), "a".into()],
                })
            }),
        Just(NodeResponse::Done),
        (
            proptest::collection::vec(
                (
                    name(NodeId::MAX_LEN),
                    proptest::collection::vec(session(), 0..3)
                ),
                0..3
            ),
            proptest::collection::vec(name(NodeId::MAX_LEN), 0..3)
        )
            .prop_map(|(from, to)| {
                NodeResponse::RoomRelays(RoomRelays {
                    from: from
                        .into_iter()
                        .map(|(node, sessions)| RelayedFrom {
                            node: node.parse().expect("valid"),
                            tracks: sessions
                                .into_iter()
                                .map(|session| TrackId { session, index: 0 })
                                .collect(),
                        })
                        .collect(),
                    to: to.into_iter().map(|n| n.parse().expect("valid")).collect(),
                })
            }),
        ".{0,100}".prop_map(|s| NodeResponse::Error(NodeError::BadOffer(s))),
        Just(NodeResponse::Error(NodeError::NoCapacity)),
        (any::<u16>(), any::<u16>())
            .prop_map(|(ours, theirs)| NodeResponse::Error(NodeError::Version { ours, theirs })),
        (
            ".{0,10}",
            proptest::collection::vec((any::<u16>(), any::<u64>(), ".{0,10}"), 0..4)
        )
            .prop_map(|(io, ws)| {
                NodeResponse::Stats(NodeStats {
                    io_backend: io,
                    workers: ws
                        .into_iter()
                        .map(|(w, n, reason)| WorkerStats {
                            worker: w,
                            packets_in: n,
                            dropped: vec![(reason, n)],
                            ..WorkerStats::default()
                        })
                        .collect(),
                })
            }),
        proptest::collection::vec(any::<bool>(), 0..8).prop_map(|workers_up| NodeResponse::Health(
            NodeHealth {
                node: None,
                workers_up
            }
        )),
    ]
}

fn event() -> impl Strategy<Value = NodeEvent> {
    let reasons = prop_oneof![
        Just(EndReason::Closed),
        Just(EndReason::ConnectTimeout),
        Just(EndReason::IceTimeout),
        Just(EndReason::Disconnected),
        Just(EndReason::Failed),
        Just(EndReason::NodeStopped),
    ];
    prop_oneof![
        (session(), room(), reasons).prop_map(|(session, room, reason)| NodeEvent::SessionEnded {
            session,
            room,
            reason
        }),
        track_info().prop_map(NodeEvent::TrackPublished),
        (track(), room()).prop_map(|(track, room)| NodeEvent::TrackUnpublished { track, room }),
        (any::<u64>(), any::<u64>(), any::<u16>(), any::<u32>()).prop_map(
            |(sessions, packets_in, workers, cpu_millicores)| {
                NodeEvent::Load(LoadReport {
                    sessions,
                    packets_in,
                    workers,
                    cpu_millicores,
                    ..LoadReport::default()
                })
            }
        ),
        any::<u16>().prop_map(|w| NodeEvent::WorkerStopped {
            worker: WorkerId(w)
        }),
        Just(NodeEvent::Draining),
        (room(), proptest::collection::vec(track(), 0..4))
            .prop_map(|(room, speakers)| NodeEvent::Speakers { room, speakers }),
        (session(), room(), ".{0,40}", any::<bool>()).prop_map(
            |(session, room, text, reliable)| {
                NodeEvent::Data {
                    session,
                    room,
                    reliable,
                    text,
                }
            }
        ),
        (session(), room(), quality()).prop_map(|(session, room, quality)| NodeEvent::Quality {
            session,
            room,
            quality
        }),
    ]
}

fn quality() -> impl Strategy<Value = Quality> {
    prop_oneof![
        Just(Quality::Lost),
        Just(Quality::Poor),
        Just(Quality::Good),
        Just(Quality::Excellent),
    ]
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), proptest::option::of(name(NodeId::MAX_LEN))).prop_map(|(version, node)| {
            Frame::Hello {
                version,
                node: node.map(|n| n.parse().expect("valid")),
            }
        }),
        (any::<u64>(), request()).prop_map(|(id, request)| Frame::Request {
            id: RequestId(id),
            request
        }),
        (any::<u64>(), response()).prop_map(|(id, response)| Frame::Response {
            id: RequestId(id),
            response
        }),
        event().prop_map(Frame::Event),
        any::<[u8; 32]>().prop_map(|nonce| Frame::Challenge { nonce }),
        (registration(), any::<[u8; 32]>()).prop_map(|(registration, proof)| Frame::Register {
            registration,
            proof
        }),
        Just(Frame::Registered),
        ".{0,40}".prop_map(|reason| Frame::Refused { reason }),
    ]
}

fn registration() -> impl Strategy<Value = Registration> {
    let held = (session(), room(), any::<bool>(), ".{0,12}").prop_map(
        |(session, room, publish, identity)| HeldSession {
            session,
            room,
            kind: if publish {
                SessionKind::Publish
            } else {
                SessionKind::Subscribe
            },
            identity,
        },
    );
    (
        name(NodeId::MAX_LEN),
        any::<u64>(),
        proptest::option::of("[a-z0-9-]{1,12}"),
        any::<std::net::IpAddr>(),
        proptest::collection::vec(any::<u16>(), 0..4),
        any::<u64>(),
        proptest::collection::vec(held, 0..3),
        proptest::option::of((socket_addr(), proptest::collection::vec(any::<u8>(), 0..64))),
    )
        .prop_map(
            |(node, incarnation, region, media_ip, media_ports, capacity, sessions, relay)| {
                Registration {
                    node: node.parse().expect("valid"),
                    incarnation,
                    region,
                    media_ip,
                    media_ports,
                    capacity,
                    sessions,
                    relay: relay.map(|(addr, cert)| RelayAddress { addr, cert }),
                }
            },
        )
}

proptest! {
    #[test]
    fn frames_survive_any_chunking_of_the_stream(
        frames in proptest::collection::vec(any_frame(), 1..6),
        cuts in proptest::collection::vec(1usize..97, 0..40),
    ) {
        let mut bytes = Vec::new();
        for f in &frames {
            frame::encode(f, DEFAULT_MAX_FRAME, &mut bytes).expect("encode");
        }
        let mut decoder = FrameDecoder::<Frame>::default();
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        let mut cuts = cuts.into_iter();
        while !rest.is_empty() {
            let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
            decoder.extend(&rest[..n]);
            rest = &rest[n..];
            while let Some(f) = decoder.decode().expect("valid stream") {
                out.push(f);
            }
        }
        prop_assert_eq!(out, frames);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_what_decodes_re_encodes_the_same(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        if let Ok(f) = frame::decode_body::<Frame>(&bytes) {
            let again = frame::to_bytes(&f).expect("a decoded frame encodes");
            prop_assert_eq!(frame::decode_body(&again[4..]), Ok(f));
        }
        decode_all::<Frame>(&bytes);
    }

    #[test]
    fn valid_frames_followed_by_garbage_still_decode(f in any_frame(), junk in proptest::collection::vec(any::<u8>(), 1..50)) {
        // A garbage body with an honest length is skipped; the frame after it decodes.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(junk.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&junk);
        frame::encode(&f, DEFAULT_MAX_FRAME, &mut bytes).expect("encode");
        let mut decoder = FrameDecoder::<Frame>::default();
        decoder.extend(&bytes);
        let first = decoder.decode();
        let second = decoder.decode();
        match first {
            Ok(Some(_)) => {} // the junk happened to be a valid frame
            Err(CodecError::Malformed(_)) => {}
            other => prop_assert!(false, "junk gave {other:?}"),
        }
        prop_assert_eq!(second, Ok(Some(f)));
    }
}

#[test]
fn an_oversized_length_is_refused_before_buffering_and_stays_refused() {
    let mut decoder = FrameDecoder::<Frame>::new(1024);
    decoder.extend(&u32::MAX.to_be_bytes());
    let e = decoder.decode().expect_err("too large");
    assert_eq!(
        e,
        CodecError::TooLarge {
            len: u32::MAX as usize,
            max: 1024
        }
    );
    assert!(e.is_fatal());
    decoder.extend(&[0; 16]);
    assert_eq!(decoder.decode(), Err(e));
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn encoding_refuses_a_frame_over_the_limit_and_leaves_the_buffer_as_it_was() {
    let big = Frame::Request {
        id: RequestId(1),
        request: NodeRequest::CreateSession(CreateSession {
            session: SessionId::random(),
            room: "r".parse().expect("room"),
            kind: SessionKind::Publish,
            identity: "a".into(),
            offer_sdp: "x".repeat(5000),
            policy: SubscribePolicy::NewestOther,
        }),
    };
    let mut out = vec![7];
    let e = frame::encode(&big, 1000, &mut out).expect_err("over the limit");
    assert!(matches!(e, CodecError::TooLarge { max: 1000, .. }), "{e:?}");
    assert_eq!(out, vec![7]);
}

#[test]
fn a_bad_name_inside_a_frame_is_a_decode_error() {
    // A Hello whose node id is not a valid name: encoded by hand, refused on decode.
    #[derive(serde::Serialize)]
    enum Raw {
        Hello { version: u16, node: Option<String> },
    }
    let body = postcard::to_stdvec(&Raw::Hello {
        version: 1,
        node: Some("bad name".into()),
    })
    .expect("encode");
    assert!(matches!(
        frame::decode_body::<Frame>(&body),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn a_quality_is_lowercase_in_json_and_orders_worst_first() {
    let all = [
        Quality::Lost,
        Quality::Poor,
        Quality::Good,
        Quality::Excellent,
    ];
    for q in all {
        let json = serde_json::to_string(&q).expect("serializes");
        assert_eq!(json, format!("\"{}\"", q.as_str()));
        assert_eq!(serde_json::from_str::<Quality>(&json).expect("parses"), q);
    }
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        Quality::Good.min(Quality::Poor),
        Quality::Poor,
        "min is the worse"
    );
}
