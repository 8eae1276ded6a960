//! Which media node each peer's session landed on (our control names it in the `X-Sfu-Node`
//! header of the `201 Created`), and the [`Path`] each received packet took: **local** when
//! the subscriber's node is the node of the publisher that sent the packet, **relayed** when
//! they differ (the room spans nodes and one relays the publisher's tracks to the other),
//! **unknown** when the server did not name one of the two. Signaling threads record landings,
//! shards look up a publisher's node per packet (one atomic load), the engine tallies them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::negotiate::{PeerPlan, PeerRole};
use super::report::NodePeers;
use crate::peer::lock;

/// A media node the run met, numbered in the order it was first named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIndex(u32);

/// Where a peer's latest session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing {
    /// No session: not negotiated yet, or its last signaling failed.
    Nowhere,
    /// A session whose node the server did not name (another server, Janus).
    Unnamed,
    Node(NodeIndex),
}

impl Landing {
    pub fn node(self) -> Option<NodeIndex> {
        match self {
            Landing::Node(n) => Some(n),
            Landing::Nowhere | Landing::Unnamed => None,
        }
    }

    fn encode(self) -> u32 {
        match self {
            Landing::Nowhere => 0,
            Landing::Unnamed => 1,
            Landing::Node(n) => n.0.saturating_add(2),
        }
    }

    fn decode(v: u32) -> Self {
        match v {
            0 => Landing::Nowhere,
            1 => Landing::Unnamed,
            n => Landing::Node(NodeIndex(n - 2)),
        }
    }
}

/// How a packet reached its subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Publisher and subscriber on the same node.
    Local,
    /// On different nodes: the packet crossed a relay link.
    Relayed,
    /// A node is not known (not named, or the packet's publisher is not one of this run's).
    Unknown,
}

impl Path {
    /// The path from a publisher's node to a subscriber's.
    pub fn between(subscriber: Option<NodeIndex>, publisher: Option<NodeIndex>) -> Path {
        match (subscriber, publisher) {
            (Some(s), Some(p)) if s == p => Path::Local,
            (Some(_), Some(_)) => Path::Relayed,
            _ => Path::Unknown,
        }
    }
}

/// The landings of a run's peers, shared by its signaling threads (writers), shards and
/// engine (readers).
#[derive(Debug)]
pub struct Placements {
    /// Node names by [`NodeIndex`]; only grows, and only signaling threads take the lock.
    names: Mutex<Vec<String>>,
    /// Per planned peer ([`PeerId`](super::negotiate::PeerId)): its [`Landing`], encoded.
    peers: Box<[AtomicU32]>,
    /// Per run-wide publisher number: its [`Landing`], encoded (what shards read per packet).
    publishers: Box<[AtomicU32]>,
}

impl Placements {
    /// Room for `peers` planned peers of which `publishers` publish.
    pub fn new(peers: usize, publishers: usize) -> Self {
        let slots = |n| (0..n).map(|_| AtomicU32::new(0)).collect();
        Self {
            names: Mutex::new(Vec::new()),
            peers: slots(peers),
            publishers: slots(publishers),
        }
    }

    /// Records where `plan`'s new session landed: on `node`, or on a node the server did not
    /// name. Replaces what an earlier join of the same peer recorded.
    pub fn land(&self, plan: &PeerPlan, node: Option<&str>) -> Landing {
        let landing = match node {
            Some(name) => Landing::Node(self.index_of(name)),
            None => Landing::Unnamed,
        };
        self.set(plan, landing);
        landing
    }

    /// `plan`'s join failed before the server placed a session: it is nowhere.
    pub fn lift(&self, plan: &PeerPlan) {
        self.set(plan, Landing::Nowhere);
    }

    fn set(&self, plan: &PeerPlan, landing: Landing) {
        // Relaxed: the slot is the only datum; a publisher's is written before the peer goes
        // to its shard, so before any of its packets exists.
        let v = landing.encode();
        if let Some(slot) = self.peers.get(plan.id.0 as usize) {
            slot.store(v, Ordering::Relaxed);
        }
        if plan.role == PeerRole::Publisher {
            if let Some(slot) = self.publishers.get(plan.publisher as usize) {
                slot.store(v, Ordering::Relaxed);
            }
        }
    }

    fn index_of(&self, name: &str) -> NodeIndex {
        let mut names = lock(&self.names);
        let i = match names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                names.push(name.to_string());
                names.len() - 1
            }
        };
        NodeIndex(i as u32)
    }

    /// The node of run-wide publisher `publisher`, if it landed on a named one.
    pub fn publisher_node(&self, publisher: u32) -> Option<NodeIndex> {
        let slot = self.publishers.get(publisher as usize)?;
        Landing::decode(slot.load(Ordering::Relaxed)).node()
    }

    /// Where the peer planned as `plan` is now.
    pub fn landing(&self, plan: &PeerPlan) -> Landing {
        self.peers
            .get(plan.id.0 as usize)
            .map_or(Landing::Nowhere, |slot| {
                Landing::decode(slot.load(Ordering::Relaxed))
            })
    }

    /// What a subscriber that landed as `landing` needs to tell its packets' paths; `None`
    /// when its own node is unknown (every path would be).
    pub fn paths_for(self: &Arc<Self>, landing: Landing) -> Option<SubscriberPaths> {
        Some(SubscriberPaths {
            own: landing.node()?,
            placements: self.clone(),
        })
    }

    /// Counts the peers per node and the subscribers per path. `peers` yields each planned
    /// peer once, with whether it failed; a peer counts where its latest session is.
    pub fn tally<'a>(&self, peers: impl IntoIterator<Item = (&'a PeerPlan, bool)>) -> Tally {
        let names = lock(&self.names).clone();
        let peers: Vec<(&PeerPlan, bool, Landing)> = peers
            .into_iter()
            .map(|(plan, failed)| (plan, failed, self.landing(plan)))
            .collect();
        // The nodes of each room's publishers.
        let mut rooms: BTreeMap<u32, Vec<NodeIndex>> = BTreeMap::new();
        for (plan, _, landing) in &peers {
            if let (PeerRole::Publisher, Some(node)) = (plan.role, landing.node()) {
                rooms.entry(plan.room).or_default().push(node);
            }
        }
        let mut tally = Tally::default();
        for (plan, failed, landing) in peers {
            let count = match landing {
                Landing::Nowhere => continue,
                Landing::Unnamed => &mut tally.unnamed,
                Landing::Node(n) => {
                    let name = names.get(n.0 as usize).cloned().unwrap_or_default();
                    tally.nodes.entry(name).or_default()
                }
            };
            match plan.role {
                PeerRole::Publisher => count.publishers += 1,
                PeerRole::Subscriber => count.subscribers += 1,
            }
            count.failed += u64::from(failed);
            if let (PeerRole::Subscriber, Some(own)) = (plan.role, landing.node()) {
                let publishers = rooms.get(&plan.room).map_or(&[][..], Vec::as_slice);
                tally.local_subscribers += u64::from(publishers.contains(&own));
                tally.relayed_subscribers += u64::from(publishers.iter().any(|p| *p != own));
            }
        }
        tally
    }
}

/// A subscriber's node and the run's publishers' nodes: the [`Path`] of each packet it gets.
#[derive(Debug, Clone)]
pub struct SubscriberPaths {
    own: NodeIndex,
    placements: Arc<Placements>,
}

impl SubscriberPaths {
    /// The path of a packet from run-wide publisher `publisher` (`None`: a packet not made by
    /// one of this run's publishers).
    pub fn path_from(&self, publisher: Option<u32>) -> Path {
        let node = publisher.and_then(|p| self.placements.publisher_node(p));
        Path::between(Some(self.own), node)
    }
}

/// What the report says about nodes (see [`Placements::tally`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Peers per named node.
    pub nodes: BTreeMap<String, NodePeers>,
    /// Peers whose session came without a node name.
    pub unnamed: NodePeers,
    /// Subscribers on the node of at least one publisher of their room.
    pub local_subscribers: u64,
    /// Subscribers on another node than at least one publisher of their room. With several
    /// publishers per room on different nodes a subscriber counts in both.
    pub relayed_subscribers: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::negotiate::PeerId;

    fn plan(id: u32, role: PeerRole, room: u32, publisher: u32) -> PeerPlan {
        PeerPlan {
            id: PeerId(id),
            role,
            room,
            publisher,
            generation: 0,
        }
    }

    #[test]
    fn paths_compare_the_two_nodes() {
        let (a, b) = (Some(NodeIndex(0)), Some(NodeIndex(1)));
        assert_eq!(Path::between(a, a), Path::Local);
        assert_eq!(Path::between(a, b), Path::Relayed);
        assert_eq!(Path::between(None, b), Path::Unknown);
        assert_eq!(Path::between(a, None), Path::Unknown);
        assert_eq!(Path::between(None, None), Path::Unknown);
    }

    #[test]
    fn landings_survive_their_encoding() {
        for landing in [
            Landing::Nowhere,
            Landing::Unnamed,
            Landing::Node(NodeIndex(0)),
            Landing::Node(NodeIndex(7)),
        ] {
            assert_eq!(Landing::decode(landing.encode()), landing);
        }
    }

    #[test]
    fn each_packet_takes_the_path_from_its_own_publisher() {
        // Room 0: publisher 0 on n1, publisher 1 on n2; a subscriber on n2.
        let p = Arc::new(Placements::new(3, 2));
        let pub0 = plan(0, PeerRole::Publisher, 0, 0);
        let pub1 = plan(1, PeerRole::Publisher, 0, 1);
        let sub = plan(2, PeerRole::Subscriber, 0, 0);
        assert_eq!(p.land(&pub0, Some("n1")), Landing::Node(NodeIndex(0)));
        assert_eq!(p.land(&pub1, Some("n2")), Landing::Node(NodeIndex(1)));
        let landing = p.land(&sub, Some("n2"));
        assert_eq!(landing, Landing::Node(NodeIndex(1)), "n2 keeps its index");
        let paths = p.paths_for(landing).expect("a named node");
        assert_eq!(paths.path_from(Some(0)), Path::Relayed);
        assert_eq!(paths.path_from(Some(1)), Path::Local);
        assert_eq!(paths.path_from(Some(9)), Path::Unknown, "not a publisher");
        assert_eq!(paths.path_from(None), Path::Unknown, "not a load counter");
        assert!(p.paths_for(Landing::Unnamed).is_none());
        assert!(p.paths_for(Landing::Nowhere).is_none());
    }

    #[test]
    fn a_publisher_not_yet_placed_gives_unknown_paths() {
        let p = Arc::new(Placements::new(2, 1));
        let sub = plan(1, PeerRole::Subscriber, 0, 0);
        let paths = p.paths_for(p.land(&sub, Some("n1"))).expect("named");
        assert_eq!(paths.path_from(Some(0)), Path::Unknown);
        p.land(&plan(0, PeerRole::Publisher, 0, 0), Some("n1"));
        assert_eq!(paths.path_from(Some(0)), Path::Local, "seen once recorded");
    }

    #[test]
    fn the_tally_counts_peers_where_their_latest_session_is() {
        // Room 0: publisher on n1, subscribers on n2 (two, one failed) and n1. Room 1: a
        // publisher on n1, a subscriber that rejoined from n1 to n3, one whose signaling
        // failed, one on a server that named no node.
        let p = Placements::new(9, 2);
        let plans = [
            plan(0, PeerRole::Publisher, 0, 0),
            plan(1, PeerRole::Publisher, 1, 1),
            plan(2, PeerRole::Subscriber, 0, 0),
            plan(3, PeerRole::Subscriber, 0, 0),
            plan(4, PeerRole::Subscriber, 0, 0),
            plan(5, PeerRole::Subscriber, 1, 0),
            plan(6, PeerRole::Subscriber, 1, 0),
            plan(7, PeerRole::Subscriber, 1, 0),
            plan(8, PeerRole::Subscriber, 1, 0),
        ];
        for (i, node) in [
            (0, Some("n1")),
            (1, Some("n1")),
            (2, Some("n2")),
            (3, Some("n2")),
            (4, Some("n1")),
            (5, Some("n1")),
            (5, Some("n3")),
            (6, Some("n2")),
            (7, None),
        ] {
            p.land(&plans[i], node);
        }
        p.lift(&plans[6]);
        let failed = |i: usize| i == 3;
        let tally = p.tally(plans.iter().enumerate().map(|(i, plan)| (plan, failed(i))));
        let peers = |publishers, subscribers, failed| NodePeers {
            publishers,
            subscribers,
            failed,
        };
        assert_eq!(
            tally.nodes,
            BTreeMap::from([
                ("n1".to_string(), peers(2, 1, 0)),
                ("n2".to_string(), peers(0, 2, 1)),
                ("n3".to_string(), peers(0, 1, 0)),
            ])
        );
        assert_eq!(tally.unnamed, peers(0, 1, 0));
        assert_eq!(tally.local_subscribers, 1, "peer 4");
        assert_eq!(tally.relayed_subscribers, 3, "peers 2, 3, 5");
    }

    #[test]
    fn a_subscriber_between_publishers_on_two_nodes_is_local_and_relayed() {
        let p = Placements::new(3, 2);
        let plans = [
            plan(0, PeerRole::Publisher, 0, 0),
            plan(1, PeerRole::Publisher, 0, 1),
            plan(2, PeerRole::Subscriber, 0, 0),
        ];
        for (plan, node) in plans.iter().zip(["n1", "n2", "n2"]) {
            p.land(plan, Some(node));
        }
        let tally = p.tally(plans.iter().map(|plan| (plan, false)));
        assert_eq!((tally.local_subscribers, tally.relayed_subscribers), (1, 1));
    }

    #[test]
    fn without_node_names_nothing_is_split() {
        let p = Placements::new(2, 1);
        let plans = [
            plan(0, PeerRole::Publisher, 0, 0),
            plan(1, PeerRole::Subscriber, 0, 0),
        ];
        for plan in &plans {
            p.land(plan, None);
        }
        let tally = p.tally(plans.iter().map(|plan| (plan, false)));
        assert!(tally.nodes.is_empty());
        assert_eq!(tally.unnamed.publishers + tally.unnamed.subscribers, 2);
        assert_eq!((tally.local_subscribers, tally.relayed_subscribers), (0, 0));
    }
}
