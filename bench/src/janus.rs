//! `compare-janus`: our node and Janus VideoRoom, one after the other, in the same network
//! namespace behind the same veth (`bench/janus/start.sh`), each confined to the same CPU and
//! driven by the same generator (`sfu-load`: one room, one publisher of audio and video, N
//! subscribers, the generator on the other CPU). For each server, the highest N at which every
//! peer connects and the subscribers lose at most `--max-loss-pct` of the packets; then the
//! ratio, as one JSON line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::Serialize;
use tools::load::Report;

use crate::host;
use crate::node::{Backend, Launch, NodeProcess};

/// Each step grows the subscriber count by this factor until one fails, then bisects.
const GROWTH: f64 = 1.5;
/// The namespace and addresses `bench/janus/start.sh` sets up (its defaults).
const NETNS: &str = "janus";
const SERVER_ADDR: &str = "10.77.0.1";
const GENERATOR_ADDR: &str = "10.77.0.2";
/// Where the script keeps Janus's pid (its default `JANUS_RUN_DIR`).
const JANUS_PID_FILE: &str = "/run/sfu-janus/janus.pid";
/// A generator above this share of its CPU may be the limit, not the server.
const GENERATOR_BOUND_PCT: f64 = 90.0;

#[derive(Debug, clap::Args)]
pub struct CompareJanusArgs {
    /// Subscribers in the first step; each next step has 1.5 times as many until one fails,
    /// then the search bisects.
    #[arg(long, default_value_t = 50)]
    fanout: usize,
    /// Stop growing past this many subscribers.
    #[arg(long, default_value_t = 2000)]
    max_fanout: usize,
    /// Bisections after the first failing step.
    #[arg(long, default_value_t = 3)]
    bisections: u32,
    /// Seconds each step measures, after every peer has joined.
    #[arg(long, default_value_t = 20)]
    step_secs: u64,
    /// Peers joining per second in each step.
    #[arg(long, default_value_t = 100)]
    ramp_per_sec: u32,
    /// Highest loss a step may have and pass.
    #[arg(long, default_value_t = 0.1)]
    max_loss_pct: f64,
    /// The publisher's video bitrate (it also sends Opus audio).
    #[arg(long, default_value_t = 1000)]
    video_kbps: u32,
    /// Our node's socket backend.
    #[arg(long, value_enum, default_value = "auto")]
    io: Backend,
    /// The CPU both servers are confined to.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// The CPU the generator runs on.
    #[arg(long, default_value_t = 1)]
    generator_cpu: usize,
    /// Leave Janus and its namespace up afterwards (`bench/janus/start.sh stop` removes them).
    #[arg(long)]
    keep_janus: bool,
    /// Print one JSON line only (without it, each step as it ends, then the JSON indented).
    #[arg(long)]
    json: bool,
}

/// One load run at a subscriber count.
#[derive(Debug, Clone, Serialize)]
struct Step {
    subscribers: usize,
    passed: bool,
    connected: u64,
    planned: u64,
    loss_pct: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    server_cpu_pct_mean: f64,
    server_rss_mb_max: f64,
    generator_cpu_pct_max: f64,
}

/// One server's search.
#[derive(Debug, Serialize)]
struct ServerResult {
    /// The highest subscriber count that passed (0: not even the first step).
    max_subscribers: usize,
    /// The step that set it.
    at_max: Option<Step>,
    /// A step stopped the search because the generator, not the server, was near its limit.
    generator_bound: bool,
    steps: Vec<Step>,
}

#[derive(Debug, Serialize)]
struct Comparison {
    bench: &'static str,
    media: &'static str,
    video_kbps: u32,
    max_loss_pct: f64,
    step_secs: u64,
    io: &'static str,
    sfu: ServerResult,
    janus: ServerResult,
    /// `sfu.max_subscribers / janus.max_subscribers`.
    ratio: f64,
    janus_version: String,
    machine: String,
    kernel: String,
    commit: String,
}

pub fn run(args: CompareJanusArgs) -> anyhow::Result<()> {
    if !running_as_root() {
        bail!("compare-janus needs root: it runs both servers in a network namespace");
    }
    anyhow::ensure!(args.fanout > 0, "--fanout must be at least 1");
    let load = sibling("sfu-load")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("janus/start.sh");

    let janus_url = start_janus(&script)?;
    let result = compare(&args, &load, &janus_url);
    if !args.keep_janus {
        let _ = Command::new("bash").arg(&script).arg("stop").status();
    }
    let comparison = result?;
    if args.json {
        println!("{}", serde_json::to_string(&comparison)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    }
    Ok(())
}

fn compare(args: &CompareJanusArgs, load: &Path, janus_url: &str) -> anyhow::Result<Comparison> {
    let janus_pid: u32 = std::fs::read_to_string(JANUS_PID_FILE)
        .context("reading Janus's pid")?
        .trim()
        .parse()
        .context("Janus's pid file")?;
    // Every thread of Janus, now and later, on the server CPU.
    let pinned = Command::new("taskset")
        .args(["-acp", &args.server_cpu.to_string(), &janus_pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset")?;
    anyhow::ensure!(
        pinned.success(),
        "could not confine Janus to CPU {}",
        args.server_cpu
    );
    let janus_version = janus_version(janus_url);

    // Ours first, while Janus idles (it takes well under 1 % of a core then).
    let launch = Launch {
        cpu: args.server_cpu,
        io: args.io,
        gso: true,
        netns: Some(NETNS.into()),
        http: format!("{SERVER_ADDR}:0").parse()?,
        advertise_ip: Some(SERVER_ADDR.parse()?),
        bandwidth_estimation: true,
    };
    let sfu = {
        let node = NodeProcess::start(&launch)?;
        let url = node.client.base().to_string();
        search(args, "sfu", |n| {
            load_step(args, load, &url, node.pid(), None, n)
        })?
    };
    let janus = search(args, "janus", |n| {
        load_step(args, load, janus_url, janus_pid, Some("janus"), n)
    })?;
    let ratio = if janus.max_subscribers == 0 {
        0.0
    } else {
        (sfu.max_subscribers as f64 / janus.max_subscribers as f64 * 100.0).round() / 100.0
    };
    Ok(Comparison {
        bench: "compare-janus",
        media: "audio-video",
        video_kbps: args.video_kbps,
        max_loss_pct: args.max_loss_pct,
        step_secs: args.step_secs,
        io: args.io.as_str(),
        sfu,
        janus,
        ratio,
        janus_version,
        machine: host::machine(),
        kernel: host::kernel(),
        commit: host::commit(),
    })
}

/// The highest subscriber count that passes: grow by [`GROWTH`] from `--fanout` until a step
/// fails (or `--max-fanout`), then bisect between the last pass (or 0) and the first failure.
fn search(
    args: &CompareJanusArgs,
    server: &str,
    mut step: impl FnMut(usize) -> anyhow::Result<Step>,
) -> anyhow::Result<ServerResult> {
    let mut steps: Vec<Step> = Vec::new();
    // Index in `steps` of the highest passing step.
    let mut best: Option<usize> = None;
    let mut generator_bound = false;
    // Run one step, record it; whether it passed.
    let mut run = |n: usize| -> anyhow::Result<bool> {
        let s = step(n)?;
        if !args.json {
            report(server, &s);
        }
        if s.passed {
            best = Some(steps.len());
        } else {
            generator_bound |= s.generator_cpu_pct_max > GENERATOR_BOUND_PCT;
        }
        let passed = s.passed;
        steps.push(s);
        Ok(passed)
    };
    let mut n = args.fanout;
    let mut low = 0; // the highest count that passed
    let mut failed_at = None;
    loop {
        if !run(n)? {
            failed_at = Some(n);
            break;
        }
        low = n;
        if n >= args.max_fanout {
            break;
        }
        n = ((n as f64 * GROWTH).ceil() as usize).min(args.max_fanout);
    }
    if let Some(mut high) = failed_at {
        for _ in 0..args.bisections {
            let mid = (low + high) / 2;
            if mid <= low || mid >= high {
                break;
            }
            if run(mid)? {
                low = mid;
            } else {
                high = mid;
            }
        }
    }
    let at_max = best.map(|i| steps[i].clone());
    Ok(ServerResult {
        max_subscribers: at_max.as_ref().map_or(0, |b| b.subscribers),
        at_max,
        generator_bound,
        steps,
    })
}

/// One line on stderr per step, for a reader watching the search.
fn report(server: &str, s: &Step) {
    eprintln!(
        "{server}: {:>5} subscribers: {}/{} connected, loss {:.3} %, p99 {:.0} ms, server CPU {:.0} %, generator CPU max {:.0} %{}",
        s.subscribers,
        s.connected,
        s.planned,
        s.loss_pct,
        s.latency_p99_ms,
        s.server_cpu_pct_mean,
        s.generator_cpu_pct_max,
        if s.passed { "" } else { "  (failed)" }
    );
}

/// One `sfu-load` run of `subscribers` subscribers against `url`.
fn load_step(
    args: &CompareJanusArgs,
    load: &Path,
    url: &str,
    server_pid: u32,
    protocol: Option<&str>,
    subscribers: usize,
) -> anyhow::Result<Step> {
    let dir = std::env::temp_dir().join(format!(
        "compare-janus-{}-{}-{subscribers}",
        std::process::id(),
        protocol.unwrap_or("sfu")
    ));
    let mut command = Command::new("taskset");
    command
        .args(["-c", &args.generator_cpu.to_string()])
        .arg(load)
        .args(["--url", url, "--bind", GENERATOR_ADDR, "-q"])
        .args(["--server-pid", &server_pid.to_string()])
        .args(["--rooms", "1", "--publishers", "1"])
        .args(["--subscribers", &subscribers.to_string()])
        .args(["--media", "audio-video"])
        .args(["--video-kbps", &args.video_kbps.to_string()])
        .args(["--duration", &format!("{}s", args.step_secs)])
        .args(["--ramp", &format!("{}/s", args.ramp_per_sec)])
        .arg("--report")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(protocol) = protocol {
        command.args(["--protocol", protocol]);
    }
    // sfu-load exits non-zero when its own pass criteria fail; the report still says what
    // happened, and that is what is judged here.
    let status = command.status().context("running sfu-load")?;
    let report_path = dir.join("report.json");
    let text = std::fs::read_to_string(&report_path)
        .with_context(|| format!("sfu-load wrote no report ({status}); its output is above"))?;
    let report: Report = serde_json::from_str(&text).context("reading sfu-load's report")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(judge(args, subscribers, &report))
}

fn judge(args: &CompareJanusArgs, subscribers: usize, report: &Report) -> Step {
    let peers = &report.peers;
    let loss = report.packets.loss_pct;
    let server = report.server.as_ref();
    Step {
        subscribers,
        passed: peers.connected == peers.planned
            && report.packets.received > 0
            && loss <= args.max_loss_pct,
        connected: peers.connected,
        planned: peers.planned,
        loss_pct: loss,
        latency_p50_ms: round1(report.latency_us.p50 as f64 / 1000.0),
        latency_p99_ms: round1(report.latency_us.p99 as f64 / 1000.0),
        server_cpu_pct_mean: round1(server.map_or(0.0, |s| s.cpu_pct_mean)),
        server_rss_mb_max: round1(server.map_or(0.0, |s| s.rss_mb_max)),
        generator_cpu_pct_max: round1(report.generator.cpu_pct_max),
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Start (or find) Janus in its namespace; its API's base URL.
fn start_janus(script: &Path) -> anyhow::Result<String> {
    let output = Command::new("bash")
        .arg(script)
        .arg("start")
        .stderr(Stdio::inherit())
        .output()
        .context("running bench/janus/start.sh")?;
    if !output.status.success() {
        bail!(
            "bench/janus/start.sh could not start Janus ({}); install it with \
             `apt-get install -y --no-install-recommends janus` (docs/janus.md)",
            output.status
        );
    }
    let url = String::from_utf8_lossy(&output.stdout).trim().to_string();
    anyhow::ensure!(
        url.starts_with("http"),
        "bench/janus/start.sh printed no URL"
    );
    Ok(url)
}

/// `version_string` from Janus's `GET /info`, or "unknown".
fn janus_version(url: &str) -> String {
    tools::SignalingClient::new(url)
        .get_text("/info")
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v.get("version_string")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Whether this process's effective user is root (from `/proc/self/status`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            // Real, effective, saved, filesystem.
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// An executable built next to this one (`cargo build --release -p tools` for `sfu-load`).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let path = exe.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} not found: build it first (cargo build --release -p tools)",
        path.display()
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> CompareJanusArgs {
        CompareJanusArgs {
            fanout: 50,
            max_fanout: 2000,
            bisections: 3,
            step_secs: 20,
            ramp_per_sec: 100,
            max_loss_pct: 0.1,
            video_kbps: 1000,
            io: Backend::Auto,
            server_cpu: 0,
            generator_cpu: 1,
            keep_janus: false,
            json: true,
        }
    }

    fn step_at(limit: usize) -> impl FnMut(usize) -> anyhow::Result<Step> {
        move |n| {
            Ok(Step {
                subscribers: n,
                passed: n <= limit,
                connected: n as u64 + 1,
                planned: n as u64 + 1,
                loss_pct: if n <= limit { 0.0 } else { 3.0 },
                latency_p50_ms: 1.0,
                latency_p99_ms: 2.0,
                server_cpu_pct_mean: 50.0,
                server_rss_mb_max: 100.0,
                generator_cpu_pct_max: 40.0,
            })
        }
    }

    #[test]
    fn the_search_grows_then_bisects_to_the_limit() {
        let result = search(&args(), "test", step_at(200)).expect("search");
        let counts: Vec<usize> = result.steps.iter().map(|s| s.subscribers).collect();
        // 50, 75, 113, 170, 255 (fails), then 212 (fails), 191, 201 (fails).
        assert_eq!(counts, [50, 75, 113, 170, 255, 212, 191, 201]);
        assert_eq!(result.max_subscribers, 191);
        assert!(!result.generator_bound);
    }

    #[test]
    fn a_failing_first_step_bisects_below_it() {
        let result = search(&args(), "test", step_at(10)).expect("search");
        let counts: Vec<usize> = result.steps.iter().map(|s| s.subscribers).collect();
        assert_eq!(counts, [50, 25, 12, 6]);
        assert_eq!(result.max_subscribers, 6);
        let result = search(&args(), "test", step_at(0)).expect("search");
        assert_eq!(result.max_subscribers, 0, "nothing passed");
        assert!(result.at_max.is_none());
    }

    #[test]
    fn the_search_stops_at_the_cap() {
        let mut a = args();
        a.max_fanout = 100;
        let result = search(&a, "test", step_at(10_000)).expect("search");
        let counts: Vec<usize> = result.steps.iter().map(|s| s.subscribers).collect();
        assert_eq!(counts, [50, 75, 100]);
        assert_eq!(result.max_subscribers, 100);
    }
}
