//! A room's media mode, as a sans-IO state machine: peer to peer while the room is small, through
//! the SFU once it grows, and back when it shrinks, with hysteresis so a room hovering at a
//! threshold does not flap.
//!
//! Inputs are joins, leaves, acknowledgements and the time; outputs are what to tell whom. A
//! switch is announced to every member as `switch{to, epoch}`; each member sets up the new path
//! before tearing down the old (make-before-break) and acknowledges the epoch. The machine resends
//! to members that have not acknowledged every [`HybridConfig::retry`], and after
//! [`HybridConfig::ack_timeout`] removes them (they could not follow the room) and completes the
//! switch. At most one switch is in flight: what happens meanwhile is judged when it completes.
//! A member who joins during a switch joins straight into its target mode.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How a room carries its media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A full mesh: members send each other their media; control relays their signaling.
    P2p,
    /// Every member publishes to the SFU and receives the others from it.
    Sfu,
}

/// The thresholds and timings of one room's mode machine (`[hybrid]`, overridable per room).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HybridConfig {
    /// Move to the SFU when the member count reaches this.
    pub sfu_at: usize,
    /// Move back to peer to peer when it falls to this (below `sfu_at`: the band between is the
    /// hysteresis).
    pub p2p_at: usize,
    /// While peer to peer, reserve the room's node and set its publisher sessions up ahead from
    /// this many members (at most `sfu_at`), so the move is quick.
    pub prewarm_at: usize,
    /// How long a member has to acknowledge a switch before it is removed from the room.
    pub ack_timeout: Duration,
    /// How often a switch is sent again to members that have not acknowledged it.
    pub retry: Duration,
}

impl Default for HybridConfig {
    fn default() -> Self {
        Self {
            sfu_at: 8,
            p2p_at: 5,
            prewarm_at: 6,
            ack_timeout: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// `[hybrid]`: rooms that start peer to peer and move to the SFU as they grow
/// (docs/hybrid.md). Off by default: every room goes through the SFU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HybridSettings {
    /// Rooms start peer to peer (a room's settings may say otherwise either way).
    pub enabled: bool,
    /// Move to the SFU when a room's participant count reaches this.
    pub sfu_at: usize,
    /// Move back to peer to peer when it falls to this.
    pub p2p_at: usize,
    /// While peer to peer, have participants set their SFU publisher connections up ahead
    /// from this many participants.
    pub prewarm_at: usize,
    /// How long a participant has to acknowledge a switch before it is removed.
    pub ack_timeout_secs: u64,
    /// How often a switch is sent again to participants that have not acknowledged it.
    pub retry_ms: u64,
}

impl Default for HybridSettings {
    fn default() -> Self {
        let c = HybridConfig::default();
        Self {
            enabled: false,
            sfu_at: c.sfu_at,
            p2p_at: c.p2p_at,
            prewarm_at: c.prewarm_at,
            ack_timeout_secs: c.ack_timeout.as_secs(),
            retry_ms: u64::try_from(c.retry.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A room's own thresholds (`hybrid` in its settings); what it leaves out is the deployment's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HybridOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sfu_at: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p2p_at: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prewarm_at: Option<usize>,
}

impl HybridSettings {
    /// These settings with a room's overrides applied.
    pub fn with(&self, room: Option<&HybridOverride>) -> HybridSettings {
        let Some(o) = room else {
            return self.clone();
        };
        HybridSettings {
            enabled: o.enabled.unwrap_or(self.enabled),
            sfu_at: o.sfu_at.unwrap_or(self.sfu_at),
            p2p_at: o.p2p_at.unwrap_or(self.p2p_at),
            prewarm_at: o.prewarm_at.unwrap_or(self.prewarm_at),
            ..self.clone()
        }
    }

    pub fn config(&self) -> HybridConfig {
        HybridConfig {
            sfu_at: self.sfu_at,
            p2p_at: self.p2p_at,
            prewarm_at: self.prewarm_at,
            ack_timeout: Duration::from_secs(self.ack_timeout_secs),
            retry: Duration::from_millis(self.retry_ms),
        }
    }

    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        self.config()
            .check()
            .map_err(|(key, reason)| crate::config::ConfigError::Invalid {
                key: format!("hybrid.{key}"),
                reason: reason.into(),
            })
    }
}

impl HybridConfig {
    /// Why this configuration cannot run, if it cannot: `(field, reason)`.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.sfu_at < 2 {
            return Err((
                "sfu_at",
                "must be at least 2 (one member has nobody to call)",
            ));
        }
        if self.p2p_at >= self.sfu_at {
            return Err((
                "p2p_at",
                "must be below sfu_at (the gap between them is what stops a room from flapping)",
            ));
        }
        if self.prewarm_at > self.sfu_at || self.prewarm_at <= self.p2p_at {
            return Err(("prewarm_at", "must be above p2p_at and at most sfu_at"));
        }
        if self.retry.is_zero() || self.ack_timeout < self.retry {
            return Err((
                "ack_timeout_secs",
                "the retry interval must be positive and the ack timeout at least one retry",
            ));
        }
        Ok(())
    }

    /// The mode a room of `members` should move to from `mode`, if any.
    fn wanted(&self, mode: Mode, members: usize) -> Option<Mode> {
        match mode {
            Mode::P2p if members >= self.sfu_at => Some(Mode::Sfu),
            Mode::Sfu if members <= self.p2p_at => Some(Mode::P2p),
            _ => None,
        }
    }
}

/// What the machine asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Tell `member` to move to `to` (first time, or again: the same epoch either way).
    Switch { member: P, to: Mode, epoch: u64 },
    /// A new member: tell it the room's mode and epoch as it joins.
    Welcome { member: P, mode: Mode, epoch: u64 },
    /// Reserve the room's node and set its publisher sessions up ahead of a move to the SFU.
    Prewarm,
    /// The room shrank back: the reservation is not needed.
    ReleasePrewarm,
    /// `member` never acknowledged `epoch`: remove it from the room (and say why).
    Remove { member: P, epoch: u64 },
    /// Every member still in the room is in `mode` (`epoch`); the switch took `took` from the
    /// first announcement to the last acknowledgement, and `removed` members timed out.
    Switched {
        mode: Mode,
        epoch: u64,
        took: Duration,
        removed: usize,
    },
}

#[derive(Debug, Clone)]
struct Switch<P> {
    to: Mode,
    epoch: u64,
    started: Instant,
    /// Members that have not acknowledged yet.
    pending: BTreeSet<P>,
    /// When the pending members were last told.
    sent: Instant,
    removed: usize,
}

/// One room's media mode.
#[derive(Debug)]
pub struct ModeMachine<P> {
    config: HybridConfig,
    /// The mode every member has acknowledged (the source side of a switch in flight).
    mode: Mode,
    /// The epoch of the last switch started (0: none yet).
    epoch: u64,
    members: BTreeSet<P>,
    switch: Option<Switch<P>>,
    prewarmed: bool,
    actions: VecDeque<Action<P>>,
}

impl<P: Ord + Clone + Debug> ModeMachine<P> {
    /// A new, empty room in `mode` (peer to peer when hybrid rooms are on).
    pub fn new(config: HybridConfig, mode: Mode) -> Self {
        Self::resume(config, mode, 0)
    }

    /// A room known to be in `mode` since switch `epoch` (a new chair taking over); its
    /// members join again.
    pub fn resume(config: HybridConfig, mode: Mode, epoch: u64) -> Self {
        Self {
            config,
            mode,
            epoch,
            members: BTreeSet::new(),
            switch: None,
            prewarmed: false,
            actions: VecDeque::new(),
        }
    }

    /// The mode members are in, or moving to while a switch is in flight.
    pub fn mode(&self) -> Mode {
        self.switch.as_ref().map_or(self.mode, |s| s.to)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Whether members are to keep their SFU publisher connections ready ([`Action::Prewarm`]).
    pub fn prewarmed(&self) -> bool {
        self.prewarmed
    }

    /// Whether a switch is waiting for acknowledgements.
    pub fn switching(&self) -> bool {
        self.switch.is_some()
    }

    /// `member` joined (again: nothing changes).
    pub fn join(&mut self, member: P, now: Instant) {
        if !self.members.insert(member.clone()) {
            return;
        }
        self.actions.push_back(Action::Welcome {
            member,
            mode: self.mode(),
            epoch: self.epoch,
        });
        self.reconsider(now);
    }

    /// `member` left (or was removed); it owes no acknowledgement any more.
    pub fn leave(&mut self, member: &P, now: Instant) {
        if !self.members.remove(member) {
            return;
        }
        if let Some(s) = self.switch.as_mut() {
            s.pending.remove(member);
        }
        self.finish_if_done(now);
        self.reconsider(now);
    }

    /// `member` acknowledged `epoch`. A stale or unknown acknowledgement changes nothing.
    pub fn acknowledge(&mut self, member: &P, epoch: u64, now: Instant) {
        match self.switch.as_mut() {
            Some(s) if s.epoch == epoch => {
                s.pending.remove(member);
            }
            _ => return,
        }
        self.finish_if_done(now);
        self.reconsider(now);
    }

    /// Time passed: resend to members that are late, remove those past the deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(s) = self.switch.as_mut() else {
            return;
        };
        if now.saturating_duration_since(s.started) >= self.config.ack_timeout {
            let late = std::mem::take(&mut s.pending);
            s.removed += late.len();
            let epoch = s.epoch;
            for member in late {
                self.members.remove(&member);
                self.actions.push_back(Action::Remove { member, epoch });
            }
            self.finish_if_done(now);
            self.reconsider(now);
        } else if now.saturating_duration_since(s.sent) >= self.config.retry {
            s.sent = now;
            for member in &s.pending {
                self.actions.push_back(Action::Switch {
                    member: member.clone(),
                    to: s.to,
                    epoch: s.epoch,
                });
            }
        }
    }

    /// When [`ModeMachine::handle_timeout`] is due next, if anything waits on time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let s = self.switch.as_ref()?;
        Some((s.sent + self.config.retry).min(s.started + self.config.ack_timeout))
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    fn finish_if_done(&mut self, now: Instant) {
        let Some(s) = self.switch.take_if(|s| s.pending.is_empty()) else {
            return;
        };
        self.mode = s.to;
        if s.to == Mode::Sfu {
            // The reservation is now the room's node.
            self.prewarmed = false;
        }
        self.actions.push_back(Action::Switched {
            mode: s.to,
            epoch: s.epoch,
            took: now.saturating_duration_since(s.started),
            removed: s.removed,
        });
    }

    /// Start a switch or change the reservation if the member count calls for it; nothing
    /// while a switch is in flight (it is reconsidered when that one completes).
    fn reconsider(&mut self, now: Instant) {
        if self.switch.is_some() {
            return;
        }
        let n = self.members.len();
        if self.mode == Mode::P2p {
            if n >= self.config.prewarm_at && !self.prewarmed {
                self.prewarmed = true;
                self.actions.push_back(Action::Prewarm);
            } else if n <= self.config.p2p_at && self.prewarmed {
                self.prewarmed = false;
                self.actions.push_back(Action::ReleasePrewarm);
            }
        }
        let Some(to) = self.config.wanted(self.mode, n) else {
            return;
        };
        self.epoch += 1;
        for member in &self.members {
            self.actions.push_back(Action::Switch {
                member: member.clone(),
                to,
                epoch: self.epoch,
            });
        }
        self.switch = Some(Switch {
            to,
            epoch: self.epoch,
            started: now,
            pending: self.members.clone(),
            sent: now,
            removed: 0,
        });
        // An empty room has nobody to wait for.
        self.finish_if_done(now);
    }
}

#[cfg(test)]
// Tests take a real instant as the origin of their simulated time.
#[allow(clippy::disallowed_methods)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn drain(m: &mut ModeMachine<u32>) -> Vec<Action<u32>> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn switches(actions: &[Action<u32>]) -> Vec<(u32, Mode, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Switch { member, to, epoch } => Some((*member, *to, *epoch)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_defaults_check_and_bad_thresholds_do_not() {
        assert_eq!(HybridConfig::default().check(), Ok(()));
        let c = |sfu_at, p2p_at, prewarm_at| HybridConfig {
            sfu_at,
            p2p_at,
            prewarm_at,
            ..HybridConfig::default()
        };
        assert_eq!(c(8, 8, 8).check().map_err(|e| e.0), Err("p2p_at"));
        assert_eq!(c(8, 5, 9).check().map_err(|e| e.0), Err("prewarm_at"));
        assert_eq!(c(8, 5, 5).check().map_err(|e| e.0), Err("prewarm_at"));
        assert_eq!(c(1, 0, 1).check().map_err(|e| e.0), Err("sfu_at"));
    }

    #[test]
    fn a_room_moves_up_at_sfu_at_prewarming_before_and_back_down_at_p2p_at() {
        let t0 = Instant::now();
        let mut m = ModeMachine::new(HybridConfig::default(), Mode::P2p);
        for i in 1..=5 {
            m.join(i, t0);
        }
        let a = drain(&mut m);
        assert!(
            switches(&a).is_empty() && !a.contains(&Action::Prewarm),
            "{a:?}"
        );
        m.join(6, t0);
        assert!(drain(&mut m).contains(&Action::Prewarm));
        m.join(7, t0);
        assert!(switches(&drain(&mut m)).is_empty());
        // The 8th: everyone is told, the newcomer welcomed into the old mode first.
        m.join(8, t0);
        let a = drain(&mut m);
        assert_eq!(
            a[0],
            Action::Welcome {
                member: 8,
                mode: Mode::P2p,
                epoch: 0
            }
        );
        let told = switches(&a);
        assert_eq!(told.len(), 8);
        assert!(
            told.iter()
                .all(|&(_, to, epoch)| to == Mode::Sfu && epoch == 1)
        );
        assert_eq!(m.mode(), Mode::Sfu);
        assert!(m.switching());
        // Acknowledgements in; the last one completes the switch.
        let t1 = t0 + Duration::from_millis(700);
        for i in 1..=8 {
            m.acknowledge(&i, 1, t1);
        }
        let a = drain(&mut m);
        assert_eq!(
            a,
            vec![Action::Switched {
                mode: Mode::Sfu,
                epoch: 1,
                took: Duration::from_millis(700),
                removed: 0
            }]
        );
        assert!(!m.switching());
        // Down to 6 and 5: back at 5, not before.
        m.leave(&8, t1);
        m.leave(&7, t1);
        assert!(switches(&drain(&mut m)).is_empty());
        m.leave(&6, t1);
        let told = switches(&drain(&mut m));
        assert_eq!(told.len(), 5);
        assert!(
            told.iter()
                .all(|&(_, to, epoch)| to == Mode::P2p && epoch == 2)
        );
    }

    #[test]
    fn a_member_that_never_acknowledges_is_retried_then_removed() {
        let t0 = Instant::now();
        let config = HybridConfig::default();
        let mut m = ModeMachine::new(config, Mode::P2p);
        for i in 1..=8 {
            m.join(i, t0);
        }
        drain(&mut m);
        for i in 1..=7 {
            m.acknowledge(&i, 1, t0 + Duration::from_millis(100));
        }
        assert!(drain(&mut m).is_empty());
        // Retries go to the silent one only, every `retry`.
        let mut t = t0;
        let mut retries = 0;
        while let Some(due) = m.poll_timeout() {
            assert!(due > t, "time moves on");
            t = due;
            m.handle_timeout(t);
            for a in drain(&mut m) {
                match a {
                    Action::Switch { member, epoch, .. } => {
                        assert_eq!((member, epoch), (8, 1));
                        retries += 1;
                    }
                    Action::Remove { member, epoch } => {
                        assert_eq!((member, epoch), (8, 1));
                        assert_eq!(t, t0 + config.ack_timeout);
                    }
                    Action::Switched { removed, took, .. } => {
                        assert_eq!((removed, took), (1, config.ack_timeout));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(retries, 4, "at 2, 4, 6, 8 s; removed at 10 s");
        assert_eq!(
            (m.members(), m.mode(), m.switching()),
            (7, Mode::Sfu, false)
        );
    }

    #[test]
    fn a_switch_back_waits_for_the_switch_in_flight_and_stale_acks_count_for_nothing() {
        let t0 = Instant::now();
        let mut m = ModeMachine::new(HybridConfig::default(), Mode::P2p);
        for i in 1..=8 {
            m.join(i, t0);
        }
        drain(&mut m);
        // Three leave mid-switch: down to 5, yet no second switch while the first is in flight.
        for i in 6..=8 {
            m.leave(&i, t0);
        }
        assert!(switches(&drain(&mut m)).is_empty());
        m.acknowledge(&1, 0, t0);
        assert!(m.switching(), "an ack of an older epoch is ignored");
        for i in 1..=5 {
            m.acknowledge(&i, 1, t0);
        }
        // The first completes, then the second starts at once.
        let a = drain(&mut m);
        assert!(
            matches!(
                a[0],
                Action::Switched {
                    mode: Mode::Sfu,
                    epoch: 1,
                    ..
                }
            ),
            "{a:?}"
        );
        let told = switches(&a);
        assert_eq!(told.len(), 5);
        assert!(
            told.iter()
                .all(|&(_, to, epoch)| to == Mode::P2p && epoch == 2)
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Join(u32),
        Leave(u32),
        /// Every pending member acknowledges the current epoch.
        AckAll,
        /// One member acknowledges some epoch.
        Ack(u32, u64),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u32..14).prop_map(Step::Join),
            3 => (0u32..14).prop_map(Step::Leave),
            2 => Just(Step::AckAll),
            2 => (0u32..14, 0u64..6).prop_map(|(m, e)| Step::Ack(m, e)),
            2 => (0u64..4000).prop_map(Step::Wait),
        ]
    }

    /// What the property test keeps track of across steps.
    #[derive(Default)]
    struct Seen {
        /// The switch in flight: its epoch and when it started.
        started: Option<(u64, Instant)>,
        /// The direction of the last switch started.
        last: Option<Mode>,
    }

    /// Check what `m` asked for after an input at `now`.
    fn check(m: &mut ModeMachine<u32>, now: Instant, seen: &mut Seen) -> Result<(), TestCaseError> {
        let config = m.config;
        let mut epochs = BTreeSet::new();
        while let Some(a) = m.poll_action() {
            match a {
                Action::Switch { to, epoch, .. } => {
                    epochs.insert(epoch);
                    if seen.started.map(|(e, _)| e) != Some(epoch) {
                        prop_assert!(seen.started.is_none(), "a second switch in flight");
                        let n = m.members();
                        match to {
                            Mode::Sfu => prop_assert!(n >= config.sfu_at, "to the SFU at {n}"),
                            Mode::P2p => prop_assert!(n <= config.p2p_at, "to P2P at {n}"),
                        }
                        prop_assert_ne!(seen.last, Some(to), "two switches the same way");
                        seen.last = Some(to);
                        seen.started = Some((epoch, now));
                    }
                }
                Action::Switched {
                    mode, epoch, took, ..
                } => match seen.started.take() {
                    Some((e, at)) => {
                        prop_assert_eq!(e, epoch);
                        prop_assert_eq!(took, now.saturating_duration_since(at));
                        prop_assert!(took <= config.ack_timeout);
                    }
                    // A room left empty moves without telling anyone.
                    None => {
                        prop_assert_eq!((m.members(), took), (0, Duration::ZERO));
                        prop_assert_ne!(seen.last, Some(mode), "two switches the same way");
                        seen.last = Some(mode);
                    }
                },
                // A newcomer is welcomed into the mode of its moment (a switch its join
                // starts follows); a removal names the switch that timed out.
                Action::Welcome { epoch, .. } => prop_assert!(epoch <= m.epoch()),
                Action::Remove { epoch, .. } => {
                    prop_assert_eq!(Some(epoch), seen.started.map(|(e, _)| e));
                }
                Action::Prewarm | Action::ReleasePrewarm => {}
            }
        }
        prop_assert!(epochs.len() <= 1);
        prop_assert_eq!(m.switching(), seen.started.is_some());
        if let Some((_, at)) = seen.started {
            prop_assert!(now.saturating_duration_since(at) <= config.ack_timeout);
        }
        Ok(())
    }

    proptest! {
        /// Under any sequence of joins, leaves, acknowledgements and waits: at most one switch
        /// in flight; a switch starts only when the count is past its threshold, and never
        /// the same way twice in a row (so two switches are separated by the whole hysteresis
        /// band); every switch completes within the ack timeout.
        #[test]
        fn no_flapping_and_every_switch_ends(steps in proptest::collection::vec(step(), 1..300)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut m = ModeMachine::new(HybridConfig::default(), Mode::P2p);
            let mut seen = Seen::default();
            for s in steps {
                match s {
                    Step::Join(i) => m.join(i, now),
                    Step::Leave(i) => m.leave(&i, now),
                    Step::AckAll => {
                        let members: Vec<u32> = m.members.iter().copied().collect();
                        let epoch = m.epoch();
                        for i in members {
                            m.acknowledge(&i, epoch, now);
                            check(&mut m, now, &mut seen)?;
                        }
                    }
                    Step::Ack(i, e) => m.acknowledge(&i, e, now),
                    Step::Wait(ms) => {
                        let until = now + Duration::from_millis(ms);
                        while let Some(due) = m.poll_timeout().filter(|d| *d <= until) {
                            now = due.max(now);
                            m.handle_timeout(now);
                            check(&mut m, now, &mut seen)?;
                        }
                        now = until;
                    }
                }
                check(&mut m, now, &mut seen)?;
            }
        }
    }
}
