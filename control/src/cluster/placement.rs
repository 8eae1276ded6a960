//! Which media node a room goes to: rendezvous (highest random weight) hashing of the room over
//! the nodes that are up, with a load bound (consistent hashing with bounded loads). Pure: the
//! caller passes the nodes as they are now and the room's current node, and gets a decision.
//!
//! Every room ranks the nodes by a hash of (room, node) that is the same in every process and
//! version, and takes the first that can have it. Adding a node moves only the rooms that rank
//! it first; removing one moves only its own rooms. A node loaded past `(1 + load_slack)` times
//! the average, or without room left below its capacity, is passed over for the next in the
//! room's order, so a few hot rooms cannot pile onto one node. A room that already lives on a
//! node stays there while the node is up. A draining node takes nothing new: its sessions go
//! on, and the room's new sessions are placed as if it lived nowhere (until rooms cascade
//! between nodes, they meet the room's media only once it re-publishes there).

use sfu_core::ids::{NodeId, RoomId};

use super::SettingError;
use super::health::NodeState;

/// How much imbalance placement tolerates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacementConfig {
    /// ε of bounded-load hashing: a node whose load is above `(1 + load_slack)` times the
    /// average load of the nodes that have room for the room being placed (counting it) takes
    /// no new rooms. 0 balances strictly; larger values keep more rooms on their first-choice node;
    /// `f64::INFINITY` switches the bound off (pure rendezvous hashing).
    pub load_slack: f64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        // 1.25 × average is the usual choice for bounded loads: at most a quarter above the
        // mean, while a node that joins or leaves still moves few rooms besides its own.
        Self { load_slack: 0.25 }
    }
}

impl PlacementConfig {
    /// Check the setting; the error names it.
    pub fn validate(&self) -> Result<(), SettingError> {
        if self.load_slack.is_nan() || self.load_slack < 0.0 {
            return Err(SettingError::new(
                "load_slack",
                format!("must be 0 or more, got {}", self.load_slack),
            ));
        }
        Ok(())
    }
}

/// One node as placement sees it at the time of the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub id: NodeId,
    /// Only `Up` nodes take new sessions; a `Draining` node's sessions go on, nothing new
    /// lands there.
    pub state: NodeState,
    /// Where the node runs (`"eu-west"`), if the operator said.
    pub region: Option<String>,
    /// Its current load, in the caller's unit (sessions, or a weight per room).
    pub load: u64,
    /// The most load it may carry, in the same unit: a room that would take it past this goes
    /// elsewhere. `u64::MAX` for no limit.
    pub capacity: u64,
}

/// A room to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomRequest<'a> {
    /// The room's name: the key of its rendezvous order.
    pub room: &'a RoomId,
    /// The node the room lives on now, if it lives anywhere.
    pub current: Option<&'a NodeId>,
    /// The load the room adds to the node that takes it (1 to count rooms).
    pub weight: u64,
    /// Prefer nodes of this region; others are used when none of it can take the room.
    pub region: Option<&'a str>,
}

impl<'a> RoomRequest<'a> {
    /// A room that lives nowhere yet, of weight 1, with no region preference.
    pub fn new(room: &'a RoomId) -> Self {
        Self {
            room,
            current: None,
            weight: 1,
            region: None,
        }
    }

    /// The room lives on `node` now.
    pub fn on(self, node: &'a NodeId) -> Self {
        Self {
            current: Some(node),
            ..self
        }
    }

    /// The room adds `weight` to its node's load.
    pub fn weighing(self, weight: u64) -> Self {
        Self { weight, ..self }
    }

    /// Prefer nodes of `region`.
    pub fn in_region(self, region: &'a str) -> Self {
        Self {
            region: Some(region),
            ..self
        }
    }
}

/// How a room got its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// It already lived there, and the node is up.
    Kept,
    /// It lived nowhere.
    New,
    /// Its node is dead, gone or draining: its new sessions go here (a draining node's
    /// sessions go on there until they end).
    Moved { from: NodeId },
    /// Its node is up but full, or outside the region asked for while a node of that region
    /// has room: this session goes here, and the room spans both nodes (relayed between
    /// them, docs/cascade.md).
    Spilled { from: NodeId },
}

/// Where a room goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The node the room is on from now.
    pub node: NodeId,
    /// Whether it was already there.
    pub placed: Placed,
    /// A region was asked for and the node is not in it (none of the region could take it).
    pub outside_region: bool,
}

/// Why no node was found. The text is meant for the client (a `503` body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlaceError {
    #[error("no media node is registered")]
    NoNodes,
    #[error("no media node is up ({draining} draining, {suspect} not answering, {dead} dead)")]
    NoneUp {
        draining: usize,
        suspect: usize,
        dead: usize,
    },
    #[error("every media node that is up is at its capacity ({up} up)")]
    AllFull { up: usize },
    /// Re-placing the room now would split it if its node comes back: the caller should ask
    /// again once the node is up or declared dead (`dead_after`).
    #[error("the media node of room {room} is not answering; retry in a few seconds")]
    NodeSuspect { room: RoomId, node: NodeId },
}

/// The placement policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    config: PlacementConfig,
}

impl Placement {
    /// The policy with `config`, checked.
    pub fn new(config: PlacementConfig) -> Result<Self, SettingError> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The settings in force.
    pub fn config(&self) -> &PlacementConfig {
        &self.config
    }

    /// Where `request`'s room goes, given every node as it is now.
    ///
    /// A room on a node that is `Up` stays there, unless the node has no room left for the
    /// session or a region is asked for that the node is not in and a node of that region has
    /// room: then the session spills to the first node that can have it (as below), and the
    /// room spans both. A room on a `Suspect`
    /// node gets [`PlaceError::NodeSuspect`] (placing it elsewhere now would split it if the
    /// node answers again). A room on a `Draining`, `Dead` or unlisted node, or on none, goes
    /// to the first `Up` node in its rendezvous order that has room below its capacity and is
    /// not above the load bound, preferring the requested region: the nodes of that region
    /// first (the bound's average taken among them), then the others. A drain thus sends
    /// nothing new to the node: the sessions it holds go on, the room's new ones land on an
    /// `Up` node.
    pub fn place(
        &self,
        nodes: &[NodeSnapshot],
        request: &RoomRequest<'_>,
    ) -> Result<Decision, PlaceError> {
        let outside = |node: &NodeSnapshot| {
            request
                .region
                .is_some_and(|r| node.region.as_deref() != Some(r))
        };
        let mut placed = Placed::New;
        if let Some(current) = request.current {
            match nodes.iter().find(|n| &n.id == current) {
                Some(node) if node.state == NodeState::Up => {
                    let fits =
                        |n: &NodeSnapshot| n.load.saturating_add(request.weight) <= n.capacity;
                    let region_elsewhere = outside(node)
                        && nodes
                            .iter()
                            .any(|n| n.state == NodeState::Up && !outside(n) && fits(n));
                    if fits(node) && !region_elsewhere {
                        return Ok(Decision {
                            node: node.id.clone(),
                            placed: Placed::Kept,
                            outside_region: outside(node),
                        });
                    }
                    placed = Placed::Spilled {
                        from: current.clone(),
                    };
                }
                Some(node) if node.state == NodeState::Suspect => {
                    return Err(PlaceError::NodeSuspect {
                        room: request.room.clone(),
                        node: node.id.clone(),
                    });
                }
                _ => {
                    placed = Placed::Moved {
                        from: current.clone(),
                    }
                }
            }
        }
        self.choose_up(nodes, request, placed)
    }

    /// The first `Up` node in the room's rendezvous order that can have it, preferring the
    /// requested region.
    fn choose_up(
        &self,
        nodes: &[NodeSnapshot],
        request: &RoomRequest<'_>,
        placed: Placed,
    ) -> Result<Decision, PlaceError> {
        let outside = |node: &NodeSnapshot| {
            request
                .region
                .is_some_and(|r| node.region.as_deref() != Some(r))
        };
        if nodes.is_empty() {
            return Err(PlaceError::NoNodes);
        }
        let up = || nodes.iter().filter(|n| n.state == NodeState::Up);
        let count = |state| nodes.iter().filter(|n| n.state == state).count();
        let up_count = up().count();
        if up_count == 0 {
            return Err(PlaceError::NoneUp {
                draining: count(NodeState::Draining),
                suspect: count(NodeState::Suspect),
                dead: count(NodeState::Dead),
            });
        }
        let chosen = match request.region {
            Some(region) => self
                .choose(
                    up().filter(|n| n.region.as_deref() == Some(region)),
                    request,
                )
                .or_else(|| {
                    self.choose(
                        up().filter(|n| n.region.as_deref() != Some(region)),
                        request,
                    )
                }),
            None => self.choose(up(), request),
        };
        let node = chosen.ok_or(PlaceError::AllFull { up: up_count })?;
        Ok(Decision {
            node: node.id.clone(),
            placed,
            outside_region: outside(node),
        })
    }

    /// The highest-ranked of `candidates` for the room that has room for it below its
    /// capacity and is within the load bound. The bound's average is taken over the nodes
    /// with room (counting the room being placed), so the least loaded of them is always
    /// within it: the bound spreads rooms but never refuses one that some node can take.
    fn choose<'n>(
        &self,
        candidates: impl Iterator<Item = &'n NodeSnapshot> + Clone,
        request: &RoomRequest<'_>,
    ) -> Option<&'n NodeSnapshot> {
        let fits = |node: &&NodeSnapshot| node.load.saturating_add(request.weight) <= node.capacity;
        let (n, total) = candidates
            .clone()
            .filter(fits)
            .fold((0u64, request.weight), |(n, total), node| {
                (n + 1, total.saturating_add(node.load))
            });
        // load <= (1 + ε) · total / n, compared without dividing. f64 is exact for loads
        // below 2^53 and rounds harmlessly above.
        let limit = (1.0 + self.config.load_slack) * total as f64;
        let within_bound =
            |node: &&NodeSnapshot| limit.is_infinite() || node.load as f64 * n as f64 <= limit;
        // The first eligible node in rendezvous order is the eligible node with the highest
        // score: one pass, no sort. Ties (a 64-bit collision) go to the smaller id.
        candidates
            .filter(fits)
            .filter(within_bound)
            .map(|node| (score(request.room, &node.id), node))
            .max_by(|(sa, a), (sb, b)| sa.cmp(sb).then_with(|| b.id.cmp(&a.id)))
            .map(|(_, node)| node)
    }
}

/// The rendezvous score of `node` for `room`: higher ranks first. It is part of the cluster's
/// behaviour across processes and versions (control instances must agree, and a change would
/// move rooms), so it is spelled out here rather than taken from a hasher whose algorithm may
/// change: 64-bit FNV-1a over the room name, a 0xff byte (never in a name) and the node name,
/// then MurmurHash3's 64-bit finalizer, which FNV lacks, so that nodes named alike
/// (`node-1`, `node-2`) still rank independently.
pub fn score(room: &RoomId, node: &NodeId) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in room
        .as_str()
        .as_bytes()
        .iter()
        .chain(&[0xff])
        .chain(node.as_str().as_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn node(name: &str) -> NodeId {
        name.parse().expect("valid node id")
    }

    fn room(name: &str) -> RoomId {
        name.parse().expect("valid room id")
    }

    fn up(name: &str) -> NodeSnapshot {
        NodeSnapshot {
            id: node(name),
            state: NodeState::Up,
            region: None,
            load: 0,
            capacity: u64::MAX,
        }
    }

    fn with(
        name: &str,
        state: NodeState,
        region: Option<&str>,
        load: u64,
        capacity: u64,
    ) -> NodeSnapshot {
        NodeSnapshot {
            id: node(name),
            state,
            region: region.map(str::to_string),
            load,
            capacity,
        }
    }

    fn policy(load_slack: f64) -> Placement {
        Placement::new(PlacementConfig { load_slack }).expect("valid slack")
    }

    /// Pure rendezvous hashing: no load bound, no capacity.
    fn pure() -> Placement {
        policy(f64::INFINITY)
    }

    /// Places `rooms` one by one on `nodes`, adding each room's weight to its node's load, as
    /// a caller does. Returns each room's node.
    fn place_all(
        placement: &Placement,
        nodes: &mut [NodeSnapshot],
        rooms: &[RoomId],
        weight: u64,
    ) -> Vec<NodeId> {
        rooms
            .iter()
            .map(|r| {
                let d = placement
                    .place(nodes, &RoomRequest::new(r).weighing(weight))
                    .expect("a node fits");
                let chosen = nodes
                    .iter_mut()
                    .find(|n| n.id == d.node)
                    .expect("the decision names a listed node");
                chosen.load += weight;
                d.node
            })
            .collect()
    }

    fn rooms(n: usize) -> Vec<RoomId> {
        (0..n).map(|i| room(&format!("room-{i}"))).collect()
    }

    /// The score function is pinned: control instances of different versions must rank nodes
    /// alike. Expected values computed independently with Python:
    /// `fnv1a(b"demo" + b"\xff" + b"node-1")`, then MurmurHash3 fmix64, in 64-bit arithmetic.
    #[test]
    fn score_is_pinned() {
        assert_eq!(score(&room("demo"), &node("node-1")), 0xaf3a_ecc1_743d_fe34);
        assert_eq!(score(&room("demo"), &node("node-2")), 0xd505_c8b6_13e7_bce8);
        // The FNV-1a part is the same hash as sfu-proto's ParticipantId.
        let mut h = FNV_OFFSET;
        for &b in b"a" {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        assert_eq!(h, sfu_core::proto::ids::fnv1a(b"a"));
    }

    #[test]
    fn config_validation_names_the_key() {
        assert_eq!(PlacementConfig::default().load_slack, 0.25);
        for bad in [-0.1, f64::NAN] {
            let e = Placement::new(PlacementConfig { load_slack: bad }).expect_err("invalid");
            assert_eq!(e.key, "load_slack");
        }
        assert!(Placement::new(PlacementConfig { load_slack: 0.0 }).is_ok());
        assert!(
            Placement::new(PlacementConfig {
                load_slack: f64::INFINITY
            })
            .is_ok()
        );
    }

    /// 1000 rooms on 3 nodes: pure rendezvous hashing spreads them evenly, the load bound
    /// evens them further.
    #[test]
    fn spread_of_1000_rooms_on_3_nodes() {
        let rooms = rooms(1000);
        for (what, slack) in [
            ("pure rendezvous", f64::INFINITY),
            ("bounded, slack 0.25", 0.25),
            ("bounded, slack 0.05", 0.05),
        ] {
            let mut nodes = vec![up("node-a"), up("node-b"), up("node-c")];
            place_all(&policy(slack), &mut nodes, &rooms, 1);
            let loads: Vec<u64> = nodes.iter().map(|n| n.load).collect();
            let (max, min) = (loads.iter().max(), loads.iter().min());
            let (Some(&max), Some(&min)) = (max, min) else {
                unreachable!("three nodes")
            };
            let ratio = max as f64 / min as f64;
            println!("{what}: rooms per node {loads:?}, max/min {ratio:.3}");
            assert_eq!(loads.iter().sum::<u64>(), 1000);
            // Hashing alone: about ±10 % around 333 for 1000 rooms (binomial spread); the
            // bound caps the largest at (1 + slack) × 333 + 1.
            let max_ratio = if slack.is_infinite() {
                1.3
            } else {
                1.0 + 2.0 * slack
            };
            assert!(ratio <= max_ratio, "{what}: {loads:?}");
            if slack.is_finite() {
                assert!(
                    max as f64 <= (1.0 + slack) * 1000.0 / 3.0 + 1.0,
                    "{what}: {loads:?}"
                );
            }
        }
    }

    #[test]
    fn a_room_stays_on_its_node_while_it_is_up_and_leaves_a_draining_one() {
        let r = room("standup");
        let nodes = vec![
            with("a", NodeState::Up, None, 1000, 10),
            with("b", NodeState::Draining, Some("eu"), 0, 10),
            with("c", NodeState::Suspect, None, 0, 10),
            with("d", NodeState::Dead, None, 0, 10),
            with("e", NodeState::Up, None, 0, 10),
        ];
        let p = policy(0.25);
        // Its node is full: the session spills to a node that is up with room.
        let d = p
            .place(&nodes, &RoomRequest::new(&r).on(&node("a")))
            .expect("spilled");
        assert_eq!(
            (d.node, d.placed),
            (node("e"), Placed::Spilled { from: node("a") })
        );
        // Kept on its node while it has room, whatever the load bound says.
        let e = p
            .place(&nodes, &RoomRequest::new(&r).on(&node("e")))
            .expect("kept");
        assert_eq!((e.node, e.placed), (node("e"), Placed::Kept));
        // A draining node takes nothing new: the room's new sessions go to a node up.
        let d = p
            .place(&nodes, &RoomRequest::new(&r).on(&node("b")).in_region("eu"))
            .expect("moved off the draining node");
        assert_eq!(
            (d.node, d.placed, d.outside_region),
            (node("e"), Placed::Moved { from: node("b") }, true)
        );
        // A suspect node's room waits rather than splits.
        let e = p
            .place(&nodes, &RoomRequest::new(&r).on(&node("c")))
            .expect_err("suspect");
        assert_eq!(
            e,
            PlaceError::NodeSuspect {
                room: r.clone(),
                node: node("c")
            }
        );
        assert!(e.to_string().contains("retry"), "{e}");
        // A dead or vanished node's room moves to the one node up with room.
        for gone in ["d", "zz"] {
            let d = p
                .place(&nodes, &RoomRequest::new(&r).on(&node(gone)))
                .expect("moved");
            assert_eq!(
                (d.node, d.placed),
                (node("e"), Placed::Moved { from: node(gone) })
            );
        }
    }

    #[test]
    fn a_session_asking_for_another_region_spills_to_a_node_there() {
        let r = room("webinar");
        let nodes = vec![
            with("a1", NodeState::Up, Some("a"), 5, 10),
            with("b1", NodeState::Up, Some("b"), 0, 10),
            with("b2", NodeState::Up, Some("b"), 0, 10),
        ];
        let p = policy(0.25);
        let on_a = RoomRequest::new(&r).on(&nodes[0].id);
        // Its own region, or one without a node: it stays.
        for region in ["a", "c"] {
            let d = p.place(&nodes, &on_a.in_region(region)).expect("kept");
            assert_eq!(d.placed, Placed::Kept, "{region}");
        }
        // Region b: a node of b, the same one for every session of the room.
        let d = p.place(&nodes, &on_a.in_region("b")).expect("spilled");
        assert_eq!(d.placed, Placed::Spilled { from: node("a1") });
        assert!(!d.outside_region);
        let again = p.place(&nodes, &on_a.in_region("b")).expect("spilled");
        assert_eq!(again.node, d.node);
        // Region b full: the room stays on its node, outside the region asked for.
        let full = vec![
            nodes[0].clone(),
            with("b1", NodeState::Up, Some("b"), 10, 10),
        ];
        let d = p.place(&full, &on_a.in_region("b")).expect("kept");
        assert_eq!((d.placed, d.outside_region), (Placed::Kept, true));
    }

    #[test]
    fn errors_name_the_reason() {
        let r = room("r");
        let p = policy(0.25);
        let e = p.place(&[], &RoomRequest::new(&r)).expect_err("no nodes");
        assert_eq!(e, PlaceError::NoNodes);
        assert_eq!(e.to_string(), "no media node is registered");

        let nodes = [
            with("a", NodeState::Draining, None, 0, 10),
            with("b", NodeState::Suspect, None, 0, 10),
            with("c", NodeState::Dead, None, 0, 10),
            with("d", NodeState::Dead, None, 0, 10),
        ];
        let e = p.place(&nodes, &RoomRequest::new(&r)).expect_err("none up");
        assert_eq!(
            e.to_string(),
            "no media node is up (1 draining, 1 not answering, 2 dead)"
        );

        let nodes = [
            with("a", NodeState::Up, None, 10, 10),
            with("b", NodeState::Up, None, 9, 10),
            with("c", NodeState::Draining, None, 0, 10),
        ];
        assert!(
            p.place(&nodes, &RoomRequest::new(&r)).is_ok(),
            "b has room for 1"
        );
        let e = p
            .place(&nodes, &RoomRequest::new(&r).weighing(2))
            .expect_err("full");
        assert_eq!(e, PlaceError::AllFull { up: 2 });
        assert_eq!(
            e.to_string(),
            "every media node that is up is at its capacity (2 up)"
        );
    }

    /// The bound passes over a node loaded past (1 + ε) × average for the next in the room's
    /// order; with the bound off the room goes to its first choice whatever the load.
    #[test]
    fn the_bound_passes_over_an_overloaded_first_choice() {
        let r = room("hot");
        let mut nodes = vec![up("a"), up("b"), up("c")];
        let first = pure()
            .place(&nodes, &RoomRequest::new(&r))
            .expect("placed")
            .node;
        for n in &mut nodes {
            if n.id == first {
                n.load = 100;
            }
        }
        // Average (100 + 1) / 3 ≈ 33.7: 100 is far above 1.25 × that.
        let d = policy(0.25)
            .place(&nodes, &RoomRequest::new(&r))
            .expect("placed");
        assert_ne!(d.node, first);
        assert_eq!(
            pure()
                .place(&nodes, &RoomRequest::new(&r))
                .expect("placed")
                .node,
            first
        );
    }

    #[test]
    fn region_preference_and_fallback() {
        let r = room("r");
        let p = policy(0.25);
        let mut nodes = vec![
            with("eu-1", NodeState::Up, Some("eu"), 0, 2),
            with("us-1", NodeState::Up, Some("us"), 0, 2),
            with("us-2", NodeState::Up, Some("us"), 0, 2),
            with("any", NodeState::Up, None, 0, 2),
        ];
        let d = p
            .place(&nodes, &RoomRequest::new(&r).in_region("eu"))
            .expect("placed");
        assert_eq!((d.node.as_str(), d.outside_region), ("eu-1", false));
        nodes[0].load = 2;
        let d = p
            .place(&nodes, &RoomRequest::new(&r).in_region("eu"))
            .expect("placed");
        assert!(d.outside_region, "eu is full: {d:?}");
        assert_ne!(d.node.as_str(), "eu-1");
        let d = p
            .place(&nodes, &RoomRequest::new(&r).in_region("mars"))
            .expect("placed");
        assert!(d.outside_region, "no such region");
        let d = p.place(&nodes, &RoomRequest::new(&r)).expect("placed");
        assert!(!d.outside_region, "no region asked");
    }

    fn state() -> impl Strategy<Value = NodeState> {
        prop_oneof![
            4 => Just(NodeState::Up),
            1 => Just(NodeState::Draining),
            1 => Just(NodeState::Suspect),
            1 => Just(NodeState::Dead),
        ]
    }

    fn region() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("eu".to_string())),
            Just(Some("us".to_string())),
            Just(Some("ap".to_string())),
        ]
    }

    /// 1-12 nodes with distinct names and any state, region, load and capacity.
    fn cluster() -> impl Strategy<Value = Vec<NodeSnapshot>> {
        prop::collection::btree_map(
            "[a-z]{1,6}-[0-9]{1,2}",
            (state(), region(), 0u64..50, 0u64..60),
            1..12,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(name, (state, region, load, capacity))| NodeSnapshot {
                    id: node(&name),
                    state,
                    region,
                    load,
                    capacity,
                })
                .collect()
        })
    }

    fn room_names() -> impl Strategy<Value = Vec<RoomId>> {
        prop::collection::btree_set("[A-Za-z0-9._-]{1,20}", 1..150)
            .prop_map(|s| s.iter().map(|r| room(r)).collect())
    }

    fn node_names() -> impl Strategy<Value = Vec<NodeId>> {
        prop::collection::btree_set("[a-z0-9.-]{1,10}", 2..10)
            .prop_map(|s| s.iter().map(|n| node(n)).collect())
    }

    /// Each room's node under pure rendezvous hashing on `names`, all up and empty.
    fn pure_assignment(names: &[NodeId], rooms: &[RoomId]) -> Vec<NodeId> {
        let nodes: Vec<_> = names.iter().map(|n| up(n.as_str())).collect();
        rooms
            .iter()
            .map(|r| {
                pure()
                    .place(&nodes, &RoomRequest::new(r))
                    .expect("placed")
                    .node
            })
            .collect()
    }

    proptest! {
        /// (a) Adding a node moves only rooms that now go to it; removing one moves only the
        /// rooms that were on it.
        #[test]
        fn rendezvous_moves_only_what_it_must(
            names in node_names(),
            rooms in room_names(),
            added in "[A-Z]{1,8}",
        ) {
            let before = pure_assignment(&names, &rooms);

            let added = node(&added); // upper case: never among `names`
            let mut grown = names.clone();
            grown.push(added.clone());
            let after = pure_assignment(&grown, &rooms);
            for ((r, old), new) in rooms.iter().zip(&before).zip(&after) {
                prop_assert!(new == old || *new == added, "{r} moved {old} -> {new}");
            }

            let removed = names[0].clone();
            let shrunk: Vec<_> = names[1..].to_vec();
            let after = pure_assignment(&shrunk, &rooms);
            for ((r, old), new) in rooms.iter().zip(&before).zip(&after) {
                if *old != removed {
                    prop_assert_eq!(new, old, "{} moved off a node that stayed", r);
                }
            }
        }

        /// (b) No placement takes a node past its capacity, and `AllFull` only when no node
        /// that is up has room. (d) Every session goes to a node that is up: draining, suspect
        /// and dead nodes are never chosen.
        #[test]
        fn placement_respects_capacity_and_state(
            mut nodes in cluster(),
            rooms in room_names(),
            weight in 1u64..4,
            slack in prop_oneof![Just(0.0), Just(0.25), Just(1.0), Just(f64::INFINITY)],
            current_pick in prop::collection::vec(any::<prop::sample::Index>(), 150),
        ) {
            let p = policy(slack);
            for (r, pick) in rooms.iter().zip(&current_pick) {
                // Half the rooms already live somewhere (any node, in any state).
                let current = (pick.index(2) == 0).then(|| nodes[pick.index(nodes.len())].id.clone());
                let mut request = RoomRequest::new(r).weighing(weight);
                if let Some(c) = &current {
                    request = request.on(c);
                }
                match p.place(&nodes, &request) {
                    Ok(d) => {
                        let Some(chosen) = nodes.iter_mut().find(|n| n.id == d.node) else {
                            return Err(TestCaseError::fail(format!("{d:?} names no listed node")));
                        };
                        prop_assert_eq!(chosen.state, NodeState::Up, "{:?}", d);
                        // Kept or not, a session never takes its node past capacity.
                        prop_assert!(chosen.load + weight <= chosen.capacity, "{:?}", d);
                        if let Placed::Spilled { from } = &d.placed {
                            prop_assert_eq!(Some(from), current.as_ref());
                            prop_assert_ne!(&chosen.id, from);
                        }
                        if d.placed == Placed::Kept {
                            prop_assert_eq!(Some(&chosen.id), current.as_ref());
                        } else {
                            prop_assert!(
                                chosen.load + weight <= chosen.capacity,
                                "{} over capacity: {} + {} > {}",
                                chosen.id, chosen.load, weight, chosen.capacity
                            );
                            chosen.load += weight;
                        }
                    }
                    Err(PlaceError::AllFull { .. }) => {
                        prop_assert!(nodes.iter().all(|n| n.state != NodeState::Up
                            || n.load + weight > n.capacity));
                    }
                    Err(PlaceError::NoneUp { .. }) => {
                        prop_assert!(nodes.iter().all(|n| n.state != NodeState::Up));
                    }
                    Err(PlaceError::NodeSuspect { node, .. }) => {
                        prop_assert_eq!(Some(&node), current.as_ref());
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
                }
            }
        }

        /// (c) Rooms placed one by one never load a node past ceil((1 + ε) · average) + 1.
        #[test]
        fn the_load_bound_holds(
            names in node_names(),
            count in 1usize..400,
            slack in prop_oneof![Just(0.0), Just(0.1), Just(0.25), Just(0.5), Just(1.0)],
        ) {
            let mut nodes: Vec<_> = names.iter().map(|n| up(n.as_str())).collect();
            place_all(&policy(slack), &mut nodes, &rooms(count), 1);
            let average = count as f64 / nodes.len() as f64;
            let bound = ((1.0 + slack) * average).ceil() as u64 + 1;
            for n in &nodes {
                prop_assert!(n.load <= bound, "{} has {} rooms, bound {}", n.id, n.load, bound);
            }
        }

        /// (e) A room goes to a node of its preferred region whenever one of them that is up
        /// has room for it.
        #[test]
        fn the_preferred_region_wins_when_it_has_room(
            nodes in cluster(),
            rooms in room_names(),
            wanted in prop_oneof![Just("eu"), Just("us"), Just("ap")],
            slack in prop_oneof![Just(0.0), Just(0.25), Just(f64::INFINITY)],
        ) {
            let p = policy(slack);
            let region_has_room = nodes.iter().any(|n| {
                n.state == NodeState::Up
                    && n.region.as_deref() == Some(wanted)
                    && n.load < n.capacity
            });
            for r in &rooms {
                match p.place(&nodes, &RoomRequest::new(r).in_region(wanted)) {
                    Ok(d) => {
                        prop_assert_eq!(d.outside_region, !region_has_room, "{:?}", d);
                        let chosen = nodes.iter().find(|n| n.id == d.node);
                        let in_region = chosen.and_then(|n| n.region.as_deref()) == Some(wanted);
                        prop_assert_eq!(in_region, region_has_room);
                    }
                    Err(_) => prop_assert!(!region_has_room),
                }
            }
        }
    }

    /// The same rooms on the same nodes land the same way whatever the order of the node list.
    #[test]
    fn decisions_do_not_depend_on_the_order_of_nodes() {
        let names = ["n1", "n2", "n3", "n4", "n5"];
        let forward: Vec<_> = names.iter().map(|n| up(n)).collect();
        let backward: Vec<_> = names.iter().rev().map(|n| up(n)).collect();
        let rooms = rooms(200);
        let a = pure_assignment(
            &forward.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
            &rooms,
        );
        let b = pure_assignment(
            &backward.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
            &rooms,
        );
        assert_eq!(a, b);
        let spread: BTreeMap<_, usize> = a.iter().fold(BTreeMap::new(), |mut m, n| {
            *m.entry(n.clone()).or_default() += 1;
            m
        });
        assert_eq!(
            spread.len(),
            names.len(),
            "every node gets rooms: {spread:?}"
        );
    }
}
