//! Node configuration: what an operator sets in the `[node]` table of the TOML file.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::io::IoBackend;

/// Configuration of one media node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The node's name in control's records, logs and metrics (1-64 characters of
    /// A-Z a-z 0-9 . _ -).
    pub id: NodeId,
    /// Worker threads; 0 = one per available core.
    pub workers: usize,
    /// UDP port of worker 0; worker `i` listens on `media_port_base + i`.
    pub media_port_base: u16,
    /// When the configured ports are taken, scan upward for a free block instead of failing.
    /// `control dev` turns this on so that several dev instances can run side by side.
    pub media_port_scan: bool,
    /// Address the media sockets bind to.
    pub media_bind: IpAddr,
    /// Address put in the ICE candidate of every answer (what clients send media to).
    pub advertise_ip: IpAddr,
    /// Pin worker `i` to the `i`-th CPU of the process's affinity mask.
    pub pin_workers: bool,
    /// Socket I/O backend.
    pub io_backend: IoBackend,
    /// Send runs of datagrams to one destination as one UDP GSO send (`UDP_SEGMENT`) where
    /// the kernel allows it; off = one datagram per send.
    pub udp_gso: bool,
    /// Capacity of each worker's inbound cross-worker ring, in messages.
    pub ring_capacity: usize,
    /// Sessions per worker before the node refuses new ones (503).
    pub max_sessions_per_worker: usize,
    /// A session that has not completed ICE within this many seconds is closed.
    pub connect_timeout_secs: u64,
    /// A session that has received no datagram at all within this many seconds is closed
    /// (a client starts ICE as soon as it has the answer; one that never does, or a flood of
    /// offers nobody follows up, should not hold a session for the whole connect timeout).
    pub first_contact_timeout_secs: u64,
    /// A connected session that receives nothing for this many seconds is closed.
    pub ice_timeout_secs: u64,
    /// REMB value sent to publishers that negotiated `goog-remb` (a ceiling; TWCC drives
    /// the actual estimate).
    pub publisher_remb_kbps: u64,
    /// A simulcast layer silent this long counts as stopped: subscribers on it move to the
    /// best layer still sending (and back up at a keyframe when it returns). Shorter reacts
    /// faster to a publisher dropping a layer; longer switches less on frame-rate dips.
    pub layer_timeout_ms: u64,
    /// Bandwidth allocation may pause a subscriber's video track when even its lowest layer
    /// does not fit the subscriber's estimated downlink (audio then keeps the link). Off, the
    /// estimate only chooses among simulcast layers and every video keeps its lowest layer.
    pub bandwidth_pause: bool,
    /// Subscriber sessions estimate their downlink (str0m's TWCC estimator) and the estimate
    /// chooses each video's simulcast layer. Off, every subscription gets its client's
    /// maximum layer, and the node spends about 14 % less CPU per forwarded packet
    /// (bench/RESULTS.md): for broadcasts whose viewers are known to have the bandwidth.
    pub bandwidth_estimation: bool,
    /// How long each subscriber's video packets are kept for resends (NACK). A resend only
    /// helps while the receiver still waits for it: a second covers a few attempts at 300 ms
    /// round trip. Payloads are shared with the publisher's packet; what each subscriber pays
    /// is about 0.6 KiB of bookkeeping per packet kept (str0m's own default keeps 3 s).
    pub rtx_cache_ms: u64,
    /// UDP port of the relay endpoint (QUIC links to other nodes for rooms that span nodes;
    /// docs/cascade.md), bound on `media_bind`. Unset: no relay endpoint (one node alone);
    /// `sfu run` uses 7402 unless told otherwise; 0 picks a free port.
    pub relay_port: Option<u16>,
    /// `sfu run` on SIGTERM: drain (control places no new rooms here) and wait this long for
    /// the sessions to end before stopping with the rest. A second signal stops at once.
    pub drain_timeout_secs: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: "local".parse().expect("a valid node id"),
            workers: 0,
            media_port_base: 50_000,
            media_port_scan: false,
            media_bind: IpAddr::from([127, 0, 0, 1]),
            advertise_ip: IpAddr::from([127, 0, 0, 1]),
            pin_workers: true,
            io_backend: IoBackend::Auto,
            udp_gso: true,
            ring_capacity: 8192,
            max_sessions_per_worker: 4096,
            connect_timeout_secs: 20,
            first_contact_timeout_secs: 5,
            ice_timeout_secs: 10,
            publisher_remb_kbps: 10_000,
            layer_timeout_ms: 500,
            bandwidth_pause: false,
            bandwidth_estimation: true,
            rtx_cache_ms: 1000,
            relay_port: None,
            drain_timeout_secs: 300,
        }
    }
}

/// A configuration value that cannot work, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: `{key}`: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl NodeConfig {
    /// Worker count after resolving 0 to the number of available cores.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            self.workers
        }
    }

    pub fn first_contact_timeout(&self) -> Duration {
        Duration::from_secs(self.first_contact_timeout_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    pub fn ice_timeout(&self) -> Duration {
        Duration::from_secs(self.ice_timeout_secs)
    }

    /// Check every value; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.to_string(),
            })
        };
        if self.worker_count() > 256 {
            return err("node.workers", "at most 256 workers");
        }
        let last = u32::from(self.media_port_base) + self.worker_count() as u32 - 1;
        if self.media_port_base == 0 || last > u32::from(u16::MAX) {
            return err(
                "node.media_port_base",
                "must be 1..=65535 with room for one port per worker",
            );
        }
        if self.advertise_ip.is_unspecified() {
            return err(
                "node.advertise_ip",
                "must be an address clients can reach, not 0.0.0.0 / ::",
            );
        }
        if self.ring_capacity < 64 {
            return err("node.ring_capacity", "must be at least 64");
        }
        if self.max_sessions_per_worker == 0 {
            return err("node.max_sessions_per_worker", "must be at least 1");
        }
        if self.connect_timeout_secs == 0 {
            return err("node.connect_timeout_secs", "must be at least 1");
        }
        if self.first_contact_timeout_secs == 0
            || self.first_contact_timeout_secs > self.connect_timeout_secs
        {
            return err(
                "node.first_contact_timeout_secs",
                "must be at least 1 and at most node.connect_timeout_secs",
            );
        }
        if self.ice_timeout_secs == 0 {
            return err("node.ice_timeout_secs", "must be at least 1");
        }
        if self.publisher_remb_kbps < 100 {
            return err("node.publisher_remb_kbps", "must be at least 100");
        }
        if !(50..=60_000).contains(&self.layer_timeout_ms) {
            return err("node.layer_timeout_ms", "must be 50..=60000");
        }
        if !(100..=10_000).contains(&self.rtx_cache_ms) {
            return err("node.rtx_cache_ms", "must be 100..=10000");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_timeouts_name_their_key() {
        NodeConfig::default()
            .validate()
            .expect("defaults are valid");
        let late_first_contact = NodeConfig {
            first_contact_timeout_secs: 30,
            ..NodeConfig::default()
        };
        let e = late_first_contact
            .validate()
            .expect_err("above the connect timeout");
        assert_eq!(e.key, "node.first_contact_timeout_secs");
        let zero = NodeConfig {
            connect_timeout_secs: 0,
            ..NodeConfig::default()
        };
        assert_eq!(
            zero.validate().expect_err("zero").key,
            "node.connect_timeout_secs"
        );
        for bad in [0, 49, 60_001] {
            let layer = NodeConfig {
                layer_timeout_ms: bad,
                ..NodeConfig::default()
            };
            assert_eq!(
                layer.validate().expect_err("out of range").key,
                "node.layer_timeout_ms"
            );
        }
        for bad in [0, 99, 10_001] {
            let cache = NodeConfig {
                rtx_cache_ms: bad,
                ..NodeConfig::default()
            };
            assert_eq!(
                cache.validate().expect_err("out of range").key,
                "node.rtx_cache_ms"
            );
        }
    }
}
