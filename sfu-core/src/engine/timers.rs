//! Session deadlines: when each session wants str0m's next timeout, and how the engine serves
//! those already due without ever looping on one instant.
//!
//! Two rules keep a worker out of an endless loop, whatever str0m answers:
//! - [`Timers::take_due`] hands out the deadlines due when it is called; a session re-armed at
//!   or before that instant while they are served waits for the next call, after the worker
//!   has done its I/O.
//! - [`DueTimeouts`] stops serving a session's deadline at an instant it has already served
//!   with nothing produced since. str0m ignores time that does not advance, and some of its
//!   deadlines are zero-length timers (its delay-based estimator re-arms `now + rtt` when it
//!   has no fresh feedback, and a loopback RTT can read as zero): serving them again on the
//!   same clock would spin. The session is re-armed [`DUE_SLACK`] later.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::PeerId;

/// Deadlines already due that one drain serves at once.
pub const DUE_TIMEOUTS_PER_DRAIN: usize = 64;
/// How far ahead of the loop's clock a drain serves a session's deadline. str0m's pacer asks
/// for a timeout 1 µs after the last one before it releases each paced packet (padding,
/// probes; forwarded media is unpaced and leaves without, str0m patch 13), and once more after
/// a run of unpaced ones; waiting for the clock to reach it would send them one per loop pass,
/// each alone (no GSO run).
pub const DUE_SLACK: Duration = Duration::from_millis(1);
/// Serves of one instant, beyond the first, with nothing produced between, before a deadline
/// counts as stalled. str0m's probe controller asks for a second timeout at the instant of the
/// first (about once per subscriber, measured); a third is a loop.
const SAME_INSTANT_REPEATS: u32 = 2;

/// The sessions' deadlines, earliest first. An entry is stale once its session was re-armed
/// or ended; the engine checks that against the session.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, PeerId)>>,
}

impl Timers {
    pub fn push(&mut self, at: Instant, peer: PeerId) {
        self.heap.push(Reverse((at, peer)));
    }

    /// The earliest entry.
    pub fn peek(&self) -> Option<(Instant, PeerId)> {
        self.heap.peek().map(|Reverse(entry)| *entry)
    }

    /// Remove the earliest entry.
    pub fn pop(&mut self) {
        self.heap.pop();
    }

    /// Move the entries due at `now` into `due` (earliest first). Entries pushed after this
    /// call are not among them, even if already due.
    pub fn take_due(&mut self, now: Instant, due: &mut Vec<(Instant, PeerId)>) {
        while let Some((at, peer)) = self.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            due.push((at, peer));
        }
    }
}

/// What a drain does with an `Output::Timeout(t)` of its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Feed str0m a timeout at this instant now, and keep draining.
    Serve(Instant),
    /// End the drain; the session's next deadline is this.
    Arm(Instant),
    /// As `Arm`, for a deadline that stalled: str0m asked again for an instant already served
    /// with nothing produced between.
    Stalled(Instant),
}

/// The due deadlines one drain of one session has served.
#[derive(Debug)]
pub struct DueTimeouts {
    now: Instant,
    served: usize,
    /// The instant last served while nothing has come out since, and how often again.
    last: Option<(Instant, u32)>,
}

impl DueTimeouts {
    /// A drain at `now` (the loop's clock).
    pub fn new(now: Instant) -> Self {
        Self {
            now,
            served: 0,
            last: None,
        }
    }

    /// The session answered `Output::Timeout(t)`.
    pub fn on_timeout(&mut self, t: Instant) -> Due {
        let now = self.now;
        if t > now + DUE_SLACK {
            return Due::Arm(t);
        }
        let at = t.max(now);
        let repeats = match self.last {
            Some((last, repeats)) if last == at => repeats + 1,
            _ => 0,
        };
        if repeats > SAME_INSTANT_REPEATS {
            return Due::Stalled(t.max(now + DUE_SLACK));
        }
        if self.served >= DUE_TIMEOUTS_PER_DRAIN {
            // Work left after the budget: `Timers::take_due` serves it on its next call.
            return Due::Arm(t);
        }
        self.served += 1;
        self.last = Some((at, repeats));
        Due::Serve(at)
    }

    /// The session produced something (a datagram or an event): it is moving.
    pub fn produced(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn origin() -> Instant {
        // Tests' only clock reading: the origin of simulated time.
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    /// A session whose str0m behaves as the delay-based estimator with a zero RTT and no fresh
    /// feedback: every timeout re-arms it at the instant it was fed, and time that does not
    /// advance is ignored.
    struct ZeroLengthTimer {
        clock: Instant,
        timeouts: usize,
    }

    impl ZeroLengthTimer {
        fn handle_timeout(&mut self, at: Instant) {
            self.timeouts += 1;
            self.clock = self.clock.max(at);
        }
        fn poll_timeout(&self) -> Instant {
            self.clock
        }
    }

    /// The engine's timer service, as `Engine::handle_timeout` and `drain_session` compose it,
    /// for sessions that produce nothing.
    fn serve(
        timers: &mut Timers,
        sessions: &mut [ZeroLengthTimer],
        deadlines: &mut [Option<Instant>],
        now: Instant,
    ) {
        let mut due = Vec::new();
        timers.take_due(now, &mut due);
        for (at, peer) in due {
            let i = peer.0 as usize;
            if deadlines[i] != Some(at) {
                continue;
            }
            deadlines[i] = None;
            sessions[i].handle_timeout(now);
            let mut drain = DueTimeouts::new(now);
            loop {
                match drain.on_timeout(sessions[i].poll_timeout()) {
                    Due::Serve(at) => sessions[i].handle_timeout(at),
                    Due::Arm(at) | Due::Stalled(at) => {
                        if deadlines[i] != Some(at) {
                            deadlines[i] = Some(at);
                            timers.push(at, peer);
                        }
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn a_zero_length_timer_is_served_a_few_times_per_slack_not_for_ever() {
        let t0 = origin();
        let mut timers = Timers::default();
        let mut sessions: Vec<ZeroLengthTimer> = (0..3)
            .map(|_| ZeroLengthTimer {
                clock: t0,
                timeouts: 0,
            })
            .collect();
        let mut deadlines: Vec<Option<Instant>> = vec![Some(t0); 3];
        for peer in 0..3 {
            timers.push(t0, PeerId(peer));
        }
        // One call at t0 ends (before the rules it never returned), and leaves every session
        // armed one slack later.
        serve(&mut timers, &mut sessions, &mut deadlines, t0);
        for (s, d) in sessions.iter().zip(&deadlines) {
            assert_eq!(s.timeouts, 1 + 1 + SAME_INSTANT_REPEATS as usize);
            assert_eq!(*d, Some(t0 + DUE_SLACK));
        }
        // Calling again on the same clock finds nothing due.
        serve(&mut timers, &mut sessions, &mut deadlines, t0);
        assert!(sessions.iter().all(|s| s.timeouts == 4));
        // A second of such a loop's clock, woken every 100 µs: a bounded number of serves.
        for step in 1..=10_000u32 {
            serve(
                &mut timers,
                &mut sessions,
                &mut deadlines,
                t0 + Duration::from_micros(100) * step,
            );
        }
        for s in &sessions {
            assert!(s.timeouts <= 4 * 1001, "{}", s.timeouts);
        }
    }

    #[test]
    fn entries_pushed_while_serving_wait_for_the_next_call() {
        let t0 = origin();
        let mut timers = Timers::default();
        timers.push(t0, PeerId(1));
        timers.push(t0 + Duration::from_millis(2), PeerId(2));
        let mut due = Vec::new();
        timers.take_due(t0 + Duration::from_millis(1), &mut due);
        assert_eq!(due, vec![(t0, PeerId(1))]);
        // Re-armed at an instant already due: not in this batch, first in the next.
        timers.push(t0, PeerId(1));
        assert_eq!(due.len(), 1);
        due.clear();
        timers.take_due(t0 + Duration::from_millis(1), &mut due);
        assert_eq!(due, vec![(t0, PeerId(1))]);
        assert_eq!(
            timers.peek(),
            Some((t0 + Duration::from_millis(2), PeerId(2)))
        );
    }

    #[test]
    fn pacer_timeouts_within_the_slack_are_served_each_once() {
        // str0m's pacer: a packet per timeout, each 1 µs after the last, with a datagram out
        // between two: all served in one drain, up to the budget.
        let now = origin();
        let mut drain = DueTimeouts::new(now);
        for k in 0..DUE_TIMEOUTS_PER_DRAIN as u64 {
            let t = now + Duration::from_micros(k);
            assert_eq!(drain.on_timeout(t), Due::Serve(t));
            drain.produced();
        }
        let t = now + Duration::from_micros(100);
        assert_eq!(drain.on_timeout(t), Due::Arm(t), "budget spent");
        let later = now + DUE_SLACK + Duration::from_micros(1);
        assert_eq!(DueTimeouts::new(now).on_timeout(later), Due::Arm(later));
        // A deadline in the past is served at the loop's clock.
        let past = now.checked_sub(Duration::from_millis(3)).unwrap_or(now);
        assert_eq!(DueTimeouts::new(now).on_timeout(past), Due::Serve(now));
    }

    #[test]
    fn a_second_timeout_at_the_same_instant_is_served_a_loop_is_not() {
        let now = origin();
        let mut drain = DueTimeouts::new(now);
        for _ in 0..=SAME_INSTANT_REPEATS {
            assert_eq!(drain.on_timeout(now), Due::Serve(now));
        }
        assert_eq!(drain.on_timeout(now), Due::Stalled(now + DUE_SLACK));
        // Output in between means progress: the same instant may be served again.
        let mut drain = DueTimeouts::new(now);
        for _ in 0..10 {
            assert_eq!(drain.on_timeout(now), Due::Serve(now));
            drain.produced();
        }
    }

    proptest! {
        /// Whatever str0m answers, a drain serves at most its budget, never more than
        /// 1 + SAME_INSTANT_REPEATS times in a row at one instant without output, never later
        /// than the slack, and every deadline it ends on is no earlier than asked (or, when
        /// stalled, at least one slack ahead).
        #[test]
        fn a_drain_is_bounded(answers in prop::collection::vec((0u64..3_000, any::<bool>()), 1..400)) {
            let now = origin() + Duration::from_millis(2);
            let mut drain = DueTimeouts::new(now);
            let mut served = 0;
            let mut run: Option<(Instant, u32)> = None;
            for (offset_us, produced) in answers {
                // Deadlines from 1 ms before the clock to 2 ms after it.
                let t = now - Duration::from_millis(1) + Duration::from_micros(offset_us);
                match drain.on_timeout(t) {
                    Due::Serve(at) => {
                        served += 1;
                        prop_assert!(served <= DUE_TIMEOUTS_PER_DRAIN);
                        prop_assert!(at >= now && at <= now + DUE_SLACK && at >= t);
                        let repeats = match run {
                            Some((last, r)) if last == at => r + 1,
                            _ => 0,
                        };
                        prop_assert!(repeats <= SAME_INSTANT_REPEATS);
                        run = Some((at, repeats));
                    }
                    Due::Arm(at) => {
                        prop_assert_eq!(at, t);
                        break;
                    }
                    Due::Stalled(at) => {
                        prop_assert!(at >= now + DUE_SLACK && at >= t);
                        break;
                    }
                }
                if produced {
                    drain.produced();
                    run = None;
                }
            }
        }
    }
}
