//! control: the control plane. WHIP/WHEP signaling, token auth, metrics and the demo page,
//! driving a media node through the node API of `sfu-core`. In `control dev` the node runs in
//! this process with in-memory state.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;
pub mod node_client;
pub mod ratelimit;
pub mod rtc;
pub mod server;
pub mod store;
pub mod turn;
pub use sfu_core::watchdog;
