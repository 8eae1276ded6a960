//! `bench`: the SFU's benchmarks, one command each (bench/README.md).
//!
//! - `forward`: one node core's forwarding ceiling against a bare loop on the same core, the
//!   node's forwarding delay, CPU per packet and memory per subscriber, as one JSON line;
//! - `compare-janus`: the most subscribers our node and Janus VideoRoom each carry on one
//!   core behind the same veth, and the ratio.

use clap::{Parser, Subcommand};

mod bare;
mod forward;
mod generator;
mod host;
mod janus;
mod node;
mod srtp;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Reproducible benchmarks of the SFU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The highest rate one node core forwards one publisher to N subscribers at ≤ 0.1 %
    /// loss, against a bare receive → decrypt → N × (encrypt + send) loop on the same core;
    /// then the node's forwarding delay at half that rate and its memory per subscriber.
    Forward(forward::ForwardArgs),
    /// Our node and Janus VideoRoom in the same network namespace, on the same CPU, driven by
    /// the same generator: the most subscribers of one publisher each carries at ≤ 0.1 %
    /// loss, and the ratio (needs root, Janus and `sfu-load`).
    CompareJanus(janus::CompareJanusArgs),
    /// The node process `forward` starts (not for direct use).
    #[command(hide = true)]
    Node(node::NodeArgs),
}

fn main() {
    let result = match Cli::parse().command {
        Command::Forward(args) => forward::run(args),
        Command::CompareJanus(args) => janus::run(args),
        Command::Node(args) => node::serve(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
