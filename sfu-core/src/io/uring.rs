//! The io_uring datagram path: one ring per worker with a fixed set of `RecvMsg` operations
//! always armed on the socket, a `PollAdd` on the worker's eventfd, and sends as chains of
//! linked `SendMsg` fed in order from the [`SendQueue`]. Owns the ring and every buffer the
//! kernel may touch while an operation is in flight.
//!
//! Why sends look the way they do (each point was a measured failure):
//! - A send that meets a full socket send buffer must not be parked by io_uring. Without
//!   `MSG_DONTWAIT` io_uring arms an internal poll and re-issues parked sends when the buffer
//!   drains, in wake-up order, not submission order: with a full buffer most of a burst left
//!   reordered. With `MSG_DONTWAIT` the send completes with `-EAGAIN` and we decide.
//! - Sends are linked (`IOSQE_IO_LINK`) into a chain and only one chain is in flight, so after a
//!   refusal the rest of the chain is cancelled instead of overtaking the refused datagram.
//!   The refused and cancelled datagrams go back to the head of the queue, which waits for a
//!   `PollAdd(POLLOUT)` on the socket before the next chain.
//! - Send buffers are recycled as soon as their completions are reaped, inside `send`/`flush`
//!   too, so a pass larger than the slot pool (a keyframe to hundreds of subscribers) streams
//!   through it instead of overflowing it.
//! - Each `SendMsg` carries a run of datagrams to one destination ([`super::gso`]): with several,
//!   one iovec per datagram and a `UDP_SEGMENT` control message, so the kernel's per-send cost
//!   is paid once per run. The run's datagrams stay in `attempt`, untouched, until the chain
//!   completes.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use io_uring::{IoUring, Probe, opcode, squeue, types};

use super::gso::{MAX_SEGMENTS, RunBuffers, Segmentation};
use super::poll::{prepare_socket, sockaddr_to_socket_addr};
use super::send_queue::{Datagram, Progress, SendQueue};
use super::{DatagramIo, IoStats, PollOutcome, RECV_BUFFER_SIZE, SEND_QUEUE_CAPACITY, Waker};

/// Submission queue size. Entries beyond this in one pass trigger an early submit, not a drop.
const SQ_ENTRIES: u32 = 256;
/// Receive operations kept armed on the socket.
const RECV_SLOTS: usize = 64;
/// Sends in one linked chain; one chain is in flight at a time. Leaves room in the SQ for
/// every receive re-arm and the two polls. With GSO one send may carry a run of up to
/// `MAX_SEGMENTS` datagrams.
const CHAIN_LEN: usize = 128;
/// Completion queue size. Every operation posts exactly one completion and at most
/// `RECV_SLOTS + 2 + CHAIN_LEN` are in flight (plus cancellations at drop), so the CQ cannot
/// overflow.
const CQ_ENTRIES: u32 = 1024;
/// How long `flush` waits for a chain to complete before leaving it to `poll`. Sends carry
/// `MSG_DONTWAIT`, so a chain completes within the `io_uring_enter` that submits it; this only
/// bounds the wait should a kernel behave otherwise.
const CHAIN_WAIT: Duration = Duration::from_millis(5);
/// Longest pause before re-arming receives that keep failing (so a broken socket cannot spin).
const MAX_RECV_BACKOFF: Duration = Duration::from_millis(100);
/// How long `drop` waits for cancelled operations before leaking their buffers instead.
const DROP_TIMEOUT: Duration = Duration::from_secs(1);

// `user_data` = kind << 32 | index.
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_WAKE: u64 = 3;
const KIND_CANCEL: u64 = 4;
const KIND_WRITABLE: u64 = 5;

fn user_data(kind: u64, index: usize) -> u64 {
    (kind << 32) | index as u64
}

fn decode(user_data: u64) -> (u64, usize) {
    (user_data >> 32, (user_data & u64::from(u32::MAX)) as usize)
}

/// io_uring backend for one worker socket.
///
/// Field order is load-bearing: `ring` is declared (and so dropped) first. `Drop` cancels and
/// reaps every operation before that, but if it gives up waiting it leaks the buffers rather
/// than free memory the kernel may still read or write.
pub struct UringIo {
    ring: IoUring,
    socket: UdpSocket,
    local_addr: SocketAddr,
    waker: Waker,
    /// `RECV_SLOTS` receive slots, allocated once; the kernel writes into armed ones.
    recv_slots: KernelOwned<[RecvSlot]>,
    recv_armed: [bool; RECV_SLOTS],
    /// Slots whose receive failed, waiting for `rearm_at`.
    recv_disarmed: Vec<usize>,
    recv_backoff: Duration,
    rearm_at: Instant,
    wake_armed: bool,
    /// A `PollAdd(POLLOUT)` on the socket is armed: the queue waits for send buffer.
    writable_armed: bool,
    /// `CHAIN_LEN` send slots, allocated once; slots `0..chain_len` belong to the chain in
    /// flight and the kernel reads them until their completions are reaped.
    send_slots: KernelOwned<[SendSlot]>,
    /// Sends in the chain in flight; send `i` carries the next `runs[i]` datagrams of `attempt`.
    chain_len: usize,
    /// Result of each send of the chain in flight; `None` until its completion is reaped.
    chain_results: [Option<i32>; CHAIN_LEN],
    chain_outstanding: usize,
    /// Datagrams queued by `send` and not yet in a chain.
    queue: SendQueue,
    /// Whether sends use UDP GSO.
    gso: Segmentation,
    /// The datagrams of the chain in flight, whose bytes the kernel reads until the chain's
    /// completions are reaped (nothing touches them meanwhile), and each send's run length;
    /// then, with one result per datagram, handed to `queue.settle` (all reused).
    attempt: Vec<Datagram>,
    runs: Vec<usize>,
    results: Vec<i32>,
    /// Receive and wake-up completions reaped but not handled yet (sends reap the ring too).
    /// At most one per armed operation: `RECV_SLOTS + 1`.
    ready: VecDeque<(u64, i32)>,
    stats: IoStats,
}

/// What one [`UringIo::reap`] took off the ring.
#[derive(Debug, Clone, Copy)]
struct Reaped {
    completions: usize,
    /// The chain in flight completed and was settled, with this effect on the queue.
    settled: Option<Progress>,
}

/// One armed `RecvMsg`: the header points at the other three fields.
struct RecvSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    buf: [u8; RECV_BUFFER_SIZE],
}

/// One `SendMsg` of a chain: the header points at the buffers (address, iovecs, control
/// message), the iovecs at the bytes of the run's datagrams in `UringIo::attempt`.
struct SendSlot {
    msg: libc::msghdr,
    buffers: RunBuffers,
}

/// A heap allocation the kernel may read or write behind Rust's back while an operation is in
/// flight. It is never moved and only reached through raw pointers, so no Rust reference
/// overlaps a kernel write; it is freed on drop unless [`leak`](Self::leak)ed.
struct KernelOwned<T: ?Sized> {
    ptr: NonNull<T>,
}

impl<T: ?Sized> KernelOwned<T> {
    fn new(value: Box<T>) -> Self {
        Self {
            ptr: NonNull::from(Box::leak(value)),
        }
    }

    fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }

    /// Give up the allocation for good: the kernel may still use it.
    fn leak(self) {
        mem::forget(self);
    }
}

impl<T: ?Sized> Drop for KernelOwned<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `Box::leak` in `new` and is freed only here, once.
        // `UringIo::drop` guarantees no kernel operation still refers to it.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

impl UringIo {
    /// Set up a ring for `socket` and queue the receives and the wake-up wait; they reach the
    /// kernel on the first `flush`/`poll`, from the thread that drives the worker. Fails (so
    /// the caller can fall back) if io_uring is unavailable, forbidden, or too old (< 5.11).
    /// `udp_gso`: send runs to one destination with UDP GSO if the kernel has it.
    pub fn new(socket: UdpSocket, waker: &Waker, udp_gso: bool) -> io::Result<Self> {
        let ring = build_ring()?;
        check_kernel_support(&ring)?;
        prepare_socket(&socket)?;
        let local_addr = socket.local_addr()?;
        let gso = Segmentation::new(&socket, udp_gso);

        let recv_slots: Box<[RecvSlot]> = (0..RECV_SLOTS)
            // SAFETY: every field is plain old data (pointers, integers, bytes); all-zero is a
            // valid value, and `arm_recv` fills the header before use.
            .map(|_| unsafe { mem::zeroed::<RecvSlot>() })
            .collect();
        let send_slots: Box<[SendSlot]> = (0..CHAIN_LEN)
            .map(|_| SendSlot {
                // SAFETY: all-zero is a valid msghdr; `start_chain` fills it before use.
                msg: unsafe { mem::zeroed() },
                buffers: RunBuffers::new(),
            })
            .collect();
        let now = Instant::now();
        let mut io = Self {
            ring,
            socket,
            local_addr,
            waker: waker.clone(),
            recv_slots: KernelOwned::new(recv_slots),
            recv_armed: [false; RECV_SLOTS],
            recv_disarmed: Vec::with_capacity(RECV_SLOTS),
            recv_backoff: Duration::ZERO,
            rearm_at: now,
            wake_armed: false,
            writable_armed: false,
            send_slots: KernelOwned::new(send_slots),
            chain_len: 0,
            chain_results: [None; CHAIN_LEN],
            chain_outstanding: 0,
            queue: SendQueue::new(SEND_QUEUE_CAPACITY),
            gso,
            attempt: Vec::with_capacity(CHAIN_LEN * MAX_SEGMENTS),
            runs: Vec::with_capacity(CHAIN_LEN),
            results: Vec::with_capacity(CHAIN_LEN * MAX_SEGMENTS),
            ready: VecDeque::with_capacity(RECV_SLOTS + 1),
            stats: IoStats::default(),
        };
        for index in 0..RECV_SLOTS {
            if !io.arm_recv(index) {
                return Err(io::Error::other("io_uring submission queue too small"));
            }
        }
        if !io.arm_wake() {
            return Err(io::Error::other("io_uring submission queue too small"));
        }
        Ok(io)
    }

    /// Queue an entry, submitting what is already queued if the SQ is full.
    ///
    /// # Safety
    /// Every buffer `entry` points to must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: forwarded from the caller.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return true;
        }
        if self.ring.submit().is_err() {
            return false;
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    /// Reset slot `index`'s header and queue a `RecvMsg` for it.
    fn arm_recv(&mut self, index: usize) -> bool {
        debug_assert!(!self.recv_armed[index]);
        // SAFETY: `index < RECV_SLOTS` (callers pass slot indices only) and the slot is not
        // armed, so the kernel does not touch it while we rewrite the header in place.
        let msg = unsafe {
            let slot = self.recv_slots.as_ptr().cast::<RecvSlot>().add(index);
            (*slot).iov = libc::iovec {
                iov_base: ptr::addr_of_mut!((*slot).buf).cast(),
                iov_len: RECV_BUFFER_SIZE,
            };
            let msg = ptr::addr_of_mut!((*slot).msg);
            msg.write(mem::zeroed());
            (*msg).msg_name = ptr::addr_of_mut!((*slot).addr).cast();
            (*msg).msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            (*msg).msg_iov = ptr::addr_of_mut!((*slot).iov);
            (*msg).msg_iovlen = 1;
            msg
        };
        // MSG_TRUNC makes the result the datagram's real length, so truncation is visible.
        let entry = opcode::RecvMsg::new(types::Fd(self.socket.as_raw_fd()), msg)
            .flags(libc::MSG_TRUNC as u32)
            .build()
            .user_data(user_data(KIND_RECV, index));
        // SAFETY: the slot lives in `recv_slots`, which outlives every operation (see `Drop`).
        let pushed = unsafe { self.push(&entry) };
        self.recv_armed[index] = pushed;
        pushed
    }

    fn arm_wake(&mut self) -> bool {
        // A poll rather than an 8-byte read: the eventfd is O_NONBLOCK, and older kernels
        // complete a read on a non-blocking file with -EAGAIN at once instead of waiting (recent
        // ones wait). A poll waits everywhere; `Waker::drain` then resets the counter.
        let entry = opcode::PollAdd::new(types::Fd(self.waker.raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(user_data(KIND_WAKE, 0));
        // SAFETY: a poll references no user memory.
        let pushed = unsafe { self.push(&entry) };
        self.wake_armed = pushed;
        pushed
    }

    /// Wait for room in the socket's send buffer (one-shot `POLLOUT`).
    fn arm_writable(&mut self) {
        let entry = opcode::PollAdd::new(types::Fd(self.socket.as_raw_fd()), libc::POLLOUT as u32)
            .build()
            .user_data(user_data(KIND_WRITABLE, 0));
        // SAFETY: a poll references no user memory.
        self.writable_armed = unsafe { self.push(&entry) };
    }

    /// Re-arm whatever a failure or a full SQ left disarmed, once the back-off allows.
    fn rearm_pending(&mut self, now: Instant) {
        if self.queue.is_blocked() && !self.writable_armed {
            self.arm_writable();
        }
        if now < self.rearm_at {
            return;
        }
        while let Some(index) = self.recv_disarmed.pop() {
            if !self.arm_recv(index) {
                self.recv_disarmed.push(index);
                break;
            }
        }
        if !self.wake_armed {
            self.arm_wake();
        }
    }

    /// Delay re-arming after a failed operation, doubling the pause while failures repeat.
    fn back_off(&mut self, now: Instant) {
        self.recv_backoff =
            (self.recv_backoff * 2).clamp(Duration::from_millis(1), MAX_RECV_BACKOFF);
        self.rearm_at = now + self.recv_backoff;
    }

    /// Enter the kernel: submit, and wait up to `wait` (`None` = forever) until `want`
    /// completions are ready.
    fn enter(&mut self, want: usize, wait: Option<Duration>) -> io::Result<()> {
        let submitter = self.ring.submitter();
        let result = match wait {
            Some(Duration::ZERO) => submitter.submit(),
            Some(wait) => {
                let ts = types::Timespec::from(wait);
                submitter.submit_with_args(want, &types::SubmitArgs::new().timespec(&ts))
            }
            None => submitter.submit_and_wait(want),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // Timed out, interrupted by a signal, or short of kernel resources with
                // completions to reap first: none of these is a failure of the socket.
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Move the next runs of the queue into `attempt`, point the send slots at them and queue
    /// them as one linked chain of `SendMsg`. False if there was nothing to send or no room in
    /// the SQ.
    fn start_chain(&mut self) -> bool {
        debug_assert_eq!(self.chain_len, 0, "one chain in flight at a time");
        let room = |ring: &mut IoUring| {
            let sq = ring.submission();
            sq.capacity() - sq.len()
        };
        if room(&mut self.ring) < CHAIN_LEN {
            // Receive re-arms fill the SQ; hand them over first. On failure they stay queued
            // and the chain is just shorter.
            let _ = self.ring.submit();
        }
        let max = CHAIN_LEN.min(room(&mut self.ring));
        self.queue
            .take_runs(max, self.gso.limits(), &mut self.attempt, &mut self.runs);
        let len = self.runs.len();
        if len == 0 {
            return false;
        }
        let fd = types::Fd(self.socket.as_raw_fd());
        let v4_socket = self.local_addr.is_ipv4();
        let mut sq = self.ring.submission();
        let mut start = 0;
        for (index, &run) in self.runs.iter().enumerate() {
            let datagrams = &self.attempt[start..start + run];
            start += run;
            // SAFETY: `index < len <= CHAIN_LEN`, and no chain is in flight, so the kernel does
            // not read the slot while we fill it. The header points into the slot's own
            // allocation and at the datagrams' heap buffers, which stay put while they sit in
            // `attempt` (until the chain's completions are reaped).
            let msg = unsafe {
                let slot = self.send_slots.as_ptr().cast::<SendSlot>().add(index);
                (*slot)
                    .buffers
                    .prepare(datagrams, v4_socket, &mut (*slot).msg);
                ptr::addr_of!((*slot).msg)
            };
            let link = if index + 1 < len {
                squeue::Flags::IO_LINK
            } else {
                squeue::Flags::empty()
            };
            // MSG_DONTWAIT: a full send buffer completes with -EAGAIN (and breaks the chain)
            // instead of being parked on io_uring's internal poll. See the module docs.
            let entry = opcode::SendMsg::new(fd, msg)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
                .flags(link)
                .user_data(user_data(KIND_SEND, index));
            // SAFETY: the slot lives in `send_slots` and the datagrams in `attempt` until the
            // completion is reaped (see `Drop`).
            let pushed = unsafe { sq.push(&entry) };
            // Only this thread pushes, and `len <= room` was measured just above.
            assert!(pushed.is_ok(), "the SQ has room for the whole chain");
        }
        drop(sq);
        self.chain_results[..len].fill(None);
        self.chain_len = len;
        self.chain_outstanding = len;
        true
    }

    /// Send what the queue holds, one chain at a time, until it is empty or blocked, or until
    /// a chain does not complete within `CHAIN_WAIT` (then `poll` reaps it and carries on).
    fn pump(&mut self) {
        while self.chain_len == 0 && self.queue.has_work() {
            let gso_before = self.gso.enabled();
            if !self.start_chain() {
                return;
            }
            let give_up = Instant::now() + CHAIN_WAIT;
            let mut progress = Progress::None;
            while self.chain_len > 0 {
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() || self.enter(self.chain_outstanding, Some(left)).is_err() {
                    return;
                }
                if let Some(p) = self.reap().settled {
                    progress = p;
                }
            }
            if progress == Progress::None && self.gso.enabled() == gso_before {
                // Nothing was even tried (a cancelled chain): do not spin; the next flush or
                // poll tries again. (A refused GSO send is retried at once, one per datagram.)
                return;
            }
        }
    }

    /// Take every completion off the ring. Send completions fill in the chain (and settle it
    /// once complete), `POLLOUT` unblocks the queue, receives and wake-ups wait in `ready` for
    /// `poll`.
    fn reap(&mut self) -> Reaped {
        let mut completions = 0;
        for cqe in self.ring.completion() {
            completions += 1;
            let (data, result) = (cqe.user_data(), cqe.result());
            match decode(data) {
                (KIND_SEND, index)
                    if index < self.chain_len && self.chain_results[index].is_none() =>
                {
                    self.chain_results[index] = Some(result);
                    self.chain_outstanding -= 1;
                }
                (KIND_WRITABLE, _) if self.writable_armed => {
                    // On an error too: the next chain finds out, and blocks again if need be.
                    self.writable_armed = false;
                    self.queue.writable();
                }
                (KIND_RECV, index) if index < RECV_SLOTS && self.recv_armed[index] => {
                    self.recv_armed[index] = false;
                    self.ready.push_back((data, result));
                }
                (KIND_WAKE, _) if self.wake_armed => {
                    self.wake_armed = false;
                    self.ready.push_back((data, result));
                }
                // Cancellations (only issued by `drop`) and anything unknown: nothing to do.
                _ => {}
            }
        }
        let settled =
            (self.chain_len > 0 && self.chain_outstanding == 0).then(|| self.settle_chain());
        if self.queue.is_blocked() && !self.writable_armed {
            self.arm_writable();
        }
        Reaped {
            completions,
            settled,
        }
    }

    /// Every send of the chain completed: give its datagrams, with each send's result for
    /// each of its datagrams, to the queue.
    fn settle_chain(&mut self) -> Progress {
        self.results.clear();
        let mut start = 0;
        for (index, &run) in self.runs.iter().enumerate().take(self.chain_len) {
            let result = self.chain_results[index].unwrap_or(-libc::ECANCELED);
            self.gso.settle_send(
                &self.attempt[start..start + run],
                result,
                &mut self.results,
                &mut self.stats,
            );
            start += run;
        }
        self.chain_len = 0;
        self.queue.settle(&mut self.attempt, &self.results)
    }

    /// Handle reaped receive and wake-up completions: all wake-ups, at most `budget`
    /// receives (the rest wait for the next call). Returns (outcome, receives handled).
    fn handle_ready(
        &mut self,
        now: Instant,
        budget: usize,
        on_datagram: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> (PollOutcome, usize) {
        let mut outcome = PollOutcome::default();
        let mut receives = 0;
        while let Some(&(data, result)) = self.ready.front() {
            let (kind, index) = decode(data);
            if kind == KIND_RECV && receives == budget {
                break;
            }
            self.ready.pop_front();
            if kind == KIND_RECV {
                receives += 1;
                if result < 0 {
                    self.stats.recv_errors += 1;
                    self.recv_disarmed.push(index);
                    self.back_off(now);
                    continue;
                }
                self.recv_backoff = Duration::ZERO;
                if self.deliver(index, result as usize, on_datagram) {
                    outcome.received += 1;
                } else {
                    self.stats.recv_errors += 1;
                }
                if !self.arm_recv(index) {
                    self.recv_disarmed.push(index);
                }
            } else {
                // Even a failed wait may have hidden a wake-up: report one, it is cheap.
                self.waker.drain();
                outcome.woken = true;
                if result < 0 {
                    self.back_off(now);
                } else {
                    self.arm_wake();
                }
            }
        }
        (outcome, receives)
    }

    /// Hand slot `index`'s datagram of `len` bytes to the callback; false if it is unusable.
    fn deliver(
        &mut self,
        index: usize,
        len: usize,
        on_datagram: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> bool {
        // SAFETY: the slot's receive completed and it is not re-armed yet, so the kernel no
        // longer writes to it; `index < RECV_SLOTS` was checked by the caller.
        let slot = unsafe { &*self.recv_slots.as_ptr().cast::<RecvSlot>().add(index) };
        if len > slot.buf.len() || slot.msg.msg_flags & libc::MSG_TRUNC != 0 {
            return false;
        }
        let Some(source) = sockaddr_to_socket_addr(&slot.addr, slot.msg.msg_namelen) else {
            return false;
        };
        on_datagram(source, &slot.buf[..len]);
        true
    }

    fn ops_in_flight(&self) -> usize {
        self.recv_armed.iter().filter(|&&armed| armed).count()
            + usize::from(self.wake_armed)
            + usize::from(self.writable_armed)
            + self.chain_outstanding
    }
}

impl DatagramIo for UringIo {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn send(&mut self, destination: SocketAddr, datagram: Vec<u8>) {
        self.queue.push(destination, datagram);
        // With GSO, let runs grow before sending mid-pass.
        let threshold = if self.gso.enabled() {
            CHAIN_LEN * MAX_SEGMENTS / 8
        } else {
            CHAIN_LEN
        };
        if self.queue.waiting() >= threshold {
            self.pump();
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pump();
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => Ok(()),
            // Kernel short of resources: the entries stay queued for the next enter.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn poll(
        &mut self,
        deadline: Option<Instant>,
        budget: usize,
        on_datagram: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> io::Result<PollOutcome> {
        loop {
            let now = Instant::now();
            self.rearm_pending(now);
            let mut wait = deadline.map(|d| d.saturating_duration_since(now));
            if !self.recv_disarmed.is_empty() || !self.wake_armed {
                let until_rearm = self.rearm_at.saturating_duration_since(now);
                wait = Some(wait.map_or(until_rearm, |w| w.min(until_rearm)));
            }
            if !self.ready.is_empty() || !self.ring.completion().is_empty() {
                // Leftovers from a budget-limited call, or reaped while sending: work is
                // already waiting.
                wait = Some(Duration::ZERO);
            }
            self.enter(1, wait)?;

            let reaped = self.reap();
            // A chain completed or the socket became writable: keep the queue moving.
            self.pump();
            let (outcome, receives) = self.handle_ready(Instant::now(), budget, on_datagram);
            let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
            // Wait again only if this round reaped send-side completions and nothing else, so
            // the worker does not run an empty pass after every flush. A round that reaped
            // nothing (signal, re-arm timer) returns, so a misbehaving enter cannot spin here.
            let sends_only = reaped.completions > 0 && receives == 0 && !outcome.woken;
            if !sends_only || past_deadline || wait == Some(Duration::ZERO) {
                return Ok(outcome);
            }
        }
    }

    fn stats(&self) -> IoStats {
        self.stats.with_sends(self.queue.counters())
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // Cancel every operation that may still reference our buffers, then reap until the
        // kernel has handed them all back. Entries still sitting in the SQ are submitted by the
        // same enter and cancelled after.
        let mut targets: Vec<u64> = (0..RECV_SLOTS)
            .filter(|&i| self.recv_armed[i])
            .map(|i| user_data(KIND_RECV, i))
            .collect();
        if self.wake_armed {
            targets.push(user_data(KIND_WAKE, 0));
        }
        if self.writable_armed {
            targets.push(user_data(KIND_WRITABLE, 0));
        }
        targets.extend(
            (0..self.chain_len)
                .filter(|&i| self.chain_results[i].is_none())
                .map(|i| user_data(KIND_SEND, i)),
        );
        for target in targets {
            let entry = opcode::AsyncCancel::new(target)
                .build()
                .user_data(user_data(KIND_CANCEL, 0));
            // SAFETY: a cancel references no user memory.
            let _ = unsafe { self.push(&entry) };
        }

        let give_up = Instant::now() + DROP_TIMEOUT;
        while self.ops_in_flight() > 0 && Instant::now() < give_up {
            let _ = self.enter(1, Some(Duration::from_millis(10)));
            for cqe in self.ring.completion() {
                match decode(cqe.user_data()) {
                    (KIND_RECV, i) if i < RECV_SLOTS => self.recv_armed[i] = false,
                    (KIND_WAKE, _) => self.wake_armed = false,
                    (KIND_WRITABLE, _) => self.writable_armed = false,
                    (KIND_SEND, i) if i < self.chain_len && self.chain_results[i].is_none() => {
                        self.chain_results[i] = Some(cqe.result());
                        self.chain_outstanding -= 1;
                    }
                    _ => {}
                }
            }
        }
        let remaining = self.ops_in_flight();
        if remaining > 0 {
            tracing::warn!(
                operations = remaining,
                "io_uring operations still in flight at shutdown; leaking their buffers"
            );
            // Cannot tell which slots are still referenced: keep them all alive for good.
            let no_recv: Box<[RecvSlot]> = Vec::new().into_boxed_slice();
            mem::replace(&mut self.recv_slots, KernelOwned::new(no_recv)).leak();
            let no_send: Box<[SendSlot]> = Vec::new().into_boxed_slice();
            mem::replace(&mut self.send_slots, KernelOwned::new(no_send)).leak();
            // The chain's datagrams too: a send may still read their bytes.
            mem::forget(mem::take(&mut self.attempt));
        }
        // Fields now drop in declaration order: the ring first, then the buffers.
    }
}

impl fmt::Debug for UringIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringIo")
            .field("local_addr", &self.local_addr)
            .field("ops_in_flight", &self.ops_in_flight())
            .field("queued", &self.queue.waiting())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A ring with a completion queue larger than the submission queue. Task work (how io_uring
/// finishes receives and issues each next send of a chain) runs cooperatively
/// (`COOP_TASKRUN`, 5.19+) when the kernel has it, since only this thread, which creates the
/// ring, ever submits to or waits on it; `TASKRUN_FLAG` makes the kernel flag pending task
/// work, so that even a submit without a wait runs it (the `io-uring` crate then adds
/// `GETEVENTS`).
///
/// Not `DEFER_TASKRUN`, though it measured ≈ 4 % cheaper per datagram: with it, Linux 6.18
/// completed our 64 armed `RecvMsg` out of arrival order (a publisher's packets seen 2-6
/// positions late, then forwarded so to every subscriber; `control/tests/codecs.rs` failed
/// one run in four). A forwarding SFU must never reorder.
fn build_ring() -> io::Result<IoUring> {
    let coop = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(SQ_ENTRIES);
    match coop {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES),
        Err(e) => Err(e),
    }
}

/// Refuse kernels without what `poll` relies on, so the caller falls back cleanly.
fn check_kernel_support(ring: &IoUring) -> io::Result<()> {
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks IORING_FEAT_EXT_ARG (timed waits, Linux 5.11+)",
        ));
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring does not support {name}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::poll::contract::{self, Make};
    use super::*;

    const MAKE: Make = |socket, waker, gso| Ok(Box::new(UringIo::new(socket, waker, gso)?));

    /// True if this host can run io_uring at all (containers often forbid it); tests that
    /// need it pass vacuously, with a note, where it cannot.
    fn available() -> bool {
        let waker = Waker::new().expect("eventfd");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        match UringIo::new(socket, &waker, true) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("io_uring unavailable, skipping: {e}");
                false
            }
        }
    }

    #[test]
    fn round_trip_ipv4() {
        if available() {
            contract::round_trip(MAKE, "127.0.0.1:0");
        }
    }

    #[test]
    fn round_trip_ipv6() {
        if available() {
            contract::round_trip(MAKE, "[::1]:0");
        }
    }

    #[test]
    fn many_sends() {
        if available() {
            contract::many_sends(MAKE);
        }
    }

    #[test]
    fn huge_pass_arrives_in_order() {
        if available() {
            contract::huge_pass_arrives_in_order(MAKE);
        }
    }

    #[test]
    fn gso_runs_arrive_as_datagrams() {
        if available() {
            contract::gso_runs_arrive_as_datagrams(MAKE);
        }
    }

    #[test]
    fn refused_gso_falls_back_without_loss() {
        if available() {
            contract::refused_gso_falls_back_without_loss(MAKE);
        }
    }

    #[test]
    fn waker_interrupts_infinite_wait() {
        if available() {
            contract::waker_interrupts_infinite_wait(MAKE);
        }
    }

    #[test]
    fn budget_is_honoured() {
        if available() {
            contract::budget_is_honoured(MAKE);
        }
    }

    #[test]
    fn deadline_returns_promptly() {
        if available() {
            contract::deadline_returns_promptly(MAKE);
        }
    }

    #[test]
    fn bad_traffic_is_counted_not_fatal() {
        if available() {
            contract::bad_traffic_is_counted_not_fatal(MAKE);
        }
    }

    /// Sends complete within the flush that submits them: no chain is left in flight, and
    /// receives reaped while sending still reach the next `poll`.
    #[test]
    fn flush_completes_its_chains_and_keeps_receives() {
        if !available() {
            return;
        }
        let waker = Waker::new().expect("eventfd");
        let mut io =
            UringIo::new(UdpSocket::bind("127.0.0.1:0").expect("bind"), &waker, true).expect("io");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        let peer_addr = peer.local_addr().expect("addr");
        io.flush().expect("arm receives");
        for i in 0..5u32 {
            peer.send_to(&i.to_be_bytes(), io.local_addr())
                .expect("send");
        }
        std::thread::sleep(Duration::from_millis(20));
        for _ in 0..3 * CHAIN_LEN + 7 {
            io.send(peer_addr, vec![0; 100]);
        }
        io.flush().expect("flush");
        assert_eq!(io.chain_len, 0, "every chain completed within flush");
        assert_eq!(io.queue.waiting(), 0);
        assert_eq!(io.stats().sent, 3 * CHAIN_LEN as u64 + 7);
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(2);
        while got.len() < 5 && Instant::now() < end {
            io.poll(
                Some(Instant::now() + Duration::from_millis(10)),
                64,
                &mut |_, d| got.push(u32::from_be_bytes(d.try_into().expect("4 bytes"))),
            )
            .expect("poll");
        }
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn drop_with_operations_in_flight_is_prompt() {
        if !available() {
            return;
        }
        let waker = Waker::new().expect("eventfd");
        let mut io =
            UringIo::new(UdpSocket::bind("127.0.0.1:0").expect("bind"), &waker, true).expect("io");
        io.send("127.0.0.1:9".parse().expect("addr"), vec![1; 10]);
        io.flush().expect("flush");
        io.poll(Some(Instant::now()), 64, &mut |_, _| {})
            .expect("poll");
        assert!(io.ops_in_flight() >= RECV_SLOTS);
        let started = Instant::now();
        drop(io);
        assert!(
            started.elapsed() < DROP_TIMEOUT,
            "every operation was cancelled and reaped"
        );
    }

    #[test]
    fn user_data_round_trips() {
        for (kind, index) in [
            (KIND_RECV, 0),
            (KIND_SEND, CHAIN_LEN - 1),
            (KIND_WAKE, 0),
            (KIND_WRITABLE, 0),
        ] {
            assert_eq!(decode(user_data(kind, index)), (kind, index));
        }
    }
}
