//! What the operator sees while a run goes and when it ends: a one-line live display on a
//! terminal (rewritten in place about once a second), plain periodic lines otherwise, and a
//! summary table at the end.

use std::fmt::Write as _;
use std::io::Write as _;

use super::report::{Outcome, Report};

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
    let _ = writeln!(
        t,
        "  scenario    {} × ({} pub + {} sub), {}, {:.0} s measured{}",
        if s.rooms == 1 {
            "1 room".to_string()
        } else {
            format!("{} rooms", s.rooms)
        },
        s.publishers,
        s.subscribers,
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

    #[test]
    fn the_summary_names_a_verdict_only_when_there_are_criteria() {
        use crate::load::Scenario;
        use crate::load::report::{REPORT_VERSION, Verdict};
        let mut r = Report {
            version: REPORT_VERSION,
            tool: "sfu-load test".into(),
            label: "x".into(),
            started_at_unix_ms: 0,
            elapsed_s: 1.0,
            scenario: Scenario::default(),
            peers: Default::default(),
            join_ms: Default::default(),
            latency_us: Default::default(),
            packets: Default::default(),
            jitter_ms: Default::default(),
            server: None,
            generator: Default::default(),
            timeline: Vec::new(),
            verdict: Verdict::default(),
        };
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
    fn units() {
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1234.0), "1.2k");
        assert_eq!(si(2_500_000.0), "2.5M");
        assert_eq!(ms(850.0), "0.85 ms");
        assert_eq!(ms(52_000.0), "52 ms");
    }
}
