//! UDP generic segmentation offload (`UDP_SEGMENT`, Linux 4.18+): one `sendmsg` carries a run
//! of datagrams to one destination and the kernel splits it back into datagrams, so the per-send
//! cost of the UDP/IP stack is paid once per run instead of once per datagram. Owns the rule
//! for which queued datagrams form a run, and the buffers one send of a run points at.
//!
//! A run is what the kernel can split back exactly: adjacent datagrams with the same
//! destination and the same length, the last of them possibly shorter (the kernel cuts the
//! payload every `segment size` bytes). The worker drains each subscriber's session in one go,
//! so the packets of a video frame to one subscriber are adjacent in its queue.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use super::IoStats;
use super::poll::socket_addr_to_sockaddr;
use super::send_queue::Datagram;

/// Most datagrams in one GSO send. The kernel's `UDP_MAX_SEGMENTS` was 64 from 4.18 and is 128
/// on recent kernels (6.x); 64 is accepted everywhere.
pub const MAX_SEGMENTS: usize = 64;

/// Most payload bytes in one GSO send: an IPv4 datagram's 65 535 bytes less the 20-byte IP
/// and 8-byte UDP headers (IPv6 allows 65 527; the smaller bound serves both).
pub const MAX_RUN_BYTES: usize = 65_507;

/// How large runs may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    pub max_segments: usize,
    pub max_bytes: usize,
}

impl RunLimits {
    /// The kernel's limits for a GSO send.
    pub const GSO: Self = Self {
        max_segments: MAX_SEGMENTS,
        max_bytes: MAX_RUN_BYTES,
    };

    /// One datagram per send (GSO off or refused).
    pub const SINGLE: Self = Self {
        max_segments: 1,
        max_bytes: usize::MAX,
    };
}

/// How many of `datagrams` (destination and length, in queue order), from the first, go out
/// in one send: 0 only if there are none. A datagram joins the run if it goes where the first
/// goes, is not empty, is no longer than the first (the segment size), follows a datagram of
/// exactly the segment size (only the last may be shorter), and fits the limits.
pub fn run_len(
    datagrams: impl IntoIterator<Item = (SocketAddr, usize)>,
    limits: RunLimits,
) -> usize {
    let mut datagrams = datagrams.into_iter();
    let Some((destination, segment)) = datagrams.next() else {
        return 0;
    };
    // The segment size travels as a u16; an empty first datagram cannot be segmented at all.
    if segment == 0 || segment > usize::from(u16::MAX) {
        return 1;
    }
    let (mut count, mut bytes) = (1, segment);
    for (next_destination, len) in datagrams {
        let fits = count < limits.max_segments && bytes + len <= limits.max_bytes;
        if !fits || next_destination != destination || len == 0 || len > segment {
            break;
        }
        count += 1;
        bytes += len;
        if len < segment {
            break;
        }
    }
    count
}

/// Whether one socket's sends use GSO. On at start if configured and the kernel knows
/// `UDP_SEGMENT`; off for good once the kernel or the device refuses a GSO send.
#[derive(Debug)]
pub struct Segmentation {
    enabled: bool,
    local_addr: SocketAddr,
}

impl Segmentation {
    /// Probe `socket` when `wanted`: setting its default segment size to 0 (none, the
    /// default) fails with `ENOPROTOOPT` on kernels without UDP GSO. Logs when it is not
    /// available.
    pub fn new(socket: &UdpSocket, wanted: bool) -> Self {
        let local_addr = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let enabled = wanted
            && {
                let value: libc::c_int = 0;
                // SAFETY: passes a valid c_int and its size.
                let rc = unsafe {
                    libc::setsockopt(
                        socket.as_raw_fd(),
                        libc::SOL_UDP,
                        libc::UDP_SEGMENT,
                        (&raw const value).cast(),
                        mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    let error = io::Error::last_os_error();
                    tracing::info!(addr = %local_addr, %error, "UDP GSO unavailable; sending one datagram per send");
                }
                rc == 0
            };
        Self {
            enabled,
            local_addr,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How long runs may be for the next send.
    pub fn limits(&self) -> RunLimits {
        if self.enabled {
            RunLimits::GSO
        } else {
            RunLimits::SINGLE
        }
    }

    /// Record what the kernel did with one send of `run` — `result` is the byte count or
    /// `-errno` — as one result per datagram appended to `results`, counting GSO sends in
    /// `stats`. A GSO send is all or nothing: every datagram gets the send's outcome. If the
    /// kernel refused to segment ([`refused`]), GSO is turned off for this socket (logged
    /// once) and the run is reported as never tried, so the queue puts it back at the head and
    /// it goes out one datagram at a time.
    pub fn settle_send(
        &mut self,
        run: &[Datagram],
        result: i32,
        results: &mut Vec<i32>,
        stats: &mut IoStats,
    ) {
        if result >= 0 {
            if run.len() > 1 {
                stats.gso_sends += 1;
                stats.gso_datagrams += run.len() as u64;
            }
            results.extend(run.iter().map(|d| d.bytes.len() as i32));
            return;
        }
        let mut result = result;
        if run.len() > 1 && refused(-result) {
            if self.enabled {
                self.enabled = false;
                tracing::info!(
                    addr = %self.local_addr,
                    error = %io::Error::from_raw_os_error(-result),
                    "UDP GSO refused by the kernel or device; sending one datagram per send from now on"
                );
            }
            result = -libc::ECANCELED;
        }
        results.extend(run.iter().map(|_| result));
    }
}

/// What one send of a run points at: the destination, one iovec per datagram (the kernel
/// concatenates them, so nothing is copied) and the `UDP_SEGMENT` control message. Allocated
/// once per send slot and rewritten for each send; it must not move while a send that points
/// at it is in flight.
pub struct RunBuffers {
    addr: libc::sockaddr_storage,
    iovecs: [libc::iovec; MAX_SEGMENTS],
    control: SegmentControl,
}

impl RunBuffers {
    pub fn new() -> Self {
        Self {
            // SAFETY: all-zero is a valid sockaddr_storage / iovec array (null pointers, zero
            // lengths); `prepare` fills what a send uses.
            addr: unsafe { mem::zeroed() },
            // SAFETY: as above.
            iovecs: unsafe { mem::zeroed() },
            control: SegmentControl::new(),
        }
    }

    /// Fill these buffers for one send of `run` (at most [`MAX_SEGMENTS`] datagrams, formed by
    /// [`run_len`]) and point `msg` at them; a run of more than one datagram carries a
    /// `UDP_SEGMENT` control message with the first datagram's length. `msg` and the kernel may
    /// use the pointers until the datagrams or these buffers move or are dropped.
    pub fn prepare(&mut self, run: &[Datagram], v4_socket: bool, msg: &mut libc::msghdr) {
        assert!(
            (1..=MAX_SEGMENTS).contains(&run.len()),
            "a run holds 1..=MAX_SEGMENTS datagrams"
        );
        let namelen = socket_addr_to_sockaddr(run[0].destination, v4_socket, &mut self.addr);
        for (iov, datagram) in self.iovecs.iter_mut().zip(run) {
            *iov = libc::iovec {
                // The kernel only reads through this pointer.
                iov_base: datagram.bytes.as_ptr().cast_mut().cast(),
                iov_len: datagram.bytes.len(),
            };
        }
        // SAFETY: all-zero is a valid msghdr; the fields a send uses are set below.
        *msg = unsafe { mem::zeroed() };
        msg.msg_name = (&raw mut self.addr).cast();
        msg.msg_namelen = namelen;
        msg.msg_iov = self.iovecs.as_mut_ptr();
        msg.msg_iovlen = run.len() as _;
        if run.len() > 1 {
            let segment = u16::try_from(run[0].bytes.len())
                .expect("run_len keeps the segment size within u16");
            self.control.segment_size = segment;
            msg.msg_control = (&raw mut self.control).cast();
            msg.msg_controllen = mem::size_of::<SegmentControl>() as _;
        }
    }
}

impl std::fmt::Debug for RunBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunBuffers")
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

impl Default for RunBuffers {
    fn default() -> Self {
        Self::new()
    }
}

/// A `cmsg` of level `SOL_UDP`, type `UDP_SEGMENT`, carrying the segment size (`u16`). Laid out
/// as `CMSG_SPACE(2)` bytes: the header, then the data at `CMSG_LEN(0)` (checked by a test).
#[repr(C)]
struct SegmentControl {
    header: libc::cmsghdr,
    segment_size: u16,
}

impl SegmentControl {
    fn new() -> Self {
        // SAFETY: all-zero is a valid cmsghdr (on some libcs it has private padding fields,
        // so it cannot be built field by field).
        let mut header: libc::cmsghdr = unsafe { mem::zeroed() };
        header.cmsg_level = libc::SOL_UDP;
        header.cmsg_type = libc::UDP_SEGMENT;
        // The kernel insists on exactly CMSG_LEN(sizeof(u16)).
        // SAFETY: CMSG_LEN is pure arithmetic on its argument.
        header.cmsg_len = unsafe { libc::CMSG_LEN(mem::size_of::<u16>() as _) } as _;
        Self {
            header,
            segment_size: 0,
        }
    }
}

impl std::fmt::Debug for SegmentControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentControl")
            .field("segment_size", &self.segment_size)
            .finish()
    }
}

/// Whether an error from a send of more than one datagram means the kernel or the device will
/// not segment (no `UDP_SEGMENT` before 4.18: `ENOPROTOOPT`/`EINVAL`; no checksum offload or
/// IPsec on the route: `EIO`; a segment larger than the path MTU: `EMSGSIZE`). The datagrams
/// are then sent one by one, and GSO stays off for the socket.
pub fn refused(errno: i32) -> bool {
    matches!(
        errno,
        libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EMSGSIZE | libc::EOPNOTSUPP
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Run lengths over a whole list, as the queue forms them.
    fn runs(datagrams: &[(SocketAddr, usize)], limits: RunLimits) -> Vec<usize> {
        let mut runs = Vec::new();
        let mut start = 0;
        while start < datagrams.len() {
            let len = run_len(datagrams[start..].iter().copied(), limits);
            assert!(len >= 1);
            runs.push(len);
            start += len;
        }
        runs
    }

    #[test]
    fn equal_datagrams_to_one_destination_form_one_run() {
        let d = vec![(to(1), 1200); 10];
        assert_eq!(runs(&d, RunLimits::GSO), [10]);
        assert_eq!(runs(&d, RunLimits::SINGLE), [1; 10]);
        assert_eq!(run_len([], RunLimits::GSO), 0);
    }

    #[test]
    fn a_shorter_datagram_ends_the_run_it_joins() {
        let d = [
            (to(1), 1200),
            (to(1), 1200),
            (to(1), 700),
            (to(1), 1200),
            (to(1), 1200),
        ];
        assert_eq!(runs(&d, RunLimits::GSO), [3, 2]);
    }

    #[test]
    fn a_longer_datagram_starts_a_new_run() {
        let d = [(to(1), 700), (to(1), 700), (to(1), 1200), (to(1), 1200)];
        assert_eq!(runs(&d, RunLimits::GSO), [2, 2]);
    }

    #[test]
    fn a_different_destination_breaks_a_run() {
        let d = [
            (to(1), 1200),
            (to(1), 1200),
            (to(2), 1200),
            (to(1), 1200),
            (to(1), 1200),
        ];
        assert_eq!(runs(&d, RunLimits::GSO), [2, 1, 2]);
        // Same address, other port; and IPv6 is never the same as IPv4.
        let v6: SocketAddr = "[::1]:1".parse().expect("address");
        let d = [(to(1), 100), (to(3), 100), (v6, 100), (v6, 100)];
        assert_eq!(runs(&d, RunLimits::GSO), [1, 1, 2]);
    }

    #[test]
    fn runs_stop_at_the_segment_limit() {
        let d = vec![(to(1), 100); 2 * MAX_SEGMENTS + 5];
        assert_eq!(runs(&d, RunLimits::GSO), [MAX_SEGMENTS, MAX_SEGMENTS, 5]);
    }

    #[test]
    fn runs_stop_at_the_byte_limit() {
        // 46 × 1400 = 64 400 fits, 47 × 1400 = 65 800 does not.
        let d = vec![(to(1), 1400); 100];
        assert_eq!(runs(&d, RunLimits::GSO), [46, 46, 8]);
        for run in runs(&d, RunLimits::GSO) {
            assert!(run * 1400 <= MAX_RUN_BYTES);
        }
        // A shorter last datagram still counts against the limit.
        let mut d = vec![(to(1), 1400); 46];
        d.push((to(1), 1200));
        assert_eq!(
            runs(&d, RunLimits::GSO),
            [46, 1],
            "64 400 + 1200 = 65 600 does not fit"
        );
        let mut d = vec![(to(1), 1400); 46];
        d.push((to(1), 100));
        assert_eq!(runs(&d, RunLimits::GSO), [47], "64 400 + 100 = 64 500 fits");
    }

    #[test]
    fn empty_and_oversized_datagrams_go_alone() {
        // An empty datagram would vanish inside a run (the kernel sees no segment for it).
        let d = [(to(1), 0), (to(1), 0), (to(1), 50), (to(1), 0)];
        assert_eq!(runs(&d, RunLimits::GSO), [1, 1, 1, 1]);
        let d = [(to(1), 70_000), (to(1), 70_000)];
        assert_eq!(runs(&d, RunLimits::GSO), [1, 1]);
    }

    #[test]
    fn runs_cover_the_queue_in_order() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let d: Vec<(SocketAddr, usize)> = (0..5000)
            .map(|_| {
                let len = if next() % 4 == 0 { 300 } else { 1200 };
                (to(next() as u16 % 3), len)
            })
            .collect();
        let mut start = 0;
        for run in runs(&d, RunLimits::GSO) {
            let slice = &d[start..start + run];
            assert!(slice.iter().all(|(a, _)| *a == slice[0].0));
            let segment = slice[0].1;
            assert!(slice[..run - 1].iter().all(|(_, len)| *len == segment));
            assert!(slice[run - 1].1 <= segment);
            assert!(run <= MAX_SEGMENTS);
            assert!(slice.iter().map(|(_, len)| len).sum::<usize>() <= MAX_RUN_BYTES);
            start += run;
        }
        assert_eq!(start, d.len());
    }

    #[test]
    fn control_message_matches_the_kernel_layout() {
        // SAFETY: pure arithmetic.
        let (space, len0, len2) = unsafe {
            (
                libc::CMSG_SPACE(2) as usize,
                libc::CMSG_LEN(0) as usize,
                libc::CMSG_LEN(2) as usize,
            )
        };
        assert_eq!(mem::size_of::<SegmentControl>(), space);
        assert_eq!(mem::offset_of!(SegmentControl, segment_size), len0);
        // `cmsg_len` is a `size_t` on glibc and a `socklen_t` on musl.
        #[allow(clippy::unnecessary_cast)]
        let cmsg_len = SegmentControl::new().header.cmsg_len as usize;
        assert_eq!(cmsg_len, len2);
    }

    #[test]
    fn prepare_points_at_every_datagram() {
        let run: Vec<Datagram> = (0..3u8)
            .map(|i| Datagram {
                destination: to(9),
                bytes: vec![i; if i == 2 { 10 } else { 20 }],
            })
            .collect();
        let mut buffers = RunBuffers::new();
        // SAFETY: all-zero is a valid msghdr.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        buffers.prepare(&run, true, &mut msg);
        assert_eq!(msg.msg_iovlen as usize, 3);
        assert_eq!(buffers.iovecs[2].iov_len, 10);
        assert_eq!(buffers.control.segment_size, 20);
        assert!(!msg.msg_control.is_null());
        buffers.prepare(&run[..1], true, &mut msg);
        assert!(
            msg.msg_control.is_null(),
            "a single datagram needs no control message"
        );
        assert_eq!(msg.msg_controllen, 0);
    }
}
