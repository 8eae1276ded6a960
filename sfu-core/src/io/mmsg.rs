//! Sending a [`SendQueue`] with `sendmmsg(2)`, shared by both backends: each message is a run
//! of datagrams to one destination (one UDP GSO send when it has several, see [`super::gso`]),
//! up to [`BATCH`] messages per call, from the head of the queue and in order.
//!
//! Why the io_uring backend sends this way too: every send carries `MSG_DONTWAIT` and so
//! completes inside the system call that issues it; through the ring that is one `SendMsg` per
//! run, each with its own submission and completion entry, linked into a chain so that a
//! refused send cannot be overtaken. Measured on the same worker loop (docs/io.md), that costs
//! more CPU per datagram than one `sendmmsg` for the same runs, which the kernel walks in one
//! call without any per-message bookkeeping.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::RawFd;

use super::IoStats;
use super::gso::{MAX_SEGMENTS, RunBuffers, Segmentation};
use super::send_queue::{Datagram, Progress, SendQueue};

/// Messages (runs of datagrams) per `sendmmsg` call.
pub const BATCH: usize = 32;

/// The headers, buffers and scratch space of `sendmmsg` calls, allocated once per socket.
pub struct MmsgSender {
    /// The datagrams of the call in progress, the length of each message's run, and what
    /// became of each datagram (reused).
    attempt: Vec<Datagram>,
    runs: Vec<usize>,
    results: Vec<i32>,
    /// `BATCH` message headers and what each points at. Rewritten for each call; the kernel
    /// reads them only during it.
    headers: Box<[libc::mmsghdr]>,
    buffers: Box<[RunBuffers]>,
}

impl MmsgSender {
    pub fn new() -> Self {
        Self {
            attempt: Vec::with_capacity(BATCH * MAX_SEGMENTS),
            runs: Vec::with_capacity(BATCH),
            results: Vec::with_capacity(BATCH * MAX_SEGMENTS),
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths); each header a
            // call uses is filled by `RunBuffers::prepare` first.
            headers: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            buffers: (0..BATCH).map(|_| RunBuffers::new()).collect(),
        }
    }

    /// `sendmmsg` on `fd` from the head of `queue`, in order, until it is empty or the socket's
    /// send buffer is full. What the kernel refuses is settled by [`SendQueue::settle`]:
    /// retried from the same datagram after `POLLOUT`, or dropped and counted.
    pub fn send_queued(
        &mut self,
        fd: RawFd,
        v4_socket: bool,
        queue: &mut SendQueue,
        gso: &mut Segmentation,
        stats: &mut IoStats,
    ) {
        while queue.has_work() {
            let gso_before = gso.enabled();
            queue.take_runs(BATCH, gso.limits(), &mut self.attempt, &mut self.runs);
            let mut start = 0;
            for ((&run, header), buffers) in self
                .runs
                .iter()
                .zip(self.headers.iter_mut())
                .zip(self.buffers.iter_mut())
            {
                buffers.prepare(
                    &self.attempt[start..start + run],
                    v4_socket,
                    &mut header.msg_hdr,
                );
                header.msg_len = 0;
                start += run;
            }
            // SAFETY: the first `runs.len()` headers point at addresses, iovecs and control
            // messages in `buffers` and at the datagrams' bytes in `attempt`, all of which
            // outlive the call; the kernel does not write to them.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    self.runs.len() as _,
                    libc::MSG_DONTWAIT,
                )
            };
            // The first `n` messages went out whole; the message after them failed with
            // `errno` if nothing went out; the rest were not tried. (After a partial send the
            // error, if any, is not reported: the next call meets it on its first message.)
            self.results.clear();
            let (sent, failed) = match usize::try_from(n) {
                Ok(sent) => (sent, None),
                Err(_) => {
                    let errno = io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO);
                    (0, (errno != libc::EINTR).then_some(-errno))
                }
            };
            let mut start = 0;
            for (i, &run) in self.runs.iter().enumerate() {
                let result = if i < sent {
                    self.headers[i].msg_len as i32
                } else if let Some(errno) = failed.filter(|_| i == sent) {
                    errno
                } else {
                    break;
                };
                let datagrams = &self.attempt[start..start + run];
                gso.settle_send(datagrams, result, &mut self.results, stats);
                start += run;
            }
            let progress = queue.settle(&mut self.attempt, &self.results);
            if progress == Progress::None && gso.enabled() == gso_before {
                // Interrupted before anything was tried: the next flush or poll resumes.
                // (A refused GSO send is retried at once, one datagram per message.)
                break;
            }
        }
    }
}

impl Default for MmsgSender {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MmsgSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgSender")
            .field("in_progress", &self.attempt.len())
            .finish_non_exhaustive()
    }
}

/// Queued datagrams at which a backend's `send` hands them to the kernel without waiting for
/// `flush`: a full batch, or with GSO enough for runs to reach their limit.
pub fn send_threshold(gso: &Segmentation) -> usize {
    if gso.enabled() {
        BATCH * MAX_SEGMENTS / 2
    } else {
        BATCH
    }
}
