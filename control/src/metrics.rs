//! Prometheus text exposition of the node's counters.

use std::fmt::Write;

use sfu_core::api::{NodeStats, WorkerStats};

/// One per-worker series: name, Prometheus type, help text, and how to read it.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WorkerStats) -> u64,
);

/// Render every series, with `# HELP` and `# TYPE` lines.
pub fn render(stats: &NodeStats) -> String {
    let mut out = String::with_capacity(4096);
    let series: [Series; 10] = [
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
            "sfu_rtp_forwarded_total",
            "counter",
            "RTP packets written to subscribers",
            |w| w.rtp_forwarded,
        ),
        (
            "sfu_keyframe_requests_total",
            "counter",
            "Keyframe requests sent to publishers",
            |w| w.keyframe_requests,
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
        ("sfu_publish_sessions", "gauge", "Publisher sessions", |w| {
            w.publish_sessions
        }),
        (
            "sfu_subscribe_sessions",
            "gauge",
            "Subscriber sessions",
            |w| w.subscribe_sessions,
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
    out
}
