//! The io_uring datagram path: one ring per worker through which the worker waits for
//! everything it waits for, and receives every datagram.
//!
//! - **Receive**: one multishot `RecvMsg` on the socket. The kernel takes each datagram, in
//!   arrival order, into a buffer it picks from a provided-buffer ring of [`RECV_BUFFERS`];
//!   each buffer goes back to that ring as soon as the callback has seen its datagram. The
//!   operation stays armed across datagrams: it is re-armed only when the kernel ends it (every
//!   buffer waiting in the completion queue, a socket error).
//! - **Wake-ups**: a `PollAdd` on the worker's eventfd, and one for `POLLOUT` on the socket
//!   while sends wait for send buffer.
//! - **One `io_uring_enter` per loop pass** submits whatever was (re-)armed, runs the receives
//!   that are due and waits for a completion or the deadline.
//! - **Sends** go out with `sendmmsg` from the worker's thread ([`super::mmsg`], shared with the
//!   poll backend), which says why; io_uring only waits for `POLLOUT` when the socket's send
//!   buffer is full.
//!
//! The ring is set up `SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1+; older kernels fall back to
//! the poll backend): the kernel finishes receives only when the worker enters it, in one batch,
//! instead of interrupting the worker's pass for each arriving datagram. (An earlier version
//! of this backend kept 64 one-shot `RecvMsg` armed; with deferred task work their completions
//! came out of arrival order. One multishot receive reads the socket in order by construction.)
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::fmt;
use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, RecvMsgOut};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};

use super::gso::Segmentation;
use super::mmsg::{self, MmsgSender};
use super::poll::{prepare_socket, sockaddr_to_socket_addr};
use super::send_queue::SendQueue;
use super::{DatagramIo, IoStats, PollOutcome, RECV_BUFFER_SIZE, SEND_QUEUE_CAPACITY, Waker};

/// Submission queue size: at most three operations are armed per pass.
const SQ_ENTRIES: u32 = 16;
/// Provided receive buffers (a power of two). Each completed receive holds one until the
/// callback has seen it, so this bounds the datagrams waiting in the completion queue; the
/// worker takes at most its budget (256) per pass. When all are waiting the kernel ends the
/// multishot receive, the rest stay in the socket's receive buffer, and the receive is
/// re-armed once buffers are back: nothing is lost or reordered.
const RECV_BUFFERS: u16 = 128;
/// Completion queue size: one completion per buffer handed out, plus the polls, the end of
/// the receive and cancellations. It cannot overflow.
const CQ_ENTRIES: u32 = 2 * RECV_BUFFERS as u32;
/// The buffer group the receive draws from.
const BUFFER_GROUP: u16 = 0;
/// `struct io_uring_recvmsg_out` (four `u32`), which the kernel writes at the start of each
/// buffer, followed by the source address and the payload.
const RECVMSG_OUT_LEN: usize = 16;
/// Room for the source address in each buffer.
const NAME_LEN: usize = mem::size_of::<libc::sockaddr_storage>();
/// One provided buffer: header, address, and the largest datagram we accept.
const SLOT_LEN: usize = RECVMSG_OUT_LEN + NAME_LEN + RECV_BUFFER_SIZE;
/// Datagrams the kernel receives per enter at most, in one run of the multishot receive (Linux
/// stops a run after 32 retries, `MULTISHOT_MAX_RETRY`, and resumes it at the next enter). A
/// run this long means the socket probably holds more. (UDP sockets do not report it: no
/// `IORING_CQE_F_SOCK_NONEMPTY`.)
const MULTISHOT_RUN: usize = 32;
/// Longest pause before re-arming a receive that keeps failing (so a broken socket cannot spin).
const MAX_RECV_BACKOFF: Duration = Duration::from_millis(100);
/// How long `drop` waits for cancelled operations before leaking their buffers instead.
const DROP_TIMEOUT: Duration = Duration::from_secs(1);

// `user_data` of each operation: which one it is.
const KIND_RECV: u64 = 1;
const KIND_WAKE: u64 = 2;
const KIND_CANCEL: u64 = 3;
const KIND_WRITABLE: u64 = 4;

/// io_uring backend for one worker socket. It must be driven (and dropped) by the thread that
/// created it (`SINGLE_ISSUER`).
///
/// Field order is load-bearing: `ring` is declared (and so dropped) first. `Drop` cancels and
/// reaps every operation before that, but if it gives up waiting it leaks the buffers rather
/// than free memory the kernel may still write.
pub struct UringIo {
    ring: IoUring,
    socket: UdpSocket,
    local_addr: SocketAddr,
    waker: Waker,
    /// The provided-buffer ring and its buffers; the kernel writes into buffers it took.
    buffers: RecvBuffers,
    /// The receive's template header (the room for the address); the kernel reads it.
    recv_msg: KernelOwned<libc::msghdr>,
    recv_armed: bool,
    /// Times the kernel ended the receive for want of buffers (it was re-armed each time).
    recv_exhausted: u64,
    recv_backoff: Duration,
    /// A receive that failed is re-armed no sooner than this.
    rearm_at: Instant,
    wake_armed: bool,
    /// A `PollAdd(POLLOUT)` on the socket is armed: the queue waits for send buffer.
    writable_armed: bool,
    /// Datagrams queued by `send` and not yet taken by the kernel.
    queue: SendQueue,
    /// Whether sends use UDP GSO.
    gso: Segmentation,
    sender: MmsgSender,
    stats: IoStats,
}

/// What one pass over the completion queue found.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    outcome: PollOutcome,
    completions: usize,
    /// Receive completions that carried a buffer (counted against the budget).
    receives: usize,
}

impl Round {
    fn add(&mut self, other: Round) {
        self.outcome.received += other.outcome.received;
        self.outcome.woken |= other.outcome.woken;
        self.completions += other.completions;
        self.receives += other.receives;
    }
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

/// The provided-buffer ring: `RECV_BUFFERS` entries (page-aligned, shared with the kernel),
/// each naming one `SLOT_LEN` buffer of `memory` by its id. We add entries at `tail`, the
/// kernel takes them from its head; buffer `bid` lives at `bid * SLOT_LEN`.
struct RecvBuffers {
    entries: NonNull<BufRingEntry>,
    memory: NonNull<u8>,
    /// Next position to fill (wrapping); the kernel sees it once [`publish`](Self::publish)ed.
    tail: u16,
}

impl RecvBuffers {
    fn entries_layout() -> Layout {
        Layout::from_size_align(
            usize::from(RECV_BUFFERS) * mem::size_of::<BufRingEntry>(),
            4096,
        )
        .expect("valid layout")
    }

    fn memory_layout() -> Layout {
        Layout::from_size_align(usize::from(RECV_BUFFERS) * SLOT_LEN, 64).expect("valid layout")
    }

    /// Allocate the ring with every buffer in it.
    fn new() -> Self {
        let (entries_layout, memory_layout) = (Self::entries_layout(), Self::memory_layout());
        // SAFETY: both layouts have a non-zero size. Zeroed entries are valid (the tail, in
        // the first entry's reserved field, starts at 0).
        let (entries, memory) = unsafe {
            (
                alloc::alloc_zeroed(entries_layout),
                alloc::alloc_zeroed(memory_layout),
            )
        };
        let entries = NonNull::new(entries.cast::<BufRingEntry>())
            .unwrap_or_else(|| alloc::handle_alloc_error(entries_layout));
        let memory =
            NonNull::new(memory).unwrap_or_else(|| alloc::handle_alloc_error(memory_layout));
        let mut buffers = Self {
            entries,
            memory,
            tail: 0,
        };
        for bid in 0..RECV_BUFFERS {
            buffers.provide(bid);
        }
        buffers.publish();
        buffers
    }

    /// Put buffer `bid` back in the ring (visible to the kernel at the next `publish`).
    fn provide(&mut self, bid: u16) {
        debug_assert!(bid < RECV_BUFFERS);
        let index = usize::from(self.tail & (RECV_BUFFERS - 1));
        // SAFETY: `index < RECV_BUFFERS`, within the allocation. The kernel reads only the
        // entries between its head and the published tail; this one is past the tail (every
        // buffer is either in the ring or held by us, so the ring never holds more than
        // `RECV_BUFFERS`). The setters leave the first entry's reserved field, the tail, alone.
        unsafe {
            let entry = &mut *self.entries.as_ptr().add(index);
            entry.set_addr(self.memory.as_ptr().add(usize::from(bid) * SLOT_LEN) as u64);
            entry.set_len(SLOT_LEN as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Let the kernel see every buffer provided so far.
    fn publish(&self) {
        // SAFETY: `entries` points at the first, initialised entry of the ring; its reserved
        // field is the ring's tail, a naturally aligned u16 the kernel only reads.
        let tail =
            unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.entries.as_ptr()).cast_mut()) };
        // Release: the entries written before are visible to the kernel once it sees the tail.
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    /// The kernel completed a receive into `bid` and the buffer has not been provided again.
    unsafe fn slot(&self, bid: u16, len: usize) -> &[u8] {
        debug_assert!(bid < RECV_BUFFERS);
        // SAFETY: within the allocation (`bid < RECV_BUFFERS`, `len` clamped to the slot);
        // the caller guarantees the kernel is done writing it.
        unsafe {
            std::slice::from_raw_parts(
                self.memory.as_ptr().add(usize::from(bid) * SLOT_LEN),
                len.min(SLOT_LEN),
            )
        }
    }

    /// Give up both allocations for good: the kernel may still use them.
    fn leak(self) {
        mem::forget(self);
    }
}

impl Drop for RecvBuffers {
    fn drop(&mut self) {
        // SAFETY: both were allocated in `new` with these layouts and are freed only here.
        // `UringIo` drops the ring (which unregisters the buffer ring) before this, and
        // `UringIo::drop` leaks instead when an operation might still write.
        unsafe {
            alloc::dealloc(self.entries.as_ptr().cast(), Self::entries_layout());
            alloc::dealloc(self.memory.as_ptr(), Self::memory_layout());
        }
    }
}

impl UringIo {
    /// Set up a ring for `socket`, register the receive buffers and queue the receive and the
    /// wake-up wait; they reach the kernel on the first `poll`, from the thread that created
    /// the ring. Fails (so the caller can fall back) if io_uring is unavailable, forbidden, or
    /// older than Linux 6.1.
    /// `udp_gso`: send runs to one destination with UDP GSO if the kernel has it.
    pub fn new(socket: UdpSocket, waker: &Waker, udp_gso: bool) -> io::Result<Self> {
        let ring = build_ring()?;
        check_kernel_support(&ring)?;
        prepare_socket(&socket)?;
        let local_addr = socket.local_addr()?;
        let gso = Segmentation::new(&socket, udp_gso);

        let buffers = RecvBuffers::new();
        // SAFETY: the ring memory is page-aligned, holds `RECV_BUFFERS` entries and lives in
        // `buffers`, which outlives the ring (field order, and `Drop`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries.as_ptr() as u64,
                RECV_BUFFERS,
                BUFFER_GROUP,
                0,
            )?;
        }
        // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        msg.msg_namelen = NAME_LEN as libc::socklen_t;

        let mut io = Self {
            ring,
            socket,
            local_addr,
            waker: waker.clone(),
            buffers,
            recv_msg: KernelOwned::new(msg),
            recv_armed: false,
            recv_exhausted: 0,
            recv_backoff: Duration::ZERO,
            rearm_at: Instant::now(),
            wake_armed: false,
            writable_armed: false,
            queue: SendQueue::new(SEND_QUEUE_CAPACITY),
            gso,
            sender: MmsgSender::new(),
            stats: IoStats::default(),
        };
        io.arm_recv();
        io.arm_wake();
        if !(io.recv_armed && io.wake_armed) {
            return Err(io::Error::other("io_uring submission queue too small"));
        }
        Ok(io)
    }

    /// Queue an entry, submitting what is already queued if the SQ is full.
    ///
    /// # Safety
    /// Every buffer `entry` points to must stay valid until its last completion is reaped.
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

    /// Queue the multishot receive.
    fn arm_recv(&mut self) {
        debug_assert!(!self.recv_armed);
        let entry = opcode::RecvMsgMulti::new(
            types::Fd(self.socket.as_raw_fd()),
            self.recv_msg.as_ptr(),
            BUFFER_GROUP,
        )
        .build()
        .user_data(KIND_RECV);
        // SAFETY: the header lives in `recv_msg` and the buffers in `buffers`, which outlive
        // every operation (see `Drop`).
        self.recv_armed = unsafe { self.push(&entry) };
    }

    fn arm_wake(&mut self) {
        // A poll rather than an 8-byte read: the eventfd is O_NONBLOCK, and a read on a
        // non-blocking file may complete with -EAGAIN at once instead of waiting. A poll waits
        // everywhere; `Waker::drain` then resets the counter.
        let entry = opcode::PollAdd::new(types::Fd(self.waker.raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(KIND_WAKE);
        // SAFETY: a poll references no user memory.
        self.wake_armed = unsafe { self.push(&entry) };
    }

    /// Wait for room in the socket's send buffer (one-shot `POLLOUT`).
    fn arm_writable(&mut self) {
        let entry = opcode::PollAdd::new(types::Fd(self.socket.as_raw_fd()), libc::POLLOUT as u32)
            .build()
            .user_data(KIND_WRITABLE);
        // SAFETY: a poll references no user memory.
        self.writable_armed = unsafe { self.push(&entry) };
    }

    /// Re-arm whatever ended or failed, once the back-off allows.
    fn rearm_pending(&mut self, now: Instant) {
        if self.queue.is_blocked() && !self.writable_armed {
            self.arm_writable();
        }
        if now < self.rearm_at {
            return;
        }
        if !self.recv_armed {
            self.arm_recv();
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

    /// Enter the kernel: submit what is queued, run the receives that are due, and wait up to
    /// `wait` (`None` = forever) for a completion.
    fn enter(&mut self, wait: Option<Duration>) -> io::Result<()> {
        let submitter = self.ring.submitter();
        let result = match wait {
            Some(wait) => {
                // A zero timeout still runs the deferred receives before it expires.
                let ts = types::Timespec::from(wait);
                submitter.submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
            }
            None => submitter.submit_and_wait(1),
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

    /// Hand the queue to the kernel ([`MmsgSender::send_queued`]); if its send buffer is
    /// full, wait for `POLLOUT` from the next `poll` on.
    fn send_queued(&mut self) {
        self.sender.send_queued(
            self.socket.as_raw_fd(),
            self.local_addr.is_ipv4(),
            &mut self.queue,
            &mut self.gso,
            &mut self.stats,
        );
        if self.queue.is_blocked() && !self.writable_armed {
            self.arm_writable();
        }
    }

    /// Handle completions in order: every one up to `budget` received datagrams (the rest
    /// stay in the completion queue, holding their buffers, for the next call).
    fn handle_completions(
        &mut self,
        now: Instant,
        budget: usize,
        on_datagram: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Round {
        let mut round = Round::default();
        while round.receives < budget {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            round.completions += 1;
            let (result, flags) = (cqe.result(), cqe.flags());
            match cqe.user_data() {
                KIND_RECV => {
                    if !cqueue::more(flags) {
                        self.recv_armed = false;
                    }
                    if let Some(bid) = cqueue::buffer_select(flags).filter(|&b| b < RECV_BUFFERS) {
                        round.receives += 1;
                        if result >= 0 && self.deliver(bid, result as usize, on_datagram) {
                            round.outcome.received += 1;
                            self.recv_backoff = Duration::ZERO;
                        } else {
                            self.stats.recv_errors += 1;
                        }
                        self.buffers.provide(bid);
                    } else if result == -libc::ENOBUFS {
                        // Every buffer is waiting in the completion queue: the receive ended
                        // and is re-armed once they are back. Nothing was lost; the datagrams
                        // wait in the socket.
                        self.recv_exhausted += 1;
                    } else if result < 0 {
                        // A socket error (e.g. a queued ICMP error) ends the receive.
                        self.stats.recv_errors += 1;
                        self.back_off(now);
                    }
                }
                KIND_WAKE if self.wake_armed => {
                    self.wake_armed = false;
                    // Even a failed wait may have hidden a wake-up: report one, it is cheap.
                    self.waker.drain();
                    round.outcome.woken = true;
                    if result < 0 {
                        self.back_off(now);
                    }
                }
                KIND_WRITABLE if self.writable_armed => {
                    // On an error too: the next send finds out, and blocks again if need be.
                    self.writable_armed = false;
                    self.queue.writable();
                }
                // Cancellations (only issued by `drop`) and anything unknown: nothing to do.
                _ => {}
            }
        }
        round
    }

    /// Hand the datagram in buffer `bid` (`len` bytes written by the kernel) to the callback;
    /// false if it is unusable (truncated, malformed).
    fn deliver(
        &mut self,
        bid: u16,
        len: usize,
        on_datagram: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> bool {
        // SAFETY: the receive into `bid` completed and the buffer goes back to the ring only
        // after this returns.
        let bytes = unsafe { self.buffers.slot(bid, len) };
        // SAFETY: `recv_msg` is only read, by us and the kernel.
        let template = unsafe { &*self.recv_msg.as_ptr() };
        let Ok(message) = RecvMsgOut::parse(bytes, template) else {
            return false;
        };
        if message.is_payload_truncated() || message.is_name_data_truncated() {
            return false;
        }
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut address: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let name = message.name_data();
        // SAFETY: `name` is at most `NAME_LEN` bytes (the template's room), the size of
        // `address`; the regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                name.as_ptr(),
                (&raw mut address).cast::<u8>(),
                name.len().min(NAME_LEN),
            );
        }
        let Some(source) = sockaddr_to_socket_addr(&address, message.incoming_name_len()) else {
            return false;
        };
        on_datagram(source, message.payload_data());
        true
    }

    fn ops_in_flight(&self) -> usize {
        usize::from(self.recv_armed)
            + usize::from(self.wake_armed)
            + usize::from(self.writable_armed)
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
        if self.queue.waiting() >= mmsg::send_threshold(&self.gso) {
            self.send_queued();
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_queued();
        Ok(())
    }

    fn poll(
        &mut self,
        deadline: Option<Instant>,
        budget: usize,
        on_datagram: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> io::Result<PollOutcome> {
        loop {
            // Leftovers of an interrupted flush, or sends unblocked by `POLLOUT`, go out
            // before we sleep.
            self.send_queued();
            let now = Instant::now();
            self.rearm_pending(now);
            self.buffers.publish();
            // Whole milliseconds, rounded up, as the poll backend waits: the worker's deadlines
            // (str0m's timers) tolerate it, and each earlier wake-up is a pass of its own.
            let mut wait = deadline.map(|d| ceil_to_millis(d.saturating_duration_since(now)));
            if !self.recv_armed || !self.wake_armed {
                let until_rearm = self.rearm_at.saturating_duration_since(now);
                wait = Some(wait.map_or(until_rearm, |w| w.min(until_rearm)));
            }
            let leftovers = !self.ring.completion().is_empty();
            if leftovers {
                // Completions a budget-limited call left: work is already waiting.
                wait = Some(Duration::ZERO);
            }
            if !leftovers || !self.ring.submission().is_empty() {
                self.enter(wait)?;
            }

            let mut round = self.handle_completions(Instant::now(), budget, on_datagram);
            // The kernel receives at most a run of datagrams per enter; while runs come back
            // full, the socket likely holds more: take them in this call, up to the budget, as
            // `recvmmsg` would, so that a busy worker makes few large passes.
            let mut last = round.receives;
            while last >= MULTISHOT_RUN && round.receives < budget {
                let now = Instant::now();
                self.rearm_pending(now);
                self.buffers.publish();
                self.enter(Some(Duration::ZERO))?;
                let more = self.handle_completions(now, budget - round.receives, on_datagram);
                last = more.receives;
                round.add(more);
            }
            let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
            // Room in the send buffer, or a receive that ended for want of buffers, is our
            // business, not the worker's: unless something else happened, keep waiting. A
            // round that reaped nothing (timeout, signal) returns, so a misbehaving enter
            // cannot spin here.
            let ours_only = round.completions > 0
                && round.outcome.received == 0
                && !round.outcome.woken
                && round.receives == 0;
            if !ours_only || past_deadline || wait == Some(Duration::ZERO) {
                return Ok(round.outcome);
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
        for (armed, kind) in [
            (self.recv_armed, KIND_RECV),
            (self.wake_armed, KIND_WAKE),
            (self.writable_armed, KIND_WRITABLE),
        ] {
            if armed {
                let entry = opcode::AsyncCancel::new(kind)
                    .build()
                    .user_data(KIND_CANCEL);
                // SAFETY: a cancel references no user memory.
                let _ = unsafe { self.push(&entry) };
            }
        }

        let give_up = Instant::now() + DROP_TIMEOUT;
        while self.ops_in_flight() > 0 && Instant::now() < give_up {
            let _ = self.enter(Some(Duration::from_millis(10)));
            for cqe in self.ring.completion() {
                match cqe.user_data() {
                    KIND_RECV if !cqueue::more(cqe.flags()) => self.recv_armed = false,
                    KIND_WAKE => self.wake_armed = false,
                    KIND_WRITABLE => self.writable_armed = false,
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
            mem::replace(&mut self.buffers, RecvBuffers::new()).leak();
            // SAFETY: all-zero is a valid msghdr.
            let spare = KernelOwned::new(Box::new(unsafe { mem::zeroed::<libc::msghdr>() }));
            mem::replace(&mut self.recv_msg, spare).leak();
        }
        // Fields now drop in declaration order: the ring first, then the buffers.
    }
}

impl fmt::Debug for UringIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringIo")
            .field("local_addr", &self.local_addr)
            .field("ops_in_flight", &self.ops_in_flight())
            .field("recv_exhausted", &self.recv_exhausted)
            .field("queued", &self.queue.waiting())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// `d` rounded up to whole milliseconds.
fn ceil_to_millis(d: Duration) -> Duration {
    let millis = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// A ring whose task work (how io_uring finishes a receive) runs only when this thread enters
/// the kernel to wait (`DEFER_TASKRUN`, which requires `SINGLE_ISSUER`: only the worker's
/// thread submits). Both arrived in Linux 6.1, after multishot `RecvMsg` (6.0), so a kernel
/// that accepts them has everything this backend uses; an older one refuses the flags with
/// `EINVAL` and the worker falls back to the poll backend.
fn build_ring() -> io::Result<IoUring> {
    IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "io_uring without SINGLE_ISSUER/DEFER_TASKRUN (needs Linux 6.1+)",
                )
            } else {
                e
            }
        })
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

    /// More datagrams waiting than receive buffers: the kernel fills every buffer, ends the
    /// receive for want of more, and the re-armed receive carries on where it stopped. Every
    /// datagram arrives once, in order.
    #[test]
    fn exhausted_buffers_rearm_without_loss_or_reordering() {
        if !available() {
            return;
        }
        let waker = Waker::new().expect("eventfd");
        let mut io =
            UringIo::new(UdpSocket::bind("127.0.0.1:0").expect("bind"), &waker, true).expect("io");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        let burst = u32::from(RECV_BUFFERS) + 100;
        let mut got = Vec::new();
        for round in 0..3 {
            for seq in round * burst..(round + 1) * burst {
                peer.send_to(&seq.to_be_bytes(), io.local_addr())
                    .expect("send");
            }
            // Enter without taking completions, as a worker busy elsewhere would: the
            // receives fill the completion queue until the buffers run out. (Each enter takes
            // a few dozen datagrams: the kernel bounds one multishot run.)
            for _ in 0..40 {
                io.rearm_pending(Instant::now());
                io.buffers.publish();
                io.enter(Some(Duration::from_millis(1))).expect("enter");
            }
            let want = ((round + 1) * burst) as usize;
            let end = Instant::now() + Duration::from_secs(10);
            while got.len() < want && Instant::now() < end {
                io.poll(
                    Some(Instant::now() + Duration::from_millis(10)),
                    100,
                    &mut |_, d| got.push(u32::from_be_bytes(d.try_into().expect("4 bytes"))),
                )
                .expect("poll");
            }
        }
        // A small socket receive buffer (no CAP_NET_ADMIN, small net.core.rmem_max) may drop
        // part of a burst before we see it; what arrives must still be in order, once.
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "in order, no duplicates"
        );
        assert_eq!(io.stats().recv_errors, 0);
        if got.len() == 3 * burst as usize {
            assert!(io.recv_exhausted > 0, "the bursts outgrew the buffer ring");
        } else {
            eprintln!(
                "socket receive buffer too small for the bursts: {} of {} arrived",
                got.len(),
                3 * burst
            );
        }
    }

    #[test]
    fn waits_round_up_to_whole_milliseconds() {
        assert_eq!(ceil_to_millis(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            ceil_to_millis(Duration::from_nanos(1)),
            Duration::from_millis(1)
        );
        assert_eq!(
            ceil_to_millis(Duration::from_micros(1000)),
            Duration::from_millis(1)
        );
        assert_eq!(
            ceil_to_millis(Duration::from_micros(1001)),
            Duration::from_millis(2)
        );
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
        assert_eq!(io.ops_in_flight(), 2, "the receive and the wake-up wait");
        let started = Instant::now();
        drop(io);
        assert!(
            started.elapsed() < DROP_TIMEOUT,
            "every operation was cancelled and reaped"
        );
    }
}
