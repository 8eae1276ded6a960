//! Frames on a node link and their byte form: a 4-byte big-endian length, then the frame
//! encoded with postcard (a compact, stable serde format). A length above the decoder's
//! maximum is refused before anything is buffered; a frame whose body does not decode is
//! skipped with an error and the frames after it still decode. Nothing here panics on input.
//! The same byte form carries the relay link's frames ([`crate::relay::RelayFrame`]): the
//! codec is generic over the frame type, [`Frame`] by default.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{NodeEvent, NodeRequest, NodeResponse};
use crate::cluster::{NONCE_LEN, Registration};
use crate::ids::{NodeId, RequestId};

/// The protocol version this crate speaks. Peers exchange it in [`Frame::Hello`] and refuse
/// each other when it differs.
pub const PROTOCOL_VERSION: u16 = 6;

/// Largest frame body accepted by default: an SDP offer is at most tens of KiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

const LENGTH_BYTES: usize = 4;

/// One message on a node link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame each way: who is speaking and which protocol version.
    Hello {
        version: u16,
        node: Option<NodeId>,
    },
    /// Control → node, after its `Hello`: prove you know the cluster secret.
    Challenge {
        nonce: [u8; NONCE_LEN],
    },
    /// Node → control: who it is, and the proof over the challenge.
    Register {
        registration: Registration,
        proof: [u8; NONCE_LEN],
    },
    /// Control → node: registered; requests follow.
    Registered,
    /// Control → node: not registered, and why. Control closes the link after it.
    Refused {
        reason: String,
    },
    Request {
        id: RequestId,
        request: NodeRequest,
    },
    Response {
        id: RequestId,
        response: NodeResponse,
    },
    Event(NodeEvent),
}

/// Why bytes did not make a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The length prefix announces more than the maximum. The stream cannot be resynchronized:
    /// close the link.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The body is not a valid frame. It was skipped; later frames still decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl CodecError {
    /// Whether the link can go on after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, CodecError::TooLarge { .. })
    }
}

/// Append `frame`'s byte form (length prefix and body) to `out`. Fails, leaving `out` as it
/// was, if the body would be over `max` bytes.
pub fn encode<F: Serialize>(frame: &F, max: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    let result = postcard::to_io(frame, &mut *out).map(|_| ());
    let len = out.len() - start - LENGTH_BYTES;
    match result {
        Ok(()) if len <= max && u32::try_from(len).is_ok() => {
            let prefix = (len as u32).to_be_bytes();
            out[start..start + LENGTH_BYTES].copy_from_slice(&prefix);
            Ok(())
        }
        Ok(()) => {
            out.truncate(start);
            Err(CodecError::TooLarge { len, max })
        }
        Err(e) => {
            out.truncate(start);
            Err(CodecError::Malformed(e.to_string()))
        }
    }
}

/// The byte form of one frame, as [`encode`] with the default limit.
pub fn to_bytes<F: Serialize>(frame: &F) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode(frame, DEFAULT_MAX_FRAME, &mut out)?;
    Ok(out)
}

/// Decode one frame body (without its length prefix). Trailing bytes are an error.
pub fn decode_body<F: DeserializeOwned>(body: &[u8]) -> Result<F, CodecError> {
    match postcard::take_from_bytes::<F>(body) {
        Ok((frame, [])) => Ok(frame),
        Ok((_, rest)) => Err(CodecError::Malformed(format!(
            "{} bytes after the frame",
            rest.len()
        ))),
        Err(e) => Err(CodecError::Malformed(e.to_string())),
    }
}

/// Reassembles frames of type `F` from a byte stream that arrives in arbitrary pieces.
#[derive(Debug)]
pub struct FrameDecoder<F = Frame> {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    read: usize,
    max: usize,
    failed: Option<CodecError>,
    frames: PhantomData<fn() -> F>,
}

impl<F> Default for FrameDecoder<F> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl<F> FrameDecoder<F> {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            read: 0,
            max,
            failed: None,
            frames: PhantomData,
        }
    }

    /// Add bytes read from the link.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.read > 0 && self.read == self.buf.len() {
            self.buf.clear();
            self.read = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.read
    }
}

impl<F: DeserializeOwned> FrameDecoder<F> {
    /// The next complete frame, `Ok(None)` if more bytes are needed. After a fatal error
    /// every call returns that error again.
    pub fn decode(&mut self) -> Result<Option<F>, CodecError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let pending = &self.buf[self.read..];
        let Some(prefix) = pending.first_chunk::<LENGTH_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > self.max {
            let e = CodecError::TooLarge { len, max: self.max };
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.read = 0;
            return Err(e);
        }
        let Some(body) = pending.get(LENGTH_BYTES..LENGTH_BYTES + len) else {
            return Ok(None);
        };
        let result = decode_body(body);
        self.read += LENGTH_BYTES + len;
        // Keep the buffer from growing without bound when frames keep arriving.
        if self.read > 64 * 1024 && self.read * 2 > self.buf.len() {
            self.buf.drain(..self.read);
            self.read = 0;
        }
        result.map(Some)
    }
}
