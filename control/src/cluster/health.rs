//! Node health: one state machine per node incarnation (`Up`, `Suspect`, `Dead`, `Draining`)
//! and the table of them. Sans-IO: the caller passes the time of every input and of every
//! `tick`, and gets back the transitions to log, count, and act on (a `Dead` node's rooms are
//! released; a drain past its deadline has its remaining sessions ended).
//!
//! Silence is measured from the last heartbeat (any message from the node). A node silent for
//! `suspect_after` is `Suspect`, for `dead_after` `Dead`; `Dead` is final for the incarnation: a
//! node that comes back is registered afresh under a new [`Incarnation`]. Every input first
//! applies the timeouts that fell due before it, so the outcome does not depend on how often
//! the caller ticks: a heartbeat that arrives after `dead_after` finds the node already dead.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use sfu_core::ids::NodeId;

use super::SettingError;

/// How long silence and drains may last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Silence after which a node is `Suspect`: new rooms avoid it.
    pub suspect_after: Duration,
    /// Silence after which a node is `Dead`: its rooms are released. Longer than
    /// `suspect_after`.
    pub dead_after: Duration,
    /// How long a drain may last before the node's remaining sessions are to be ended.
    pub drain_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            // Nodes report their load every second: three missed reports is a node in
            // trouble (or a network that is), five is one to give up on. Clients of a dead
            // node's rooms notice ICE failing within about the same time.
            suspect_after: Duration::from_secs(3),
            dead_after: Duration::from_secs(5),
            // Long enough for a meeting in progress to end on its own, short enough for a
            // rolling upgrade of a fleet to finish in an afternoon.
            drain_timeout: Duration::from_secs(300),
        }
    }
}

impl HealthConfig {
    /// Check the timeouts; the error names the offending key.
    pub fn validate(&self) -> Result<(), SettingError> {
        if self.suspect_after.is_zero() {
            return Err(SettingError::new("suspect_after", "must be above 0"));
        }
        if self.dead_after <= self.suspect_after {
            return Err(SettingError::new(
                "dead_after",
                format!(
                    "must be longer than suspect_after ({:?}): a node is suspected before it is \
                     declared dead",
                    self.suspect_after
                ),
            ));
        }
        Ok(())
    }
}

/// What control may do with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeState {
    /// Heartbeating and taking new rooms.
    Up,
    /// Silent for `suspect_after`: no new rooms until it is heard from again.
    Suspect,
    /// Silent for `dead_after`, or replaced by a new incarnation: its rooms are gone.
    Dead,
    /// Heartbeating, keeping its rooms, taking no new ones (admin request or SIGTERM).
    Draining,
}

impl NodeState {
    /// Lowercase name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Suspect => "suspect",
            NodeState::Dead => "dead",
            NodeState::Draining => "draining",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run of a node between (re)connections, numbered by the [`HealthTable`] from 1. Messages
/// of an earlier incarnation (a connection that is being replaced) must not revive a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Incarnation(pub u64);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a node's state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// It was heard from again.
    Heartbeat,
    /// It was silent for this long (measured at the deadline, not when the tick noticed).
    Silence(Duration),
    /// A drain was asked for.
    Drain,
    /// A drain was called off.
    Undrain,
    /// The node registered again: this incarnation is over.
    Replaced,
}

/// What the caller learns from the health machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// A node incarnation's state changed. On `to == Dead`, release its rooms.
    Changed {
        node: NodeId,
        incarnation: Incarnation,
        from: NodeState,
        to: NodeState,
        cause: Cause,
    },
    /// A drain reached `drain_timeout` with the node still alive: end its remaining sessions.
    /// Reported once per drain; the node stays `Draining`.
    DrainExpired {
        node: NodeId,
        incarnation: Incarnation,
    },
}

/// A health input naming a node or incarnation the table does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    #[error("node {0} is not registered")]
    UnknownNode(NodeId),
    #[error("node {node} is at incarnation {current}, not {given}")]
    StaleIncarnation {
        node: NodeId,
        given: Incarnation,
        current: Incarnation,
    },
}

/// Liveness, apart from draining: a draining node still goes suspect and dead when silent,
/// and comes back to `Draining`, not `Up`, when heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Alive,
    Suspect,
    Dead,
}

#[derive(Debug, Clone, Copy)]
struct Drain {
    /// `None`: a timeout too long to represent, never reached.
    deadline: Option<Instant>,
    expiry_reported: bool,
}

/// The health of one node incarnation.
#[derive(Debug, Clone)]
pub struct NodeHealth {
    node: NodeId,
    incarnation: Incarnation,
    config: HealthConfig,
    last_heard: Instant,
    liveness: Liveness,
    drain: Option<Drain>,
}

impl NodeHealth {
    /// A node incarnation heard from at `now` (its registration counts as a heartbeat).
    pub fn new(node: NodeId, incarnation: Incarnation, config: HealthConfig, now: Instant) -> Self {
        Self {
            node,
            incarnation,
            config,
            last_heard: now,
            liveness: Liveness::Alive,
            drain: None,
        }
    }

    /// The node this machine tracks.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The incarnation this machine tracks.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The state as of the last input or tick.
    pub fn state(&self) -> NodeState {
        match (self.liveness, self.drain.is_some()) {
            (Liveness::Dead, _) => NodeState::Dead,
            (Liveness::Suspect, _) => NodeState::Suspect,
            (Liveness::Alive, true) => NodeState::Draining,
            (Liveness::Alive, false) => NodeState::Up,
        }
    }

    /// When the last heartbeat arrived.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// Whether a drain is in progress (the node may also be `Suspect` meanwhile).
    pub fn is_draining(&self) -> bool {
        self.drain.is_some() && self.liveness != Liveness::Dead
    }

    /// The node was heard from at `now`. A `Suspect` node comes back; a `Dead` one does not
    /// (timeouts due before `now` are applied first).
    pub fn handle_heartbeat(&mut self, now: Instant) -> Vec<HealthEvent> {
        let mut events = self.tick(now);
        if self.liveness == Liveness::Dead {
            return events;
        }
        // An input from the past (a message queued behind a tick) must not move the clock back.
        self.last_heard = self.last_heard.max(now);
        if self.liveness == Liveness::Suspect {
            let from = self.state();
            self.liveness = Liveness::Alive;
            events.extend(self.changed(from, Cause::Heartbeat));
        }
        events
    }

    /// Start draining at `now`: no new rooms; after `drain_timeout` a
    /// [`HealthEvent::DrainExpired`]. Draining a draining node keeps the first deadline;
    /// draining a dead one does nothing.
    pub fn drain(&mut self, now: Instant) -> Vec<HealthEvent> {
        let mut events = self.tick(now);
        if self.liveness == Liveness::Dead || self.drain.is_some() {
            return events;
        }
        let from = self.state();
        self.drain = Some(Drain {
            deadline: now.checked_add(self.config.drain_timeout),
            expiry_reported: false,
        });
        events.extend(self.changed(from, Cause::Drain));
        // A zero timeout expires at once.
        events.extend(self.tick(now));
        events
    }

    /// Call off a drain: the node takes new rooms again (once it is heard from, if suspect).
    pub fn undrain(&mut self, now: Instant) -> Vec<HealthEvent> {
        let mut events = self.tick(now);
        if self.liveness == Liveness::Dead || self.drain.is_none() {
            return events;
        }
        let from = self.state();
        self.drain = None;
        events.extend(self.changed(from, Cause::Undrain));
        events
    }

    /// Apply the timeouts due at `now`. A tick that comes late reports every deadline it
    /// passed, in order (`Up → Suspect`, then `Suspect → Dead`).
    pub fn tick(&mut self, now: Instant) -> Vec<HealthEvent> {
        let mut events = Vec::new();
        // Each pass applies the earliest due deadline, so a late tick reports them in the
        // order they fell due; there are at most three (suspect, dead, drain).
        while let Some(due) = self.poll_timeout().filter(|&t| t <= now) {
            let from = self.state();
            // On a tie the node's silence goes first: a node that dies at its drain deadline
            // has no sessions left to end.
            if self.silence_deadline().is_some_and(|s| s <= due) {
                let (liveness, after) = match self.liveness {
                    Liveness::Alive => (Liveness::Suspect, self.config.suspect_after),
                    _ => (Liveness::Dead, self.config.dead_after),
                };
                self.liveness = liveness;
                events.extend(self.changed(from, Cause::Silence(after)));
            } else if let Some(drain) = &mut self.drain {
                drain.expiry_reported = true;
                events.push(HealthEvent::DrainExpired {
                    node: self.node.clone(),
                    incarnation: self.incarnation,
                });
            } else {
                // poll_timeout named neither deadline: nothing is due after all.
                break;
            }
        }
        events
    }

    /// End this incarnation now (the node registered again, or was removed).
    pub fn end(&mut self, cause: Cause) -> Vec<HealthEvent> {
        if self.liveness == Liveness::Dead {
            return Vec::new();
        }
        let from = self.state();
        self.liveness = Liveness::Dead;
        self.changed(from, cause).into_iter().collect()
    }

    /// The next time `tick` has something to do; `None` once the node is dead (or when
    /// nothing will ever be due).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.liveness == Liveness::Dead {
            return None;
        }
        let drain = self
            .drain
            .filter(|d| !d.expiry_reported)
            .and_then(|d| d.deadline);
        [self.silence_deadline(), drain].into_iter().flatten().min()
    }

    /// When the current silence moves the node on (to `Suspect`, or to `Dead`). `None` when
    /// dead, or when a timeout is too long to represent (it is never reached).
    fn silence_deadline(&self) -> Option<Instant> {
        match self.liveness {
            Liveness::Alive => self.last_heard.checked_add(self.config.suspect_after),
            Liveness::Suspect => self.last_heard.checked_add(self.config.dead_after),
            Liveness::Dead => None,
        }
    }

    fn changed(&self, from: NodeState, cause: Cause) -> Option<HealthEvent> {
        let to = self.state();
        (from != to).then(|| HealthEvent::Changed {
            node: self.node.clone(),
            incarnation: self.incarnation,
            from,
            to,
            cause,
        })
    }
}

/// The health of every registered node: the current incarnation of each, and the numbering of
/// incarnations. A dead incarnation stays listed (as `Dead`) until the node registers again
/// or is [removed](HealthTable::remove).
#[derive(Debug, Clone)]
pub struct HealthTable {
    config: HealthConfig,
    nodes: BTreeMap<NodeId, NodeHealth>,
    /// Last incarnation handed out per node, kept across `remove` so numbers never repeat.
    last_incarnation: BTreeMap<NodeId, Incarnation>,
}

impl HealthTable {
    /// An empty table. Check `config` with [`HealthConfig::validate`] first.
    pub fn new(config: HealthConfig) -> Self {
        Self {
            config,
            nodes: BTreeMap::new(),
            last_incarnation: BTreeMap::new(),
        }
    }

    /// The timeouts in force.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// A node (re)connected at `now`: it gets a new incarnation, `Up`. A previous incarnation
    /// still alive ends (`Dead`, [`Cause::Replaced`]): the events say so, so that its rooms
    /// are released like those of a node that went silent.
    pub fn register(&mut self, node: NodeId, now: Instant) -> (Incarnation, Vec<HealthEvent>) {
        let mut events = Vec::new();
        if let Some(old) = self.nodes.get_mut(&node) {
            events.extend(old.tick(now));
            events.extend(old.end(Cause::Replaced));
        }
        let next = self
            .last_incarnation
            .get(&node)
            .map_or(Incarnation(1), |i| Incarnation(i.0.saturating_add(1)));
        self.last_incarnation.insert(node.clone(), next);
        self.nodes
            .insert(node.clone(), NodeHealth::new(node, next, self.config, now));
        (next, events)
    }

    /// Forget a node (it deregistered, or an operator removed it). If it was alive, the events
    /// report it `Dead` with [`Cause::Replaced`] so its rooms are released.
    pub fn remove(&mut self, node: &NodeId) -> Vec<HealthEvent> {
        self.nodes
            .remove(node)
            .map(|mut h| h.end(Cause::Replaced))
            .unwrap_or_default()
    }

    /// A message from `node`'s `incarnation` arrived at `now`.
    pub fn handle_heartbeat(
        &mut self,
        node: &NodeId,
        incarnation: Incarnation,
        now: Instant,
    ) -> Result<Vec<HealthEvent>, HealthError> {
        Ok(self.current(node, incarnation)?.handle_heartbeat(now))
    }

    /// Start draining `node` (its current incarnation).
    pub fn drain(&mut self, node: &NodeId, now: Instant) -> Result<Vec<HealthEvent>, HealthError> {
        self.nodes
            .get_mut(node)
            .map(|h| h.drain(now))
            .ok_or_else(|| HealthError::UnknownNode(node.clone()))
    }

    /// Call off `node`'s drain.
    pub fn undrain(
        &mut self,
        node: &NodeId,
        now: Instant,
    ) -> Result<Vec<HealthEvent>, HealthError> {
        self.nodes
            .get_mut(node)
            .map(|h| h.undrain(now))
            .ok_or_else(|| HealthError::UnknownNode(node.clone()))
    }

    /// Apply every timeout due at `now`, node by node in id order.
    pub fn tick(&mut self, now: Instant) -> Vec<HealthEvent> {
        self.nodes.values_mut().flat_map(|h| h.tick(now)).collect()
    }

    /// The earliest time `tick` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.nodes
            .values()
            .filter_map(NodeHealth::poll_timeout)
            .min()
    }

    /// `node`'s current incarnation and state.
    pub fn state(&self, node: &NodeId) -> Option<(Incarnation, NodeState)> {
        self.nodes.get(node).map(|h| (h.incarnation, h.state()))
    }

    /// Every registered node's machine, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &NodeHealth> {
        self.nodes.values()
    }

    fn current(
        &mut self,
        node: &NodeId,
        incarnation: Incarnation,
    ) -> Result<&mut NodeHealth, HealthError> {
        let h = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| HealthError::UnknownNode(node.clone()))?;
        if h.incarnation != incarnation {
            return Err(HealthError::StaleIncarnation {
                node: node.clone(),
                given: incarnation,
                current: h.incarnation,
            });
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const NS: Duration = Duration::from_nanos(1);

    /// The origin of simulated time; everything after it is `t0 + offset`.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn id(name: &str) -> NodeId {
        name.parse().expect("valid node id")
    }

    fn machine(t0: Instant) -> NodeHealth {
        NodeHealth::new(id("n1"), Incarnation(1), HealthConfig::default(), t0)
    }

    /// The (from, to, cause) of each state change, for compact assertions.
    fn changes(events: &[HealthEvent]) -> Vec<(NodeState, NodeState, Cause)> {
        events
            .iter()
            .filter_map(|e| match e {
                HealthEvent::Changed {
                    from, to, cause, ..
                } => Some((*from, *to, *cause)),
                HealthEvent::DrainExpired { .. } => None,
            })
            .collect()
    }

    fn expired(events: &[HealthEvent]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, HealthEvent::DrainExpired { .. }))
            .count()
    }

    use NodeState::{Dead, Draining, Suspect, Up};

    #[test]
    fn defaults_and_validation_name_the_key() {
        let c = HealthConfig::default();
        assert_eq!(
            (c.suspect_after, c.dead_after, c.drain_timeout),
            (3 * S, 5 * S, 300 * S)
        );
        assert_eq!(c.validate(), Ok(()));

        let zero = HealthConfig {
            suspect_after: Duration::ZERO,
            ..c
        };
        assert_eq!(zero.validate().map_err(|e| e.key), Err("suspect_after"));
        for dead_after in [3 * S, 2 * S] {
            let e = HealthConfig { dead_after, ..c }
                .validate()
                .expect_err("dead_after not past suspect_after");
            assert_eq!(e.key, "dead_after");
            assert!(e.to_string().contains("suspect_after"), "{e}");
        }
        let instant_drain = HealthConfig {
            drain_timeout: Duration::ZERO,
            ..c
        };
        assert_eq!(
            instant_drain.validate(),
            Ok(()),
            "a zero drain ends sessions at once"
        );
    }

    #[test]
    fn heartbeats_keep_a_node_up() {
        let t0 = t0();
        let mut h = machine(t0);
        for i in 1..=60 {
            let now = t0 + i * S;
            assert_eq!(h.tick(now), []);
            assert_eq!(h.handle_heartbeat(now), []);
        }
        assert_eq!(h.state(), Up);
        assert_eq!(h.poll_timeout(), Some(t0 + 63 * S));
    }

    /// Suspect exactly at 3 s of silence and dead exactly at 5 s, not a nanosecond before.
    #[test]
    fn silence_boundaries_are_exact() {
        let t0 = t0();
        let mut h = machine(t0);
        assert_eq!(h.poll_timeout(), Some(t0 + 3 * S));
        assert_eq!(h.tick(t0 + 3 * S - NS), []);
        assert_eq!(h.state(), Up);
        assert_eq!(
            changes(&h.tick(t0 + 3 * S)),
            [(Up, Suspect, Cause::Silence(3 * S))]
        );
        assert_eq!(h.poll_timeout(), Some(t0 + 5 * S));
        assert_eq!(h.tick(t0 + 5 * S - NS), []);
        assert_eq!(h.state(), Suspect);
        assert_eq!(
            changes(&h.tick(t0 + 5 * S)),
            [(Suspect, Dead, Cause::Silence(5 * S))]
        );
        assert_eq!(h.state(), Dead);
        assert_eq!(h.poll_timeout(), None);
    }

    #[test]
    fn a_suspect_node_heard_from_is_up_again() {
        let t0 = t0();
        let mut h = machine(t0);
        h.tick(t0 + 3 * S);
        let events = h.handle_heartbeat(t0 + 4 * S);
        assert_eq!(changes(&events), [(Suspect, Up, Cause::Heartbeat)]);
        assert_eq!(
            events[0],
            HealthEvent::Changed {
                node: id("n1"),
                incarnation: Incarnation(1),
                from: Suspect,
                to: Up,
                cause: Cause::Heartbeat
            }
        );
        // Silence is counted afresh from the heartbeat.
        assert_eq!(h.poll_timeout(), Some(t0 + 7 * S));
        assert_eq!(h.tick(t0 + 7 * S - NS), []);
        assert_eq!(changes(&h.tick(t0 + 7 * S))[0].1, Suspect);
    }

    /// A tick that comes late reports every deadline it passed, in order.
    #[test]
    fn a_late_tick_reports_each_transition() {
        let t0 = t0();
        let mut h = machine(t0);
        assert_eq!(
            changes(&h.tick(t0 + 60 * S)),
            [
                (Up, Suspect, Cause::Silence(3 * S)),
                (Suspect, Dead, Cause::Silence(5 * S))
            ]
        );
    }

    /// A heartbeat processed before the tick that should have preceded it: the timeouts due
    /// before it apply first, so the result is what a punctual tick would have given.
    #[test]
    fn a_late_heartbeat_finds_the_deadlines_applied() {
        let t0 = t0();
        // Past suspect_after, before dead_after: suspected, then back up.
        let mut h = machine(t0);
        assert_eq!(
            changes(&h.handle_heartbeat(t0 + 4 * S)),
            [
                (Up, Suspect, Cause::Silence(3 * S)),
                (Suspect, Up, Cause::Heartbeat)
            ]
        );
        assert_eq!(h.state(), Up);

        // Past dead_after: dead, and the heartbeat cannot revive it.
        let mut h = machine(t0);
        assert_eq!(
            changes(&h.handle_heartbeat(t0 + 5 * S)),
            [
                (Up, Suspect, Cause::Silence(3 * S)),
                (Suspect, Dead, Cause::Silence(5 * S))
            ]
        );
        assert_eq!(h.state(), Dead);
    }

    /// A message stamped before the last one (queued behind it) does not pull the silence
    /// deadline back.
    #[test]
    fn an_older_heartbeat_does_not_move_the_clock_back() {
        let t0 = t0();
        let mut h = machine(t0);
        h.handle_heartbeat(t0 + 2 * S);
        h.handle_heartbeat(t0 + S);
        assert_eq!(h.last_heard(), t0 + 2 * S);
        assert_eq!(h.poll_timeout(), Some(t0 + 5 * S));
    }

    #[test]
    fn dead_is_final() {
        let t0 = t0();
        let mut h = machine(t0);
        h.tick(t0 + 5 * S);
        for i in 6..10 {
            let now = t0 + i * S;
            assert_eq!(h.handle_heartbeat(now), []);
            assert_eq!(h.drain(now), []);
            assert_eq!(h.undrain(now), []);
            assert_eq!(h.tick(now), []);
            assert_eq!(h.end(Cause::Replaced), []);
        }
        assert_eq!(h.state(), Dead);
        assert!(!h.is_draining());
    }

    #[test]
    fn drain_holds_while_heartbeating_then_expires_once() {
        let t0 = t0();
        let mut h = machine(t0);
        assert_eq!(changes(&h.drain(t0)), [(Up, Draining, Cause::Drain)]);
        assert!(h.is_draining());
        // Draining again keeps the first deadline.
        assert_eq!(h.drain(t0 + 2 * S), []);
        let mut total = 0;
        for i in 1..=400 {
            let now = t0 + i * S;
            let mut events = h.handle_heartbeat(now);
            events.extend(h.tick(now));
            assert_eq!(changes(&events), [], "second {i}");
            let n = expired(&events);
            if n > 0 {
                assert_eq!(i, 300, "expires at drain_timeout");
                assert_eq!(
                    events,
                    [HealthEvent::DrainExpired {
                        node: id("n1"),
                        incarnation: Incarnation(1)
                    }]
                );
            }
            total += n;
        }
        assert_eq!(total, 1, "reported once");
        assert_eq!(h.state(), Draining, "still draining after the deadline");
        assert_eq!(
            changes(&h.undrain(t0 + 401 * S)),
            [(Draining, Up, Cause::Undrain)]
        );
        assert_eq!(h.undrain(t0 + 401 * S), [], "undrain of an undrained node");
        // A new drain has a new deadline.
        h.drain(t0 + 401 * S);
        assert_eq!(
            h.poll_timeout(),
            Some(t0 + 403 * S),
            "the suspect deadline comes first"
        );
        let events: Vec<_> = (402..=701)
            .flat_map(|i| h.handle_heartbeat(t0 + i * S))
            .collect();
        assert_eq!(expired(&events), 1);
        assert_eq!(changes(&events), []);
    }

    #[test]
    fn drain_deadline_is_exact() {
        let t0 = t0();
        let config = HealthConfig {
            drain_timeout: 2 * S,
            ..HealthConfig::default()
        };
        let mut h = NodeHealth::new(id("n1"), Incarnation(1), config, t0);
        h.drain(t0);
        assert_eq!(h.poll_timeout(), Some(t0 + 2 * S));
        assert_eq!(h.tick(t0 + 2 * S - NS), []);
        assert_eq!(expired(&h.tick(t0 + 2 * S)), 1);
        assert_eq!(h.poll_timeout(), Some(t0 + 3 * S), "then only silence");
    }

    #[test]
    fn a_zero_drain_timeout_expires_at_once() {
        let t0 = t0();
        let config = HealthConfig {
            drain_timeout: Duration::ZERO,
            ..HealthConfig::default()
        };
        let mut h = NodeHealth::new(id("n1"), Incarnation(1), config, t0);
        let events = h.drain(t0);
        assert_eq!(changes(&events), [(Up, Draining, Cause::Drain)]);
        assert_eq!(expired(&events), 1);
    }

    /// A draining node that goes silent is suspected and dies like any other; heard from again
    /// while suspect, it is back to draining, not up.
    #[test]
    fn a_silent_draining_node_is_suspected_and_returns_to_draining() {
        let t0 = t0();
        let mut h = machine(t0);
        h.drain(t0);
        assert_eq!(
            changes(&h.tick(t0 + 3 * S)),
            [(Draining, Suspect, Cause::Silence(3 * S))]
        );
        assert!(h.is_draining());
        assert_eq!(
            changes(&h.handle_heartbeat(t0 + 4 * S)),
            [(Suspect, Draining, Cause::Heartbeat)]
        );
        assert_eq!(
            changes(&h.tick(t0 + 9 * S)),
            [
                (Draining, Suspect, Cause::Silence(3 * S)),
                (Suspect, Dead, Cause::Silence(5 * S))
            ]
        );
        assert_eq!(
            h.tick(t0 + 400 * S),
            [],
            "a dead node's drain never expires"
        );
    }

    /// Drained while suspect: the state stays suspect until the node is heard from.
    #[test]
    fn drain_and_undrain_of_a_suspect_node() {
        let t0 = t0();
        let mut h = machine(t0);
        h.tick(t0 + 3 * S);
        assert_eq!(h.drain(t0 + 3 * S), [], "no visible change");
        assert!(h.is_draining());
        assert_eq!(
            changes(&h.handle_heartbeat(t0 + 4 * S)),
            [(Suspect, Draining, Cause::Heartbeat)]
        );
        h.tick(t0 + 7 * S);
        assert_eq!(h.undrain(t0 + 7 * S), []);
        assert_eq!(
            changes(&h.handle_heartbeat(t0 + 8 * S)),
            [(Suspect, Up, Cause::Heartbeat)]
        );
    }

    /// The deadline falls while the node is suspected but alive: its sessions may still run,
    /// so the expiry is reported, in time order after the suspicion.
    #[test]
    fn drain_expiry_while_suspect_comes_in_time_order() {
        let t0 = t0();
        let config = HealthConfig {
            drain_timeout: 4 * S,
            ..HealthConfig::default()
        };
        let mut h = NodeHealth::new(id("n1"), Incarnation(1), config, t0);
        h.drain(t0);
        let events = h.tick(t0 + 10 * S);
        assert!(
            matches!(
                events.as_slice(),
                [
                    HealthEvent::Changed { to: Suspect, .. },
                    HealthEvent::DrainExpired { .. },
                    HealthEvent::Changed { to: Dead, .. }
                ]
            ),
            "{events:?}"
        );
        // Dead before the deadline: nothing to end.
        let config = HealthConfig {
            drain_timeout: 5 * S,
            ..HealthConfig::default()
        };
        let mut h = NodeHealth::new(id("n1"), Incarnation(1), config, t0);
        h.drain(t0);
        assert_eq!(expired(&h.tick(t0 + 10 * S)), 0);
    }

    /// Timeouts too long to represent are never reached; nothing overflows.
    #[test]
    fn huge_timeouts_do_not_overflow() {
        let t0 = t0();
        let config = HealthConfig {
            suspect_after: Duration::MAX / 2,
            dead_after: Duration::MAX,
            drain_timeout: Duration::MAX,
        };
        assert_eq!(config.validate(), Ok(()));
        let mut h = NodeHealth::new(id("n1"), Incarnation(1), config, t0);
        assert_eq!(changes(&h.drain(t0)), [(Up, Draining, Cause::Drain)]);
        assert_eq!(h.tick(t0 + 1000 * S), []);
        assert_eq!(h.handle_heartbeat(t0 + 2000 * S), []);
        assert_eq!(h.poll_timeout(), None);
        assert_eq!(h.state(), Draining);
    }

    #[test]
    fn the_table_numbers_incarnations_and_replaces_live_ones() {
        let t0 = t0();
        let mut table = HealthTable::new(HealthConfig::default());
        let n1 = id("n1");
        let (first, events) = table.register(n1.clone(), t0);
        assert_eq!((first, events), (Incarnation(1), vec![]));
        assert_eq!(table.state(&n1), Some((Incarnation(1), Up)));

        // Reconnects before anyone noticed it went away: the old incarnation ends now.
        let (second, events) = table.register(n1.clone(), t0 + S);
        assert_eq!(second, Incarnation(2));
        assert_eq!(
            events,
            [HealthEvent::Changed {
                node: n1.clone(),
                incarnation: Incarnation(1),
                from: Up,
                to: Dead,
                cause: Cause::Replaced
            }]
        );
        // The old connection's last messages are refused, the new one's taken.
        assert_eq!(
            table.handle_heartbeat(&n1, first, t0 + 2 * S),
            Err(HealthError::StaleIncarnation {
                node: n1.clone(),
                given: first,
                current: second
            })
        );
        assert_eq!(table.handle_heartbeat(&n1, second, t0 + 2 * S), Ok(vec![]));
        assert_eq!(
            table.handle_heartbeat(&id("ghost"), Incarnation(1), t0),
            Err(HealthError::UnknownNode(id("ghost")))
        );
        assert!(table.drain(&id("ghost"), t0).is_err());
        assert!(table.undrain(&id("ghost"), t0).is_err());

        // Dead by silence, then back: a third incarnation, no second death reported.
        assert_eq!(changes(&table.tick(t0 + 7 * S)).len(), 2);
        let (third, events) = table.register(n1.clone(), t0 + 8 * S);
        assert_eq!((third, events), (Incarnation(3), vec![]));

        // Removal ends a live incarnation; numbers never repeat after it.
        assert_eq!(changes(&table.remove(&n1)), [(Up, Dead, Cause::Replaced)]);
        assert_eq!(table.state(&n1), None);
        assert_eq!(table.register(n1.clone(), t0 + 9 * S).0, Incarnation(4));
    }

    #[test]
    fn the_table_ticks_every_node_and_knows_the_next_deadline() {
        let t0 = t0();
        let mut table = HealthTable::new(HealthConfig::default());
        let (a, b) = (id("a"), id("b"));
        let (ia, _) = table.register(a.clone(), t0);
        table.register(b.clone(), t0 + S);
        assert_eq!(table.poll_timeout(), Some(t0 + 3 * S));
        table.handle_heartbeat(&a, ia, t0 + 2 * S).expect("known");
        assert_eq!(table.poll_timeout(), Some(t0 + 4 * S));
        assert_eq!(
            changes(&table.drain(&a, t0 + 2 * S).expect("known")),
            [(Up, Draining, Cause::Drain)]
        );
        let events = table.tick(t0 + 4 * S);
        assert!(
            matches!(
                events.as_slice(),
                [HealthEvent::Changed { node, to: Suspect, .. }] if *node == b
            ),
            "{events:?}"
        );
        let states: Vec<_> = table
            .iter()
            .map(|h| (h.node().clone(), h.state()))
            .collect();
        assert_eq!(states, [(a.clone(), Draining), (b, Suspect)]);
        assert_eq!(
            changes(&table.undrain(&a, t0 + 4 * S).expect("known")),
            [(Draining, Up, Cause::Undrain)]
        );
        table.tick(t0 + 60 * S);
        assert_eq!(table.poll_timeout(), None, "everyone is dead");
    }
}
