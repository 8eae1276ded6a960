//! `report.html`: one or more [`Report`]s as a single self-contained page (verdicts, summary
//! table, SVG plots drawn here) that opens offline and can be archived next to the JSON. Several
//! reports are compared side by side and overlaid on the same axes, one color each.
//!
//! The page needs no script to be read; a small inline script only adds hover read-outs.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use serde_json::{Value, json};

use super::report::{
    JoinTimes, Latency, NodePeers, Outcome, PathPackets, ProcessSample, ProcessUsage, Report,
};
use super::scenario::{Criteria, MediaModel, ProtocolKind, Scenario};

/// Appends formatted text to a `String`, which cannot fail.
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
    }};
}

/// Renders `reports` as one HTML page. With several, they are compared column by column and
/// overlaid in every plot, in the order given. Labels are shown as they are: telling two equal
/// labels apart is the caller's job.
pub fn render(reports: &[Report]) -> String {
    let runs: Vec<Run<'_>> = reports
        .iter()
        .enumerate()
        .map(|(i, report)| Run {
            report,
            color: PALETTE[i % PALETTE.len()],
        })
        .collect();
    let mut out = String::with_capacity(128 * 1024);
    write_head(&mut out, &runs);
    write_header(&mut out, &runs);
    if !runs.is_empty() {
        write_summary(&mut out, &runs);
        write_charts(&mut out, &runs);
    }
    write_footer(&mut out, &runs);
    out
}

/// Series colors in report order; distinct on white and from each other. An eleventh report
/// reuses the first color (the legend still names it).
const PALETTE: [&str; 10] = [
    "#2563eb", "#e8590c", "#2b9348", "#9d4edd", "#c9184a", "#0f9ba8", "#8d6e63", "#c99a06",
    "#5c677d", "#f06595",
];

/// Legend color for entries that explain a line style rather than name a report.
const KEY_GREY: &str = "#57606a";

/// Shown for a value that does not exist (no samples, not measured).
const DASH: &str = "–";

/// One report and the color it is drawn in.
#[derive(Debug, Clone, Copy)]
struct Run<'a> {
    report: &'a Report,
    color: &'static str,
}

impl Run<'_> {
    fn label(&self) -> &str {
        &self.report.label
    }
}

// ---------------------------------------------------------------------------------------------
// Page sections
// ---------------------------------------------------------------------------------------------

fn write_head(out: &mut String, runs: &[Run<'_>]) {
    let labels: Vec<&str> = runs.iter().map(Run::label).collect();
    let title = match runs {
        [] => "SFU load report".to_string(),
        [one] => format!("SFU load report: {}", one.label()),
        _ => format!("SFU load comparison: {}", labels.join(" vs ")),
    };
    put!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"sfu-report {}\">\n<title>{}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        env!("CARGO_PKG_VERSION"),
        Esc(&title)
    );
}

fn write_header(out: &mut String, runs: &[Run<'_>]) {
    out.push_str("<header>\n");
    match runs {
        [] => {
            out.push_str("<h1>SFU load report</h1>\n<p class=\"empty\">no reports</p>\n");
        }
        [_] => {
            out.push_str(
                "<h1>SFU load report</h1>\n<p class=\"lede\">Hover a plot to read values; \
                 the scenario is under the verdict.</p>\n",
            );
        }
        many => {
            put!(out, "<h1>SFU load comparison</h1>\n<p class=\"lede\">");
            put!(
                out,
                "{} runs overlaid in every plot; deltas are relative to the first.",
                many.len()
            );
            out.push_str("</p>\n");
        }
    }
    out.push_str("<div class=\"cards\">\n");
    for run in runs {
        write_card(out, run);
    }
    out.push_str("</div>\n</header>\n");
}

/// The run's identity, scenario and verdict.
fn write_card(out: &mut String, run: &Run<'_>) {
    let r = run.report;
    let (class, word) = match r.verdict.outcome {
        Outcome::Pass => ("pass", "PASS"),
        Outcome::Fail => ("fail", "FAIL"),
        Outcome::None => ("none", "NO VERDICT"),
    };
    put!(
        out,
        "<section class=\"card\" style=\"--c:{}\">\n<div class=\"card-head\">\
         <span class=\"swatch\"></span><h2>{}</h2><span class=\"badge {class}\">{word}</span></div>\n",
        run.color,
        Esc(&r.label)
    );
    put!(
        out,
        "<p class=\"scenario\">{}</p>\n",
        Esc(&scenario_line(&r.scenario))
    );
    write_key_figures(out, r);
    put!(
        out,
        "<p class=\"meta\">{} · <span class=\"url\">{}</span><br>started {} · {} wall time · {}</p>\n",
        protocol_name(r.scenario.protocol),
        Esc(&r.scenario.url),
        if r.started_at_unix_ms == 0 {
            "at an unknown time".to_string()
        } else {
            utc_time(r.started_at_unix_ms)
        },
        value_label(r.elapsed_s, Unit::Seconds),
        Esc(&r.tool)
    );
    if !r.verdict.failures.is_empty() {
        out.push_str("<ul class=\"reasons\">\n");
        for reason in &r.verdict.failures {
            put!(out, "<li>{}</li>\n", Esc(reason));
        }
        out.push_str("</ul>\n");
    } else if r.verdict.failed() {
        out.push_str("<p class=\"reasons\">failed; no reason recorded</p>\n");
    }
    match criteria_line(&r.scenario.criteria) {
        Some(line) => put!(out, "<p class=\"criteria\">criteria: {}</p>\n", Esc(&line)),
        None => out.push_str("<p class=\"criteria\">no pass criteria set</p>\n"),
    }
    write_scenario_details(out, &r.scenario);
    out.push_str("</section>\n");
}

/// The handful of numbers a reader looks for first; a tile turns red when it misses its
/// pass criterion.
fn write_key_figures(out: &mut String, r: &Report) {
    let c = &r.scenario.criteria;
    let connected_pct =
        (r.peers.planned > 0).then(|| r.peers.connected as f64 * 100.0 / r.peers.planned as f64);
    let measured = r.latency_us.count > 0;
    let mut tiles = vec![
        (
            "connected",
            format!("{} / {}", int(r.peers.connected), int(r.peers.planned)),
            matches!((connected_pct, c.min_connected_pct), (Some(v), Some(min)) if v < min),
        ),
        (
            "latency p50",
            latency_or_dash(&r.latency_us, r.latency_us.p50),
            false,
        ),
        (
            "latency p99",
            latency_or_dash(&r.latency_us, r.latency_us.p99),
            measured && c.max_p99_us.is_some_and(|max| r.latency_us.p99 > max),
        ),
        (
            "loss",
            loss_label(r),
            c.max_loss_pct.is_some_and(|max| r.packets.loss_pct > max),
        ),
        ("join p99", join_p99_label(&r.join_ms), false),
    ];
    if let Some(room) = &r.room {
        let min = c.min_streams.unwrap_or(room.streams_expected);
        tiles.push((
            "streams",
            format!(
                "{} / {}",
                int(room.streams_received),
                int(room.streams_expected)
            ),
            room.streams_received < min,
        ));
        tiles.push(("room join p99", join_p99_label(&room.join_ms), false));
    }
    if let Some(server) = sampled(r.server.as_ref()) {
        tiles.push((
            "server CPU",
            value_label(server.cpu_pct_mean, Unit::Percent),
            false,
        ));
    }
    out.push_str("<dl class=\"figures\">");
    for (name, value, missed) in tiles {
        let class = if missed { " class=\"missed\"" } else { "" };
        put!(
            out,
            "<div{class}><dt>{name}</dt><dd>{}</dd></div>",
            Esc(&value)
        );
    }
    out.push_str("</dl>\n");
}

fn write_scenario_details(out: &mut String, s: &Scenario) {
    let rows: [(&str, String); 15] = [
        ("server", s.url.clone()),
        ("protocol", protocol_name(s.protocol).to_string()),
        ("rooms", format!("{} (named {}0…)", s.rooms, s.room_prefix)),
        ("publishers per room", s.publishers_per_room().to_string()),
        ("subscribers per room", s.subscribers_per_room().to_string()),
        ("media", media_name(s.media).to_string()),
        (
            "video",
            format!("{} kbit/s, {} fps", int(s.video_kbps.into()), s.video_fps),
        ),
        (
            "audio DTX",
            if s.audio_dtx { "on" } else { "off" }.to_string(),
        ),
        ("measured", value_label(s.duration_s, Unit::Seconds)),
        ("ramp-up", format!("{} peers/s", trimmed(s.ramp_per_s, 2))),
        ("churn", format!("{} rejoins/s", trimmed(s.churn_per_s, 2))),
        (
            "connect timeout",
            value_label(s.connect_timeout_s, Unit::Seconds),
        ),
        (
            "generator threads",
            if s.threads == 0 {
                "one per core".to_string()
            } else {
                s.threads.to_string()
            },
        ),
        (
            "criteria",
            criteria_line(&s.criteria).unwrap_or_else(|| "none".to_string()),
        ),
        ("peers planned", int(s.planned_peers())),
    ];
    out.push_str("<details><summary>scenario</summary><dl>\n");
    for (name, value) in rows {
        put!(out, "<dt>{name}</dt><dd>{}</dd>\n", Esc(&value));
    }
    out.push_str("</dl></details>\n");
}

/// One table with a column per run when comparing; for a single run, one small table per group
/// flowed into columns, so the numbers fit on a screen.
fn write_summary(out: &mut String, runs: &[Run<'_>]) {
    let compare = runs.len() > 1;
    out.push_str("<section>\n<h2>Summary</h2>\n");
    if compare {
        out.push_str(
            "<p class=\"hint\">Percentages next to a value are relative to the first run; \
             green is better, red is worse.</p>\n<div class=\"table-wrap\">\
             <table class=\"summary\">\n<thead><tr><th></th>",
        );
        for run in runs {
            put!(
                out,
                "<th scope=\"col\"><span class=\"swatch\" style=\"--c:{}\"></span>{}</th>",
                run.color,
                Esc(run.label())
            );
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for group in summary_groups(runs) {
            write_group_rows(out, &group, runs.len());
        }
        out.push_str("</tbody></table></div>\n");
    } else {
        out.push_str("<div class=\"groups\">\n");
        // The card above already shows the verdict.
        for group in summary_groups(runs).iter().filter(|g| g.title != RESULT) {
            out.push_str("<div class=\"table-wrap\"><table class=\"summary\"><tbody>\n");
            write_group_rows(out, group, runs.len());
            out.push_str("</tbody></table></div>\n");
        }
        out.push_str("</div>\n");
    }
    out.push_str("</section>\n");
}

fn write_group_rows(out: &mut String, group: &Group, columns: usize) {
    let compare = columns > 1;
    put!(
        out,
        "<tr class=\"group\"><th colspan=\"{}\">{}</th></tr>\n",
        columns + 1,
        group.title
    );
    for row in &group.rows {
        let indent = if row.indent { " class=\"sub\"" } else { "" };
        put!(
            out,
            "<tr><th scope=\"row\"{indent}>{}</th>",
            Esc(&row.label)
        );
        let base = row.cells.first().and_then(|c| c.value);
        for (i, cell) in row.cells.iter().enumerate() {
            match cell.class {
                Some(class) => put!(out, "<td class=\"{class}\">{}", Esc(&cell.text)),
                None => put!(out, "<td>{}", Esc(&cell.text)),
            }
            if compare && i > 0 {
                write_delta(out, base, cell.value, row.better);
            }
            out.push_str("</td>");
        }
        out.push_str("</tr>\n");
    }
}

/// `+12%` after a value, colored when the row knows which direction is better.
fn write_delta(out: &mut String, base: Option<f64>, value: Option<f64>, better: Better) {
    let (Some(base), Some(value)) = (base, value) else {
        return;
    };
    if base == 0.0 || value == base || !base.is_finite() || !value.is_finite() {
        return;
    }
    let pct = (value - base) / base.abs() * 100.0;
    let class = match better {
        Better::Lower if pct < 0.0 => "delta good",
        Better::Higher if pct > 0.0 => "delta good",
        Better::Neither => "delta",
        _ => "delta bad",
    };
    let magnitude = pct.abs();
    let text = if magnitude >= 10.0 {
        format!("{magnitude:.0}")
    } else {
        format!("{magnitude:.1}")
    };
    if text == "0.0" {
        return;
    }
    let sign = if pct < 0.0 { "−" } else { "+" };
    put!(out, " <span class=\"{class}\">{sign}{text}%</span>");
}

fn write_charts(out: &mut String, runs: &[Run<'_>]) {
    let time = time_extent(runs);
    let sections = [
        ("Latency", vec![latency_cdf(runs), latency_tail(runs)]),
        (
            "Over time",
            vec![
                packet_rate(runs, time),
                p99_over_time(runs, time),
                loss_over_time(runs, time),
                peers_over_time(runs, time),
            ],
        ),
        (
            "Join time and resources",
            vec![
                join_histogram(runs),
                cpu_over_time(runs, time),
                rss_over_time(runs, time),
            ],
        ),
    ];
    let mut id = 0;
    for (title, charts) in sections {
        put!(out, "<section>\n<h2>{title}</h2>\n<div class=\"charts\">\n");
        for chart in charts {
            chart.write(out, id);
            id += 1;
        }
        out.push_str("</div>\n</section>\n");
    }
}

fn write_footer(out: &mut String, runs: &[Run<'_>]) {
    put!(
        out,
        "<footer>sfu-report {} · {} · latency is one-way, publisher send to subscriber \
         receive, on the generator's clock</footer>\n</main>\n<script>{SCRIPT}</script>\n\
         </body>\n</html>\n",
        env!("CARGO_PKG_VERSION"),
        plural(runs.len() as u64, "report", "reports"),
    );
}

// ---------------------------------------------------------------------------------------------
// Summary table
// ---------------------------------------------------------------------------------------------

/// The verdict group, which a single report's summary leaves to its card.
const RESULT: &str = "Result";

struct Group {
    title: &'static str,
    rows: Vec<Row>,
}

struct Row {
    label: String,
    better: Better,
    /// A breakdown of the row above it.
    indent: bool,
    /// One per report.
    cells: Vec<Cell>,
}

/// Which direction of change is an improvement, for coloring deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Lower,
    Higher,
    Neither,
}

struct Cell {
    text: String,
    /// The number behind `text`, for deltas; `None` when there is nothing to compare.
    value: Option<f64>,
    class: Option<&'static str>,
}

impl Cell {
    fn count(n: u64) -> Cell {
        Cell {
            text: int(n),
            value: Some(n as f64),
            class: None,
        }
    }

    fn of(v: f64, unit: Unit) -> Cell {
        Cell {
            text: value_label(v, unit),
            value: v.is_finite().then_some(v),
            class: None,
        }
    }

    fn text(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            value: None,
            class: None,
        }
    }

    fn none() -> Cell {
        Cell::text(DASH)
    }
}

fn summary_groups(runs: &[Run<'_>]) -> Vec<Group> {
    let reports: Vec<&Report> = runs.iter().map(|r| r.report).collect();
    let row = |label: &str, better: Better, cell: &dyn Fn(&Report) -> Cell| Row {
        label: label.to_string(),
        better,
        indent: false,
        cells: reports.iter().map(|r| cell(r)).collect(),
    };
    let sub = |label: &str, better: Better, cell: &dyn Fn(&Report) -> Cell| Row {
        indent: true,
        ..row(label, better, cell)
    };

    let verdict = vec![row(
        "verdict",
        Better::Neither,
        &|r| match r.verdict.outcome {
            Outcome::Pass => Cell {
                class: Some("pass"),
                ..Cell::text("PASS")
            },
            Outcome::Fail => Cell {
                class: Some("fail"),
                ..Cell::text(format!(
                    "FAIL ({})",
                    plural(r.verdict.failures.len() as u64, "reason", "reasons")
                ))
            },
            Outcome::None => Cell::text("none (no criteria)"),
        },
    )];

    let reasons: BTreeSet<&str> = reports
        .iter()
        .flat_map(|r| r.peers.failures.keys().map(String::as_str))
        .collect();
    let mut peers = vec![
        row("planned", Better::Neither, &|r| {
            Cell::count(r.peers.planned)
        }),
        row("connected", Better::Higher, &|r| {
            let p = &r.peers;
            let share = if p.planned > 0 {
                format!(
                    " ({})",
                    value_label(p.connected as f64 * 100.0 / p.planned as f64, Unit::Percent)
                )
            } else {
                String::new()
            };
            Cell {
                text: format!("{}{share}", int(p.connected)),
                ..Cell::count(p.connected)
            }
        }),
        sub("publishers / subscribers", Better::Neither, &|r| {
            Cell::text(format!(
                "{} / {}",
                int(r.peers.publishers_connected),
                int(r.peers.subscribers_connected)
            ))
        }),
        row("failed", Better::Lower, &|r| Cell::count(r.peers.failed)),
    ];
    for reason in reasons {
        peers.push(sub(reason, Better::Lower, &|r| {
            Cell::count(r.peers.failures.get(reason).copied().unwrap_or(0))
        }));
    }
    peers.push(row("rejoins (churn)", Better::Neither, &|r| {
        Cell::count(r.peers.rejoins)
    }));

    let join = |label: &str, pick: fn(&Report) -> f64| {
        row(label, Better::Lower, &|r| {
            if r.join_ms.count == 0 {
                Cell::none()
            } else {
                Cell::of(pick(r), Unit::Millis)
            }
        })
    };
    let joins = vec![
        row("peers measured", Better::Neither, &|r| {
            Cell::count(r.join_ms.count)
        }),
        join("p50", |r| r.join_ms.p50),
        join("p90", |r| r.join_ms.p90),
        join("p99", |r| r.join_ms.p99),
        join("max", |r| r.join_ms.max),
    ];

    let latency = |label: &str, pick: fn(&Latency) -> f64| {
        row(label, Better::Lower, &|r| {
            if r.latency_us.count == 0 {
                Cell::none()
            } else {
                Cell::of(pick(&r.latency_us), Unit::Micros)
            }
        })
    };
    let latencies = vec![
        row("packets measured", Better::Neither, &|r| {
            Cell::count(r.latency_us.count)
        }),
        latency("min", |l| l.min as f64),
        latency("mean", |l| l.mean),
        latency("p50", |l| l.p50 as f64),
        latency("p90", |l| l.p90 as f64),
        latency("p99", |l| l.p99 as f64),
        latency("p99.9", |l| l.p999 as f64),
        latency("max", |l| l.max as f64),
    ];

    let packets = vec![
        row("sent", Better::Neither, &|r| Cell::count(r.packets.sent)),
        row("received", Better::Neither, &|r| {
            Cell::count(r.packets.received)
        }),
        row("expected", Better::Neither, &|r| {
            Cell::count(r.packets.expected)
        }),
        row("lost", Better::Lower, &|r| Cell::count(r.packets.lost)),
        row("loss", Better::Lower, &|r| {
            if r.packets.expected == 0 {
                Cell::none()
            } else {
                Cell::of(r.packets.loss_pct, Unit::Percent)
            }
        }),
        row("duplicates", Better::Lower, &|r| {
            Cell::count(r.packets.duplicates)
        }),
        row("reordered", Better::Lower, &|r| {
            Cell::count(r.packets.reordered)
        }),
        row("corrupt", Better::Lower, &|r| {
            Cell::count(r.packets.corrupt)
        }),
        row("data sent / received", Better::Neither, &|r| {
            Cell::text(format!(
                "{} / {}",
                bytes_label(r.packets.bytes_sent),
                bytes_label(r.packets.bytes_received)
            ))
        }),
    ];

    let nodes = node_rows(&reports);

    let jitter = |label: &str, pick: fn(&Report) -> f64| {
        row(label, Better::Lower, &|r| {
            if r.packets.received == 0 {
                Cell::none()
            } else {
                Cell::of(pick(r), Unit::Millis)
            }
        })
    };
    let jitter = vec![
        jitter("mean", |r| r.jitter_ms.mean),
        jitter("p99", |r| r.jitter_ms.p99),
        jitter("max", |r| r.jitter_ms.max),
    ];

    let usage = |label: &str,
                 better: Better,
                 process: fn(&Report) -> Option<&ProcessUsage>,
                 pick: fn(&ProcessUsage) -> f64,
                 unit: Unit| {
        row(label, better, &|r| match sampled(process(r)) {
            Some(u) => Cell::of(pick(u), unit),
            None => Cell::text("not sampled"),
        })
    };
    let server: fn(&Report) -> Option<&ProcessUsage> = |r| r.server.as_ref();
    let generator: fn(&Report) -> Option<&ProcessUsage> = |r| Some(&r.generator);
    let resources = vec![
        usage(
            "server CPU mean",
            Better::Lower,
            server,
            |u| u.cpu_pct_mean,
            Unit::Percent,
        ),
        usage(
            "server CPU max",
            Better::Lower,
            server,
            |u| u.cpu_pct_max,
            Unit::Percent,
        ),
        usage(
            "server RSS max",
            Better::Lower,
            server,
            |u| u.rss_mb_max,
            Unit::MegaBytes,
        ),
        usage(
            "generator CPU mean",
            Better::Neither,
            generator,
            |u| u.cpu_pct_mean,
            Unit::Percent,
        ),
        usage(
            "generator CPU max",
            Better::Neither,
            generator,
            |u| u.cpu_pct_max,
            Unit::Percent,
        ),
        usage(
            "generator RSS max",
            Better::Neither,
            generator,
            |u| u.rss_mb_max,
            Unit::MegaBytes,
        ),
    ];

    let groups = vec![
        Group {
            title: RESULT,
            rows: verdict,
        },
        Group {
            title: "Peers",
            rows: peers,
        },
        Group {
            title: "Join time (request to first media)",
            rows: joins,
        },
        Group {
            title: "One-way latency",
            rows: latencies,
        },
        Group {
            title: NODES,
            rows: nodes,
        },
        Group {
            title: "Packets",
            rows: packets,
        },
        Group {
            title: "Jitter (RFC 3550)",
            rows: jitter,
        },
        Group {
            title: "Resources (CPU in % of one core)",
            rows: resources,
        },
    ];
    // Runs against servers that name no node have no node rows.
    groups.into_iter().filter(|g| !g.rows.is_empty()).collect()
}

/// The group of where peers landed and of local vs relayed packets.
const NODES: &str = "Nodes (X-Sfu-Node): local vs relayed";

/// Peers per node (every node any run names), then latency and loss of the packets that came
/// from a publisher on the subscriber's node (local) or over a relay. No rows when no run
/// landed a peer anywhere.
fn node_rows(reports: &[&Report]) -> Vec<Row> {
    let names: BTreeSet<&str> = reports
        .iter()
        .flat_map(|r| r.nodes.keys().map(String::as_str))
        .collect();
    let landed = |p: &NodePeers| p.publishers + p.subscribers > 0;
    let unnamed = reports.iter().any(|r| landed(&r.node_unknown));
    if names.is_empty() && !unnamed {
        return Vec::new();
    }
    let row = |label: &str, better: Better, indent: bool, cell: &dyn Fn(&Report) -> Cell| Row {
        label: label.to_string(),
        better,
        indent,
        cells: reports.iter().map(|r| cell(r)).collect(),
    };
    let peers = |p: Option<&NodePeers>| match p {
        Some(p) if landed(p) => {
            let failed = if p.failed > 0 {
                format!(", {} failed", int(p.failed))
            } else {
                String::new()
            };
            Cell::text(format!(
                "{} pub / {} sub{failed}",
                int(p.publishers),
                int(p.subscribers)
            ))
        }
        _ => Cell::none(),
    };
    let mut rows: Vec<Row> = names
        .iter()
        .map(|name| row(name, Better::Neither, false, &|r| peers(r.nodes.get(*name))))
        .collect();
    if unnamed {
        rows.push(row("node not named", Better::Neither, false, &|r| {
            peers(Some(&r.node_unknown))
        }));
    }
    type Pick = for<'a> fn(&'a Report) -> (Option<&'a Latency>, Option<&'a PathPackets>);
    let paths: [(&str, Pick); 2] = [
        ("local", |r| {
            (r.latency_local_us.as_ref(), r.packets_local.as_ref())
        }),
        ("relayed", |r| {
            (r.latency_relayed_us.as_ref(), r.packets_relayed.as_ref())
        }),
    ];
    for (name, pick) in paths {
        rows.push(row(
            &format!("{name} subscribers"),
            Better::Neither,
            false,
            &|r| match pick(r).1 {
                Some(k) => Cell::count(k.subscribers),
                None => Cell::none(),
            },
        ));
        let latency = |label: &str, value: fn(&Latency) -> u64| {
            row(label, Better::Lower, true, &|r| match pick(r).0 {
                Some(l) if l.count > 0 => Cell::of(value(l) as f64, Unit::Micros),
                _ => Cell::none(),
            })
        };
        rows.push(latency("latency p50", |l| l.p50));
        rows.push(latency("latency p99", |l| l.p99));
        rows.push(row("loss", Better::Lower, true, &|r| match pick(r).1 {
            Some(k) if k.expected > 0 => Cell::of(k.loss_pct, Unit::Percent),
            _ => Cell::none(),
        }));
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// The charts
// ---------------------------------------------------------------------------------------------

/// Points of one line, split where the data has gaps.
type Segments = Vec<Vec<(f64, f64)>>;

/// Pulls one metric's line out of a report.
type Extract = fn(&Report) -> Segments;

/// The time axis every timeline shares, so plots line up vertically.
fn time_axis(time: Option<(f64, f64)>) -> AxisSpec {
    AxisSpec {
        title: "time since start",
        scale: Scale::Linear,
        unit: Unit::Seconds,
        zero_based: true,
        extent: time,
    }
}

fn value_axis(title: &'static str, unit: Unit) -> AxisSpec {
    AxisSpec {
        title,
        scale: Scale::Linear,
        unit,
        zero_based: true,
        extent: None,
    }
}

fn time_extent(runs: &[Run<'_>]) -> Option<(f64, f64)> {
    let times = runs.iter().flat_map(|run| {
        let r = run.report;
        let ticks = r.timeline.iter().map(|t| t.t_s);
        let usage = r
            .server
            .iter()
            .chain([&r.generator])
            .flat_map(|u| u.samples.iter().map(|s| s.t_s));
        ticks.chain(usage)
    });
    min_max(times.filter(|t| t.is_finite()))
}

fn latency_cdf(runs: &[Run<'_>]) -> Chart {
    let mut chart = line_chart(
        "Latency distribution (CDF)",
        runs,
        AxisSpec {
            title: "one-way latency (log)",
            scale: Scale::Log,
            unit: Unit::Micros,
            zero_based: false,
            extent: None,
        },
        AxisSpec {
            title: "packets at or below",
            scale: Scale::Linear,
            unit: Unit::Percentile,
            zero_based: true,
            extent: Some((0.0, 100.0)),
        },
        &[("latency", Style::Solid, |r| vec![cdf(r)])],
    );
    chart.note = Some("Further right is slower; a steep curve is a tight distribution.".into());
    chart
}

/// The tail of the CDF on a "nines" scale, where p99, p99.9 and p99.99 are equally far apart.
fn latency_tail(runs: &[Run<'_>]) -> Chart {
    // Zoom x to the tail: from the fastest p90 to the slowest max.
    let extent = min_max(runs.iter().flat_map(|run| {
        cdf(run.report)
            .into_iter()
            .filter(|&(_, p)| p >= 90.0)
            .map(|(us, _)| us)
            .filter(|&us| us > 0.0)
    }));
    let mut chart = line_chart(
        "Latency tail (p90 and up)",
        runs,
        AxisSpec {
            title: "one-way latency (log)",
            scale: Scale::Log,
            unit: Unit::Micros,
            zero_based: false,
            extent,
        },
        AxisSpec {
            title: "percentile",
            scale: Scale::Nines,
            unit: Unit::Percentile,
            zero_based: false,
            extent: None,
        },
        &[("latency", Style::Solid, |r| vec![cdf(r)])],
    );
    chart.note = Some("Each grid line adds a nine; the top edge is the maximum.".into());
    chart
}

fn p99_over_time(runs: &[Run<'_>], time: Option<(f64, f64)>) -> Chart {
    let mut chart = line_chart(
        "p99 latency per second",
        runs,
        time_axis(time),
        value_axis("p99 one-way latency", Unit::Micros),
        &[("p99", Style::Solid, |r| {
            segments(
                r.timeline
                    .iter()
                    .map(|t| (t.p99_us > 0).then_some((t.t_s, t.p99_us as f64))),
            )
        })],
    );
    chart.note = Some("Gaps are seconds in which no packet arrived.".into());
    chart
}

fn packet_rate(runs: &[Run<'_>], time: Option<(f64, f64)>) -> Chart {
    let mut chart = line_chart(
        "Media packet rate",
        runs,
        time_axis(time),
        value_axis("packets/s", Unit::Count),
        &[
            ("received by subscribers", Style::Solid, |r| {
                segments(r.timeline.iter().map(|t| Some((t.t_s, t.pps_in as f64))))
            }),
            ("sent by publishers", Style::Dashed, |r| {
                segments(r.timeline.iter().map(|t| Some((t.t_s, t.pps_out as f64))))
            }),
        ],
    );
    chart.note = Some("Received is the sum over subscribers, so it is sent × fan-out.".into());
    chart
}

fn loss_over_time(runs: &[Run<'_>], time: Option<(f64, f64)>) -> Chart {
    line_chart(
        "Packet loss per second",
        runs,
        time_axis(time),
        value_axis("loss, % of expected", Unit::Percent),
        &[("loss", Style::Solid, |r| {
            segments(r.timeline.iter().map(|t| Some((t.t_s, t.loss_pct))))
        })],
    )
}

fn peers_over_time(runs: &[Run<'_>], time: Option<(f64, f64)>) -> Chart {
    let connected: (&'static str, Style, Extract) = ("connected", Style::Solid, |r| {
        segments(
            r.timeline
                .iter()
                .map(|t| Some((t.t_s, t.peers_connected as f64))),
        )
    });
    let failed: (&'static str, Style, Extract) = ("failed (cumulative)", Style::Dotted, |r| {
        let mut total = 0u64;
        segments(r.timeline.iter().map(|t| {
            total += t.failures;
            Some((t.t_s, total as f64))
        }))
    });
    let any_failures = runs
        .iter()
        .any(|run| run.report.timeline.iter().any(|t| t.failures > 0));
    let metrics: &[(&'static str, Style, Extract)] = if any_failures {
        &[connected, failed]
    } else {
        &[connected]
    };
    line_chart(
        "Peers connected",
        runs,
        time_axis(time),
        value_axis("peers", Unit::Count),
        metrics,
    )
}

fn join_histogram(runs: &[Run<'_>]) -> Chart {
    let buckets: Vec<Vec<(f64, f64, f64)>> = runs.iter().map(|r| join_buckets(r.report)).collect();
    // Zoom to the occupied buckets: a 50 ms bucket grid from zero would squeeze 2 s joins.
    let occupied = buckets.iter().flatten().filter(|b| b.2 > 0.0);
    let extent = min_max(occupied.flat_map(|&(lo, hi, _)| [lo, hi]));
    let multi = runs.len() > 1;
    let mut legend = Vec::new();
    let mut series = Vec::new();
    for (run, buckets) in runs.iter().zip(buckets) {
        if multi {
            legend.push(LegendEntry::report(run, buckets.iter().any(|b| b.2 > 0.0)));
        }
        series.push(Series {
            name: run.label().to_string(),
            color: run.color,
            style: Style::Solid,
            shape: Shape::Buckets(buckets),
        });
    }
    Chart {
        title: "Join time",
        x: AxisSpec {
            title: "request to first media",
            scale: Scale::Linear,
            unit: Unit::Millis,
            zero_based: false,
            extent,
        },
        y: value_axis("peers per bucket", Unit::Count),
        series,
        legend,
        note: Some(
            "Subscribers: signaling request to first media packet. Publishers: request to DTLS \
             connected."
                .into(),
        ),
    }
}

fn cpu_over_time(runs: &[Run<'_>], time: Option<(f64, f64)>) -> Chart {
    let mut chart = line_chart(
        "CPU",
        runs,
        time_axis(time),
        value_axis("% of one core", Unit::Percent),
        &[
            ("server", Style::Solid, |r| {
                usage_line(r.server.as_ref(), |s| s.cpu_pct)
            }),
            ("generator", Style::Dashed, |r| {
                usage_line(Some(&r.generator), |s| s.cpu_pct)
            }),
        ],
    );
    chart.note = server_note(runs, "200% is two cores busy.");
    chart
}

fn rss_over_time(runs: &[Run<'_>], time: Option<(f64, f64)>) -> Chart {
    let mut chart = line_chart(
        "Resident memory",
        runs,
        time_axis(time),
        value_axis("RSS", Unit::MegaBytes),
        &[
            ("server", Style::Solid, |r| {
                usage_line(r.server.as_ref(), |s| s.rss_mb)
            }),
            ("generator", Style::Dashed, |r| {
                usage_line(Some(&r.generator), |s| s.rss_mb)
            }),
        ],
    );
    chart.note = server_note(runs, "");
    chart
}

/// Says which runs have no server samples, and how to get them.
fn server_note(runs: &[Run<'_>], base: &str) -> Option<String> {
    let missing: Vec<&str> = runs
        .iter()
        .filter(|r| r.report.server.is_none())
        .map(Run::label)
        .collect();
    let note = match (runs.len(), missing.is_empty()) {
        (_, true) => base.to_string(),
        (1, false) => format!("Server not sampled (sfu-load --server-pid). {base}"),
        _ => format!(
            "Server not sampled for {} (sfu-load --server-pid). {base}",
            missing.join(", ")
        ),
    };
    let note = note.trim().to_string();
    (!note.is_empty()).then_some(note)
}

/// A chart with one line per run and metric: the run's color, the metric's line style.
fn line_chart(
    title: &'static str,
    runs: &[Run<'_>],
    x: AxisSpec,
    y: AxisSpec,
    metrics: &[(&'static str, Style, Extract)],
) -> Chart {
    let multi = runs.len() > 1;
    let mut series = Vec::new();
    let mut legend = Vec::new();
    for run in runs {
        let mut any = false;
        for &(metric, style, extract) in metrics {
            let lines = extract(run.report);
            any |= lines.iter().any(|l| !l.is_empty());
            let name = if multi && metrics.len() > 1 {
                format!("{} · {metric}", run.label())
            } else if metrics.len() > 1 {
                metric.to_string()
            } else {
                run.label().to_string()
            };
            series.push(Series {
                name,
                color: run.color,
                style,
                shape: Shape::Lines(lines),
            });
        }
        if multi {
            legend.push(LegendEntry::report(run, any));
        }
    }
    if metrics.len() > 1 {
        let color = if multi {
            KEY_GREY
        } else {
            runs.first().map_or(KEY_GREY, |r| r.color)
        };
        legend.extend(metrics.iter().map(|&(metric, style, _)| LegendEntry {
            label: metric.to_string(),
            color,
            style,
        }));
    }
    Chart {
        title,
        x,
        y,
        series,
        legend,
        note: None,
    }
}

/// `(latency µs, percentile)` points, ascending. Falls back to the summary percentiles when the
/// report carries no CDF.
fn cdf(r: &Report) -> Vec<(f64, f64)> {
    let l = &r.latency_us;
    let mut points: Vec<(f64, f64)> = if !l.cdf.is_empty() {
        l.cdf.iter().map(|&(p, us)| (us as f64, p)).collect()
    } else if l.count > 0 {
        [
            (0.0, l.min),
            (50.0, l.p50),
            (90.0, l.p90),
            (99.0, l.p99),
            (99.9, l.p999),
            (100.0, l.max),
        ]
        .iter()
        .map(|&(p, us)| (us as f64, p))
        .collect()
    } else {
        Vec::new()
    };
    points.retain(|&(us, p)| us.is_finite() && (0.0..=100.0).contains(&p));
    points.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.total_cmp(&b.0)));
    points
}

/// Join-time buckets as `(lower ms, upper ms, peers)`; the first bucket starts at zero.
fn join_buckets(r: &Report) -> Vec<(f64, f64, f64)> {
    let mut lower = 0.0;
    let mut buckets = Vec::new();
    for &(upper, peers) in &r.join_ms.histogram {
        if !upper.is_finite() || upper <= lower {
            continue;
        }
        buckets.push((lower, upper, peers as f64));
        lower = upper;
    }
    buckets
}

fn usage_line(usage: Option<&ProcessUsage>, pick: fn(&ProcessSample) -> f64) -> Segments {
    usage.map_or_else(Vec::new, |u| {
        segments(u.samples.iter().map(|s| Some((s.t_s, pick(s)))))
    })
}

/// Splits a sequence of points into lines at each `None` or non-finite point.
fn segments(points: impl Iterator<Item = Option<(f64, f64)>>) -> Segments {
    let mut lines: Segments = vec![Vec::new()];
    for point in points {
        match point {
            Some((x, y)) if x.is_finite() && y.is_finite() => {
                if let Some(line) = lines.last_mut() {
                    line.push((x, y));
                }
            }
            _ => {
                if lines.last().is_some_and(|l| !l.is_empty()) {
                    lines.push(Vec::new());
                }
            }
        }
    }
    lines.retain(|l| !l.is_empty());
    lines
}

// ---------------------------------------------------------------------------------------------
// Plotting
// ---------------------------------------------------------------------------------------------

/// SVG geometry, in viewBox units; the SVG scales to the width of its column.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 270.0;
const MARGIN_LEFT: f64 = 64.0;
const MARGIN_RIGHT: f64 = 26.0;
const MARGIN_TOP: f64 = 26.0;
const MARGIN_BOTTOM: f64 = 38.0;

/// Hover read-outs keep at most this many points per series; the drawn line keeps all.
const MAX_TIP_POINTS: usize = 1200;

struct Chart {
    title: &'static str,
    x: AxisSpec,
    y: AxisSpec,
    series: Vec<Series>,
    legend: Vec<LegendEntry>,
    /// One line under the plot: how to read it, or what is missing.
    note: Option<String>,
}

struct Series {
    /// Hover read-out name.
    name: String,
    color: &'static str,
    style: Style,
    shape: Shape,
}

enum Shape {
    /// Polylines; a gap in the data starts a new one.
    Lines(Segments),
    /// Histogram buckets `(lower, upper, count)`, ascending and contiguous.
    Buckets(Vec<(f64, f64, f64)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Solid,
    Dashed,
    Dotted,
}

impl Style {
    fn dash_attr(self) -> &'static str {
        match self {
            Style::Solid => "",
            Style::Dashed => " stroke-dasharray=\"6 4\"",
            Style::Dotted => " stroke-dasharray=\"1.5 3.5\" stroke-linecap=\"round\"",
        }
    }
}

struct LegendEntry {
    label: String,
    color: &'static str,
    style: Style,
}

impl LegendEntry {
    fn report(run: &Run<'_>, has_data: bool) -> LegendEntry {
        LegendEntry {
            label: if has_data {
                run.label().to_string()
            } else {
                format!("{} (no samples)", run.label())
            },
            color: run.color,
            style: Style::Solid,
        }
    }
}

/// What an axis shows; its domain and ticks are fitted to the data at render time.
#[derive(Debug, Clone, Copy)]
struct AxisSpec {
    title: &'static str,
    scale: Scale,
    unit: Unit,
    /// Linear scales include zero.
    zero_based: bool,
    /// Data range to show instead of the data's own.
    extent: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    Linear,
    Log,
    /// Percentiles spaced by `-log10(1 - p/100)`: 90, 99, 99.9, ... equally far apart.
    Nines,
}

impl Scale {
    fn forward(self, v: f64) -> f64 {
        match self {
            Scale::Linear => v,
            Scale::Log => v.log10(),
            Scale::Nines => -(1.0 - v / 100.0).log10(),
        }
    }

    /// Whether `v` can be placed on this scale at all.
    fn admits(self, v: f64) -> bool {
        match self {
            Scale::Linear => v.is_finite(),
            Scale::Log => v.is_finite() && v > 0.0,
            Scale::Nines => v.is_finite() && (0.0..=100.0).contains(&v),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Seconds,
    Micros,
    Millis,
    Count,
    /// Loss and CPU shares.
    Percent,
    /// Percent of packets at or below a latency.
    Percentile,
    MegaBytes,
}

impl Chart {
    fn write(&self, out: &mut String, id: usize) {
        put!(
            out,
            "<figure class=\"chart\">\n<figcaption><h3>{}</h3>",
            Esc(self.title)
        );
        if !self.legend.is_empty() {
            out.push_str("<ul class=\"legend\">");
            for (i, entry) in self.legend.iter().enumerate() {
                // Line-style keys (grey) follow the runs' colors; a rule sets them apart.
                let after_runs =
                    i > 0 && entry.color == KEY_GREY && self.legend[i - 1].color != KEY_GREY;
                if after_runs {
                    out.push_str("<li class=\"sep\" aria-hidden=\"true\"></li>");
                }
                put!(
                    out,
                    "<li class=\"key\"><svg width=\"24\" height=\"10\" aria-hidden=\"true\">\
                     <line x1=\"1\" y1=\"5\" x2=\"23\" y2=\"5\" stroke=\"{}\" stroke-width=\"2.5\"{}/>\
                     </svg>{}</li>",
                    entry.color,
                    entry.style.dash_attr(),
                    Esc(&entry.label)
                );
            }
            out.push_str("</ul>");
        }
        out.push_str("</figcaption>\n");
        if self.has_data() {
            self.write_svg(out, id);
        } else {
            out.push_str("<div class=\"empty\">no samples</div>\n");
        }
        if let Some(note) = &self.note {
            put!(out, "<p class=\"note\">{}</p>\n", Esc(note));
        }
        out.push_str("</figure>\n");
    }

    fn has_data(&self) -> bool {
        self.series.iter().any(|s| match &s.shape {
            Shape::Lines(lines) => lines
                .iter()
                .flatten()
                .any(|&(x, y)| self.x.scale.admits(x) && self.y.scale.admits(y)),
            Shape::Buckets(buckets) => buckets.iter().any(|b| b.2 > 0.0),
        })
    }

    /// Every x (or y) value the series hold, for fitting the axes.
    fn values(&self, x_dim: bool) -> Vec<f64> {
        let mut values = Vec::new();
        for s in &self.series {
            match &s.shape {
                Shape::Lines(lines) => values.extend(
                    lines
                        .iter()
                        .flatten()
                        .map(|&(x, y)| if x_dim { x } else { y }),
                ),
                Shape::Buckets(buckets) => {
                    for &(lo, hi, n) in buckets {
                        if x_dim {
                            values.extend([lo, hi]);
                        } else {
                            values.push(n);
                        }
                    }
                }
            }
        }
        values
    }

    fn write_svg(&self, out: &mut String, id: usize) {
        let x = Axis::fit(&self.x, &self.values(true));
        let y = Axis::fit(&self.y, &self.values(false));
        let frame = Frame {
            left: MARGIN_LEFT,
            right: WIDTH - MARGIN_RIGHT,
            top: MARGIN_TOP,
            bottom: HEIGHT - MARGIN_BOTTOM,
        };
        let px = |v: f64| x.position(v, frame.left, frame.right);
        let py = |v: f64| y.position(v, frame.bottom, frame.top);

        put!(
            out,
            "<svg class=\"plot\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\" \
             data-tip=\"{}\">\n",
            Esc(self.title),
            Esc(&self.tooltip_data(&x, &y, &frame).to_string())
        );
        put!(
            out,
            "<defs><clipPath id=\"plot-clip-{id}\"><rect x=\"{}\" y=\"{}\" width=\"{}\" \
             height=\"{}\"/></clipPath></defs>\n",
            N(frame.left - 3.0),
            N(frame.top - 3.0),
            N(frame.right - frame.left + 6.0),
            N(frame.bottom - frame.top + 6.0)
        );

        out.push_str("<g class=\"grid\">");
        for (v, _) in &y.ticks {
            let yy = N(py(*v));
            put!(
                out,
                "<line x1=\"{}\" x2=\"{}\" y1=\"{yy}\" y2=\"{yy}\"/>",
                N(frame.left),
                N(frame.right)
            );
        }
        for (v, _) in &x.ticks {
            let xx = N(px(*v));
            put!(
                out,
                "<line x1=\"{xx}\" x2=\"{xx}\" y1=\"{}\" y2=\"{}\"/>",
                N(frame.top),
                N(frame.bottom)
            );
        }
        out.push_str("</g>\n<g class=\"axis\">");
        put!(
            out,
            "<line x1=\"{l}\" x2=\"{r}\" y1=\"{b}\" y2=\"{b}\"/><line x1=\"{l}\" x2=\"{l}\" \
             y1=\"{t}\" y2=\"{b}\"/>",
            l = N(frame.left),
            r = N(frame.right),
            t = N(frame.top),
            b = N(frame.bottom)
        );
        for (v, label) in &y.ticks {
            put!(
                out,
                "<text x=\"{}\" y=\"{}\" dy=\"0.32em\" text-anchor=\"end\">{}</text>",
                N(frame.left - 7.0),
                N(py(*v)),
                Esc(label)
            );
        }
        for (v, label) in &x.ticks {
            put!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                N(px(*v)),
                N(frame.bottom + 16.0),
                Esc(label)
            );
        }
        put!(
            out,
            "<text class=\"axis-title\" x=\"{}\" y=\"{}\">↑ {}</text>\
             <text class=\"axis-title\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{} →</text>",
            N(frame.left - 7.0),
            N(frame.top - 12.0),
            Esc(self.y.title),
            N(frame.right),
            N(HEIGHT - 3.0),
            Esc(self.x.title)
        );
        out.push_str("</g>\n");

        put!(out, "<g clip-path=\"url(#plot-clip-{id})\">\n");
        for s in &self.series {
            match &s.shape {
                Shape::Lines(lines) => write_lines(out, s, lines, &px, &py, &x, &y),
                Shape::Buckets(buckets) => write_buckets(out, s, buckets, &px, &py),
            }
        }
        out.push_str("</g>\n</svg>\n");
    }

    /// Pixel positions and read-out text for the hover script:
    /// `{"b": [left, top, right, bottom], "s": [{"n": name, "c": color, "p": [[x, y, xl, yl]]}]}`.
    fn tooltip_data(&self, x: &Axis, y: &Axis, frame: &Frame) -> Value {
        let series: Vec<Value> = self
            .series
            .iter()
            .map(|s| {
                let mut points: Vec<(f64, f64, String, String)> = match &s.shape {
                    Shape::Lines(lines) => lines
                        .iter()
                        .flatten()
                        .filter(|&&(vx, vy)| x.scale.admits(vx) && y.scale.admits(vy))
                        .map(|&(vx, vy)| {
                            (
                                x.position(vx, frame.left, frame.right),
                                y.position(vy, frame.bottom, frame.top),
                                if x.unit == Unit::Seconds {
                                    format!("t = {}", value_label(vx, x.unit))
                                } else {
                                    value_label(vx, x.unit)
                                },
                                value_label(vy, y.unit),
                            )
                        })
                        .collect(),
                    Shape::Buckets(buckets) => buckets
                        .iter()
                        .map(|&(lo, hi, n)| {
                            (
                                x.position((lo + hi) / 2.0, frame.left, frame.right),
                                y.position(n, frame.bottom, frame.top),
                                format!("{}–{}", value_label(lo, x.unit), value_label(hi, x.unit)),
                                value_label(n, y.unit),
                            )
                        })
                        .collect(),
                };
                // Points off the plot are clipped from the drawing; keep them out of read-outs too.
                points.retain(|p| {
                    (frame.left - 1.0..=frame.right + 1.0).contains(&p.0)
                        && (frame.top - 1.0..=frame.bottom + 1.0).contains(&p.1)
                });
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                let stride = points.len().div_ceil(MAX_TIP_POINTS).max(1);
                let last = points.len().saturating_sub(1);
                let points: Vec<Value> = points
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| i % stride == 0 || *i == last)
                    .map(|(_, (px, py, xl, yl))| json!([round1(px), round1(py), xl, yl]))
                    .collect();
                json!({"n": s.name, "c": s.color, "p": points})
            })
            .collect();
        json!({
            "b": [frame.left, frame.top, frame.right, frame.bottom],
            "s": series,
        })
    }
}

struct Frame {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

fn write_lines(
    out: &mut String,
    s: &Series,
    lines: &Segments,
    px: &dyn Fn(f64) -> f64,
    py: &dyn Fn(f64) -> f64,
    x: &Axis,
    y: &Axis,
) {
    let mut d = String::new();
    let mut dots = Vec::new();
    for line in lines {
        let points: Vec<(f64, f64)> = line
            .iter()
            .filter(|&&(vx, vy)| x.scale.admits(vx) && y.scale.admits(vy))
            .map(|&(vx, vy)| (px(vx), py(vy)))
            .collect();
        match points.as_slice() {
            [] => {}
            // A lone point between gaps would be invisible as a path.
            [only] => dots.push(*only),
            [first, rest @ ..] => {
                put!(d, "M{},{}", N(first.0), N(first.1));
                for p in rest {
                    put!(d, "L{},{}", N(p.0), N(p.1));
                }
            }
        }
    }
    if !d.is_empty() {
        put!(
            out,
            "<path class=\"series\" d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\" \
             stroke-linejoin=\"round\"{}><title>{}</title></path>\n",
            s.color,
            s.style.dash_attr(),
            Esc(&s.name)
        );
    }
    for (cx, cy) in dots {
        put!(
            out,
            "<circle cx=\"{}\" cy=\"{}\" r=\"2.5\" fill=\"{}\"><title>{}</title></circle>\n",
            N(cx),
            N(cy),
            s.color,
            Esc(&s.name)
        );
    }
}

/// A histogram as one stepped outline with a light fill, so overlaid runs stay readable.
fn write_buckets(
    out: &mut String,
    s: &Series,
    buckets: &[(f64, f64, f64)],
    px: &dyn Fn(f64) -> f64,
    py: &dyn Fn(f64) -> f64,
) {
    let Some(&(first, _, _)) = buckets.first() else {
        return;
    };
    let base = N(py(0.0));
    let mut d = String::new();
    put!(d, "M{},{base}", N(px(first)));
    for &(_, hi, n) in buckets {
        put!(d, "V{}H{}", N(py(n)), N(px(hi)));
    }
    put!(d, "V{base}Z");
    put!(
        out,
        "<path class=\"series\" d=\"{d}\" fill=\"{c}\" fill-opacity=\"0.18\" stroke=\"{c}\" \
         stroke-width=\"1.5\" stroke-linejoin=\"round\"><title>{}</title></path>\n",
        Esc(&s.name),
        c = s.color,
    );
}

/// A fitted axis: domain in data units and labelled ticks.
#[derive(Debug, Clone)]
struct Axis {
    scale: Scale,
    unit: Unit,
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// Fits the domain to `spec.extent` or, without one, to `data`, then rounds it out to
    /// tick values. Values the scale cannot show (non-finite; zero or less on a log scale) are
    /// ignored; with nothing left, a unit domain is shown.
    fn fit(spec: &AxisSpec, data: &[f64]) -> Axis {
        let admitted =
            |&(a, b): &(f64, f64)| spec.scale.admits(a) && spec.scale.admits(b) && a <= b;
        let extent = spec
            .extent
            .filter(admitted)
            .or_else(|| min_max(data.iter().copied().filter(|&v| spec.scale.admits(v))));
        match spec.scale {
            Scale::Linear => Axis::linear(spec, extent.unwrap_or((0.0, 1.0))),
            Scale::Log => Axis::log(spec, extent.unwrap_or((1.0, 10.0))),
            Scale::Nines => Axis::nines(spec, data),
        }
    }

    fn linear(spec: &AxisSpec, (mut lo, mut hi): (f64, f64)) -> Axis {
        if spec.zero_based {
            lo = lo.min(0.0);
            hi = hi.max(0.0);
        }
        if hi - lo <= f64::EPSILON * hi.abs().max(lo.abs()).max(1.0) {
            if hi == 0.0 {
                hi = 1.0;
            } else {
                let pad = hi.abs() * 0.1;
                hi += pad;
                if !(spec.zero_based && lo == 0.0) {
                    lo -= pad;
                }
            }
        }
        let step = nice_step((hi - lo) / 5.0);
        let first = (lo / step).floor();
        let last = (hi / step).ceil();
        let values: Vec<f64> = (0..=((last - first) as i64).clamp(1, 50))
            .map(|k| (first + k as f64) * step)
            .collect();
        let (lo, hi) = (first * step, last * step);
        let labels = linear_tick_labels(&values, step, spec.unit);
        Axis {
            scale: Scale::Linear,
            unit: spec.unit,
            lo,
            hi,
            ticks: values.into_iter().zip(labels).collect(),
        }
    }

    /// Ticks at 1-2-5 within two decades, else at powers of ten only.
    fn log(spec: &AxisSpec, (lo, hi): (f64, f64)) -> Axis {
        let (mut lo, mut hi) = (floor_125(lo), ceil_125(hi));
        if hi <= lo {
            lo = floor_125(lo * 0.5);
            hi = ceil_125(hi * 2.0);
        }
        let wide = (hi / lo).log10() > 2.0;
        if wide {
            lo = 10f64.powf(lo.log10().floor());
            hi = 10f64.powf(hi.log10().ceil());
        }
        let mantissas: &[f64] = if wide { &[1.0] } else { &[1.0, 2.0, 5.0] };
        let mut ticks = Vec::new();
        let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        for exponent in first..=last {
            for m in mantissas {
                let v = m * 10f64.powi(exponent);
                if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                    ticks.push((v, value_label(v, spec.unit)));
                }
            }
        }
        Axis {
            scale: Scale::Log,
            unit: spec.unit,
            lo,
            hi,
            ticks,
        }
    }

    /// From p90 up to the last nine the data resolves (at least p99, at most six nines).
    fn nines(spec: &AxisSpec, data: &[f64]) -> Axis {
        let deepest = data
            .iter()
            .copied()
            .filter(|&p| Scale::Nines.admits(p) && p < 100.0)
            .map(|p| Scale::Nines.forward(p))
            .fold(0.0, f64::max);
        let top = ((deepest - 1e-6).ceil() as u32).clamp(2, 6);
        let at = |n: u32| 100.0 * (1.0 - 10f64.powi(-(n as i32)));
        Axis {
            scale: Scale::Nines,
            unit: spec.unit,
            lo: at(1),
            hi: at(top),
            ticks: (1..=top).map(|n| (at(n), nines_label(n))).collect(),
        }
    }

    /// Maps `v` into `from..to`. Values off the domain land just outside it (and are clipped)
    /// but always finite. On a nines scale they stop at the top edge, where the maximum
    /// (p100, infinitely many nines) is drawn.
    fn position(&self, v: f64, from: f64, to: f64) -> f64 {
        let (a, b) = (self.scale.forward(self.lo), self.scale.forward(self.hi));
        let t = (self.scale.forward(v) - a) / (b - a);
        let upper = if self.scale == Scale::Nines { 1.0 } else { 2.0 };
        let t = if t.is_nan() {
            0.0
        } else {
            t.clamp(-1.0, upper)
        };
        from + t * (to - from)
    }
}

/// A 1-2-5 step near `rough` (rounding to the nearest on a log scale, like most plotting
/// libraries, so a span gets four to seven ticks).
fn nice_step(rough: f64) -> f64 {
    if !(rough.is_finite() && rough > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(rough.log10().floor());
    let m = rough / magnitude;
    let factor = if m >= 50f64.sqrt() {
        10.0
    } else if m >= 10f64.sqrt() {
        5.0
    } else if m >= 2f64.sqrt() {
        2.0
    } else {
        1.0
    };
    let step = factor * magnitude;
    if step.is_normal() { step } else { 1.0 }
}

/// The largest 1-2-5 value at or below `v` (`v` > 0). The factor list also covers `log10`
/// rounding to the neighbouring decade.
fn floor_125(v: f64) -> f64 {
    let magnitude = 10f64.powf(v.log10().floor());
    let m = v / magnitude * (1.0 + 1e-9);
    let factor = [10.0, 5.0, 2.0, 1.0]
        .into_iter()
        .find(|&f| m >= f)
        .unwrap_or(0.5);
    factor * magnitude
}

/// The smallest 1-2-5 value at or above `v` (`v` > 0).
fn ceil_125(v: f64) -> f64 {
    let magnitude = 10f64.powf(v.log10().floor());
    let m = v / magnitude * (1.0 - 1e-9);
    let factor = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|&f| m <= f)
        .unwrap_or(20.0);
    factor * magnitude
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

/// Labels for evenly spaced ticks: one unit and one number of decimals for the whole axis,
/// picked from the largest tick and the step.
fn linear_tick_labels(values: &[f64], step: f64, unit: Unit) -> Vec<String> {
    let largest = values.iter().fold(0.0, |m: f64, v| m.max(v.abs()));
    let (divisor, suffix, grouped) = match unit {
        Unit::Seconds => (1.0, " s", true),
        Unit::Micros if largest >= 1e6 => (1e6, " s", false),
        Unit::Micros if largest >= 1e3 => (1e3, " ms", false),
        Unit::Micros => (1.0, " µs", false),
        Unit::Millis if largest >= 1e3 => (1e3, " s", false),
        Unit::Millis => (1.0, " ms", false),
        Unit::Count if largest >= 1e6 => (1e6, "M", false),
        Unit::Count if largest >= 1e4 => (1e3, "k", false),
        Unit::Count => (1.0, "", true),
        Unit::Percent | Unit::Percentile => (1.0, "%", false),
        Unit::MegaBytes => (1.0, " MB", true),
    };
    let decimals = decimals_for(step / divisor);
    values
        .iter()
        .map(|v| {
            let number = fixed(v / divisor, decimals);
            let number = if grouped {
                group_thousands(&number)
            } else {
                number
            };
            format!("{number}{suffix}")
        })
        .collect()
}

/// Decimals that show a 1-2-5 step exactly.
fn decimals_for(step: f64) -> usize {
    if !(step.is_finite() && step > 0.0) || step >= 1.0 {
        0
    } else {
        ((-step.log10()).ceil() as usize).min(6)
    }
}

/// One value with its unit, as precise as a reader needs (tooltips, table cells).
fn value_label(v: f64, unit: Unit) -> String {
    if !v.is_finite() {
        return DASH.to_string();
    }
    match unit {
        Unit::Seconds => format!("{} s", group_thousands(&trimmed(v, 1))),
        Unit::Micros => duration_label(v / 1e6),
        Unit::Millis => duration_label(v / 1e3),
        Unit::Count => group_thousands(&trimmed(v, 2)),
        Unit::Percent => {
            let a = v.abs();
            let decimals = if a >= 100.0 {
                0
            } else if a >= 10.0 {
                1
            } else if a >= 1.0 || a == 0.0 {
                2
            } else {
                // Three significant digits for small shares (0.0123%), at most four decimals.
                ((2.0 - a.log10().floor()) as usize).min(4)
            };
            let text = trimmed(v, decimals);
            if text == "0" && v > 0.0 {
                "<0.0001%".to_string()
            } else {
                format!("{text}%")
            }
        }
        Unit::Percentile => format!("{}%", trimmed(v, 4)),
        Unit::MegaBytes => format!("{} MB", group_thousands(&trimmed(v, 1))),
    }
}

/// A duration in seconds as µs, ms or s with three significant digits.
fn duration_label(seconds: f64) -> String {
    let a = seconds.abs();
    let (v, suffix) = if a < 0.9995e-3 {
        (seconds * 1e6, "µs")
    } else if a < 0.9995 {
        (seconds * 1e3, "ms")
    } else {
        (seconds, "s")
    };
    format!("{} {suffix}", group_thousands(&significant(v, 3)))
}

/// Usage that was actually measured: a report may carry an all-zero entry for a process that
/// was never sampled.
fn sampled(usage: Option<&ProcessUsage>) -> Option<&ProcessUsage> {
    usage.filter(|u| !u.samples.is_empty() || u.cpu_pct_max > 0.0 || u.rss_mb_max > 0.0)
}

fn loss_label(r: &Report) -> String {
    if r.packets.expected == 0 {
        DASH.to_string()
    } else {
        value_label(r.packets.loss_pct, Unit::Percent)
    }
}

/// The p99 of join times, or a dash when nobody joined.
fn join_p99_label(j: &JoinTimes) -> String {
    if j.count > 0 {
        value_label(j.p99, Unit::Millis)
    } else {
        DASH.to_string()
    }
}

fn latency_or_dash(latency: &Latency, us: u64) -> String {
    if latency.count == 0 {
        DASH.to_string()
    } else {
        value_label(us as f64, Unit::Micros)
    }
}

fn bytes_label(bytes: u64) -> String {
    let b = bytes as f64;
    let (v, suffix) = if b >= 1e9 {
        (b / 1e9, "GB")
    } else if b >= 1e6 {
        (b / 1e6, "MB")
    } else if b >= 1e3 {
        (b / 1e3, "kB")
    } else {
        (b, "B")
    };
    format!("{} {suffix}", significant(v, 3))
}

fn nines_label(n: u32) -> String {
    match n {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        2 => "99%".to_string(),
        _ => format!("99.{}%", "9".repeat(n as usize - 2)),
    }
}

/// `v` rounded to `digits` significant digits (whole numbers keep all theirs), trailing
/// zeros dropped.
fn significant(v: f64, digits: i32) -> String {
    if v == 0.0 || !v.is_finite() {
        return trimmed(v, 0);
    }
    let decimals = (digits - 1 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    trimmed(v, decimals)
}

/// `v` with at most `decimals` decimals, trailing zeros dropped.
fn trimmed(v: f64, decimals: usize) -> String {
    let text = fixed(v, decimals);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// `v` with exactly `decimals` decimals; never `-0`, never `NaN`.
fn fixed(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return DASH.to_string();
    }
    let text = format!("{v:.decimals$}");
    if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') {
        text[1..].to_string()
    } else {
        text
    }
}

/// Inserts `,` between thousands in the integer part of a formatted number.
fn group_thousands(number: &str) -> String {
    let (sign, rest) = number
        .strip_prefix('-')
        .map_or(("", number), |rest| ("-", rest));
    let (whole, fraction) = rest.split_at(rest.find('.').unwrap_or(rest.len()));
    if whole.len() <= 3 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return number.to_string();
    }
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}{fraction}")
}

fn int(n: u64) -> String {
    group_thousands(&n.to_string())
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", int(n), if n == 1 { one } else { many })
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// `1 room × (1 publisher + 10 subscribers) · audio + video at 1,000 kbit/s, 30 fps · ...`
fn scenario_line(s: &Scenario) -> String {
    let shape = match s.protocol {
        ProtocolKind::Room => plural(s.participants.into(), "participant", "participants"),
        _ => format!(
            "({} + {})",
            plural(s.publishers.into(), "publisher", "publishers"),
            plural(s.subscribers.into(), "subscriber", "subscribers"),
        ),
    };
    let mut parts = vec![format!(
        "{} × {shape}",
        plural(s.rooms.into(), "room", "rooms"),
    )];
    let video = !matches!(s.media, MediaModel::Audio);
    let audio = matches!(
        s.media,
        MediaModel::Audio | MediaModel::AudioVideo | MediaModel::AudioVideoSimulcast
    );
    let mut media = media_name(s.media).to_string();
    if video {
        put!(
            media,
            " at {} kbit/s, {} fps",
            int(s.video_kbps.into()),
            s.video_fps
        );
    }
    if audio && s.audio_dtx {
        media.push_str(", DTX");
    }
    parts.push(media);
    parts.push(format!(
        "{} measured",
        value_label(s.duration_s, Unit::Seconds)
    ));
    parts.push(format!("ramp {}/s", trimmed(s.ramp_per_s, 2)));
    if s.churn_per_s > 0.0 {
        parts.push(format!("churn {}/s", trimmed(s.churn_per_s, 2)));
    }
    parts.join(" · ")
}

fn criteria_line(c: &Criteria) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(v) = c.max_loss_pct {
        parts.push(format!("loss ≤ {}", value_label(v, Unit::Percent)));
    }
    if let Some(v) = c.max_p99_us {
        parts.push(format!(
            "p99 latency ≤ {}",
            value_label(v as f64, Unit::Micros)
        ));
    }
    if let Some(v) = c.min_connected_pct {
        parts.push(format!("connected ≥ {}", value_label(v, Unit::Percent)));
    }
    if let Some(v) = c.min_streams {
        parts.push(format!("streams ≥ {}", int(v)));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn media_name(media: MediaModel) -> &'static str {
    match media {
        MediaModel::Audio => "audio",
        MediaModel::Video => "video",
        MediaModel::AudioVideo => "audio + video",
        MediaModel::VideoSimulcast => "video simulcast (3 layers)",
        MediaModel::AudioVideoSimulcast => "audio + video simulcast (3 layers)",
    }
}

fn protocol_name(protocol: ProtocolKind) -> &'static str {
    match protocol {
        ProtocolKind::Whip => "WHIP/WHEP",
        ProtocolKind::Janus => "Janus VideoRoom",
        ProtocolKind::Room => "WebSocket rooms",
    }
}

/// `2025-01-31 14:05:09 UTC`.
fn utc_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// HTML-escapes text from a report (labels, URLs, failure reasons) for element content and
/// quoted attribute values.
struct Esc<'a>(&'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// An SVG coordinate: one decimal, and `0` rather than `NaN` should a bug ever produce one.
struct N(f64);

impl fmt::Display for N {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_finite() {
            let v = round1(self.0);
            if v == v.trunc() {
                write!(f, "{}", v as i64)
            } else {
                write!(f, "{v:.1}")
            }
        } else {
            f.write_str("0")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Static assets
// ---------------------------------------------------------------------------------------------

const STYLE: &str = r#"
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--soft:#eef1f4;--panel:#f6f8fa;--pass:#1a7f37;--pass-bg:#dafbe1;--fail:#cf222e;--fail-bg:#ffebe9}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1320px;margin:0 auto;padding:28px 24px 40px}
h1{font-size:24px;margin:0 0 4px;letter-spacing:-.01em}
h2{font-size:17px;margin:32px 0 12px}
.lede{color:var(--muted);margin:0 0 16px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,340px),1fr));gap:14px}
.card{border:1px solid var(--line);border-top:4px solid var(--c);border-radius:8px;padding:12px 16px;min-width:0}
.card-head{display:flex;align-items:center;gap:8px}
.card h2{font-size:16px;margin:0;flex:1;overflow-wrap:anywhere}
.card p{margin:6px 0}
.meta,.criteria{color:var(--muted);font-size:13px}
.url{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
.swatch{display:inline-block;width:11px;height:11px;border-radius:3px;background:var(--c);margin-right:6px;flex:none}
.badge{font-size:12px;font-weight:700;letter-spacing:.04em;padding:2px 9px;border-radius:999px}
.badge.pass,td.pass{color:var(--pass);background:var(--pass-bg)}
.badge.fail,td.fail{color:var(--fail);background:var(--fail-bg)}
.badge.none{color:var(--muted);background:var(--soft)}
td.pass,td.fail{font-weight:600}
.reasons{color:var(--fail);margin:6px 0;padding-left:20px}
details{margin-top:6px;font-size:13px}
summary{cursor:pointer;color:var(--muted)}
details dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0 0}
details dt{color:var(--muted)}
details dd{margin:0;overflow-wrap:anywhere}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(104px,1fr));gap:8px;margin:10px 0}
.figures div{background:var(--panel);border-radius:6px;padding:6px 10px}
.figures dt{font-size:12px;color:var(--muted)}
.figures dd{margin:0;font-size:17px;font-weight:600;font-variant-numeric:tabular-nums;white-space:nowrap}
.figures .missed{background:var(--fail-bg)}
.figures .missed dd{color:var(--fail)}
.groups{columns:3 340px;column-gap:16px}
.groups .table-wrap{break-inside:avoid;display:inline-block;width:100%;margin-bottom:12px}
.hint{color:var(--muted);font-size:13px;margin:-6px 0 10px}
.table-wrap{overflow-x:auto;border:1px solid var(--line);border-radius:8px}
table.summary{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
.summary th,.summary td{padding:5px 14px;text-align:right;border-bottom:1px solid var(--soft);white-space:nowrap}
.summary thead th{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line)}
.summary th:first-child{text-align:left;font-weight:400;color:var(--muted)}
.summary thead th:first-child{width:30%}
.summary th.sub{padding-left:30px}
.summary tr.group th{text-align:left;background:var(--panel);color:var(--fg);font-weight:600;font-size:13px}
.summary tbody tr:hover td,.summary tbody tr:hover th[scope=row]{background:#f6f8fa}
.delta{font-size:12px;color:var(--muted);margin-left:4px}
.delta.good{color:var(--pass)}
.delta.bad{color:var(--fail)}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,540px),1fr));gap:16px}
figure.chart{margin:0;border:1px solid var(--line);border-radius:8px;padding:12px 14px 8px;min-width:0}
figcaption{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 16px;margin-bottom:4px}
figcaption h3{font-size:14px;margin:0}
.legend{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:2px 14px;font-size:12px;color:var(--muted)}
.legend svg{vertical-align:middle;margin-right:5px}
.legend .sep{border-left:1px solid var(--line);margin:2px 0}
svg.plot{display:block;width:100%;height:auto;overflow:visible}
svg.plot text{font-size:11px;fill:#59636e;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
svg.plot .axis-title{fill:#1f2328;font-size:11.5px}
svg.plot .grid line{stroke:#eaeef2}
svg.plot .axis line{stroke:#8c959f}
svg.plot .cross line{stroke:#57606a;stroke-dasharray:3 3}
svg.plot .cross circle{stroke:#fff;stroke-width:1.5}
.empty{display:flex;align-items:center;justify-content:center;min-height:200px;color:var(--muted);background:var(--panel);border-radius:6px}
.note{color:var(--muted);font-size:12px;margin:4px 0 0}
footer{margin-top:36px;color:var(--muted);font-size:12px}
#tip{position:fixed;z-index:10;display:none;pointer-events:none;background:rgba(255,255,255,.97);border:1px solid var(--line);border-radius:6px;box-shadow:0 3px 12px rgba(31,35,40,.15);padding:6px 9px;font-size:12px;line-height:1.45;max-width:360px;font-variant-numeric:tabular-nums}
#tip .head{font-weight:600;margin-bottom:2px}
#tip .dot{display:inline-block;width:8px;height:8px;border-radius:50%;margin-right:6px}
@media print{.summary thead th{position:static}figure.chart{break-inside:avoid}}
"#;

/// Hover read-outs: the nearest point of each series under the cursor. Text is inserted with
/// `textContent`, never as HTML.
const SCRIPT: &str = r#"
(() => {
  const NS = 'http://www.w3.org/2000/svg';
  const tip = document.createElement('div');
  tip.id = 'tip';
  document.body.appendChild(tip);
  const nearest = (pts, x) => {
    if (!pts.length) return null;
    let lo = 0, hi = pts.length - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (pts[mid][0] < x) lo = mid + 1; else hi = mid; }
    if (lo > 0 && x - pts[lo - 1][0] < pts[lo][0] - x) lo--;
    return pts[lo];
  };
  for (const svg of document.querySelectorAll('svg[data-tip]')) {
    let data;
    try { data = JSON.parse(svg.getAttribute('data-tip')); } catch (e) { continue; }
    const [left, top, right, bottom] = data.b;
    const cross = document.createElementNS(NS, 'g');
    cross.setAttribute('class', 'cross');
    cross.style.display = 'none';
    const rule = document.createElementNS(NS, 'line');
    rule.setAttribute('y1', top);
    rule.setAttribute('y2', bottom);
    cross.appendChild(rule);
    const dots = data.s.map(s => {
      const c = document.createElementNS(NS, 'circle');
      c.setAttribute('r', 3.5);
      c.setAttribute('fill', s.c);
      cross.appendChild(c);
      return c;
    });
    svg.appendChild(cross);
    const hide = () => { cross.style.display = 'none'; tip.style.display = 'none'; };
    svg.addEventListener('mouseleave', hide);
    svg.addEventListener('mousemove', ev => {
      const m = svg.getScreenCTM();
      if (!m) return;
      const x = (ev.clientX - m.e) / m.a;
      if (x < left - 4 || x > right + 4) { hide(); return; }
      const near = data.s.map(s => nearest(s.p, x));
      let best = -1;
      near.forEach((p, i) => {
        if (p && (best < 0 || Math.abs(p[0] - x) < Math.abs(near[best][0] - x))) best = i;
      });
      if (best < 0) { hide(); return; }
      const head = near[best][2];
      tip.replaceChildren();
      const h = document.createElement('div');
      h.className = 'head';
      h.textContent = head;
      tip.appendChild(h);
      near.forEach((p, i) => {
        const shown = p && (i === best || Math.abs(p[0] - x) <= 40);
        dots[i].style.display = shown ? '' : 'none';
        if (!shown) return;
        dots[i].setAttribute('cx', p[0]);
        dots[i].setAttribute('cy', p[1]);
        const row = document.createElement('div');
        const dot = document.createElement('span');
        dot.className = 'dot';
        dot.style.background = data.s[i].c;
        row.append(dot, data.s[i].n + ': ' + p[3] + (p[2] !== head ? ' at ' + p[2] : ''));
        tip.appendChild(row);
      });
      rule.setAttribute('x1', near[best][0]);
      rule.setAttribute('x2', near[best][0]);
      cross.style.display = '';
      tip.style.display = 'block';
      const pad = 14;
      let tx = ev.clientX + pad, ty = ev.clientY + pad;
      if (tx + tip.offsetWidth > window.innerWidth - 4) tx = ev.clientX - pad - tip.offsetWidth;
      if (ty + tip.offsetHeight > window.innerHeight - 4) ty = ev.clientY - pad - tip.offsetHeight;
      tip.style.left = tx + 'px';
      tip.style.top = ty + 'px';
    });
  }
})();
"#;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::load::report::{
        Jitter, JoinTimes, NodePeers, Outcome, Packets, PathPackets, PeerCounts, REPORT_VERSION,
        Tick, Verdict,
    };

    /// A plausible 60-second run; `seed` shifts the numbers so two reports differ.
    fn sample(label: &str, seed: u64) -> Report {
        let s = seed as f64;
        let timeline: Vec<Tick> = (1..=60u64)
            .map(|t| Tick {
                t_s: t as f64,
                peers_connected: (t * 20).min(110),
                pps_out: 150 + seed * 10,
                pps_in: if t < 3 { 0 } else { 1500 + seed * 100 + t % 7 },
                // No packets in the first two seconds: a gap in the p99 line.
                p99_us: if t < 3 {
                    0
                } else {
                    4_000 + 100 * (t % 5) + 500 * seed
                },
                loss_pct: if t == 30 { 1.5 } else { 0.0 },
                joins: if t <= 6 { 20 } else { 0 },
                failures: u64::from(t == 4),
            })
            .collect();
        let samples = |base: f64| -> Vec<ProcessSample> {
            (1..=60)
                .map(|t| ProcessSample {
                    t_s: f64::from(t),
                    cpu_pct: base + f64::from(t % 10),
                    rss_mb: 80.0 + f64::from(t) * 0.5,
                })
                .collect()
        };
        let cdf: Vec<(f64, u64)> = [
            (0.0, 300),
            (10.0, 900),
            (25.0, 1_400),
            (50.0, 2_100),
            (75.0, 2_900),
            (90.0, 3_800),
            (99.0, 6_000),
            (99.9, 12_000),
            (99.99, 25_000),
            (100.0, 41_000),
        ]
        .iter()
        .map(|&(p, us)| (p, us + seed * 250))
        .collect();
        Report {
            version: REPORT_VERSION,
            tool: "sfu-load 0.1.0".into(),
            label: label.into(),
            started_at_unix_ms: 1_738_332_309_000,
            elapsed_s: 75.2,
            scenario: Scenario {
                criteria: Criteria {
                    max_loss_pct: Some(1.0),
                    max_p99_us: Some(20_000),
                    min_connected_pct: None,
                    min_streams: None,
                },
                ..Scenario::default()
            },
            peers: PeerCounts {
                planned: 111,
                connected: 110,
                publishers_connected: 1,
                subscribers_connected: 109,
                failed: 1,
                failures: BTreeMap::from([("ice-timeout".to_string(), 1)]),
                rejoins: 0,
            },
            join_ms: JoinTimes {
                count: 110,
                p50: 180.0 + s,
                p90: 320.0,
                p99: 900.0,
                max: 1_250.0,
                histogram: vec![
                    (100.0, 0),
                    (200.0, 60),
                    (300.0, 30),
                    (500.0, 15),
                    (1_000.0, 4),
                    (1_250.0, 1),
                ],
            },
            latency_us: Latency {
                count: 90_000,
                min: 300,
                mean: 2_400.0 + s,
                p50: 2_100,
                p90: 3_800,
                p99: 6_000,
                p999: 12_000,
                max: 41_000,
                cdf,
            },
            fanout_spread_us: Latency::default(),
            packets: Packets {
                sent: 9_000,
                received: 89_900 + seed,
                expected: 90_000,
                lost: 100,
                duplicates: 0,
                reordered: 3,
                corrupt: 0,
                loss_pct: 0.111,
                bytes_sent: 9_000_000,
                bytes_received: 89_900_000,
            },
            jitter_ms: Jitter {
                mean: 0.8,
                p99: 3.1,
                max: 9.4,
            },
            nodes: BTreeMap::new(),
            node_unknown: NodePeers::default(),
            latency_local_us: None,
            latency_relayed_us: None,
            packets_local: None,
            packets_relayed: None,
            server: Some(ProcessUsage {
                pid: 4242,
                cpu_pct_mean: 45.0 + s,
                cpu_pct_max: 60.0,
                rss_mb_max: 110.0,
                samples: samples(40.0 + s),
            }),
            generator: ProcessUsage {
                pid: 4343,
                cpu_pct_mean: 30.0,
                cpu_pct_max: 38.0,
                rss_mb_max: 95.0,
                samples: samples(25.0),
            },
            timeline,
            room: None,
            verdict: Verdict {
                outcome: Outcome::Pass,
                failures: Vec::new(),
            },
        }
    }

    /// A run that measured nothing: no peers, no packets, no samples.
    fn empty(label: &str) -> Report {
        Report {
            version: REPORT_VERSION,
            tool: "sfu-load 0.1.0".into(),
            label: label.into(),
            started_at_unix_ms: 0,
            elapsed_s: 0.0,
            scenario: Scenario::default(),
            peers: PeerCounts::default(),
            join_ms: JoinTimes::default(),
            latency_us: Latency::default(),
            fanout_spread_us: Latency::default(),
            packets: Packets::default(),
            jitter_ms: Jitter::default(),
            nodes: BTreeMap::new(),
            node_unknown: NodePeers::default(),
            latency_local_us: None,
            latency_relayed_us: None,
            packets_local: None,
            packets_relayed: None,
            server: None,
            generator: ProcessUsage::default(),
            timeline: Vec::new(),
            room: None,
            verdict: Verdict {
                outcome: Outcome::Fail,
                failures: vec!["connected 0.0% < min 99.0%".into()],
            },
        }
    }

    /// The `<svg class="plot">` elements of a page.
    fn plots(html: &str) -> Vec<&str> {
        html.split("<svg class=\"plot\"")
            .skip(1)
            .map(|rest| &rest[..rest.find("</svg>").expect("closed svg")])
            .collect()
    }

    /// The chart figure titled `title`.
    fn figure<'a>(html: &'a str, title: &str) -> &'a str {
        let start = html
            .find(&format!("<h3>{title}</h3>"))
            .expect("chart present");
        let rest = &html[start..];
        &rest[..rest.find("</figure>").expect("closed figure")]
    }

    fn assert_finite_numbers(html: &str) {
        for plot in plots(html) {
            assert!(!plot.contains("NaN"), "NaN in {plot}");
            assert!(!plot.contains("inf"), "inf in {plot}");
        }
        assert!(!html.contains("NaN"));
    }

    #[test]
    fn renders_every_plot_with_one_path_per_series() {
        let html = render(&[sample("sfu @ 127.0.0.1", 0)]);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        let plots = plots(&html);
        assert_eq!(plots.len(), 9, "every chart has data");
        // CDF, tail, p99, 2 × pps, loss, peers + failures, histogram, 2 × CPU, 2 × RSS.
        assert_eq!(html.matches("class=\"series\"").count(), 13);
        assert!(!html.contains("no samples"));
        assert_finite_numbers(&html);
        // One report: no report legend, but the two line styles of the packet rate are keyed.
        assert_eq!(
            figure(&html, "Latency distribution (CDF)")
                .matches("class=\"key\"")
                .count(),
            0
        );
        assert_eq!(
            figure(&html, "Media packet rate")
                .matches("class=\"key\"")
                .count(),
            2
        );
        assert!(html.contains("PASS"));
        assert!(html.contains("2025-01-31 14:05:09 UTC"));
    }

    #[test]
    fn p99_line_has_a_gap_where_no_packets_arrived() {
        let html = render(&[sample("a", 0)]);
        let p99 = figure(&html, "p99 latency per second");
        let path = p99.split("class=\"series\" d=\"").nth(1).expect("p99 path");
        let d = &path[..path.find('"').expect("end of d")];
        assert_eq!(
            d.matches('M').count(),
            1,
            "seconds 1 and 2 are left out, not drawn at 0"
        );
        assert_eq!(d.matches('L').count(), 57);
    }

    #[test]
    fn empty_report_says_no_samples_instead_of_plotting() {
        let html = render(&[empty("nothing")]);
        assert!(plots(&html).is_empty());
        assert_eq!(html.matches("no samples").count(), 9);
        assert!(html.contains("FAIL"));
        assert!(html.contains("connected 0.0% &lt; min 99.0%"));
        assert!(html.contains("not sampled"));
        assert_finite_numbers(&html);
    }

    #[test]
    fn a_run_without_criteria_shows_no_verdict() {
        let mut report = sample("unjudged", 0);
        report.scenario.criteria = Criteria::default();
        report.verdict = Verdict::default();
        let html = render(&[report.clone(), report]);
        assert!(!html.contains("PASS") && !html.contains("FAIL"), "{html}");
        assert!(html.contains("NO VERDICT") && html.contains("none (no criteria)"));
        assert!(html.contains("no pass criteria set"));
    }

    #[test]
    fn node_rows_appear_only_when_peers_landed_somewhere() {
        let plain = render(&[sample("janus", 0)]);
        assert!(!plain.contains(NODES), "no node rows without landings");

        let mut split = sample("cluster", 0);
        split.nodes = BTreeMap::from([
            (
                "n1".to_string(),
                NodePeers {
                    publishers: 1,
                    subscribers: 0,
                    failed: 0,
                },
            ),
            (
                "n2".to_string(),
                NodePeers {
                    publishers: 0,
                    subscribers: 109,
                    failed: 1,
                },
            ),
        ]);
        split.latency_local_us = Some(Latency::default());
        split.latency_relayed_us = Some(Latency {
            count: 90_000,
            p50: 5_900,
            p99: 12_000,
            ..Latency::default()
        });
        split.packets_local = Some(PathPackets::default());
        split.packets_relayed = Some(PathPackets {
            subscribers: 109,
            received: 89_900,
            expected: 90_000,
            lost: 100,
            loss_pct: 0.111,
            ..PathPackets::default()
        });
        let html = render(&[split.clone()]);
        assert!(html.contains(NODES), "{html}");
        assert!(html.contains("<td>1 pub / 0 sub</td>"), "{html}");
        assert!(
            html.contains("<td>0 pub / 109 sub, 1 failed</td>"),
            "{html}"
        );
        assert!(html.contains("relayed subscribers"), "{html}");
        // The local path carried nothing: dashes, not zeros.
        let local = &html[html.find("local subscribers").expect("local rows")..];
        let local = &local[..local.find("relayed subscribers").expect("relayed rows")];
        assert_eq!(local.matches(DASH).count(), 3, "{local}");

        // Compared with a run that named no node, that run's cells are dashes.
        let mut unnamed = sample("other server", 1);
        unnamed.node_unknown = NodePeers {
            publishers: 1,
            subscribers: 109,
            failed: 0,
        };
        let html = render(&[split, unnamed]);
        assert!(html.contains("node not named"), "{html}");
        assert_finite_numbers(&html);
    }

    #[test]
    fn no_reports_is_still_a_page() {
        let html = render(&[]);
        assert!(html.contains("no reports"));
        assert!(html.trim_end().ends_with("</html>"));
    }

    #[test]
    fn report_text_is_escaped() {
        let mut report = sample("<script>alert(1)</script>", 0);
        report.scenario.url = "http://x/?a=1&b=\"2\"".into();
        report.verdict = Verdict {
            outcome: Outcome::Fail,
            failures: vec!["p99 <b>6 ms</b> > 'max'".into()],
        };
        report
            .peers
            .failures
            .insert("<img src=x onerror=alert(1)>".into(), 2);
        let html = render(&[report]);
        assert!(!html.contains("<script>alert"));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<b>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("http://x/?a=1&amp;b=&quot;2&quot;"));
        assert!(html.contains("p99 &lt;b&gt;6 ms&lt;/b&gt; &gt; &#39;max&#39;"));
        // The tooltip data carries the label too, JSON-encoded and then HTML-escaped.
        assert!(html.contains("data-tip=\"{&quot;b&quot;"));
        // Only the page's own script element.
        assert_eq!(html.matches("<script").count(), 1);
    }

    #[test]
    fn two_reports_are_overlaid_with_a_legend_entry_each() {
        let html = render(&[sample("baseline", 0), sample("candidate", 3)]);
        let cdf = figure(&html, "Latency distribution (CDF)");
        assert_eq!(cdf.matches("class=\"key\"").count(), 2);
        assert!(cdf.contains("baseline") && cdf.contains("candidate"));
        assert_eq!(cdf.matches("class=\"series\"").count(), 2);
        assert!(cdf.contains(PALETTE[0]) && cdf.contains(PALETTE[1]));
        // Two reports plus the two line styles.
        assert_eq!(
            figure(&html, "Media packet rate")
                .matches("class=\"key\"")
                .count(),
            4
        );
        assert_eq!(html.matches("class=\"series\"").count(), 26);
        // Deltas against the first run: the candidate is slower.
        assert!(html.contains("delta bad"));
        assert!(html.contains("SFU load comparison"));
        assert_finite_numbers(&html);
    }

    #[test]
    fn a_run_without_data_is_named_in_the_legend() {
        let html = render(&[sample("full", 0), empty("broken")]);
        let cdf = figure(&html, "Latency distribution (CDF)");
        assert!(cdf.contains("broken (no samples)"));
        assert_eq!(cdf.matches("class=\"series\"").count(), 1);
        assert!(html.contains("Server not sampled for broken"));
        assert_finite_numbers(&html);
    }

    #[test]
    fn survives_degenerate_values() {
        let mut report = sample("odd", 0);
        report.latency_us.cdf = vec![(0.0, 0), (50.0, 0), (100.0, 0)];
        report.timeline.truncate(1);
        report.join_ms.histogram = vec![(f64::NAN, 3), (0.0, 1), (5.0, 0)];
        report.packets.loss_pct = f64::INFINITY;
        report.server = Some(ProcessUsage {
            samples: vec![ProcessSample {
                t_s: 1.0,
                cpu_pct: f64::NAN,
                rss_mb: 1e300,
            }],
            ..ProcessUsage::default()
        });
        let html = render(&[report]);
        assert_finite_numbers(&html);
        // A single tick is drawn as a dot rather than vanishing.
        assert!(figure(&html, "Peers connected").contains("<circle"));
    }

    #[test]
    fn parse_render_round_trip() {
        let reports = [sample("a", 0), sample("b", 1)];
        let json: Vec<String> = reports
            .iter()
            .map(|r| serde_json::to_string_pretty(r).expect("serializes"))
            .collect();
        let parsed: Vec<Report> = json
            .iter()
            .map(|j| serde_json::from_str(j).expect("parses"))
            .collect();
        assert_eq!(parsed, reports);
        assert_eq!(render(&parsed), render(&reports));
    }

    #[test]
    fn hover_data_is_json_with_a_capped_entry_per_series() {
        let mut long = sample("long run", 0);
        long.timeline = (1..=5_000u32)
            .map(|t| Tick {
                t_s: f64::from(t),
                pps_in: 1_000,
                ..Tick::default()
            })
            .collect();
        let html = render(&[long]);
        let rate = figure(&html, "Media packet rate");
        let start = rate.find("data-tip=\"").expect("hover data") + "data-tip=\"".len();
        let attr = &rate[start..start + rate[start..].find('"').expect("end of attribute")];
        let json = attr
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        let data: Value = serde_json::from_str(&json).expect("hover data is JSON");
        let series = data["s"].as_array().expect("series");
        assert_eq!(series.len(), 2);
        for s in series {
            let points = s["p"].as_array().expect("points");
            assert!(points.len() > 1_000 && points.len() <= MAX_TIP_POINTS + 1);
        }
        assert_eq!(series[0]["p"][0][2], "t = 1 s");
        // The drawn line keeps every point.
        assert!(rate.matches('L').count() >= 4_999);
    }

    #[test]
    fn linear_ticks_are_round_and_cover_the_data() {
        let spec = value_axis("", Unit::Count);
        let axis = Axis::fit(&spec, &[3.0, 1_234.0]);
        assert_eq!(axis.lo, 0.0);
        assert!(axis.hi >= 1_234.0);
        let values: Vec<f64> = axis.ticks.iter().map(|t| t.0).collect();
        assert_eq!(
            values,
            [0.0, 200.0, 400.0, 600.0, 800.0, 1_000.0, 1_200.0, 1_400.0]
        );
        assert_eq!(axis.ticks[6].1, "1,200");

        let ms = Axis::fit(&value_axis("", Unit::Micros), &[0.0, 1_400.0]);
        let labels: Vec<&str> = ms.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(
            labels,
            [
                "0.0 ms", "0.2 ms", "0.4 ms", "0.6 ms", "0.8 ms", "1.0 ms", "1.2 ms", "1.4 ms"
            ]
        );

        let flat = Axis::fit(&value_axis("", Unit::Percent), &[0.0, 0.0]);
        assert_eq!((flat.lo, flat.hi), (0.0, 1.0));
        let none = Axis::fit(&value_axis("", Unit::Percent), &[]);
        assert_eq!((none.lo, none.hi), (0.0, 1.0));
    }

    #[test]
    fn log_ticks_step_125_in_narrow_ranges_and_decades_in_wide_ones() {
        let spec = AxisSpec {
            title: "",
            scale: Scale::Log,
            unit: Unit::Micros,
            zero_based: false,
            extent: None,
        };
        let narrow = Axis::fit(&spec, &[300.0, 4_100.0]);
        let labels: Vec<&str> = narrow.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["200 µs", "500 µs", "1 ms", "2 ms", "5 ms"]);
        let wide = Axis::fit(&spec, &[0.0, 30.0, 2_000_000.0]);
        let labels: Vec<&str> = wide.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(
            labels,
            ["10 µs", "100 µs", "1 ms", "10 ms", "100 ms", "1 s", "10 s"]
        );
        let single = Axis::fit(&spec, &[1_000.0]);
        assert!(single.lo < 1_000.0 && single.hi > 1_000.0);
    }

    #[test]
    fn nines_axis_reaches_the_deepest_percentile() {
        let spec = AxisSpec {
            title: "",
            scale: Scale::Nines,
            unit: Unit::Percentile,
            zero_based: false,
            extent: None,
        };
        let axis = Axis::fit(&spec, &[50.0, 90.0, 99.0, 99.9, 99.99, 100.0]);
        let labels: Vec<&str> = axis.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["90%", "99%", "99.9%", "99.99%"]);
        // p100 sits on the top edge, p90 on the bottom one.
        assert_eq!(axis.position(100.0, 200.0, 0.0), 0.0);
        assert!((axis.position(90.0, 200.0, 0.0) - 200.0).abs() < 1e-9);
        assert!(axis.position(50.0, 200.0, 0.0).is_finite());
    }

    #[test]
    fn values_read_naturally() {
        assert_eq!(value_label(850.0, Unit::Micros), "850 µs");
        assert_eq!(value_label(12_345.0, Unit::Micros), "12.3 ms");
        assert_eq!(value_label(999.8, Unit::Micros), "1 ms");
        assert_eq!(value_label(2_500_000.0, Unit::Micros), "2.5 s");
        assert_eq!(value_label(180.0, Unit::Millis), "180 ms");
        assert_eq!(value_label(0.111, Unit::Percent), "0.111%");
        assert_eq!(value_label(0.0, Unit::Percent), "0%");
        assert_eq!(value_label(1e-9, Unit::Percent), "<0.0001%");
        assert_eq!(value_label(150.0, Unit::Percent), "150%");
        assert_eq!(value_label(99.99, Unit::Percentile), "99.99%");
        assert_eq!(value_label(1_234_567.0, Unit::Count), "1,234,567");
        assert_eq!(value_label(f64::NAN, Unit::Count), DASH);
        assert_eq!(value_label(2048.0, Unit::MegaBytes), "2,048 MB");
        assert_eq!(bytes_label(89_900_000), "89.9 MB");
        assert_eq!(fixed(-0.0001, 1), "0.0");
        assert_eq!(group_thousands("-12345.67"), "-12,345.67");
        assert_eq!(nines_label(2), "99%");
        assert_eq!(nines_label(5), "99.999%");
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_738_332_309_000), "2025-01-31 14:05:09 UTC");
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            Esc("a<b>&\"c\"'d'").to_string(),
            "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;"
        );
        assert_eq!(Esc("plain µs").to_string(), "plain µs");
    }
}
