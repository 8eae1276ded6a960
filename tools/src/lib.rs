//! Synthetic WebRTC peers for testing and loading the SFU: a WHIP [`Publisher`] that sends
//! test-pattern audio and VP8- or H264-framed video (optionally simulcast), a WHEP
//! [`Subscriber`] that checks and records what it receives, the [`load`] generator that runs
//! thousands of such peers, the tokens they need, and hostile-datagram generators.
//!
//! # Run-loop contract
//!
//! There is one runtime: a [shard](load::shard) thread owns many peers, each a UDP socket and
//! a str0m `Rtc` in RTP mode, behind one `mio` poll set and one timer heap. It feeds every
//! `Rtc` each datagram, timeout and owner's command and drains `poll_output` after each, and
//! it never blocks longer than 250 ms, so stopping it is bounded. The load generator spreads
//! its peers over a few shards; a test [`Publisher`] or [`Subscriber`] is one peer on a shard
//! of its own, which its handle stops on `close()` or drop. Every peer builds its offer the
//! same way ([`load::negotiate`]), sends the same [`source`]s through [`send::Sending`] and
//! receives through [`reception::Receiving`]. The pure parts (payload [`pattern`], media
//! [`source`]s, [`reception`] analysis, [`token`]s, [`noise`], [`metrics`] parsing) take time
//! as an input and are tested without sockets.
//!
//! # Panic policy
//!
//! No panics on network input: malformed payloads are recorded as corrupt, bad datagrams are
//! left to str0m. A panic inside a peer is caught by its shard and ends that peer only; a test
//! peer's owner sees it in [`PeerState::error`]. HTTP exchanges are bounded by
//! [`whip::HTTP_TIMEOUT`].

pub mod load;
pub mod metrics;
pub mod noise;
pub mod pattern;
pub mod peer;
pub mod publisher;
pub mod reception;
pub mod send;
pub mod source;
pub mod subscriber;
pub mod token;
pub mod whip;

pub use load::PeerFailure;
pub use load::negotiate::sample_offer;
pub use metrics::Metrics;
pub use pattern::PayloadKind;
pub use peer::{PeerState, wait_until};
pub use publisher::{Publisher, PublisherConfig, PublisherStats, VideoConfig};
pub use reception::{ReceivedPacket, Reception, StreamReport};
pub use subscriber::{Subscriber, SubscriberConfig};
pub use token::{DEV_API_KEY, DEV_API_SECRET, Grants};
pub use whip::{Endpoint, SignalError, SignalingClient};
