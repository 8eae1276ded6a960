//! sfu-link: QUIC links that carry the node API (`sfu_proto`) between control and media nodes.
//!
//! - [`tls`]: control's certificate (generated self-signed when none is given, or loaded from
//!   PEM files) and the client side that accepts exactly that certificate (pinning, no CA).
//! - [`auth`]: the cluster secret's challenge-response: a node proves it knows the secret with
//!   an HMAC over a fresh nonce from control; the secret itself never crosses the link.
//! - [`stream`]: length-framed [`sfu_proto::Frame`]s over a QUIC stream.
//! - [`handshake`]: `Hello` → `Challenge` → `Register` → `Registered`/`Refused`, both sides,
//!   bounded in time.
//! - [`requests`]: request ids matched to responses on the caller's side of a link.
//!
//! # Run-loop contract
//! Everything here is async on tokio; a link is one QUIC connection with one bidirectional
//! stream for the node API, whose reader and writer are driven by their owners' tasks. Work
//! per frame is bounded: frames are at most [`sfu_proto::frame::DEFAULT_MAX_FRAME`] bytes.
//!
//! # Panic policy
//! No panics on network input. An oversized frame ends the link (the stream cannot be
//! resynchronized); a malformed one is skipped, counted and logged.

#![deny(unsafe_code)]

pub mod auth;
pub mod handshake;
pub mod requests;
pub mod stream;
pub mod tls;

pub use quinn;

use sfu_proto::CodecError;

/// Why a link failed or refused to come up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("cannot write to the link: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("cannot read from the link: {0}")]
    Read(#[from] quinn::ReadError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the peer closed the link")]
    Closed,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("the peer speaks protocol version {theirs}, this build speaks {ours}")]
    Version { ours: u16, theirs: u16 },
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}
