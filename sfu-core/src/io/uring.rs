//! The io_uring datagram path: one ring per worker with a fixed set of `RecvMsg` operations
//! always armed on the socket, a `PollAdd` on the worker's eventfd, and one `SendMsg` per queued
//! datagram. Owns the ring and every buffer the kernel may touch while an operation is in flight.
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use io_uring::{IoUring, Probe, opcode, squeue, types};

use super::poll::{prepare_socket, sockaddr_to_socket_addr, socket_addr_to_sockaddr};
use super::{DatagramIo, IoStats, PollOutcome, RECV_BUFFER_SIZE, Waker};

/// Submission queue size. Sends beyond this in one pass trigger an early submit, not a drop.
const SQ_ENTRIES: u32 = 256;
/// Completion queue size. Every operation posts exactly one completion, and at most
/// `RECV_SLOTS + 1 + MAX_SENDS_IN_FLIGHT` are in flight, so the CQ can never overflow.
const CQ_ENTRIES: u32 = 4096;
/// Receive operations kept armed on the socket.
const RECV_SLOTS: usize = 64;
/// Sends the kernel may hold at once; past this, `send` drops and counts (it never blocks).
const MAX_SENDS_IN_FLIGHT: usize = 2048;
/// Longest pause before re-arming receives that keep failing (so a broken socket cannot spin).
const MAX_RECV_BACKOFF: Duration = Duration::from_millis(100);
/// How long `drop` waits for cancelled operations before leaking their buffers instead.
const DROP_TIMEOUT: Duration = Duration::from_secs(1);

// `user_data` = kind << 32 | index.
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_WAKE: u64 = 3;
const KIND_CANCEL: u64 = 4;

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
/// than free memory the kernel may still write.
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
    /// Send slots, each its own allocation so growing this `Vec` never moves one.
    send_slots: Vec<KernelOwned<SendSlot>>,
    free_sends: Vec<usize>,
    /// Completions taken off the ring this pass, as (`user_data`, result).
    completions: Vec<(u64, i32)>,
    stats: IoStats,
}

/// One armed `RecvMsg`: the header points at the other three fields.
struct RecvSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    buf: [u8; RECV_BUFFER_SIZE],
}

/// One in-flight `SendMsg`: the header points at the address and at `datagram`'s bytes.
struct SendSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    datagram: Vec<u8>,
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
    pub fn new(socket: UdpSocket, waker: &Waker) -> io::Result<Self> {
        let ring = build_ring()?;
        check_kernel_support(&ring)?;
        prepare_socket(&socket)?;
        let local_addr = socket.local_addr()?;

        let slots: Box<[RecvSlot]> = (0..RECV_SLOTS)
            // SAFETY: every field is plain old data (pointers, integers, bytes); all-zero is a
            // valid value, and `arm_recv` fills the header before use.
            .map(|_| unsafe { mem::zeroed::<RecvSlot>() })
            .collect();
        let now = Instant::now();
        let mut io = Self {
            ring,
            socket,
            local_addr,
            waker: waker.clone(),
            recv_slots: KernelOwned::new(slots),
            recv_armed: [false; RECV_SLOTS],
            recv_disarmed: Vec::with_capacity(RECV_SLOTS),
            recv_backoff: Duration::ZERO,
            rearm_at: now,
            wake_armed: false,
            send_slots: Vec::new(),
            free_sends: Vec::new(),
            completions: Vec::with_capacity(CQ_ENTRIES as usize),
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

    /// Re-arm whatever a failure or a full SQ left disarmed, once the back-off allows.
    fn rearm_pending(&mut self, now: Instant) {
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

    /// Enter the kernel: submit, and wait for one completion up to `wait` (`None` = forever).
    fn enter(&mut self, wait: Option<Duration>) -> io::Result<()> {
        let submitter = self.ring.submitter();
        let result = match wait {
            Some(Duration::ZERO) => submitter.submit(),
            Some(wait) => {
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

    /// Take completions off the ring: all of them, except that at most `budget` receive
    /// completions are taken; the rest stay queued for the next call.
    fn take_completions(&mut self, budget: usize) {
        self.completions.clear();
        let mut receives = 0;
        let mut cq = self.ring.completion();
        while receives < budget {
            let Some(cqe) = cq.next() else { break };
            if decode(cqe.user_data()).0 == KIND_RECV {
                receives += 1;
            }
            self.completions.push((cqe.user_data(), cqe.result()));
        }
    }

    /// Handle the completions taken by `take_completions`. Returns (outcome, receives seen).
    fn process_completions(
        &mut self,
        now: Instant,
        on_datagram: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> (PollOutcome, usize) {
        let mut outcome = PollOutcome::default();
        let mut receives = 0;
        let completions = mem::take(&mut self.completions);
        for &(data, result) in &completions {
            match decode(data) {
                (KIND_RECV, index) if index < RECV_SLOTS && self.recv_armed[index] => {
                    receives += 1;
                    self.recv_armed[index] = false;
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
                }
                (KIND_SEND, index) if index < self.send_slots.len() => {
                    if result < 0 {
                        self.stats.send_errors += 1;
                    }
                    // SAFETY: the operation completed, so the kernel is done with the slot.
                    let datagram =
                        unsafe { mem::take(&mut (*self.send_slots[index].as_ptr()).datagram) };
                    drop(datagram);
                    self.free_sends.push(index);
                }
                (KIND_WAKE, _) => {
                    // Even a failed wait may have hidden a wake-up: report one, it is cheap.
                    self.wake_armed = false;
                    self.waker.drain();
                    outcome.woken = true;
                    if result < 0 {
                        self.back_off(now);
                    } else {
                        self.arm_wake();
                    }
                }
                // Cancellations (only issued by `drop`) and anything unknown: nothing to do.
                _ => {}
            }
        }
        self.completions = completions;
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
            + (self.send_slots.len() - self.free_sends.len())
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
        let index = match self.free_sends.pop() {
            Some(index) => index,
            None if self.send_slots.len() < MAX_SENDS_IN_FLIGHT => {
                let slot = Box::new(SendSlot {
                    // SAFETY: all-zero is a valid msghdr / iovec / sockaddr_storage.
                    msg: unsafe { mem::zeroed() },
                    // SAFETY: as above.
                    iov: unsafe { mem::zeroed() },
                    // SAFETY: as above.
                    addr: unsafe { mem::zeroed() },
                    datagram: Vec::new(),
                });
                self.send_slots.push(KernelOwned::new(slot));
                self.send_slots.len() - 1
            }
            None => {
                self.stats.send_errors += 1;
                return;
            }
        };
        let v4_socket = self.local_addr.is_ipv4();
        // SAFETY: the slot is free (not in flight), so nothing else reads or writes it; the
        // header points into the slot's own allocation and the datagram's heap buffer, which
        // stays put until the completion hands the Vec back.
        let msg = unsafe {
            let slot = self.send_slots[index].as_ptr();
            (*slot).datagram = datagram;
            let namelen = socket_addr_to_sockaddr(destination, v4_socket, &mut (*slot).addr);
            (*slot).iov = libc::iovec {
                iov_base: (*slot).datagram.as_mut_ptr().cast(),
                iov_len: (*slot).datagram.len(),
            };
            let msg = ptr::addr_of_mut!((*slot).msg);
            msg.write(mem::zeroed());
            (*msg).msg_name = ptr::addr_of_mut!((*slot).addr).cast();
            (*msg).msg_namelen = namelen;
            (*msg).msg_iov = ptr::addr_of_mut!((*slot).iov);
            (*msg).msg_iovlen = 1;
            msg.cast_const()
        };
        let entry = opcode::SendMsg::new(types::Fd(self.socket.as_raw_fd()), msg)
            .build()
            .user_data(user_data(KIND_SEND, index));
        // SAFETY: the slot lives in `send_slots` until its completion is reaped (see `Drop`).
        if !unsafe { self.push(&entry) } {
            self.stats.send_errors += 1;
            // SAFETY: the entry was not queued, so the kernel never saw the slot.
            drop(unsafe { mem::take(&mut (*self.send_slots[index].as_ptr()).datagram) });
            self.free_sends.push(index);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
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
            if !self.ring.completion().is_empty() {
                // Leftovers from a budget-limited call: work is already waiting.
                wait = Some(Duration::ZERO);
            }
            self.enter(wait)?;

            self.take_completions(budget);
            let (outcome, receives) = self.process_completions(Instant::now(), on_datagram);
            let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
            // Wait again only if this round reaped send completions and nothing else, so the
            // worker does not run an empty pass after every flush. A round that reaped nothing
            // (signal, re-arm timer) returns, so a misbehaving enter cannot spin in here.
            let sends_only = receives == 0 && !outcome.woken && !self.completions.is_empty();
            if !sends_only || past_deadline || wait == Some(Duration::ZERO) {
                return Ok(outcome);
            }
        }
    }

    fn stats(&self) -> IoStats {
        self.stats
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
        let mut in_flight_sends = vec![true; self.send_slots.len()];
        for &i in &self.free_sends {
            in_flight_sends[i] = false;
        }
        targets.extend(
            in_flight_sends
                .iter()
                .enumerate()
                .filter(|(_, in_flight)| **in_flight)
                .map(|(i, _)| user_data(KIND_SEND, i)),
        );
        for target in targets {
            let entry = opcode::AsyncCancel::new(target)
                .build()
                .user_data(user_data(KIND_CANCEL, 0));
            // SAFETY: a cancel references no user memory.
            let _ = unsafe { self.push(&entry) };
        }

        let give_up = Instant::now() + DROP_TIMEOUT;
        let mut remaining = self.ops_in_flight();
        while remaining > 0 && Instant::now() < give_up {
            let _ = self.enter(Some(Duration::from_millis(10)));
            for cqe in self.ring.completion() {
                match decode(cqe.user_data()) {
                    (KIND_RECV, i) if i < RECV_SLOTS && self.recv_armed[i] => {
                        self.recv_armed[i] = false;
                        remaining -= 1;
                    }
                    (KIND_WAKE, _) if self.wake_armed => {
                        self.wake_armed = false;
                        remaining -= 1;
                    }
                    (KIND_SEND, i) if in_flight_sends.get(i).copied().unwrap_or(false) => {
                        in_flight_sends[i] = false;
                        remaining -= 1;
                    }
                    _ => {}
                }
            }
        }
        if remaining > 0 {
            tracing::warn!(
                operations = remaining,
                "io_uring operations still in flight at shutdown; leaking their buffers"
            );
            // Cannot tell which slots are still referenced: keep them all alive for good.
            let empty: Box<[RecvSlot]> = Vec::new().into_boxed_slice();
            let slots = mem::replace(&mut self.recv_slots, KernelOwned::new(empty));
            slots.leak();
            for slot in self.send_slots.drain(..) {
                slot.leak();
            }
        }
        // Fields now drop in declaration order: the ring first, then the buffers.
    }
}

impl fmt::Debug for UringIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringIo")
            .field("local_addr", &self.local_addr)
            .field("ops_in_flight", &self.ops_in_flight())
            .field("send_slots", &self.send_slots.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A ring with a completion queue larger than the submission queue; cooperative task running
/// (5.19+) when the kernel has it, since only this thread ever waits on the ring.
fn build_ring() -> io::Result<IoUring> {
    let coop = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_coop_taskrun()
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

    const MAKE: Make = |socket, waker| Ok(Box::new(UringIo::new(socket, waker)?));

    /// True if this host can run io_uring at all (containers often forbid it); tests that
    /// need it pass vacuously, with a note, where it cannot.
    fn available() -> bool {
        let waker = Waker::new().expect("eventfd");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        match UringIo::new(socket, &waker) {
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

    #[test]
    fn send_slots_are_reused() {
        if !available() {
            return;
        }
        let waker = Waker::new().expect("eventfd");
        let mut io =
            UringIo::new(UdpSocket::bind("127.0.0.1:0").expect("bind"), &waker).expect("io");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        let peer_addr = peer.local_addr().expect("addr");
        for _ in 0..10 {
            for _ in 0..50 {
                io.send(peer_addr, vec![0; 100]);
            }
            io.flush().expect("flush");
            let end = Instant::now() + Duration::from_secs(2);
            while io.free_sends.len() < io.send_slots.len() && Instant::now() < end {
                io.poll(
                    Some(Instant::now() + Duration::from_millis(10)),
                    64,
                    &mut |_, _| {},
                )
                .expect("poll");
            }
        }
        assert_eq!(
            io.free_sends.len(),
            io.send_slots.len(),
            "all sends completed"
        );
        assert!(io.send_slots.len() <= 50, "slots reused, not grown");
    }

    #[test]
    fn drop_with_operations_in_flight_is_prompt() {
        if !available() {
            return;
        }
        let waker = Waker::new().expect("eventfd");
        let mut io =
            UringIo::new(UdpSocket::bind("127.0.0.1:0").expect("bind"), &waker).expect("io");
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
            (KIND_SEND, MAX_SENDS_IN_FLIGHT - 1),
            (KIND_WAKE, 0),
        ] {
            assert_eq!(decode(user_data(kind, index)), (kind, index));
        }
    }
}
