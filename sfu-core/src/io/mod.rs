//! Datagram I/O backends for a worker: io_uring where the kernel allows it (waiting and
//! receiving through the ring), a portable `poll(2)` + `recvmmsg` path otherwise. A backend owns
//! one UDP socket and the worker's wake-up eventfd; it knows nothing about sessions. Both send
//! with `sendmmsg` ([`mmsg`]), runs of datagrams to one destination as one UDP GSO send where
//! the kernel allows it ([`gso`]).
//!
//! This is the only place (with [`waker`]) where system calls for media happen, and with
//! [`crate::affinity`] (CPU pinning, thread priority) the only place in sfu-core allowed to
//! contain `unsafe` (`poll`, `uring`, `mmsg`, `gso`, `waker`).

// The system-call layer: waits and deadlines are real time.
#![allow(clippy::disallowed_methods)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

pub mod gso;
pub mod mmsg;
pub mod poll;
pub mod send_queue;
pub mod uring;
pub mod waker;

pub use waker::Waker;

/// Size of one receive buffer. Larger than any datagram a WebRTC peer sends (MTU ~1500).
pub const RECV_BUFFER_SIZE: usize = 2048;

/// Datagrams a backend holds for the kernel (waiting plus in flight) while the socket's send
/// buffer is full; past this, new ones are dropped and counted. About 5 MB of 1200-byte
/// packets on top of the socket buffer: a keyframe burst fits, a persistently overloaded link
/// does not turn into seconds of queueing.
pub const SEND_QUEUE_CAPACITY: usize = 4096;

/// What woke a [`DatagramIo::poll`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollOutcome {
    /// Datagrams handed to the callback during this call.
    pub received: usize,
    /// The worker's [`Waker`] fired (control message or cross-worker ring has work).
    pub woken: bool,
}

/// Counters a backend keeps about itself (monotonic); read by the worker for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Bytes of those datagrams.
    pub sent_bytes: u64,
    /// Sends the kernel refused with an error (e.g. `ENOBUFS`, unreachable); dropped.
    pub send_failed: u64,
    /// Datagrams dropped because the socket's send buffer stayed full (see [`SEND_QUEUE_CAPACITY`]).
    pub send_buffer_full: u64,
    /// Receives that failed or were truncated; dropped.
    pub recv_errors: u64,
    /// Sends the kernel accepted that carried more than one datagram (UDP GSO).
    pub gso_sends: u64,
    /// Datagrams in those sends (also counted in `sent`).
    pub gso_datagrams: u64,
}

impl IoStats {
    /// Datagrams handed to the backend that will never reach the wire.
    pub fn send_dropped(&self) -> u64 {
        self.send_failed + self.send_buffer_full
    }

    fn with_sends(mut self, counters: send_queue::SendCounters) -> Self {
        self.sent = counters.sent;
        self.sent_bytes = counters.sent_bytes;
        self.send_failed = counters.failed;
        self.send_buffer_full = counters.buffer_full;
        self
    }
}

/// One worker's UDP socket plus its wake-up fd, driven by the worker loop.
///
/// Contract: the worker calls [`send`](Self::send) any number of times, then
/// [`flush`](Self::flush) once per loop pass, then [`poll`](Self::poll) with the earliest
/// deadline it has. `poll` returns when datagrams were received, the waker fired, or the
/// deadline passed — whichever comes first — and never calls the callback more than `budget`
/// times, so one busy socket cannot starve timers and rings.
///
/// Sends reach the kernel in the order they were queued (a forwarding SFU must never reorder a
/// stream). A backend holds at most [`SEND_QUEUE_CAPACITY`] datagrams; while the socket's send
/// buffer is full it keeps them, in order, and resumes on `POLLOUT` (also from within `poll`).
/// Every datagram is either sent or counted in [`IoStats`] as dropped. Adjacent datagrams to
/// one destination may leave in one UDP GSO send; the receiver still gets them one by one.
pub trait DatagramIo {
    /// Name for logs and metrics (`"io_uring"` or `"poll"`).
    fn name(&self) -> &'static str;

    /// Address the socket is bound to.
    fn local_addr(&self) -> SocketAddr;

    /// Queue one datagram behind the others. Ownership of the buffer passes to the backend
    /// until the kernel is done with it; no copy is made. The backend may already hand queued
    /// datagrams to the kernel here, so a large pass never piles up.
    fn send(&mut self, destination: SocketAddr, datagram: Vec<u8>);

    /// Hand every queued datagram to the kernel, or as many as its send buffer takes.
    fn flush(&mut self) -> io::Result<()>;

    /// Wait for input (at most until `deadline`; `None` means until input or a wake-up) and
    /// call `on_datagram(source, bytes, now)` for each received datagram, at most `budget` times.
    fn poll(
        &mut self,
        deadline: Option<Instant>,
        budget: usize,
        on_datagram: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> io::Result<PollOutcome>;

    /// Backend counters.
    fn stats(&self) -> IoStats;
}

/// Which backend to build for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoBackend {
    /// io_uring if it can be set up, else the portable path (with a log line saying why).
    Auto,
    /// io_uring only; fail if it cannot be set up.
    IoUring,
    /// The portable `poll(2)` path.
    Poll,
}

/// Build the backend for one worker's socket. `udp_gso`: send runs of datagrams to one
/// destination as one UDP GSO send where the kernel allows it (see [`gso`]).
pub fn build(
    backend: IoBackend,
    socket: UdpSocket,
    waker: &Waker,
    udp_gso: bool,
) -> io::Result<Box<dyn DatagramIo>> {
    match backend {
        IoBackend::Poll => Ok(Box::new(poll::PollIo::new(socket, waker, udp_gso)?)),
        IoBackend::IoUring => Ok(Box::new(uring::UringIo::new(socket, waker, udp_gso)?)),
        IoBackend::Auto => {
            let fallback = socket.try_clone()?;
            match uring::UringIo::new(socket, waker, udp_gso) {
                Ok(io) => Ok(Box::new(io)),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "io_uring unavailable, falling back to the portable poll(2) socket path"
                    );
                    Ok(Box::new(poll::PollIo::new(fallback, waker, udp_gso)?))
                }
            }
        }
    }
}
