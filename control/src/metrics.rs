//! Prometheus text exposition of the node's counters.

use std::fmt::Write;

use sfu_core::proto::{FORWARD_DELAY_BUCKETS_US, NodeStats, WorkerStats};

/// One per-worker series: name, Prometheus type, help text, and how to read it.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WorkerStats) -> u64,
);

/// Render every series, with `# HELP` and `# TYPE` lines. `workers_up` is the node's
/// per-worker liveness (index = worker id); a worker missing from it counts as stopped.
/// `control_sessions` is the number of sessions in control's store.
pub fn render(stats: &NodeStats, workers_up: &[bool], control_sessions: usize) -> String {
    let mut out = String::with_capacity(4096);
    let series: [Series; 20] = [
        (
            "sfu_tracks",
            "gauge",
            "Tracks published by the worker's sessions",
            |w| w.published_tracks,
        ),
        (
            "sfu_packets_in_total",
            "counter",
            "UDP datagrams received",
            |w| w.packets_in,
        ),
        ("sfu_bytes_in_total", "counter", "UDP bytes received", |w| {
            w.bytes_in
        }),
        (
            "sfu_packets_out_total",
            "counter",
            "UDP datagrams sent",
            |w| w.packets_out,
        ),
        ("sfu_bytes_out_total", "counter", "UDP bytes sent", |w| {
            w.bytes_out
        }),
        (
            "sfu_gso_sends_total",
            "counter",
            "UDP GSO sends the kernel accepted, each carrying several datagrams",
            |w| w.gso_sends,
        ),
        (
            "sfu_gso_datagrams_total",
            "counter",
            "Datagrams sent in UDP GSO sends (also in sfu_packets_out_total)",
            |w| w.gso_datagrams,
        ),
        (
            "sfu_rtp_forwarded_total",
            "counter",
            "RTP packets written to subscribers",
            |w| w.rtp_forwarded,
        ),
        (
            "sfu_keyframe_requests_total",
            "counter",
            "Keyframe requests (PLI) sent to publishers, at most one per layer per 500 ms; \
             those received from subscribers are sfu_keyframe_requests_received_total",
            |w| w.keyframe_requests,
        ),
        (
            "sfu_nacks_received_total",
            "counter",
            "NACK messages received from subscribers (one message may name several packets)",
            |w| w.nacks_received,
        ),
        (
            "sfu_rtx_sent_total",
            "counter",
            "Packets retransmitted to subscribers on their RTX SSRC in answer to NACKs \
             (bandwidth-estimation padding excluded)",
            |w| w.rtx_sent,
        ),
        (
            "sfu_data_messages_in_total",
            "counter",
            "Data-channel messages clients sent that the node passed on to control",
            |w| w.data_in,
        ),
        (
            "sfu_data_messages_out_total",
            "counter",
            "Data-channel messages the node sent to clients",
            |w| w.data_out,
        ),
        (
            "sfu_data_messages_dropped_total",
            "counter",
            "Data-channel messages refused: binary, over 64 KiB, over 50/s per session, \
             or for a client with no open channel",
            |w| w.data_dropped,
        ),
        (
            "sfu_bandwidth_switches_total",
            "counter",
            "Subscriber video layer changes, pauses and resumes made by bandwidth allocation",
            |w| w.bandwidth_switches,
        ),
        (
            "sfu_bandwidth_paused_tracks",
            "gauge",
            "Subscriber video tracks paused because not even their lowest layer fits the \
             bandwidth estimate",
            |w| w.bandwidth_paused_tracks,
        ),
        (
            "sfu_floor_dropped_total",
            "counter",
            "Audio packets not forwarded because their participant did not hold the room's \
             push-to-talk floor",
            |w| w.floor_dropped,
        ),
        (
            "sfu_nacks_sent_total",
            "counter",
            "NACK messages sent to publishers (one message may name several packets)",
            |w| w.nacks_sent,
        ),
        (
            "sfu_sessions_reaped_total",
            "counter",
            "Sessions closed by timeout or ICE disconnect",
            |w| w.sessions_reaped,
        ),
        (
            "sfu_session_panics_total",
            "counter",
            "Sessions torn down after a panic in the WebRTC stack",
            |w| w.session_panics,
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
        for w in &stats.workers {
            let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", w.worker, value(w));
        }
    }
    let _ = writeln!(
        out,
        "# HELP sfu_sessions Sessions by kind.\n# TYPE sfu_sessions gauge"
    );
    for w in &stats.workers {
        let _ = writeln!(
            out,
            "sfu_sessions{{worker=\"{}\",kind=\"publish\"}} {}",
            w.worker, w.publish_sessions
        );
        let _ = writeln!(
            out,
            "sfu_sessions{{worker=\"{}\",kind=\"subscribe\"}} {}",
            w.worker, w.subscribe_sessions
        );
    }
    let _ = writeln!(
        out,
        "# HELP sfu_keyframe_requests_received_total Keyframe requests received from subscribers, \
         by kind (pli, fir).\n# TYPE sfu_keyframe_requests_received_total counter"
    );
    for w in &stats.workers {
        for (kind, n) in [("pli", w.plis_received), ("fir", w.firs_received)] {
            let _ = writeln!(
                out,
                "sfu_keyframe_requests_received_total{{worker=\"{}\",kind=\"{kind}\"}} {n}",
                w.worker
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sfu_udp_dropped_total Datagrams and packets dropped, by reason.\n# TYPE sfu_udp_dropped_total counter"
    );
    for w in &stats.workers {
        for (reason, n) in &w.dropped {
            let _ = writeln!(
                out,
                "sfu_udp_dropped_total{{worker=\"{}\",reason=\"{reason}\"}} {n}",
                w.worker
            );
        }
    }
    render_forward_delay(&mut out, stats);
    let _ = writeln!(
        out,
        "# HELP sfu_worker_info Media worker port and I/O backend.\n# TYPE sfu_worker_info gauge"
    );
    for w in &stats.workers {
        let _ = writeln!(
            out,
            "sfu_worker_info{{worker=\"{}\",port=\"{}\",io=\"{}\"}} 1",
            w.worker, w.port, stats.io_backend
        );
    }
    let _ = writeln!(
        out,
        "# HELP sfu_worker_up Whether the media worker's thread runs (1) or has stopped (0); \
         control exits when one stops.\n# TYPE sfu_worker_up gauge"
    );
    for w in &stats.workers {
        let up = workers_up
            .get(usize::from(w.worker))
            .copied()
            .unwrap_or(false);
        let _ = writeln!(
            out,
            "sfu_worker_up{{worker=\"{}\"}} {}",
            w.worker,
            u8::from(up)
        );
    }
    let _ = writeln!(
        out,
        "# HELP sfu_control_sessions Sessions in control's store (created and not yet ended, \
         whether by DELETE or by the node).\n# TYPE sfu_control_sessions gauge\nsfu_control_sessions {control_sessions}"
    );
    out
}

/// `sfu_forward_delay_seconds`, a histogram per worker: how long after a publisher's packet
/// reached the node each copy of it was handed to the socket.
fn render_forward_delay(out: &mut String, stats: &NodeStats) {
    let _ = writeln!(
        out,
        "# HELP sfu_forward_delay_seconds Time from a publisher's packet reaching the node to \
         the end of the worker pass that handed each forwarded copy to the socket.\n\
         # TYPE sfu_forward_delay_seconds histogram"
    );
    for w in stats.workers.iter().filter(|w| !w.forward_delay.is_empty()) {
        let mut cumulative = 0;
        for (i, n) in w.forward_delay.iter().enumerate() {
            cumulative += n;
            let le = match FORWARD_DELAY_BUCKETS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "sfu_forward_delay_seconds_bucket{{worker=\"{}\",le=\"{le}\"}} {cumulative}",
                w.worker
            );
        }
        let _ = writeln!(
            out,
            "sfu_forward_delay_seconds_sum{{worker=\"{}\"}} {}\n\
             sfu_forward_delay_seconds_count{{worker=\"{}\"}} {cumulative}",
            w.worker,
            w.forward_delay_sum_us as f64 / 1e6,
            w.worker
        );
    }
}

/// Append the cluster's series: media nodes by state (the embedded node counts as up),
/// placements, failovers and each node link's round-trip time.
pub fn render_cluster(out: &mut String, nodes: &crate::cluster::nodes::Nodes) {
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(
        out,
        "# HELP sfu_cluster_nodes Media nodes control knows, by state.\n# TYPE sfu_cluster_nodes gauge"
    );
    for (state, count) in nodes.count_by_state() {
        let _ = writeln!(out, "sfu_cluster_nodes{{state=\"{state}\"}} {count}");
    }
    let c = nodes.counters();
    let _ = writeln!(
        out,
        "# HELP sfu_cluster_placements_total Sessions given a node: new (their room lived nowhere), kept (joined the room on its node), moved (the room's node was dead, gone or draining), spilled (beside the room's node, which was full or outside the region asked for).\n# TYPE sfu_cluster_placements_total counter"
    );
    for (placed, n) in [
        ("new", &c.placed_new),
        ("kept", &c.placed_kept),
        ("moved", &c.placed_moved),
        ("spilled", &c.placed_spilled),
    ] {
        let _ = writeln!(
            out,
            "sfu_cluster_placements_total{{placed=\"{placed}\"}} {}",
            n.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP sfu_cluster_failovers_total Media nodes declared dead (their rooms move to live nodes).\n# TYPE sfu_cluster_failovers_total counter\nsfu_cluster_failovers_total {}",
        c.failovers.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP sfu_cluster_link_rtt_seconds Round-trip time of each node's QUIC link.\n# TYPE sfu_cluster_link_rtt_seconds gauge"
    );
    for (node, rtt) in nodes.link_rtts() {
        let _ = writeln!(
            out,
            "sfu_cluster_link_rtt_seconds{{node=\"{node}\"}} {:.6}",
            rtt.as_secs_f64()
        );
    }
    // Each linked node's last load report: remote nodes serve no HTTP of their own, so their
    // figures are scraped here, from the control instance that holds their link.
    let loads = nodes.linked_loads();
    let series: [LoadSeries; 5] = [
        (
            "sfu_cluster_node_sessions",
            "gauge",
            "Sessions on each linked node.",
            |l| l.sessions.to_string(),
        ),
        (
            "sfu_cluster_node_tracks",
            "gauge",
            "Tracks published on each linked node.",
            |l| l.tracks.to_string(),
        ),
        (
            "sfu_cluster_node_cpu_cores",
            "gauge",
            "CPU each linked node's process used over its last report interval, in cores.",
            |l| format!("{:.3}", f64::from(l.cpu_millicores) / 1000.0),
        ),
        (
            "sfu_cluster_node_packets_in_total",
            "counter",
            "UDP datagrams each linked node received.",
            |l| l.packets_in.to_string(),
        ),
        (
            "sfu_cluster_node_packets_out_total",
            "counter",
            "UDP datagrams each linked node sent.",
            |l| l.packets_out.to_string(),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (node, load) in &loads {
            let _ = writeln!(out, "{name}{{node=\"{node}\"}} {}", value(load));
        }
    }
    render_relays(out, &loads);
}

/// Each linked node's relay links (rooms that span nodes, docs/cascade.md), from its load
/// report: `{node, peer}` per link, `direction` as the node sees it.
fn render_relays(out: &mut String, loads: &[(sfu_core::ids::NodeId, sfu_core::proto::LoadReport)]) {
    let links: Vec<(
        &sfu_core::ids::NodeId,
        &sfu_core::proto::RelayLinkStats,
        String,
    )> = loads
        .iter()
        .flat_map(|(node, load)| load.relays.iter().map(move |l| (node, l)))
        .map(|(node, l)| {
            let peer = l.peer.as_ref().map_or(String::new(), |p| p.to_string());
            (node, l, peer)
        })
        .collect();
    let _ = writeln!(
        out,
        "# HELP sfu_cluster_relay_up Whether each relay link between two nodes is up.\n# TYPE sfu_cluster_relay_up gauge"
    );
    for (node, l, peer) in &links {
        let _ = writeln!(
            out,
            "sfu_cluster_relay_up{{node=\"{node}\",peer=\"{peer}\"}} {}",
            u8::from(l.up)
        );
    }
    let _ = writeln!(
        out,
        "# HELP sfu_cluster_relay_rtt_seconds Round-trip time of each relay link, as QUIC measures it.\n# TYPE sfu_cluster_relay_rtt_seconds gauge"
    );
    for (node, l, peer) in &links {
        let _ = writeln!(
            out,
            "sfu_cluster_relay_rtt_seconds{{node=\"{node}\",peer=\"{peer}\"}} {:.6}",
            l.rtt_us as f64 / 1e6
        );
    }
    type Pick = fn(&sfu_core::proto::RelayLinkStats) -> (u64, u64);
    let directed: [(&str, &str, Pick); 3] = [
        (
            "sfu_cluster_relay_datagrams_total",
            "QUIC datagrams on each relay link.",
            |l| (l.datagrams_out, l.datagrams_in),
        ),
        (
            "sfu_cluster_relay_bytes_total",
            "Bytes of datagrams on each relay link.",
            |l| (l.bytes_out, l.bytes_in),
        ),
        (
            "sfu_cluster_relay_packets_total",
            "Media packets on each relay link (before fragmentation).",
            |l| (l.packets_out, l.packets_in),
        ),
    ];
    for (name, help, pick) in directed {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (node, l, peer) in &links {
            let (sent, received) = pick(l);
            for (direction, v) in [("out", sent), ("in", received)] {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{node}\",peer=\"{peer}\",direction=\"{direction}\"}} {v}"
                );
            }
        }
    }
    type Split = fn(&sfu_core::proto::RelayLinkStats) -> [(&'static str, u64); 2];
    let split: [(&str, &str, &str, Split); 3] = [
        (
            "sfu_cluster_relay_repairs_total",
            "Hop repairs on each relay link: NACK frames sent, packets retransmitted.",
            "kind",
            |l| {
                [
                    ("nacks_sent", l.nacks_sent),
                    ("retransmitted", l.retransmitted),
                ]
            },
        ),
        (
            "sfu_cluster_relay_lost_total",
            "Packets from the peer a node found missing on each relay link: all gaps before the hop's repairs (detected), and those the repairs did not bring (unrepaired).",
            "stage",
            |l| [("detected", l.lost), ("unrepaired", l.unrepaired)],
        ),
        (
            "sfu_cluster_relay_dropped_total",
            "Packets a node could not send on a relay link: too large even in fragments (size), refused by QUIC (congestion).",
            "reason",
            |l| {
                [
                    ("size", l.dropped_size),
                    ("congestion", l.dropped_congestion),
                ]
            },
        ),
    ];
    for (name, help, label, pick) in split {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (node, l, peer) in &links {
            for (value_label, v) in pick(l) {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{node}\",peer=\"{peer}\",{label}=\"{value_label}\"}} {v}"
                );
            }
        }
    }
}

/// One series taken from nodes' load reports: name, type, help, the value of one report.
type LoadSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&sfu_core::proto::LoadReport) -> String,
);

/// The state store: failed calls so far, and whether its last call answered (always 1 in
/// memory).
pub fn render_store(out: &mut String, errors: u64, up: bool) {
    let _ = writeln!(
        out,
        "# HELP sfu_store_errors_total State store calls that failed (Redis unreachable or bad data).\n\
         # TYPE sfu_store_errors_total counter\nsfu_store_errors_total {errors}\n\
         # HELP sfu_store_up Whether the state store answered its last call.\n\
         # TYPE sfu_store_up gauge\nsfu_store_up {}",
        u8::from(up)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(worker: u16, n: u64) -> WorkerStats {
        WorkerStats {
            worker,
            port: 40_000 + worker,
            keyframe_requests: n,
            nacks_received: n + 1,
            rtx_sent: n + 2,
            plis_received: n + 3,
            firs_received: n + 4,
            nacks_sent: n + 5,
            gso_sends: n + 6,
            gso_datagrams: n + 7,
            data_dropped: n + 10,
            bandwidth_switches: n + 8,
            bandwidth_paused_tracks: n + 9,
            floor_dropped: n + 11,
            ..WorkerStats::default()
        }
    }

    /// The forwarding delay is a Prometheus histogram per worker: cumulative buckets in
    /// seconds up to `+Inf`, then the sum and the count.
    #[test]
    fn forwarding_delay_is_a_cumulative_histogram() {
        let mut w = worker(0, 0);
        w.forward_delay = vec![0; FORWARD_DELAY_BUCKETS_US.len() + 1];
        w.forward_delay[0] = 5; // ≤ 10 µs
        w.forward_delay[5] = 3; // ≤ 100 µs
        w.forward_delay[FORWARD_DELAY_BUCKETS_US.len()] = 1; // above 100 ms
        w.forward_delay_sum_us = 250_500;
        let stats = NodeStats {
            io_backend: "poll".into(),
            workers: vec![w, worker(1, 0)],
        };
        let text = render(&stats, &[true, true], 0);
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# TYPE sfu_forward_delay_seconds histogram",
            "sfu_forward_delay_seconds_bucket{worker=\"0\",le=\"0.00001\"} 5",
            "sfu_forward_delay_seconds_bucket{worker=\"0\",le=\"0.000075\"} 5",
            "sfu_forward_delay_seconds_bucket{worker=\"0\",le=\"0.0001\"} 8",
            "sfu_forward_delay_seconds_bucket{worker=\"0\",le=\"0.1\"} 8",
            "sfu_forward_delay_seconds_bucket{worker=\"0\",le=\"+Inf\"} 9",
            "sfu_forward_delay_seconds_sum{worker=\"0\"} 0.2505",
            "sfu_forward_delay_seconds_count{worker=\"0\"} 9",
        ] {
            assert!(
                lines.contains(&expected),
                "no line {expected:?} in:\n{text}"
            );
        }
        // A worker that reported no histogram gets no series (never one without `+Inf`).
        assert!(!text.contains("sfu_forward_delay_seconds_count{worker=\"1\"}"));
    }

    /// Each feedback counter is rendered once per worker with its own value, under one
    /// `# HELP`/`# TYPE` pair, and keyframe requests received are split by kind.
    #[test]
    fn feedback_counters_are_rendered_per_worker() {
        let stats = NodeStats {
            io_backend: "poll".into(),
            workers: vec![worker(0, 10), worker(1, 20)],
        };
        let text = render(&stats, &[true, true], 0);
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# TYPE sfu_keyframe_requests_total counter",
            "sfu_keyframe_requests_total{worker=\"0\"} 10",
            "sfu_keyframe_requests_total{worker=\"1\"} 20",
            "# TYPE sfu_nacks_received_total counter",
            "sfu_nacks_received_total{worker=\"0\"} 11",
            "sfu_nacks_received_total{worker=\"1\"} 21",
            "# TYPE sfu_rtx_sent_total counter",
            "sfu_rtx_sent_total{worker=\"0\"} 12",
            "sfu_rtx_sent_total{worker=\"1\"} 22",
            "# TYPE sfu_keyframe_requests_received_total counter",
            "sfu_keyframe_requests_received_total{worker=\"0\",kind=\"pli\"} 13",
            "sfu_keyframe_requests_received_total{worker=\"0\",kind=\"fir\"} 14",
            "sfu_keyframe_requests_received_total{worker=\"1\",kind=\"pli\"} 23",
            "sfu_keyframe_requests_received_total{worker=\"1\",kind=\"fir\"} 24",
            "# TYPE sfu_nacks_sent_total counter",
            "sfu_nacks_sent_total{worker=\"0\"} 15",
            "sfu_nacks_sent_total{worker=\"1\"} 25",
            "# TYPE sfu_gso_sends_total counter",
            "sfu_gso_sends_total{worker=\"0\"} 16",
            "sfu_gso_datagrams_total{worker=\"1\"} 27",
            "# TYPE sfu_data_messages_dropped_total counter",
            "sfu_data_messages_dropped_total{worker=\"1\"} 30",
            "# TYPE sfu_bandwidth_switches_total counter",
            "sfu_bandwidth_switches_total{worker=\"0\"} 18",
            "# TYPE sfu_bandwidth_paused_tracks gauge",
            "sfu_bandwidth_paused_tracks{worker=\"1\"} 29",
            "# TYPE sfu_floor_dropped_total counter",
            "sfu_floor_dropped_total{worker=\"0\"} 21",
        ] {
            assert_eq!(
                lines.iter().filter(|l| **l == expected).count(),
                1,
                "expected exactly one line {expected:?} in:\n{text}"
            );
        }
        for name in [
            "sfu_nacks_received_total",
            "sfu_rtx_sent_total",
            "sfu_keyframe_requests_received_total",
            "sfu_nacks_sent_total",
        ] {
            let help = format!("# HELP {name} ");
            assert_eq!(
                lines.iter().filter(|l| l.starts_with(&help)).count(),
                1,
                "{name} needs one HELP line"
            );
        }
    }

    /// One `sfu_worker_up` line per worker: 1 while its thread runs, 0 once it has stopped or
    /// when the node no longer reports it.
    #[test]
    fn worker_up_is_one_per_running_worker() {
        let stats = NodeStats {
            io_backend: "poll".into(),
            workers: vec![worker(0, 1), worker(1, 1), worker(2, 1)],
        };
        let text = render(&stats, &[true, false], 0);
        let up: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sfu_worker_up"))
            .collect();
        assert_eq!(
            up,
            [
                "sfu_worker_up{worker=\"0\"} 1",
                "sfu_worker_up{worker=\"1\"} 0",
                "sfu_worker_up{worker=\"2\"} 0",
            ]
        );
        assert!(text.contains("# TYPE sfu_worker_up gauge\n"), "{text}");
    }

    /// Every series the page exports, and every drop reason, is documented in the README's
    /// Metrics table, so an operator reading it sees what `/metrics` serves.
    #[test]
    fn every_series_and_drop_reason_is_in_the_readme() {
        let readme = include_str!("../../README.md");
        let metrics = readme
            .split("\n## Metrics")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("README has a Metrics section");
        let stats = NodeStats {
            io_backend: "poll".into(),
            workers: vec![worker(0, 1)],
        };
        let text = render(&stats, &[true, true], 0);
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.len() >= 10, "too few series: {names:?}");
        for name in names {
            assert!(
                metrics.contains(&format!("`{name}")),
                "{name} is served but not in the README's Metrics section"
            );
        }
        for reason in sfu_core::metrics::DropReason::ALL {
            assert!(
                metrics.contains(&format!("`{}`", reason.as_str())),
                "drop reason {} is not in the README's Metrics section",
                reason.as_str()
            );
        }
    }

    /// The page parses as Prometheus text with the parser the load generator and the tests use.
    #[test]
    fn the_page_parses() {
        let stats = NodeStats {
            io_backend: "poll".into(),
            workers: vec![worker(0, 1)],
        };
        let page =
            tools::metrics::Metrics::parse(&render(&stats, &[true, true], 0)).expect("parses");
        assert_eq!(
            page.sum_where("sfu_keyframe_requests_received_total", &[("kind", "fir")]),
            5.0
        );
        assert_eq!(page.sum("sfu_rtx_sent_total"), 3.0);
    }
}
