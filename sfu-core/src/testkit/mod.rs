//! A deterministic test kit for the media engine: a simulated clock, a seeded in-memory
//! network with delay, jitter and loss ([`net`]), any number of nodes of any number of
//! engines, and str0m client peers ([`peer`]), all in one thread. Nothing sleeps and nothing
//! reads the clock after the kit is built: a test runs simulated minutes in seconds and the
//! same seed gives the same run. Cross-worker messages go straight to the other engine of the
//! same node (rings never overflow here); nodes share nothing but the network.
//!
//! Built for tests only (`cfg(test)` or the `testkit` feature).

pub mod net;
pub mod peer;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sfu_proto::relay::RelayFrame;
use sfu_proto::{
    AudioFloor, NodeError, NodeEvent, NodeId, NodeResponse, RoomId, SessionCreated, SessionId,
    SessionKind, SubscribePolicy, WorkerId,
};
use str0m::config::DtlsCert;

use crate::engine::allocation::Policy;
use crate::engine::session::{Offer, Session, SessionSpec};
use crate::engine::{Command, Engine, EngineConfig};
use crate::ids::RoomKey;
use crate::metrics::WorkerMetrics;
use crate::relay::{RelayConfig, RelayEndpoint};
use net::{Datagram, Net, NetConfig};
use peer::{Peer, PublishMedia, SubscribeMedia};

/// Longest simulated step: peers and engines are looked at least this often.
const MAX_STEP: Duration = Duration::from_millis(5);
/// Shortest simulated step.
pub const PROGRESS_STEP: Duration = Duration::from_micros(10);

/// The UDP port of each node's relay endpoint (on the node's address 10.0.n.250).
pub const RELAY_PORT: u16 = 7400;

/// One-way delay of the frames on a relay link's stream (reliable and ordered: a cut link
/// loses what it had in flight).
pub const RELAY_STREAM_DELAY: Duration = Duration::from_millis(5);

/// Whether a datagram crosses a relay link: for [`NetConfig::lossy`] when only the hop between
/// nodes should lose packets.
pub fn relay_datagram(d: &Datagram) -> bool {
    d.to.port() == RELAY_PORT
}

/// Whether a datagram was sent by a node (the kit's nodes live in 10.0.0.0/16): for
/// [`NetConfig::lossy`] when only the downlink should lose packets.
pub fn sent_by_node(d: &Datagram) -> bool {
    matches!(d.from.ip(), IpAddr::V4(ip) if ip.octets()[..2] == [10, 0])
}

/// The kit peers' video payload type (str0m's default for VP8) and its repair type.
pub const VIDEO_PT: u8 = 96;
pub const VIDEO_RTX_PT: u8 = 97;

/// The RTP payload type of a datagram, read from the clear-text SRTP header; `None` for
/// anything else (RTCP's packet types 200-206 included).
pub fn rtp_payload_type(d: &Datagram) -> Option<u8> {
    let (&first, &second) = (d.contents.first()?, d.contents.get(1)?);
    let pt = second & 0x7f;
    (first >> 6 == 2 && !(72..=79).contains(&pt)).then_some(pt)
}

/// Video a node sends for the first time (not a retransmission): for [`NetConfig::lossy`]
/// when losses must be repairable by construction, so that a hole a subscriber keeps is the
/// engine's doing, never a retransmission lost again.
pub fn node_video_first_sends(d: &Datagram) -> bool {
    sent_by_node(d) && rtp_payload_type(d) == Some(VIDEO_PT)
}

/// A peer in the kit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerRef(pub usize);

/// A node: engines that share rooms through cross-worker messages.
#[derive(Debug)]
pub struct SimNode {
    pub engines: Vec<Engine>,
    /// The node's relay endpoint: the cross-worker id after the last engine's.
    pub relay: RelayEndpoint,
    pub id: NodeId,
    relay_addr: SocketAddr,
    pub metrics: Vec<Arc<WorkerMetrics>>,
    addrs: Vec<SocketAddr>,
    certificates: Vec<Option<DtlsCert>>,
    rooms: HashMap<RoomId, RoomKey>,
    next_room: u32,
    next_order: u64,
    sessions: HashMap<SessionId, WorkerId>,
    /// Events the node's engines emitted, in order.
    pub events: Vec<NodeEvent>,
    /// What the node's engines wrote to each subscriber track: (session, slot) → sequence
    /// numbers, in the order written.
    pub forwarded: HashMap<(SessionId, u16), Vec<u64>>,
    /// The most RTP media datagrams (not on the RTX payload type) one engine handed out in one
    /// chunk ([`Engine::transmits_queued`]). Padding and resends str0m sends in answer to
    /// feedback leave with the drain of the datagram that carried it, outside the chunks.
    pub largest_handover: usize,
    /// Where each pass's first RTP datagram went, per destination: how often.
    pub first_rtp_to: HashMap<SocketAddr, u64>,
}

impl SimNode {
    /// Sessions the kit's directory still holds for this node (removed on `SessionEnded`).
    pub fn directory_len(&self) -> usize {
        self.sessions.len()
    }
}

/// A kit peer and where it is.
#[derive(Debug)]
pub struct KitPeer {
    pub peer: Peer,
    pub node: usize,
    pub session: SessionId,
    /// Gone from the network (closed tab): nothing it sends arrives, nothing reaches it.
    pub gone: bool,
    pub created: SessionCreated,
}

/// The kit.
#[derive(Debug)]
pub struct Kit {
    origin: Instant,
    now: Instant,
    pub net: Net,
    /// Relay links that are up, as (node, node) index pairs with the smaller first.
    links: Vec<(usize, usize)>,
    /// Frames on relay links' streams: (arrival, from node, to node, frame).
    frames: VecDeque<(Instant, usize, usize, RelayFrame)>,
    pub nodes: Vec<SimNode>,
    pub peers: Vec<KitPeer>,
    next_peer_addr: u32,
    /// The bandwidth policy of subscriber sessions set up from now on (estimation is always
    /// on in the kit; [`Policy::default`] does not pause).
    pub bandwidth: Policy,
}

impl Kit {
    /// Nodes with `workers[i]` engines each.
    pub fn new(workers: &[usize], net: NetConfig) -> Self {
        Self::with_config(workers, net, |_| {})
    }

    /// As [`Kit::new`], with a chance to change each engine's configuration.
    pub fn with_config(
        workers: &[usize],
        net: NetConfig,
        configure: impl Fn(&mut EngineConfig),
    ) -> Self {
        // The kit's only clock reading: the origin of simulated time.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let nodes = workers
            .iter()
            .enumerate()
            .map(|(n, &count)| {
                let mut config = EngineConfig {
                    workers: count,
                    max_sessions: 4096,
                    first_contact_timeout: Duration::from_secs(5),
                    connect_timeout: Duration::from_secs(20),
                    ice_timeout: Duration::from_secs(10),
                    publisher_remb_kbps: 10_000,
                    layer_timeout: crate::engine::room::LAYER_TIMEOUT,
                    relay: Some(WorkerId(count as u16)),
                };
                configure(&mut config);
                let metrics: Vec<Arc<WorkerMetrics>> = (0..count)
                    .map(|_| Arc::new(WorkerMetrics::default()))
                    .collect();
                SimNode {
                    engines: (0..count)
                        .map(|w| {
                            Engine::new(WorkerId(w as u16), config.clone(), metrics[w].clone(), now)
                        })
                        .collect(),
                    relay: RelayEndpoint::new(count, RelayConfig::default(), now),
                    id: format!("node-{n}").parse().expect("a valid node id"),
                    relay_addr: SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(10, 0, n as u8, 250)),
                        RELAY_PORT,
                    ),
                    metrics,
                    addrs: (0..count)
                        .map(|w| {
                            SocketAddr::new(
                                IpAddr::V4(Ipv4Addr::new(10, 0, n as u8, 1)),
                                50_000 + w as u16,
                            )
                        })
                        .collect(),
                    certificates: (0..count)
                        .map(|_| {
                            str0m::crypto::from_feature_flags()
                                .dtls_provider
                                .generate_certificate()
                        })
                        .collect(),
                    rooms: HashMap::new(),
                    next_room: 0,
                    next_order: 0,
                    sessions: HashMap::new(),
                    events: Vec::new(),
                    forwarded: HashMap::new(),
                    largest_handover: 0,
                    first_rtp_to: HashMap::new(),
                }
            })
            .collect();
        Self {
            origin: now,
            now,
            net: Net::new(net),
            links: Vec::new(),
            frames: VecDeque::new(),
            nodes,
            peers: Vec::new(),
            next_peer_addr: 1,
            bandwidth: Policy::default(),
        }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    fn next_addr(&mut self) -> SocketAddr {
        let n = self.next_peer_addr;
        self.next_peer_addr += 1;
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 1, (n >> 8) as u8, n as u8)),
            40_000,
        )
    }

    /// A publisher joins `room` on worker `worker` of node `node`.
    pub fn publish(
        &mut self,
        node: usize,
        worker: usize,
        room: &str,
        identity: &str,
        media: PublishMedia,
    ) -> Result<PeerRef, NodeError> {
        let addr = self.next_addr();
        let tag = self.peers.len() as u32 + 1;
        let (peer, offer, pending) = Peer::publisher(addr, tag, media, self.origin, self.now);
        self.join(
            node,
            worker,
            room,
            identity,
            SessionKind::Publish,
            SubscribePolicy::NewestOther,
            peer,
            offer,
            pending,
        )
    }

    /// A subscriber joins `room` on worker `worker` of node `node`.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &mut self,
        node: usize,
        worker: usize,
        room: &str,
        identity: &str,
        media: SubscribeMedia,
        policy: SubscribePolicy,
    ) -> Result<PeerRef, NodeError> {
        let addr = self.next_addr();
        let tag = self.peers.len() as u32 + 1;
        let (peer, offer, pending) = Peer::subscriber(addr, tag, media, self.origin, self.now);
        self.join(
            node,
            worker,
            room,
            identity,
            SessionKind::Subscribe,
            policy,
            peer,
            offer,
            pending,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        node: usize,
        worker: usize,
        room: &str,
        identity: &str,
        kind: SessionKind,
        policy: SubscribePolicy,
        mut peer: Peer,
        offer: String,
        pending: str0m::change::SdpPendingOffer,
    ) -> Result<PeerRef, NodeError> {
        let session = SessionId::random();
        let room_id: RoomId = room
            .parse()
            .map_err(|e| NodeError::BadRequest(format!("{e}")))?;
        let key = self.room_key(node, &room_id);
        let n = &mut self.nodes[node];
        n.next_order += 1;
        let spec = SessionSpec {
            id: session,
            room: key,
            room_id,
            kind,
            identity: identity.to_string(),
            policy,
            bandwidth: Some(self.bandwidth),
            rtx_cache: Duration::from_secs(1),
        };
        let mut seq = session.as_u128() as u16;
        let (accepted, answer) = Session::accept(
            spec,
            Offer::parse(&offer)?,
            n.addrs[worker],
            n.certificates[worker].clone(),
            move || {
                seq = seq.wrapping_mul(31).wrapping_add(7);
                seq
            },
            self.now,
        )?;
        let response = n.engines[worker].handle_command(
            self.now,
            Command::Adopt {
                session: Box::new(accepted),
                answer_sdp: answer.clone(),
                order: n.next_order,
            },
        );
        let created = match response {
            NodeResponse::SessionCreated(c) => c,
            NodeResponse::Error(e) => return Err(e),
            other => return Err(NodeError::SessionFailed(format!("{other:?}"))),
        };
        n.sessions.insert(session, WorkerId(worker as u16));
        peer.accept_answer(pending, &answer);
        self.peers.push(KitPeer {
            peer,
            node,
            session,
            gone: false,
            created,
        });
        self.flush();
        Ok(PeerRef(self.peers.len() - 1))
    }

    /// The key of `room` on node `node`, assigned on first use as the node does.
    fn room_key(&mut self, node: usize, room: &RoomId) -> RoomKey {
        let n = &mut self.nodes[node];
        match n.rooms.get(room) {
            Some(k) => *k,
            None => {
                let k = RoomKey(n.next_room);
                n.next_room += 1;
                n.rooms.insert(room.clone(), k);
                k
            }
        }
    }

    /// Bring up the relay link between nodes `a` and `b` (both ends see it come up).
    pub fn link_relay(&mut self, a: usize, b: usize) {
        let pair = (a.min(b), a.max(b));
        if !self.links.contains(&pair) {
            self.links.push(pair);
        }
        let now = self.now;
        let (ida, idb) = (self.nodes[a].id.clone(), self.nodes[b].id.clone());
        self.nodes[a].relay.link_up(now, &idb);
        self.nodes[b].relay.link_up(now, &ida);
        self.flush();
    }

    /// Cut the relay link between `a` and `b`: frames in flight are lost, datagrams no longer
    /// cross, and both ends see the link go down.
    pub fn cut_relay(&mut self, a: usize, b: usize) {
        let pair = (a.min(b), a.max(b));
        self.links.retain(|l| *l != pair);
        self.frames
            .retain(|(_, from, to, _)| (*from.min(to), *from.max(to)) != pair);
        let now = self.now;
        let (ida, idb) = (self.nodes[a].id.clone(), self.nodes[b].id.clone());
        self.nodes[a].relay.link_down(now, &idb);
        self.nodes[b].relay.link_down(now, &ida);
        self.flush();
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.links.contains(&(a.min(b), a.max(b)))
    }

    /// Control asks node `node` to relay `room` from node `from` (left after the default
    /// idle time without subscribers).
    pub fn relay_room(&mut self, node: usize, room: &str, from: usize) {
        self.relay_room_idle(node, room, from, None);
    }

    /// As [`Kit::relay_room`], left after `idle` without subscribers when given.
    pub fn relay_room_idle(
        &mut self,
        node: usize,
        room: &str,
        from: usize,
        idle: Option<Duration>,
    ) {
        let room_id: RoomId = room.parse().expect("a valid room name");
        let key = self.room_key(node, &room_id);
        let (now, from_id) = (self.now, self.nodes[from].id.clone());
        self.nodes[node]
            .relay
            .relay_room(now, key, &room_id, &from_id, idle);
        self.flush();
    }

    /// A node API call for the session of `peer` (or any session id) on its node.
    pub fn command(&mut self, node: usize, session: SessionId, command: Command) -> NodeResponse {
        let Some(worker) = self.nodes[node].sessions.get(&session).copied() else {
            return NodeResponse::Error(NodeError::UnknownSession);
        };
        let now = self.now;
        let response = self.nodes[node].engines[worker.index()].handle_command(now, command);
        self.flush();
        response
    }

    /// Set room `room`'s push-to-talk floor on every worker of `node`, as the node's
    /// `SetFloor` does.
    pub fn set_floor(&mut self, node: usize, room: &str, floor: AudioFloor) {
        let room: RoomId = room.parse().expect("a room name");
        let now = self.now;
        for engine in &mut self.nodes[node].engines {
            let command = Command::SetFloor {
                room: room.clone(),
                floor,
            };
            assert_eq!(engine.handle_command(now, command), NodeResponse::Done);
        }
        self.flush();
    }

    /// `peer`, a subscriber, offers `audio` and `video` more receiving sections on its live
    /// connection (the node's `Renegotiate`); the peer takes the answer if there is one.
    pub fn add_receivers(&mut self, peer: PeerRef, audio: usize, video: usize) -> NodeResponse {
        let (offer, pending) = self.peers[peer.0].peer.add_receivers(audio, video);
        let (node, session) = (self.peers[peer.0].node, self.peers[peer.0].session);
        let offer = match Offer::parse(&offer) {
            Ok(offer) => Box::new(offer),
            Err(e) => return NodeResponse::Error(e),
        };
        let seed = session.as_u128() as u64;
        let response = self.command(
            node,
            session,
            Command::Renegotiate {
                session,
                offer,
                seed,
            },
        );
        if let NodeResponse::SessionCreated(created) = &response {
            self.peers[peer.0]
                .peer
                .accept_answer(pending, &created.answer_sdp);
        }
        response
    }

    /// Control closes `peer`'s session; the peer goes away too.
    pub fn close(&mut self, peer: PeerRef) -> NodeResponse {
        let (node, session) = (self.peers[peer.0].node, self.peers[peer.0].session);
        self.peers[peer.0].gone = true;
        self.command(node, session, Command::Close { session })
    }

    /// The peer vanishes without a word (closed tab): the node must notice on its own.
    pub fn vanish(&mut self, peer: PeerRef) {
        self.peers[peer.0].gone = true;
    }

    pub fn peer(&self, peer: PeerRef) -> &Peer {
        &self.peers[peer.0].peer
    }

    pub fn peer_mut(&mut self, peer: PeerRef) -> &mut Peer {
        &mut self.peers[peer.0].peer
    }

    pub fn session(&self, peer: PeerRef) -> SessionId {
        self.peers[peer.0].session
    }

    /// Run simulated time forward by `duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        while self.now < until {
            self.step(until);
        }
    }

    /// Run until `done` holds (checked after every step) or `limit` of simulated time passed.
    /// Returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Kit) -> bool) -> bool {
        let until = self.now + limit;
        while self.now < until {
            if done(self) {
                return true;
            }
            self.step(until);
        }
        done(self)
    }

    fn step(&mut self, until: Instant) {
        let mut next = (self.now + MAX_STEP).min(until);
        if let Some(t) = self.net.next_arrival() {
            next = next.min(t);
        }
        for node in &mut self.nodes {
            for engine in &mut node.engines {
                next = next.min(engine.poll_timeout());
            }
            if let Some(t) = node.relay.poll_timeout() {
                next = next.min(t);
            }
        }
        if let Some((t, ..)) = self.frames.front() {
            next = next.min(*t);
        }
        for p in self.peers.iter().filter(|p| !p.gone) {
            if let Some(t) = p.peer.poll_timeout() {
                next = next.min(t);
            }
        }
        self.now = next.max(self.now);
        let now = self.now;
        while let Some(d) = self.net.pop_due(now) {
            self.deliver(d);
        }
        while self.frames.front().is_some_and(|(t, ..)| *t <= now) {
            let Some((_, from, to, frame)) = self.frames.pop_front() else {
                break;
            };
            let from_id = self.nodes[from].id.clone();
            self.nodes[to].relay.handle_frame(now, &from_id, frame);
        }
        for node in &mut self.nodes {
            for engine in &mut node.engines {
                engine.handle_timeout(now);
            }
            node.relay.handle_timeout(now);
        }
        for p in self.peers.iter_mut().filter(|p| !p.gone) {
            if p.peer.poll_timeout().is_some_and(|t| t <= now) {
                p.peer.handle_timeout(now);
                let from = p.peer.addr;
                let net = &mut self.net;
                p.peer
                    .drain(|to, contents| net.send(now, Datagram { from, to, contents }));
            }
        }
        self.flush();
        // Guarantee progress when something asks for `now` again (str0m's pacer hands out a
        // packet written now only at its next timeout).
        if self.now == now && next <= now {
            self.now = now + PROGRESS_STEP;
        }
    }

    fn deliver(&mut self, d: Datagram) {
        let now = self.now;
        if d.to.port() == RELAY_PORT {
            let from = self.nodes.iter().position(|n| n.relay_addr == d.from);
            let to = self.nodes.iter().position(|n| n.relay_addr == d.to);
            if let (Some(from), Some(to)) = (from, to) {
                if self.linked(from, to) {
                    let from_id = self.nodes[from].id.clone();
                    self.nodes[to]
                        .relay
                        .handle_datagram(now, &from_id, &d.contents);
                }
            }
            return;
        }
        for node in &mut self.nodes {
            if let Some(w) = node.addrs.iter().position(|a| *a == d.to) {
                node.engines[w].handle_datagram(now, d.from, d.to, &d.contents);
                return;
            }
        }
        if let Some(p) = self
            .peers
            .iter_mut()
            .find(|p| p.peer.addr == d.to && !p.gone)
        {
            p.peer.handle_datagram(now, d.from, &d.contents);
            // str0m wants draining after every input (it does not queue what it received).
            let from = p.peer.addr;
            let net = &mut self.net;
            p.peer
                .drain(|to, contents| net.send(now, Datagram { from, to, contents }));
        }
    }

    /// Carry every output away until everything is quiet: engines' datagrams to the network,
    /// cross-worker messages to the other engines, events to the node's log; peers'
    /// datagrams to the network.
    fn flush(&mut self) {
        let now = self.now;
        loop {
            let mut moved = false;
            let mut frames = Vec::new();
            let mut relay_datagrams = Vec::new();
            for (n, node) in self.nodes.iter_mut().enumerate() {
                let relay_id = node.relay.id();
                for w in 0..node.engines.len() {
                    let from = node.addrs[w];
                    // A chunk at a time, as a worker hands them to its socket.
                    let mut chunk = 0;
                    let mut first_rtp = true;
                    while let Some(t) = node.engines[w].poll_transmit() {
                        moved = true;
                        let datagram = Datagram {
                            from,
                            to: t.destination,
                            contents: t.contents,
                        };
                        if let Some(pt) = rtp_payload_type(&datagram) {
                            chunk += usize::from(pt != VIDEO_RTX_PT);
                            if std::mem::take(&mut first_rtp) {
                                *node.first_rtp_to.entry(datagram.to).or_default() += 1;
                            }
                        }
                        self.net.send(now, datagram);
                        if node.engines[w].transmits_queued() == 0 {
                            node.engines[w].sends_handed(now);
                            node.largest_handover = node.largest_handover.max(chunk);
                            chunk = 0;
                        }
                    }
                    node.engines[w].sends_handed(now);
                    while let Some((to, message)) = node.engines[w].poll_cross_worker() {
                        moved = true;
                        if to == relay_id {
                            node.relay.handle_cross_worker(now, message);
                        } else if let Some(engine) = node.engines.get_mut(to.index()) {
                            engine.handle_cross_worker(now, message);
                        }
                    }
                    for f in node.engines[w].take_forwarded() {
                        node.forwarded
                            .entry((f.session, f.slot))
                            .or_default()
                            .push(f.seq);
                    }
                    while let Some(event) = node.engines[w].poll_event() {
                        moved = true;
                        if let NodeEvent::SessionEnded { session, .. } = &event {
                            node.sessions.remove(session);
                        }
                        node.events.push(event);
                    }
                }
                while let Some((to, message)) = node.relay.poll_cross_worker() {
                    moved = true;
                    if let Some(engine) = node.engines.get_mut(to.index()) {
                        engine.handle_cross_worker(now, message);
                    }
                }
                while let Some((peer, frame)) = node.relay.poll_frame() {
                    moved = true;
                    frames.push((n, peer, frame));
                }
                while let Some((peer, datagram)) = node.relay.poll_datagram() {
                    moved = true;
                    relay_datagrams.push((node.relay_addr, peer, datagram));
                }
            }
            for (from, peer, frame) in frames {
                let to = self.nodes.iter().position(|n| n.id == peer);
                if let Some(to) = to.filter(|&to| self.linked(from, to)) {
                    self.frames
                        .push_back((now + RELAY_STREAM_DELAY, from, to, frame));
                }
            }
            for (from, peer, contents) in relay_datagrams {
                let to = self
                    .nodes
                    .iter()
                    .find(|n| n.id == peer)
                    .map(|n| n.relay_addr);
                if let Some(to) = to {
                    self.net.send(
                        now,
                        Datagram {
                            from,
                            to,
                            contents: contents.to_vec(),
                        },
                    );
                }
            }
            for p in self.peers.iter_mut() {
                let from = p.peer.addr;
                let gone = p.gone;
                let net = &mut self.net;
                p.peer.drain(|to, contents| {
                    if !gone {
                        net.send(now, Datagram { from, to, contents });
                    }
                });
            }
            if !moved {
                return;
            }
        }
    }
}
