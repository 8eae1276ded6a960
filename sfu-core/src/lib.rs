//! sfu-core: a thread-per-core WebRTC media node.
//!
//! # Run-loop contract
//! [`Node::start`](node::Node::start) binds one UDP socket per worker and starts one thread per
//! worker, pinned to its own CPU. Each worker owns its socket (driven through io_uring, or the
//! portable `poll(2)` path when io_uring is unavailable), its sessions (str0m `Rtc`s in RTP
//! mode, ICE-lite), its rooms' forwarding state and its timers. Workers never share a session.
//! A publisher's packet is decrypted once; its payload (`Arc<[u8]>`) goes to local subscribers
//! directly and, once per *other interested worker*, through that worker's bounded lock-free
//! ring. A full ring drops and counts.
//!
//! Control talks to the node through the typed messages of [`api`]; [`node::Node`] serves them
//! in process, and a network transport can carry the same values unchanged.
//!
//! # Panic policy
//! Network input never panics: malformed datagrams are dropped and counted. str0m may panic on
//! internal inconsistencies; every call into it is wrapped in `catch_unwind` and a panicking
//! session alone is torn down (counted as `session_panics`). Worker-level invariants use
//! `expect` with the invariant stated.

pub mod affinity;
pub mod api;
pub mod codec;
pub mod config;
pub mod demux;
pub mod forward;
pub mod ids;
pub mod io;
pub mod mailbox;
pub mod metrics;
pub mod node;
pub mod session;
pub mod worker;

pub use api::{NodeError, NodeReply, NodeRequest, SessionCreated, SessionKind};
pub use config::NodeConfig;
pub use node::Node;
