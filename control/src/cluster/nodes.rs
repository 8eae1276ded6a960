//! The media nodes control knows: the embedded one (if any) and those registered over QUIC,
//! each with its client, region, capacity and health. Placement asks it for a node per room;
//! the links feed it registrations and heartbeats; a periodic tick turns silence into
//! `suspect` and `dead`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use sfu_core::ids::{NodeId, RoomId};
use sfu_core::proto::{LoadReport, Registration, RelayAddress};

use super::{
    HealthConfig, HealthEvent, HealthTable, Incarnation, NodeSnapshot, NodeState, PlaceError,
    Placed, Placement, RoomRequest,
};
use crate::node_client::NodeClient;
use crate::store::PlacementView;
use crate::store::redis::RegistryEntry;

/// One node as control holds it.
#[derive(Debug, Clone)]
pub struct Member {
    pub client: Arc<dyn NodeClient>,
    pub region: Option<String>,
    pub capacity: u64,
    /// Runs inside this process: always up while the process runs.
    pub embedded: bool,
    /// `None` for the embedded node.
    pub incarnation: Option<Incarnation>,
    pub media_ip: Option<std::net::IpAddr>,
    pub load: LoadReport,
    /// The node's link is up (always, for the embedded node).
    pub linked: bool,
    /// Round-trip time of the node's link, as QUIC measures it.
    pub rtt: Option<std::time::Duration>,
    /// A node whose link another control instance holds (shared store): that instance's
    /// name, and the node's state as it announced it. `None` for the nodes held here.
    pub shared: Option<(String, NodeState)>,
    /// Where other nodes reach its relay endpoint, as it registered it.
    pub relay: Option<RelayAddress>,
}

/// What the admin API shows of a node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeView {
    pub id: String,
    pub state: &'static str,
    pub region: Option<String>,
    pub embedded: bool,
    pub sessions: usize,
    pub rooms: usize,
    pub capacity: u64,
    /// The node's last load report.
    pub load: LoadReport,
}

/// Why a node cannot be forgotten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    #[error("no such node")]
    Unknown,
    #[error("the node is {0}: only a dead node can be forgotten (drain and stop it first)")]
    Alive(&'static str),
    #[error("the node's link is held by control instance {0}: ask that instance")]
    HeldElsewhere(String),
}

/// All nodes, their health and the placement policy.
#[derive(Debug)]
pub struct Nodes {
    inner: Mutex<Inner>,
    placement: Placement,
    counters: Counters,
}

/// Cluster counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Placements of a room that lived nowhere, that stayed on its node, that moved off a
    /// dead one.
    pub placed_new: AtomicU64,
    pub placed_kept: AtomicU64,
    pub placed_moved: AtomicU64,
    /// Sessions of a room placed beside its full (or out-of-region) node.
    pub placed_spilled: AtomicU64,
    /// Nodes declared dead.
    pub failovers: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    members: BTreeMap<NodeId, Member>,
    health: HealthTable,
    /// Drain expiries the health machines reported outside [`Nodes::tick`] (a heartbeat or a
    /// drain can be the first input past a deadline), held for the next tick: the task that
    /// ticks is the one that ends the sessions, so it must see every expiry.
    expired: Vec<HealthEvent>,
    /// Relay link tokens by (relay node, origin node), minted at random when no cluster
    /// secret derives them (see [`Nodes::set_link_secret`]).
    link_tokens: HashMap<(NodeId, NodeId), [u8; 32]>,
    /// The cluster secret, which derives the relay link tokens.
    link_secret: Option<Vec<u8>>,
}

impl Inner {
    /// `events` without the drain expiries, which wait for the next tick.
    fn defer_expiries(&mut self, events: Vec<HealthEvent>) -> Vec<HealthEvent> {
        let (expired, rest) = events
            .into_iter()
            .partition(|e| matches!(e, HealthEvent::DrainExpired { .. }));
        self.expired.extend::<Vec<_>>(expired);
        rest
    }
}

impl Nodes {
    pub fn new(placement: Placement, health: HealthConfig) -> Self {
        Self {
            inner: Mutex::new(Inner {
                members: BTreeMap::new(),
                health: HealthTable::new(health),
                expired: Vec::new(),
                link_tokens: HashMap::new(),
                link_secret: None,
            }),
            placement,
            counters: Counters::default(),
        }
    }

    /// The cluster's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Each linked node's id and link round-trip time.
    pub fn link_rtts(&self) -> Vec<(NodeId, std::time::Duration)> {
        self.lock()
            .members
            .iter()
            .filter_map(|(id, m)| Some((id.clone(), m.rtt.filter(|_| m.linked)?)))
            .collect()
    }

    /// The last load report of each node whose link this instance holds.
    pub fn linked_loads(&self) -> Vec<(NodeId, LoadReport)> {
        self.lock()
            .members
            .iter()
            .filter(|(_, m)| m.linked)
            .map(|(id, m)| (id.clone(), m.load.clone()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add the in-process node.
    pub fn add_embedded(&self, client: Arc<dyn NodeClient>, capacity: u64) {
        let id = client.id().clone();
        self.lock().members.insert(
            id,
            Member {
                client,
                region: None,
                capacity,
                embedded: true,
                incarnation: None,
                media_ip: None,
                load: LoadReport::default(),
                linked: true,
                rtt: None,
                shared: None,
                relay: None,
            },
        );
    }

    /// Whether `node` may register now: refused while a live incarnation of the same id (or
    /// the embedded node) holds it.
    pub fn admit(&self, node: &NodeId) -> Result<(), String> {
        let inner = self.lock();
        if inner.members.get(node).is_some_and(|m| m.embedded) {
            return Err(format!("node id {node} is control's embedded node"));
        }
        let linked = inner.members.get(node).is_some_and(|m| m.linked);
        match inner.health.state(node) {
            Some((_, NodeState::Up | NodeState::Draining | NodeState::Suspect)) if linked => {
                Err(format!(
                    "node id {node} is held by a node that is up; a second node cannot take it"
                ))
            }
            _ => Ok(()),
        }
    }

    /// `node`'s link (of `incarnation`) closed. Its health runs on (silence makes it suspect,
    /// then dead), but the id is free again: the node itself may register anew at once.
    pub fn link_lost(&self, node: &NodeId, incarnation: Incarnation) {
        let mut inner = self.lock();
        if let Some(member) = inner.members.get_mut(node) {
            if member.incarnation == Some(incarnation) {
                member.linked = false;
            }
        }
    }

    /// A node registered (first time, after a lost link, or after a restart). Returns its
    /// incarnation in control and the health changes (an old incarnation ends).
    pub fn register(
        &self,
        registration: &Registration,
        client: Arc<dyn NodeClient>,
        now: Instant,
    ) -> (Incarnation, Vec<HealthEvent>) {
        let mut inner = self.lock();
        let (incarnation, events) = inner.health.register(registration.node.clone(), now);
        inner.members.insert(
            registration.node.clone(),
            Member {
                client,
                region: registration.region.clone(),
                capacity: registration.capacity,
                embedded: false,
                incarnation: Some(incarnation),
                media_ip: Some(registration.media_ip),
                load: LoadReport::default(),
                linked: true,
                rtt: None,
                shared: None,
                relay: registration.relay.clone(),
            },
        );
        (incarnation, inner.defer_expiries(events))
    }

    /// A node's load report arrived: it is alive.
    pub fn heartbeat(
        &self,
        node: &NodeId,
        incarnation: Incarnation,
        load: Option<LoadReport>,
        rtt: std::time::Duration,
        now: Instant,
    ) -> Vec<HealthEvent> {
        let mut inner = self.lock();
        let draining = inner.health.state(node) == Some((incarnation, NodeState::Draining));
        if let Some(member) = inner.members.get_mut(node) {
            if member.incarnation == Some(incarnation) {
                member.rtt = Some(rtt);
                if let Some(load) = load {
                    if draining && member.load.sessions > 0 && load.sessions == 0 {
                        tracing::info!(%node, "draining node is empty: it can be stopped");
                    }
                    member.load = load;
                }
            }
        }
        let events = inner
            .health
            .handle_heartbeat(node, incarnation, now)
            .unwrap_or_default();
        inner.defer_expiries(events)
    }

    /// Let time pass: silent nodes become suspect, then dead, and drains expire. Every
    /// [`HealthEvent::DrainExpired`] is reported here, whichever input passed the deadline.
    pub fn tick(&self, now: Instant) -> Vec<HealthEvent> {
        let changes = {
            let mut inner = self.lock();
            let mut changes = std::mem::take(&mut inner.expired);
            changes.extend(inner.health.tick(now));
            changes
        };
        for change in &changes {
            if matches!(
                change,
                HealthEvent::Changed {
                    to: NodeState::Dead,
                    ..
                }
            ) {
                self.counters.failovers.fetch_add(1, Ordering::Relaxed);
            }
        }
        changes
    }

    /// Stop sending new rooms and sessions to `node`.
    pub fn drain(&self, node: &NodeId, now: Instant) -> Option<Vec<HealthEvent>> {
        let mut inner = self.lock();
        let events = inner.health.drain(node, now).ok()?;
        Some(inner.defer_expiries(events))
    }

    /// Return a drained node to service.
    pub fn undrain(&self, node: &NodeId, now: Instant) -> Option<Vec<HealthEvent>> {
        let mut inner = self.lock();
        let events = inner.health.undrain(node, now).ok()?;
        Some(inner.defer_expiries(events))
    }

    /// The client of `node`, whatever its state (a dead node's client answers `Stopped`).
    pub fn client(&self, node: &NodeId) -> Option<Arc<dyn NodeClient>> {
        self.lock().members.get(node).map(|m| m.client.clone())
    }

    /// Every node's client (for stats and health across the cluster).
    pub fn clients(&self) -> Vec<Arc<dyn NodeClient>> {
        self.lock()
            .members
            .values()
            .map(|m| m.client.clone())
            .collect()
    }

    /// Forget a dead node this instance held (`DELETE /api/nodes/{id}`): it leaves the admin
    /// API and `/metrics`. A node that is alive, or held by another control instance, stays.
    pub fn forget(&self, node: &NodeId) -> Result<(), ForgetError> {
        let mut inner = self.lock();
        let member = inner.members.get(node).ok_or(ForgetError::Unknown)?;
        if member.embedded {
            return Err(ForgetError::Alive("up (it is the embedded node)"));
        }
        if let Some((holder, _)) = &member.shared {
            return Err(ForgetError::HeldElsewhere(holder.clone()));
        }
        match state_of(&inner, node) {
            Some(NodeState::Dead) | None => {}
            Some(state) => return Err(ForgetError::Alive(state.as_str())),
        }
        inner.members.remove(node);
        inner.health.remove(node);
        Ok(())
    }

    /// The client of `node` if this instance holds its link (or runs it).
    pub fn local_client(&self, node: &NodeId) -> Option<Arc<dyn NodeClient>> {
        self.lock()
            .members
            .get(node)
            .filter(|m| m.shared.is_none())
            .map(|m| m.client.clone())
    }

    /// The nodes this instance holds and that are not dead, as the shared registry lists
    /// them under `holder`.
    pub fn local_entries(&self, holder: &str) -> Vec<RegistryEntry> {
        let inner = self.lock();
        inner
            .members
            .iter()
            .filter(|(_, m)| m.shared.is_none())
            .filter_map(|(id, m)| {
                let state = state_of(&inner, id)?;
                (state != NodeState::Dead).then(|| RegistryEntry {
                    node: id.clone(),
                    holder: holder.to_string(),
                    region: m.region.clone(),
                    capacity: m.capacity,
                    state,
                    relay: m.relay.clone(),
                })
            })
            .collect()
    }

    /// Take the shared registry's view of the nodes other instances hold: add or update them
    /// (with a client from `client_for`), and drop those no longer listed. Nodes held here
    /// always win over an entry of another instance for the same id.
    pub fn sync_shared(
        &self,
        entries: &[RegistryEntry],
        me: &str,
        client_for: impl Fn(&RegistryEntry) -> Arc<dyn NodeClient>,
    ) {
        let mut inner = self.lock();
        let listed: std::collections::HashSet<&NodeId> = entries
            .iter()
            .filter(|e| e.holder != me)
            .map(|e| &e.node)
            .collect();
        inner
            .members
            .retain(|id, m| m.shared.is_none() || listed.contains(id));
        for entry in entries.iter().filter(|e| e.holder != me) {
            let local = inner
                .members
                .get(&entry.node)
                .is_some_and(|m| m.shared.is_none())
                && inner
                    .health
                    .state(&entry.node)
                    .is_none_or(|(_, s)| s != NodeState::Dead);
            if local {
                continue;
            }
            let same_holder = inner
                .members
                .get(&entry.node)
                .and_then(|m| m.shared.as_ref())
                .is_some_and(|(h, _)| *h == entry.holder);
            if same_holder {
                if let Some(m) = inner.members.get_mut(&entry.node) {
                    m.region = entry.region.clone();
                    m.capacity = entry.capacity;
                    m.shared = Some((entry.holder.clone(), entry.state));
                    m.relay = entry.relay.clone();
                }
                continue;
            }
            inner.members.insert(
                entry.node.clone(),
                Member {
                    client: client_for(entry),
                    region: entry.region.clone(),
                    capacity: entry.capacity,
                    embedded: false,
                    incarnation: None,
                    media_ip: None,
                    load: LoadReport::default(),
                    // Its link is on the holding instance, not here.
                    linked: false,
                    rtt: None,
                    shared: Some((entry.holder.clone(), entry.state)),
                    relay: entry.relay.clone(),
                },
            );
        }
    }

    /// Whether any node can take a new room: the embedded one, or one that is up (here or
    /// on another instance).
    pub fn any_up(&self) -> bool {
        let inner = self.lock();
        inner
            .members
            .keys()
            .any(|id| state_of(&inner, id) == Some(NodeState::Up))
    }

    /// The embedded node's client, if control runs one.
    pub fn embedded(&self) -> Option<Arc<dyn NodeClient>> {
        self.lock()
            .members
            .values()
            .find(|m| m.embedded)
            .map(|m| m.client.clone())
    }

    /// Where other nodes reach `node`'s relay endpoint, if it runs one and registered here.
    pub fn relay_address(&self, node: &NodeId) -> Option<RelayAddress> {
        self.lock().members.get(node)?.relay.clone()
    }

    /// Derive relay link tokens from the cluster secret (`cluster.secret`), so that every
    /// control instance gives a pair of nodes the same token.
    pub fn set_link_secret(&self, secret: &[u8]) {
        self.lock().link_secret = Some(secret.to_vec());
    }

    /// The token that introduces `relay` to `origin` for relay links: derived from the
    /// cluster secret when there is one (the same on every control instance and after a
    /// restart), else minted on first use and kept for the pair, so that a link reopened
    /// later proves the same.
    pub fn link_token(&self, relay: &NodeId, origin: &NodeId) -> [u8; 32] {
        let mut inner = self.lock();
        if let Some(secret) = &inner.link_secret {
            return sfu_link::auth::relay_link_token(secret, relay, origin);
        }
        *inner
            .link_tokens
            .entry((relay.clone(), origin.clone()))
            .or_insert_with(rand::random)
    }

    /// `node`'s state (`Up` for the embedded node).
    pub fn state(&self, node: &NodeId) -> Option<NodeState> {
        let inner = self.lock();
        state_of(&inner, node)
    }

    /// The node for a new session of `room`: where the room lives if that node is up, else a
    /// placement over the nodes that are up (never a draining one).
    pub fn place(
        &self,
        room: &RoomId,
        region: Option<&str>,
        view: &PlacementView,
    ) -> Result<(NodeId, Arc<dyn NodeClient>), PlaceError> {
        let inner = self.lock();
        let snapshots: Vec<NodeSnapshot> = inner
            .members
            .iter()
            .map(|(id, m)| NodeSnapshot {
                id: id.clone(),
                state: state_of(&inner, id).unwrap_or(NodeState::Dead),
                region: m.region.clone(),
                load: view.node_counts.get(id).copied().unwrap_or(0) as u64,
                capacity: m.capacity,
            })
            .collect();
        // Where the room lives now: of the nodes holding its sessions, one that is up (new
        // sessions join it there), else one not answering (wait rather than split), else a
        // draining or dead one (new sessions go elsewhere); among equals, the one with most.
        let rank = |node: &NodeId| match state_of(&inner, node) {
            Some(NodeState::Up) => 3,
            Some(NodeState::Suspect) => 2,
            Some(NodeState::Draining) => 1,
            Some(NodeState::Dead) | None => 0,
        };
        let current = view
            .room_nodes
            .iter()
            .max_by_key(|(node, count)| (rank(node), *count, std::cmp::Reverse(node.clone())))
            .map(|(node, _)| node.clone());
        let mut request = RoomRequest::new(room);
        if let Some(node) = &current {
            request = request.on(node);
        }
        if let Some(region) = region {
            request = request.in_region(region);
        }
        let decision = self.placement.place(&snapshots, &request)?;
        let counter = match decision.placed {
            Placed::New => &self.counters.placed_new,
            Placed::Kept => &self.counters.placed_kept,
            Placed::Moved { .. } => &self.counters.placed_moved,
            Placed::Spilled { .. } => &self.counters.placed_spilled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let client = inner
            .members
            .get(&decision.node)
            .map(|m| m.client.clone())
            .ok_or(PlaceError::NoNodes)?;
        Ok((decision.node, client))
    }

    /// What the admin API shows.
    pub fn views(
        &self,
        counts: &std::collections::HashMap<NodeId, usize>,
        rooms: &[(String, Vec<NodeId>)],
    ) -> Vec<NodeView> {
        let inner = self.lock();
        inner
            .members
            .iter()
            .map(|(id, m)| NodeView {
                id: id.to_string(),
                state: state_of(&inner, id).unwrap_or(NodeState::Dead).as_str(),
                region: m.region.clone(),
                embedded: m.embedded,
                sessions: counts.get(id).copied().unwrap_or(0),
                rooms: rooms.iter().filter(|(_, nodes)| nodes.contains(id)).count(),
                capacity: m.capacity,
                load: m.load.clone(),
            })
            .collect()
    }

    /// How many nodes are in each state.
    pub fn count_by_state(&self) -> BTreeMap<&'static str, usize> {
        let inner = self.lock();
        let mut counts = BTreeMap::new();
        for state in [
            NodeState::Up,
            NodeState::Suspect,
            NodeState::Dead,
            NodeState::Draining,
        ] {
            counts.insert(state.as_str(), 0);
        }
        for id in inner.members.keys() {
            let state = state_of(&inner, id).unwrap_or(NodeState::Dead);
            *counts.entry(state.as_str()).or_default() += 1;
        }
        counts
    }
}

fn state_of(inner: &Inner, node: &NodeId) -> Option<NodeState> {
    let member = inner.members.get(node)?;
    if member.embedded {
        return Some(NodeState::Up);
    }
    if let Some((_, state)) = &member.shared {
        return Some(*state);
    }
    inner.health.state(node).map(|(_, state)| state)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sfu_core::proto::NodeRequest;

    use super::*;
    use crate::cluster::PlacementConfig;
    use crate::node_client::Call;

    #[derive(Debug)]
    struct Silent(NodeId);

    impl NodeClient for Silent {
        fn id(&self) -> &NodeId {
            &self.0
        }
        fn call(&self, _: NodeRequest) -> Call<'_> {
            Box::pin(async { sfu_core::proto::NodeResponse::Done })
        }
        fn take_events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<sfu_core::NodeEvent>> {
            None
        }
    }

    /// Whichever input first passes a drain's deadline, the expiry comes out of `tick`: the
    /// task that ticks is the one that ends the drained node's sessions.
    #[test]
    fn a_drain_expiry_is_reported_by_the_next_tick_whatever_passed_the_deadline() {
        let s = Duration::from_secs(1);
        let health = HealthConfig {
            suspect_after: 3 * s,
            dead_after: 5 * s,
            drain_timeout: 2 * s,
        };
        let placement = Placement::new(PlacementConfig::default()).expect("default placement");
        let nodes = Nodes::new(placement, health);
        let id: NodeId = "n1".parse().expect("node id");
        let registration = Registration {
            node: id.clone(),
            incarnation: 7,
            region: None,
            media_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            media_ports: vec![50000],
            capacity: 100,
            sessions: Vec::new(),
            relay: None,
        };
        let t0 = Instant::now();
        let (incarnation, _) = nodes.register(&registration, Arc::new(Silent(id.clone())), t0);
        assert!(nodes.drain(&id, t0).is_some());
        let expired = |events: &[HealthEvent]| {
            events
                .iter()
                .filter(|e| matches!(e, HealthEvent::DrainExpired { .. }))
                .count()
        };
        // A heartbeat is the first input past the deadline: it does not report the expiry...
        let beat = nodes.heartbeat(&id, incarnation, None, s, t0 + 3 * s);
        assert_eq!(expired(&beat), 0, "{beat:?}");
        // ...the next tick does, once.
        assert_eq!(expired(&nodes.tick(t0 + 3 * s)), 1);
        assert_eq!(expired(&nodes.tick(t0 + 4 * s)), 0);
        assert_eq!(nodes.state(&id), Some(NodeState::Draining));

        // A drain that expires at once (timeout 0) is reported by the tick too.
        let nodes = Nodes::new(
            placement,
            HealthConfig {
                drain_timeout: Duration::ZERO,
                ..health
            },
        );
        nodes.register(&registration, Arc::new(Silent(id.clone())), t0);
        let drained = nodes.drain(&id, t0).expect("registered");
        assert_eq!(expired(&drained), 0, "{drained:?}");
        assert_eq!(expired(&nodes.tick(t0)), 1);
    }
}
