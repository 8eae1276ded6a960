//! The node: starts the workers, binds their sockets and serves the node API. It places each
//! new session on the least-loaded worker, sets the session up (SDP, codecs, DTLS) on a
//! low-priority helper thread so offers never cost the media workers time, and hands it over;
//! it routes later calls to the session's worker and forwards the workers' events to control.
//! The mutex here is on the control path only; the workers never take it.

// Control path outside the engine: set-up and the event pump read the clock.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TrySendError};
use sfu_proto::{
    CreateSession, EndReason, HeldSession, LoadReport, NodeError, NodeEvent, NodeHealth, NodeId,
    NodeRequest, NodeResponse, NodeStats, RelayAddress, RelayRoom, RoomId, RoomRelays,
    SessionCreated, SessionId, SessionKind, SetFloor, WorkerId,
};
use str0m::config::DtlsCert;
use tokio::sync::{mpsc, oneshot};

use crate::affinity::CpuPlan;
use crate::config::{ConfigError, NodeConfig};
use crate::engine::allocation::Policy;
use crate::engine::session::{self, Offer, Session, SessionSpec};
use crate::engine::{Command, Engine, EngineConfig};
use crate::ids::RoomKey;
use crate::io::{self, Waker};
use crate::mailbox::Mailbox;
use crate::metrics::WorkerMetrics;
use crate::relay_link::{RelayCommand, RelayHost, RelayStatsHandle};
use crate::worker::{Worker, WorkerCommand, WorkerHandle};

/// Offers waiting for the set-up thread; beyond this the node answers "no capacity" at once
/// instead of queueing a signaling flood.
const SETUP_QUEUE: usize = 256;
/// How often the node reports its load in a [`NodeEvent::Load`].
const LOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot bind media port {addr} for worker {worker}: {source} (set node.media_port_base to a free range)"
    )]
    Bind {
        worker: usize,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no free block of {count} consecutive UDP ports from {from} upward")]
    NoFreePorts { from: u16, count: usize },
    #[error("worker {worker}: {source}")]
    Io {
        worker: usize,
        source: std::io::Error,
    },
    #[error(
        "cannot start the relay endpoint on {addr}: {source} (set node.relay_port to a free port)"
    )]
    Relay {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
struct SessionEntry {
    worker: WorkerId,
    room: RoomKey,
    room_id: RoomId,
    kind: SessionKind,
    identity: String,
}

/// Which worker has which session, and the rooms' keys. Control path only.
#[derive(Debug, Default)]
struct Directory {
    sessions: HashMap<SessionId, SessionEntry>,
    /// Room name → key and the number of sessions in it on this node.
    rooms: HashMap<RoomId, (RoomKey, usize)>,
    next_room: u32,
    /// Rooms the relay endpoint was asked to relay, each holding its key like one more
    /// session until the endpoint releases it, with the generation of the latest ask (the
    /// release of an older one is stale and ignored).
    relayed: HashMap<RoomId, u64>,
    next_relay_generation: u64,
    /// Publication order handed to publishers (larger = newer).
    next_order: u64,
    per_worker: Vec<usize>,
}

impl Directory {
    fn insert(
        &mut self,
        session: SessionId,
        room: &RoomId,
        kind: SessionKind,
        identity: &str,
    ) -> Result<(SessionEntry, u64), NodeError> {
        if self.sessions.contains_key(&session) {
            return Err(NodeError::DuplicateSession);
        }
        let next = RoomKey(self.next_room);
        let (key, count) = self.rooms.entry(room.clone()).or_insert((next, 0));
        if *key == next {
            self.next_room = self.next_room.wrapping_add(1);
        }
        *count += 1;
        let key = *key;
        let worker = self
            .per_worker
            .iter()
            .enumerate()
            .min_by_key(|(i, n)| (**n, *i))
            .map_or(0, |(i, _)| i);
        self.per_worker[worker] += 1;
        let entry = SessionEntry {
            worker: WorkerId(worker as u16),
            room: key,
            room_id: room.clone(),
            kind,
            identity: identity.to_string(),
        };
        self.sessions.insert(session, entry.clone());
        self.next_order += 1;
        Ok((entry, self.next_order))
    }

    /// The key of `room` for the relay endpoint, assigned if the room has none yet, and the
    /// generation of this ask. The relay holds the key (one more holder) until the endpoint
    /// releases the room ([`Directory::release_relay`]).
    fn relay_key(&mut self, room: &RoomId) -> (RoomKey, u64) {
        let next = RoomKey(self.next_room);
        let (key, count) = self.rooms.entry(room.clone()).or_insert((next, 0));
        if *key == next {
            self.next_room = self.next_room.wrapping_add(1);
        }
        self.next_relay_generation += 1;
        let generation = self.next_relay_generation;
        if self.relayed.insert(room.clone(), generation).is_none() {
            *count += 1;
        }
        (*key, generation)
    }

    /// The relay endpoint no longer relays `room` (as of ask `generation`): its hold on the
    /// key ends, unless the room was asked for again since.
    fn release_relay(&mut self, room: &RoomId, generation: u64) {
        if self.relayed.get(room) != Some(&generation) {
            return;
        }
        self.relayed.remove(room);
        if let Some((_, count)) = self.rooms.get_mut(room) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.rooms.remove(room);
            }
        }
    }

    fn remove(&mut self, session: SessionId, room: &RoomId) {
        let Some(entry) = self.sessions.remove(&session) else {
            return;
        };
        if let Some(n) = self.per_worker.get_mut(entry.worker.index()) {
            *n = n.saturating_sub(1);
        }
        if let Some((_, count)) = self.rooms.get_mut(room) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.rooms.remove(room);
            }
        }
    }
}

/// What the node and its helper threads share.
#[derive(Debug)]
struct Shared {
    workers: Arc<Vec<WorkerHandle>>,
    directory: Mutex<Directory>,
    /// Set while each worker thread runs.
    alive: Vec<Arc<AtomicBool>>,
}

impl Shared {
    fn directory(&self) -> MutexGuard<'_, Directory> {
        // A panic while holding this lock left plain maps behind; they are still usable.
        self.directory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn workers_up(&self) -> Vec<bool> {
        self.alive
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .collect()
    }
}

/// A job for the set-up thread.
type SetupJob = Box<dyn FnOnce() + Send>;

fn no_relay() -> NodeError {
    NodeError::BadRequest("this node runs no relay endpoint (node.relay_port is not set)".into())
}

/// Clears a worker's alive flag when its thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A running media node. Dropping it stops the workers.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    setup: Option<Sender<SetupJob>>,
    helpers: Vec<JoinHandle<()>>,
    events: Mutex<Option<mpsc::UnboundedReceiver<NodeEvent>>>,
    /// Per worker: the address in its ICE candidates and its DTLS certificate.
    candidates: Vec<SocketAddr>,
    certificates: Vec<Option<DtlsCert>>,
    io_backend: String,
    cpus: CpuPlan,
    max_sessions_per_worker: usize,
    /// `node.bandwidth_estimation` and `node.bandwidth_pause`, for each subscriber session
    /// set up.
    bandwidth: Option<Policy>,
    /// `node.rtx_cache_ms`.
    rtx_cache: Duration,
    id: NodeId,
    /// The node's own events (draining) join the workers' here.
    events_out: Option<mpsc::UnboundedSender<NodeEvent>>,
    draining: AtomicBool,
    stopping: Arc<AtomicBool>,
    /// The relay endpoint's shell, with `node.relay_port` set.
    relay: Option<RelayHost>,
}

impl Node {
    /// Validate the configuration, bind one UDP socket per worker and start the workers.
    pub fn start(config: NodeConfig) -> Result<Node, StartError> {
        config.validate()?;
        let count = config.worker_count();
        let sockets = bind_sockets(&config, count)?;
        let cpus = if config.pin_workers {
            CpuPlan::new(&crate::affinity::allowed_cpus().unwrap_or_default(), count)
        } else {
            CpuPlan::default()
        };

        let mut handles = Vec::with_capacity(count);
        let mut receivers = Vec::with_capacity(count);
        let mut candidates = Vec::with_capacity(count);
        let mut certificates = Vec::with_capacity(count);
        for (i, socket) in sockets.iter().enumerate() {
            let waker = Waker::new().map_err(|source| StartError::Io { worker: i, source })?;
            let (tx, rx) = crossbeam::channel::unbounded();
            let port = socket
                .local_addr()
                .map_err(|source| StartError::Io { worker: i, source })?
                .port();
            handles.push(WorkerHandle {
                id: WorkerId(i as u16),
                port,
                commands: tx,
                mailbox: Arc::new(Mailbox::new(config.ring_capacity, waker.clone())),
                waker,
                metrics: Arc::new(WorkerMetrics::default()),
            });
            receivers.push(rx);
            candidates.push(SocketAddr::new(config.advertise_ip, port));
            // One DTLS certificate per worker: generating one per session costs more than the
            // rest of session set-up together.
            certificates.push(
                str0m::crypto::from_feature_flags()
                    .dtls_provider
                    .generate_certificate(),
            );
        }
        // The relay endpoint joins the workers' mesh as its last participant (docs/cascade.md).
        let mut mesh = handles.clone();
        let relay_messages = match config.relay_port {
            Some(_) => {
                let waker = Waker::new().map_err(|source| StartError::Io {
                    worker: count,
                    source,
                })?;
                let (tx, rx) = crossbeam::channel::unbounded();
                mesh.push(WorkerHandle {
                    id: WorkerId(count as u16),
                    port: 0,
                    commands: tx,
                    mailbox: Arc::new(Mailbox::new(config.ring_capacity, waker.clone())),
                    waker,
                    metrics: Arc::new(WorkerMetrics::default()),
                });
                Some(rx)
            }
            None => None,
        };
        let mesh = Arc::new(mesh);
        let workers = Arc::new(handles);
        let alive: Vec<Arc<AtomicBool>> = (0..count)
            .map(|_| Arc::new(AtomicBool::new(true)))
            .collect();
        let shared = Arc::new(Shared {
            workers: workers.clone(),
            directory: Mutex::new(Directory {
                per_worker: vec![0; count],
                ..Directory::default()
            }),
            alive: alive.clone(),
        });
        let (engine_events, engine_events_rx) = crossbeam::channel::unbounded();
        let engine_config = EngineConfig {
            workers: count,
            max_sessions: config.max_sessions_per_worker,
            first_contact_timeout: config.first_contact_timeout(),
            connect_timeout: config.connect_timeout(),
            ice_timeout: config.ice_timeout(),
            publisher_remb_kbps: config.publisher_remb_kbps,
            layer_timeout: Duration::from_millis(config.layer_timeout_ms),
            relay: relay_messages.is_some().then_some(WorkerId(count as u16)),
        };

        let mut node = Node {
            shared: shared.clone(),
            threads: Vec::with_capacity(count),
            setup: None,
            helpers: Vec::new(),
            events: Mutex::new(None),
            candidates,
            certificates,
            io_backend: String::new(),
            cpus: cpus.clone(),
            max_sessions_per_worker: config.max_sessions_per_worker,
            bandwidth: config.bandwidth_estimation.then_some(Policy {
                allow_pause: config.bandwidth_pause,
                ..Policy::default()
            }),
            rtx_cache: Duration::from_millis(config.rtx_cache_ms),
            id: config.id.clone(),
            events_out: None,
            draining: AtomicBool::new(false),
            stopping: Arc::new(AtomicBool::new(false)),
            relay: None,
        };
        let mut backend_names = Vec::new();
        for (i, (socket, rx)) in sockets.into_iter().zip(receivers).enumerate() {
            let local = socket
                .local_addr()
                .map_err(|source| StartError::Io { worker: i, source })?;
            let id = WorkerId(i as u16);
            let engine = Engine::new(
                id,
                engine_config.clone(),
                workers[i].metrics.clone(),
                Instant::now(),
            );
            let worker = Worker::new(engine, local, mesh.clone(), rx, engine_events.clone());
            let waker = workers[i].waker.clone();
            let cpu = cpus.worker.get(i).copied();
            let backend = config.io_backend;
            let udp_gso = config.udp_gso;
            let alive = AliveGuard(alive[i].clone());
            // The ring is created on the thread that uses it; the thread reports back which
            // backend it got (or why it could not start).
            let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name(format!("sfu-worker-{i}"))
                .spawn(move || {
                    let _alive = alive;
                    if let Some(cpu) = cpu {
                        if let Err(e) = crate::affinity::pin_current_thread(cpu) {
                            tracing::warn!(worker = i, cpu, error = %e, "could not pin worker to its CPU");
                        }
                    }
                    match io::build(backend, socket, &waker, udp_gso) {
                        Ok(io) => {
                            let _ = started_tx.send(Ok(io.name()));
                            worker.run(io);
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                        }
                    }
                })
                .map_err(|source| StartError::Io { worker: i, source })?;
            node.threads.push(thread);
            let started = started_rx.recv().unwrap_or_else(|_| {
                Err(std::io::Error::other(
                    "worker thread exited during start-up",
                ))
            });
            match started {
                Ok(name) => backend_names.push(name),
                Err(source) => return Err(StartError::Io { worker: i, source }),
            }
        }
        drop(engine_events);
        if let (Some(port), Some(messages)) = (config.relay_port, relay_messages) {
            let addr = SocketAddr::new(config.media_bind, port);
            let directory = shared.clone();
            let host = RelayHost::start(
                config.id.clone(),
                addr,
                config.advertise_ip,
                mesh.clone(),
                count,
                messages,
                Box::new(move |room: &RoomId, generation| {
                    directory.directory().release_relay(room, generation);
                }),
            )
            .map_err(|source| StartError::Relay { addr, source })?;
            node.relay = Some(host);
        }
        backend_names.sort_unstable();
        backend_names.dedup();
        node.io_backend = backend_names.join(",");

        let (setup_tx, setup_rx) = crossbeam::channel::bounded::<SetupJob>(SETUP_QUEUE);
        node.setup = Some(setup_tx);
        node.helpers.push(
            std::thread::Builder::new()
                .name("sfu-setup".into())
                .spawn({
                    let cpus = cpus.clone();
                    move || {
                        cpus.confine_to_spare("sfu-setup");
                        run_setup(setup_rx)
                    }
                })
                .map_err(|source| StartError::Io { worker: 0, source })?,
        );
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        *node.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(events_rx);
        node.events_out = Some(events_tx.clone());
        let pump_shared = shared.clone();
        let stopping = node.stopping.clone();
        let relay_stats = node.relay.as_ref().map(RelayHost::stats_handle);
        node.helpers.push(
            std::thread::Builder::new()
                .name("sfu-events".into())
                .spawn(move || {
                    cpus.confine_to_spare("sfu-events");
                    run_event_pump(
                        pump_shared,
                        engine_events_rx,
                        events_tx,
                        stopping,
                        relay_stats,
                    )
                })
                .map_err(|source| StartError::Io { worker: 0, source })?,
        );
        tracing::info!(
            workers = count,
            ports = ?node.ports(),
            io = %node.io_backend,
            advertise_ip = %config.advertise_ip,
            worker_cpus = ?node.cpus.worker,
            other_cpus = ?node.cpus.spare,
            "media node started"
        );
        Ok(node)
    }

    /// Which CPU each worker is pinned to, and the spare CPUs the node's other threads run on
    /// (empty: they share the workers' cores at a lower priority). Whoever embeds the node
    /// should keep its own threads on the spare CPUs too ([`CpuPlan::confine_to_spare`]).
    pub fn cpus(&self) -> &CpuPlan {
        &self.cpus
    }

    /// The sessions this node holds (also those still being set up), as it reports them when
    /// it registers with control.
    pub fn held_sessions(&self) -> Vec<HeldSession> {
        self.shared
            .directory()
            .sessions
            .iter()
            .map(|(id, entry)| HeldSession {
                session: *id,
                room: entry.room_id.clone(),
                kind: entry.kind,
                identity: entry.identity.clone(),
            })
            .collect()
    }

    /// Start draining: tell control (event `Draining`) to send no new rooms here. Sessions
    /// go on; the caller decides how long to wait for them ([`Node::held_sessions`]).
    pub fn drain(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            tracing::info!("draining: no new rooms; waiting for the sessions to end");
        }
        if let Some(out) = &self.events_out {
            let _ = out.send(NodeEvent::Draining);
        }
    }

    /// Whether [`Node::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The node's name (`node.id`).
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// Sessions the node accepts at most, all workers together.
    pub fn capacity(&self) -> u64 {
        (self.shared.workers.len() * self.max_sessions_per_worker) as u64
    }

    /// Where other nodes reach this node's relay endpoint (`None` without `node.relay_port`).
    pub fn relay_address(&self) -> Option<RelayAddress> {
        self.relay.as_ref().map(|r| r.address().clone())
    }

    /// Relay `r.room` from another node (docs/cascade.md).
    fn relay_room(&self, r: RelayRoom) -> Result<NodeResponse, NodeError> {
        let relay = self.relay.as_ref().ok_or_else(no_relay)?;
        let (key, generation) = self.shared.directory().relay_key(&r.room);
        let sent = relay.command(RelayCommand::RelayRoom {
            key,
            generation,
            room: r.room,
            origin: r.origin,
            addr: r.addr,
            cert: r.cert,
            token: r.token,
            idle: Duration::from_secs(u64::from(r.idle_secs.max(1))),
        });
        if sent {
            Ok(NodeResponse::Done)
        } else {
            Err(NodeError::Stopped)
        }
    }

    /// What this node relays of `room` (nothing without a relay endpoint).
    async fn room_relays(&self, room: RoomId) -> Result<NodeResponse, NodeError> {
        let Some(relay) = &self.relay else {
            return Ok(NodeResponse::RoomRelays(RoomRelays::default()));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !relay.command(RelayCommand::Status { room, reply }) {
            return Err(NodeError::Stopped);
        }
        match tokio::time::timeout(Duration::from_secs(2), answer).await {
            Ok(Ok(relays)) => Ok(NodeResponse::RoomRelays(relays)),
            _ => Err(NodeError::Stopped),
        }
    }

    /// The address ICE candidates name.
    pub fn advertise_ip(&self) -> std::net::IpAddr {
        self.candidates
            .first()
            .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.ip())
    }

    /// UDP port of each worker.
    pub fn ports(&self) -> Vec<u16> {
        self.shared.workers.iter().map(|w| w.port).collect()
    }

    /// The node's events (session ended, tracks published and unpublished, load, stopped
    /// workers). There is one stream; the first caller takes it. Events wait in it until
    /// read, so whoever starts a node must read them.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<NodeEvent>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Serve one node API request.
    pub async fn handle(&self, request: NodeRequest) -> NodeResponse {
        let result = match request {
            NodeRequest::CreateSession(create) => self
                .create_session(create)
                .await
                .map(NodeResponse::SessionCreated),
            NodeRequest::CloseSession { session } => {
                self.on_worker_of(session, Command::Close { session }).await
            }
            NodeRequest::Subscribe(s) => self.on_worker_of(s.session, Command::Subscribe(s)).await,
            NodeRequest::SetSubscription(s) => {
                self.on_worker_of(s.session, Command::SetSubscription(s))
                    .await
            }
            NodeRequest::Unsubscribe { session, slot } => {
                self.on_worker_of(session, Command::Unsubscribe { session, slot })
                    .await
            }
            NodeRequest::Stats => Ok(NodeResponse::Stats(self.stats())),
            NodeRequest::Health => Ok(NodeResponse::Health(self.health())),
            NodeRequest::RelayRoom(r) => self.relay_room(r),
            NodeRequest::ExpectRelay { peer, token } => match &self.relay {
                Some(relay) if relay.command(RelayCommand::Expect { peer, token }) => {
                    Ok(NodeResponse::Done)
                }
                Some(_) => Err(NodeError::Stopped),
                None => Err(no_relay()),
            },
            NodeRequest::RoomRelays { room } => self.room_relays(room).await,
            NodeRequest::SendData(s) => self.on_worker_of(s.session, Command::SendData(s)).await,
            NodeRequest::SetFloor(f) => self.set_floor(f).await,
            NodeRequest::Renegotiate { session, offer_sdp } => {
                // Garbage is refused here, before the worker sees it.
                match Offer::parse(&offer_sdp) {
                    Ok(offer) => {
                        let command = Command::Renegotiate {
                            session,
                            offer: Box::new(offer),
                            seed: rand::random(),
                        };
                        self.on_worker_of(session, command).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        result.unwrap_or_else(NodeResponse::Error)
    }

    /// Answer an offer with a new session on the least-loaded worker.
    pub async fn create_session(&self, create: CreateSession) -> Result<SessionCreated, NodeError> {
        // Garbage is refused here, before it holds a directory entry or a set-up queue place.
        let offer = Offer::parse(&create.offer_sdp)?;
        let (entry, order) = self.shared.directory().insert(
            create.session,
            &create.room,
            create.kind,
            &create.identity,
        )?;
        let session = create.session;
        let room = create.room.clone();
        let result = self.set_up_and_adopt(create, offer, entry, order).await;
        if result.is_err() {
            self.shared.directory().remove(session, &room);
        }
        result
    }

    async fn set_up_and_adopt(
        &self,
        create: CreateSession,
        offer: Offer,
        entry: SessionEntry,
        order: u64,
    ) -> Result<SessionCreated, NodeError> {
        let w = entry.worker.index();
        let candidate = self.candidates[w];
        let certificate = self.certificates[w].clone();
        let spec = SessionSpec {
            id: create.session,
            room: entry.room,
            room_id: create.room,
            kind: create.kind,
            identity: create.identity,
            policy: create.policy,
            bandwidth: self.bandwidth,
            rtx_cache: self.rtx_cache,
        };
        let (done, accepted) = oneshot::channel();
        let job: SetupJob = Box::new(move || {
            let result = Session::accept(
                spec,
                offer,
                candidate,
                certificate,
                session::sequence_starts(rand::random()),
                Instant::now(),
            );
            let _ = done.send(result);
        });
        let setup = self.setup.as_ref().ok_or(NodeError::Stopped)?;
        match setup.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(NodeError::NoCapacity),
            Err(TrySendError::Disconnected(_)) => return Err(NodeError::Stopped),
        }
        let (session, answer_sdp) = accepted.await.map_err(|_| NodeError::Stopped)??;
        let response = self
            .call_worker(
                entry.worker,
                Command::Adopt {
                    session: Box::new(session),
                    answer_sdp,
                    order,
                },
            )
            .await?;
        match response {
            NodeResponse::SessionCreated(created) => Ok(created),
            NodeResponse::Error(e) => Err(e),
            other => Err(NodeError::SessionFailed(format!(
                "unexpected worker answer {other:?}"
            ))),
        }
    }

    async fn on_worker_of(
        &self,
        session: SessionId,
        command: Command,
    ) -> Result<NodeResponse, NodeError> {
        let worker = self
            .shared
            .directory()
            .sessions
            .get(&session)
            .map(|e| e.worker)
            .ok_or(NodeError::UnknownSession)?;
        match self.call_worker(worker, command).await? {
            NodeResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }

    /// Every media worker gates its own fan-out, so every one learns the floor (the relay
    /// endpoint forwards relayed tracks to the workers, which gate them).
    async fn set_floor(&self, set: SetFloor) -> Result<NodeResponse, NodeError> {
        for worker in 0..self.candidates.len() {
            let command = Command::SetFloor {
                room: set.room.clone(),
                floor: set.floor,
            };
            match self.call_worker(WorkerId(worker as u16), command).await? {
                NodeResponse::Done => {}
                other => return Ok(other),
            }
        }
        Ok(NodeResponse::Done)
    }

    async fn call_worker(
        &self,
        worker: WorkerId,
        command: Command,
    ) -> Result<NodeResponse, NodeError> {
        let (reply, rx) = oneshot::channel();
        let handle = self
            .shared
            .workers
            .get(worker.index())
            .ok_or(NodeError::Stopped)?;
        handle.send(WorkerCommand::Engine { command, reply })?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            io_backend: self.io_backend.clone(),
            workers: self
                .shared
                .workers
                .iter()
                .map(|w| w.metrics.snapshot(w.id.0, w.port))
                .collect(),
        }
    }

    /// Whether each worker thread runs.
    pub fn health(&self) -> NodeHealth {
        NodeHealth {
            node: None,
            workers_up: self.shared.workers_up(),
        }
    }

    /// Whether every worker thread is still running.
    pub fn is_healthy(&self) -> bool {
        self.health().is_healthy()
    }

    /// Stop the workers and wait for them.
    pub fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.setup = None;
        for w in self.shared.workers.iter() {
            let _ = w.send(WorkerCommand::Shutdown);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for t in self.helpers.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The set-up thread: SDP parsing, codec negotiation and `Rtc` construction for new sessions,
/// at a lower priority than the media workers.
fn run_setup(jobs: Receiver<SetupJob>) {
    if let Err(e) = crate::affinity::lower_current_thread_priority(10) {
        tracing::debug!(error = %e, "could not lower the set-up thread's priority");
    }
    for job in jobs {
        job();
    }
}

/// The event pump: takes the workers' events, keeps the directory in step (a session the
/// node ended is forgotten), adds load reports and stopped-worker events, and passes it all
/// to control.
fn run_event_pump(
    shared: Arc<Shared>,
    events: Receiver<NodeEvent>,
    out: mpsc::UnboundedSender<NodeEvent>,
    stopping: Arc<AtomicBool>,
    relay_stats: Option<RelayStatsHandle>,
) {
    let mut reported_down = vec![false; shared.alive.len()];
    let mut next_load = Instant::now() + LOAD_INTERVAL;
    let mut cpu = CpuMeter::start();
    loop {
        let wait = next_load.saturating_duration_since(Instant::now());
        match events.recv_timeout(wait) {
            Ok(event) => {
                if let NodeEvent::SessionEnded { session, room, .. } = &event {
                    shared.directory().remove(*session, room);
                }
                let _ = out.send(event);
            }
            Err(crossbeam::channel::RecvTimeoutError::Timeout) => {}
            // Every worker is gone and its last events are delivered.
            Err(crossbeam::channel::RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() < next_load {
            continue;
        }
        next_load = Instant::now() + LOAD_INTERVAL;
        let up = shared.workers_up();
        for (i, up) in up.iter().enumerate() {
            if !*up && !reported_down[i] && !stopping.load(Ordering::Acquire) {
                reported_down[i] = true;
                tracing::error!(worker = i, "media worker stopped");
                let _ = out.send(NodeEvent::WorkerStopped {
                    worker: WorkerId(i as u16),
                });
                // Its sessions are gone with it. Take in what it reported before it stopped
                // first (it cannot report more), so that no end is reported twice.
                while let Ok(event) = events.try_recv() {
                    if let NodeEvent::SessionEnded { session, room, .. } = &event {
                        shared.directory().remove(*session, room);
                    }
                    let _ = out.send(event);
                }
                let lost: Vec<(SessionId, RoomId)> = {
                    let mut dir = shared.directory();
                    let lost: Vec<(SessionId, RoomId)> = dir
                        .sessions
                        .iter()
                        .filter(|(_, e)| e.worker.index() == i)
                        .map(|(s, e)| (*s, e.room_id.clone()))
                        .collect();
                    for (session, room) in &lost {
                        dir.remove(*session, room);
                    }
                    lost
                };
                for (session, room) in lost {
                    let _ = out.send(NodeEvent::SessionEnded {
                        session,
                        room,
                        reason: EndReason::NodeStopped,
                    });
                }
            }
        }
        let mut load = LoadReport {
            workers: up.len() as u16,
            workers_up: up.iter().filter(|u| **u).count() as u16,
            cpu_millicores: cpu.millicores(),
            relays: relay_stats
                .as_ref()
                .map(|s| s.snapshot())
                .unwrap_or_default(),
            ..LoadReport::default()
        };
        for w in shared.workers.iter() {
            let s = w.metrics.snapshot(w.id.0, w.port);
            load.sessions += s.publish_sessions + s.subscribe_sessions;
            load.tracks += s.published_tracks;
            load.packets_in += s.packets_in;
            load.packets_out += s.packets_out;
        }
        let _ = out.send(NodeEvent::Load(load));
    }
}

/// The process's CPU use between two readings (user + system time of all its threads, from
/// `/proc/self/stat`), for the load report.
struct CpuMeter {
    at: Instant,
    used: Duration,
}

impl CpuMeter {
    fn start() -> Self {
        Self {
            at: Instant::now(),
            used: process_cpu_time().unwrap_or_default(),
        }
    }

    /// Thousandths of a core used since the previous call (0 if `/proc` cannot be read).
    fn millicores(&mut self) -> u32 {
        let Some(used) = process_cpu_time() else {
            return 0;
        };
        let at = Instant::now();
        let wall = at.saturating_duration_since(self.at).as_secs_f64();
        let busy = used.saturating_sub(self.used).as_secs_f64();
        (self.at, self.used) = (at, used);
        if wall <= 0.0 {
            return 0;
        }
        (busy / wall * 1000.0).round().min(f64::from(u32::MAX)) as u32
    }
}

fn process_cpu_time() -> Option<Duration> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = stat.utime + stat.stime;
    Some(Duration::from_secs_f64(
        ticks as f64 / procfs::ticks_per_second() as f64,
    ))
}

/// Bind `count` consecutive ports from the configured base (or, with `media_port_scan`, the
/// first free block above it).
fn bind_sockets(config: &NodeConfig, count: usize) -> Result<Vec<UdpSocket>, StartError> {
    let bind_block = |base: u16| -> Result<Vec<UdpSocket>, StartError> {
        (0..count)
            .map(|i| {
                let addr = SocketAddr::new(config.media_bind, base + i as u16);
                UdpSocket::bind(addr).map_err(|source| StartError::Bind {
                    worker: i,
                    addr,
                    source,
                })
            })
            .collect()
    };
    if !config.media_port_scan {
        return bind_block(config.media_port_base);
    }
    let mut base = config.media_port_base;
    while u32::from(base) + count as u32 <= u32::from(u16::MAX) {
        match bind_block(base) {
            Ok(sockets) => {
                if base != config.media_port_base {
                    tracing::info!(
                        configured = config.media_port_base,
                        chosen = base,
                        "configured media ports are taken; using the next free block"
                    );
                }
                return Ok(sockets);
            }
            Err(StartError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                base += count as u16;
            }
            Err(e) => return Err(e),
        }
    }
    Err(StartError::NoFreePorts {
        from: config.media_port_base,
        count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomId {
        name.parse().expect("room name")
    }

    fn directory() -> Directory {
        Directory {
            per_worker: vec![0],
            ..Directory::default()
        }
    }

    #[test]
    fn a_relayed_room_keeps_its_key_until_the_relay_releases_it() {
        let mut d = directory();
        let (key, first) = d.relay_key(&room("r"));
        let (again, second) = d.relay_key(&room("r"));
        assert_eq!(key, again, "one key per room");
        // A release for an older ask is stale: the room was asked for again since.
        d.release_relay(&room("r"), first);
        assert!(d.rooms.contains_key(&room("r")));
        d.release_relay(&room("r"), second);
        assert!(d.rooms.is_empty() && d.relayed.is_empty());
        // Released while a session holds it: the key stays for the session.
        let session = SessionId::from_u128(1);
        let (entry, _) = d
            .insert(session, &room("s"), SessionKind::Subscribe, "viewer")
            .expect("insert");
        let (key, generation) = d.relay_key(&room("s"));
        assert_eq!(key, entry.room);
        d.release_relay(&room("s"), generation);
        assert_eq!(
            d.rooms.get(&room("s")).map(|(k, n)| (*k, *n)),
            Some((key, 1))
        );
        d.remove(session, &room("s"));
        assert!(d.rooms.is_empty());
    }
}
