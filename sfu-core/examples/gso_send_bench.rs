//! What one UDP GSO send of a run of datagrams costs the sending core, three ways: `sendmsg` (what
//! both worker backends do, through `sendmmsg`), io_uring `SENDMSG`, and io_uring `SENDMSG_ZC`
//! (zero-copy: the kernel pins the datagrams' pages instead of copying them, and posts a second
//! completion, the notification, once it no longer needs them). See docs/io.md, "Zero-copy sends".
//!
//! One thread, pinned, sends runs of `--segments` datagrams of `--size` bytes (each its own
//! buffer, as the worker's datagrams are) to `--dest`: by default a socket on loopback that
//! nobody reads, so the whole send path runs and the kernel drops at the receiving socket. Point
//! `--dest` at an address behind a veth or a NIC to see what the route changes. Prints one line:
//! datagrams per second and the thread's CPU time per datagram; for zero-copy also how many
//! notifications said the kernel copied the data after all (`IORING_NOTIF_USAGE_ZC_COPIED`).
//!
//! ```text
//! cargo run --release -p sfu-core --example gso_send_bench -- --mode uring-zc --segments 16
//! ```

// The benchmark issues the system calls itself (`sendmsg`, io_uring submissions pointing at
// buffers it keeps alive until their completions), which needs `unsafe`; the node's own code
// for this lives in `sfu_core::io`.
#![allow(unsafe_code)]
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use sfu_core::affinity;
use sfu_core::io::gso::{MAX_RUN_BYTES, MAX_SEGMENTS, RunBuffers};
use sfu_core::io::send_queue::Datagram;

/// `IORING_SEND_ZC_REPORT_USAGE` (Linux 6.2, in the SQE's `ioprio`): the notification says
/// whether the kernel had to copy the data after all.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in a notification's `res` when the data was copied.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One `sendmsg` per run.
    Sendmsg,
    /// `sendmmsg` of `--depth` runs per call, as both worker backends send.
    Sendmmsg,
    /// io_uring `SENDMSG`, `--depth` runs in flight.
    Uring,
    /// io_uring `SENDMSG_ZC`, `--depth` runs in flight; a run's buffers are reused only after
    /// its notification.
    UringZc,
}

#[derive(Debug, Parser)]
#[command(about = "CPU per datagram of UDP GSO sends: sendmsg, io_uring, io_uring zero-copy")]
struct Args {
    #[arg(long, value_enum, default_value = "sendmsg")]
    mode: Mode,
    /// Datagrams per GSO send.
    #[arg(long, default_value_t = 16)]
    segments: usize,
    /// Bytes per datagram.
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// Where to send (default: a socket on 127.0.0.1 that nobody reads).
    #[arg(long)]
    dest: Option<SocketAddr>,
    /// Local address to bind (default: the unspecified address of the destination's family).
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// io_uring modes: sends in flight.
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Longest run time.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Upper bound on datagrams sent.
    #[arg(long, default_value_t = 5_000_000)]
    max_datagrams: u64,
    /// CPU to pin the sending thread to.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
}

/// One send's datagrams and the msghdr pointing at them; boxed so that nothing moves while the
/// kernel may read it.
struct Slot {
    datagrams: Vec<Datagram>,
    buffers: RunBuffers,
    msg: libc::msghdr,
}

impl Slot {
    fn new(destination: SocketAddr, segments: usize, size: usize, v4: bool) -> Box<Self> {
        let datagrams = (0..segments)
            .map(|i| Datagram {
                destination,
                bytes: vec![i as u8; size],
            })
            .collect();
        let mut slot = Box::new(Self {
            datagrams,
            buffers: RunBuffers::new(),
            // SAFETY: all-zero is a valid msghdr; `prepare` sets what a send uses.
            msg: unsafe { std::mem::zeroed() },
        });
        let Slot {
            datagrams,
            buffers,
            msg,
        } = &mut *slot;
        buffers.prepare(datagrams, v4, msg);
        slot
    }
}

#[derive(Debug, Default)]
struct Counts {
    sends: u64,
    datagrams: u64,
    errors: u64,
    /// The first error's errno, if any.
    first_error: Option<i32>,
    notifications: u64,
    copied: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(1..=MAX_SEGMENTS).contains(&args.segments) || args.segments * args.size > MAX_RUN_BYTES {
        bail!("--segments must be 1..={MAX_SEGMENTS} and a run at most {MAX_RUN_BYTES} bytes");
    }
    if args.size == 0 || args.size > u16::MAX as usize || args.depth == 0 {
        bail!("--size and --depth must be positive, --size at most 65535");
    }
    affinity::pin_current_thread(args.cpu).context("pin the sending thread")?;

    // Nobody reads the sink: the kernel drops at its full receive buffer after the whole send
    // path has run.
    let sink = UdpSocket::bind("127.0.0.1:0").context("bind the sink")?;
    let dest = match args.dest {
        Some(dest) => dest,
        None => sink.local_addr()?,
    };
    let bind = args.bind.unwrap_or(if dest.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    });
    let socket = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
    let slots: Vec<Box<Slot>> = (0..args.depth)
        .map(|_| Slot::new(dest, args.segments, args.size, bind.is_ipv4()))
        .collect();

    let started = Instant::now();
    let cpu_before = thread_cpu()?;
    let counts = match args.mode {
        Mode::Sendmsg => run_sendmsg(&socket, &slots[0], &args)?,
        Mode::Sendmmsg => run_sendmmsg(&socket, &slots, &args)?,
        Mode::Uring | Mode::UringZc => run_uring(&socket, &slots, &args)?,
    };
    let cpu = thread_cpu()? - cpu_before;
    let elapsed = started.elapsed().as_secs_f64();
    let per = |d: Duration| d.as_nanos() as f64 / counts.datagrams.max(1) as f64;
    println!(
        "mode={:?} segments={} size={} dest={dest} sends={} datagrams={} errors={} \
         dgram_per_s={:.0} cpu_ns_per_dgram={:.0} (user {:.0}, sys {:.0}) notifications={} \
         copied={}",
        args.mode,
        args.segments,
        args.size,
        counts.sends,
        counts.datagrams,
        counts.errors,
        counts.datagrams as f64 / elapsed,
        per(cpu.user + cpu.sys),
        per(cpu.user),
        per(cpu.sys),
        counts.notifications,
        counts.copied,
    );
    drop(sink);
    if let Some(errno) = counts.first_error {
        bail!(
            "{} sends failed, the first with: {}",
            counts.errors,
            std::io::Error::from_raw_os_error(errno)
        );
    }
    Ok(())
}

fn run_sendmsg(socket: &UdpSocket, slot: &Slot, args: &Args) -> anyhow::Result<Counts> {
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut counts = Counts::default();
    while counts.datagrams < args.max_datagrams && (counts.sends % 64 != 0 || Instant::now() < end)
    {
        // SAFETY: `slot.msg` points into `slot`, which outlives the call.
        let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &slot.msg, 0) };
        counts.sends += 1;
        if sent < 0 {
            counts.errors += 1;
            counts
                .first_error
                .get_or_insert(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        } else {
            counts.datagrams += args.segments as u64;
        }
    }
    Ok(counts)
}

fn run_sendmmsg(socket: &UdpSocket, slots: &[Box<Slot>], args: &Args) -> anyhow::Result<Counts> {
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut counts = Counts::default();
    let mut messages: Vec<libc::mmsghdr> = slots
        .iter()
        .map(|slot| libc::mmsghdr {
            msg_hdr: slot.msg,
            msg_len: 0,
        })
        .collect();
    while counts.datagrams < args.max_datagrams && Instant::now() < end {
        // SAFETY: every msghdr points into `slots`, which outlive the call.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                messages.len() as _,
                0,
            )
        };
        if sent < 0 {
            counts.sends += 1;
            counts.errors += 1;
            counts
                .first_error
                .get_or_insert(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            continue;
        }
        counts.sends += sent as u64;
        counts.datagrams += sent as u64 * args.segments as u64;
    }
    Ok(counts)
}

fn run_uring(socket: &UdpSocket, slots: &[Box<Slot>], args: &Args) -> anyhow::Result<Counts> {
    let zero_copy = args.mode == Mode::UringZc;
    let entries = (args.depth * 2).next_power_of_two() as u32;
    let mut ring: IoUring<squeue::Entry, cqueue::Entry> = IoUring::builder()
        .setup_cqsize(entries * 2)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .context("io_uring with SINGLE_ISSUER/DEFER_TASKRUN (Linux 6.1+)")?;
    let fd = types::Fd(socket.as_raw_fd());
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut counts = Counts::default();
    // A slot is free once its send completed and, for zero-copy, its notification arrived.
    let mut free: Vec<usize> = (0..slots.len()).collect();
    loop {
        let sending = counts.datagrams < args.max_datagrams && Instant::now() < end;
        if !sending && free.len() == slots.len() {
            break;
        }
        while sending && let Some(index) = free.pop() {
            let msg = &raw const slots[index].msg;
            let entry = if zero_copy {
                opcode::SendMsgZc::new(fd, msg)
                    .ioprio(SEND_ZC_REPORT_USAGE)
                    .build()
            } else {
                opcode::SendMsg::new(fd, msg).build()
            };
            // SAFETY: the msghdr and everything it points at live in `slots`, which outlive
            // the ring's use of them (this function waits for every completion before it
            // returns), and a slot is reused only after its last completion.
            unsafe { ring.submission().push(&entry.user_data(index as u64)) }
                .map_err(|_| anyhow::anyhow!("submission queue full"))?;
        }
        ring.submit_and_wait(1).context("io_uring_enter")?;
        for cqe in ring.completion() {
            let index = cqe.user_data() as usize;
            if cqueue::notif(cqe.flags()) {
                counts.notifications += 1;
                if cqe.result() as u32 & NOTIF_USAGE_ZC_COPIED != 0 {
                    counts.copied += 1;
                }
                free.push(index);
                continue;
            }
            counts.sends += 1;
            if cqe.result() < 0 {
                counts.errors += 1;
                counts.first_error.get_or_insert(-cqe.result());
            } else {
                counts.datagrams += args.segments as u64;
            }
            // With zero-copy the buffers stay the kernel's until the notification, if the
            // completion says one follows.
            if !(zero_copy && cqueue::more(cqe.flags())) {
                free.push(index);
            }
        }
    }
    Ok(counts)
}

/// The calling thread's user and system CPU time (`getrusage(RUSAGE_THREAD)`): softirq work
/// the kernel does on the way out (loopback delivery included) runs in the sending thread.
struct Cpu {
    user: Duration,
    sys: Duration,
}

impl std::ops::Sub for Cpu {
    type Output = Self;
    fn sub(self, earlier: Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            sys: self.sys.saturating_sub(earlier.sys),
        }
    }
}

fn thread_cpu() -> anyhow::Result<Cpu> {
    // SAFETY: getrusage writes one rusage into the zeroed value it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Ok(Cpu {
        user: time(usage.ru_utime),
        sys: time(usage.ru_stime),
    })
}
