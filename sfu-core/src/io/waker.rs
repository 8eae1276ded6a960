//! Cross-thread wake-up for a sleeping worker: an `eventfd(2)` the worker's I/O backend waits
//! on beside its socket. Producers (control, other workers) call [`Waker::wake`] after pushing
//! work; the write is skipped while the worker is known to be awake, so a busy worker costs its
//! producers no system call.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    /// True while the worker is (about to be) blocked in its wait.
    parked: AtomicBool,
}

/// Cloneable handle that wakes one worker.
#[derive(Debug, Clone)]
pub struct Waker {
    inner: Arc<Inner>,
}

impl Waker {
    /// Create a non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; we check the result.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            inner: Arc::new(Inner {
                fd,
                parked: AtomicBool::new(false),
            }),
        })
    }

    /// Wake the worker if it is parked (or about to park).
    pub fn wake(&self) {
        if self.inner.parked.swap(false, Ordering::AcqRel) {
            self.force_wake();
        }
    }

    /// Write to the eventfd unconditionally.
    pub fn force_wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own. EAGAIN (counter
        // saturated) means a wake-up is already pending, which is all we need.
        let _ = unsafe {
            libc::write(
                self.inner.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Called by the worker before it blocks. After this, re-check the queues once: a producer
    /// that pushed before seeing `parked == true` will not write the eventfd.
    pub fn park(&self) {
        self.inner.parked.store(true, Ordering::SeqCst);
    }

    /// Called by the worker once it runs again.
    pub fn unpark(&self) {
        self.inner.parked.store(false, Ordering::Release);
    }

    /// Reset the eventfd counter after it was readable.
    pub fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64; non-blocking fd, errors ignored.
        let _ = unsafe {
            libc::read(
                self.inner.fd.as_raw_fd(),
                (&mut value as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// The eventfd, for backends to wait on.
    pub fn raw_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }

    /// The eventfd registered with the current tokio runtime, for a task to await: the relay
    /// endpoint's shell waits on it beside its QUIC links.
    pub fn async_fd(&self) -> io::Result<tokio::io::unix::AsyncFd<Waker>> {
        // SAFETY: the `AsyncFd` owns a clone of this waker, whose `Arc` keeps the eventfd open
        // for as long as the registration lives.
        unsafe { tokio::io::unix::AsyncFd::register(self.clone()) }.map_err(|e| e.into())
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }
}
