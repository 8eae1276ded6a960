use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::rtp_::Bitrate;

/// Time window for averaging estimate changes.
const ESTIMATE_WINDOW: Duration = Duration::from_secs(3);

type TimeBitrate = (Instant, Bitrate);

const TOLERANCE: f64 = 0.05;

/// Smooths BWE estimates by averaging over a time window.
///
/// SFU patch (third_party/str0m/PATCHES.md): the estimate can change at every timeout, so the
/// window may hold hundreds of entries while `record` runs at every timeout and `poll` for
/// every polled output. The sum of the window, its newest bitrate and its oldest time are kept
/// beside the entries: a call that changes nothing reads none of them, and `poll` does not
/// walk the window.
pub struct EstimateSmoother {
    estimates: VecDeque<TimeBitrate>,
    /// Sum of `estimates`' bitrates in bps.
    sum_bps: f64,
    /// The newest entry's bitrate.
    newest: Option<Bitrate>,
    /// The oldest entry's time.
    oldest_at: Option<Instant>,
    maybe_emit: bool,
    emitted: Option<Bitrate>,
}

impl EstimateSmoother {
    pub fn new() -> Self {
        Self {
            estimates: VecDeque::new(),
            sum_bps: 0.0,
            newest: None,
            oldest_at: None,
            maybe_emit: false,
            emitted: None,
        }
    }

    /// Record a new estimate and update the smoothed average.
    pub fn record(&mut self, now: Instant, estimate: Bitrate) {
        // Did value change from previous?
        let do_update = self.newest != Some(estimate);
        let mut resized = false;

        if do_update {
            self.maybe_emit = true;
            self.estimates.push_back((now, estimate));
            self.sum_bps += estimate.as_f64();
            self.newest = Some(estimate);
            self.oldest_at.get_or_insert(now);
            resized = true;
        }

        // Remove entries older than the window.
        while let Some(time) = self.oldest_at {
            if now.duration_since(time) > ESTIMATE_WINDOW {
                // Keep last entry
                if self.estimates.len() == 1 {
                    break;
                }

                self.maybe_emit = true;
                if let Some((_, gone)) = self.estimates.pop_front() {
                    self.sum_bps -= gone.as_f64();
                }
                self.oldest_at = self.estimates.front().map(|(t, _)| *t);
                resized = true;
            } else {
                break;
            }
        }

        // A lone entry is the sum: this drops the rounding the adds and subtracts gathered, so
        // the value forced out when estimates stop coming is that entry exactly.
        if resized && self.estimates.len() == 1 {
            self.sum_bps = estimate.as_f64();
        }
    }

    /// Poll for an estimate to emit. Returns Some only when there's a new value to emit.
    pub fn poll(&mut self) -> Option<Bitrate> {
        if !self.maybe_emit {
            return None;
        }

        if self.estimates.is_empty() {
            return None;
        }

        let avg = self.sum_bps / self.estimates.len() as f64;
        let rate: Bitrate = avg.into();

        // This forces emitting if we have the first ever value, or a last
        // where the rest of the window is gone (estimates stop coming).
        let force = self.estimates.len() == 1 && self.emitted != Some(rate);

        // Emit if we deviate enough from previously emitted.
        let deviate = if let Some(emitted) = self.emitted {
            !in_tolerance(emitted, rate)
        } else {
            true
        };

        self.maybe_emit = false;

        // Are we not to emit?
        if !force && !deviate {
            return None;
        }

        self.emitted = Some(rate);
        Some(rate)
    }
}

fn in_tolerance(b1: Bitrate, b2: Bitrate) -> bool {
    let min = b1 * (1.0 - TOLERANCE);
    let max = b1 * (1.0 + TOLERANCE);
    b2 > min && b2 < max
}

#[cfg(test)]
mod test {
    use super::*;

    /// The window's sum and average as `poll` computed them before the running sum, after
    /// checking the copies kept beside the window.
    fn window_sum_and_average(smoother: &EstimateSmoother) -> (f64, Bitrate) {
        assert_eq!(smoother.newest, smoother.estimates.back().map(|(_, b)| *b));
        assert_eq!(
            smoother.oldest_at,
            smoother.estimates.front().map(|(t, _)| *t)
        );
        let total: f64 = smoother.estimates.iter().map(|b| b.1.as_f64()).sum();
        (total, (total / smoother.estimates.len() as f64).into())
    }

    #[test]
    fn running_sum_averages_the_window() {
        let start = Instant::now();
        let mut smoother = EstimateSmoother::new();
        let mut emitted = 0;
        // An estimate changing at every 4 ms timeout for 10 s, then steady for 3.6 s: the
        // window fills to hundreds of entries, slides, and shrinks to one. Whole bps keep the
        // sums exact.
        for i in 0..3_400_u64 {
            let now = start + Duration::from_millis(4 * i);
            let bps = if i < 2_500 {
                300_000 + (i * 7_919) % 250_000
            } else {
                420_000
            };
            smoother.record(now, Bitrate::from(bps as f64));
            let (sum, expected) = window_sum_and_average(&smoother);
            assert_eq!(smoother.sum_bps, sum);
            if let Some(rate) = smoother.poll() {
                assert_eq!(rate, expected);
                emitted += 1;
            }
        }
        assert_eq!(smoother.estimates.len(), 1);
        assert!(emitted > 10, "estimates emitted: {emitted}");
        assert_eq!(smoother.poll(), None);
    }

    #[test]
    fn a_lone_entry_is_emitted_exactly() {
        let start = Instant::now();
        let mut smoother = EstimateSmoother::new();
        for (i, bps) in [1_000_000.3, 2_000_000.7, 1_500_000.1]
            .into_iter()
            .enumerate()
        {
            smoother.record(start + Duration::from_millis(i as u64), Bitrate::from(bps));
        }
        smoother.poll();
        // Four seconds on, only the last estimate is left in the window.
        smoother.record(start + Duration::from_secs(4), Bitrate::from(1_500_000.1));
        assert_eq!(smoother.estimates.len(), 1);
        assert_eq!(smoother.poll(), Some(Bitrate::from(1_500_000.1)));
    }
}
