//! Synthetic WebRTC peers for testing and loading the SFU: a WHIP [`Publisher`] that sends
//! test-pattern audio and VP8-framed video (optionally simulcast), a WHEP [`Subscriber`] that
//! checks and records what it receives, the tokens both need, and hostile-datagram generators.
//!
//! # Run-loop contract
//!
//! Each test peer owns one thread, one UDP socket and one str0m `Rtc` in RTP mode (the
//! [`load`] generator multiplexes many on a few threads instead); both kinds send the same
//! [`source`]s through the same [`send::Sending`] and build their `Rtc`s the same way. The
//! thread feeds the `Rtc` every datagram and timeout and drains `poll_output` after every
//! input or write;
//! it never blocks longer than a few milliseconds, so `close()` and drop are bounded. The pure
//! parts (payload [`pattern`], media [`source`]s, [`reception`] analysis, [`token`]s, [`noise`],
//! [`metrics`] parsing) take time as an input and are tested without sockets.
//!
//! # Panic policy
//!
//! No panics on network input: malformed payloads are recorded as corrupt, bad datagrams are
//! left to str0m. A panic inside a peer thread is caught and reported through
//! [`PeerState::error`]. HTTP exchanges are bounded by [`whip::HTTP_TIMEOUT`].

pub mod load;
pub mod metrics;
pub mod noise;
pub mod pattern;
pub mod peer;
pub mod publisher;
pub mod reception;
pub mod send;
mod session;
pub mod source;
pub mod subscriber;
pub mod token;
pub mod whip;

pub use metrics::Metrics;
pub use pattern::PayloadKind;
pub use peer::{PeerState, sample_offer, wait_until};
pub use publisher::{Publisher, PublisherConfig, PublisherStats, VideoConfig};
pub use reception::{ReceivedPacket, Reception, StreamReport};
pub use subscriber::{Subscriber, SubscriberConfig};
pub use token::{DEV_API_KEY, DEV_API_SECRET, Grants};
pub use whip::{Endpoint, SignalError, SignalingClient};

/// Why a peer could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error("rtc: {0}")]
    Rtc(#[from] str0m::RtcError),
    #[error("sdp: {0}")]
    Sdp(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The HTTP status when the server refused the request.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Signal(e) => e.status(),
            _ => None,
        }
    }
}
