//! `bench forward`: the highest rate one node core forwards one publisher to `--fanout`
//! subscribers with at most `--max-loss-pct` loss, against the bare loop on the same core in
//! the same run; then the node's own forwarding delay at half that rate, its CPU per packet
//! and its memory per subscriber. One JSON line with `--json` (bench/README.md).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::bare::BareLoop;
use crate::generator::{Generator, Kind, Step};
use crate::host;
use crate::node::{Backend, Launch, NodeProcess};

/// Egress rate (packets/s) the search starts from.
const START_EGRESS: f64 = 20_000.0;
/// Each passing step raises the rate by this factor until one fails.
const GROWTH: f64 = 1.5;
/// Bisections between the last passing and the first failing rate.
const BISECTIONS: usize = 5;
/// No search goes above this egress rate (far above any one core).
const MAX_EGRESS: f64 = 5_000_000.0;
/// How far `ratio` may fall below the baseline's before `--baseline` fails.
const MAX_REGRESSION: f64 = 0.15;
/// Publisher packets per second while memory is measured: about 1 Mbit/s of 1200-byte packets.
const MEMORY_RATE: f64 = 100.0;
/// How long that rate runs before memory is read (longer than str0m keeps packets for resends).
const MEMORY_SECS: f64 = 4.0;

#[derive(Debug, Clone, clap::Args)]
pub struct ForwardArgs {
    /// Subscribers of the one publisher.
    #[arg(long, default_value_t = 10)]
    fanout: usize,
    /// RTP payload bytes of each packet.
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// What the publisher sends.
    #[arg(long, value_enum, default_value = "video")]
    kind: Kind,
    /// Packets per video frame, sent back to back as a camera's encoder and packetizer
    /// emit them (1 Mbit/s at 30 frames/s is ≈ 4 packets of 1200 bytes; a keyframe many more).
    #[arg(long, default_value_t = 1)]
    frame_packets: usize,
    /// The node's socket backend.
    #[arg(long, value_enum, default_value = "auto")]
    io: Backend,
    /// Let the node send runs of packets to one subscriber as one UDP GSO send (the bare loop
    /// never does).
    #[arg(long)]
    gso: bool,
    /// Seconds of sending per step of the search.
    #[arg(long, default_value_t = 2.0)]
    step_secs: f64,
    /// The loss a rate may have and still count as carried, percent.
    #[arg(long, default_value_t = 0.1)]
    max_loss_pct: f64,
    /// CPU of the node (and of the bare loop).
    #[arg(long, default_value_t = 0)]
    node_cpu: usize,
    /// CPU of the generator.
    #[arg(long, default_value_t = 1)]
    generator_cpu: usize,
    /// Print one JSON line (and nothing else on stdout).
    #[arg(long)]
    json: bool,
    /// Compare `ratio` with this file's entry for the same settings (`bench/baseline.json`) and
    /// fail if it is more than 15 % lower twice in a row.
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
}

/// One step of a search: its rate and what came of it.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// Publisher packets per second.
    rate: f64,
    step: Step,
    expected: u64,
    /// CPU time of what was measured, over the step.
    cpu: Duration,
}

impl Probe {
    fn loss_pct(&self) -> f64 {
        100.0 * (1.0 - self.step.received as f64 / self.expected.max(1) as f64)
    }
}

/// What `forward` prints.
#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    fanout: usize,
    size: usize,
    kind: &'static str,
    frame_packets: usize,
    io: &'static str,
    gso: bool,
    egress_pps: u64,
    bare_egress_pps: u64,
    ratio: f64,
    loss_pct: f64,
    latency_us: Latency,
    latency_at_egress_pps: u64,
    cpu_ns_per_egress_pkt: u64,
    bare_cpu_ns_per_egress_pkt: u64,
    rss_kib_per_subscriber: f64,
    /// Datagrams per UDP GSO send in the ceiling's step (0 without GSO): how long the runs
    /// to one subscriber were, which is what GSO's saving depends on.
    gso_datagrams_per_send: f64,
    /// A search ended because the generator could not keep the rate, not because of loss.
    generator_bound: bool,
    machine: String,
    kernel: String,
    commit: String,
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
}

pub fn run(args: ForwardArgs) -> anyhow::Result<()> {
    if args.fanout == 0 || args.size < 16 || args.step_secs <= 0.0 {
        bail!("--fanout must be at least 1, --size at least 16 and --step-secs above 0");
    }
    if args.frame_packets == 0 || (args.kind == Kind::Audio && args.frame_packets > 1) {
        bail!("--frame-packets must be at least 1, and 1 for audio");
    }
    sfu_core::affinity::pin_current_thread(args.generator_cpu)
        .with_context(|| format!("cannot run the generator on CPU {}", args.generator_cpu))?;
    let baseline = match &args.baseline {
        Some(path) => Some(Baseline::find(path, &args)?),
        None => None,
    };
    let mut report = measure(&args)?;
    print(&args, &report)?;
    let Some(baseline) = baseline else {
        return Ok(());
    };
    let floor = baseline.ratio * (1.0 - MAX_REGRESSION);
    if report.ratio < floor {
        // One noisy step can end a search early: measure again before calling it a regression.
        eprintln!(
            "ratio {} is below {floor:.3} (baseline {} less {} %); measuring again",
            report.ratio,
            baseline.ratio,
            MAX_REGRESSION * 100.0
        );
        report = measure(&args)?;
        print(&args, &report)?;
    }
    if report.ratio < floor {
        bail!(
            "forwarding regressed: ratio {} against the baseline's {} ({}; more than {} % lower)",
            report.ratio,
            baseline.ratio,
            baseline.measured,
            MAX_REGRESSION * 100.0
        );
    }
    eprintln!(
        "ratio {} is within {} % of the baseline's {} (floor {floor:.3})",
        report.ratio,
        MAX_REGRESSION * 100.0,
        baseline.ratio
    );
    Ok(())
}

fn print(args: &ForwardArgs, report: &Report) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    Ok(())
}

/// A committed figure to compare with (`--baseline`): the entry of `bench/baseline.json`
/// with the same fan-out, size, kind, backend and GSO.
#[derive(Debug, Clone, serde::Deserialize)]
struct Baseline {
    fanout: usize,
    size: usize,
    kind: String,
    /// Absent in entries for one packet per frame.
    #[serde(default = "one")]
    frame_packets: usize,
    io: String,
    gso: bool,
    ratio: f64,
    /// Where and when it was measured.
    measured: String,
}

impl Baseline {
    fn find(path: &std::path::Path, args: &ForwardArgs) -> anyhow::Result<Self> {
        #[derive(serde::Deserialize)]
        struct File {
            forward: Vec<Baseline>,
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: File = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a baseline file", path.display()))?;
        file.forward
            .into_iter()
            .find(|b| {
                b.fanout == args.fanout
                    && b.size == args.size
                    && b.kind == args.kind.as_str()
                    && b.frame_packets == args.frame_packets
                    && b.io == args.io.as_str()
                    && b.gso == args.gso
            })
            .with_context(|| {
                format!(
                    "{} has no entry for fanout {} size {} kind {} frame_packets {} io {} gso {}",
                    path.display(),
                    args.fanout,
                    args.size,
                    args.kind.as_str(),
                    args.frame_packets,
                    args.io.as_str(),
                    args.gso
                )
            })
    }
}

fn one() -> usize {
    1
}

/// Run the whole measurement once.
fn measure(args: &ForwardArgs) -> anyhow::Result<Report> {
    let say = |line: &str| {
        if !args.json {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    let fanout = args.fanout as f64;

    // The bare loop, on the node's CPU, before the node exists.
    let mut bare_generator = Generator::raw(args.fanout, args.size)?;
    let bare = BareLoop::start(args.node_cpu, bare_generator.sink_addrs()?)?;
    bare_generator.set_destination(bare.addr);
    let bare_best = search(args, "bare loop", &say, |rate, count| {
        let cpu = bare.cpu_time()?;
        let step = bare_generator.step(rate, count)?;
        Ok((step, bare.cpu_time()? - cpu))
    })?;
    drop(bare);
    drop(bare_generator);

    // The node. Its memory per subscriber is measured first, at a steady, modest rate (each
    // subscriber's resend buffer then holds what a real video stream leaves in it), before the
    // search's peaks leave allocator caches behind.
    let node = NodeProcess::start(&Launch::loopback(args.node_cpu, args.io, args.gso))?;
    let mut generator =
        Generator::publisher(&node.client, args.kind, args.size, args.frame_packets)?;
    let memory_step = |g: &mut Generator| g.step(MEMORY_RATE, (MEMORY_RATE * MEMORY_SECS) as u64);
    memory_step(&mut generator)?;
    let rss_before = node.rss_kib()?;
    generator.subscribe(&node.client, args.kind, args.fanout)?;
    generator.warm_up()?;
    memory_step(&mut generator)?;
    let rss_after = node.rss_kib()?;
    // Per step: its rate and the datagrams per GSO send in it.
    let mut gso_runs: Vec<(f64, f64)> = Vec::new();
    let best = search(args, "node", &say, |rate, count| {
        let gso_before = gso_counters(&node.metrics()?);
        let cpu = node.cpu_time()?;
        let step = generator.step(rate, count)?;
        let cpu = node.cpu_time()? - cpu;
        gso_runs.push((
            rate,
            gso_run_length(gso_before, gso_counters(&node.metrics()?)),
        ));
        Ok((step, cpu))
    })?;
    let gso_run = gso_runs
        .iter()
        .rev()
        .find(|(rate, _)| *rate == best.rate)
        .map_or(0.0, |&(_, run)| run);

    // At half the ceiling: the node's own forwarding delay, and its memory with every
    // subscriber's state warm.
    let half = best.rate / 2.0;
    let before = node.metrics()?;
    let count = (half * args.step_secs * 1.5) as u64;
    generator.step(half, count)?;
    let after = node.metrics()?;
    let latency = latency(&histogram(&before), &histogram(&after))?;

    let egress = best.rate * fanout;
    let bare_egress = bare_best.rate * fanout;
    Ok(Report {
        bench: "forward",
        fanout: args.fanout,
        size: args.size,
        kind: args.kind.as_str(),
        frame_packets: args.frame_packets,
        io: args.io.as_str(),
        gso: args.gso,
        egress_pps: egress as u64,
        bare_egress_pps: bare_egress as u64,
        ratio: round3(egress / bare_egress),
        loss_pct: round3(best.loss_pct()),
        latency_us: latency,
        latency_at_egress_pps: (half * fanout) as u64,
        cpu_ns_per_egress_pkt: ns_per(best.cpu, best.step.received),
        bare_cpu_ns_per_egress_pkt: ns_per(bare_best.cpu, bare_best.step.received),
        rss_kib_per_subscriber: round3(rss_after.saturating_sub(rss_before) as f64 / fanout),
        gso_datagrams_per_send: round3(gso_run),
        generator_bound: best.step.late || bare_best.step.late,
        machine: host::machine(),
        kernel: host::kernel(),
        commit: host::commit(),
    })
}

/// Find the highest publisher rate whose step loses at most `--max-loss-pct` (and that the
/// generator kept up with): grow by [`GROWTH`] from [`START_EGRESS`] until a step fails, then
/// bisect. `measure_step(rate, count)` sends `count` packets at `rate` and returns the step and the
/// measured CPU time.
fn search(
    args: &ForwardArgs,
    what: &str,
    say: &dyn Fn(&str),
    mut measure_step: impl FnMut(f64, u64) -> anyhow::Result<(Step, Duration)>,
) -> anyhow::Result<Probe> {
    let fanout = args.fanout as f64;
    let mut probe = |rate: f64| -> anyhow::Result<Probe> {
        let count = ((rate * args.step_secs) as u64).max(100);
        let started = Instant::now();
        let (step, cpu) = measure_step(rate, count)?;
        let p = Probe {
            rate,
            step,
            expected: step.sent * args.fanout as u64,
            cpu,
        };
        say(&format!(
            "{what}: {:>9.0} egress/s offered, {:>9.0} sent/s, loss {:.3} %, cpu {:.0} % {}({:.1} s)",
            rate * fanout,
            step.sent as f64 * fanout / step.send_secs,
            p.loss_pct(),
            100.0 * cpu.as_secs_f64() / step.send_secs,
            if step.late { "LATE " } else { "" },
            started.elapsed().as_secs_f64(),
        ));
        Ok(p)
    };
    let passes = |p: &Probe| p.loss_pct() <= args.max_loss_pct && !p.step.late;
    let mut rate = START_EGRESS / fanout;
    let mut good: Option<Probe> = None;
    let mut bad = None;
    while rate * fanout <= MAX_EGRESS {
        let p = probe(rate)?;
        if passes(&p) {
            good = Some(p);
            rate *= GROWTH;
        } else {
            bad = Some(p);
            break;
        }
    }
    let Some(mut good) = good else {
        bail!(
            "{what}: even {START_EGRESS} packets/s lost more than {} %",
            args.max_loss_pct
        );
    };
    if let Some(bad) = bad {
        let mut high = bad.rate;
        for _ in 0..BISECTIONS {
            let p = probe((good.rate + high) / 2.0)?;
            if passes(&p) {
                good = p;
            } else {
                high = p.rate;
            }
        }
        // The generator, not the system under test, stopped the search.
        good.step.late |= bad.step.late && bad.loss_pct() <= args.max_loss_pct;
    }
    Ok(good)
}

/// `sfu_gso_sends_total` and `sfu_gso_datagrams_total`, summed over workers.
fn gso_counters(metrics: &str) -> (u64, u64) {
    let sum = |name: &str| -> u64 {
        metrics
            .lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
            .filter_map(|rest| rest.split_once("} ")?.1.trim().parse::<u64>().ok())
            .sum()
    };
    (sum("sfu_gso_sends_total"), sum("sfu_gso_datagrams_total"))
}

/// Datagrams per GSO send between two readings of [`gso_counters`]; 0 without sends.
fn gso_run_length(before: (u64, u64), after: (u64, u64)) -> f64 {
    let sends = after.0.saturating_sub(before.0);
    let datagrams = after.1.saturating_sub(before.1);
    if sends == 0 {
        0.0
    } else {
        datagrams as f64 / sends as f64
    }
}

/// `sfu_forward_delay_seconds` buckets summed over workers: (upper bound in seconds,
/// cumulative count), `+Inf` last.
fn histogram(metrics: &str) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("sfu_forward_delay_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(le) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("le=\""))
            .map(|l| l.trim_end_matches('"'))
        else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let count: u64 = value.trim().parse().unwrap_or(0);
        match buckets.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, c)) => *c += count,
            None => buckets.push((bound, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// p50, p99 and p99.9 in microseconds of the copies forwarded between two histograms,
/// interpolated within a bucket (as Prometheus' `histogram_quantile`); a quantile in the
/// `+Inf` bucket is reported as the largest finite bound.
fn latency(before: &[(f64, u64)], after: &[(f64, u64)]) -> anyhow::Result<Latency> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|&(bound, n)| {
            let was = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |&(_, c)| c);
            (bound, n.saturating_sub(was))
        })
        .collect();
    let total = delta.last().map_or(0, |&(_, n)| n);
    if total == 0 {
        bail!("the node reported no forwarding delays (is sfu_forward_delay_seconds missing?)");
    }
    let quantile = |q: f64| {
        let rank = q * total as f64;
        let mut lower = (0.0, 0u64);
        for &(bound, n) in &delta {
            if n as f64 >= rank {
                if bound.is_infinite() {
                    return lower.0 * 1e6;
                }
                let within = (rank - lower.1 as f64) / (n - lower.1).max(1) as f64;
                return (lower.0 + (bound - lower.0) * within) * 1e6;
            }
            lower = (bound, n);
        }
        lower.0 * 1e6
    };
    Ok(Latency {
        p50: round3(quantile(0.5)),
        p99: round3(quantile(0.99)),
        p999: round3(quantile(0.999)),
    })
}

fn ns_per(cpu: Duration, packets: u64) -> u64 {
    (cpu.as_nanos() / u128::from(packets.max(1))) as u64
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        forward: ForwardArgs,
    }

    fn args(line: &str) -> ForwardArgs {
        Cli::parse_from(std::iter::once("forward").chain(line.split_whitespace())).forward
    }

    #[test]
    fn the_baseline_entry_is_the_one_with_the_same_settings() {
        let dir = std::env::temp_dir().join(format!("bench-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("baseline.json");
        std::fs::write(
            &path,
            r#"{"forward": [
                {"fanout": 10, "size": 1200, "kind": "video", "io": "auto", "gso": false,
                 "ratio": 0.8, "measured": "here"},
                {"fanout": 50, "size": 1200, "kind": "video", "io": "auto", "gso": false,
                 "ratio": 0.9, "measured": "there"},
                {"fanout": 50, "size": 1200, "kind": "video", "frame_packets": 4, "io": "auto",
                 "gso": true, "ratio": 1.7, "measured": "in frames"}
            ]}"#,
        )
        .expect("written");
        let found = Baseline::find(&path, &args("--fanout 50")).expect("an entry");
        assert_eq!((found.ratio, found.measured.as_str()), (0.9, "there"));
        let missing = Baseline::find(&path, &args("--fanout 10 --io poll"))
            .expect_err("no poll entry")
            .to_string();
        assert!(missing.contains("io poll"), "{missing}");
        let framed = Baseline::find(&path, &args("--fanout 50 --frame-packets 4 --gso"))
            .expect("the entry in frames");
        assert_eq!(framed.measured, "in frames");
        assert!(
            Baseline::find(&path, &args("--fanout 50 --gso")).is_err(),
            "no entry for one packet per frame with GSO"
        );
        std::fs::write(&path, "[]").expect("written");
        assert!(
            Baseline::find(&path, &args("")).is_err(),
            "not a baseline file"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn quantiles_come_from_the_delta_of_two_scrapes() {
        let scrape = |counts: [u64; 4]| {
            format!(
                "# TYPE sfu_forward_delay_seconds histogram\n\
                 sfu_forward_delay_seconds_bucket{{worker=\"0\",le=\"0.0001\"}} {}\n\
                 sfu_forward_delay_seconds_bucket{{worker=\"0\",le=\"0.001\"}} {}\n\
                 sfu_forward_delay_seconds_bucket{{worker=\"0\",le=\"0.01\"}} {}\n\
                 sfu_forward_delay_seconds_bucket{{worker=\"0\",le=\"+Inf\"}} {}\n\
                 sfu_forward_delay_seconds_count{{worker=\"0\"}} {}\n",
                counts[0], counts[1], counts[2], counts[3], counts[3]
            )
        };
        // Before: 100 copies at ≤ 100 µs. Between the scrapes: 1000 more, 500 at ≤ 100 µs,
        // 490 at ≤ 1 ms, 9 at ≤ 10 ms and 1 above.
        let before = histogram(&scrape([100, 100, 100, 100]));
        let after = histogram(&scrape([600, 1090, 1099, 1100]));
        let l = latency(&before, &after).expect("copies were counted");
        assert!((l.p50 - 100.0).abs() < 1e-6, "{l:?}");
        // Rank 990 is the last copy of the second bucket: its bound.
        assert!((l.p99 - 1000.0).abs() < 1e-6, "{l:?}");
        // Rank 999 is the last of the third bucket.
        assert!((l.p999 - 10_000.0).abs() < 1e-6, "{l:?}");
        assert!(latency(&after, &after).is_err(), "no copies in between");
    }

    #[test]
    fn workers_are_summed_and_other_series_ignored() {
        let text = "sfu_forward_delay_seconds_bucket{worker=\"0\",le=\"0.001\"} 3\n\
                    sfu_forward_delay_seconds_bucket{worker=\"1\",le=\"0.001\"} 4\n\
                    sfu_forward_delay_seconds_bucket{worker=\"0\",le=\"+Inf\"} 5\n\
                    sfu_forward_delay_seconds_bucket{worker=\"1\",le=\"+Inf\"} 6\n\
                    sfu_forward_delay_seconds_sum{worker=\"0\"} 0.5\n\
                    sfu_packets_out_total{worker=\"0\"} 9\n";
        assert_eq!(histogram(text), vec![(0.001, 7), (f64::INFINITY, 11)]);
    }

    #[test]
    fn gso_runs_are_summed_over_workers_between_two_scrapes() {
        let scrape = |sends: u64, datagrams: u64| {
            format!(
                "# TYPE sfu_gso_sends_total counter\n\
                 sfu_gso_sends_total{{worker=\"0\"}} {sends}\n\
                 sfu_gso_sends_total{{worker=\"1\"}} 1\n\
                 sfu_gso_datagrams_total{{worker=\"0\"}} {datagrams}\n\
                 sfu_gso_datagrams_total{{worker=\"1\"}} 2\n\
                 sfu_gso_sends_totalx{{worker=\"0\"}} 99\n"
            )
        };
        let before = gso_counters(&scrape(10, 40));
        assert_eq!(before, (11, 42));
        let after = gso_counters(&scrape(30, 120));
        assert!((gso_run_length(before, after) - 4.0).abs() < 1e-9);
        assert_eq!(gso_run_length(after, after), 0.0, "no sends in between");
        assert_eq!(gso_counters("garbage\nsfu_gso_sends_total{"), (0, 0));
    }
}
