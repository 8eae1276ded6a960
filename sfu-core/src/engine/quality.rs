//! Connection quality of one session (`excellent`, `good`, `poor`, `lost`) as a sans-IO
//! scorer: str0m's periodic stats and the time go in, the quality comes out when it changes.
//! It runs once per stats event (every [`STATS_INTERVAL`](super::session::STATS_INTERVAL)) and
//! once per housekeeping pass of a session, never per packet, and never reads the clock.
//!
//! What counts depends on the direction media flows. A publisher is judged by the loss of what
//! it sends us (the receiver reports we make of its streams, and the transport-wide loss of
//! its TWCC sequence) and by the round trip when its client lets us measure one. A subscriber
//! is judged by the loss its client reports of what we send it (its receiver reports, and its
//! TWCC feedback) and by the round trip those reports give. Each stats interval's worst loss
//! and round trip go into exponential averages that follow a change for the worse quickly
//! ([`QualityConfig::attack`]) and a change for the better slowly ([`QualityConfig::release`]),
//! and the averages are held against each level's [`Limits`].
//!
//! Hysteresis keeps a connection near a limit from flapping between two levels: a downgrade is
//! reported at once, an upgrade only once the better level's limits have been met with a
//! margin ([`QualityConfig::upgrade_margin`]) for [`QualityConfig::hold`]. The first judgement
//! waits for the first measure (or, for a connection with nothing to measure, for the hold), so
//! that a connection is not called excellent for want of reports. A connected session whose
//! client has sent nothing for [`QualityConfig::lost_after`] is `lost` at once; so is one whose
//! connection went away ([`QualityScorer::lose`]).

use std::time::{Duration, Instant};

use sfu_proto::{Quality, SessionKind};
use str0m::stats::{MediaEgressStats, MediaIngressStats, PeerStats};

/// The most a level allows: a connection is at that level while both averages are below.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Fraction of packets lost (0.02: 2 %).
    pub loss: f64,
    pub rtt: Duration,
}

/// How the scorer judges; the defaults suit interactive audio and video.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityConfig {
    /// Below these, `excellent`: loss NACK repairs unnoticed, a round trip a conversation does
    /// not feel.
    pub excellent: Limits,
    /// Below these, `good`; above, `poor`: at 8 % loss repairs fall behind and video
    /// freezes, past 600 ms people talk over each other.
    pub good: Limits,
    /// Time constant of the averages while a measure gets worse: short, so that a
    /// connection that breaks down is reported within a stats interval or two.
    pub attack: Duration,
    /// Time constant while a measure gets better: longer, so that a good second between bad
    /// ones does not count as recovery.
    pub release: Duration,
    /// An upgrade needs the averages below the better level's limits times this (0.8: with
    /// 20 % to spare), so that a connection hovering at a limit stays at the lower level.
    pub upgrade_margin: f64,
    /// How long a better level must hold before it is reported.
    pub hold: Duration,
    /// A connected session whose client has sent nothing (media, RTCP, ICE checks) for this
    /// long is lost. An idle client still sends an ICE consent check every 4-6 s (RFC 7675;
    /// Chrome every 2.5 s), and the node's default `ice_timeout_secs` (10 s) ends the
    /// session later than this, so the room sees `lost` before the participant's connection
    /// is gone.
    pub lost_after: Duration,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            excellent: Limits {
                loss: 0.02,
                rtt: Duration::from_millis(300),
            },
            good: Limits {
                loss: 0.08,
                rtt: Duration::from_millis(600),
            },
            attack: Duration::from_millis(500),
            release: Duration::from_secs(2),
            upgrade_margin: 0.8,
            hold: Duration::from_secs(3),
            lost_after: Duration::from_secs(7),
        }
    }
}

/// What one stats event says about a connection; `None` where it says nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measure {
    /// Fraction of packets lost since the previous report (0-1).
    pub loss: Option<f32>,
    /// Round trip from RTCP reports (sender / receiver reports, XR).
    pub rtt: Option<Duration>,
    /// Round trip from TWCC feedback. It includes the time the client waits before sending
    /// feedback (up to ~100 ms), so it is used only in an interval no report measured one.
    pub feedback_rtt: Option<Duration>,
}

/// The worst of the measures of one stats interval, not yet averaged.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    /// A stats event arrived since the last fold (it may have measured nothing).
    seen: bool,
    loss: Option<f64>,
    rtt: Option<f64>,
    feedback_rtt: Option<f64>,
}

impl Window {
    fn add(&mut self, m: Measure) {
        self.seen = true;
        // A fraction outside 0-1 (or NaN) is not one: dropped, not clamped into a verdict.
        let loss = m.loss.map(f64::from).filter(|l| (0.0..=1.0).contains(l));
        self.loss = worst(self.loss, loss);
        self.rtt = worst(self.rtt, m.rtt.map(|d| d.as_secs_f64()));
        self.feedback_rtt = worst(self.feedback_rtt, m.feedback_rtt.map(|d| d.as_secs_f64()));
    }
}

fn worst(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The connection quality of one session.
#[derive(Debug)]
pub struct QualityScorer {
    config: QualityConfig,
    kind: SessionKind,
    window: Window,
    /// Averages of the loss fraction and of the round trip (seconds), once measured.
    loss: Option<f64>,
    rtt: Option<f64>,
    /// When the averages were last brought up to date; `None` until the first stats interval
    /// (since the session connected, or since it was lost).
    folded: Option<Instant>,
    /// When the first stats interval was folded (since the session connected, or since it was
    /// lost).
    first_folded: Option<Instant>,
    reported: Option<Quality>,
    /// A better level waiting out the hold: the worst level seen since it started, and when.
    upgrade: Option<(Quality, Instant)>,
    changed: bool,
    /// The best level the session may have whatever its averages say ([`Self::cap`]).
    cap: Quality,
}

impl QualityScorer {
    pub fn new(kind: SessionKind, config: QualityConfig) -> Self {
        Self {
            config,
            kind,
            window: Window::default(),
            loss: None,
            rtt: None,
            folded: None,
            first_folded: None,
            reported: None,
            upgrade: None,
            changed: false,
            cap: Quality::Excellent,
        }
    }

    /// The session is no better than `cap`, whatever its averages say: a subscriber whose video
    /// the node has paused for lack of bandwidth is `poor`, though what little it still
    /// receives gets through. Judged with the averages at the next [`Self::handle_timeout`],
    /// under the same rules (a lower cap at once, a raised one after the hold).
    pub fn cap(&mut self, cap: Quality) {
        self.cap = cap;
    }

    /// One stats event's measures, kept until the next [`handle_timeout`](Self::handle_timeout).
    pub fn observe(&mut self, measure: Measure) {
        self.window.add(measure);
    }

    /// str0m's connection-wide stats (TWCC): a publisher's loss is what we miss of its
    /// sequence, a subscriber's what its feedback says we lost; the round trip is of what we
    /// send, so only a subscriber's.
    pub fn observe_peer(&mut self, stats: &PeerStats) {
        let measure = match self.kind {
            SessionKind::Publish => Measure {
                loss: stats.ingress_loss_fraction,
                ..Measure::default()
            },
            SessionKind::Subscribe => Measure {
                loss: stats.egress_loss_fraction,
                feedback_rtt: stats.rtt,
                ..Measure::default()
            },
        };
        self.observe(measure);
    }

    /// One of a subscriber's outgoing streams, from its client's receiver reports.
    pub fn observe_egress(&mut self, stats: &MediaEgressStats) {
        if self.kind == SessionKind::Subscribe {
            self.observe(Measure {
                loss: stats.loss,
                rtt: stats.rtt,
                feedback_rtt: None,
            });
        }
    }

    /// One of a publisher's incoming streams, from our receiver reports of it.
    pub fn observe_ingress(&mut self, stats: &MediaIngressStats) {
        if self.kind == SessionKind::Publish {
            self.observe(Measure {
                loss: stats.loss,
                rtt: stats.rtt,
                feedback_rtt: None,
            });
        }
    }

    /// Time passed for a connected session whose client was last heard from at `last_input`:
    /// fold the measures since the last call into the averages and judge.
    pub fn handle_timeout(&mut self, now: Instant, last_input: Instant) {
        if now.saturating_duration_since(last_input) >= self.config.lost_after {
            // What str0m reports of a silent connection (the last report's loss, again) says
            // nothing new: it does not carry into the averages after the silence.
            self.lose();
            return;
        }
        if self.window.seen {
            self.fold(now);
        }
        if self.folded.is_some() {
            self.judge(now);
        }
    }

    /// The connection went away (ICE disconnected, or silence): `lost`, at once. What was
    /// measured before is forgotten; a connection that comes back starts afresh.
    pub fn lose(&mut self) {
        self.window = Window::default();
        self.loss = None;
        self.rtt = None;
        self.folded = None;
        self.first_folded = None;
        self.report(Quality::Lost);
    }

    /// The quality, when it changed since the last call (the first judgement included).
    pub fn poll_quality(&mut self) -> Option<Quality> {
        std::mem::take(&mut self.changed)
            .then_some(self.reported)
            .flatten()
    }

    /// The quality last reported, if any yet.
    pub fn quality(&self) -> Option<Quality> {
        self.reported
    }

    fn fold(&mut self, now: Instant) {
        let window = std::mem::take(&mut self.window);
        let dt = self
            .folded
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let config = self.config;
        self.loss = average(self.loss, window.loss, dt, &config);
        self.rtt = average(self.rtt, window.rtt.or(window.feedback_rtt), dt, &config);
        self.folded = Some(now);
        self.first_folded.get_or_insert(now);
    }

    fn judge(&mut self, now: Instant) {
        let measured = self.loss.is_some() || self.rtt.is_some();
        // Nothing measured (a subscriber with nothing to receive): nothing is wrong.
        let (loss, rtt) = (self.loss.unwrap_or(0.0), self.rtt.unwrap_or(0.0));
        let level = self.level(loss, rtt, 1.0).min(self.cap);
        let Some(reported) = self.reported else {
            // The first judgement waits for a measure, the first reports take a second or two
            // after connecting, or for the hold: a connection is not called excellent for
            // want of reports only to be called poor once they come.
            let waited = self
                .first_folded
                .is_some_and(|t| now.saturating_duration_since(t) >= self.config.hold);
            if measured || waited {
                self.report(level);
            }
            return;
        };
        if level < reported {
            self.report(level);
            return;
        }
        let better = self
            .level(loss, rtt, self.config.upgrade_margin)
            .min(self.cap);
        if better <= reported {
            self.upgrade = None;
            return;
        }
        let (waiting, since) = self.upgrade.get_or_insert((better, now));
        *waiting = (*waiting).min(better);
        if now.saturating_duration_since(*since) >= self.config.hold {
            let waiting = *waiting;
            self.report(waiting);
        }
    }

    /// The level the averages meet, with each limit scaled by `margin`.
    fn level(&self, loss: f64, rtt: f64, margin: f64) -> Quality {
        let meets = |l: Limits| loss < l.loss * margin && rtt < l.rtt.as_secs_f64() * margin;
        if meets(self.config.excellent) {
            Quality::Excellent
        } else if meets(self.config.good) {
            Quality::Good
        } else {
            Quality::Poor
        }
    }

    fn report(&mut self, quality: Quality) {
        self.upgrade = None;
        if self.reported != Some(quality) {
            self.reported = Some(quality);
            self.changed = true;
        }
    }
}

/// `average` moved toward `sample` over `dt`: quickly when the sample is worse (larger),
/// slowly when it is better. The first sample is taken as it is.
fn average(
    average: Option<f64>,
    sample: Option<f64>,
    dt: Duration,
    config: &QualityConfig,
) -> Option<f64> {
    let (a, s) = match (average, sample) {
        (a, None) => return a,
        (None, s) => return s,
        (Some(a), Some(s)) => (a, s),
    };
    let tau = if s > a { config.attack } else { config.release };
    let weight = 1.0 - (-dt.as_secs_f64() / tau.as_secs_f64().max(1e-3)).exp();
    Some(a + (s - a) * weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted connection on simulated time: one stats event and one housekeeping pass
    /// per simulated second, the client heard from until told otherwise.
    struct Script {
        scorer: QualityScorer,
        now: Instant,
        last_input: Instant,
        /// Every reported change, with the simulated second it came at.
        changes: Vec<(u64, Quality)>,
        secs: u64,
    }

    impl Script {
        fn new() -> Self {
            // The test's only clock reading: the origin of simulated time.
            #[allow(clippy::disallowed_methods)]
            let now = Instant::now();
            Self {
                scorer: QualityScorer::new(SessionKind::Subscribe, QualityConfig::default()),
                now,
                last_input: now,
                changes: Vec::new(),
                secs: 0,
            }
        }

        /// One second with this loss (percent) and round trip (ms) reported.
        fn second(&mut self, loss_percent: f32, rtt_ms: u64) {
            self.second_with(Measure {
                loss: Some(loss_percent / 100.0),
                rtt: Some(Duration::from_millis(rtt_ms)),
                feedback_rtt: None,
            });
        }

        fn second_with(&mut self, measure: Measure) {
            self.now += Duration::from_secs(1);
            self.secs += 1;
            self.last_input = self.now;
            self.scorer.observe(measure);
            self.tick();
        }

        /// One second in which nothing arrives from the client (str0m still reports).
        fn silent_second(&mut self) {
            self.now += Duration::from_secs(1);
            self.secs += 1;
            self.scorer.observe(Measure::default());
            self.tick();
        }

        fn tick(&mut self) {
            self.scorer.handle_timeout(self.now, self.last_input);
            if let Some(q) = self.scorer.poll_quality() {
                self.changes.push((self.secs, q));
            }
        }

        fn last(&self) -> Option<Quality> {
            self.changes.last().map(|(_, q)| *q)
        }
    }

    #[test]
    fn a_clean_connection_is_excellent_from_its_first_interval() {
        let mut s = Script::new();
        s.second(0.0, 20);
        assert_eq!(s.changes, [(1, Quality::Excellent)]);
        for _ in 0..30 {
            s.second(0.0, 20);
        }
        assert_eq!(s.changes.len(), 1, "nothing changes: {:?}", s.changes);
    }

    #[test]
    fn a_cap_lowers_at_once_and_is_lifted_only_after_the_hold() {
        let mut s = Script::new();
        s.second(0.0, 20);
        // Video paused for bandwidth: poor at once, though nothing is lost.
        s.scorer.cap(Quality::Poor);
        s.second(0.0, 20);
        assert_eq!(s.changes, [(1, Quality::Excellent), (2, Quality::Poor)]);
        // Resumed: back up only once the hold has passed.
        s.scorer.cap(Quality::Excellent);
        let hold = QualityConfig::default().hold.as_secs();
        for _ in 0..hold + 1 {
            s.second(0.0, 20);
        }
        assert_eq!(s.last(), Some(Quality::Excellent));
        let (at, _) = s.changes[2];
        assert!(at >= 2 + hold, "{:?}", s.changes);
    }

    #[test]
    fn a_connection_with_nothing_to_measure_is_excellent_after_the_hold() {
        // A subscriber alone in its room: stats events with no loss and no round trip. Its
        // first reports might still come: nothing is said until the hold ran.
        let hold = QualityConfig::default().hold.as_secs();
        let mut s = Script::new();
        for _ in 0..hold + 1 {
            s.second_with(Measure::default());
        }
        assert_eq!(s.changes, [(hold + 1, Quality::Excellent)]);
    }

    #[test]
    fn the_first_judgement_waits_for_the_first_measure() {
        // The first stats event comes before any receiver report: the first report decides.
        let mut s = Script::new();
        s.second_with(Measure::default());
        s.second(20.0, 30);
        assert_eq!(s.changes, [(2, Quality::Poor)]);
    }

    #[test]
    fn high_loss_is_poor_in_the_interval_it_is_reported() {
        let mut s = Script::new();
        for _ in 0..10 {
            s.second(0.0, 30);
        }
        s.second(20.0, 30);
        assert_eq!(s.changes, [(1, Quality::Excellent), (11, Quality::Poor)]);
    }

    #[test]
    fn a_long_round_trip_is_poor_even_without_loss() {
        let mut s = Script::new();
        s.second(0.0, 30);
        s.second(0.0, 900);
        assert_eq!(s.last(), Some(Quality::Poor));
    }

    #[test]
    fn poor_to_good_only_after_the_hold() {
        let hold = QualityConfig::default().hold.as_secs();
        let mut s = Script::new();
        for _ in 0..5 {
            s.second(20.0, 30);
        }
        assert_eq!(s.last(), Some(Quality::Poor));
        // The network heals to a good-but-not-excellent 3 %: the average comes down within a
        // few seconds, then the hold runs.
        let healed = s.secs;
        let mut good_at = None;
        for _ in 0..20 {
            s.second(3.0, 30);
            if good_at.is_none() && s.last() == Some(Quality::Good) {
                good_at = Some(s.secs);
            }
        }
        let good_at = good_at.expect("good within 20 s of healing");
        assert!(
            good_at >= healed + hold,
            "good only after the hold: healed at {healed}, good at {good_at}"
        );
        // Not reported before the averages had time to come down *and* the hold ran: the
        // first second that met the limits with the margin starts the hold.
        assert!(
            good_at <= healed + hold + 6,
            "good at {good_at}, healed at {healed}"
        );
        assert_eq!(s.changes.len(), 2, "no step in between: {:?}", s.changes);
        assert_eq!(s.changes.last(), Some(&(good_at, Quality::Good)));
    }

    #[test]
    fn an_upgrade_interrupted_by_a_bad_second_starts_its_hold_again() {
        let hold = QualityConfig::default().hold.as_secs();
        let mut s = Script::new();
        s.second(0.0, 30);
        s.second(5.0, 30);
        assert_eq!(s.last(), Some(Quality::Good));
        // Clean, but a bad burst before the hold ends: still good.
        for _ in 0..hold - 1 {
            s.second(0.0, 30);
        }
        s.second(4.0, 30);
        assert_eq!(s.last(), Some(Quality::Good));
        // Clean for long enough: excellent.
        for _ in 0..hold + 6 {
            s.second(0.0, 30);
        }
        assert_eq!(s.last(), Some(Quality::Excellent), "{:?}", s.changes);
    }

    #[test]
    fn noise_around_a_limit_does_not_flap() {
        // Loss alternating 1 % and 3 % around the 2 % limit of excellent, and then 7 % and
        // 9 % around the 8 % limit of good: one downgrade each, never back and forth.
        let mut s = Script::new();
        s.second(0.0, 30);
        for i in 0..60 {
            s.second(if i % 2 == 0 { 3.0 } else { 1.0 }, 30);
        }
        assert_eq!(
            s.changes,
            [(1, Quality::Excellent), (2, Quality::Good)],
            "one downgrade, no flapping"
        );
        for i in 0..60 {
            s.second(if i % 2 == 0 { 9.0 } else { 7.0 }, 30);
        }
        assert_eq!(s.changes.len(), 3, "{:?}", s.changes);
        assert_eq!(s.last(), Some(Quality::Poor));
        // Random-ish noise over the whole good range (2.5-7.5 %, slower swings): good stays.
        let mut s = Script::new();
        s.second(5.0, 100);
        let pattern = [2.5, 4.0, 7.5, 7.0, 3.0, 2.5, 2.6, 6.0, 7.4, 5.0, 3.3, 2.5];
        for i in 0..120 {
            s.second(pattern[i % pattern.len()], 100 + (i as u64 * 37) % 150);
        }
        assert_eq!(s.changes, [(1, Quality::Good)], "{:?}", s.changes);
    }

    #[test]
    fn round_trip_noise_around_a_limit_does_not_flap() {
        let mut s = Script::new();
        s.second(0.0, 100);
        for i in 0..60 {
            s.second(0.0, if i % 2 == 0 { 320 } else { 280 });
        }
        assert!(s.changes.len() <= 2, "{:?}", s.changes);
        assert_eq!(s.last(), Some(Quality::Good));
    }

    #[test]
    fn report_round_trips_are_preferred_to_feedback_ones() {
        let mut s = Script::new();
        // TWCC's round trip carries the client's feedback delay: ignored while a report
        // measures the round trip too.
        s.second_with(Measure {
            loss: Some(0.0),
            rtt: Some(Duration::from_millis(250)),
            feedback_rtt: Some(Duration::from_millis(350)),
        });
        assert_eq!(s.last(), Some(Quality::Excellent));
        // Without a report, the feedback round trip counts.
        s.second_with(Measure {
            loss: Some(0.0),
            rtt: None,
            feedback_rtt: Some(Duration::from_millis(700)),
        });
        assert_eq!(s.last(), Some(Quality::Poor));
    }

    #[test]
    fn the_worst_stream_of_an_interval_counts() {
        let mut s = Script::new();
        s.second(0.0, 30);
        // Audio clean, video losing 15 %: poor.
        s.scorer.observe(Measure {
            loss: Some(0.0),
            ..Measure::default()
        });
        s.second(15.0, 30);
        assert_eq!(s.last(), Some(Quality::Poor));
    }

    #[test]
    fn nonsense_loss_is_ignored() {
        let mut s = Script::new();
        s.second(0.0, 30);
        for loss in [f32::NAN, f32::INFINITY, -0.5, 7.0] {
            s.second_with(Measure {
                loss: Some(loss),
                rtt: Some(Duration::from_millis(30)),
                feedback_rtt: None,
            });
        }
        assert_eq!(s.changes, [(1, Quality::Excellent)]);
    }

    #[test]
    fn silence_is_lost_then_recovery_waits_for_the_hold() {
        let config = QualityConfig::default();
        let mut s = Script::new();
        for _ in 0..5 {
            s.second(0.0, 30);
        }
        let went_silent = s.secs;
        while s.last() != Some(Quality::Lost) {
            assert!(
                s.secs < went_silent + 30,
                "lost within 30 s: {:?}",
                s.changes
            );
            s.silent_second();
        }
        assert_eq!(
            s.secs,
            went_silent + config.lost_after.as_secs(),
            "lost once silent for lost_after"
        );
        // Still silent: no more reports.
        for _ in 0..5 {
            s.silent_second();
        }
        assert_eq!(s.changes.len(), 2);
        // The client is back: excellent again, but only after the hold.
        let back = s.secs;
        for _ in 0..config.hold.as_secs() + 2 {
            s.second(0.0, 30);
        }
        let (at, q) = *s.changes.last().expect("a change");
        assert_eq!(q, Quality::Excellent);
        assert!(
            at >= back + config.hold.as_secs(),
            "back at {back}, excellent at {at}"
        );
    }

    #[test]
    fn lose_reports_lost_once() {
        let mut s = Script::new();
        s.second(0.0, 30);
        s.scorer.lose();
        assert_eq!(s.scorer.poll_quality(), Some(Quality::Lost));
        s.scorer.lose();
        assert_eq!(s.scorer.poll_quality(), None);
    }

    #[test]
    fn nothing_is_reported_before_the_first_stats_interval() {
        let mut s = Script::new();
        s.now += Duration::from_millis(500);
        s.last_input = s.now;
        s.tick();
        assert!(s.changes.is_empty());
        assert_eq!(s.scorer.quality(), None);
    }

    #[test]
    fn a_publisher_ignores_egress_stats_and_a_subscriber_ingress_ones() {
        // The direction decides which stats speak for the session: built through the
        // str0m-facing methods with stats of the other direction, nothing is measured.
        let mut publisher = QualityScorer::new(SessionKind::Publish, QualityConfig::default());
        let mut subscriber = QualityScorer::new(SessionKind::Subscribe, QualityConfig::default());
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let egress = MediaEgressStats {
            mid: "0".into(),
            rid: None,
            bytes: 0,
            packets: 0,
            firs: 0,
            plis: 0,
            nacks: 0,
            rtt: None,
            loss: Some(0.5),
            timestamp: now,
            remote: None,
        };
        publisher.observe_egress(&egress);
        subscriber.observe_egress(&egress);
        let later = now + Duration::from_secs(1);
        publisher.handle_timeout(later, later);
        subscriber.handle_timeout(later, later);
        assert_eq!(publisher.poll_quality(), None, "nothing seen");
        assert_eq!(subscriber.poll_quality(), Some(Quality::Poor));
    }
}
