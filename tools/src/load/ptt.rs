//! Push-to-talk runs (`sfu-load --ptt`): the floor's timeline as the room signaling thread
//! drives it, and what every receiver checks against it.
//!
//! A talker may be heard from when it asks for the floor until the next talker is granted it.
//! The chair tells the nodes before it answers, so by the time the next grant arrives the node
//! has stopped forwarding the previous talker. A packet is judged by its own send time (the
//! test pattern carries it; generator and receivers share a clock): audio sent outside every
//! span of its talker, minus [`SLACK_US`] before a span for the transit to the node, reached a
//! listener although its talker did not hold the floor. That is a violation.
//!
//! The floor-change latency is measured at each receiver: from the moment the previous talker
//! released the floor to the first packet of the new holder, for changes once every room has
//! all its participants in (a room still joining measures its joins, not its floor).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// How long before asking for the floor a talker's packet may have been sent and still be
/// legitimately forwarded: its transit to the node (generous on a loaded machine).
pub const SLACK_US: u64 = 500_000;

/// The floor's timeline of a whole run, by publisher number (run-wide).
#[derive(Debug, Default)]
pub struct FloorTimeline {
    inner: RwLock<Inner>,
    /// When every room had all its participants in (0: not yet): latencies are measured for
    /// changes after it only.
    settled_us: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per talker: when it asked, and when the next holder was granted (open while it holds).
    spans: HashMap<u32, Vec<(u64, Option<u64>)>>,
    /// Per talker: when the floor passed to it (the previous holder's release).
    changes: HashMap<u32, Vec<u64>>,
    /// Changes of holder, all rooms.
    change_count: u64,
}

impl FloorTimeline {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Talker `publisher` asks for the floor at `at_us` (its span opens).
    pub fn asked(&self, publisher: u32, at_us: u64) {
        self.write()
            .spans
            .entry(publisher)
            .or_default()
            .push((at_us, None));
    }

    /// The floor passed to `publisher` when the previous holder released it at `released_us`
    /// (the latency origin); `previous`'s span closes at `granted_us`, when the grant arrived.
    pub fn passed(&self, publisher: u32, previous: Option<u32>, released_us: u64, granted_us: u64) {
        let mut inner = self.write();
        inner.change_count += 1;
        inner
            .changes
            .entry(publisher)
            .or_default()
            .push(released_us);
        if let Some(span) = previous
            .and_then(|p| inner.spans.get_mut(&p))
            .and_then(|spans| spans.last_mut())
        {
            span.1.get_or_insert(granted_us);
        }
    }

    /// Every room has all its participants in, at `at_us`.
    pub fn settled(&self, at_us: u64) {
        let _ =
            self.settled_us
                .compare_exchange(0, at_us.max(1), Ordering::AcqRel, Ordering::Acquire);
    }

    /// When every room had all its participants in, if they do.
    pub fn settled_at(&self) -> Option<u64> {
        let at = self.settled_us.load(Ordering::Acquire);
        (at != 0).then_some(at)
    }

    /// Changes of holder so far.
    pub fn changes(&self) -> u64 {
        self.read().change_count
    }

    /// Whether audio `publisher` sent at `sent_us` may have been forwarded.
    pub fn allowed(&self, publisher: u32, sent_us: u64) -> bool {
        self.read().spans.get(&publisher).is_some_and(|spans| {
            spans.iter().any(|&(from, until)| {
                sent_us + SLACK_US >= from && until.is_none_or(|u| sent_us <= u)
            })
        })
    }

    /// The latest change of the floor to `publisher` at or before `at_us`.
    pub fn last_change(&self, publisher: u32, at_us: u64) -> Option<u64> {
        self.read()
            .changes
            .get(&publisher)
            .and_then(|c| c.iter().rev().find(|&&t| t <= at_us).copied())
    }
}

/// What one receiver found: audio from holders, violations, and the floor-change latencies it
/// measured (µs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloorCheck {
    pub packets: u64,
    pub violations: u64,
    pub latencies_us: Vec<u64>,
    /// Per talker, the change whose latency was measured last.
    #[serde(skip)]
    measured: HashMap<u32, u64>,
    /// When this receiver's first audio arrived: only changes after it are measured (one
    /// before it would count the receiver's own join as latency).
    #[serde(skip)]
    first_us: Option<u64>,
}

impl FloorCheck {
    /// An audio packet of `publisher` sent at `sent_us` arrived at `arrival_us`.
    pub fn audio(
        &mut self,
        timeline: &FloorTimeline,
        publisher: u32,
        sent_us: u64,
        arrival_us: u64,
    ) {
        if !timeline.allowed(publisher, sent_us) {
            self.violations += 1;
            return;
        }
        self.packets += 1;
        let first = *self.first_us.get_or_insert(arrival_us);
        if let Some(change) = timeline.last_change(publisher, arrival_us) {
            let settled = timeline.settled_at().is_some_and(|at| change >= at);
            if settled && change > first && self.measured.get(&publisher) != Some(&change) {
                self.measured.insert(publisher, change);
                self.latencies_us.push(arrival_us.saturating_sub(change));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_talker_is_allowed_from_asking_to_the_next_grant_and_latency_counts_once_per_change() {
        let t = FloorTimeline::default();
        t.settled(500_000);
        t.asked(1, 1_000_000);
        t.passed(1, None, 1_000_000, 1_010_000);
        t.asked(2, 3_000_000);
        t.passed(2, Some(1), 3_000_000, 3_020_000);
        // Talker 1: from its request (less the slack) to talker 2's grant.
        assert!(t.allowed(1, 2_000_000));
        assert!(t.allowed(1, 600_000));
        assert!(!t.allowed(1, 400_000));
        assert!(t.allowed(1, 3_020_000));
        assert!(!t.allowed(1, 3_020_001));
        // Talker 2 holds; talker 3 never asked.
        assert!(t.allowed(2, 9_000_000));
        assert!(!t.allowed(3, 2_000_000));
        assert_eq!(t.changes(), 2);

        let mut check = FloorCheck::default();
        // Receiving since before the change to talker 2: its first packet after it counts.
        check.audio(&t, 1, 2_900_000, 2_910_000);
        check.audio(&t, 2, 3_010_000, 3_040_000);
        check.audio(&t, 2, 3_030_000, 3_060_000);
        check.audio(&t, 1, 5_000_000, 5_001_000);
        assert_eq!((check.packets, check.violations), (3, 1));
        assert_eq!(check.latencies_us, vec![40_000]);
        // A receiver that joined after the change measures nothing for it.
        let mut late = FloorCheck::default();
        late.audio(&t, 2, 4_000_000, 4_010_000);
        assert!(late.latencies_us.is_empty());
    }
}
