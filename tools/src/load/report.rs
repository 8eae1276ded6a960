//! `report.json`: everything a load run measured, in a stable, versioned shape that
//! `sfu-report` renders and compares. All times are relative to the start of the run unless a
//! field name says otherwise; latencies are in microseconds, join times in milliseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::room::RoomSignalingStats;
use super::scenario::Scenario;

/// Bumped when a field changes meaning or is removed (adding fields does not bump it).
/// Version 2 replaced `verdict.passed` with `verdict.outcome`.
pub const REPORT_VERSION: u32 = 2;

/// The oldest version this build still reads (a version-1 `passed` becomes an outcome).
pub const OLDEST_READABLE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    /// `sfu-load <version>`.
    pub tool: String,
    /// Legend for comparisons: `--label`, or protocol and URL.
    pub label: String,
    pub started_at_unix_ms: u64,
    /// Wall time of the whole run (ramp-up, measurement, teardown), seconds.
    pub elapsed_s: f64,
    pub scenario: Scenario,
    pub peers: PeerCounts,
    pub join_ms: JoinTimes,
    pub latency_us: Latency,
    /// Fan-out spread: per sampled publisher packet, its last subscriber's arrival minus its
    /// first's (every 4th packet; those at least two subscribers got).
    #[serde(default)]
    pub fanout_spread_us: Latency,
    pub packets: Packets,
    pub jitter_ms: Jitter,
    /// Peers per media node their (latest) session landed on, as the server named it
    /// (`X-Sfu-Node`); empty when it named none.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodePeers>,
    /// Peers whose session came without a node name (another server, Janus).
    #[serde(default)]
    pub node_unknown: NodePeers,
    /// `latency_us` of the packets whose publisher is on the subscriber's node. `None` (null)
    /// when no node was named: nothing is split.
    #[serde(default)]
    pub latency_local_us: Option<Latency>,
    /// `latency_us` of the packets relayed from the publisher's node to another.
    #[serde(default)]
    pub latency_relayed_us: Option<Latency>,
    /// Loss of the packets that came locally; `None` (null) when nothing is split.
    #[serde(default)]
    pub packets_local: Option<PathPackets>,
    /// Loss of the packets that came over a relay.
    #[serde(default)]
    pub packets_relayed: Option<PathPackets>,
    /// The server process (`--server-pid`), if one was given.
    pub server: Option<ProcessUsage>,
    /// The generator itself, to show it was not the bottleneck.
    pub generator: ProcessUsage,
    /// One entry per second of the run.
    pub timeline: Vec<Tick>,
    /// Room protocol runs: participants, the streams they received, their join times;
    /// `None` (null) for the other protocols.
    #[serde(default)]
    pub room: Option<RoomFigures>,
    pub verdict: Verdict,
}

/// What the participants of a room run (`--protocol room`) got. A participant is expected to
/// receive every other participant of its room's audio and video (as the media model has
/// them): a *stream* is one such remote track, counted once it delivered an intact packet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoomFigures {
    /// Participants planned, all rooms together.
    pub participants: u64,
    /// Participants whose publisher and subscriber connections both came up.
    pub participants_connected: u64,
    /// Participants that received every stream expected of them.
    pub participants_complete: u64,
    /// Participants with a connection that failed before it ever came up.
    pub failed_joins: u64,
    /// `rooms × N × (N − 1) × kinds`.
    pub streams_expected: u64,
    /// Streams that delivered media, summed over participants (at most the expected per
    /// participant each).
    pub streams_received: u64,
    /// Streams each participant should receive: `(N − 1) × kinds`.
    pub streams_per_participant: u64,
    /// The fewest streams any participant received (0 when one never got its subscriber
    /// connection).
    pub min_streams_per_participant: u64,
    /// Join time of the participants that completed: from the start of the WebSocket connect
    /// until both its publisher connection was up (DTLS) and its subscriber connection had
    /// the first packet of every expected stream.
    pub join_ms: JoinTimes,
    /// What the WebSocket signaling saw.
    pub signaling: RoomSignalingStats,
    /// Per participant, in plan order.
    pub per_participant: Vec<ParticipantFigures>,
    /// Push-to-talk runs: the floor's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptt: Option<PttFigures>,
}

/// A push-to-talk run's floor (docs/push-to-talk.md; `sfu-load --ptt`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PttFigures {
    pub talkers: u32,
    pub floor_change_s: f64,
    /// Times the floor changed hands, all rooms.
    pub changes: u64,
    /// Audio packets listeners received from the talker holding the floor.
    pub packets: u64,
    /// Audio packets listeners received from a talker not holding the floor: must be 0.
    pub violations: u64,
    /// From the previous talker's release to a listener's first packet of the new holder,
    /// over all listeners and changes, ms.
    pub change_ms: Option<PttLatency>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PttLatency {
    pub measured: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl PttFigures {
    pub fn from_checks(
        plan: &crate::load::scenario::PttPlan,
        changes: u64,
        checks: &[crate::load::ptt::FloorCheck],
    ) -> Self {
        let mut latencies: Vec<u64> = checks
            .iter()
            .flat_map(|c| c.latencies_us.iter().copied())
            .collect();
        latencies.sort_unstable();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies[i.min(latencies.len() - 1)] as f64 / 1000.0
        };
        let change_ms = (!latencies.is_empty()).then(|| PttLatency {
            measured: latencies.len() as u64,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        });
        Self {
            talkers: plan.talkers,
            floor_change_s: plan.floor_change_s,
            changes,
            packets: checks.iter().map(|c| c.packets).sum(),
            violations: checks.iter().map(|c| c.violations).sum(),
            change_ms,
        }
    }
}

/// One participant of a room run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParticipantFigures {
    /// Room index.
    pub room: u32,
    pub identity: String,
    /// Remote tracks that delivered media to it.
    pub streams: u64,
    /// Its join time (see [`RoomFigures::join_ms`]); `None` (null) if it never completed.
    pub join_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerCounts {
    /// Peers the scenario asked for (publishers + subscribers, over all rooms).
    pub planned: u64,
    /// Peers that reached connected media at least once.
    pub connected: u64,
    pub publishers_connected: u64,
    pub subscribers_connected: u64,
    /// Peers that never connected, or lost their connection, counted once each.
    pub failed: u64,
    /// Failures by [`PeerFailure::reason`](super::PeerFailure::reason).
    pub failures: BTreeMap<String, u64>,
    /// Subscribers that left and rejoined (churn).
    pub rejoins: u64,
}

/// Time from the signaling POST to the first media packet, per peer that received media
/// (subscribers) or connected (publishers: POST to DTLS up).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinTimes {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    /// Histogram buckets: `(upper bound ms, peers)`, ascending, last bound is `max`.
    pub histogram: Vec<(f64, u64)>,
}

/// One-way latency, publisher send to subscriber receive, same host clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// CDF points: `(percentile 0..=100, latency µs)`, ascending.
    pub cdf: Vec<(f64, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Packets {
    /// Media packets all publishers sent.
    pub sent: u64,
    /// Media packets subscribers received (excluding duplicates).
    pub received: u64,
    /// Packets subscribers should have received: for each subscriber and stream, the span of
    /// sequence numbers between its first and last received packet.
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Packets that arrived after a later one of the same stream.
    pub reordered: u64,
    /// Payloads that did not decode as the test pattern.
    pub corrupt: u64,
    pub loss_pct: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Peers whose latest session one media node serves, connected or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePeers {
    pub publishers: u64,
    pub subscribers: u64,
    /// Of those, peers that failed (ICE, DTLS, no media, disconnected) and were not retried.
    pub failed: u64,
}

/// What subscribers received over one path (local or relayed): counted like [`Packets`], for
/// the packets whose path is known.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathPackets {
    /// Subscribers placed on the node of at least one publisher of their room (local), or on
    /// another node than at least one (relayed).
    pub subscribers: u64,
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub loss_pct: f64,
}

/// RFC 3550 interarrival jitter, over all received streams.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Jitter {
    pub mean: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    pub pid: u32,
    /// CPU in percent of one core (200 = two cores busy).
    pub cpu_pct_mean: f64,
    pub cpu_pct_max: f64,
    pub rss_mb_max: f64,
    pub samples: Vec<ProcessSample>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSample {
    /// Seconds since the start of the run.
    pub t_s: f64,
    pub cpu_pct: f64,
    pub rss_mb: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// Seconds since the start of the run (end of this one-second interval).
    pub t_s: f64,
    pub peers_connected: u64,
    /// Media packets publishers sent in this second.
    pub pps_out: u64,
    /// Media packets subscribers received in this second.
    pub pps_in: u64,
    /// p99 latency of the packets received in this second, µs (0 when none).
    pub p99_us: u64,
    /// Loss detected in this second, percent of expected.
    pub loss_pct: f64,
    pub joins: u64,
    pub failures: u64,
}

/// What the run's pass criteria say about it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "VerdictFields")]
pub struct Verdict {
    pub outcome: Outcome,
    /// One line per missed criterion, e.g. `loss 2.10% > max 1.00%`.
    pub failures: Vec<String>,
}

impl Verdict {
    /// Criteria were given and all were met.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Pass
    }

    /// A criterion was missed, or no peer connected at all.
    pub fn failed(&self) -> bool {
        self.outcome == Outcome::Fail
    }
}

/// `pass`, `fail`, or `none` when no criterion was given (there was nothing to pass).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    #[default]
    None,
}

/// A verdict as either version writes it: `outcome` (2), or `passed` (1).
#[derive(Deserialize)]
struct VerdictFields {
    outcome: Option<Outcome>,
    passed: Option<bool>,
    #[serde(default)]
    failures: Vec<String>,
}

impl From<VerdictFields> for Verdict {
    fn from(v: VerdictFields) -> Self {
        let outcome = v.outcome.unwrap_or(match v.passed {
            Some(true) => Outcome::Pass,
            Some(false) => Outcome::Fail,
            None => Outcome::None,
        });
        Self {
            outcome,
            failures: v.failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_of_both_versions_parse() {
        let parse = |json: &str| serde_json::from_str::<Verdict>(json).expect("a verdict parses");
        assert_eq!(
            parse(r#"{"passed": true, "failures": []}"#).outcome,
            Outcome::Pass
        );
        assert_eq!(
            parse(r#"{"passed": false, "failures": ["x"]}"#).outcome,
            Outcome::Fail
        );
        assert_eq!(
            parse(r#"{"outcome": "none", "failures": []}"#).outcome,
            Outcome::None
        );
        let fail = Verdict {
            outcome: Outcome::Fail,
            failures: vec!["loss 2.10% > max 1.00%".into()],
        };
        let json = serde_json::to_string(&fail).expect("serializes");
        assert_eq!(
            json,
            r#"{"outcome":"fail","failures":["loss 2.10% > max 1.00%"]}"#
        );
        assert_eq!(parse(&json), fail);
    }
}
