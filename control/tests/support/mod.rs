//! Test harness: runs the real `control dev` binary as a subprocess on free ports, and wraps
//! the `tools` peers with the test's timeouts and assertions.
#![allow(dead_code)] // each test binary uses a different subset

pub mod cluster;
pub mod data;
pub mod redis_server;
pub mod rtc;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tools::metrics::Metrics;
use tools::publisher::{Publisher, PublisherConfig, PublisherStats, VideoConfig};
use tools::subscriber::{Subscriber, SubscriberConfig};
use tools::token::{Grants, dev_token};
use tools::whip::{HttpRequest, HttpResponse, Method, SignalingClient, candidate_addrs};
use tools::{PayloadKind, Reception};

/// How long the server may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long ICE + DTLS may take on loopback.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the first media packet may take after connecting (includes a keyframe request
/// round trip for video).
pub const FIRST_MEDIA_TIMEOUT: Duration = Duration::from_secs(3);

/// Lines of server output kept for failure reports.
const LOG_LINES: usize = 400;

/// A `control dev` process; killed on drop. On a failing test its last log lines are printed.
pub struct Server {
    child: Child,
    pub base_url: String,
    pub client: SignalingClient,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// `DELETE target` with `token`, whatever the status.
    #[allow(dead_code)] // not every test binary deletes
    pub fn delete(&self, target: &str, token: &str) -> HttpResponse {
        self.client
            .request(&HttpRequest {
                method: Method::Delete,
                target,
                content_type: None,
                bearer: Some(token),
                body: &[],
            })
            .unwrap_or_else(|e| panic!("DELETE {target}: {e}"))
    }

    /// `control dev --http 127.0.0.1:0 --workers 2`.
    pub fn start() -> Self {
        Self::start_with_workers(2)
    }

    pub fn start_with_workers(workers: usize) -> Self {
        Self::start_with(workers, &[], &[])
    }

    /// `control dev --http 127.0.0.1:0 --workers N [extra_args]` with `env` set for the process
    /// (e.g. `SFU__NODE__ICE_TIMEOUT_SECS`).
    pub fn start_with(workers: usize, env: &[(&str, &str)], extra_args: &[&str]) -> Self {
        let workers = workers.to_string();
        let mut args = vec!["dev", "--http", "127.0.0.1:0", "--workers", &workers];
        args.extend_from_slice(extra_args);
        Self::spawn(&args, env)
    }

    /// `control serve --http 127.0.0.1:0 [extra_args]` with `env` (no in-process node unless
    /// the configuration asks for one).
    pub fn start_serve(env: &[(&str, &str)], extra_args: &[&str]) -> Self {
        let mut args = vec!["serve", "--http", "127.0.0.1:0"];
        args.extend_from_slice(extra_args);
        Self::spawn(&args, env)
    }

    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let rust_log = std::env::var("SFU_TEST_LOG").unwrap_or_else(|_| "info".into());
        let mut child = Command::new(env!("CARGO_BIN_EXE_control"))
            .args(args)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the control binary");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_log_reader(stdout, log.clone(), Some(ready_tx));
        spawn_log_reader(stderr, log.clone(), None);

        let base_url = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "server did not print `SFU ready: http://ADDR/` within {READY_TIMEOUT:?} \
                     ({e}; exit status {status:?}). Output:\n{}",
                    tail(&log, 60)
                );
            }
        };
        let client = SignalingClient::new(&base_url);
        Self {
            child,
            base_url,
            client,
            log,
        }
    }

    /// The server's process id (for CPU and memory sampling).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `"TERM"`) to the server and waits up to `timeout` for it to exit.
    /// `None` if it is still running then.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> Option<ExitStatus> {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {}: {sent}", self.pid());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The parsed `/metrics` page.
    pub fn metrics(&self) -> Metrics {
        let text = self
            .client
            .get_text("/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        Metrics::parse(&text).unwrap_or_else(|e| panic!("{e}; page:\n{text}"))
    }

    /// A publisher in `room` with the given media, connected (ICE + DTLS up).
    pub fn publish(&self, room: &str, audio: bool, video: Option<VideoConfig>) -> Publisher {
        self.publish_as(room, "publisher", audio, video)
    }

    /// A publisher in `room` with identity `identity`, connected.
    pub fn publish_as(
        &self,
        room: &str,
        identity: &str,
        audio: bool,
        video: Option<VideoConfig>,
    ) -> Publisher {
        let token = dev_token(room, identity, Grants::PUBLISH).expect("token");
        let config = PublisherConfig::new(&self.base_url, room, &token)
            .audio(audio)
            .video(video);
        let publisher = Publisher::connect(config).unwrap_or_else(|e| panic!("WHIP: {e}"));
        if !publisher.wait_connected(CONNECT_TIMEOUT) {
            panic!(
                "publisher not connected within {CONNECT_TIMEOUT:?} (ice {}, loop error {:?}, \
                 datagrams in {} out {})",
                publisher.ice_connected(),
                publisher.state().error(),
                publisher.state().datagrams_in(),
                publisher.state().datagrams_out(),
            );
        }
        publisher
    }

    /// The UDP ports of the node's workers, from `sfu_worker_info{port=...}`.
    pub fn worker_ports(&self) -> BTreeSet<u16> {
        let m = self.metrics();
        m.select("sfu_worker_info", &[])
            .map(|s| {
                let port = s.label("port").unwrap_or_default();
                port.parse()
                    .unwrap_or_else(|_| panic!("sfu_worker_info port {port:?} is not a port"))
            })
            .collect()
    }

    /// A subscriber in `room` (audio + video), connected.
    pub fn subscribe(&self, room: &str) -> Subscriber {
        self.subscribe_with(room, |c| c)
    }

    /// A subscriber in `room`, connected, with `configure` applied to the default config
    /// (audio + video, packet log kept).
    pub fn subscribe_with(
        &self,
        room: &str,
        configure: impl FnOnce(SubscriberConfig) -> SubscriberConfig,
    ) -> Subscriber {
        let token = dev_token(room, "subscriber", Grants::SUBSCRIBE).expect("token");
        let config = configure(SubscriberConfig::new(&self.base_url, room, &token));
        let subscriber = Subscriber::connect(config).unwrap_or_else(|e| panic!("WHEP: {e}"));
        if !subscriber.wait_connected(CONNECT_TIMEOUT) {
            panic!(
                "subscriber not connected within {CONNECT_TIMEOUT:?} (ice {}, loop error {:?}, \
                 datagrams in {} out {})",
                subscriber.ice_connected(),
                subscriber.state().error(),
                subscriber.state().datagrams_in(),
                subscriber.state().datagrams_out(),
            );
        }
        subscriber
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The first kept output line that starts with `prefix`, without it.
    pub fn log_line(&self, prefix: &str) -> Option<String> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter()
            .find_map(|line| line.trim().strip_prefix(prefix).map(str::to_string))
    }

    /// Whether some kept output line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().any(|line| line.contains(text))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- last lines of server output ----\n{}\n---- end of server output ----",
                tail(&self.log, 80)
            );
        }
    }
}

fn spawn_log_reader(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<VecDeque<String>>>,
    ready: Option<mpsc::Sender<String>>,
) {
    thread::spawn(move || {
        let mut ready = ready;
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.trim().strip_prefix("SFU ready: ") {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(url.trim().to_string());
                }
            }
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
}

fn tail(log: &Mutex<VecDeque<String>>, lines: usize) -> String {
    let log = log.lock().unwrap_or_else(|p| p.into_inner());
    let skip = log.len().saturating_sub(lines);
    log.iter()
        .skip(skip)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

/// UDP ports of the `a=candidate` lines of an SDP answer.
pub fn candidate_ports(answer: &str) -> BTreeSet<u16> {
    candidate_addrs(answer).iter().map(|a| a.port()).collect()
}

/// Polls until `cond` holds or `timeout` passes.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    tools::wait_until(timeout, cond)
}

/// Waits for the first packet of `kind`, panicking with diagnostics on timeout.
pub fn expect_media(sub: &Subscriber, kind: PayloadKind, what: &str) {
    if !sub.wait_packets(kind, 1, FIRST_MEDIA_TIMEOUT) {
        panic!(
            "{what}: no {kind} within {FIRST_MEDIA_TIMEOUT:?} (ice {}, loop error {:?}, \
             datagrams in {}, audio {} video {} unknown-media {})",
            sub.ice_connected(),
            sub.state().error(),
            sub.state().datagrams_in(),
            sub.packets(PayloadKind::Audio),
            sub.packets(PayloadKind::Video),
            sub.with_reception(|r| r.unknown_media),
        );
    }
}

/// Source packets a publisher had sent of (kind, layer) when `stats` was taken.
pub fn sent(stats: &PublisherStats, kind: PayloadKind, layer: u8) -> u64 {
    match kind {
        PayloadKind::Audio => stats.audio_packets,
        PayloadKind::Video => stats
            .video_packets
            .get(usize::from(layer))
            .copied()
            .unwrap_or(0),
    }
}

/// Minimum share of the packets sent while a subscriber was connected that it must receive.
/// Loopback loses nothing in practice; the margin absorbs a scheduler hiccup on a loaded CI
/// machine (a stalled receive thread overflowing its socket buffer).
pub const MIN_DELIVERY: f64 = 0.90;

/// Checks that `r` holds every packet of (kind, layer) the publisher sent between two stats
/// snapshots (`from`: taken once the subscriber was receiving, `to`: taken at the end, with
/// the subscriber given time to drain), intact, as one continuous stream.
pub fn assert_delivery(
    who: &str,
    r: &Reception,
    kind: PayloadKind,
    layer: u8,
    from: &PublisherStats,
    to: &PublisherStats,
) {
    let totals = r.totals(kind);
    assert_eq!(
        totals.corrupt, 0,
        "{who}: {kind} payloads corrupted in transit (first: {:?})",
        r.first_corruption
    );
    let lo = sent(from, kind, layer);
    let hi = sent(to, kind, layer);
    assert!(
        hi > lo,
        "{who}: the publisher sent no {kind} during the test"
    );
    let counters = r.source_counters(kind, layer);
    let received = counters.range(lo..hi).count() as u64;
    let expected = hi - lo;
    assert!(
        received as f64 >= MIN_DELIVERY * expected as f64,
        "{who}: received {received} of the {expected} {kind} packets (layer {layer}) sent while \
         connected (source counters {lo}..{hi}); needs {:.0}%",
        MIN_DELIVERY * 100.0
    );

    let streams = r.streams(kind);
    assert_eq!(
        streams.len(),
        1,
        "{who}: {kind} should arrive on exactly one SSRC: {streams:#?}"
    );
    let s = &streams[0];
    assert_eq!(
        s.duplicates, 0,
        "{who}: duplicate {kind} sequence numbers: {s:#?}"
    );
    assert_eq!(s.reordered, 0, "{who}: {kind} arrived out of order: {s:#?}");
    assert_eq!(
        s.timestamp_regressions, 0,
        "{who}: {kind} RTP timestamps went backwards: {s:#?}"
    );
    let span = s.last_ext_seq - s.first_ext_seq + 1;
    assert!(
        s.missing as f64 <= (1.0 - MIN_DELIVERY) * span as f64,
        "{who}: {kind} sequence numbers not consecutive ({} of {span} missing): {s:#?}",
        s.missing
    );
    assert_eq!(
        s.seq_offsets, 1,
        "{who}: {kind} sequence numbers do not map one-to-one onto the source's packets \
         (the rewrite offset changed mid-stream): {s:#?}"
    );
    assert_eq!(
        s.timestamp_offsets, 1,
        "{who}: {kind} RTP timestamps are not the source's shifted by a constant: {s:#?}"
    );
}

/// What a short-lived run of the `control` binary did.
#[derive(Debug)]
pub struct ControlRun {
    /// `None` if it did not exit by itself before the deadline (it was then killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ControlRun {
    /// Exited on its own with a non-zero status.
    pub fn failed(&self) -> bool {
        self.status.is_some_and(|s| !s.success())
    }

    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `control ARGS` with `env` added and every inherited `SFU_*` variable removed, waits at
/// most `timeout` (then kills it) and returns its status and output.
pub fn run_control(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> ControlRun {
    let mut command = Command::new(env!("CARGO_BIN_EXE_control"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SFU_") {
            command.env_remove(key);
        }
    }
    let started = Instant::now();
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the control binary");
    let stdout = read_to_end_in_background(child.stdout.take().expect("piped stdout"));
    let stderr = read_to_end_in_background(child.stderr.take().expect("piped stderr"));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < timeout => thread::sleep(Duration::from_millis(20)),
            // Still running at the deadline (or not waitable): stop it.
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let elapsed = started.elapsed();
    let collect =
        |rx: mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    ControlRun {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
        elapsed,
    }
}

fn read_to_end_in_background(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// A file in the temp directory, removed on drop.
#[derive(Debug)]
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    /// Writes `contents` to a fresh file whose name ends in `suffix`.
    pub fn with(suffix: &str, contents: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "control-test-{}-{}{suffix}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        Self { path }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// Delivery windows and keyframe checks, as the media and codec tests run them.

/// How long media flows in a delivery window once everyone is receiving.
pub const MEDIA_TIME: Duration = Duration::from_secs(3);

/// Time for in-flight packets to land before what arrived is read.
pub const DRAIN: Duration = Duration::from_millis(300);

/// Waits for each subscriber's first audio and video packet (named `subscriber {i}` in
/// failures, `i` its index in `subs`).
pub fn expect_audio_and_video(subs: &[Subscriber]) {
    for (i, s) in subs.iter().enumerate() {
        expect_media(s, PayloadKind::Audio, &format!("subscriber {i}"));
        expect_media(s, PayloadKind::Video, &format!("subscriber {i}"));
    }
}

/// Lets media flow for [`MEDIA_TIME`] and returns the publisher's stats at the start and the
/// end of that window, after a further [`DRAIN`] so that what it sent has landed.
pub fn media_window(publisher: &Publisher) -> (PublisherStats, PublisherStats) {
    let from = publisher.stats();
    thread::sleep(MEDIA_TIME);
    let to = publisher.stats();
    thread::sleep(DRAIN);
    (from, to)
}

/// [`assert_delivery`] of the audio and of the single-layer video.
pub fn assert_audio_and_video_delivery(
    who: &str,
    r: &Reception,
    from: &PublisherStats,
    to: &PublisherStats,
) {
    assert_delivery(who, r, PayloadKind::Audio, 0, from, to);
    assert_delivery(who, r, PayloadKind::Video, 0, from, to);
}

/// Keyframe counters taken before a subscriber joins a publisher that sends no periodic
/// keyframes, to check that the join made the server ask for one.
#[derive(Debug, Clone, Copy)]
pub struct KeyframeBaseline {
    requests: u64,
    keyframes: u64,
    server_requests: f64,
}

impl KeyframeBaseline {
    pub fn take(server: &Server, publisher: &Publisher) -> Self {
        Self {
            requests: publisher.keyframe_requests(),
            keyframes: publisher.stats().keyframes[0],
            server_requests: server.metrics().sum("sfu_keyframe_requests_total"),
        }
    }

    /// Asserts that since [`KeyframeBaseline::take`] the publisher (`what`, e.g. "the
    /// publisher") got a keyframe request and sent a keyframe, and the server counted the
    /// request.
    pub fn assert_keyframe_requested(&self, server: &Server, publisher: &Publisher, what: &str) {
        let requests_before = self.requests;
        assert!(
            publisher.keyframe_requests() > requests_before,
            "{what} got no keyframe request after a subscriber joined \
             (requests before {requests_before}, after {})",
            publisher.keyframe_requests()
        );
        assert!(publisher.stats().keyframes[0] > self.keyframes);
        assert!(
            server.metrics().sum("sfu_keyframe_requests_total") > self.server_requests,
            "sfu_keyframe_requests_total did not move"
        );
    }
}
