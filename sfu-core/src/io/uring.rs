//! io_uring datagram backend (temporary stub: `new` reports Unsupported so `Auto` falls back
//! to the portable path while the real implementation lands).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use super::{DatagramIo, IoStats, PollOutcome, Waker};

/// io_uring backend for one worker socket.
#[derive(Debug)]
pub struct UringIo {
    local_addr: SocketAddr,
}

impl UringIo {
    /// Not implemented yet: always fails so the caller falls back.
    pub fn new(_socket: UdpSocket, _waker: &Waker) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring backend not implemented yet",
        ))
    }
}

impl DatagramIo for UringIo {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn send(&mut self, _destination: SocketAddr, _datagram: Vec<u8>) {}

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn poll(
        &mut self,
        _deadline: Option<Instant>,
        _budget: usize,
        _on_datagram: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> io::Result<PollOutcome> {
        Ok(PollOutcome::default())
    }

    fn stats(&self) -> IoStats {
        IoStats::default()
    }
}
