//! `sfu-load` against `control dev`: a short multi-room run reports plausible figures and
//! writes both report files; an impairment relay with a known drop rate and delay shows up as
//! exactly that loss and latency; servers that cannot be reached or refuse the token, and peers
//! whose ICE never connects, are counted per reason while the run goes on; a room run over the
//! WebSocket protocol delivers every participant to every other; a push-to-talk run passes the
//! floor and nobody hears a talker who does not hold it.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use support::Server;
use tools::load::negotiate::rewrite_candidates;
use tools::load::relay::{Relay, RelayConfig};
use tools::load::report::REPORT_VERSION;
use tools::load::{
    Criteria, MediaModel, PeerFailure, ProgressMode, Protocol, ProtocolKind, Report, RunOptions,
    Scenario, SdpClient, SessionHandle, TokenSource, WhipWhep, run, write_report,
};

/// A scenario small enough for a loaded CI machine: one generator thread, fast ramp.
fn scenario(url: &str, rooms: u32, subscribers: u32, media: MediaModel, secs: f64) -> Scenario {
    Scenario {
        url: url.to_string(),
        rooms,
        publishers: 1,
        subscribers,
        media,
        duration_s: secs,
        ramp_per_s: 50.0,
        threads: 1,
        video_kbps: 300,
        video_fps: 15,
        connect_timeout_s: 10.0,
        ..Scenario::default()
    }
}

fn report_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sfu-load-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `control dev` for load: the signaling rate limit (20 POSTs/s per client IP by default) is
/// off, as the README's load-testing section says, since every peer signals from 127.0.0.1.
fn load_server(workers: usize) -> Server {
    Server::start_with(
        workers,
        &[("SFU__LIMITS__SIGNALING_RATE_PER_SEC", "0")],
        &[],
    )
}

fn run_ok(scenario: &Scenario, options: &RunOptions) -> Report {
    run(scenario, options).unwrap_or_else(|e| panic!("load run failed to start: {e}"))
}

#[test]
fn a_short_multi_room_run_reports_plausible_figures_and_writes_both_files() {
    let server = load_server(2);
    let mut s = scenario(&server.base_url, 3, 4, MediaModel::AudioVideo, 4.0);
    // Criteria, so the run has a verdict to pass (without any it has none).
    s.criteria = Criteria {
        max_loss_pct: Some(1.0),
        min_connected_pct: Some(100.0),
        ..Criteria::default()
    };
    let options = RunOptions {
        server_pid: Some(server.pid()),
        label: Some("test run".into()),
        progress: ProgressMode::Off,
        ..RunOptions::default()
    };
    let report = run_ok(&s, &options);

    let peers = &report.peers;
    assert_eq!(peers.planned, 15, "3 rooms x (1 publisher + 4 subscribers)");
    assert_eq!(peers.connected, 15, "failures: {:?}", peers.failures);
    assert_eq!(
        (peers.publishers_connected, peers.subscribers_connected),
        (3, 12)
    );
    assert_eq!(peers.failed, 0);

    // Every subscriber gets its own room's publisher only: it cannot receive more than was
    // sent into its room, and it joined within the ramp, so it saw most of the run.
    let p = &report.packets;
    assert!(p.sent > 100 && p.bytes_sent > 0, "{p:?}");
    let subscriber_share = p.sent * 4; // each packet is wanted by 4 subscribers
    assert!(p.received <= subscriber_share, "{p:?}");
    assert!(
        p.received * 10 >= subscriber_share * 7,
        "received under 70%: {p:?}"
    );
    assert!(p.expected >= p.received && p.expected > 0, "{p:?}");
    assert!(p.loss_pct < 1.0, "loopback loss {:.2}%: {p:?}", p.loss_pct);
    assert_eq!(p.corrupt, 0, "{p:?}");

    let l = &report.latency_us;
    assert_eq!(
        l.count, p.received,
        "every received packet has a latency: {l:?}"
    );
    assert!(
        l.min > 0 && l.p50 >= l.min && l.p99 >= l.p50 && l.max >= l.p99,
        "{l:?}"
    );
    assert!(l.p50 < 50_000, "loopback p50 {} µs", l.p50);
    assert!(!l.cdf.is_empty());

    let j = &report.join_ms;
    assert_eq!(j.count, 15, "a join time per peer: {j:?}");
    assert!(j.p50 > 0.0 && j.p99 >= j.p50 && j.max < 10_000.0, "{j:?}");

    assert!(
        report.timeline.len() >= 4,
        "a tick per second: {}",
        report.timeline.len()
    );
    assert!(report.timeline.windows(2).all(|w| w[0].t_s < w[1].t_s));
    assert!(report.timeline.iter().any(|t| t.pps_in > 0));
    let server_usage = report
        .server
        .as_ref()
        .expect("server samples with --server-pid");
    assert_eq!(server_usage.pid, server.pid());
    assert!(!server_usage.samples.is_empty() && server_usage.rss_mb_max > 1.0);
    assert!(!report.generator.samples.is_empty());
    assert!(report.verdict.passed(), "{:?}", report.verdict);
    assert_eq!(report.version, REPORT_VERSION);

    let dir = report_dir("short");
    write_report(&dir, &report).expect("write the report");
    let json = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    let parsed: Report = serde_json::from_str(&json).expect("report.json parses back");
    assert_eq!(parsed.packets, report.packets);
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(html.contains("<svg") && html.contains("test run"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_room_run_delivers_every_participant_to_every_other() {
    let server = Server::start_with_workers(2);
    let s = Scenario {
        protocol: ProtocolKind::Room,
        participants: 3,
        ..scenario(&server.base_url, 2, 0, MediaModel::AudioVideo, 3.0)
    };
    let report = run_ok(&s, &RunOptions::default());
    // Read it back as an operator would.
    let dir = report_dir("room");
    write_report(&dir, &report).expect("write the report");
    let json = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    let _ = std::fs::remove_dir_all(&dir);
    let report: Report = serde_json::from_str(&json).expect("report.json parses back");

    let room = report.room.as_ref().expect("a room run reports its rooms");
    assert_eq!(
        report.peers.planned, 12,
        "2 rooms x 3 participants x 2 connections"
    );
    assert_eq!(report.peers.failed, 0, "{:?}", report.peers.failures);
    assert_eq!(room.failed_joins, 0, "{room:?}");
    assert_eq!(room.participants, 6);
    assert_eq!(room.participants_connected, 6, "{room:?}");
    assert_eq!(
        room.streams_per_participant, 4,
        "the 2 others' audio and video"
    );
    assert_eq!(room.streams_expected, 24);
    assert_eq!(room.streams_received, 24, "{room:?}");
    assert_eq!(room.min_streams_per_participant, 4, "{room:?}");
    assert_eq!(room.participants_complete, 6, "{room:?}");
    assert_eq!(room.per_participant.len(), 6);
    for p in &room.per_participant {
        assert_eq!(p.streams, 4, "{p:?}");
        assert!(p.join_ms.is_some(), "{p:?}");
    }
    let identities: std::collections::BTreeSet<&str> = room
        .per_participant
        .iter()
        .map(|p| p.identity.as_str())
        .collect();
    assert_eq!(identities.len(), 6, "an identity per participant");
    assert_eq!(room.join_ms.count, 6, "{:?}", room.join_ms);
    assert_eq!(room.signaling.bad_messages, 0, "{:?}", room.signaling);
    assert_eq!(
        room.signaling.renegotiations_unmet, 0,
        "{:?}",
        room.signaling
    );
    assert!(room.signaling.errors.is_empty(), "{:?}", room.signaling);
    // Each participant's media reached the others: received packets carry latencies.
    assert!(report.packets.received > 0 && report.latency_us.count > 0);
    assert_eq!(report.packets.corrupt, 0, "{:?}", report.packets);
    assert!(report.verdict.passed(), "{:?}", report.verdict);
}

#[test]
fn a_push_to_talk_run_passes_the_floor_and_only_the_holder_is_heard() {
    let server = load_server(2);
    let s = Scenario {
        protocol: ProtocolKind::Room,
        participants: 8,
        ptt: Some(tools::load::scenario::PttPlan {
            talkers: 3,
            floor_change_s: 1.0,
        }),
        ..scenario(&server.base_url, 1, 0, MediaModel::Audio, 6.0)
    };
    let report = run_ok(&s, &RunOptions::default());
    let room = report.room.as_ref().expect("a room run reports its rooms");
    assert_eq!(room.participants_connected, 8, "{room:?}");
    let ptt = room
        .ptt
        .as_ref()
        .expect("a push-to-talk run reports its floor");
    assert!(ptt.changes >= 3, "the floor went round: {ptt:?}");
    assert_eq!(
        ptt.violations, 0,
        "nobody hears a talker not holding the floor: {ptt:?}"
    );
    assert!(ptt.packets > 0, "{ptt:?}");
    let change = ptt.change_ms.expect("floor changes measured");
    assert!(change.measured >= 5, "{change:?}");
    // Every listener heard each of the 3 talkers in turn, each talker the 2 others.
    assert_eq!(room.streams_expected, 5 * 3 + 3 * 2);
    assert_eq!(room.streams_received, room.streams_expected, "{room:?}");
    assert!(room.signaling.errors.is_empty(), "{:?}", room.signaling);
    assert_eq!(room.signaling.floor_refusals, 0, "{:?}", room.signaling);
    assert!(report.verdict.passed(), "{:?}", report.verdict);
    // The node dropped the talkers' audio while they did not hold the floor.
    assert!(server.metrics().sum("sfu_floor_dropped_total") > 0.0);
}

#[test]
fn loss_and_latency_through_an_impairment_relay_are_measured_as_configured() {
    const DROP_EVERY: u64 = 10;
    const DELAY: Duration = Duration::from_millis(40);

    let server = load_server(1);
    let localhost: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let relays: Vec<Relay> = server
        .worker_ports()
        .into_iter()
        .map(|port| {
            let config = RelayConfig {
                upstream: SocketAddr::from(([127, 0, 0, 1], port)),
                drop_every: Some(DROP_EVERY),
                delay: DELAY,
            };
            Relay::start(localhost, config).expect("start the relay")
        })
        .collect();
    let options = RunOptions {
        remote_overrides: relays
            .iter()
            .map(|r| (r.upstream(), r.local_addr()))
            .collect(),
        ..RunOptions::default()
    };
    // Audio only: video loss would be repaired by NACK/RTX and hide the drops.
    let s = scenario(&server.base_url, 1, 3, MediaModel::Audio, 5.0);
    let report = run_ok(&s, &options);

    assert_eq!(report.peers.connected, 4, "{:?}", report.peers.failures);
    let dropped: u64 = relays.iter().map(|r| r.counts().dropped).sum();
    assert!(dropped > 0, "the relay dropped nothing");
    let p = &report.packets;
    let want = 100.0 / DROP_EVERY as f64;
    assert!(
        (p.loss_pct - want).abs() < 1.5,
        "loss {:.2}%, relay drops {want:.1}% ({p:?})",
        p.loss_pct
    );
    assert!(
        p.lost.abs_diff(dropped) <= 3 * 3,
        "lost {} vs dropped {dropped}: at most a few drops fall outside a subscriber's span",
        p.lost
    );
    let l = &report.latency_us;
    let delay_us = DELAY.as_micros() as u64;
    assert!(l.min >= delay_us, "min {} µs below the relay delay", l.min);
    assert!(
        l.p50 < delay_us + 15_000,
        "p50 {} µs, delay {delay_us} µs",
        l.p50
    );
}

#[test]
fn unreachable_servers_and_refused_tokens_are_counted_per_reason() {
    // Nothing listens on a port we just bound and released.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut s = scenario(&format!("http://{free}"), 2, 2, MediaModel::Audio, 1.0);
    s.criteria = Criteria {
        min_connected_pct: Some(99.0),
        ..Criteria::default()
    };
    let report = run_ok(&s, &RunOptions::default());
    assert_eq!(report.peers.planned, 6);
    assert_eq!(report.peers.failed, 6);
    assert_eq!(
        report.peers.failures.get("unreachable"),
        Some(&6),
        "{:?}",
        report.peers
    );
    assert!(report.verdict.failed(), "{:?}", report.verdict);
    assert!(
        report
            .verdict
            .failures
            .iter()
            .any(|f| f.contains("connected")),
        "{:?}",
        report.verdict
    );

    let server = load_server(1);
    let s = scenario(&server.base_url, 1, 2, MediaModel::Audio, 1.0);
    let options = RunOptions {
        tokens: TokenSource::Fixed("not-a-token".into()),
        ..RunOptions::default()
    };
    let report = run_ok(&s, &options);
    assert_eq!(
        report.peers.failures.get("http_401"),
        Some(&3),
        "{:?}",
        report.peers
    );
    assert_eq!(report.peers.connected, 0);
}

#[test]
fn peers_that_never_connect_are_counted_and_the_run_ends() {
    let server = load_server(1);
    let mut s = scenario(&server.base_url, 1, 1, MediaModel::AudioVideo, 0.5);
    s.connect_timeout_s = 1.0;
    // Every candidate in the answers is rewritten to a socket nobody reads, as
    // `--remote-override` would send to a relay, so ICE cannot complete.
    let black_hole = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let hole = black_hole.local_addr().expect("addr");
    let options = RunOptions {
        protocol: Some(Arc::new(Redirect {
            inner: WhipWhep::new(&server.base_url, TokenSource::dev()),
            to: hole,
        })),
        ..RunOptions::default()
    };
    let report = run_ok(&s, &options);
    assert_eq!(report.peers.connected, 0);
    assert_eq!(report.peers.failed, 2);
    assert_eq!(
        report.peers.failures.get("ice_timeout"),
        Some(&2),
        "{:?}",
        report.peers
    );
    assert!(report.verdict.failed(), "{:?}", report.verdict);
}

/// WHIP/WHEP whose answers' candidates all point at `to` (a socket nobody reads), as a remote
/// override would, to make ICE fail.
#[derive(Debug)]
struct Redirect {
    inner: WhipWhep,
    to: SocketAddr,
}

struct RedirectClient<'a> {
    inner: &'a mut dyn SdpClient,
    to: SocketAddr,
}

impl SdpClient for RedirectClient<'_> {
    fn create_offer(&mut self) -> Result<String, PeerFailure> {
        self.inner.create_offer()
    }

    fn accept_answer(&mut self, answer: &str) -> Result<(), PeerFailure> {
        // The server's candidate port is its worker's: read it, then override it.
        let from = answer.lines().find_map(|l| {
            let f: Vec<&str> = l.strip_prefix("a=candidate:")?.split(' ').collect();
            Some(SocketAddr::new(
                f.get(4)?.parse().ok()?,
                f.get(5)?.parse().ok()?,
            ))
        });
        let overrides: Vec<(SocketAddr, SocketAddr)> =
            from.map(|f| (f, self.to)).into_iter().collect();
        let rewritten = rewrite_candidates(answer, &overrides);
        assert_ne!(rewritten, answer, "the answer names a candidate");
        self.inner.accept_answer(&rewritten)
    }

    fn answer_offer(&mut self, offer: &str) -> Result<String, PeerFailure> {
        self.inner.answer_offer(offer)
    }
}

impl Redirect {
    /// `client`, with the node's candidates in its answers pointed at `self.to`.
    fn redirect<'a>(&self, client: &'a mut dyn SdpClient) -> RedirectClient<'a> {
        RedirectClient {
            inner: client,
            to: self.to,
        }
    }
}

impl Protocol for Redirect {
    fn name(&self) -> &'static str {
        "redirect"
    }

    fn publish(
        &self,
        room: &str,
        identity: &str,
        client: &mut dyn SdpClient,
    ) -> Result<SessionHandle, PeerFailure> {
        self.inner
            .publish(room, identity, &mut self.redirect(client))
    }

    fn subscribe(
        &self,
        room: &str,
        identity: &str,
        client: &mut dyn SdpClient,
    ) -> Result<SessionHandle, PeerFailure> {
        self.inner
            .subscribe(room, identity, &mut self.redirect(client))
    }

    fn leave(&self, session: &SessionHandle) -> Result<(), PeerFailure> {
        self.inner.leave(session)
    }
}
