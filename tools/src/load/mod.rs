//! The load generator behind `sfu-load`: many synthetic WebRTC peers multiplexed on a few
//! threads, driven by a [`Scenario`], measured into a [`Report`]. Its runtime ([`shard`],
//! [`peer`], [`negotiate`], [`io`]) is also what every test [`Publisher`](crate::Publisher)
//! and [`Subscriber`](crate::Subscriber) runs on, one peer to a shard.

pub mod engine;
pub mod html;
pub mod io;
pub mod janus;
pub mod media;
pub mod negotiate;
pub mod peer;
pub mod placement;
pub mod progress;
pub mod protocol;
pub mod ptt;
pub mod relay;
pub mod report;
pub mod room;
pub mod sampler;
pub mod scenario;
pub mod shard;
pub mod stats;

pub use engine::{LoadError, RunOptions, run, write_report};
pub use progress::ProgressMode;
pub use protocol::{PeerFailure, Protocol, SdpClient, SessionHandle, TokenSource, WhipWhep};
pub use report::Report;
pub use scenario::{Criteria, MediaModel, ProtocolKind, Scenario};
