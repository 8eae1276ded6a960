//! sfu-proto: the node API as a wire protocol, shared by the media node (`sfu-core`), the
//! control plane and the tools.
//!
//! - [`ids`]: typed ids (`NodeId`, `RoomId`, `SessionId`, `TrackId`, `ParticipantId`, ...);
//!   names are validated when parsed, session ids are random 128-bit values.
//! - [`api`]: one request/response pair per call, and the events a node sends on its own.
//! - [`media`]: the header of a forwarded packet, as plain data.
//! - [`frame`]: the envelope on a node link (hello with the protocol version, request with
//!   its id, response, event) and its length-framed binary codec with a size limit.
//! - [`cluster`]: what a node tells control when it joins (registration, held sessions).
//! - [`relay`]: what two media nodes say on a relay link (rooms that span nodes): control
//!   frames and media datagrams, fragmented when over the path's limit.
//! - [`token`]: access-token claims.
//!
//! # Panic policy
//! Nothing here panics on input: every parser returns an error for bytes or text it does not
//! accept, whatever they are (checked by property tests on arbitrary input).

#![deny(unsafe_code)]

pub mod api;
pub mod cluster;
pub mod frame;
pub mod ids;
pub mod media;
pub mod relay;
pub mod token;

pub use api::{
    AudioFloor, CreateSession, EndReason, FORWARD_DELAY_BUCKETS_US, LoadReport, NodeError,
    NodeEvent, NodeHealth, NodeRequest, NodeResponse, NodeStats, Quality, RelayLinkStats,
    RelayRoom, RelayedFrom, RoomRelays, SendData, SessionCreated, SessionKind, SetFloor,
    SetSubscription, Subscribe, SubscribePolicy, TrackInfo, WorkerStats,
};
pub use cluster::{HeldSession, Registration, RelayAddress};
pub use frame::{CodecError, Frame, FrameDecoder, PROTOCOL_VERSION};
pub use ids::{
    IdError, Layer, NodeId, ParticipantId, RequestId, RoomId, SessionId, TrackId, WorkerId,
};
pub use media::{AudioLevel, Codec, FormatParams, MediaHeader, MediaKind};
