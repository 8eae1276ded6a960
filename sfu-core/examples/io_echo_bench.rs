//! Loopback echo benchmark for the worker's socket backends (see docs/io.md).
//!
//! Load threads blast `--size`-byte datagrams at a worker socket; the worker, pinned to its own
//! core, receives each one and sends a fresh copy to a sink socket (one send per datagram, as a
//! forwarding worker does), through the same `DatagramIo` trait and loop shape as
//! `worker.rs`. `tokio-uring` runs the same echo on `tokio_uring::net::UdpSocket` for comparison.
//! Prints one summary line per run: received and sent rates, and the worker's CPU time per packet.
//!
//! ```text
//! cargo run --release -p sfu-core --example io_echo_bench -- --backend io_uring --seconds 5
//! ```

#![allow(clippy::disallowed_methods)]

use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use sfu_core::affinity;
use sfu_core::io::{self, IoBackend, RECV_BUFFER_SIZE, Waker};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Datagrams the worker handles per `poll` call (the worker's `DATAGRAM_BUDGET`).
const BUDGET: usize = 256;
/// Datagrams a load thread queues per `sendmmsg` flush.
const SENDER_BATCH: usize = 64;
/// How often the worker loop checks for the end of the run when no traffic arrives.
const TICK: Duration = Duration::from_millis(10);
/// The run ends once the load is over and the worker has received nothing for this long.
const QUIET: Duration = Duration::from_millis(200);
/// Linux reports thread CPU time in `/proc` in units of USER_HZ, which is 100 on every
/// architecture's ABI (independent of the kernel's internal HZ).
const USER_HZ: u64 = 100;

#[derive(Debug, Parser)]
#[command(about = "Loopback echo benchmark of the worker socket backends")]
struct Args {
    /// Backend under test.
    #[arg(long, value_enum, default_value = "io_uring")]
    backend: Backend,
    /// Longest time the load threads send.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Datagram size in bytes.
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// Load threads (all on the sender CPU).
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Total offered rate in datagrams per second; 0 sends as fast as the load threads can.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Upper bound on datagrams sent in total.
    #[arg(long, default_value_t = 5_000_000)]
    max_packets: u64,
    /// tokio-uring only: echo tasks, i.e. receives in flight (the io_uring backend keeps 64).
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Send the echoes with UDP GSO where the kernel allows it (`node.udp_gso`). Off by
    /// default: every echo goes to the one sink, so a pass would become a few large runs,
    /// which measures GSO rather than the backend.
    #[arg(long)]
    udp_gso: bool,
    /// CPU for the worker thread (default: the first CPU this process may use).
    #[arg(long)]
    worker_cpu: Option<usize>,
    /// CPU for the load threads (default: the second CPU this process may use).
    #[arg(long)]
    sender_cpu: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// `poll(2)` + `recvmmsg`/`sendmmsg` (`sfu_core::io::poll`).
    Poll,
    /// The hand-written io_uring loop (`sfu_core::io::uring`).
    #[value(name = "io_uring")]
    IoUring,
    /// tokio-uring 0.5 `UdpSocket::recv_from`/`send_to` on its own runtime.
    #[value(name = "tokio-uring")]
    TokioUring,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Poll => "poll",
            Self::IoUring => "io_uring",
            Self::TokioUring => "tokio-uring",
        }
    }
}

/// State shared between the main thread and the worker.
#[derive(Debug, Default)]
struct Shared {
    /// Datagrams the worker received so far (the main thread watches it to time the run).
    received: AtomicU64,
    stop: AtomicBool,
}

/// What the worker thread reports at the end.
#[derive(Debug, Default)]
struct WorkerReport {
    received: u64,
    sent: u64,
    send_errors: u64,
    recv_errors: u64,
    cpu: CpuTime,
}

/// A thread's CPU time, in USER_HZ ticks.
#[derive(Debug, Default, Clone, Copy)]
struct CpuTime {
    user: u64,
    sys: u64,
}

impl CpuTime {
    /// The calling thread's user and system time so far, from `/proc/thread-self/stat`.
    fn of_this_thread() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat")
            .context("cannot read /proc/thread-self/stat")?;
        // The command name (field 2) may hold spaces and parentheses; fields after it don't.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("malformed /proc/thread-self/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the file, 12th and 13th after the name.
        let field = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .context("short /proc/thread-self/stat")?
                .parse()
                .context("bad number in /proc/thread-self/stat")
        };
        Ok(Self {
            user: field(11)?,
            sys: field(12)?,
        })
    }

    fn since(self, start: Self) -> Self {
        Self {
            user: self.user.saturating_sub(start.user),
            sys: self.sys.saturating_sub(start.sys),
        }
    }

    fn seconds(ticks: u64) -> f64 {
        ticks as f64 / USER_HZ as f64
    }
}

/// Busy time of one CPU (everything but idle and iowait), in USER_HZ ticks, from `/proc/stat`.
/// Unlike the thread's own time this includes softirq work the kernel deferred to ksoftirqd.
fn cpu_busy_ticks(cpu: usize) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(label.as_str()))
        .with_context(|| format!("no {label} line in /proc/stat"))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    Ok(values
        .iter()
        .take(8)
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4)
        .map(|(_, v)| v)
        .sum())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.size == 0 || args.size > RECV_BUFFER_SIZE {
        bail!("--size must be 1..={RECV_BUFFER_SIZE} bytes");
    }
    if args.senders == 0 {
        bail!("--senders must be at least 1");
    }
    let allowed = affinity::allowed_cpus().context("cannot read the CPU affinity mask")?;
    let worker_cpu = args
        .worker_cpu
        .or_else(|| allowed.first().copied())
        .context("no CPU allowed")?;
    let sender_cpu = args
        .sender_cpu
        .or_else(|| allowed.iter().copied().find(|&c| c != worker_cpu))
        .unwrap_or(worker_cpu);
    if sender_cpu == worker_cpu {
        eprintln!("warning: worker and load threads share CPU {worker_cpu}; figures will be low");
    }

    let worker_socket = UdpSocket::bind("127.0.0.1:0").context("bind worker socket")?;
    let target = worker_socket.local_addr()?;
    // Nobody reads the sink: once its buffer is full the kernel drops there, after the whole
    // send path has run, which is the cost we want to measure.
    let sink = UdpSocket::bind("127.0.0.1:0").context("bind sink socket")?;
    let sink_addr = sink.local_addr()?;

    let shared = Arc::new(Shared::default());
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let worker = {
        let shared = shared.clone();
        let backend = args.backend;
        let tasks = args.tasks;
        let udp_gso = args.udp_gso;
        thread::Builder::new().name("bench-worker".into()).spawn(
            move || -> anyhow::Result<(WorkerReport, &'static str)> {
                affinity::pin_current_thread(worker_cpu).context("pin worker")?;
                match backend {
                    Backend::Poll | Backend::IoUring => {
                        let kind = if backend == Backend::Poll {
                            IoBackend::Poll
                        } else {
                            IoBackend::IoUring
                        };
                        run_backend(kind, worker_socket, sink_addr, udp_gso, &shared, ready_tx)
                    }
                    Backend::TokioUring => {
                        run_tokio_uring(worker_socket, sink_addr, tasks, shared, ready_tx)
                            .map(|report| (report, "tokio-uring"))
                    }
                }
            },
        )?
    };
    if ready_rx.recv().is_err() {
        // The worker failed before it could receive: its error says why.
        let error = match worker.join() {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => anyhow::anyhow!("worker exited early"),
            Err(_) => anyhow::anyhow!("worker panicked"),
        };
        return Err(error.context(format!("backend {} failed to start", args.backend.name())));
    }

    let busy_before = cpu_busy_ticks(worker_cpu)?;
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let senders: Vec<_> = (0..args.senders)
        .map(|i| {
            let quota = args.max_packets / args.senders as u64
                + u64::from((i as u64) < args.max_packets % args.senders as u64);
            let rate = args.rate as f64 / args.senders as f64;
            let size = args.size;
            thread::Builder::new()
                .name(format!("bench-load-{i}"))
                .spawn(move || run_sender(target, size, end, quota, rate, sender_cpu))
        })
        .collect::<Result<_, _>>()?;

    // Watch the worker's counter: the active window runs from its first to its last receive.
    let mut first_rx: Option<Instant> = None;
    let mut last_rx = started;
    let mut last_count = 0;
    let mut senders_done = false;
    loop {
        thread::sleep(TICK);
        let now = Instant::now();
        let count = shared.received.load(Ordering::Relaxed);
        if count != last_count {
            first_rx.get_or_insert(now);
            last_rx = now;
            last_count = count;
        }
        senders_done = senders_done || senders.iter().all(|s| s.is_finished());
        if senders_done && now.duration_since(last_rx) >= QUIET {
            break;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let busy = cpu_busy_ticks(worker_cpu)?.saturating_sub(busy_before);

    let mut offered = 0;
    let mut offer_errors = 0;
    for sender in senders {
        let (sent, errors) = sender
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        offered += sent;
        offer_errors += errors;
    }
    let (report, name) = worker
        .join()
        .map_err(|_| anyhow::anyhow!("worker panicked"))??;

    let first_rx = first_rx.unwrap_or(started);
    let active = last_rx.saturating_duration_since(first_rx).as_secs_f64();
    let per_second = |n: u64| if active > 0.0 { n as f64 / active } else { 0.0 };
    let cpu_ticks = report.cpu.user + report.cpu.sys;
    let ns_per_packet = |ticks: u64| {
        if report.received == 0 {
            0.0
        } else {
            CpuTime::seconds(ticks) * 1e9 / report.received as f64
        }
    };
    let offered_ok = offered - offer_errors;
    let dropped = offered_ok.saturating_sub(report.received) as f64 / offered_ok.max(1) as f64;
    println!(
        "backend={name} size={} senders={} rate={} active_s={active:.2} offered={offered_ok} \
         rx={} rx_pps={:.0} tx={} tx_pps={:.0} drop={:.1}% tx_err={} rx_err={} \
         cpu_user_s={:.2} cpu_sys_s={:.2} worker_ns_per_pkt={:.0} core_ns_per_pkt={:.0}",
        args.size,
        args.senders,
        if args.rate == 0 {
            "max".to_owned()
        } else {
            args.rate.to_string()
        },
        report.received,
        per_second(report.received),
        report.sent,
        per_second(report.sent),
        dropped * 100.0,
        report.send_errors,
        report.recv_errors,
        CpuTime::seconds(report.cpu.user),
        CpuTime::seconds(report.cpu.sys),
        ns_per_packet(cpu_ticks),
        ns_per_packet(busy),
    );
    drop(sink);
    Ok(())
}

/// The worker loop over a `DatagramIo` backend: poll with a short deadline, queue one send per
/// received datagram, flush once per pass — the shape of `Worker::run`.
fn run_backend(
    kind: IoBackend,
    socket: UdpSocket,
    sink: SocketAddr,
    udp_gso: bool,
    shared: &Shared,
    ready: mpsc::SyncSender<()>,
) -> anyhow::Result<(WorkerReport, &'static str)> {
    let waker = Waker::new()?;
    // Built on this thread: an io_uring ring belongs to the thread that drives it.
    let mut io = io::build(kind, socket, &waker, udp_gso)?;
    let mut echo: Vec<Vec<u8>> = Vec::with_capacity(BUDGET);
    let mut report = WorkerReport::default();
    let cpu_start = CpuTime::of_this_thread()?;
    let _ = ready.send(());
    while !shared.stop.load(Ordering::Relaxed) {
        let outcome = io.poll(Some(Instant::now() + TICK), BUDGET, &mut |_, datagram| {
            // A forwarding worker sends a new buffer (SRTP output), not the received one.
            echo.push(datagram.to_vec());
        })?;
        if outcome.received > 0 {
            report.received += outcome.received as u64;
            shared.received.store(report.received, Ordering::Relaxed);
        }
        for datagram in echo.drain(..) {
            io.send(sink, datagram);
            report.sent += 1;
        }
        io.flush()?;
    }
    report.cpu = CpuTime::of_this_thread()?.since(cpu_start);
    let stats = io.stats();
    report.send_errors = stats.send_dropped();
    report.recv_errors = stats.recv_errors;
    // Sends the kernel refused were counted as sent above; count them once, as errors.
    report.sent -= report.send_errors.min(report.sent);
    Ok((report, io.name()))
}

/// The same echo on tokio-uring: `tasks` tasks, each awaiting `recv_from` then `send_to` of a
/// fresh copy, so up to `tasks` receives are in flight as with the io_uring backend.
fn run_tokio_uring(
    socket: UdpSocket,
    sink: SocketAddr,
    tasks: usize,
    shared: Arc<Shared>,
    ready: mpsc::SyncSender<()>,
) -> anyhow::Result<WorkerReport> {
    // Same socket set-up as the other backends (non-blocking, 4 MiB buffers): the poll backend
    // applies it to a duplicate descriptor, which shares the socket and its open file.
    drop(io::build(
        IoBackend::Poll,
        socket.try_clone()?,
        &Waker::new()?,
        false,
    )?);
    let runtime = tokio_uring::Runtime::new(&tokio_uring::builder())
        .context("tokio-uring runtime could not start")?;
    runtime.block_on(async {
        let socket = Rc::new(tokio_uring::net::UdpSocket::from_std(socket));
        let counters = Rc::new(EchoCounters::default());
        for _ in 0..tasks.max(1) {
            tokio_uring::spawn(echo_task(
                socket.clone(),
                sink,
                counters.clone(),
                shared.clone(),
            ));
        }
        let cpu_start = CpuTime::of_this_thread()?;
        let _ = ready.send(());
        while !shared.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(TICK).await;
        }
        Ok(WorkerReport {
            received: shared.received.load(Ordering::Relaxed),
            sent: counters.sent.get(),
            send_errors: counters.send_errors.get(),
            recv_errors: counters.recv_errors.get(),
            cpu: CpuTime::of_this_thread()?.since(cpu_start),
        })
    })
}

/// Counters of the tokio-uring echo tasks (all on one thread).
#[derive(Debug, Default)]
struct EchoCounters {
    sent: Cell<u64>,
    send_errors: Cell<u64>,
    recv_errors: Cell<u64>,
}

async fn echo_task(
    socket: Rc<tokio_uring::net::UdpSocket>,
    sink: SocketAddr,
    counters: Rc<EchoCounters>,
    shared: Arc<Shared>,
) {
    let mut buffer = Vec::with_capacity(RECV_BUFFER_SIZE);
    loop {
        let (result, returned) = socket.recv_from(buffer).await;
        buffer = returned;
        let len = match result {
            Ok((len, _source)) => len,
            Err(_) => {
                counters.recv_errors.set(counters.recv_errors.get() + 1);
                continue;
            }
        };
        shared.received.fetch_add(1, Ordering::Relaxed);
        let (result, _) = socket.send_to(buffer[..len].to_vec(), sink).await;
        match result {
            Ok(_) => counters.sent.set(counters.sent.get() + 1),
            Err(_) => counters.send_errors.set(counters.send_errors.get() + 1),
        }
    }
}

/// One load thread: `sendmmsg` batches of `size`-byte datagrams to `target` (through the poll
/// backend) until `end` or `quota`, paced to `rate` per second if non-zero. Returns (sent, errors).
fn run_sender(
    target: SocketAddr,
    size: usize,
    end: Instant,
    quota: u64,
    rate: f64,
    cpu: usize,
) -> anyhow::Result<(u64, u64)> {
    affinity::pin_current_thread(cpu).context("pin load thread")?;
    let waker = Waker::new()?;
    let socket = UdpSocket::bind("127.0.0.1:0").context("bind load socket")?;
    let mut io = io::build(IoBackend::Poll, socket, &waker, false)?;
    let payload = vec![0x80; size];
    let started = Instant::now();
    let mut sent = 0;
    while sent < quota {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            if due > now {
                thread::sleep(due - now);
                continue;
            }
        }
        let batch = (quota - sent).min(SENDER_BATCH as u64);
        for _ in 0..batch {
            io.send(target, payload.clone());
        }
        io.flush()?;
        sent += batch;
    }
    Ok((sent, io.stats().send_dropped()))
}
