//! The node: starts the workers, binds their sockets, places sessions on workers and keeps the
//! room directory (which worker has which room's subscribers). This is the control path —
//! a mutex here is fine; the per-packet path never touches it.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::api::{NodeError, NodeReply, NodeRequest, NodeStats, SessionCreated, SessionKind};
use crate::config::{ConfigError, NodeConfig};
use crate::ids::{ParticipantId, RoomId, SessionId, WorkerId};
use crate::io::{self, Waker};
use crate::mailbox::Mailbox;
use crate::metrics::WorkerMetrics;
use crate::worker::{Command, Worker, WorkerHandle};

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
}

#[derive(Debug, Clone, Copy)]
struct SessionEntry {
    room: RoomId,
    worker: WorkerId,
}

#[derive(Debug, Default)]
struct Directory {
    rooms: HashMap<String, RoomId>,
    next_room: u32,
    sessions: HashMap<SessionId, SessionEntry>,
    /// Subscriber count per (room, worker).
    interest: HashMap<(RoomId, WorkerId), usize>,
}

/// State shared by the node handle and its workers.
#[derive(Debug)]
pub struct Shared {
    pub workers: Vec<WorkerHandle>,
    directory: Mutex<Directory>,
}

impl Shared {
    fn directory(&self) -> MutexGuard<'_, Directory> {
        // A panic while holding this lock left plain maps behind; they are still usable.
        self.directory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Which worker owns `session` (control-path lookup; called for keyframe requests).
    pub fn worker_of(&self, session: SessionId) -> Option<WorkerId> {
        self.directory().sessions.get(&session).map(|e| e.worker)
    }

    /// Called by a worker whenever one of its sessions ends, whatever the reason.
    pub fn session_ended(&self, session: SessionId, room: RoomId, kind: SessionKind) {
        let mut dir = self.directory();
        let Some(entry) = dir.sessions.remove(&session) else {
            return;
        };
        match kind {
            SessionKind::Subscribe => {
                let key = (room, entry.worker);
                let now_zero = match dir.interest.get_mut(&key) {
                    Some(n) => {
                        *n = n.saturating_sub(1);
                        *n == 0
                    }
                    None => false,
                };
                if now_zero {
                    dir.interest.remove(&key);
                    self.broadcast(|| Command::RoomInterest {
                        room,
                        worker: entry.worker,
                        interested: false,
                    });
                }
            }
            SessionKind::Publish => {
                self.broadcast(|| Command::SourceEnded {
                    room,
                    source: session,
                });
            }
        }
        if !dir.sessions.values().any(|e| e.room == room) {
            dir.rooms.retain(|_, id| *id != room);
        }
    }

    fn broadcast(&self, command: impl Fn() -> Command) {
        for w in &self.workers {
            let _ = w.send(command());
        }
    }
}

/// A running media node. Dropping it stops the workers.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    next_session: AtomicU64,
    io_backend: String,
}

impl Node {
    /// Validate the configuration, bind one UDP socket per worker and start the workers.
    pub fn start(config: NodeConfig) -> Result<Node, StartError> {
        config.validate()?;
        let count = config.worker_count();
        let sockets = bind_sockets(&config, count)?;
        let cpus = if config.pin_workers {
            crate::affinity::allowed_cpus().unwrap_or_default()
        } else {
            Vec::new()
        };

        let mut handles = Vec::with_capacity(count);
        let mut receivers = Vec::with_capacity(count);
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
        }
        let shared = Arc::new(Shared {
            workers: handles,
            directory: Mutex::new(Directory::default()),
        });

        let mut threads = Vec::with_capacity(count);
        let mut backend_names = Vec::new();
        for (i, (socket, rx)) in sockets.into_iter().zip(receivers).enumerate() {
            let local = socket
                .local_addr()
                .map_err(|source| StartError::Io { worker: i, source })?;
            let waker = shared.workers[i].waker.clone();
            let worker = Worker::new(
                WorkerId(i as u16),
                config.clone(),
                local,
                shared.clone(),
                rx,
                waker.clone(),
            );
            let cpu = cpus.get(i % cpus.len().max(1)).copied();
            let backend = config.io_backend;
            let udp_gso = config.udp_gso;
            // The ring is created on the thread that uses it; the thread reports back which
            // backend it got (or why it could not start).
            let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name(format!("sfu-worker-{i}"))
                .spawn(move || {
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
            threads.push(thread);
            let started = started_rx.recv().unwrap_or_else(|_| {
                Err(std::io::Error::other(
                    "worker thread exited during start-up",
                ))
            });
            match started {
                Ok(name) => backend_names.push(name),
                Err(source) => {
                    let node = Node {
                        shared,
                        threads,
                        next_session: AtomicU64::new(1),
                        io_backend: String::new(),
                    };
                    drop(node);
                    return Err(StartError::Io { worker: i, source });
                }
            }
        }
        backend_names.dedup();
        let io_backend = backend_names.join(",");
        tracing::info!(
            workers = count,
            ports = ?shared.workers.iter().map(|w| w.port).collect::<Vec<_>>(),
            io = %io_backend,
            advertise_ip = %config.advertise_ip,
            "media node started"
        );
        Ok(Node {
            shared,
            threads,
            next_session: AtomicU64::new(1),
            io_backend,
        })
    }

    /// UDP port of each worker.
    pub fn ports(&self) -> Vec<u16> {
        self.shared.workers.iter().map(|w| w.port).collect()
    }

    /// Serve one node API request.
    pub async fn handle(&self, request: NodeRequest) -> NodeReply {
        match request {
            NodeRequest::CreateSession {
                room,
                kind,
                offer_sdp,
                participant,
            } => match self
                .create_session(&room, kind, offer_sdp, participant.as_deref())
                .await
            {
                Ok(created) => NodeReply::SessionCreated(created),
                Err(e) => NodeReply::Error(e),
            },
            NodeRequest::CloseSession { session } => match self.close_session(session).await {
                Ok(()) => NodeReply::SessionClosed,
                Err(e) => NodeReply::Error(e),
            },
            NodeRequest::Stats => NodeReply::Stats(self.stats()),
        }
    }

    /// Answer an offer with a new session in `room` on the least-loaded worker.
    pub async fn create_session(
        &self,
        room: &str,
        kind: SessionKind,
        offer_sdp: String,
        participant: Option<&str>,
    ) -> Result<SessionCreated, NodeError> {
        let session = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
        let (room_id, worker) = {
            let mut dir = self.shared.directory();
            let next = dir.next_room;
            let room_id = *dir.rooms.entry(room.to_string()).or_insert(RoomId(next));
            if room_id.0 == next {
                dir.next_room += 1;
            }
            let worker = self.least_loaded_worker(&dir);
            // Registered before the worker sees it, so keyframe routing finds it at once.
            dir.sessions.insert(
                session,
                SessionEntry {
                    room: room_id,
                    worker,
                },
            );
            (room_id, worker)
        };
        let (reply, rx) = oneshot::channel();
        let handle = &self.shared.workers[worker.index()];
        let sent = handle.send(Command::Create {
            session,
            room: room_id,
            kind,
            offer_sdp,
            participant: participant.map(ParticipantId::from_identity),
            reply,
        });
        let result = match sent {
            Ok(()) => rx.await.unwrap_or(Err(NodeError::Stopped)),
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) if kind == SessionKind::Subscribe => {
                let mut dir = self.shared.directory();
                let n = dir.interest.entry((room_id, worker)).or_insert(0);
                *n += 1;
                if *n == 1 {
                    self.shared.broadcast(|| Command::RoomInterest {
                        room: room_id,
                        worker,
                        interested: true,
                    });
                }
            }
            Ok(_) => {}
            Err(_) => {
                let mut dir = self.shared.directory();
                dir.sessions.remove(&session);
                if !dir.sessions.values().any(|e| e.room == room_id) {
                    dir.rooms.retain(|_, id| *id != room_id);
                }
            }
        }
        result
    }

    fn least_loaded_worker(&self, dir: &Directory) -> WorkerId {
        let mut load = vec![0usize; self.shared.workers.len()];
        for entry in dir.sessions.values() {
            load[entry.worker.index()] += 1;
        }
        let index = load
            .iter()
            .enumerate()
            .min_by_key(|(i, n)| (**n, *i))
            .map_or(0, |(i, _)| i);
        WorkerId(index as u16)
    }

    /// End a session.
    pub async fn close_session(&self, session: SessionId) -> Result<(), NodeError> {
        let worker = self
            .shared
            .worker_of(session)
            .ok_or(NodeError::UnknownSession)?;
        let (reply, rx) = oneshot::channel();
        self.shared.workers[worker.index()].send(Command::Close { session, reply })?;
        rx.await.unwrap_or(Err(NodeError::Stopped))
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

    /// Whether every worker thread is still running.
    pub fn is_healthy(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Per worker (index = worker id), whether its thread is still running.
    pub fn workers_up(&self) -> Vec<bool> {
        self.threads.iter().map(|t| !t.is_finished()).collect()
    }

    /// Stop the workers and wait for them.
    pub fn shutdown(&mut self) {
        for w in &self.shared.workers {
            let _ = w.send(Command::Shutdown);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
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
