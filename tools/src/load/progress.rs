//! What the operator sees while a run goes and when it ends: a one-line live display on a
//! terminal (rewritten in place about once a second), plain periodic lines otherwise, and a
//! summary table at the end.

use std::fmt::Write as _;
use std::io::Write as _;

use super::report::{Latency, NodePeers, Outcome, PathPackets, Report, RoomFigures};
use super::scenario::ProtocolKind;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing (library use, tests).
    Off,
    /// A line every few seconds (logs, CI).
    Lines,
    /// One line rewritten in place every second.
    Terminal,
}

impl ProgressMode {
    /// `Terminal` when stdout is a terminal, `Lines` otherwise.
    pub fn detect() -> Self {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            ProgressMode::Terminal
        } else {
            ProgressMode::Lines
        }
    }
}

/// Seconds between lines in [`ProgressMode::Lines`].
const LINE_EVERY_S: u64 = 5;

/// The state of the run at one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub t_s: u64,
    pub phase: &'static str,
    pub planned: u64,
    pub connected: u64,
    pub failed: u64,
    pub pps_out: u64,
    pub pps_in: u64,
    pub p99_us: u64,
    pub loss_pct: f64,
}

/// Writes progress to stdout.
#[derive(Debug)]
pub struct Progress {
    mode: ProgressMode,
    line_open: bool,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        Self {
            mode,
            line_open: false,
        }
    }

    pub fn tick(&mut self, s: &Snapshot) {
        let mut out = std::io::stdout().lock();
        match self.mode {
            ProgressMode::Off => {}
            ProgressMode::Terminal => {
                // Carriage return, the line, clear to the end of the line.
                let _ = write!(out, "\r{}\x1b[K", progress_line(s));
                let _ = out.flush();
                self.line_open = true;
            }
            ProgressMode::Lines => {
                if s.t_s % LINE_EVERY_S == 0 {
                    let _ = writeln!(out, "{}", progress_line(s));
                }
            }
        }
    }

    /// A message between progress updates (phase changes, warnings).
    pub fn note(&mut self, message: &str) {
        if self.mode == ProgressMode::Off {
            return;
        }
        self.finish_line();
        println!("{message}");
    }

    /// Ends the live line so later output starts on a fresh one.
    pub fn finish_line(&mut self) {
        if self.line_open {
            println!();
            self.line_open = false;
        }
    }
}

/// `t=12s ramp    peers 480/500 (2 failed)  out 25.0k pps  in 480.0k pps  p99 3.2 ms  loss 0.01%`
pub fn progress_line(s: &Snapshot) -> String {
    format!(
        "t={:>4}s {:<8} peers {}/{}{}  out {} pps  in {} pps  p99 {}  loss {:.2}%",
        s.t_s,
        s.phase,
        s.connected,
        s.planned,
        if s.failed > 0 {
            format!(" ({} failed)", s.failed)
        } else {
            String::new()
        },
        si(s.pps_out as f64),
        si(s.pps_in as f64),
        if s.p99_us == 0 {
            "-".to_string()
        } else {
            ms(s.p99_us as f64)
        },
        s.loss_pct,
    )
}

/// `1234` → `1.2k`, `2_500_000` → `2.5M`.
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Microseconds as a readable latency.
pub fn ms(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.0} ms", us / 1000.0)
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// The end-of-run table.
pub fn summary_table(r: &Report) -> String {
    let mut t = String::new();
    let s = &r.scenario;
    let _ = writeln!(t, "sfu-load summary: {}", r.label);
    let shape = match s.protocol {
        ProtocolKind::Room => format!("{} participants", s.participants),
        _ => format!("({} pub + {} sub)", s.publishers, s.subscribers),
    };
    let _ = writeln!(
        t,
        "  scenario    {} × {shape}, {}, {:.0} s measured{}",
        if s.rooms == 1 {
            "1 room".to_string()
        } else {
            format!("{} rooms", s.rooms)
        },
        s.media,
        s.duration_s,
        if s.media.has_video() {
            format!(", {} kbps video @ {} fps", s.video_kbps, s.video_fps)
        } else {
            String::new()
        }
    );
    let p = &r.peers;
    let _ = writeln!(
        t,
        "  peers       {}/{} connected ({} pub, {} sub), {} failed, {} rejoins",
        p.connected,
        p.planned,
        p.publishers_connected,
        p.subscribers_connected,
        p.failed,
        p.rejoins
    );
    for (reason, n) in &p.failures {
        let _ = writeln!(t, "                {n:>6} × {reason}");
    }
    if let Some(room) = &r.room {
        write_room(&mut t, room);
    }
    let j = &r.join_ms;
    if j.count > 0 {
        let _ = writeln!(
            t,
            "  join        p50 {:.0} ms  p90 {:.0} ms  p99 {:.0} ms  max {:.0} ms  ({} joins)",
            j.p50, j.p90, j.p99, j.max, j.count
        );
    }
    let l = &r.latency_us;
    if l.count == 0 {
        let _ = writeln!(t, "  latency     no media received");
    } else {
        let _ = writeln!(
            t,
            "  latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} packets)",
            ms(l.p50 as f64),
            ms(l.p90 as f64),
            ms(l.p99 as f64),
            ms(l.p999 as f64),
            ms(l.max as f64),
            l.count
        );
    }
    let f = &r.fanout_spread_us;
    if f.count > 0 {
        let _ = writeln!(
            t,
            "  spread      p50 {}  p99 {}  max {}  (first to last subscriber of one packet, {} sampled)",
            ms(f.p50 as f64),
            ms(f.p99 as f64),
            ms(f.max as f64),
            f.count
        );
    }
    write_nodes(&mut t, r);
    let k = &r.packets;
    let _ = writeln!(
        t,
        "  packets     sent {}  received {}  expected {}  lost {} ({:.3}%)  dup {}  reordered {}  corrupt {}",
        k.sent, k.received, k.expected, k.lost, k.loss_pct, k.duplicates, k.reordered, k.corrupt
    );
    let _ = writeln!(
        t,
        "  jitter      mean {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.jitter_ms.mean, r.jitter_ms.p99, r.jitter_ms.max
    );
    if let Some(server) = &r.server {
        let _ = writeln!(
            t,
            "  server      pid {}  cpu mean {:.0}%  max {:.0}%  rss max {:.0} MB",
            server.pid, server.cpu_pct_mean, server.cpu_pct_max, server.rss_mb_max
        );
    }
    let g = &r.generator;
    let _ = writeln!(
        t,
        "  generator   pid {}  cpu mean {:.0}%  max {:.0}%  rss max {:.0} MB",
        g.pid, g.cpu_pct_mean, g.cpu_pct_max, g.rss_mb_max
    );
    match r.verdict.outcome {
        Outcome::Pass => {
            let _ = writeln!(t, "  verdict     PASS");
        }
        Outcome::None => {
            let _ = writeln!(t, "  verdict     none (no pass criteria given)");
        }
        Outcome::Fail => {
            let _ = writeln!(t, "  verdict     FAIL");
            for f in &r.verdict.failures {
                let _ = writeln!(t, "                {f}");
            }
        }
    }
    t
}

/// Participants, the streams they received, their join times and the signaling's oddities.
fn write_room(t: &mut String, room: &RoomFigures) {
    let _ = writeln!(
        t,
        "  room        {}/{} participants connected, {} complete, {} failed joins",
        room.participants_connected,
        room.participants,
        room.participants_complete,
        room.failed_joins
    );
    let _ = writeln!(
        t,
        "  streams     {}/{} received, fewest for one participant {} of {}",
        room.streams_received,
        room.streams_expected,
        room.min_streams_per_participant,
        room.streams_per_participant
    );
    let j = &room.join_ms;
    if j.count > 0 {
        let _ = writeln!(
            t,
            "  room join   p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms  ({} participants)",
            j.p50, j.p99, j.max, j.count
        );
    }
    let g = &room.signaling;
    let errors: Vec<String> = g.errors.iter().map(|(c, n)| format!("{n} × {c}")).collect();
    let _ = writeln!(
        t,
        "  websocket   {} messages, {} bad, {} renegotiate ({} unmet), {} sessions ended, {} closed early{}",
        g.messages,
        g.bad_messages,
        g.renegotiations,
        g.renegotiations_unmet,
        g.sessions_ended,
        g.closed_early,
        if errors.is_empty() {
            String::new()
        } else {
            format!(", errors: {}", errors.join(", "))
        }
    );
    if let Some(ptt) = &room.ptt {
        let _ = writeln!(
            t,
            "  floor       {} changes ({} talkers, every {} s; {} requests, {} grants, {} refused); {} packets from holders, {} from talkers not holding it",
            ptt.changes,
            ptt.talkers,
            ptt.floor_change_s,
            g.floor_requests,
            g.floor_grants,
            g.floor_refusals,
            ptt.packets,
            ptt.violations
        );
        if let Some(l) = &ptt.change_ms {
            let _ = writeln!(
                t,
                "  floor change release → first packet of the new holder: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} listener-changes)",
                l.p50, l.p90, l.p99, l.max, l.measured
            );
        }
    }
}

/// Where the peers landed, and latency and loss of local and relayed packets.
fn write_nodes(t: &mut String, r: &Report) {
    let unnamed = r.node_unknown;
    let landed = |p: &NodePeers| p.publishers + p.subscribers > 0;
    if r.nodes.is_empty() {
        if landed(&unnamed) {
            let _ = writeln!(
                t,
                "  nodes       not named by the server (no X-Sfu-Node): no local/relayed split"
            );
        }
        return;
    }
    let mut nodes: Vec<String> = r
        .nodes
        .iter()
        .map(|(name, p)| node_peers(name, p))
        .collect();
    if landed(&unnamed) {
        nodes.push(node_peers("unnamed", &unnamed));
    }
    let _ = writeln!(t, "  nodes       {}", nodes.join(" · "));
    for (name, latency, packets) in [
        ("local", &r.latency_local_us, &r.packets_local),
        ("relayed", &r.latency_relayed_us, &r.packets_relayed),
    ] {
        let (Some(l), Some(k)) = (latency, packets) else {
            continue;
        };
        if k.subscribers == 0 && l.count == 0 {
            continue; // e.g. nothing relayed on one node: the JSON still says so
        }
        let _ = writeln!(t, "  {name:<11} {}", path_line(l, k));
    }
}

/// `n2: 0 pub + 100 sub (2 failed)`.
fn node_peers(name: &str, p: &NodePeers) -> String {
    let failed = if p.failed > 0 {
        format!(" ({} failed)", p.failed)
    } else {
        String::new()
    };
    format!(
        "{name}: {} pub + {} sub{failed}",
        p.publishers, p.subscribers
    )
}

/// `100 subscribers  p50 5.10 ms  p99 9.00 ms  max 12 ms  (49870 packets)  loss 0.000%`.
fn path_line(l: &Latency, k: &PathPackets) -> String {
    let subscribers = if k.subscribers == 1 {
        "1 subscriber".to_string()
    } else {
        format!("{} subscribers", k.subscribers)
    };
    if l.count == 0 {
        return format!("{subscribers}  no media received");
    }
    format!(
        "{subscribers}  p50 {}  p99 {}  max {}  ({} packets)  loss {:.3}%",
        ms(l.p50 as f64),
        ms(l.p99 as f64),
        ms(l.max as f64),
        l.count,
        k.loss_pct
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_reads_well() {
        let s = Snapshot {
            t_s: 12,
            phase: "ramp",
            planned: 500,
            connected: 480,
            failed: 2,
            pps_out: 25_000,
            pps_in: 480_000,
            p99_us: 3_210,
            loss_pct: 0.0123,
        };
        assert_eq!(
            progress_line(&s),
            "t=  12s ramp     peers 480/500 (2 failed)  out 25.0k pps  in 480.0k pps  p99 3.21 ms  loss 0.01%"
        );
        let quiet = Snapshot {
            p99_us: 0,
            failed: 0,
            ..s
        };
        assert!(progress_line(&quiet).contains("p99 -"));
        assert!(!progress_line(&quiet).contains("failed"));
    }

    /// A report of nothing, for the summary's tests to fill in.
    fn empty_report() -> Report {
        use crate::load::Scenario;
        use crate::load::report::{REPORT_VERSION, Verdict};
        Report {
            version: REPORT_VERSION,
            tool: "sfu-load test".into(),
            label: "x".into(),
            started_at_unix_ms: 0,
            elapsed_s: 1.0,
            scenario: Scenario::default(),
            peers: Default::default(),
            join_ms: Default::default(),
            latency_us: Default::default(),
            fanout_spread_us: Default::default(),
            packets: Default::default(),
            jitter_ms: Default::default(),
            nodes: Default::default(),
            node_unknown: Default::default(),
            latency_local_us: None,
            latency_relayed_us: None,
            packets_local: None,
            packets_relayed: None,
            server: None,
            generator: Default::default(),
            timeline: Vec::new(),
            room: None,
            verdict: Verdict::default(),
        }
    }

    #[test]
    fn the_summary_names_a_verdict_only_when_there_are_criteria() {
        use crate::load::report::Verdict;
        let mut r = empty_report();
        let none = summary_table(&r);
        assert!(none.contains("verdict     none"), "{none}");
        assert!(!none.contains("PASS") && !none.contains("FAIL"), "{none}");
        r.verdict = Verdict {
            outcome: Outcome::Fail,
            failures: vec!["loss 2.10% > max 1.00%".into()],
        };
        let fail = summary_table(&r);
        assert!(
            fail.contains("verdict     FAIL\n                loss 2.10%"),
            "{fail}"
        );
        r.verdict = Verdict {
            outcome: Outcome::Pass,
            failures: Vec::new(),
        };
        assert!(summary_table(&r).contains("verdict     PASS"));
    }

    #[test]
    fn the_summary_splits_latency_by_path_when_nodes_are_named() {
        let mut r = empty_report();
        r.node_unknown = NodePeers {
            publishers: 1,
            subscribers: 3,
            failed: 0,
        };
        let unnamed = summary_table(&r);
        assert!(
            unnamed.contains("nodes       not named by the server"),
            "{unnamed}"
        );
        assert!(!unnamed.contains("  relayed     "), "{unnamed}");

        r.node_unknown = NodePeers::default();
        r.nodes = [("n1", 1, 0, 0), ("n2", 0, 100, 2)]
            .into_iter()
            .map(|(name, publishers, subscribers, failed)| {
                let peers = NodePeers {
                    publishers,
                    subscribers,
                    failed,
                };
                (name.to_string(), peers)
            })
            .collect();
        r.latency_local_us = Some(Latency::default());
        r.latency_relayed_us = Some(Latency {
            count: 4000,
            p50: 5_900,
            p99: 12_000,
            max: 20_000,
            ..Latency::default()
        });
        r.packets_local = Some(PathPackets::default());
        let mut with_local = r.clone();
        with_local.packets_local = Some(PathPackets {
            subscribers: 1,
            ..PathPackets::default()
        });
        let local = summary_table(&with_local);
        assert!(
            local.contains("  local       1 subscriber  no media received\n"),
            "{local}"
        );
        r.packets_relayed = Some(PathPackets {
            subscribers: 100,
            received: 4000,
            expected: 4004,
            lost: 4,
            loss_pct: 0.0999,
            ..PathPackets::default()
        });
        let split = summary_table(&r);
        assert!(
            split.contains("  nodes       n1: 1 pub + 0 sub · n2: 0 pub + 100 sub (2 failed)\n"),
            "{split}"
        );
        assert!(!split.contains("  local       "), "nothing local: {split}");
        assert!(
            split.contains(
                "  relayed     100 subscribers  p50 5.90 ms  p99 12 ms  max 20 ms  (4000 packets)  loss 0.100%\n"
            ),
            "{split}"
        );
    }

    #[test]
    fn units() {
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1234.0), "1.2k");
        assert_eq!(si(2_500_000.0), "2.5M");
        assert_eq!(ms(850.0), "0.85 ms");
        assert_eq!(ms(52_000.0), "52 ms");
    }
}
