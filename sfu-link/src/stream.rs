//! Frames over one QUIC stream: [`FrameSender`] writes them with their length prefix,
//! [`FrameReceiver`] reassembles them from whatever chunks arrive. Node links carry
//! [`Frame`]s (the default), relay links [`sfu_proto::relay::RelayFrame`]s.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sfu_proto::frame::{self, DEFAULT_MAX_FRAME};
use sfu_proto::{CodecError, Frame, FrameDecoder};

use crate::LinkError;

/// Bytes read from the stream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The writing half.
#[derive(Debug)]
pub struct FrameSender<F = Frame> {
    send: quinn::SendStream,
    buf: Vec<u8>,
    frames: PhantomData<fn(F)>,
}

impl<F: Serialize> FrameSender<F> {
    pub fn new(send: quinn::SendStream) -> Self {
        Self {
            send,
            buf: Vec::new(),
            frames: PhantomData,
        }
    }

    /// Write one frame. A frame over the size limit is refused (nothing is written).
    pub async fn send(&mut self, frame: &F) -> Result<(), LinkError> {
        self.buf.clear();
        frame::encode(frame, DEFAULT_MAX_FRAME, &mut self.buf)?;
        self.send.write_all(&self.buf).await?;
        Ok(())
    }

    /// Finish the stream (the peer reads its end).
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// The reading half.
#[derive(Debug)]
pub struct FrameReceiver<F = Frame> {
    recv: quinn::RecvStream,
    decoder: FrameDecoder<F>,
    chunk: Vec<u8>,
    malformed: u64,
}

impl<F: DeserializeOwned> FrameReceiver<F> {
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME),
            chunk: vec![0; READ_CHUNK],
            malformed: 0,
        }
    }

    /// The next frame; `Err(LinkError::Closed)` when the peer finished the stream. Malformed
    /// frames are skipped (and counted, see [`FrameReceiver::malformed`]); an oversized one
    /// is fatal.
    pub async fn next(&mut self) -> Result<F, LinkError> {
        loop {
            match self.decoder.decode() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(CodecError::Malformed(reason)) => {
                    self.malformed += 1;
                    tracing::warn!(%reason, "malformed frame on a link skipped");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            match self.recv.read(&mut self.chunk).await? {
                Some(n) => self.decoder.extend(&self.chunk[..n]),
                None => return Err(LinkError::Closed),
            }
        }
    }

    /// Frames skipped because they did not decode.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}
