//! The relay endpoint's I/O shell (docs/cascade.md): one thread with a tokio runtime that owns
//! the node's QUIC endpoint for relay links, the sans-IO [`RelayEndpoint`] and its place in
//! the workers' cross-worker mesh (a mailbox for packets and keyframe requests, a channel for
//! room notices, an eventfd that wakes it).
//!
//! Links: one QUIC connection per pair of nodes, opened by the node that relays a room from
//! the other. Its first bidirectional stream carries [`RelayFrame`]s: the opener's `Hello`
//! with the token control gave both ends, the acceptor's `Hello` back (or `Refused`), then the
//! endpoint's frames both ways; media rides QUIC datagrams. TLS pins the peer's certificate
//! as control reported it (the acceptor does not authenticate the opener by certificate: the
//! token does that).

// The shell owns the clock for the endpoint (which takes time as an input).
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;
use sfu_link::quinn;
use sfu_link::stream::{FrameReceiver, FrameSender};
use sfu_link::tls::{self, Identity, RELAY_ALPN};
use sfu_proto::relay::{LINK_TOKEN_LEN, RELAY_VERSION, RelayFrame};
use sfu_proto::{NodeId, RelayAddress, RelayLinkStats, RoomId, RoomRelays};
use tokio::sync::mpsc;

use crate::ids::RoomKey;
use crate::relay::{RelayConfig, RelayEndpoint};
use crate::worker::{WorkerCommand, WorkerHandle};

/// How long a link may take to open and exchange `Hello`s.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Link events (frames, datagrams) handled per loop pass besides the one that woke it.
const EVENT_BATCH: usize = 1024;
/// Frames queued for one link's stream before the endpoint's loop waits.
const FRAME_QUEUE: usize = 1024;
/// A relay link whose opening failed is tried again after this long, doubling up to
/// [`RETRY_MAX`].
const RETRY: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// An origin whose link stays closed this long is given up: its rooms are no longer relayed
/// from it here until control asks again (with its new address and certificate if it
/// restarted; control does so for each new session of a room on several nodes).
const GIVE_UP: Duration = Duration::from_secs(60);

/// Tells the node that a room is no longer relayed here (room, generation of the last ask).
pub type ReleaseRoom = Box<dyn Fn(&RoomId, u64) + Send>;

/// How long a link closed as a duplicate waits for the pair's other connection before it
/// counts as lost.
const REPLACE_WAIT: Duration = Duration::from_secs(5);

/// Why a node closes the second connection of a pair: the peer keeps the other one.
const DUPLICATE: &[u8] = b"duplicate link";

/// Why a node closes a pair's older connection when the node that opened it opens another:
/// that node has given the older one up (it restarted, or saw it die first).
const REPLACED: &[u8] = b"replaced by a newer link";

/// Which of a node pair's two connections to keep when a second one comes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Existing,
    /// Both nodes opened one at once: the new one is kept, the existing one closed as the
    /// duplicate (the peer keeps the same one).
    NewAsDuplicate,
    /// The node that opened the existing one opened the new one too.
    NewAsReplacement,
}

/// One connection per node pair. When both nodes opened one at once (each relays a room from
/// the other), both keep the one opened by the node with the smaller id. When the same node
/// opened both, it has given the first up (a restart, or a link it saw die before this node
/// did): keeping the first would refuse that node every new connection until the old one
/// timed out here, and it would dial again at once, over and over.
fn keep(me: &NodeId, peer: &NodeId, existing_opened_here: bool, new_opened_here: bool) -> Keep {
    if existing_opened_here == new_opened_here {
        return Keep::NewAsReplacement;
    }
    let opener_is_smaller = |here: bool| if here { me < peer } else { peer < me };
    if opener_is_smaller(new_opened_here) {
        Keep::NewAsDuplicate
    } else {
        Keep::Existing
    }
}

/// Whether the peer closed `connection` as the duplicate of another one it keeps.
fn closed_as_duplicate(connection: &quinn::Connection) -> bool {
    matches!(
        connection.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(close)) if close.reason.as_ref() == DUPLICATE
    )
}

/// How to reach an origin: address, certificate (DER) and link token.
type Origin = (SocketAddr, Vec<u8>, [u8; LINK_TOKEN_LEN]);

/// The origins control named, shared with the tasks opening their links: a task reads the
/// latest address and certificate at each attempt, and stops when its origin is gone.
type Origins = Arc<Mutex<HashMap<NodeId, Origin>>>;

/// What the node asks of its relay shell.
#[derive(Debug)]
pub enum RelayCommand {
    /// Relay room `room` (`key` on this node) from `origin`, reachable at `addr` with
    /// certificate `cert`, proving `token`.
    RelayRoom {
        key: RoomKey,
        /// The node's count of relay asks, handed back when the room is released.
        generation: u64,
        room: RoomId,
        origin: NodeId,
        addr: SocketAddr,
        cert: Vec<u8>,
        token: [u8; LINK_TOKEN_LEN],
        /// Leave the room after this long without a subscriber here.
        idle: Duration,
    },
    /// Node `peer` will open a link proving `token`.
    Expect {
        peer: NodeId,
        token: [u8; LINK_TOKEN_LEN],
    },
    /// Answer what the node relays of `room`.
    Status {
        room: RoomId,
        reply: tokio::sync::oneshot::Sender<RoomRelays>,
    },
}

/// The relay links' figures as the shell last published them (about every
/// [`STATS_INTERVAL`]), for the node's load report.
#[derive(Debug, Clone, Default)]
pub struct RelayStatsHandle(Arc<Mutex<Vec<RelayLinkStats>>>);

impl RelayStatsHandle {
    pub fn snapshot(&self) -> Vec<RelayLinkStats> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn publish(&self, links: Vec<RelayLinkStats>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = links;
    }
}

/// How often the shell publishes its links' figures.
const STATS_INTERVAL: Duration = Duration::from_millis(500);

/// The running shell: where peers reach it, and how to give it commands.
#[derive(Debug)]
pub struct RelayHost {
    stats: RelayStatsHandle,
    address: RelayAddress,
    commands: mpsc::UnboundedSender<RelayCommand>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RelayHost {
    /// Start the shell for node `node`, listening on `bind` and advertised at `advertise`
    /// (the port is the bound one), as participant `mesh[me]` of the workers' mesh whose
    /// lossless messages arrive on `peer_messages`.
    /// `release` is told each room the endpoint no longer relays, with the generation of the
    /// command that last asked for it.
    pub fn start(
        node: NodeId,
        bind: SocketAddr,
        advertise: std::net::IpAddr,
        mesh: Arc<Vec<WorkerHandle>>,
        me: usize,
        peer_messages: Receiver<WorkerCommand>,
        release: ReleaseRoom,
    ) -> std::io::Result<RelayHost> {
        let identity =
            Identity::generate(vec!["sfu-relay".into()]).map_err(std::io::Error::other)?;
        let server =
            tls::server_config_for(&identity, RELAY_ALPN).map_err(std::io::Error::other)?;
        let socket = std::net::UdpSocket::bind(bind)?;
        let port = socket.local_addr()?.port();
        let address = RelayAddress {
            addr: SocketAddr::new(advertise, port),
            cert: identity.cert.as_ref().to_vec(),
        };
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let stats = RelayStatsHandle::default();
        let published = stats.clone();
        let thread = std::thread::Builder::new()
            .name("sfu-relay".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "relay links: cannot start a runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let endpoint = match quinn::Endpoint::new(
                        quinn::EndpointConfig::default(),
                        Some(server),
                        socket,
                        Arc::new(quinn::TokioRuntime),
                    ) {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::error!(error = %e, "relay links: cannot open the QUIC endpoint");
                            return;
                        }
                    };
                    let shell =
                        Shell::new(node, endpoint, mesh, me, peer_messages, published, release);
                    shell.run(commands_rx, stop_rx).await;
                });
            })?;
        Ok(RelayHost {
            stats,
            address,
            commands,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where other nodes reach this node's relay endpoint.
    pub fn address(&self) -> &RelayAddress {
        &self.address
    }

    /// Its links' figures, for the load report.
    pub fn stats_handle(&self) -> RelayStatsHandle {
        self.stats.clone()
    }

    /// Hand the shell a command; `false` once it has stopped.
    pub fn command(&self, command: RelayCommand) -> bool {
        self.commands.send(command).is_ok()
    }
}

impl Drop for RelayHost {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the link tasks tell the shell's loop.
enum LinkEvent {
    /// A link is up: its peer, the connection, the queue to its stream's writer, and whether
    /// this node opened it.
    Up {
        peer: NodeId,
        connection: quinn::Connection,
        frames: mpsc::Sender<RelayFrame>,
        opened_here: bool,
    },
    Down {
        peer: NodeId,
        connection: quinn::Connection,
    },
    Frame(NodeId, RelayFrame),
    Datagram(NodeId, bytes::Bytes),
    /// An incoming link said hello: check its token, then answer.
    Hello {
        peer: NodeId,
        token: [u8; LINK_TOKEN_LEN],
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// Opening the link to `peer` stopped without a link: no room wants it any more, or it
    /// failed for [`GIVE_UP`].
    DialEnded {
        peer: NodeId,
        gave_up: bool,
    },
}

struct Link {
    connection: quinn::Connection,
    frames: mpsc::Sender<RelayFrame>,
    opened_here: bool,
}

struct Shell {
    node: NodeId,
    endpoint: quinn::Endpoint,
    relay: RelayEndpoint,
    mesh: Arc<Vec<WorkerHandle>>,
    me: usize,
    peer_messages: Receiver<WorkerCommand>,
    links: HashMap<NodeId, Link>,
    /// Tokens of links control announced, by the peer that will open them.
    expected: HashMap<NodeId, [u8; LINK_TOKEN_LEN]>,
    /// Links being opened.
    dialing: HashSet<NodeId>,
    /// How to reach each origin control named, to open its link again after it dropped.
    origins: Origins,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    to_wake: Vec<bool>,
    stats: RelayStatsHandle,
    stats_published: Instant,
    /// Datagrams QUIC refused, per peer.
    refused: HashMap<NodeId, u64>,
    /// Peers whose link the peer closed as a duplicate, since when: the pair's other
    /// connection is coming.
    replacing: HashMap<NodeId, Instant>,
    /// The generation of the last relay ask per room, and where released rooms go.
    generations: HashMap<RoomId, u64>,
    release: ReleaseRoom,
}

impl Shell {
    fn new(
        node: NodeId,
        endpoint: quinn::Endpoint,
        mesh: Arc<Vec<WorkerHandle>>,
        me: usize,
        peer_messages: Receiver<WorkerCommand>,
        stats: RelayStatsHandle,
        release: ReleaseRoom,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let count = mesh.len();
        Self {
            node,
            endpoint,
            relay: RelayEndpoint::new(me, RelayConfig::default(), Instant::now()),
            mesh,
            me,
            peer_messages,
            links: HashMap::new(),
            expected: HashMap::new(),
            dialing: HashSet::new(),
            origins: Arc::new(Mutex::new(HashMap::new())),
            events_tx,
            events,
            to_wake: vec![false; count],
            stats,
            stats_published: Instant::now(),
            refused: HashMap::new(),
            replacing: HashMap::new(),
            generations: HashMap::new(),
            release,
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<RelayCommand>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let waker = self.mesh[self.me].waker.clone();
        let wake_fd = match waker.async_fd() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "relay links: cannot wait on the mailbox");
                return;
            }
        };
        tokio::spawn(accept(
            self.endpoint.clone(),
            self.node.clone(),
            self.events_tx.clone(),
        ));
        tracing::info!(addr = ?self.endpoint.local_addr().ok(), "relay endpoint listening (QUIC)");
        loop {
            self.take_mailbox();
            self.flush();
            waker.park();
            if !self.mesh[self.me].mailbox.is_empty() || !self.peer_messages.is_empty() {
                waker.unpark();
                continue;
            }
            let deadline = self.relay.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                Some(command) = commands.recv() => self.command(command),
                ready = wake_fd.readable() => {
                    if let Ok(mut guard) = ready {
                        waker.drain();
                        guard.clear_ready();
                    }
                }
                Some(event) = self.events.recv() => {
                    // Commands first (see below), even when the event won the race.
                    while let Ok(command) = commands.try_recv() {
                        self.command(command);
                    }
                    self.event(event);
                }
                () = sleep => self.relay.handle_timeout(Instant::now()),
            }
            waker.unpark();
            // Whatever woke the loop, take everything else that is ready too: commands first,
            // so that an `Expect` queued before the peer was told to connect is in place when
            // the peer's `Hello` is looked at; then a bounded batch of link events (the
            // mailbox is taken at the top of the loop).
            while let Ok(command) = commands.try_recv() {
                self.command(command);
            }
            for _ in 0..EVENT_BATCH {
                let Ok(event) = self.events.try_recv() else {
                    break;
                };
                self.event(event);
            }
            if deadline.is_some_and(|t| t <= Instant::now()) {
                self.relay.handle_timeout(Instant::now());
            }
        }
        for link in self.links.values() {
            link.connection.close(0u32.into(), b"node stopping");
        }
        self.endpoint.close(0u32.into(), b"node stopping");
    }

    /// The workers' messages for the endpoint.
    fn take_mailbox(&mut self) {
        let now = Instant::now();
        while let Ok(command) = self.peer_messages.try_recv() {
            if let WorkerCommand::Peer(message) = command {
                self.relay.handle_cross_worker(now, message);
            }
        }
        let mailbox = self.mesh[self.me].mailbox.clone();
        for _ in 0..4096 {
            let Some(message) = mailbox.pop() else { break };
            self.relay.handle_cross_worker(now, message);
        }
    }

    fn command(&mut self, command: RelayCommand) {
        let now = Instant::now();
        match command {
            RelayCommand::RelayRoom {
                key,
                generation,
                room,
                origin,
                addr,
                cert,
                token,
                idle,
            } => {
                self.relay.relay_room(now, key, &room, &origin, Some(idle));
                self.generations.insert(room, generation);
                // A dial under way takes the new address and certificate at its next attempt
                // (the origin may have restarted with a new certificate).
                self.lock_origins()
                    .insert(origin.clone(), (addr, cert, token));
                if !self.links.contains_key(&origin) && self.dialing.insert(origin.clone()) {
                    self.dial(origin);
                }
            }
            RelayCommand::Expect { peer, token } => {
                self.expected.insert(peer, token);
            }
            RelayCommand::Status { room, reply } => {
                let _ = reply.send(self.relay.room_relays(&room));
            }
        }
    }

    fn lock_origins(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Origin>> {
        self.origins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open the link to origin `peer`, with the address and certificate control gave last,
    /// retrying with backoff until it opens, no room wants it, or [`GIVE_UP`] passes.
    fn dial(&self, peer: NodeId) {
        let (endpoint, me, events, origins) = (
            self.endpoint.clone(),
            self.node.clone(),
            self.events_tx.clone(),
            self.origins.clone(),
        );
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut backoff = RETRY;
            loop {
                let origin = origins
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&peer)
                    .cloned();
                let Some((addr, cert, token)) = origin else {
                    let _ = events.send(LinkEvent::DialEnded {
                        peer,
                        gave_up: false,
                    });
                    return;
                };
                match open(&endpoint, &me, &peer, addr, &cert, token).await {
                    Ok((connection, sender, receiver)) => {
                        serve(peer, connection, sender, receiver, events, true).await;
                        return;
                    }
                    Err(e) => {
                        if events.is_closed() {
                            return;
                        }
                        if started.elapsed() >= GIVE_UP {
                            tracing::warn!(%peer, %addr, error = %e, "relay link did not open for {} s; giving up", GIVE_UP.as_secs());
                            let _ = events.send(LinkEvent::DialEnded {
                                peer,
                                gave_up: true,
                            });
                            return;
                        }
                        tracing::warn!(%peer, %addr, error = %e, "relay link did not open; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                }
            }
        });
    }

    /// The link to `peer` is gone: its rooms' relayed tracks end, and the rooms relayed from
    /// it open it again with what control gave.
    fn lost(&mut self, now: Instant, peer: NodeId) {
        tracing::warn!(%peer, "relay link down");
        self.links.remove(&peer);
        self.replacing.remove(&peer);
        self.relay.link_down(now, &peer);
        let again = self.relay.relayed_rooms().any(|(_, from)| from == &peer);
        if again && self.lock_origins().contains_key(&peer) && self.dialing.insert(peer.clone()) {
            self.dial(peer);
        }
    }

    fn event(&mut self, event: LinkEvent) {
        let now = Instant::now();
        match event {
            LinkEvent::Up {
                peer,
                connection,
                frames,
                opened_here,
            } => {
                if opened_here {
                    self.dialing.remove(&peer);
                }
                self.replacing.remove(&peer);
                if let Some(existing) = self.links.get(&peer) {
                    match keep(&self.node, &peer, existing.opened_here, opened_here) {
                        Keep::Existing => {
                            connection.close(0u32.into(), DUPLICATE);
                            return;
                        }
                        Keep::NewAsDuplicate => existing.connection.close(0u32.into(), DUPLICATE),
                        Keep::NewAsReplacement => {
                            tracing::info!(%peer, "relay link opened again by the same node: the new one replaces the old");
                            existing.connection.close(0u32.into(), REPLACED);
                        }
                    }
                }
                tracing::info!(%peer, remote = %connection.remote_address(), opened_here, "relay link up");
                self.links.insert(
                    peer.clone(),
                    Link {
                        connection,
                        frames,
                        opened_here,
                    },
                );
                // Again after a replacement too: joins are idempotent, and whatever was sent
                // on the closed connection may not have arrived.
                self.relay.link_up(now, &peer);
            }
            LinkEvent::Down { peer, connection } => {
                let current = self
                    .links
                    .get(&peer)
                    .is_some_and(|l| l.connection.stable_id() == connection.stable_id());
                if current && closed_as_duplicate(&connection) {
                    // Both nodes opened a connection at once and the peer kept the other one,
                    // whose `Up` follows here: the rooms stay as they are (unless it does not
                    // come within REPLACE_WAIT, see `flush`).
                    tracing::debug!(%peer, "relay link replaced by the pair's other connection");
                    self.links.remove(&peer);
                    self.replacing.insert(peer, now);
                } else if current {
                    self.lost(now, peer);
                }
            }
            LinkEvent::Frame(peer, frame) => self.relay.handle_frame(now, &peer, frame),
            LinkEvent::Datagram(peer, bytes) => self.relay.handle_datagram(now, &peer, &bytes),
            LinkEvent::DialEnded { peer, gave_up } => {
                self.dialing.remove(&peer);
                if gave_up {
                    self.lock_origins().remove(&peer);
                    let rooms = self.relay.forget_origin(now, &peer);
                    tracing::warn!(%peer, rooms, "origin unreachable: its rooms are no longer relayed from it until control asks again");
                }
            }
            LinkEvent::Hello { peer, token, reply } => {
                let ok = self.expected.get(&peer).is_some_and(|t| *t == token);
                if !ok {
                    tracing::warn!(%peer, "relay link refused: no such link announced by control");
                }
                let _ = reply.send(ok);
            }
        }
    }

    /// The endpoint's outputs: messages to workers (then wake them), frames to links'
    /// writers, datagrams to connections.
    fn flush(&mut self) {
        while let Some((worker, message)) = self.relay.poll_cross_worker() {
            let Some(handle) = self.mesh.get(worker.index()) else {
                continue;
            };
            if message.is_lossless() {
                let _ = handle.commands.send(WorkerCommand::Peer(message));
            } else if handle.mailbox.push(message).is_err() {
                continue;
            }
            self.to_wake[worker.index()] = true;
        }
        for (worker, wake) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(wake) {
                self.mesh[worker].mailbox.wake();
            }
        }
        while let Some(room) = self.relay.poll_released() {
            if let Some(generation) = self.generations.remove(&room) {
                (self.release)(&room, generation);
            }
        }
        while let Some((peer, frame)) = self.relay.poll_frame() {
            if let Some(link) = self.links.get(&peer) {
                if link.frames.try_send(frame).is_err() {
                    tracing::warn!(%peer, "relay link's stream is backed up; closing it");
                    link.connection.close(3u32.into(), b"stream backed up");
                }
            }
        }
        while let Some((peer, datagram)) = self.relay.poll_datagram() {
            if let Some(link) = self.links.get(&peer) {
                // Refused when the path's limit shrank below it or the send buffer is full:
                // counted, and the hop's NACK asks again.
                if link.connection.send_datagram(datagram).is_err() {
                    *self.refused.entry(peer).or_default() += 1;
                }
            }
        }
        if self.stats_published.elapsed() >= STATS_INTERVAL {
            self.stats_published = Instant::now();
            // A replaced link whose successor never came up is a lost link after all.
            let now = Instant::now();
            let stale: Vec<NodeId> = self
                .replacing
                .iter()
                .filter(|(_, since)| now.saturating_duration_since(**since) >= REPLACE_WAIT)
                .map(|(p, _)| p.clone())
                .collect();
            for peer in stale {
                self.lost(now, peer);
            }
            // Links still being opened for origins no room is relayed from any more (they
            // idled out): their tasks stop at the next attempt.
            let unwanted: Vec<NodeId> = self
                .dialing
                .iter()
                .filter(|p| !self.relay.relayed_rooms().any(|(_, from)| from == *p))
                .cloned()
                .collect();
            for peer in unwanted {
                self.lock_origins().remove(&peer);
            }
            // One encoding serves every peer: fragment for the smallest limit of the links
            // (each grows from QUIC's initial 1200-byte MTU as path MTU discovery succeeds).
            if let Some(max) = self
                .links
                .values()
                .filter_map(|l| l.connection.max_datagram_size())
                .min()
            {
                self.relay.set_max_datagram(max);
            }
            let links = self
                .relay
                .link_stats()
                .into_iter()
                .map(|mut l| {
                    if let Some(peer) = &l.peer {
                        l.rtt_us = self
                            .links
                            .get(peer)
                            .map_or(0, |link| link.connection.rtt().as_micros() as u64);
                        l.dropped_congestion = self.refused.get(peer).copied().unwrap_or(0);
                    }
                    l
                })
                .collect();
            self.stats.publish(links);
        }
    }
}

/// Open a link to `peer` at `addr`: TLS pinned to `cert`, then the `Hello` exchange.
async fn open(
    endpoint: &quinn::Endpoint,
    me: &NodeId,
    peer: &NodeId,
    addr: SocketAddr,
    cert: &[u8],
    token: [u8; LINK_TOKEN_LEN],
) -> Result<
    (
        quinn::Connection,
        FrameSender<RelayFrame>,
        FrameReceiver<RelayFrame>,
    ),
    String,
> {
    let client = tls::pinned_client_config(cert, RELAY_ALPN).map_err(|e| e.to_string())?;
    let handshake = async {
        let connection = endpoint
            .connect_with(client, addr, tls::SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let (mut sender, mut receiver) = (FrameSender::new(send), FrameReceiver::new(recv));
        say_hello(&mut sender, me, token).await?;
        match receiver.next().await.map_err(|e| e.to_string())? {
            RelayFrame::Hello { version, node, .. }
                if version == RELAY_VERSION && &node == peer =>
            {
                Ok((connection, sender, receiver))
            }
            RelayFrame::Refused { reason } => Err(format!("refused: {reason}")),
            other => Err(format!("unexpected first frame {other:?}")),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Send this node's `Hello` with `token`.
async fn say_hello(
    sender: &mut FrameSender<RelayFrame>,
    me: &NodeId,
    token: [u8; LINK_TOKEN_LEN],
) -> Result<(), String> {
    let hello = RelayFrame::Hello {
        version: RELAY_VERSION,
        node: me.clone(),
        token,
    };
    sender.send(&hello).await.map_err(|e| e.to_string())
}

/// Accept links until the endpoint closes.
async fn accept(endpoint: quinn::Endpoint, me: NodeId, events: mpsc::UnboundedSender<LinkEvent>) {
    while let Some(incoming) = endpoint.accept().await {
        let (me, events) = (me.clone(), events.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let handshake = async {
                let connection = incoming.await.map_err(|e| e.to_string())?;
                let (send, recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
                let (mut sender, mut receiver) = (
                    FrameSender::<RelayFrame>::new(send),
                    FrameReceiver::new(recv),
                );
                let RelayFrame::Hello {
                    version,
                    node,
                    token,
                } = receiver.next().await.map_err(|e| e.to_string())?
                else {
                    return Err("first frame is not Hello".to_string());
                };
                let refuse = |reason: String| RelayFrame::Refused { reason };
                if version != RELAY_VERSION {
                    let reason =
                        format!("relay protocol {version}, this node speaks {RELAY_VERSION}");
                    let _ = sender.send(&refuse(reason.clone())).await;
                    return Err(reason);
                }
                let (reply, verdict) = tokio::sync::oneshot::channel();
                events
                    .send(LinkEvent::Hello {
                        peer: node.clone(),
                        token,
                        reply,
                    })
                    .map_err(|_| "node stopping".to_string())?;
                if !verdict.await.unwrap_or(false) {
                    let _ = sender
                        .send(&refuse("no such link announced by control".into()))
                        .await;
                    return Err(format!("{node}: unexpected token"));
                }
                say_hello(&mut sender, &me, token).await?;
                Ok((node, connection, sender, receiver))
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok((peer, connection, sender, receiver))) => {
                    serve(peer, connection, sender, receiver, events, false).await;
                }
                Ok(Err(e)) => tracing::warn!(%remote, error = %e, "relay link refused"),
                Err(_) => tracing::warn!(%remote, "relay link handshake timed out"),
            }
        });
    }
}

/// Carry a link that is up: its stream's frames and its datagrams to the shell, the shell's
/// frames to its stream, until it closes.
async fn serve(
    peer: NodeId,
    connection: quinn::Connection,
    mut sender: FrameSender<RelayFrame>,
    mut receiver: FrameReceiver<RelayFrame>,
    events: mpsc::UnboundedSender<LinkEvent>,
    opened_here: bool,
) {
    let (frames, mut outbox) = mpsc::channel::<RelayFrame>(FRAME_QUEUE);
    if events
        .send(LinkEvent::Up {
            peer: peer.clone(),
            connection: connection.clone(),
            frames,
            opened_here,
        })
        .is_err()
    {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbox.recv().await {
            if sender.send(&frame).await.is_err() {
                return;
            }
        }
    });
    let datagrams = {
        let (connection, events, peer) = (connection.clone(), events.clone(), peer.clone());
        tokio::spawn(async move {
            while let Ok(bytes) = connection.read_datagram().await {
                if events
                    .send(LinkEvent::Datagram(peer.clone(), bytes))
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    loop {
        match receiver.next().await {
            Ok(frame) => {
                if events.send(LinkEvent::Frame(peer.clone(), frame)).is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "relay link stream ended");
                break;
            }
        }
    }
    writer.abort();
    datagrams.abort();
    connection.close(0u32.into(), b"link closed");
    let _ = events.send(LinkEvent::Down { peer, connection });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        s.parse().expect("a node id")
    }

    #[test]
    fn of_two_connections_opened_at_once_both_nodes_keep_the_smaller_ids() {
        let (a, b) = (id("n1"), id("n2"));
        // At n1: its own (existing) against n2's (new), and the other way round.
        assert_eq!(keep(&a, &b, true, false), Keep::Existing);
        assert_eq!(keep(&a, &b, false, true), Keep::NewAsDuplicate);
        // At n2, the same pair of connections: n1's is kept there too.
        assert_eq!(keep(&b, &a, false, true), Keep::Existing);
        assert_eq!(keep(&b, &a, true, false), Keep::NewAsDuplicate);
    }

    #[test]
    fn a_node_that_opens_again_replaces_its_own_older_connection() {
        let (a, b) = (id("n1"), id("n2"));
        // n1 restarted and dials n2, which still holds n1's old connection: n2 takes the new
        // one (before, it refused it as a duplicate and n1 redialled hundreds of times a
        // second until the old one timed out).
        assert_eq!(keep(&b, &a, false, false), Keep::NewAsReplacement);
        assert_eq!(keep(&a, &b, true, true), Keep::NewAsReplacement);
        assert_eq!(keep(&a, &b, false, false), Keep::NewAsReplacement);
    }
}
