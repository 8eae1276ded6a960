//! `sfu-load`: drives many synthetic WebRTC peers (WHIP publishers, WHEP subscribers, Janus
//! VideoRoom, or room participants over our WebSocket protocol) against an SFU and reports
//! join times, one-way latency, loss and jitter. See `tools/README.md`.
//!
//! Exit codes: 0 the run met its criteria (or none were given), 1 it missed one or no peer
//! connected, 2 invalid flags or scenario, 3 the run could not be carried out (threads,
//! sockets, report directory).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use tools::load::TokenSource;
use tools::load::engine::{self, RunOptions};
use tools::load::progress::{self, ProgressMode};
use tools::load::scenario::{
    MediaModel, ProtocolKind, ScenarioPatch, parse_duration_s, parse_latency_us, parse_percent,
    parse_rate_per_s,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXAMPLES: &str = "\
Examples:
  sfu-load --url http://127.0.0.1:8080 --rooms 10 --publishers 1 --subscribers 50 \\
           --media video-simulcast --duration 60s --ramp 20/s --report out/
  sfu-load --config scenario.toml --subscribers 200 --max-loss 1% --max-p99 50ms
  sfu-load --protocol room --rooms 10 --participants 6 --media audio-video --duration 60s
  sfu-load --protocol room --ptt --participants 500 --media audio --floor-change 2s

Against `control dev` no token flags are needed: tokens are minted with the dev key pair.
Without --max-loss, --max-p99 or --min-connected the run has no verdict (neither PASS nor FAIL);
a room run always has one: every expected stream delivered, or --min-streams.
Exit codes: 0 criteria met or none given, 1 a criterion missed or no peer connected,
2 invalid flags or scenario, 3 run failed.";

#[derive(Debug, Parser)]
#[command(
    name = "sfu-load",
    version,
    about = "Load-test an SFU with many real WebRTC peers (WHIP/WHEP, Janus, or WebSocket rooms)",
    after_help = EXAMPLES
)]
struct Cli {
    /// Scenario file (TOML, keys named like these flags); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Base URL of the server under test [default: http://127.0.0.1:8080].
    #[arg(long)]
    url: Option<String>,
    /// Signaling: whip (WHIP/WHEP), janus (Janus VideoRoom HTTP API) or room (our WebSocket
    /// room protocol: meetings, see --participants) [default: whip].
    #[arg(long, value_parser = parse_protocol)]
    protocol: Option<ProtocolKind>,
    /// Rooms [default: 1].
    #[arg(long)]
    rooms: Option<u32>,
    /// Room names are PREFIX0, PREFIX1, ... [default: load-].
    #[arg(long, value_name = "PREFIX")]
    room_prefix: Option<String>,
    /// Ask for this region on publishers' WHIP offers (?region=NAME).
    #[arg(long, value_name = "NAME")]
    publisher_region: Option<String>,
    /// Ask for this region on subscribers' WHEP offers (?region=NAME).
    #[arg(long, value_name = "NAME")]
    subscriber_region: Option<String>,
    /// Publishers per room [default: 1].
    #[arg(long)]
    publishers: Option<u32>,
    /// Subscribers per room [default: 10].
    #[arg(long)]
    subscribers: Option<u32>,
    /// With --protocol room: participants per room (at least 2), each publishing and
    /// receiving every other.
    #[arg(long)]
    participants: Option<u32>,
    /// With --protocol room: every room is a push-to-talk channel (docs/push-to-talk.md); the
    /// first --talkers participants take the floor in turn every --floor-change, everyone
    /// listens to the talkers; fails (exit 1) if audio of a participant not holding the floor
    /// reaches anyone. Needs --media audio.
    #[arg(long)]
    ptt: bool,
    /// With --ptt: participants per room who take the floor in turn [default: 3].
    #[arg(long)]
    talkers: Option<u32>,
    /// With --ptt: how often the floor passes to the next talker: 2s, 500ms [default: 2s].
    #[arg(long, value_parser = parse_duration_s, value_name = "DURATION")]
    floor_change: Option<f64>,
    /// audio, video, audio-video, video-simulcast or audio-video-simulcast [default: audio-video].
    #[arg(long, value_parser = parse_media)]
    media: Option<MediaModel>,
    /// How long to measure after ramp-up: 60s, 2m, ... [default: 30s].
    #[arg(long, value_parser = parse_duration_s)]
    duration: Option<f64>,
    /// Peers started per second during ramp-up: 20/s, 600/min [default: 20/s].
    #[arg(long, value_parser = parse_rate_per_s)]
    ramp: Option<f64>,
    /// Subscribers that leave and rejoin per second while measuring [default: 0/s].
    #[arg(long, value_parser = parse_rate_per_s)]
    churn: Option<f64>,
    /// Media packets per second all publishers together should send; sets the video bitrate.
    #[arg(long, value_name = "PPS")]
    target_pps: Option<f64>,
    /// Video bitrate of the top (or only) layer, kbit/s [default: 1000].
    #[arg(long, value_name = "KBPS")]
    video_kbps: Option<u32>,
    /// Video frames per second [default: 30].
    #[arg(long)]
    fps: Option<u32>,
    /// Time between periodic keyframes [default: 3s].
    #[arg(long, value_parser = parse_duration_s, value_name = "DURATION")]
    keyframe_interval: Option<f64>,
    /// Audio DTX: silences send a small packet every 400 ms (`--dtx=false` turns a file's off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    dtx: Option<bool>,
    /// Media threads (0: one per core) [default: 0].
    #[arg(long)]
    threads: Option<u32>,
    /// A peer not connected this long after its POST counts as failed [default: 20s].
    #[arg(long, value_parser = parse_duration_s, value_name = "DURATION")]
    connect_timeout: Option<f64>,
    /// Bearer token for every peer (else tokens are minted per peer).
    #[arg(long, env = "SFU_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// API key to mint tokens with (with --api-secret) [default: the dev key pair].
    #[arg(long, env = "SFU_API_KEY")]
    api_key: Option<String>,
    /// Secret of --api-key.
    #[arg(long, env = "SFU_API_SECRET", hide_env_values = true)]
    api_secret: Option<String>,
    /// Sample CPU% and RSS of this process (the server) each second.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Write DIR/report.json and DIR/report.html.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Legend for this run in reports [default: protocol and URL].
    #[arg(long)]
    label: Option<String>,
    /// Fail (exit 1) above this loss: 1%, 0.5%.
    #[arg(long, value_parser = parse_percent, value_name = "PERCENT")]
    max_loss: Option<f64>,
    /// Fail (exit 1) above this p99 one-way latency: 50ms, 800us.
    #[arg(long, value_parser = parse_latency_us, value_name = "LATENCY")]
    max_p99: Option<u64>,
    /// Fail (exit 1) if fewer of the planned peers connected: 99%.
    #[arg(long, value_parser = parse_percent, value_name = "PERCENT")]
    min_connected: Option<f64>,
    /// With --protocol room: fail (exit 1) if fewer remote tracks delivered media, over all
    /// participants [default: all, rooms × N × (N − 1) × kinds].
    #[arg(long, value_name = "N")]
    min_streams: Option<u64>,
    /// Address the peers' UDP sockets bind to (e.g. a veth end toward the server)
    /// [default: 127.0.0.1].
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// Threads doing signaling (blocking HTTP) [default: 4].
    #[arg(long, value_name = "N")]
    signaling_threads: Option<usize>,
    /// Send every datagram with its own system call (no UDP GSO), e.g. to compare.
    #[arg(long)]
    no_gso: bool,
    /// No live progress (the summary is still printed).
    #[arg(long, short)]
    quiet: bool,
    /// Test hook: where the server's SDP names candidate FROM, send to TO (repeatable).
    #[arg(long, value_parser = parse_override, hide = true, value_name = "FROM=TO")]
    remote_override: Vec<(SocketAddr, SocketAddr)>,
}

fn parse_protocol(s: &str) -> Result<ProtocolKind, String> {
    s.parse()
}

fn parse_media(s: &str) -> Result<MediaModel, String> {
    s.parse()
}

fn parse_override(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (from, to) = s
        .split_once('=')
        .ok_or_else(|| format!("\"{s}\" is not FROM=TO (two ip:port addresses)"))?;
    let addr = |a: &str| {
        a.trim()
            .parse::<SocketAddr>()
            .map_err(|_| format!("\"{a}\" is not an ip:port address"))
    };
    Ok((addr(from)?, addr(to)?))
}

impl Cli {
    fn patch(&self) -> ScenarioPatch {
        ScenarioPatch {
            url: self.url.clone(),
            protocol: self.protocol,
            rooms: self.rooms,
            room_prefix: self.room_prefix.clone(),
            publisher_region: self.publisher_region.clone(),
            subscriber_region: self.subscriber_region.clone(),
            publishers: self.publishers,
            subscribers: self.subscribers,
            media: self.media,
            duration_s: self.duration,
            ramp_per_s: self.ramp,
            churn_per_s: self.churn,
            target_pps: self.target_pps,
            video_kbps: self.video_kbps,
            video_fps: self.fps,
            keyframe_interval_s: self.keyframe_interval,
            audio_dtx: self.dtx,
            threads: self.threads,
            connect_timeout_s: self.connect_timeout,
            max_loss_pct: self.max_loss,
            max_p99_us: self.max_p99,
            min_connected_pct: self.min_connected,
            min_streams: self.min_streams,
            participants: self.participants,
            ptt: self.ptt.then_some(true),
            talkers: self.talkers,
            floor_change_s: self.floor_change,
            label: self.label.clone(),
        }
    }

    /// `--token` wins; else `--api-key` with `--api-secret`; else the dev key pair.
    fn tokens(&self) -> Result<TokenSource, String> {
        if let Some(token) = &self.token {
            return Ok(TokenSource::Fixed(token.clone()));
        }
        match (&self.api_key, &self.api_secret) {
            (Some(key), Some(secret)) => Ok(TokenSource::Mint {
                api_key: key.clone(),
                api_secret: secret.clone(),
                ttl: Duration::from_secs(24 * 3600),
            }),
            (None, None) => Ok(TokenSource::dev()),
            (Some(_), None) => Err("--api-key needs --api-secret".into()),
            (None, Some(_)) => Err("--api-secret needs --api-key".into()),
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}\n\nFor more information, try 'sfu-load --help'.");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let file = match &cli.config {
        Some(path) => match ScenarioPatch::from_file(path) {
            Ok(p) => p,
            Err(e) => return usage_error(&e),
        },
        None => ScenarioPatch::default(),
    };
    let patch = file.overridden_by(&cli.patch());
    let (scenario, notes) = match patch.build() {
        Ok(s) => s,
        Err(e) => return usage_error(&e.to_string()),
    };
    let tokens = match cli.tokens() {
        Ok(t) => t,
        Err(e) => return usage_error(&e),
    };
    let planned = scenario.planned_peers();
    // A socket per peer, plus the HTTP connections and a margin.
    if let Err(e) = os::raise_fd_limit(planned + 256) {
        return usage_error(&format!(
            "{planned} peers need about {} open files: {e}",
            planned + 256
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    os::stop_on_interrupt(&stop);

    let mode = if cli.quiet {
        ProgressMode::Off
    } else {
        ProgressMode::detect()
    };
    for note in &notes {
        println!("note: {note}");
    }
    let options = RunOptions {
        tokens,
        remote_overrides: cli.remote_override.clone(),
        server_pid: cli.server_pid,
        label: patch.label.clone(),
        progress: mode,
        gso: !cli.no_gso,
        signaling_threads: cli.signaling_threads.unwrap_or(0),
        bind_ip: cli.bind.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        stop: Some(stop.clone()),
        ..RunOptions::default()
    };
    let report = match engine::run(&scenario, &options) {
        Ok(r) => r,
        Err(engine::LoadError::Scenario(e)) => return usage_error(&e.to_string()),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    print!("{}", progress::summary_table(&report));
    if let Some(dir) = &cli.report {
        if let Err(e) = engine::write_report(dir, &report) {
            eprintln!("error: cannot write the report to {}: {e}", dir.display());
            return ExitCode::from(3);
        }
        println!(
            "report: {} and {}",
            dir.join("report.json").display(),
            dir.join("report.html").display()
        );
    }
    if report.verdict.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The two process-wide settings that need a system call the standard library lacks.
mod os {
    use std::sync::Arc;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Raises the soft limit on open files to `needed` (up to the hard limit).
    pub fn raise_fd_limit(needed: u64) -> Result<(), String> {
        let (soft, hard) = fd_limits().map_err(|e| format!("cannot read RLIMIT_NOFILE: {e}"))?;
        if soft >= needed {
            return Ok(());
        }
        if hard < needed {
            return Err(format!(
                "the hard limit is {hard} (raise it, e.g. `ulimit -Hn {needed}` as root)"
            ));
        }
        set_fd_limit(needed, hard).map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))
    }

    #[allow(unsafe_code)]
    // `rlim_t` is u64 here but narrower on some targets.
    #[allow(clippy::unnecessary_cast)]
    fn fd_limits() -> std::io::Result<(u64, u64)> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((limit.rlim_cur as u64, limit.rlim_max as u64))
    }

    #[allow(unsafe_code)]
    fn set_fd_limit(soft: u64, hard: u64) -> std::io::Result<()> {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: `limit` is a valid rlimit read by the call only.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

    #[allow(unsafe_code)]
    extern "C" fn on_interrupt(_signal: libc::c_int) {
        // Only async-signal-safe work here: atomics and _exit.
        if let Some(stop) = STOP.get() {
            if stop.swap(true, Ordering::Relaxed) {
                // Second Ctrl-C: leave now.
                // SAFETY: _exit is async-signal-safe and takes no pointers.
                unsafe { libc::_exit(130) };
            }
        }
    }

    /// The first Ctrl-C (or SIGTERM) sets `stop`: the run ends early, deletes its sessions and
    /// still reports. The second exits at once.
    #[allow(unsafe_code)]
    pub fn stop_on_interrupt(stop: &Arc<AtomicBool>) {
        if STOP.set(stop.clone()).is_err() {
            return;
        }
        let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler is an `extern "C"` function that only touches an atomic
            // (set before the handler is installed) and calls `_exit`.
            unsafe {
                libc::signal(signal, handler);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_fd_limit_can_be_read() {
            let (soft, hard) = super::fd_limits().expect("getrlimit");
            assert!(soft <= hard);
            assert!(super::raise_fd_limit(soft).is_ok());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_units() {
        let cli = Cli::try_parse_from([
            "sfu-load",
            "--url",
            "http://127.0.0.1:8080",
            "--rooms",
            "10",
            "--subscribers",
            "50",
            "--media",
            "video-simulcast",
            "--duration",
            "60s",
            "--ramp",
            "20/s",
            "--max-loss",
            "1%",
            "--max-p99",
            "50ms",
            "--dtx",
            "--remote-override",
            "127.0.0.1:5000=127.0.0.1:6000",
        ])
        .expect("parses");
        let (s, _) = cli.patch().build().expect("valid");
        assert_eq!(s.rooms, 10);
        assert_eq!(s.media, MediaModel::VideoSimulcast);
        assert_eq!(s.duration_s, 60.0);
        assert_eq!(s.ramp_per_s, 20.0);
        assert_eq!(s.criteria.max_loss_pct, Some(1.0));
        assert_eq!(s.criteria.max_p99_us, Some(50_000));
        assert!(s.audio_dtx);
        assert_eq!(cli.remote_override.len(), 1);
        assert!(matches!(cli.tokens(), Ok(TokenSource::Mint { .. })));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            vec!["sfu-load", "--duration", "6x"],
            vec!["sfu-load", "--ramp", "fast"],
            vec!["sfu-load", "--media", "smell"],
            vec!["sfu-load", "--max-loss", "lots"],
            vec!["sfu-load", "--rooms", "-1"],
            vec!["sfu-load", "--remote-override", "1.2.3.4"],
            vec!["sfu-load", "--bogus"],
        ] {
            let err = Cli::try_parse_from(&args).expect_err(&args.join(" "));
            assert_eq!(err.exit_code(), 2, "{}", args.join(" "));
        }
        let cli = Cli::try_parse_from(["sfu-load", "--api-key", "k"]).expect("parses");
        if std::env::var_os("SFU_API_SECRET").is_none() {
            assert!(cli.tokens().is_err());
        }
        let cli =
            Cli::try_parse_from(["sfu-load", "--token", "t", "--api-key", "k"]).expect("parses");
        assert!(matches!(cli.tokens(), Ok(TokenSource::Fixed(_))));
    }

    #[test]
    fn room_runs_take_participants_and_refuse_the_other_shapes() {
        let build = |args: &[&str]| {
            let mut all = vec!["sfu-load"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).expect("parses").patch().build()
        };
        let (s, _) =
            build(&["--protocol", "room", "--rooms", "10", "--participants", "6"]).expect("valid");
        assert_eq!(
            s.planned_peers(),
            10 * 6 * 2,
            "two connections per participant"
        );
        assert_eq!(
            s.expected_streams(),
            10 * 6 * 5 * 2,
            "audio and video of the 5 others"
        );
        for (args, key) in [
            (
                vec!["--protocol", "room", "--participants", "1"],
                "participants",
            ),
            (vec!["--protocol", "room"], "participants"),
            (
                vec![
                    "--protocol",
                    "room",
                    "--participants",
                    "3",
                    "--publishers",
                    "2",
                ],
                "publishers",
            ),
            (
                vec![
                    "--protocol",
                    "room",
                    "--participants",
                    "3",
                    "--subscribers",
                    "2",
                ],
                "subscribers",
            ),
            (vec!["--participants", "3"], "participants"),
            (
                vec![
                    "--protocol",
                    "room",
                    "--participants",
                    "3",
                    "--churn",
                    "1/s",
                ],
                "churn",
            ),
            (
                vec![
                    "--protocol",
                    "room",
                    "--participants",
                    "3",
                    "--min-streams",
                    "13",
                ],
                "min-streams",
            ),
            (vec!["--min-streams", "1"], "min-streams"),
        ] {
            let err = build(&args).expect_err(&args.join(" "));
            assert_eq!(err.key, key, "{}: {err}", args.join(" "));
        }
    }

    #[test]
    fn push_to_talk_runs_are_audio_room_runs_with_talkers() {
        let build = |args: &str| {
            let mut all = vec!["sfu-load", "--protocol", "room"];
            all.extend(args.split_whitespace());
            Cli::try_parse_from(all).expect("parses").patch().build()
        };
        let (s, _) = build("--ptt --participants 500 --media audio").expect("valid");
        let ptt = s.ptt.expect("a ptt run");
        assert_eq!((ptt.talkers, ptt.floor_change_s), (3, 2.0));
        // 497 listeners hear 3 talkers, each talker the 2 others.
        assert_eq!(s.expected_streams(), 497 * 3 + 3 * 2);
        let (s, _) =
            build("--ptt --participants 10 --media audio --talkers 4 --floor-change 500ms")
                .expect("valid");
        assert_eq!(s.ptt.map(|p| (p.talkers, p.floor_change_s)), Some((4, 0.5)));
        for (args, key) in [
            ("--ptt --participants 10", "ptt"),
            (
                "--ptt --participants 10 --media audio --talkers 1",
                "talkers",
            ),
            (
                "--ptt --participants 3 --media audio --talkers 4",
                "talkers",
            ),
            ("--participants 10 --media audio --talkers 3", "talkers"),
            (
                "--ptt --participants 10 --media audio --floor-change 100ms",
                "floor-change",
            ),
        ] {
            let err = build(args).expect_err(args);
            assert_eq!(err.key, key, "{args}: {err}");
        }
    }
}
