//! `sfu`: the media node binary. `sfu run` starts a node that joins control over QUIC
//! (README: Several hosts); `sfu check` checks that a host can run one: it validates the
//! `[node]` configuration, binds every worker's port, starts the workers on their cores and
//! reports which I/O backend each got (io_uring or the portable fallback).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sfu_core::uplink::{self, UplinkConfig};
use sfu_core::watchdog;
use sfu_core::{Node, NodeConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "sfu", version, about = "Thread-per-core WebRTC media node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a media node that joins control's cluster over QUIC and serves its sessions.
    Run(RunArgs),
    /// Validate the node configuration and start (then stop) the workers once, printing what
    /// each got: port, CPU pinning and I/O backend. Exits non-zero on any problem.
    Check {
        /// TOML file; only its `[node]` table is read.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override node.workers.
        #[arg(long)]
        workers: Option<usize>,
    },
}

/// `sfu run`'s flags; each also reads an `SFU__SECTION__KEY` variable and overrides the
/// configuration file's `[node]` / `[cluster]` key of the same name.
#[derive(Debug, Args)]
struct RunArgs {
    /// TOML file with `[node]` and `[cluster]` tables.
    #[arg(long, env = "SFU_CONFIG")]
    config: Option<PathBuf>,
    /// Control's cluster address, HOST:PORT (cluster.control).
    #[arg(long, env = "SFU__CLUSTER__CONTROL")]
    control: Option<String>,
    /// This node's name, unique in the cluster (node.id).
    #[arg(long, env = "SFU__NODE__ID")]
    node_id: Option<String>,
    /// The cluster secret, at least 16 bytes (cluster.secret).
    #[arg(long, env = "SFU__CLUSTER__SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Control's certificate, PEM (cluster.control_cert); the only one this node accepts.
    #[arg(long, env = "SFU__CLUSTER__CONTROL_CERT")]
    control_cert: Option<PathBuf>,
    /// Where this node is; clients may ask for a region (cluster.region).
    #[arg(long, env = "SFU__CLUSTER__REGION")]
    region: Option<String>,
    /// Address put in ICE candidates (node.advertise_ip); media binds to it too unless
    /// --media-bind or node.media_bind says otherwise.
    #[arg(long, env = "SFU__NODE__ADVERTISE_IP")]
    advertise_ip: Option<IpAddr>,
    /// Address the media sockets bind to (node.media_bind), e.g. 0.0.0.0 behind 1:1 NAT.
    #[arg(long, env = "SFU__NODE__MEDIA_BIND")]
    media_bind: Option<IpAddr>,
    /// UDP port of worker 0 (node.media_port_base).
    #[arg(long, env = "SFU__NODE__MEDIA_PORT_BASE")]
    media_port_base: Option<u16>,
    /// Media worker threads, 0 = one per allowed CPU (node.workers).
    #[arg(long, env = "SFU__NODE__WORKERS")]
    workers: Option<usize>,
    /// UDP port of the relay endpoint for rooms that span nodes (node.relay_port; default
    /// 7402, 0 = any free port).
    #[arg(long, env = "SFU__NODE__RELAY_PORT")]
    relay_port: Option<u16>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    node: NodeConfig,
    #[serde(default)]
    cluster: ClusterFile,
}

/// `[cluster]` as the node reads it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    control: Option<String>,
    secret: Option<String>,
    control_cert: Option<PathBuf>,
    region: Option<String>,
}

fn read_file(path: Option<&Path>) -> anyhow::Result<File> {
    let Some(path) = path else {
        return Ok(File::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str::<File>(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_colors())
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_node(args),
        Command::Check { config, workers } => {
            let mut node = read_file(config.as_deref())?.node;
            if let Some(w) = workers {
                node.workers = w;
            }
            let started = Node::start(node).context("node cannot start")?;
            let stats = started.stats();
            println!("io backend: {}", stats.io_backend);
            for w in &stats.workers {
                println!("worker {}: udp port {}", w.worker, w.port);
            }
            drop(started);
            println!("ok");
            Ok(())
        }
    }
}

/// The relay endpoint's port when neither flag nor file says (docs/cascade.md).
const DEFAULT_RELAY_PORT: u16 = 7402;

fn run_node(args: RunArgs) -> anyhow::Result<()> {
    let File { mut node, cluster } = read_file(args.config.as_deref())?;
    let drain_timeout = std::time::Duration::from_secs(node.drain_timeout_secs);
    if let Some(id) = args.node_id {
        node.id = id
            .parse()
            .map_err(|e| anyhow::anyhow!("--node-id {id:?}: {e}"))?;
    }
    if let Some(ip) = args.advertise_ip {
        node.advertise_ip = ip;
        // Bind where we advertise, unless the file chose another bind address.
        if node.media_bind == NodeConfig::default().media_bind {
            node.media_bind = ip;
        }
    }
    if let Some(ip) = args.media_bind {
        node.media_bind = ip;
    }
    if let Some(port) = args.media_port_base {
        node.media_port_base = port;
    }
    if let Some(w) = args.workers {
        node.workers = w;
    }
    node.relay_port = args
        .relay_port
        .or(node.relay_port)
        .or(Some(DEFAULT_RELAY_PORT));
    let missing = |flag: &str, key: &str| anyhow::anyhow!("give {flag} or set cluster.{key}");
    let uplink = UplinkConfig {
        control: args
            .control
            .or(cluster.control)
            .ok_or_else(|| missing("--control HOST:PORT", "control"))?,
        secret: args
            .cluster_secret
            .or(cluster.secret)
            .ok_or_else(|| missing("--cluster-secret", "secret"))?,
        control_cert: args
            .control_cert
            .or(cluster.control_cert)
            .ok_or_else(|| missing("--control-cert PEM_FILE", "control_cert"))?,
        region: args.region.or(cluster.region),
    };
    if node.id.as_str() == NodeConfig::default().id.as_str() {
        anyhow::bail!("give the node a name unique in the cluster: --node-id or node.id");
    }

    // The node starts first, on this thread, so its workers keep the normal priority; what
    // follows (the link to control) runs on the spare CPUs, if any, and below the workers.
    let node = Arc::new(Node::start(node).context("node cannot start")?);
    node.cpus().confine_to_spare("uplink");
    if let Err(e) = sfu_core::affinity::lower_current_thread_priority(5) {
        tracing::debug!(error = %e, "could not lower the uplink thread's priority");
    }
    let events = node
        .take_events()
        .context("the node's event stream is already taken")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let link = tokio::spawn(uplink::run(node.clone(), uplink, events, stop_rx));
        let watched = node.clone();
        let watchdog = watchdog::watch(
            move || {
                let health = watched.health();
                async move { health.workers_up }
            },
            watchdog::PERIOD,
        );
        let outcome = tokio::select! {
            stopped = watchdog => Err(anyhow::Error::new(stopped)),
            signal = drain_then_stop(&node, drain_timeout) => {
                tracing::info!(signal, "stopping");
                Ok(())
            }
            ended = link => match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::Error::new(e)),
                Err(e) => Err(anyhow::anyhow!("the uplink task failed: {e}")),
            },
        };
        let _ = stop_tx.send(true);
        outcome
    });
    drop(runtime);
    if let Err(e) = &result {
        if e.is::<watchdog::WorkersStopped>() {
            eprintln!("error: {e:#}");
            std::process::exit(watchdog::EXIT_CODE);
        }
    }
    result
}

/// On the first SIGTERM or SIGINT, drain: control places no new rooms here, and the node
/// waits until its sessions have ended or `timeout` has passed (their clients then re-POST
/// and land elsewhere). A second signal stops at once.
async fn drain_then_stop(node: &Node, timeout: std::time::Duration) -> &'static str {
    let first = shutdown_signal().await;
    node.drain();
    let held = node.held_sessions().len();
    tracing::info!(
        signal = first,
        sessions = held,
        timeout_secs = timeout.as_secs(),
        "draining"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            second = shutdown_signal() => {
                tracing::warn!(signal = second, sessions = node.held_sessions().len(), "second signal: stopping without waiting");
                return second;
            }
            _ = tick.tick() => {
                let held = node.held_sessions().len();
                if held == 0 {
                    tracing::info!("drained: no session left");
                    return first;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(sessions = held, "drain timeout (node.drain_timeout_secs): ending the remaining sessions");
                    return first;
                }
            }
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Colored logs only on a terminal, and never with `NO_COLOR` set.
fn log_colors() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
