//! The node under test: `control dev` (control with its in-process node and in-memory state)
//! with one media worker, run as a child process confined to one CPU, so that its CPU time,
//! memory and metrics are its own and not the generator's.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use sfu_core::io::IoBackend;
use tools::SignalingClient;

/// How long the node process may take to print that it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket backend of the node's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// io_uring where it can be set up, else `poll` (the node's default).
    Auto,
    #[value(name = "io_uring")]
    IoUring,
    Poll,
}

impl Backend {
    pub fn backend(self) -> IoBackend {
        match self {
            Backend::Auto => IoBackend::Auto,
            Backend::IoUring => IoBackend::IoUring,
            Backend::Poll => IoBackend::Poll,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::IoUring => "io_uring",
            Backend::Poll => "poll",
        }
    }
}

/// `bench node`: what the child process runs.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    #[arg(long, value_enum)]
    io: Backend,
    /// Send runs of datagrams to one subscriber as one UDP GSO send.
    #[arg(long)]
    gso: bool,
    /// HTTP address (port 0: any free one; the node prints the URL it got).
    #[arg(long, default_value = "127.0.0.1:0")]
    http: std::net::SocketAddr,
    /// Address media sockets bind to and ICE candidates carry (default: the node's own).
    #[arg(long)]
    advertise_ip: Option<std::net::IpAddr>,
    /// Keep downlink bandwidth estimation on (the deployment's default): for generators
    /// whose subscribers send transport-wide feedback.
    #[arg(long)]
    bandwidth_estimation: bool,
}

/// How to start the node process.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The one CPU the whole process may run on.
    pub cpu: usize,
    pub io: Backend,
    pub gso: bool,
    /// Run it inside this network namespace (`ip netns exec`; needs root).
    pub netns: Option<String>,
    pub http: std::net::SocketAddr,
    pub advertise_ip: Option<std::net::IpAddr>,
    pub bandwidth_estimation: bool,
}

impl Launch {
    /// What `forward` runs: loopback, no downlink estimation.
    pub fn loopback(cpu: usize, io: Backend, gso: bool) -> Self {
        Self {
            cpu,
            io,
            gso,
            netns: None,
            http: ([127, 0, 0, 1], 0).into(),
            advertise_ip: None,
            bandwidth_estimation: false,
        }
    }
}

/// Run control and its node until killed: the deployment's defaults (and any `SFU__…`
/// environment overrides) with one media worker, HTTP on a free loopback port, signaling limits
/// off (the benchmark opens many sessions from one address and identity), and no downlink
/// estimation unless asked for (`forward`'s subscribers count packets without answering with
/// transport-wide feedback, which an estimating node would read as a link that carries nothing).
pub fn serve(args: NodeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = control::config::Config::load(None, std::env::vars())?;
    config.http.listen = args.http;
    if let Some(ip) = args.advertise_ip {
        config.node.advertise_ip = ip;
        config.node.media_bind = ip;
    }
    config.node.workers = 1;
    config.node.io_backend = args.io.backend();
    config.node.udp_gso = args.gso;
    config.node.bandwidth_estimation = args.bandwidth_estimation;
    // Signaling limits protect a deployment; a benchmark's one room is meant to take as many
    // subscribers as the core carries (the default room cap, 1000, stopped compare-janus).
    config.limits.signaling_rate_per_sec = 0;
    config.limits.max_sessions_per_identity = 0;
    config.limits.max_sessions_per_room = 0;
    control::server::run(config, true)
}

/// A running node process.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    pub client: SignalingClient,
}

impl NodeProcess {
    /// Start `bench node` confined to its CPU (its media worker, signaling and everything
    /// else) and wait until it serves HTTP.
    pub fn start(launch: &Launch) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut command = match &launch.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        command
            .args(["node", "--io", launch.io.as_str()])
            .args(["--http", &launch.http.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if launch.gso {
            command.arg("--gso");
        }
        if let Some(ip) = launch.advertise_ip {
            command.args(["--advertise-ip", &ip.to_string()]);
        }
        if launch.bandwidth_estimation {
            command.arg("--bandwidth-estimation");
        }
        let cpu = launch.cpu;
        // A child starts with the CPUs of the thread that forks it.
        let allowed = sfu_core::affinity::allowed_cpus()?;
        sfu_core::affinity::restrict_current_thread(&[cpu])
            .with_context(|| format!("cannot run on CPU {cpu}"))?;
        let spawned = command.spawn();
        sfu_core::affinity::restrict_current_thread(&allowed)?;
        let mut child = spawned.context("cannot start the node process")?;
        let stdout = child.stdout.take().context("the node's stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end so that the node never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("SFU ready: ") {
                    let _ = tx.send(url.trim_end_matches('/').to_string());
                }
            }
        });
        let mut node = Self {
            child,
            client: SignalingClient::new("http://127.0.0.1:1"),
        };
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(url) = rx.recv_timeout(Duration::from_millis(100)) {
                node.client = SignalingClient::new(&url);
                return Ok(node);
            }
            if let Some(status) = node.child.try_wait()? {
                bail!("the node process exited before it was ready ({status}; its log is above)");
            }
            if std::time::Instant::now() > deadline {
                bail!("the node process did not start within {START_TIMEOUT:?}");
            }
        }
    }

    /// The process id (of `ip netns exec`'s successor: `ip` execs the node in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn proc(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}", self.child.id()))
    }

    /// CPU time of all the node's threads so far (nanosecond resolution, from `schedstat`).
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        thread_cpu_sum(&self.proc().join("task"))
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(self.proc().join("status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS in the node's status")
    }

    /// The node's `/metrics` text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        Ok(self.client.get_text("/metrics")?)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The summed on-CPU time of every thread under `tasks` (a `/proc/…/task` directory).
pub fn thread_cpu_sum(tasks: &std::path::Path) -> anyhow::Result<Duration> {
    let mut ns = 0u64;
    for entry in std::fs::read_dir(tasks)? {
        let path = entry?.path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(path) {
            ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Duration::from_nanos(ns))
}

/// On-CPU time of one thread of this process.
pub fn own_thread_cpu(tid: u64) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))?;
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<u64>().ok())
        .context("unreadable schedstat")?;
    Ok(Duration::from_nanos(ns))
}
