//! sfu-core: a thread-per-core WebRTC media node.
//!
//! # Run-loop contract
//! [`Node::start`](node::Node::start) binds one UDP socket per worker and starts one thread per
//! worker, pinned to its own CPU. Each worker thread is a thin I/O shell ([`worker`]) around a
//! sans-IO [`engine`]: the shell owns the socket (driven through io_uring, or the portable
//! `poll(2)` path when io_uring is unavailable), the clock and the channels; the engine owns
//! the worker's sessions (str0m `Rtc`s in RTP mode, ICE-lite), its view of each room
//! ([`engine::room`]) and its timers, and never reads the clock. Workers never share a session.
//! A publisher's packet is decrypted once; its payload (`Arc<[u8]>`) goes to local subscribers
//! directly and, once per *other interested worker*, through that worker's bounded lock-free
//! ring. A full ring drops and counts.
//!
//! Control talks to the node through the node API of [`sfu_proto`]: [`node::Node`] serves its
//! requests in process and streams its events; a network transport carries the same values.
//!
//! # Panic policy
//! Network input never panics: malformed datagrams are dropped and counted. str0m may panic on
//! internal inconsistencies; every call into it is wrapped in `catch_unwind` and a panicking
//! session alone is torn down (counted as `session_panics`). Worker-level invariants use
//! `expect` with the invariant stated.

pub mod affinity;
pub mod config;
pub mod engine;
pub mod ids;
pub mod io;
pub mod limit;
pub mod mailbox;
pub mod metrics;
pub mod node;
pub mod relay;
pub mod relay_link;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod uplink;
pub mod watchdog;
pub mod worker;

pub use config::NodeConfig;
pub use node::Node;
pub use sfu_proto as proto;
pub use sfu_proto::{NodeError, NodeEvent, NodeRequest, NodeResponse, SessionCreated, SessionKind};
