//! `sfu`: the media node binary. Until control drives remote nodes over QUIC, a node runs
//! inside `control` (`control dev` / `control serve`); this binary checks that a host can run
//! one: it validates the `[node]` configuration, binds every worker's port, starts the workers
//! on their cores and reports which I/O backend each got (io_uring or the portable fallback).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
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

#[derive(Debug, serde::Deserialize)]
struct File {
    #[serde(default)]
    node: NodeConfig,
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
        Command::Check { config, workers } => {
            let mut node = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    toml::from_str::<File>(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?
                        .node
                }
                None => NodeConfig::default(),
            };
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

/// Colored logs only on a terminal, and never with `NO_COLOR` set.
fn log_colors() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
