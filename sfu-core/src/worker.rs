//! A worker's I/O shell: one thread pinned to one core, owning the UDP socket (through an I/O
//! backend), the clock, the wake-up eventfd and the ends of the channels to the node and the
//! other workers. Everything else happens in its [`Engine`], which never reads the clock. The
//! loop is:
//!
//! 1. node commands (bounded), 2. the inbound cross-worker ring (bounded), 3. due timers,
//! 4. hand the engine's datagrams to the kernel, its messages to other workers and its events
//!    to the node; wake the workers it wrote to,
//! 5. wait for datagrams until the engine's next deadline, handling at most a budget of them.
//!
//! Nothing here blocks except step 5, and nothing takes a lock.

// The I/O shell: the clock is read here and handed to the engine.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use sfu_proto::{NodeError, NodeEvent, NodeResponse, WorkerId};
use tokio::sync::oneshot;

use crate::engine::{Command, CrossWorker, Engine};
use crate::io::{DatagramIo, IoStats, Waker};
use crate::mailbox::Mailbox;
use crate::metrics::{DropReason, WorkerMetrics};

/// Datagrams handled per wait before timers and rings get a turn.
const DATAGRAM_BUDGET: usize = 256;
/// Cross-worker messages handled per loop pass.
const RING_BUDGET: usize = 1024;
/// Node commands and lossless worker messages handled per loop pass.
const COMMAND_BUDGET: usize = 256;

/// What arrives on a worker's command channel (lossless, unlike the media ring).
#[derive(Debug)]
pub enum WorkerCommand {
    /// A node API call, answered on `reply`.
    Engine {
        command: Command,
        reply: oneshot::Sender<NodeResponse>,
    },
    /// A message from another worker that must not be dropped (announcements, interest).
    Peer(CrossWorker),
    Shutdown,
}

/// Handles the node and the other workers keep per worker (and for the relay endpoint, the
/// mesh's last participant: no socket, port 0).
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    pub id: WorkerId,
    pub port: u16,
    pub commands: Sender<WorkerCommand>,
    pub waker: Waker,
    pub mailbox: Arc<Mailbox>,
    pub metrics: Arc<WorkerMetrics>,
}

impl WorkerHandle {
    /// Send a command and wake the worker.
    pub fn send(&self, command: WorkerCommand) -> Result<(), NodeError> {
        self.commands
            .send(command)
            .map_err(|_| NodeError::Stopped)?;
        self.waker.force_wake();
        Ok(())
    }
}

pub struct Worker {
    engine: Engine,
    local_addr: SocketAddr,
    workers: Arc<Vec<WorkerHandle>>,
    commands: Receiver<WorkerCommand>,
    events: Sender<NodeEvent>,
    waker: Waker,
    metrics: Arc<WorkerMetrics>,
    /// Workers whose ring we pushed to this pass.
    to_wake: Vec<bool>,
    /// The backend's counters as last published to `metrics`.
    io_published: IoStats,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("engine", &self.engine)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Worker {
    pub fn new(
        engine: Engine,
        local_addr: SocketAddr,
        workers: Arc<Vec<WorkerHandle>>,
        commands: Receiver<WorkerCommand>,
        events: Sender<NodeEvent>,
    ) -> Self {
        let me = &workers[engine.id().index()];
        let (waker, metrics) = (me.waker.clone(), me.metrics.clone());
        let count = workers.len();
        Self {
            engine,
            local_addr,
            workers,
            commands,
            events,
            waker,
            metrics,
            to_wake: vec![false; count],
            io_published: IoStats::default(),
        }
    }

    /// Run until a `Shutdown` command or until the command channel closes.
    pub fn run(mut self, mut io: Box<dyn DatagramIo>) {
        let id = self.engine.id();
        tracing::info!(worker = %id, addr = %self.local_addr, backend = io.name(), "worker started");
        let mailbox = self.workers[id.index()].mailbox.clone();
        loop {
            let now = Instant::now();
            if !self.handle_commands(now) {
                break;
            }
            for _ in 0..RING_BUDGET {
                let Some(msg) = mailbox.pop() else { break };
                self.engine.handle_cross_worker(now, msg);
            }
            self.engine.handle_timeout(now);
            self.finish_pass(io.as_mut());

            // Park, then re-check the queues: a producer that pushed before it saw us parked
            // did not write the eventfd. The engine has no pending work once its outputs are
            // drained, so its deadline is the next timer.
            self.waker.park();
            let idle = self.commands.is_empty() && mailbox.is_empty();
            let deadline = if idle {
                self.engine.poll_timeout()
            } else {
                now
            };
            let local = self.local_addr;
            let engine = &mut self.engine;
            let result = io.poll(Some(deadline), DATAGRAM_BUDGET, &mut |source, datagram| {
                engine.handle_datagram(Instant::now(), source, local, datagram);
            });
            self.waker.unpark();
            if let Err(e) = result {
                tracing::error!(worker = %id, error = %e, "socket wait failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.finish_pass(io.as_mut());
        }
        self.engine.shutdown(Instant::now());
        self.finish_pass(io.as_mut());
        tracing::info!(worker = %id, "worker stopped");
    }

    fn handle_commands(&mut self, now: Instant) -> bool {
        for _ in 0..COMMAND_BUDGET {
            let Ok(command) = self.commands.try_recv() else {
                break;
            };
            match command {
                WorkerCommand::Engine { command, reply } => {
                    let response = self.engine.handle_command(now, command);
                    let _ = reply.send(response);
                }
                WorkerCommand::Peer(message) => self.engine.handle_cross_worker(now, message),
                WorkerCommand::Shutdown => return false,
            }
        }
        true
    }

    /// Carry the engine's outputs away: datagrams to the kernel a chunk at a time (the
    /// engine's work for the next chunk waits until this one is with the kernel, so a large
    /// fan-out's first subscribers do not wait for its last), messages to other workers,
    /// events to the node; then wake the workers written to.
    fn finish_pass(&mut self, io: &mut dyn DatagramIo) {
        while let Some(t) = self.engine.poll_transmit() {
            io.send(t.destination, t.contents);
            if self.engine.transmits_queued() == 0 {
                self.hand_over(io);
            }
        }
        while let Some((worker, message)) = self.engine.poll_cross_worker() {
            let Some(handle) = self.workers.get(worker.index()) else {
                continue;
            };
            if message.is_lossless() {
                // Unbounded and rare (per session, not per packet); a closed channel means
                // that worker has stopped, and nothing is owed to it.
                let _ = handle.commands.send(WorkerCommand::Peer(message));
                self.to_wake[worker.index()] = true;
            } else if handle.mailbox.push(message).is_err() {
                self.metrics.drop_packet(DropReason::RingFull);
            } else {
                self.to_wake[worker.index()] = true;
            }
        }
        while let Some(event) = self.engine.poll_event() {
            // The node's event pump only goes away when the node does.
            let _ = self.events.send(event);
        }
        self.publish_io_stats(io.stats());
        for (worker, wake) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(wake) {
                self.workers[worker].mailbox.wake();
            }
        }
    }

    /// Hand the datagrams taken so far to the kernel and account for their delay.
    fn hand_over(&mut self, io: &mut dyn DatagramIo) {
        if let Err(e) = io.flush() {
            tracing::warn!(worker = %self.engine.id(), error = %e, "send flush failed");
        }
        self.engine.sends_handed(Instant::now());
    }

    /// Add what the backend did since the last call to the metrics: datagrams and bytes the
    /// kernel accepted (and how many went in GSO sends), and sends dropped (by reason). Sends
    /// the backend completes inside `poll` (after `POLLOUT`) show up at the next pass.
    fn publish_io_stats(&mut self, now: IoStats) {
        let before = std::mem::replace(&mut self.io_published, now);
        let m = &self.metrics;
        WorkerMetrics::add(&m.packets_out, now.sent - before.sent);
        WorkerMetrics::add(&m.bytes_out, now.sent_bytes - before.sent_bytes);
        WorkerMetrics::add(&m.gso_sends, now.gso_sends - before.gso_sends);
        WorkerMetrics::add(&m.gso_datagrams, now.gso_datagrams - before.gso_datagrams);
        m.drop_packets(DropReason::SendFailed, now.send_failed - before.send_failed);
        m.drop_packets(
            DropReason::SendBufferFull,
            now.send_buffer_full - before.send_buffer_full,
        );
    }
}
