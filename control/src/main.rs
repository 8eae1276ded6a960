//! `control`: the control-plane binary.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use control::auth::{self, Grants};
use control::config::Config;
use control::watchdog::{self, WorkersStopped};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "control",
    version,
    about = "SFU control plane: WHIP/WHEP signaling, auth, metrics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Embedded default for development: control + in-process node + in-memory state, trusting
    /// the public dev key. Prints the demo page URL.
    Dev(ServeArgs),
    /// Run with a configuration file (production): only the configured API keys are trusted.
    Serve(ServeArgs),
    /// Print an access token.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file (see README: Configuration).
    #[arg(long, env = "SFU_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address (overrides http.listen). Port 0 picks a free port.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Media worker threads (overrides node.workers; 0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// UDP port of worker 0 (overrides node.media_port_base).
    #[arg(long)]
    media_port_base: Option<u16>,
    /// Address media sockets bind to (overrides node.media_bind; defaults to --advertise-ip
    /// when only that is given).
    #[arg(long)]
    media_bind: Option<IpAddr>,
    /// Address put in ICE candidates (overrides node.advertise_ip).
    #[arg(long)]
    advertise_ip: Option<IpAddr>,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The room the token is for; an `--admin` token without a room acts in every room and
    /// on the admin API.
    #[arg(long, required_unless_present = "admin")]
    room: Option<String>,
    #[arg(long)]
    identity: String,
    #[arg(long)]
    publish: bool,
    #[arg(long)]
    subscribe: bool,
    #[arg(long)]
    admin: bool,
    /// Push to talk: the token's floor requests take the floor at once.
    #[arg(long)]
    moderator: bool,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Sign with the development key pair that `control dev` trusts.
    #[arg(long, conflicts_with_all = ["api_key", "api_secret"])]
    dev: bool,
    /// API key (JWT `kid`); needs --api-secret.
    #[arg(long, env = "SFU_API_KEY", requires = "api_secret")]
    api_key: Option<String>,
    #[arg(long, env = "SFU_API_SECRET", requires = "api_key")]
    api_secret: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Token(args) => token(args),
        Command::Dev(args) => run(args, true),
        Command::Serve(args) => run(args, false),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        // A stopped media worker gets its own status (the supervisor restarts on any failure).
        let code = if e.chain().any(|c| c.is::<WorkersStopped>()) {
            watchdog::EXIT_CODE
        } else {
            1
        };
        std::process::exit(code);
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let (key, secret) = match (args.dev, args.api_key, args.api_secret) {
        (true, _, _) => (
            auth::DEV_API_KEY.to_string(),
            auth::DEV_API_SECRET.to_string(),
        ),
        (false, Some(k), Some(s)) => (k, s),
        _ => anyhow::bail!("give --dev, or --api-key and --api-secret"),
    };
    if !(args.publish || args.subscribe || args.admin) {
        anyhow::bail!("a token needs at least one grant: --publish, --subscribe or --admin");
    }
    let grants = Grants {
        publish: args.publish,
        subscribe: args.subscribe,
        admin: args.admin,
        moderator: args.moderator,
    };
    let token = auth::mint(
        &key,
        &secret,
        args.room.as_deref().unwrap_or(auth::EVERY_ROOM),
        &args.identity,
        grants,
        auth::unix_now(),
        args.ttl,
    )
    .context("cannot sign the token")?;
    println!("{token}");
    Ok(())
}

fn run(args: ServeArgs, dev: bool) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_colors())
        .init();
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(http) = args.http {
        config.http.listen = http;
    }
    if let Some(w) = args.workers {
        config.node.workers = w;
    }
    if let Some(p) = args.media_port_base {
        config.node.media_port_base = p;
    }
    if let Some(ip) = args.advertise_ip {
        config.node.advertise_ip = ip;
        if args.media_bind.is_none() {
            config.node.media_bind = ip;
        }
    }
    if let Some(ip) = args.media_bind {
        config.node.media_bind = ip;
    }
    control::server::run(config, dev)
}

/// Colored logs only on a terminal, and never with `NO_COLOR` set.
fn log_colors() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
