//! The portable datagram path: `poll(2)` on the socket and the worker's eventfd, then
//! `recvmmsg` in fixed batches, and sends with `sendmmsg` ([`super::mmsg`]: each message a run
//! of datagrams to one destination, sent with UDP GSO when there are several). Owns the
//! socket, the receive buffers allocated at start-up, and the [`SendQueue`] of datagrams the
//! kernel has not taken yet.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use super::gso::Segmentation;
use super::mmsg::{self, MmsgSender};
use super::send_queue::SendQueue;
use super::{DatagramIo, IoStats, PollOutcome, RECV_BUFFER_SIZE, SEND_QUEUE_CAPACITY, Waker};

/// Datagrams moved per `recvmmsg` call.
const BATCH: usize = 32;

/// Socket buffer size we ask the kernel for. Without `CAP_NET_ADMIN` it caps the request at
/// `net.core.{r,w}mem_max`.
const SOCKET_BUFFER_BYTES: libc::c_int = 4 << 20;

/// `poll(2)` + `recvmmsg`/`sendmmsg` backend for one worker socket.
#[derive(Debug)]
pub struct PollIo {
    socket: UdpSocket,
    local_addr: SocketAddr,
    waker: Waker,
    /// `BATCH` receive buffers of `RECV_BUFFER_SIZE` bytes, back to back.
    recv_buffers: Box<[u8]>,
    /// Source address of each receive buffer.
    recv_addrs: Box<[libc::sockaddr_storage]>,
    send_queue: SendQueue,
    /// Whether sends use UDP GSO.
    gso: Segmentation,
    /// `sendmmsg` headers and buffers, allocated once.
    sender: MmsgSender,
    stats: IoStats,
}

/// What one `poll(2)` call saw.
#[derive(Debug, Default, Clone, Copy)]
struct Ready {
    readable: bool,
    writable: bool,
    woken: bool,
}

impl PollIo {
    /// Take over a bound socket: make it non-blocking and enlarge its kernel buffers.
    /// `udp_gso`: send runs to one destination with UDP GSO if the kernel has it.
    pub fn new(socket: UdpSocket, waker: &Waker, udp_gso: bool) -> io::Result<Self> {
        prepare_socket(&socket)?;
        let local_addr = socket.local_addr()?;
        let gso = Segmentation::new(&socket, udp_gso);
        Ok(Self {
            socket,
            local_addr,
            waker: waker.clone(),
            recv_buffers: vec![0; BATCH * RECV_BUFFER_SIZE].into_boxed_slice(),
            // SAFETY: `sockaddr_storage` is plain old data; all-zero is a valid value.
            recv_addrs: vec![unsafe { mem::zeroed::<libc::sockaddr_storage>() }; BATCH]
                .into_boxed_slice(),
            send_queue: SendQueue::new(SEND_QUEUE_CAPACITY),
            gso,
            sender: MmsgSender::new(),
            stats: IoStats::default(),
        })
    }

    /// Wait until the socket is readable (if `watch_input`) or writable (while sends wait for
    /// send buffer), the eventfd fires, or the timeout (ms, -1 = forever) passes.
    fn wait(&mut self, timeout_ms: libc::c_int, watch_input: bool) -> io::Result<Ready> {
        let mut socket_events = 0;
        if watch_input {
            socket_events |= libc::POLLIN;
        }
        if self.send_queue.is_blocked() {
            socket_events |= libc::POLLOUT;
        }
        let mut fds = [
            libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: socket_events,
                revents: 0,
            },
            libc::pollfd {
                fd: self.waker.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                // A signal is not an error: report nothing ready and let the worker re-poll.
                return Ok(Ready::default());
            }
            return Err(e);
        }
        if fds.iter().any(|fd| fd.revents & libc::POLLNVAL != 0) {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        // POLLERR on the socket means a pending error; recvmmsg reports (and clears) it. It is
        // reported whether asked for or not, so it only counts as input when input is wanted.
        let socket = fds[0].revents;
        Ok(Ready {
            readable: watch_input && socket & (libc::POLLIN | libc::POLLERR) != 0,
            writable: socket & libc::POLLOUT != 0,
            woken: fds[1].revents & libc::POLLIN != 0,
        })
    }

    /// Receive until the socket is drained or `budget` datagrams were taken from it.
    fn receive(&mut self, budget: usize, on_datagram: &mut dyn FnMut(SocketAddr, &[u8])) -> usize {
        let fd = self.socket.as_raw_fd();
        let mut remaining = budget;
        let mut delivered = 0;
        while remaining > 0 {
            let want = remaining.min(BATCH);
            // SAFETY: all-zero is a valid iovec / mmsghdr (null pointers, zero lengths); every
            // entry we pass to the kernel is filled in below.
            let mut iovecs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
            // SAFETY: as above.
            let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            let buffers = self.recv_buffers.chunks_exact_mut(RECV_BUFFER_SIZE);
            for (((iov, header), buffer), addr) in iovecs
                .iter_mut()
                .zip(headers.iter_mut())
                .zip(buffers)
                .zip(self.recv_addrs.iter_mut())
                .take(want)
            {
                *iov = libc::iovec {
                    iov_base: buffer.as_mut_ptr().cast(),
                    iov_len: buffer.len(),
                };
                header.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                header.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as _;
                header.msg_hdr.msg_iov = iov;
                header.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: the first `want` headers point at live, distinct buffers, iovecs and
            // address slots owned by `self` or this frame, which outlive the call.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    headers.as_mut_ptr(),
                    want as _,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    // A queued ICMP error (e.g. ECONNREFUSED) is consumed by this call; count it
                    // and stop so a persistent error cannot make us spin.
                    _ => {
                        self.stats.recv_errors += 1;
                        break;
                    }
                }
            }
            let n = n as usize;
            for (header, (buffer, addr)) in headers
                .iter()
                .zip(
                    self.recv_buffers
                        .chunks_exact(RECV_BUFFER_SIZE)
                        .zip(self.recv_addrs.iter()),
                )
                .take(n)
            {
                remaining -= 1;
                let len = header.msg_len as usize;
                if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > buffer.len() {
                    self.stats.recv_errors += 1;
                    continue;
                }
                let Some(source) = sockaddr_to_socket_addr(addr, header.msg_hdr.msg_namelen) else {
                    self.stats.recv_errors += 1;
                    continue;
                };
                on_datagram(source, &buffer[..len]);
                delivered += 1;
            }
            if n < want {
                // Socket drained for now; skip the call that would only say EAGAIN.
                break;
            }
        }
        delivered
    }

    /// Hand the queue to the kernel ([`MmsgSender::send_queued`]).
    fn send_queued(&mut self) {
        self.sender.send_queued(
            self.socket.as_raw_fd(),
            self.local_addr.is_ipv4(),
            &mut self.send_queue,
            &mut self.gso,
            &mut self.stats,
        );
    }
}

impl DatagramIo for PollIo {
    fn name(&self) -> &'static str {
        "poll"
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn send(&mut self, destination: SocketAddr, datagram: Vec<u8>) {
        self.send_queue.push(destination, datagram);
        if self.send_queue.waiting() >= mmsg::send_threshold(&self.gso) {
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
            // Leftovers of an interrupted flush go out before we sleep.
            self.send_queued();
            let timeout = poll_timeout_ms(deadline, Instant::now());
            // With no budget left the socket stays readable; watching it would make us spin.
            let ready = self.wait(timeout, budget > 0)?;
            if ready.woken {
                self.waker.drain();
            }
            if ready.writable {
                self.send_queue.writable();
                self.send_queued();
            }
            let received = if ready.readable {
                self.receive(budget, on_datagram)
            } else {
                0
            };
            // Room in the send buffer is our business, not the worker's: unless something
            // else happened, keep waiting for the deadline.
            let only_writable = ready.writable && !ready.readable && !ready.woken;
            if !only_writable || timeout == 0 {
                return Ok(PollOutcome {
                    received,
                    woken: ready.woken,
                });
            }
        }
    }

    fn stats(&self) -> IoStats {
        self.stats.with_sends(self.send_queue.counters())
    }
}

/// Milliseconds until `deadline`, rounded up so we never wake early and spin; `-1` for none.
fn poll_timeout_ms(deadline: Option<Instant>, now: Instant) -> libc::c_int {
    match deadline {
        None => -1,
        Some(deadline) => {
            let nanos = deadline.saturating_duration_since(now).as_nanos();
            let ms = nanos.div_ceil(1_000_000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    }
}

/// Make the socket non-blocking and give it 4 MiB kernel buffers: forced past
/// `rmem_max`/`wmem_max` when the process has `CAP_NET_ADMIN`, else as much as those allow.
/// Logs what the kernel granted, and warns when it is less: a small send buffer fills during
/// keyframe bursts (sends then wait in the backend's queue, or are dropped and counted).
pub(super) fn prepare_socket(socket: &UdpSocket) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    let fd = socket.as_raw_fd();
    let receive = set_buffer_size(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
    let send = set_buffer_size(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
    let addr = socket.local_addr()?;
    // The kernel doubles the value set (for its own overhead) and reports the doubled value.
    let wanted = 2 * SOCKET_BUFFER_BYTES as usize;
    if send < wanted || receive < wanted {
        tracing::warn!(
            %addr, send_buffer = send, receive_buffer = receive, wanted,
            "socket buffers smaller than asked for; raise net.core.wmem_max / rmem_max \
             or grant CAP_NET_ADMIN"
        );
    } else {
        tracing::info!(%addr, send_buffer = send, receive_buffer = receive, "socket buffers");
    }
    Ok(())
}

/// Ask for `SOCKET_BUFFER_BYTES` with `force` (privileged), else with `option`; return the
/// size the kernel reports for `option` afterwards (0 if it cannot be read).
fn set_buffer_size(fd: RawFd, force: libc::c_int, option: libc::c_int) -> usize {
    let value = SOCKET_BUFFER_BYTES;
    let set = |name: libc::c_int| {
        // SAFETY: passes a valid c_int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&value as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    // Failure (EPERM without CAP_NET_ADMIN) is expected and harmless: the fallback is capped.
    if set(force) != 0 {
        let _ = set(option);
    }
    let mut granted: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `granted` and `len` are valid for writes and `len` holds `granted`'s size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut granted as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        usize::try_from(granted).unwrap_or(0)
    } else {
        0
    }
}

/// Parse a kernel-filled socket address; `None` for families other than IPv4/IPv6 or a
/// length too short for the family.
pub(super) fn sockaddr_to_socket_addr(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which is smaller than
            // and alignment-compatible with sockaddr_storage.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = u32::from_be(sin.sin_addr.s_addr);
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip.into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Write `address` into `storage` for a `sendmsg`, returning the length to pass. On an IPv4
/// socket an IPv4-mapped IPv6 destination is sent as plain IPv4.
pub(super) fn socket_addr_to_sockaddr(
    address: SocketAddr,
    v4_socket: bool,
    storage: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    let address = match address {
        SocketAddr::V6(v6) if v4_socket => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, v6.port())),
            None => address,
        },
        _ => address,
    };
    match address {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            unsafe {
                (storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin);
            }
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            unsafe {
                (storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6);
            }
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Behaviour every [`DatagramIo`] backend must show, run by each backend's tests over real
/// loopback sockets. Each check is bounded to a few seconds.
#[cfg(test)]
pub(super) mod contract {
    use std::time::Duration;

    use super::*;

    /// Builds the backend under test; the flag turns UDP GSO on.
    pub(in crate::io) type Make = fn(UdpSocket, &Waker, bool) -> io::Result<Box<dyn DatagramIo>>;

    fn setup(make: Make, local: &str) -> Option<(Box<dyn DatagramIo>, UdpSocket, Waker)> {
        let waker = Waker::new().expect("eventfd");
        // IPv6 may be disabled on the test host; that is not a backend failure.
        let socket = UdpSocket::bind(local).ok()?;
        let peer = UdpSocket::bind(local).expect("bind peer");
        peer.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let io = make(socket, &waker, true).expect("backend");
        Some((io, peer, waker))
    }

    /// Whether this kernel knows `UDP_SEGMENT` (4.18+); GSO checks pass vacuously, with a
    /// note, where it does not.
    fn gso_available() -> bool {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let available = Segmentation::new(&socket, true).enabled();
        if !available {
            eprintln!("UDP GSO unavailable on this kernel; not checking that it is used");
        }
        available
    }

    /// Runs to one peer as one backend sees them in a pass: 150 datagrams of 1000 bytes then a
    /// shorter one (more than one GSO send's worth of segments), 100 of 1400 bytes (more than
    /// one send's worth of bytes), and runs broken by another destination. Returns what to send
    /// to the peer (index 0) and to the other (index 1), in order.
    fn gso_pass() -> Vec<(usize, Vec<u8>)> {
        let mut pass = Vec::new();
        let mut seq = 0u32;
        let mut datagram = |len: usize| {
            let mut bytes = vec![(seq % 251) as u8; len];
            bytes[..4].copy_from_slice(&seq.to_be_bytes());
            seq += 1;
            bytes
        };
        for _ in 0..150 {
            pass.push((0, datagram(1000)));
        }
        pass.push((0, datagram(321)));
        for _ in 0..100 {
            pass.push((0, datagram(1400)));
        }
        for i in 0..40 {
            pass.push((usize::from(i % 10 == 9), datagram(1200)));
        }
        pass
    }

    /// Send [`gso_pass`] and check that both peers get every datagram intact, whole and in
    /// order, and that nothing was dropped. Returns what the backend's counters gained.
    fn send_gso_pass(io: &mut dyn DatagramIo, peers: &[UdpSocket; 2]) -> IoStats {
        let before = io.stats();
        let addrs = peers.each_ref().map(|p| p.local_addr().expect("addr"));
        let pass = gso_pass();
        for (to, bytes) in &pass {
            io.send(addrs[*to], bytes.clone());
        }
        io.flush().expect("flush");
        let mut buf = [0u8; 2048];
        for (p, peer) in peers.iter().enumerate() {
            for (_, want) in pass.iter().filter(|(to, _)| *to == p) {
                let (n, from) = recv_from(peer, &mut buf);
                assert_eq!(from, io.local_addr());
                assert_eq!(n, want.len(), "peer {p}: a datagram split or merged");
                assert_eq!(&buf[..n], &want[..], "peer {p}: out of order or corrupt");
            }
        }
        io.poll(Some(Instant::now()), 64, &mut |_, _| {})
            .expect("poll");
        let now = io.stats();
        let stats = IoStats {
            sent: now.sent - before.sent,
            sent_bytes: now.sent_bytes - before.sent_bytes,
            send_failed: now.send_failed - before.send_failed,
            send_buffer_full: now.send_buffer_full - before.send_buffer_full,
            recv_errors: now.recv_errors - before.recv_errors,
            gso_sends: now.gso_sends - before.gso_sends,
            gso_datagrams: now.gso_datagrams - before.gso_datagrams,
        };
        assert_eq!(stats.sent, pass.len() as u64);
        assert_eq!(
            stats.sent_bytes,
            pass.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
        );
        assert_eq!(stats.send_dropped(), 0);
        stats
    }

    fn two_peers() -> [UdpSocket; 2] {
        [(); 2].map(|_| {
            let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
            peer.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            set_buffer_size(peer.as_raw_fd(), libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
            peer
        })
    }

    /// Runs leave as GSO sends and arrive as the datagrams they were made of.
    pub(in crate::io) fn gso_runs_arrive_as_datagrams(make: Make) {
        let waker = Waker::new().expect("eventfd");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut io = make(socket, &waker, true).expect("backend");
        let peers = two_peers();
        let stats = send_gso_pass(io.as_mut(), &peers);
        if gso_available() {
            // 150 × 1000 + 321 at ≤ 64 per send: 3 sends; 100 × 1400 at ≤ 65 507 bytes: 3
            // sends, the last taking the first 1200-byte datagram as its shorter end; the
            // other 1200-byte ones, broken every 10th: runs of 8, 9, 9, 9.
            assert_eq!(stats.gso_sends, 3 + 3 + 4, "{stats:?}");
            assert_eq!(stats.gso_datagrams, 151 + 101 + 35, "{stats:?}");
        }
        // With GSO off, every datagram is its own send.
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut io = make(socket, &waker, false).expect("backend");
        let stats = send_gso_pass(io.as_mut(), &peers);
        assert_eq!((stats.gso_sends, stats.gso_datagrams), (0, 0));
    }

    /// A socket on which the kernel refuses GSO sends (`SO_NO_CHECK`: no UDP checksum, which
    /// segmentation needs, so `EINVAL`): the refused runs go out one datagram at a time, in
    /// order, none lost, and GSO stays off.
    pub(in crate::io) fn refused_gso_falls_back_without_loss(make: Make) {
        let waker = Waker::new().expect("eventfd");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let one: libc::c_int = 1;
        // SAFETY: passes a valid c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&raw const one).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_NO_CHECK: {}", io::Error::last_os_error());
        let mut io = make(socket, &waker, true).expect("backend");
        let peers = two_peers();
        let stats = send_gso_pass(io.as_mut(), &peers);
        assert_eq!((stats.gso_sends, stats.gso_datagrams), (0, 0), "{stats:?}");
        // And again, now that GSO is off from the start of the pass.
        let stats = send_gso_pass(io.as_mut(), &peers);
        assert_eq!(stats.gso_sends, 0);
    }

    /// Poll until `want` datagrams arrived or two seconds passed.
    fn collect(io: &mut dyn DatagramIo, want: usize, budget: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(2);
        while got.len() < want && Instant::now() < end {
            let outcome = io
                .poll(
                    Some(Instant::now() + Duration::from_millis(100)),
                    budget,
                    &mut |a, d| got.push((a, d.to_vec())),
                )
                .expect("poll");
            assert!(outcome.received <= budget);
        }
        got
    }

    pub(in crate::io) fn round_trip(make: Make, local: &str) {
        let Some((mut io, peer, _waker)) = setup(make, local) else {
            return;
        };
        let peer_addr = peer.local_addr().expect("addr");
        io.send(peer_addr, b"hello".to_vec());
        io.send(peer_addr, vec![7; 1200]);
        io.flush().expect("flush");
        let mut buf = [0u8; 2048];
        let (n, from) = recv_from(&peer, &mut buf);
        assert_eq!((&buf[..n], from), (&b"hello"[..], io.local_addr()));
        let (n, _) = recv_from(&peer, &mut buf);
        assert_eq!(&buf[..n], &[7; 1200][..]);

        peer.send_to(b"back", io.local_addr()).expect("send back");
        let got = collect(io.as_mut(), 1, 64);
        assert_eq!(got, vec![(peer_addr, b"back".to_vec())]);
        assert_eq!(io.stats().recv_errors, 0);
        assert_eq!(io.stats().send_dropped(), 0);
    }

    /// Blocking receive on a test peer. Retries EINTR: io_uring task-work notifications
    /// interrupt blocking system calls on the thread that owns the ring.
    fn recv_from(peer: &UdpSocket, buf: &mut [u8]) -> (usize, SocketAddr) {
        loop {
            match peer.recv_from(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return result.expect("peer recv"),
            }
        }
    }

    /// More sends in one pass than any internal batch or queue size; all arrive, in order.
    /// Spread over three peers so no single loopback receive buffer overflows.
    pub(in crate::io) fn many_sends(make: Make) {
        let Some((mut io, first_peer, _waker)) = setup(make, "127.0.0.1:0") else {
            return;
        };
        let mut peers = vec![first_peer];
        for _ in 0..2 {
            let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
            peer.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            peers.push(peer);
        }
        let addrs: Vec<SocketAddr> = peers
            .iter()
            .map(|p| p.local_addr().expect("addr"))
            .collect();
        for round in 0..3u32 {
            for i in 0..300u32 {
                io.send(
                    addrs[i as usize % 3],
                    (round * 1000 + i).to_be_bytes().to_vec(),
                );
            }
            io.flush().expect("flush");
            let mut buf = [0u8; 16];
            for i in 0..300u32 {
                let (n, _) = recv_from(&peers[i as usize % 3], &mut buf);
                assert_eq!(&buf[..n], &(round * 1000 + i).to_be_bytes());
            }
            // Reap send completions so their slots come back.
            io.poll(Some(Instant::now()), 64, &mut |_, _| {})
                .expect("poll");
        }
        assert_eq!(io.stats().send_dropped(), 0);
    }

    /// One pass far larger than any batch, slot pool or chain of the backend (a keyframe
    /// fanned out to hundreds of subscribers): every datagram arrives, in order per
    /// destination, and none is dropped.
    pub(in crate::io) fn huge_pass_arrives_in_order(make: Make) {
        const PEERS: usize = 8;
        const PER_PEER: u32 = 1500;
        let Some((mut io, first_peer, _waker)) = setup(make, "127.0.0.1:0") else {
            return;
        };
        let mut peers = vec![first_peer];
        for _ in 1..PEERS {
            let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
            peer.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            peers.push(peer);
        }
        for peer in &peers {
            // Room for the whole pass, so the receivers cannot be what drops.
            set_buffer_size(peer.as_raw_fd(), libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
        }
        let addrs: Vec<SocketAddr> = peers
            .iter()
            .map(|p| p.local_addr().expect("addr"))
            .collect();
        for i in 0..PER_PEER {
            for addr in &addrs {
                let mut datagram = vec![0u8; 200];
                datagram[..4].copy_from_slice(&i.to_be_bytes());
                io.send(*addr, datagram);
            }
        }
        io.flush().expect("flush");
        let mut buf = [0u8; 256];
        for (p, peer) in peers.iter().enumerate() {
            for i in 0..PER_PEER {
                let (n, _) = recv_from(peer, &mut buf);
                assert_eq!(n, 200);
                assert_eq!(
                    &buf[..4],
                    &i.to_be_bytes(),
                    "peer {p}: out of order or lost"
                );
            }
        }
        io.poll(Some(Instant::now()), 64, &mut |_, _| {})
            .expect("poll");
        assert_eq!(io.stats().send_dropped(), 0);
    }

    pub(in crate::io) fn waker_interrupts_infinite_wait(make: Make) {
        let Some((mut io, _peer, waker)) = setup(make, "127.0.0.1:0") else {
            return;
        };
        for force in [false, true, false] {
            waker.park();
            let remote = waker.clone();
            let thread = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                if force {
                    remote.force_wake();
                } else {
                    remote.wake();
                }
            });
            let started = Instant::now();
            let outcome = io.poll(None, 64, &mut |_, _| {}).expect("poll");
            waker.unpark();
            thread.join().expect("waker thread");
            assert!(outcome.woken);
            assert_eq!(outcome.received, 0);
            let elapsed = started.elapsed();
            assert!(
                elapsed >= Duration::from_millis(40),
                "woke early: {elapsed:?}"
            );
            assert!(elapsed < Duration::from_secs(2));
        }
        // The eventfd was drained: the next wait times out instead of waking at once.
        let outcome = io
            .poll(
                Some(Instant::now() + Duration::from_millis(10)),
                64,
                &mut |_, _| {},
            )
            .expect("poll");
        assert!(!outcome.woken);
    }

    pub(in crate::io) fn budget_is_honoured(make: Make) {
        let Some((mut io, peer, _waker)) = setup(make, "127.0.0.1:0") else {
            return;
        };
        for i in 0..100u32 {
            peer.send_to(&i.to_be_bytes(), io.local_addr())
                .expect("send");
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut first = 0;
        let outcome = io
            .poll(
                Some(Instant::now() + Duration::from_secs(1)),
                10,
                &mut |_, _| first += 1,
            )
            .expect("poll");
        assert_eq!((outcome.received, first), (10, 10));
        let rest = collect(io.as_mut(), 90, 10);
        let mut seen: Vec<u32> = rest
            .iter()
            .map(|(_, d)| u32::from_be_bytes(d[..4].try_into().expect("4 bytes")))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (10..100).collect::<Vec<_>>());
        // Nothing more is pending.
        let outcome = io
            .poll(
                Some(Instant::now() + Duration::from_millis(20)),
                10,
                &mut |_, _| {},
            )
            .expect("poll");
        assert_eq!(outcome.received, 0);
    }

    pub(in crate::io) fn deadline_returns_promptly(make: Make) {
        let Some((mut io, _peer, _waker)) = setup(make, "127.0.0.1:0") else {
            return;
        };
        let started = Instant::now();
        let outcome = io
            .poll(
                Some(started + Duration::from_millis(20)),
                64,
                &mut |_, _| {},
            )
            .expect("poll");
        let elapsed = started.elapsed();
        assert_eq!(outcome, PollOutcome::default());
        assert!(elapsed >= Duration::from_millis(20), "early: {elapsed:?}");
        assert!(elapsed < Duration::from_millis(500), "late: {elapsed:?}");

        let started = Instant::now();
        let past = started
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(started);
        let outcome = io.poll(Some(past), 64, &mut |_, _| {}).expect("poll");
        assert_eq!(outcome.received, 0);
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    pub(in crate::io) fn bad_traffic_is_counted_not_fatal(make: Make) {
        let Some((mut io, peer, _waker)) = setup(make, "127.0.0.1:0") else {
            return;
        };
        peer.send_to(&[1; RECV_BUFFER_SIZE + 100], io.local_addr())
            .expect("send big");
        peer.send_to(b"ok", io.local_addr()).expect("send ok");
        let got = collect(io.as_mut(), 1, 64);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, b"ok");
        assert_eq!(io.stats().recv_errors, 1);

        // A closed port is silently dropped by the kernel on an unconnected socket; an IPv6
        // destination on an IPv4 socket is refused, counted, and does not stop the others.
        let closed = {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.local_addr().expect("addr")
        };
        io.send(closed, b"x".to_vec());
        io.send("[::1]:9".parse().expect("v6"), b"y".to_vec());
        io.send(peer.local_addr().expect("addr"), b"z".to_vec());
        io.flush().expect("flush");
        let mut buf = [0u8; 16];
        let (n, _) = recv_from(&peer, &mut buf);
        assert_eq!(&buf[..n], b"z");
        io.poll(
            Some(Instant::now() + Duration::from_millis(20)),
            64,
            &mut |_, _| {},
        )
        .expect("poll");
        assert_eq!(io.stats().send_failed, 1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::contract::{self, Make};
    use super::*;

    const MAKE: Make = |socket, waker, gso| Ok(Box::new(PollIo::new(socket, waker, gso)?));

    #[test]
    fn round_trip_ipv4() {
        contract::round_trip(MAKE, "127.0.0.1:0");
    }

    #[test]
    fn round_trip_ipv6() {
        contract::round_trip(MAKE, "[::1]:0");
    }

    #[test]
    fn many_sends() {
        contract::many_sends(MAKE);
    }

    #[test]
    fn huge_pass_arrives_in_order() {
        contract::huge_pass_arrives_in_order(MAKE);
    }

    #[test]
    fn waker_interrupts_infinite_wait() {
        contract::waker_interrupts_infinite_wait(MAKE);
    }

    #[test]
    fn budget_is_honoured() {
        contract::budget_is_honoured(MAKE);
    }

    #[test]
    fn deadline_returns_promptly() {
        contract::deadline_returns_promptly(MAKE);
    }

    #[test]
    fn bad_traffic_is_counted_not_fatal() {
        contract::bad_traffic_is_counted_not_fatal(MAKE);
    }

    #[test]
    fn gso_runs_arrive_as_datagrams() {
        contract::gso_runs_arrive_as_datagrams(MAKE);
    }

    #[test]
    fn refused_gso_falls_back_without_loss() {
        contract::refused_gso_falls_back_without_loss(MAKE);
    }

    #[test]
    fn timeout_rounds_up() {
        let now = Instant::now();
        assert_eq!(poll_timeout_ms(None, now), -1);
        assert_eq!(poll_timeout_ms(Some(now), now), 0);
        assert_eq!(
            poll_timeout_ms(Some(now + Duration::from_micros(1)), now),
            1
        );
        assert_eq!(
            poll_timeout_ms(Some(now + Duration::from_millis(5)), now),
            5
        );
        if let Some(past) = now.checked_sub(Duration::from_millis(5)) {
            assert_eq!(poll_timeout_ms(Some(past), now), 0);
        }
    }

    #[test]
    fn socket_addresses_round_trip() {
        for text in [
            "192.0.2.1:5000",
            "[2001:db8::1]:443",
            "[::ffff:192.0.2.1]:9",
        ] {
            let address: SocketAddr = text.parse().expect("address");
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
            let len = socket_addr_to_sockaddr(address, false, &mut storage);
            assert_eq!(sockaddr_to_socket_addr(&storage, len), Some(address));
        }
        // An IPv4-mapped destination goes out as plain IPv4 on an IPv4 socket.
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:9".parse().expect("address");
        // SAFETY: as above.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = socket_addr_to_sockaddr(mapped, true, &mut storage);
        assert_eq!(
            sockaddr_to_socket_addr(&storage, len),
            Some("192.0.2.1:9".parse().expect("address"))
        );
        // Garbage from the kernel side is refused, not trusted.
        // SAFETY: as above.
        let storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        assert_eq!(sockaddr_to_socket_addr(&storage, 128), None);
    }
}
