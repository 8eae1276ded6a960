//! `sfu-report`: renders the `report.json` files `sfu-load` writes as one self-contained HTML
//! page, comparing several runs side by side.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use serde_json::Value;
use tools::load::Report;
use tools::load::html;
use tools::load::report::{OLDEST_READABLE_VERSION, REPORT_VERSION};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "sfu-report",
    version,
    about = "Render sfu-load report.json files as a self-contained HTML page",
    long_about = "Render sfu-load report.json files as a self-contained HTML page: verdict, \
                  summary table and plots (latency CDF and tail, packet rate, p99 and loss over \
                  time, join times, server and generator CPU and memory). The page needs no \
                  network access and can be archived next to the JSON.\n\n\
                  With several reports, each becomes a column of the table and a color in every \
                  plot, in the order given; deltas are relative to the first. Legends use each \
                  report's label (sfu-load --label); equal labels get the file name added.",
    after_help = "Examples:\n  \
                  sfu-report out/report.json                  writes out/report.html\n  \
                  sfu-report base.json new.json -o compare.html\n  \
                  sfu-report out/report.json -o - > page.html\n\n\
                  Exit status: 0 written, 1 a report could not be read or the page not written, \
                  2 usage error."
)]
struct Cli {
    /// report.json files written by sfu-load.
    #[arg(required = true, value_name = "REPORT")]
    reports: Vec<PathBuf>,
    /// Where to write the page; `-` for standard output. Defaults, with one report, to the
    /// report's path with an .html extension; required with several.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(Destination::File(path)) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Ok(Destination::Stdout) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sfu-report: {e}");
            e.exit_code()
        }
    }
}

/// Why no page was written; decides the exit status.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error("{}: {problem}", path.display())]
    Input { path: PathBuf, problem: String },
    #[error("cannot write {}: {source}", path.display())]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Usage(_) => ExitCode::from(2),
            Failure::Input { .. } | Failure::Output { .. } => ExitCode::from(1),
        }
    }

    fn input(path: &Path, problem: impl Into<String>) -> Failure {
        Failure::Input {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    Stdout,
    File(PathBuf),
}

fn run(cli: &Cli) -> Result<Destination, Failure> {
    let destination = destination(cli)?;
    let mut reports = cli
        .reports
        .iter()
        .map(|path| load(path))
        .collect::<Result<Vec<Report>, Failure>>()?;
    disambiguate_labels(&mut reports, &cli.reports);
    let page = html::render(&reports);
    match &destination {
        Destination::Stdout => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(page.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|source| Failure::Output {
                    path: "standard output".into(),
                    source,
                })?;
        }
        Destination::File(path) => {
            std::fs::write(path, page).map_err(|source| Failure::Output {
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(destination)
}

/// Where the page goes; never onto one of the reports.
fn destination(cli: &Cli) -> Result<Destination, Failure> {
    let path = match (&cli.output, cli.reports.as_slice()) {
        (Some(path), _) if path.as_os_str() == "-" => return Ok(Destination::Stdout),
        (Some(path), _) => path.clone(),
        (None, [report]) => report.with_extension("html"),
        (None, _) => {
            return Err(Failure::Usage(
                "several reports need -o/--output FILE for the comparison page".into(),
            ));
        }
    };
    if let Some(report) = cli.reports.iter().find(|r| same_file(r, &path)) {
        return Err(Failure::Usage(format!(
            "refusing to write the page over the report {}; choose another -o/--output",
            report.display()
        )));
    }
    Ok(Destination::File(path))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Reads and checks one report, naming the problem: unreadable, not JSON, not a report, a
/// format version this build does not read, or fields that do not match the format.
fn load(path: &Path) -> Result<Report, Failure> {
    let bytes =
        std::fs::read(path).map_err(|e| Failure::input(path, format!("cannot read: {e}")))?;
    // Check the version before the full schema, so a report from another sfu-load release is
    // reported as such rather than as a confusing missing or mistyped field.
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::input(path, format!("not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(Failure::input(
            path,
            "not an sfu-load report: expected a JSON object",
        ));
    };
    let version = match object.get("version") {
        None => {
            return Err(Failure::input(
                path,
                "not an sfu-load report: no \"version\" field",
            ));
        }
        Some(v) => v.as_u64().ok_or_else(|| {
            Failure::input(
                path,
                format!("not an sfu-load report: \"version\" is {v}, expected an integer"),
            )
        })?,
    };
    if !(u64::from(OLDEST_READABLE_VERSION)..=u64::from(REPORT_VERSION)).contains(&version) {
        let hint = if version > u64::from(REPORT_VERSION) {
            "written by a newer sfu-load; use the sfu-report of that release"
        } else {
            "written by an older sfu-load; use the sfu-report of that release"
        };
        return Err(Failure::input(
            path,
            format!(
                "report format version {version}, this sfu-report reads versions \
                 {OLDEST_READABLE_VERSION} to {REPORT_VERSION} ({hint})"
            ),
        ));
    }
    // Parse the text again rather than the `Value`, so errors carry a line and column.
    serde_json::from_slice(&bytes).map_err(|e| {
        Failure::input(
            path,
            format!("does not match report format version {version}: {e}"),
        )
    })
}

/// Gives every report a distinct legend: an empty label becomes the file name, and reports
/// sharing a label get their file name (or, if that is shared too, their path) appended.
fn disambiguate_labels(reports: &mut [Report], paths: &[PathBuf]) {
    let file_name = |path: &Path| {
        path.file_name()
            .unwrap_or_else(|| OsStr::new(path.as_os_str()))
            .to_string_lossy()
            .into_owned()
    };
    for (report, path) in reports.iter_mut().zip(paths) {
        if report.label.trim().is_empty() {
            report.label = file_name(path);
        }
    }
    let mut by_label: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, report) in reports.iter().enumerate() {
        by_label.entry(report.label.clone()).or_default().push(i);
    }
    for indices in by_label.values().filter(|v| v.len() > 1) {
        let names: Vec<String> = indices.iter().map(|&i| file_name(&paths[i])).collect();
        let names_unique = names
            .iter()
            .enumerate()
            .all(|(a, n)| names.iter().skip(a + 1).all(|m| m != n));
        for (&i, name) in indices.iter().zip(names) {
            let suffix = if names_unique {
                name
            } else {
                paths[i].display().to_string()
            };
            reports[i].label = format!("{} ({suffix})", reports[i].label);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use tools::load::Scenario;
    use tools::load::report::{
        Jitter, JoinTimes, Latency, Outcome, Packets, PeerCounts, ProcessUsage, Tick, Verdict,
    };

    use super::*;

    /// A scratch directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("sfu-report-test-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create scratch dir");
            Scratch(dir)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("create parent");
            }
            fs::write(&path, contents).expect("write scratch file");
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn report(label: &str) -> Report {
        Report {
            version: REPORT_VERSION,
            tool: "sfu-load test".into(),
            label: label.into(),
            started_at_unix_ms: 1_700_000_000_000,
            elapsed_s: 12.0,
            scenario: Scenario::default(),
            peers: PeerCounts {
                planned: 11,
                connected: 11,
                ..PeerCounts::default()
            },
            join_ms: JoinTimes::default(),
            latency_us: Latency {
                count: 3,
                min: 900,
                p50: 1_000,
                max: 4_000,
                cdf: vec![(0.0, 900), (50.0, 1_000), (100.0, 4_000)],
                ..Latency::default()
            },
            fanout_spread_us: Latency::default(),
            packets: Packets::default(),
            jitter_ms: Jitter::default(),
            nodes: Default::default(),
            node_unknown: Default::default(),
            latency_local_us: None,
            latency_relayed_us: None,
            packets_local: None,
            packets_relayed: None,
            server: None,
            generator: ProcessUsage::default(),
            timeline: (1..=5)
                .map(|t| Tick {
                    t_s: f64::from(t),
                    peers_connected: 11,
                    pps_out: 50,
                    pps_in: 500,
                    ..Tick::default()
                })
                .collect(),
            room: None,
            verdict: Verdict {
                outcome: Outcome::Pass,
                failures: Vec::new(),
            },
        }
    }

    fn json(report: &Report) -> String {
        serde_json::to_string_pretty(report).expect("serializes")
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("sfu-report").chain(args.iter().copied()))
            .expect("valid arguments")
    }

    fn cli_for(paths: &[&Path], output: Option<&Path>) -> Cli {
        Cli {
            reports: paths.iter().map(|p| p.to_path_buf()).collect(),
            output: output.map(Path::to_path_buf),
        }
    }

    fn input_problem(result: Result<Destination, Failure>) -> String {
        match result {
            Err(e @ Failure::Input { .. }) => {
                assert_eq!(e.exit_code(), ExitCode::from(1));
                e.to_string()
            }
            other => panic!("expected an input failure, got {other:?}"),
        }
    }

    #[test]
    fn arguments() {
        assert!(
            Cli::try_parse_from(["sfu-report"]).is_err(),
            "a report is required"
        );
        let one = cli(&["out/report.json"]);
        assert_eq!(
            destination(&one).expect("destination"),
            Destination::File("out/report.html".into())
        );
        let many = cli(&["a.json", "b.json", "-o", "compare.html"]);
        assert_eq!(many.reports.len(), 2);
        assert_eq!(
            destination(&many).expect("destination"),
            Destination::File("compare.html".into())
        );
        let piped = cli(&["a.json", "--output", "-"]);
        assert_eq!(
            destination(&piped).expect("destination"),
            Destination::Stdout
        );
        let Err(e) = destination(&cli(&["a.json", "b.json"])) else {
            panic!("several reports without --output must be refused");
        };
        assert!(e.to_string().contains("--output"));
        assert_eq!(e.exit_code(), ExitCode::from(2));
        let Err(e) = destination(&cli(&["a.html"])) else {
            panic!("the page must not replace its own input");
        };
        assert_eq!(e.exit_code(), ExitCode::from(2));
    }

    #[test]
    fn writes_the_page_next_to_the_report() {
        let dir = Scratch::new("single");
        let path = dir.write("out/report.json", &json(&report("local sfu")));
        let written = run(&cli_for(&[&path], None)).expect("renders");
        let expected = dir.0.join("out/report.html");
        assert_eq!(written, Destination::File(expected.clone()));
        let page = fs::read_to_string(expected).expect("page written");
        assert!(page.contains("local sfu"));
        assert!(page.contains("<svg class=\"plot\""));
    }

    #[test]
    fn reads_a_version_1_report_whose_verdict_says_passed() {
        let dir = Scratch::new("v1");
        let mut value: Value = serde_json::from_str(&json(&report("old run"))).expect("json");
        value["version"] = Value::from(1);
        value["verdict"] = serde_json::json!({"passed": false, "failures": ["loss 2% > max 1%"]});
        let path = dir.write("report.json", &value.to_string());
        let old = load(&path).expect("a version-1 report loads");
        assert_eq!(old.verdict.outcome, Outcome::Fail);
        assert_eq!(old.verdict.failures, vec!["loss 2% > max 1%".to_string()]);
    }

    #[test]
    fn reads_a_report_written_before_the_node_fields() {
        let dir = Scratch::new("nodeless");
        let mut value: Value = serde_json::from_str(&json(&report("older run"))).expect("json");
        let object = value.as_object_mut().expect("an object");
        for key in [
            "nodes",
            "node_unknown",
            "latency_local_us",
            "latency_relayed_us",
            "packets_local",
            "packets_relayed",
        ] {
            assert!(object.remove(key).is_some(), "{key} is written");
        }
        let path = dir.write("report.json", &value.to_string());
        let old = load(&path).expect("a report without node fields loads");
        assert!(old.nodes.is_empty());
        assert_eq!(old.latency_relayed_us, None);
        assert_eq!(old.packets_local, None);
    }

    #[test]
    fn compares_several_reports_and_disambiguates_equal_labels() {
        let dir = Scratch::new("compare");
        let a = dir.write("base.json", &json(&report("sfu")));
        let b = dir.write("new.json", &json(&report("sfu")));
        let c = dir.write("other/new.json", &json(&report("sfu")));
        let out = dir.0.join("compare.html");
        run(&cli_for(&[&a, &b], Some(&out))).expect("renders");
        let page = fs::read_to_string(&out).expect("page written");
        assert!(page.contains("sfu (base.json)") && page.contains("sfu (new.json)"));

        // File names shared too: the paths tell them apart.
        let mut reports = vec![report("sfu"), report("sfu"), report("")];
        disambiguate_labels(&mut reports, &[b.clone(), c.clone(), a.clone()]);
        assert_eq!(reports[0].label, format!("sfu ({})", b.display()));
        assert_eq!(reports[1].label, format!("sfu ({})", c.display()));
        assert_eq!(reports[2].label, "base.json");
    }

    #[test]
    fn names_the_file_and_the_problem() {
        let dir = Scratch::new("errors");
        let missing = dir.0.join("missing.json");
        let problem = input_problem(run(&cli_for(&[&missing], None)));
        assert!(
            problem.contains("missing.json") && problem.contains("cannot read"),
            "{problem}"
        );

        let garbage = dir.write("garbage.json", "sfu-load crashed\n");
        let problem = input_problem(run(&cli_for(&[&garbage], None)));
        assert!(problem.contains("garbage.json: not JSON"), "{problem}");

        let array = dir.write("array.json", "[1, 2]");
        let problem = input_problem(run(&cli_for(&[&array], None)));
        assert!(problem.contains("expected a JSON object"), "{problem}");

        let unversioned = dir.write("unversioned.json", "{\"label\": \"x\"}");
        let problem = input_problem(run(&cli_for(&[&unversioned], None)));
        assert!(problem.contains("no \"version\" field"), "{problem}");

        let mut newer = report("future");
        newer.version = REPORT_VERSION + 1;
        let newer = dir.write("newer.json", &json(&newer));
        let problem = input_problem(run(&cli_for(&[&newer], None)));
        assert!(
            problem.contains(&format!("version {}", REPORT_VERSION + 1))
                && problem.contains("newer sfu-load"),
            "{problem}"
        );

        let mut value: Value = serde_json::from_str(&json(&report("x"))).expect("json");
        value["peers"] = Value::String("many".into());
        let mistyped = dir.write("mistyped.json", &value.to_string());
        let problem = input_problem(run(&cli_for(&[&mistyped], None)));
        assert!(
            problem.contains("does not match report format") && problem.contains("line"),
            "{problem}"
        );

        // One bad input among good ones: nothing is written.
        let good = dir.write("good.json", &json(&report("good")));
        let out = dir.0.join("compare.html");
        input_problem(run(&cli_for(&[&good, &garbage], Some(&out))));
        assert!(!out.exists());
    }

    #[test]
    fn unwritable_output_is_an_io_failure() {
        let dir = Scratch::new("unwritable");
        let path = dir.write("report.json", &json(&report("x")));
        let out = dir.0.join("no/such/dir/page.html");
        match run(&cli_for(&[&path], Some(&out))) {
            Err(e @ Failure::Output { .. }) => {
                assert_eq!(e.exit_code(), ExitCode::from(1));
                assert!(e.to_string().contains("page.html"));
            }
            other => panic!("expected an output failure, got {other:?}"),
        }
    }
}
