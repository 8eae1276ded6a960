//! Bandwidth allocation for one subscriber session, as a sans-IO state machine: the session's
//! bandwidth estimate, its subscriptions and what each layer of the tracks they follow costs
//! go in (with the time); out comes, per video subscription, the highest layer it may be sent
//! (never above the client's maximum) or a pause, plus the bitrates to tell the estimator.
//!
//! Audio is reserved first and never paused. Video is then served in order, the room's active
//! speakers first (loudest first), the others after in slot order: every track gets its lowest
//! layer while the budget lasts (one that does not fit is paused, so it cannot starve audio),
//! then, in the same order, each track is raised to the highest layer that fits.
//!
//! Hysteresis: a track goes down as soon as its layer no longer fits; it is paused only when
//! not even its lowest layer has fitted for [`PAUSE_AFTER`] (a delay-based estimate dips for
//! a moment when the path, or the node itself, queues briefly, and a picture that stops costs
//! more than a lowest layer over budget for a second); it goes up (or resumes) only after the
//! higher layer has fitted with [`UP_MARGIN`] to spare for [`UP_HOLD`] without interruption.
//! The forwarder still switches only at keyframes.
//!
//! Start-up: the first estimate is str0m's starting guess, and the first seconds of feedback
//! are its ramp from there; a track that starts flowing later (a participant who joins, media
//! that reaches this node over a relay link some seconds after the subscriber connected) meets
//! an estimate that has never carried it. So a track is not paused during its first
//! [`STARTUP`] on a subscription, counted from the first allocation that could measure it: it
//! keeps at least its lowest layer, since a picture that would come back only after a resume's
//! hold is worse than a lowest layer briefly over a budget the estimator has not tested.

use std::time::{Duration, Instant};

use sfu_proto::{Layer, MediaKind, TrackId};

/// Headroom an upgrade needs: the new layer's cost times `1 + UP_MARGIN` must fit.
pub const UP_MARGIN: f64 = 0.25;
/// How long an upgrade must keep fitting (with the margin) before it is made.
pub const UP_HOLD: Duration = Duration::from_secs(2);
/// The desired bitrate told to the estimator is what every subscription at its client
/// maximum would use times this: str0m probes up to about the desired bitrate, and an estimate
/// that stops right at a layer's cost would take it down at the next keyframe burst.
pub const PROBE_HEADROOM: f64 = 2.0;
/// How long a track followed by a subscription is not paused, from the first allocation
/// that could measure it.
pub const STARTUP: Duration = Duration::from_secs(4);
/// How long a track's lowest layer must have not fitted before the track is paused.
pub const PAUSE_AFTER: Duration = Duration::from_secs(2);
/// A track already sending keeps its lowest layer while the estimate left for it covers this
/// fraction of the layer's cost. A delay-based estimate of a link that carries the layer reads
/// below what it carries (str0m backs off to 0.85 of the acknowledged rate at each sign of
/// queueing, and two back-offs close together leave 0.72), and a pause is the most visible
/// change allocation makes; a real shortfall brings loss, and the loss-based estimate soon
/// falls well below this.
pub const KEEP_FRACTION: f64 = 0.6;
/// Cost assumed for an audio track whose rate is unknown (Opus speech plus headers).
const DEFAULT_AUDIO_BPS: u64 = super::room::UNMEASURED_AUDIO_BPS;

/// What one subscriber track (slot) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub kind: MediaKind,
    /// The published track the slot follows now; `None`: nothing to send (unsubscribed,
    /// paused by the client, or the track is silent).
    pub track: Option<TrackId>,
    /// The client's maximum layer.
    pub max_layer: Layer,
    /// Place of the track's participant in the room's speaker list (0: loudest).
    pub speaker: Option<usize>,
    /// Bits per second of each layer of the track; `None` for a layer not sending (or not
    /// measured yet), which cannot be chosen.
    pub rates: [Option<u64>; Layer::COUNT],
}

/// What a slot may be sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Grant {
    /// No allocation yet (no estimate, or nothing measured): the client's subscription alone
    /// decides, as without bandwidth estimation.
    #[default]
    Open,
    /// At most this layer.
    Layer(Layer),
    /// Nothing: not even the lowest layer fits.
    Paused,
}

/// One slot's allocation state.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    grant: Grant,
    /// The track the grant is for: following another one starts afresh.
    track: Option<TrackId>,
    /// Since when the upgrade on offer has fitted with the margin.
    up_since: Option<Instant>,
    /// The first allocation that measured the track (its start-up began).
    measured_since: Option<Instant>,
    /// Since when its lowest layer has not fitted (while it is not paused).
    short_since: Option<Instant>,
}

/// How an allocator behaves: [`Policy::default`] is [`STARTUP`], [`PAUSE_AFTER`] and no pausing.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How long a newly measured track is not paused.
    pub startup: Duration,
    /// How long a track's lowest layer must not fit before it is paused.
    pub pause_after: Duration,
    /// Whether a video track may be paused at all when its lowest layer does not fit
    /// (`node.bandwidth_pause`). Off, every followed track keeps at least its lowest layer and
    /// only the choice among simulcast layers follows the estimate.
    pub allow_pause: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            startup: STARTUP,
            pause_after: PAUSE_AFTER,
            allow_pause: false,
        }
    }
}

/// The outcome of one [`Allocator::allocate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Slots whose grant changed, with the new grant.
    pub changed: Vec<(usize, Grant)>,
    /// Of those, changes from one layer (or pause) to another: caused by bandwidth.
    pub switches: u32,
    /// Video slots paused for bandwidth after this allocation.
    pub paused: u32,
    /// What every subscription at its client maximum would use, times [`PROBE_HEADROOM`]:
    /// what the estimator should probe toward; while a track is paused, only what resuming
    /// it needs.
    pub desired_bps: u64,
    /// What the next upgrade would need (with its margin), when one is possible and no track
    /// is paused: the rate to sustain (padding fills the gap) so the estimate can grow into
    /// it. 0 when nothing is waiting for bandwidth, or a track is paused.
    pub minimum_bps: u64,
}

/// A subscriber session's allocator.
#[derive(Debug, Default)]
pub struct Allocator {
    slots: Vec<Slot>,
    policy: Policy,
}

impl Allocator {
    pub fn new(policy: Policy) -> Self {
        Self {
            slots: Vec::new(),
            policy,
        }
    }

    /// The slot's current grant.
    pub fn grant(&self, slot: usize) -> Grant {
        self.slots.get(slot).map_or(Grant::Open, |s| s.grant)
    }

    /// Share `estimate_bps` among `demands` (indexed by slot) at `now`.
    pub fn allocate(&mut self, estimate_bps: u64, demands: &[Demand], now: Instant) -> Allocation {
        if self.slots.len() < demands.len() {
            self.slots.resize(demands.len(), Slot::default());
        }
        let mut audio: u64 = 0;
        for (slot, d) in self.slots.iter_mut().zip(demands) {
            if slot.track != d.track {
                *slot = Slot {
                    track: d.track,
                    ..Slot::default()
                };
            }
            if d.kind == MediaKind::Audio && d.track.is_some() {
                audio += d.rates[0].unwrap_or(DEFAULT_AUDIO_BPS);
            }
        }
        let mut budget = estimate_bps as i64 - audio as i64;

        // Video that can be allocated (following a track with a measured layer), speakers
        // first.
        let mut order: Vec<usize> = (0..demands.len())
            .filter(|&i| demands[i].kind == MediaKind::Video && lowest(&demands[i]).is_some())
            .collect();
        order.sort_by_key(|&i| (demands[i].speaker.unwrap_or(usize::MAX), i));
        for &i in &order {
            self.slots[i].measured_since.get_or_insert(now);
        }
        let desired = audio
            + order
                .iter()
                .filter_map(|&i| highest(&demands[i], u64::MAX))
                .map(|(_, cost)| cost)
                .sum::<u64>();

        // Pass 1: the lowest layer for each, in order; resuming a paused track is an upgrade.
        let mut chosen: Vec<Option<(Layer, u64)>> = vec![None; demands.len()];
        for &i in &order {
            let Some((low, cost)) = lowest(&demands[i]) else {
                continue;
            };
            let slot = &mut self.slots[i];
            let take = match slot.grant {
                Grant::Paused => held(slot, margin(cost) as i64 <= budget, now),
                _ if keep(cost) as i64 <= budget => {
                    slot.short_since = None;
                    true
                }
                _ if !self.policy.allow_pause => true,
                _ => {
                    let short = *slot.short_since.get_or_insert(now);
                    let started = slot.measured_since.unwrap_or(now);
                    now.saturating_duration_since(started) < self.policy.startup
                        || now.saturating_duration_since(short) < self.policy.pause_after
                }
            };
            if take {
                budget -= cost as i64;
                chosen[i] = Some((low, cost));
            }
        }

        // Pass 2: raise each, in order, as far as fits. The first step up still waiting for
        // bandwidth is what the estimator is asked to sustain.
        let mut step = None;
        for &i in &order {
            let d = &demands[i];
            let Some((low, low_cost)) = chosen[i] else {
                if let Some((_, cost)) = lowest(d) {
                    step.get_or_insert(margin(cost));
                }
                continue;
            };
            let room = budget + low_cost as i64;
            let fit = highest(d, room.max(0) as u64).unwrap_or((low, low_cost));
            let slot = &mut self.slots[i];
            let (layer, cost) = match slot.grant {
                Grant::Layer(previous) => {
                    // What the grant sends now: its layer, or the best one below it while
                    // its own is silent (a publisher short of bandwidth stops its top layer
                    // for a while; the grant stays, so the track is back on it at once).
                    let sending = highest_at_most(d, previous).unwrap_or((low, low_cost));
                    let up = highest_with_margin(d, room).filter(|(l, _)| *l > previous);
                    if fit.0 < sending.0 {
                        slot.up_since = None;
                        fit
                    } else if up.is_some() && held(slot, true, now) {
                        up.unwrap_or(fit)
                    } else {
                        if up.is_none() {
                            slot.up_since = None;
                        }
                        (previous, sending.1)
                    }
                }
                // A fresh slot starts where it fits; a resumed one at its lowest layer.
                Grant::Open => fit,
                Grant::Paused => (low, low_cost),
            };
            budget -= cost as i64 - low_cost as i64;
            chosen[i] = Some((layer, cost));
            if let Some((_, up_cost)) = next_up(d, layer) {
                step.get_or_insert(margin(up_cost).saturating_sub(cost));
            }
        }

        let used = audio + chosen.iter().flatten().map(|(_, cost)| cost).sum::<u64>();
        let desired = (desired as f64 * PROBE_HEADROOM) as u64;
        // Padding toward the next step only while every track is sending: a paused track's
        // step is its whole lowest layer, which str0m would pad out at the full estimate in
        // small packets (hundreds a second per subscriber), and on a saturated node that is
        // what pauses tracks in the first place. A paused track comes back through probes.
        // Probes, too, aim only at resuming while a track is paused: str0m probes in short
        // bursts at up to twice the desired rate, and a burst aimed at every layer would
        // overflow the very link that paused the track, taking audio with it.
        let any_paused = order.iter().any(|&i| chosen[i].is_none());
        let mut allocation = Allocation {
            desired_bps: match step {
                Some(step) if any_paused => (used + step).min(desired),
                _ => desired,
            },
            minimum_bps: match step {
                Some(step) if !any_paused => (used + step).min(desired),
                _ => 0,
            },
            ..Allocation::default()
        };
        for &i in &order {
            let grant = chosen[i].map_or(Grant::Paused, |(layer, _)| Grant::Layer(layer));
            allocation.paused += u32::from(grant == Grant::Paused);
            let slot = &mut self.slots[i];
            if grant != slot.grant {
                allocation.switches += u32::from(slot.grant != Grant::Open);
                slot.grant = grant;
                slot.up_since = None;
                slot.short_since = None;
                allocation.changed.push((i, grant));
            }
        }
        // Slots left out (audio, nothing to follow, not measured) are not limited.
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.grant != Grant::Open && !order.contains(&i) {
                *slot = Slot {
                    track: slot.track,
                    ..Slot::default()
                };
                allocation.changed.push((i, Grant::Open));
            }
        }
        allocation
    }
}

/// Whether an upgrade on offer (`up`) has been on offer for [`UP_HOLD`]; starts or stops the
/// slot's clock.
fn held(slot: &mut Slot, up: bool, now: Instant) -> bool {
    if !up {
        slot.up_since = None;
        return false;
    }
    let since = *slot.up_since.get_or_insert(now);
    now.saturating_duration_since(since) >= UP_HOLD
}

/// What must be left for a sending track to keep its lowest layer, costing `bps`.
fn keep(bps: u64) -> u64 {
    (bps as f64 * KEEP_FRACTION) as u64
}

fn margin(bps: u64) -> u64 {
    (bps as f64 * (1.0 + UP_MARGIN)) as u64
}

/// The layers `d` may be sent (at most the client's maximum, measured), lowest first.
fn layers(d: &Demand) -> impl Iterator<Item = (Layer, u64)> + '_ {
    (0..=d.max_layer.index().min(Layer::COUNT - 1))
        .filter_map(|l| d.rates[l].map(|c| (Layer(l as u8), c)))
}

fn lowest(d: &Demand) -> Option<(Layer, u64)> {
    layers(d).next()
}

/// The highest layer costing at most `room`.
fn highest(d: &Demand, room: u64) -> Option<(Layer, u64)> {
    layers(d).filter(|&(_, c)| c <= room).last()
}

/// The highest layer whose cost with the margin fits in `room`.
fn highest_with_margin(d: &Demand, room: i64) -> Option<(Layer, u64)> {
    layers(d).filter(|&(_, c)| margin(c) as i64 <= room).last()
}

/// The highest layer sending at most `layer`.
fn highest_at_most(d: &Demand, layer: Layer) -> Option<(Layer, u64)> {
    layers(d).filter(|&(l, _)| l <= layer).last()
}

/// The next layer above `layer`.
fn next_up(d: &Demand, layer: Layer) -> Option<(Layer, u64)> {
    layers(d).find(|&(l, _)| l > layer)
}

#[cfg(test)]
// Tests take a real instant as the origin of their simulated time.
#[allow(clippy::disallowed_methods)]
mod tests {
    use sfu_proto::SessionId;

    use super::*;

    const KBPS: u64 = 1000;
    /// A typical three-layer camera: 150 kbit/s, 500 kbit/s, 1.5 Mbit/s.
    const SIMULCAST: [Option<u64>; 3] = [Some(150 * KBPS), Some(500 * KBPS), Some(1500 * KBPS)];

    fn track(n: u128) -> Option<TrackId> {
        Some(TrackId {
            session: SessionId::from_u128(n),
            index: 0,
        })
    }

    fn video(n: u128) -> Demand {
        Demand {
            kind: MediaKind::Video,
            track: track(n),
            max_layer: Layer::HIGH,
            speaker: None,
            rates: SIMULCAST,
        }
    }

    /// An allocator with the default clocks that may pause tracks.
    fn pausing() -> Allocator {
        Allocator::new(Policy {
            allow_pause: true,
            ..Policy::default()
        })
    }

    fn audio(n: u128) -> Demand {
        Demand {
            kind: MediaKind::Audio,
            track: track(n),
            max_layer: Layer::HIGH,
            speaker: None,
            rates: [Some(40 * KBPS), None, None],
        }
    }

    /// Drives an allocator on simulated time.
    struct Script {
        allocator: Allocator,
        now: Instant,
    }

    impl Script {
        /// An allocator without start-up or pause delay: a track may be paused as soon as
        /// its lowest layer does not fit.
        fn new() -> Self {
            Self {
                allocator: Allocator::new(Policy {
                    startup: Duration::ZERO,
                    pause_after: Duration::ZERO,
                    allow_pause: true,
                }),
                now: Instant::now(),
            }
        }

        /// Allocate `kbps` every 500 ms for `duration`; the last allocation.
        fn run(&mut self, kbps: u64, demands: &[Demand], duration: Duration) -> Allocation {
            let mut last = self.allocator.allocate(kbps * KBPS, demands, self.now);
            let end = self.now + duration;
            while self.now < end {
                self.now += Duration::from_millis(500);
                last = self.allocator.allocate(kbps * KBPS, demands, self.now);
            }
            last
        }

        fn grants(&self, slots: usize) -> Vec<Grant> {
            (0..slots).map(|i| self.allocator.grant(i)).collect()
        }
    }

    fn l(n: u8) -> Grant {
        Grant::Layer(Layer(n))
    }

    #[test]
    fn a_falling_estimate_takes_layers_down_at_once_and_pauses_before_starving_audio() {
        let mut s = Script::new();
        let demands = [audio(1), video(1)];
        s.run(3000, &demands, Duration::ZERO);
        assert_eq!(s.grants(2), vec![Grant::Open, l(2)]);
        // 1 Mbit/s: the top layer no longer fits; down on the very next allocation.
        let a = s.run(1000, &demands, Duration::ZERO);
        assert_eq!(s.grants(2), vec![Grant::Open, l(1)]);
        assert_eq!((a.switches, a.paused), (1, 0));
        s.run(300, &demands, Duration::ZERO);
        assert_eq!(s.grants(2)[1], l(0));
        // 120 kbit/s: audio (40) is reserved first; 80 left cannot keep layer 0 (150).
        let a = s.run(120, &demands, Duration::ZERO);
        assert_eq!(s.grants(2), vec![Grant::Open, Grant::Paused]);
        assert_eq!(a.paused, 1);
        assert_eq!(a.changed, vec![(1, Grant::Paused)]);
        // Nothing is padded out for a paused track: probes find the way back, aimed at
        // resuming it rather than at the top layer.
        assert_eq!(a.minimum_bps, 0);
        assert_eq!(a.desired_bps, 40 * KBPS + margin(150 * KBPS));
    }

    #[test]
    fn a_sending_track_keeps_its_lowest_layer_on_an_estimate_a_little_short_of_it() {
        let mut s = Script::new();
        let demands = [audio(1), video(1)];
        s.run(300, &demands, Duration::ZERO);
        assert_eq!(s.grants(2)[1], l(0));
        // 150 kbit/s leaves 110 for layer 0 (150): short, but by less than `KEEP_FRACTION`
        // allows.
        let a = s.run(150, &demands, PAUSE_AFTER * 3);
        assert_eq!(s.grants(2), vec![Grant::Open, l(0)]);
        assert_eq!(a.paused, 0);
        // 120 leaves 80, below 0.6 of the layer: paused once that has lasted.
        s.run(120, &demands, PAUSE_AFTER);
        assert_eq!(s.grants(2), vec![Grant::Open, Grant::Paused]);
        // Coming back needs the layer with its margin, not just the keep fraction.
        s.run(150, &demands, UP_HOLD * 3);
        assert_eq!(s.grants(2)[1], Grant::Paused);
    }

    #[test]
    fn without_pausing_a_track_keeps_its_lowest_layer_on_any_estimate() {
        let mut s = Script {
            allocator: Allocator::default(),
            now: Instant::now(),
        };
        let demands = [audio(1), video(1), video(2)];
        s.run(3000, &demands, STARTUP);
        assert_eq!(s.grants(3), vec![Grant::Open, l(2), l(1)]);
        // 100 kbit/s carries neither floor, for long past the pause delay: both go down to
        // their lowest layer and stay there.
        let a = s.run(100, &demands, PAUSE_AFTER * 5);
        assert_eq!(s.grants(3), vec![Grant::Open, l(0), l(0)]);
        assert_eq!(a.paused, 0);
        // And back up when the estimate returns.
        s.run(3000, &demands, UP_HOLD * 3);
        assert_eq!(s.grants(3), vec![Grant::Open, l(2), l(1)]);
    }

    #[test]
    fn a_dip_shorter_than_the_pause_delay_keeps_the_picture() {
        let mut s = Script {
            allocator: pausing(),
            now: Instant::now(),
        };
        let demands = [audio(1), video(1)];
        s.run(3000, &demands, STARTUP);
        // The estimate dips below audio + layer 0 for a second: down to layer 0 at once, but
        // not paused.
        s.run(120, &demands, PAUSE_AFTER - Duration::from_secs(1));
        assert_eq!(s.grants(2), vec![Grant::Open, l(0)]);
        s.run(3000, &demands, Duration::from_millis(500));
        assert_eq!(s.grants(2), vec![Grant::Open, l(0)]);
        // A second dip starts its clock afresh; one that lasts is a pause.
        s.run(120, &demands, PAUSE_AFTER - Duration::from_millis(500));
        assert_eq!(s.grants(2), vec![Grant::Open, l(0)]);
        let a = s.run(120, &demands, Duration::from_millis(500));
        assert_eq!(s.grants(2), vec![Grant::Open, Grant::Paused]);
        assert_eq!(a.paused, 1);
    }

    #[test]
    fn the_active_speaker_is_served_first() {
        let mut s = Script::new();
        let mut speaker = video(3);
        speaker.speaker = Some(0);
        let demands = [audio(1), video(2), speaker, video(4)];
        // 40 audio + 3 × 150 floors = 490; 1000 leaves 510: one upgrade to layer 1 (+350),
        // and it goes to the speaker although its slot comes later.
        s.run(1000, &demands, Duration::ZERO);
        assert_eq!(s.grants(4), vec![Grant::Open, l(0), l(1), l(0)]);
        // 350 kbit/s: room for two floors only; the speaker keeps its picture, the last
        // slot in order is paused.
        s.run(350, &demands, Duration::ZERO);
        assert_eq!(s.grants(4), vec![Grant::Open, l(0), l(0), Grant::Paused]);
        // 250 kbit/s: only the speaker is left.
        s.run(250, &demands, Duration::ZERO);
        assert_eq!(
            s.grants(4),
            vec![Grant::Open, Grant::Paused, l(0), Grant::Paused]
        );
    }

    #[test]
    fn going_up_waits_for_a_margin_held_long_enough() {
        let mut s = Script::new();
        let demands = [audio(1), video(1)];
        s.run(600, &demands, Duration::ZERO);
        assert_eq!(s.grants(2)[1], l(1));
        // 1560 kbit/s: the top layer fits (1540) but not with the margin: no upgrade, ever.
        s.run(1560, &demands, Duration::from_secs(10));
        assert_eq!(s.grants(2)[1], l(1));
        // 2000 kbit/s fits with the margin (40 + 1875): only after the hold.
        s.run(2000, &demands, UP_HOLD - Duration::from_millis(500));
        assert_eq!(s.grants(2)[1], l(1), "too early");
        // A dip interrupts the hold: it starts again.
        s.run(1560, &demands, Duration::ZERO);
        s.run(2000, &demands, UP_HOLD - Duration::from_millis(500));
        assert_eq!(s.grants(2)[1], l(1), "the dip restarted the hold");
        s.run(2000, &demands, Duration::from_millis(500));
        assert_eq!(s.grants(2)[1], l(2));
        // An estimate wobbling around the top layer's cost never flaps it.
        let mut switches = 0;
        for kbps in [1900, 1700, 1560, 1800, 1600, 1950] {
            switches += s.run(kbps, &demands, Duration::ZERO).switches;
        }
        assert_eq!((switches, s.grants(2)[1]), (0, l(2)));
    }

    #[test]
    fn a_layer_that_stops_for_a_while_keeps_its_grant() {
        let mut s = Script::new();
        let mut top_silent = video(1);
        top_silent.rates[2] = None;
        s.run(3000, &[video(1)], Duration::ZERO);
        assert_eq!(s.grants(1), vec![l(2)]);
        // The publisher stops its top layer: the grant stays (the forwarder falls back to
        // layer 1 by itself), costed at what is sent, so it is back on top as soon as the
        // layer returns, without an upgrade's hold.
        let a = s.run(3000, &[top_silent], Duration::from_secs(3));
        assert_eq!((s.grants(1), a.switches), (vec![l(2)], 0));
        s.run(3000, &[video(1)], Duration::ZERO);
        assert_eq!(s.grants(1), vec![l(2)]);
        // But a grant whose sending layer (1 while 2 is silent) no longer fits still goes down
        // at once.
        s.run(400, &[top_silent], Duration::ZERO);
        assert_eq!(s.grants(1), vec![l(0)]);
    }

    #[test]
    fn a_paused_track_resumes_only_after_the_hold() {
        let mut s = Script::new();
        let demands = [audio(1), video(1)];
        s.run(100, &demands, Duration::ZERO);
        assert_eq!(s.grants(2)[1], Grant::Paused);
        // 200 kbit/s fits layer 0 (190) but not with the margin (40 + 187.5): stays paused.
        s.run(200, &demands, Duration::from_secs(5));
        assert_eq!(s.grants(2)[1], Grant::Paused);
        s.run(250, &demands, UP_HOLD - Duration::from_millis(500));
        assert_eq!(s.grants(2)[1], Grant::Paused);
        let a = s.run(250, &demands, Duration::from_millis(500));
        assert_eq!(s.grants(2)[1], l(0));
        assert_eq!(a.switches, 1);
    }

    #[test]
    fn nothing_is_paused_on_the_starting_guess() {
        let mut s = Script {
            allocator: pausing(),
            now: Instant::now(),
        };
        let demands = [audio(1), video(1), video(2)];
        // 250 kbit/s: after audio (40) and one floor (150), 60 is left, short of keeping the
        // second (0.6 × 150); yet neither is paused.
        s.run(250, &demands, STARTUP - Duration::from_millis(500));
        assert_eq!(s.grants(3), vec![Grant::Open, l(0), l(0)]);
        // Start-up over, the estimate has not grown: the last in order is paused.
        let a = s.run(250, &demands, Duration::from_millis(500));
        assert_eq!(s.grants(3), vec![Grant::Open, l(0), Grant::Paused]);
        assert_eq!(a.paused, 1);
    }

    #[test]
    fn a_track_measured_later_gets_its_own_start_up() {
        let mut s = Script {
            allocator: pausing(),
            now: Instant::now(),
        };
        let mut late = video(2);
        late.rates = [None; 3];
        // The session runs for a while with one track; the other (say, relayed from another
        // node) is followed but sends nothing yet.
        s.run(250, &[audio(1), video(1), late], STARTUP * 2);
        assert_eq!(s.grants(3), vec![Grant::Open, l(0), Grant::Open]);
        // Its media starts: the estimate has never carried it, so it is not paused at once...
        late.rates = SIMULCAST;
        s.run(
            250,
            &[audio(1), video(1), late],
            STARTUP - Duration::from_millis(500),
        );
        assert_eq!(s.grants(3), vec![Grant::Open, l(0), l(0)]);
        // ...but after its start-up, with the estimate still short of both floors, it is.
        s.run(250, &[audio(1), video(1), late], Duration::from_millis(500));
        assert_eq!(s.grants(3), vec![Grant::Open, l(0), Grant::Paused]);
    }

    #[test]
    fn the_client_maximum_and_silent_layers_cap_the_grant() {
        let mut s = Script::new();
        let mut capped = video(1);
        capped.max_layer = Layer(1);
        let mut top_silent = video(2);
        top_silent.rates[2] = None;
        let a = s.run(10_000, &[capped, top_silent], Duration::ZERO);
        assert_eq!(s.grants(2), vec![l(1), l(1)]);
        // Probing toward both at their best, with headroom.
        assert_eq!(a.desired_bps, 2000 * KBPS);
        // Nothing waits for bandwidth: no padding asked for.
        assert_eq!(a.minimum_bps, 0);
    }

    #[test]
    fn audio_and_unmeasured_video_are_not_limited_and_a_new_track_starts_afresh() {
        let mut s = Script::new();
        let mut unmeasured = video(2);
        unmeasured.rates = [None; 3];
        s.run(100, &[audio(1), video(1), unmeasured], Duration::ZERO);
        assert_eq!(s.grants(3), vec![Grant::Open, Grant::Paused, Grant::Open]);
        // Slot 1 now follows another track: its pause does not carry over, and the new track
        // gets what fits at once.
        let a = s.run(1000, &[audio(1), video(5), unmeasured], Duration::ZERO);
        assert_eq!(s.grants(3)[1], l(1));
        assert_eq!(a.switches, 0, "a fresh track's first grant is no switch");
    }
}
