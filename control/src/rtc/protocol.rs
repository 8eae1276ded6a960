//! The room protocol's messages (docs/signaling.md), as they travel: JSON objects tagged by
//! `type`. [`parse`] turns any bytes a client sends into a message or an error to send back;
//! nothing a client sends can make it panic.

use serde::{Deserialize, Serialize};
use sfu_core::proto::Quality;

use super::hybrid::Mode;
use super::settings::RoomSettings;

/// The protocol version this server speaks.
pub const VERSION: u32 = 1;

/// Display names and track sources are cut to these many characters.
pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_SOURCE_CHARS: usize = 32;

/// A message from a client. `req`, when present, is echoed in the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub req: Option<u64>,
    pub message: ClientMessage,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Join {
        v: u32,
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        name: Option<String>,
        #[serde(default = "yes")]
        auto_subscribe: bool,
        #[serde(default)]
        resume: Option<String>,
    },
    Publish {
        sdp: String,
        #[serde(default)]
        tracks: Vec<TrackOptions>,
    },
    SubscriberOffer {
        sdp: String,
    },
    Subscribe {
        track: String,
        #[serde(default)]
        max_layer: Option<u8>,
    },
    Unsubscribe {
        track: String,
    },
    SetSubscription {
        track: String,
        #[serde(default)]
        max_layer: Option<u8>,
        #[serde(default)]
        paused: Option<bool>,
    },
    Mute {
        track: String,
        muted: bool,
    },
    /// Hybrid room: my media moved as switch `epoch` asked.
    SwitchAck {
        epoch: u64,
    },
    /// Hybrid room: signaling for my peer connection with `to` (an offer, an answer, a
    /// candidate: relayed as it is).
    P2pSignal {
        to: String,
        data: serde_json::Value,
    },
    /// Push to talk: ask for the floor.
    FloorRequest {},
    /// Push to talk: let go of the floor, or of one's place in line.
    FloorRelease {},
    Leave {},
    Ping {},
}

fn yes() -> bool {
    true
}

impl ClientMessage {
    /// The message's `type`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Publish { .. } => "publish",
            ClientMessage::SubscriberOffer { .. } => "subscriber_offer",
            ClientMessage::Subscribe { .. } => "subscribe",
            ClientMessage::Unsubscribe { .. } => "unsubscribe",
            ClientMessage::SetSubscription { .. } => "set_subscription",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::SwitchAck { .. } => "switch_ack",
            ClientMessage::P2pSignal { .. } => "p2p_signal",
            ClientMessage::FloorRequest {} => "floor_request",
            ClientMessage::FloorRelease {} => "floor_release",
            ClientMessage::Leave {} => "leave",
            ClientMessage::Ping {} => "ping",
        }
    }
}

/// What a publisher says about one of its sections.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackOptions {
    pub mid: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub muted: bool,
}

/// A participant as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub identity: String,
    pub name: String,
    pub tracks: Vec<TrackView>,
    /// Its connection quality, once its node has judged one of its connections.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub quality: Option<Quality>,
}

/// A published track as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackView {
    /// The id clients use: `<join id>-<index>`, opaque.
    pub id: String,
    pub identity: String,
    pub kind: String,
    pub source: String,
    pub layers: u8,
    pub muted: bool,
    /// The publisher connection's section (only in the publisher's own view).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mid: Option<String>,
}

/// One receiving section of a subscriber connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotView {
    pub mid: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
}

/// An active speaker: who, and the audio track heard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpeakerView {
    pub identity: String,
    pub track: String,
}

/// A participant's connection quality (docs/signaling.md, "Connection quality").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QualityView {
    pub identity: String,
    pub quality: Quality,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResumeInfo {
    pub token: String,
    pub secs: u64,
}

/// A message to a client.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined {
        v: u32,
        room: String,
        me: ParticipantInfo,
        participants: Vec<ParticipantInfo>,
        resume: ResumeInfo,
        resumed: bool,
        ice_servers: Vec<serde_json::Value>,
        /// The room's options (`ptt`: a push-to-talk channel).
        settings: RoomSettings,
        /// How the room carries media now (`p2p` only in a hybrid room), and since which
        /// switch.
        mode: Mode,
        epoch: u64,
    },
    /// Hybrid room: the room's mode as I join it (the chair's word; follows `joined`), and
    /// whether to set my SFU publisher connection up ahead (as `prewarm`).
    Mode {
        mode: Mode,
        epoch: u64,
        prewarm: bool,
    },
    /// Hybrid room: move my media to `to`, new path up before the old one goes, then
    /// `switch_ack` with `epoch`.
    Switch {
        to: Mode,
        epoch: u64,
    },
    /// Hybrid room, peer to peer: set up (`on`) or drop my SFU publisher connection ahead of
    /// a move to the SFU.
    Prewarm {
        on: bool,
    },
    /// Hybrid room: signaling from `from` for my peer connection with it.
    P2pSignal {
        from: String,
        data: serde_json::Value,
    },
    PublishAnswer {
        sdp: String,
        tracks: Vec<TrackView>,
    },
    SubscriberAnswer {
        sdp: String,
        slots: Vec<SlotView>,
    },
    Renegotiate {
        audio: usize,
        video: usize,
    },
    Subscribed {
        track: String,
        mid: String,
        max_layer: u8,
        paused: bool,
    },
    Unsubscribed {
        track: String,
        reason: &'static str,
    },
    Subscription {
        track: String,
        max_layer: u8,
        paused: bool,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        identity: String,
        reason: String,
    },
    TrackPublished {
        track: TrackView,
    },
    TrackUnpublished {
        track: String,
        identity: String,
    },
    TrackMuted {
        track: String,
        identity: String,
        muted: bool,
    },
    SessionEnded {
        connection: &'static str,
        reason: String,
    },
    Speakers {
        speakers: Vec<SpeakerView>,
    },
    Quality {
        participants: Vec<QualityView>,
    },
    /// Push to talk: who holds the floor and who waits, next first (on every change, and on
    /// joining a channel). `ptt` false: the room stopped being a channel.
    Floor {
        ptt: bool,
        holder: Option<String>,
        queue: Vec<String>,
    },
    /// Push to talk: the floor is yours for at most `max_talk_ms`; talk.
    FloorGranted {
        max_talk_ms: u64,
    },
    /// Push to talk: you wait; `position` 1 is next.
    FloorQueued {
        position: usize,
    },
    /// Push to talk: refused (`queue_full`, `not_push_to_talk`, `no_publish_grant`).
    FloorDenied {
        reason: String,
    },
    /// Push to talk: your turn ended without you releasing it (`time_up`, `preempted`).
    FloorRevoked {
        reason: String,
    },
    Left {},
    Pong {},
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// A server message with the `req` of the request it answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    #[serde(flatten)]
    pub message: ServerMessage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub req: Option<u64>,
}

impl Reply {
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: string keys, no maps of non-strings.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// `error` codes (docs/signaling.md#errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    UnsupportedVersion,
    Unauthorized,
    Forbidden,
    NotJoined,
    AlreadyJoined,
    RoomFull,
    TooManyTracks,
    UnknownTrack,
    UnknownParticipant,
    BadOffer,
    NoCapacity,
    ResumeFailed,
    RateLimited,
    TooLarge,
    Replaced,
    Unavailable,
    /// A hybrid room removed me: I did not follow a switch in time.
    Removed,
}

/// Close codes (docs/signaling.md#errors).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const TOO_LARGE: u16 = 1009;
    pub const UNSUPPORTED_VERSION: u16 = 4000;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const REPLACED: u16 = 4002;
    pub const FORBIDDEN: u16 = 4003;
    pub const POLICY: u16 = 4008;
}

/// A client message that could not be used: the `error` to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMessage {
    pub req: Option<u64>,
    pub message: String,
}

/// Parse one text frame. A frame that is JSON but not a valid message still yields its `req`
/// when it has one, so the client can match the error to its request.
pub fn parse(text: &str) -> Result<Request, BadMessage> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| BadMessage {
        req: None,
        message: format!("not JSON: {e}"),
    })?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(BadMessage {
            req: None,
            message: "a message is a JSON object with a \"type\"".into(),
        });
    };
    let req = match object.remove("req") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| BadMessage {
            req: None,
            message: "\"req\" must be a non-negative integer".into(),
        })?),
    };
    if object
        .get("type")
        .and_then(serde_json::Value::as_str)
        .is_none()
    {
        return Err(BadMessage {
            req,
            message: "a message needs a string \"type\"".into(),
        });
    }
    let message = serde_json::from_value::<ClientMessage>(serde_json::Value::Object(object))
        .map_err(|e| BadMessage {
            req,
            message: e.to_string(),
        })?;
    Ok(Request { req, message })
}

/// Cut `s` to at most `max` characters.
pub fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_join_parses_with_its_defaults() {
        let r = parse(r#"{"type":"join","v":1,"req":7}"#).expect("parses");
        assert_eq!(r.req, Some(7));
        assert_eq!(
            r.message,
            ClientMessage::Join {
                v: 1,
                token: None,
                name: None,
                auto_subscribe: true,
                resume: None
            }
        );
    }

    #[test]
    fn every_client_message_parses() {
        let cases = [
            r#"{"type":"publish","sdp":"v=0","tracks":[{"mid":"0","source":"camera"}]}"#,
            r#"{"type":"subscriber_offer","sdp":"v=0"}"#,
            r#"{"type":"subscribe","track":"a-0","max_layer":1}"#,
            r#"{"type":"unsubscribe","track":"a-0"}"#,
            r#"{"type":"set_subscription","track":"a-0","paused":true}"#,
            r#"{"type":"mute","track":"a-0","muted":true}"#,
            r#"{"type":"leave"}"#,
            r#"{"type":"ping","req":3}"#,
            r#"{"type":"floor_request"}"#,
            r#"{"type":"switch_ack","epoch":2}"#,
            r#"{"type":"p2p_signal","to":"bob","data":{"sdp":"v=0"}}"#,
            r#"{"type":"floor_release","req":9}"#,
        ];
        for case in cases {
            parse(case).unwrap_or_else(|e| panic!("{case}: {e:?}"));
        }
    }

    #[test]
    fn bad_messages_say_what_is_wrong_and_keep_the_request_id() {
        let e = parse("{").expect_err("not JSON");
        assert!(e.message.starts_with("not JSON"), "{e:?}");
        let e = parse("[1]").expect_err("not an object");
        assert!(e.message.contains("object"), "{e:?}");
        let e = parse(r#"{"type":"fly","req":4}"#).expect_err("unknown type");
        assert_eq!(e.req, Some(4));
        assert!(e.message.contains("fly"), "{e:?}");
        let e = parse(r#"{"type":"mute","track":"x","req":5}"#).expect_err("missing field");
        assert_eq!(e.req, Some(5));
        assert!(e.message.contains("muted"), "{e:?}");
        let e = parse(r#"{"type":"leave","extra":1}"#).expect_err("unknown field");
        assert!(e.message.contains("extra"), "{e:?}");
    }

    #[test]
    fn replies_carry_their_type_and_request_id() {
        let reply = Reply {
            message: ServerMessage::Error {
                code: ErrorCode::RoomFull,
                message: "full".into(),
            },
            req: Some(2),
        };
        let v: serde_json::Value = serde_json::from_str(&reply.to_json()).expect("JSON");
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "room_full");
        assert_eq!(v["req"], 2);
        let pong = Reply {
            message: ServerMessage::Pong {},
            req: None,
        };
        assert_eq!(pong.to_json(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn a_quality_message_lists_participants_by_identity() {
        let reply = Reply {
            message: ServerMessage::Quality {
                participants: vec![QualityView {
                    identity: "ada".into(),
                    quality: Quality::Good,
                }],
            },
            req: None,
        };
        assert_eq!(
            reply.to_json(),
            r#"{"type":"quality","participants":[{"identity":"ada","quality":"good"}]}"#
        );
        // A participant's quality is left out until there is one.
        let mut info = ParticipantInfo {
            identity: "ada".into(),
            name: "Ada".into(),
            tracks: Vec::new(),
            quality: None,
        };
        let json = serde_json::to_value(&info).expect("JSON");
        assert!(json.get("quality").is_none(), "{json}");
        info.quality = Some(Quality::Lost);
        assert_eq!(
            serde_json::to_value(&info).expect("JSON")["quality"],
            "lost"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn arbitrary_json_objects_never_panic(
            kind in prop::sample::select(vec!["join", "publish", "subscriber_offer", "subscribe",
                "unsubscribe", "set_subscription", "mute", "leave", "ping", "floor_request",
                "floor_release", "switch_ack", "p2p_signal", "other"]),
            key in "[a-z_]{1,12}",
            value in prop_oneof![
                Just(serde_json::json!(null)),
                any::<i64>().prop_map(|n| serde_json::json!(n)),
                "\\PC{0,20}".prop_map(|s| serde_json::json!(s)),
                Just(serde_json::json!([1, "a"])),
                Just(serde_json::json!({"mid": 1})),
            ],
        ) {
            let text = serde_json::json!({"type": kind, key: value}).to_string();
            let _ = parse(&text);
        }
    }
}
