//! A media thread ("shard") owning many peers: one epoll set (mio) over their sockets, one
//! timer heap over their deadlines, one send batch and one set of receive buffers. A loop pass:
//! commands (≤ 256) → wait for readiness until the next deadline → read ready sockets (≤ 4
//! receive calls per peer, the rest carried to the next pass) → due timers (≤ 4096). Idle
//! peers cost nothing per pass.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::ErrorKind;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, Sender, TryRecvError};
use mio::{Events, Interest, Poll, Token, Waker};

use super::io::{RECV_BATCH, RecvBuffers, SendBatch};
use super::negotiate::{NewPeer, PeerId, PeerPlan};
use super::peer::{Ctx, LivePeer, PeerCommand, PeerCounters, PeerEnd};
use super::protocol::SessionHandle;
use super::stats::{Interval, ShardTotals};
use crate::source::OutgoingPacket;

/// Commands handled per pass.
const COMMAND_BUDGET: usize = 256;

/// Receive calls per ready peer per pass (each up to [`RECV_BATCH`] datagrams).
const READ_BUDGET: usize = 4;

/// Due timers handled per pass.
const TIMER_BUDGET: usize = 4096;

/// Longest wait for readiness (commands wake the shard; this only bounds surprises).
const MAX_WAIT: Duration = Duration::from_millis(250);

/// A pass longer than this counts as a stall (media late by that much).
const STALL: Duration = Duration::from_millis(50);

const WAKER: Token = Token(usize::MAX);

/// What the engine asks of a shard.
#[derive(Debug)]
pub enum ShardCommand {
    Add(Box<NewPeer>),
    /// End a peer without failure (churn); its session handle comes back in `Ended`.
    Leave(PeerId),
    /// Something the peer's owner asks of it.
    Peer(PeerId, PeerCommand),
    /// Close interval `n` and report it.
    Tick(u64),
    /// Stop, report totals and the sessions still open.
    Stop,
}

/// What shards (and signaling threads) tell the engine.
#[derive(Debug)]
pub enum Notice {
    Joined {
        plan: PeerPlan,
        join: Duration,
    },
    /// A room subscriber received media from every remote track it expects, `after` its
    /// signaling began.
    Complete {
        plan: PeerPlan,
        after: Duration,
    },
    /// A peer ended: failed (`end.reason`), or left (churn). `session` is the server session
    /// to delete, if one was created.
    Ended {
        plan: PeerPlan,
        session: Option<SessionHandle>,
        joined: bool,
        end: PeerEnd,
    },
    Tick {
        shard: usize,
        tick: u64,
        interval: Box<Interval>,
    },
    Final {
        shard: usize,
        totals: Box<ShardTotals>,
        sessions: Vec<SessionHandle>,
    },
}

/// Queues commands to a shard and wakes it. Cheap to clone (signaling threads hold one each).
#[derive(Debug, Clone)]
pub struct ShardSender {
    commands: Sender<ShardCommand>,
    waker: Arc<Waker>,
}

impl ShardSender {
    /// Queues a command and wakes the shard; gives the command back if the shard has ended.
    pub fn send(&self, command: ShardCommand) -> Result<(), ShardCommand> {
        self.commands.send(command).map_err(|e| e.0)?;
        let _ = self.waker.wake();
        Ok(())
    }
}

/// The engine's end of a shard.
#[derive(Debug)]
pub struct ShardHandle {
    pub sender: ShardSender,
    join: Option<JoinHandle<()>>,
}

impl ShardHandle {
    /// Starts shard `index`; it reports to `notices`.
    pub fn spawn(
        index: usize,
        gso: bool,
        connect_timeout: Duration,
        notices: Sender<Notice>,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (commands, rx) = crossbeam::channel::unbounded();
        let shard = Shard {
            index,
            poll,
            commands: rx,
            notices,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            timers: Timers::default(),
            batch: SendBatch::new(gso),
            recv: RecvBuffers::new(),
            frame: Vec::new(),
            interval: Interval::new(),
            totals: ShardTotals::new(),
            counters: PeerCounters::default(),
            connect_timeout,
            carried_reads: Vec::new(),
        };
        let join = thread::Builder::new()
            .name(format!("sfu-load-shard-{index}"))
            .spawn(move || shard.run())?;
        Ok(Self {
            sender: ShardSender { commands, waker },
            join: Some(join),
        })
    }

    /// Waits for the thread to end (after [`ShardCommand::Stop`]).
    pub fn join(&mut self) {
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }

    /// Stops the shard and waits for it (bounded: a pass handles commands first).
    pub fn stop(&mut self) {
        let _ = self.sender.send(ShardCommand::Stop);
        self.join();
    }
}

/// Deadlines of the shard's peers, earliest first. Entries are not removed when a peer's
/// deadline changes: a peer is pushed again only when its new deadline is earlier than the
/// one queued, and an entry that no longer matches its slot is skipped when it comes up.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

impl Timers {
    pub fn push(&mut self, at: Instant, slot: usize, epoch: u64) {
        self.heap.push(Reverse((at, slot, epoch)));
    }

    /// The earliest queued deadline (possibly stale).
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns the earliest entry due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[derive(Debug, Default)]
struct Slot {
    peer: Option<Box<LivePeer>>,
    /// Bumped whenever the slot is vacated, so timers of a previous occupant are stale.
    epoch: u64,
    /// The deadline of the live timer entry for this slot.
    scheduled: Option<Instant>,
}

struct Shard {
    index: usize,
    poll: Poll,
    commands: Receiver<ShardCommand>,
    notices: Sender<Notice>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    by_id: HashMap<PeerId, usize>,
    timers: Timers,
    batch: SendBatch,
    recv: RecvBuffers,
    frame: Vec<OutgoingPacket>,
    interval: Interval,
    totals: ShardTotals,
    counters: PeerCounters,
    connect_timeout: Duration,
    /// Peers whose read budget ran out with data still waiting.
    carried_reads: Vec<usize>,
}

/// How a call into a peer ended.
enum Step {
    Continue,
    End(PeerEnd),
}

impl Shard {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut ready: Vec<usize> = Vec::new();
        loop {
            if !self.handle_commands() {
                return;
            }
            let timeout = if self.carried_reads.is_empty() {
                self.timers
                    .next()
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or(MAX_WAIT)
                    .min(MAX_WAIT)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!("shard {}: poll failed: {e}", self.index);
                    thread::sleep(Duration::from_millis(10));
                }
            }
            let work_start = Instant::now();
            ready.clear();
            ready.append(&mut self.carried_reads);
            ready.extend(
                events
                    .iter()
                    .map(|e| e.token())
                    .filter(|t| *t != WAKER)
                    .map(|t| t.0),
            );
            for &slot in &ready {
                self.read_peer(slot);
            }
            self.run_timers();
            if work_start.elapsed() > STALL {
                self.totals.stalls += 1;
            }
        }
    }

    /// Handles queued commands; false when the shard should exit.
    fn handle_commands(&mut self) -> bool {
        for _ in 0..COMMAND_BUDGET {
            match self.commands.try_recv() {
                Ok(ShardCommand::Add(peer)) => self.add(*peer),
                Ok(ShardCommand::Leave(id)) => {
                    if let Some(&slot) = self.by_id.get(&id) {
                        self.end_peer(
                            slot,
                            PeerEnd {
                                reason: None,
                                detail: "left (churn)".into(),
                            },
                        );
                    }
                }
                Ok(ShardCommand::Peer(id, command)) => {
                    if let Some(&slot) = self.by_id.get(&id) {
                        self.command_peer(slot, command);
                    }
                }
                Ok(ShardCommand::Tick(tick)) => {
                    let interval = std::mem::take(&mut self.interval);
                    self.totals.add_interval(&interval);
                    let _ = self.notices.send(Notice::Tick {
                        shard: self.index,
                        tick,
                        interval: Box::new(interval),
                    });
                }
                Ok(ShardCommand::Stop) | Err(TryRecvError::Disconnected) => {
                    self.stop();
                    return false;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        true
    }

    fn add(&mut self, new: NewPeer) {
        let mut peer = Box::new(LivePeer::new(new, self.connect_timeout));
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            self.slots.len() - 1
        });
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut peer.socket, Token(slot), Interest::READABLE)
        {
            self.free.push(slot);
            let end = PeerEnd::failed("socket", format!("cannot poll the socket: {e}"));
            peer.report_end(Some(&end));
            let _ = self.notices.send(Notice::Ended {
                plan: peer.plan.clone(),
                session: Some(peer.session.clone()),
                joined: false,
                end,
            });
            return;
        }
        self.by_id.insert(peer.plan.id, slot);
        self.slots[slot].peer = Some(peer);
        // Start ICE at once.
        self.schedule(slot, Instant::now());
    }

    /// Queues `slot`'s timer at `at` unless an earlier one is queued already.
    fn schedule(&mut self, slot: usize, at: Instant) {
        let s = &mut self.slots[slot];
        if s.scheduled.is_none_or(|queued| at < queued) {
            s.scheduled = Some(at);
            self.timers.push(at, slot, s.epoch);
            self.totals.timer_pushes += 1;
        }
    }

    fn read_peer(&mut self, slot: usize) {
        let mut step = Step::Continue;
        let mut calls = 0;
        loop {
            let Some(peer) = self.slots.get_mut(slot).and_then(|s| s.peer.as_deref_mut()) else {
                return;
            };
            let n = match self.recv.recv(&peer.socket, &peer.udp) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // WouldBlock: drained. Anything else (an ICMP error surfacing): try next time.
                Err(_) => break,
            };
            let now = Instant::now();
            let mut ctx = Ctx {
                now,
                wallclock_us: wallclock_us(),
                batch: &mut self.batch,
                interval: &mut self.interval,
                frame: &mut self.frame,
                counters: &mut self.counters,
            };
            for (source, data) in self.recv.datagrams() {
                step = guarded(|| peer.handle_datagram(&mut ctx, source, data));
                if matches!(step, Step::End(_)) {
                    break;
                }
            }
            calls += 1;
            self.totals.recv_calls += 1;
            // A short batch means the queue is empty: with edge-triggered epoll, anything
            // arriving after this read raises a new event.
            if matches!(step, Step::End(_)) || n < RECV_BATCH {
                break;
            }
            if calls >= READ_BUDGET {
                self.carried_reads.push(slot);
                break;
            }
        }
        self.after_call(slot, step);
    }

    fn command_peer(&mut self, slot: usize, command: PeerCommand) {
        let Some(peer) = self.slots[slot].peer.as_deref_mut() else {
            return;
        };
        let mut ctx = Ctx {
            now: Instant::now(),
            wallclock_us: wallclock_us(),
            batch: &mut self.batch,
            interval: &mut self.interval,
            frame: &mut self.frame,
            counters: &mut self.counters,
        };
        let step = guarded(|| peer.handle_command(&mut ctx, command));
        self.after_call(slot, step);
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        for _ in 0..TIMER_BUDGET {
            let Some((at, slot, epoch)) = self.timers.pop_due(now) else {
                return;
            };
            let s = &mut self.slots[slot];
            if s.epoch != epoch || s.scheduled != Some(at) {
                continue; // stale
            }
            s.scheduled = None;
            let Some(peer) = s.peer.as_deref_mut() else {
                continue;
            };
            self.totals.timer_fires += 1;
            let mut ctx = Ctx {
                now: Instant::now(),
                wallclock_us: wallclock_us(),
                batch: &mut self.batch,
                interval: &mut self.interval,
                frame: &mut self.frame,
                counters: &mut self.counters,
            };
            let step = guarded(|| peer.handle_timeout(&mut ctx));
            self.after_call(slot, step);
        }
    }

    /// Reports a join, ends a failed peer, or schedules the peer's next wake-up.
    fn after_call(&mut self, slot: usize, step: Step) {
        let Some(peer) = self.slots[slot].peer.as_deref_mut() else {
            return;
        };
        if let Some(join) = peer.just_joined.take() {
            let _ = self.notices.send(Notice::Joined {
                plan: peer.plan.clone(),
                join,
            });
        }
        if let Some(after) = peer.just_completed.take() {
            let _ = self.notices.send(Notice::Complete {
                plan: peer.plan.clone(),
                after,
            });
        }
        match step {
            Step::End(end) => self.end_peer(slot, end),
            Step::Continue => {
                let wake = peer.next_wake(Instant::now());
                self.schedule(slot, wake);
            }
        }
    }

    fn end_peer(&mut self, slot: usize, end: PeerEnd) {
        let s = &mut self.slots[slot];
        let Some(mut peer) = s.peer.take() else {
            return;
        };
        s.epoch += 1;
        s.scheduled = None;
        self.free.push(slot);
        self.by_id.remove(&peer.plan.id);
        let _ = self.poll.registry().deregister(&mut peer.socket);
        self.totals.stream_jitter_us.extend(peer.stream_jitter_us());
        if let Some(n) = peer.sources() {
            self.totals.sources.push((peer.plan.id, n as u64));
        }
        self.totals.floor.extend(peer.floor_check());
        peer.report_end(end.reason.is_some().then_some(&end));
        let _ = self.notices.send(Notice::Ended {
            plan: peer.plan.clone(),
            session: Some(peer.session.clone()),
            joined: peer.joined(),
            end,
        });
    }

    fn stop(&mut self) {
        let interval = std::mem::take(&mut self.interval);
        self.totals.add_interval(&interval);
        let counters = self.batch.counters;
        self.totals.send_errors += counters.errors;
        self.totals.gso_sends += counters.gso_sends;
        self.totals.gso_datagrams += counters.gso_datagrams;
        self.totals.rejected += self.counters.rejected;
        self.totals.unsendable += self.counters.unsendable;
        let mut sessions = Vec::new();
        for s in &mut self.slots {
            if let Some(peer) = s.peer.take() {
                self.totals.stream_jitter_us.extend(peer.stream_jitter_us());
                if let Some(n) = peer.sources() {
                    self.totals.sources.push((peer.plan.id, n as u64));
                }
                self.totals.floor.extend(peer.floor_check());
                peer.report_end(None);
                sessions.push(peer.session.clone());
            }
        }
        // Peers handed over after the stop was queued: their sessions still need deleting.
        while let Ok(command) = self.commands.try_recv() {
            if let ShardCommand::Add(peer) = command {
                peer.state.end(None);
                sessions.push(peer.session);
            }
        }
        let totals = std::mem::take(&mut self.totals);
        let _ = self.notices.send(Notice::Final {
            shard: self.index,
            totals: Box::new(totals),
            sessions,
        });
    }
}

/// Runs a call into a peer, turning an error or a panic (str0m treats internal
/// inconsistencies as bugs) into the end of that peer only.
fn guarded(f: impl FnOnce() -> Result<(), PeerEnd>) -> Step {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Step::Continue,
        Ok(Err(end)) => Step::End(end),
        Err(panic) => Step::End(PeerEnd::failed(
            "panic",
            format!("peer panicked: {}", panic_message(&*panic)),
        )),
    }
}

/// The text a panic was raised with (empty when it carried something other than a string).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Microseconds since the Unix epoch: the send and arrival times of the test pattern.
pub(crate) fn wallclock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_pop_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::default();
        for (at, slot) in [(30, 3), (10, 1), (20, 2), (10, 4), (50, 5)] {
            t.push(ms(at), slot, 0);
        }
        assert_eq!(t.next(), Some(ms(10)));
        assert_eq!(t.pop_due(ms(5)), None, "nothing due yet");
        let mut order = Vec::new();
        while let Some((at, slot, _)) = t.pop_due(ms(30)) {
            order.push((at, slot));
        }
        assert_eq!(
            order,
            vec![(ms(10), 1), (ms(10), 4), (ms(20), 2), (ms(30), 3)]
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t.pop_due(ms(100)), Some((ms(50), 5, 0)));
        assert!(t.is_empty());
    }

    #[test]
    fn stale_entries_are_recognisable() {
        // The shard keeps (deadline, epoch) per slot; an entry whose deadline or epoch differs
        // from the slot's is skipped. Here slot 0 was rescheduled earlier, then vacated.
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mut slot = Slot::default();
        for at in [
            t0 + Duration::from_millis(40),
            t0 + Duration::from_millis(10),
        ] {
            if slot.scheduled.is_none_or(|q| at < q) {
                slot.scheduled = Some(at);
                t.push(at, 0, slot.epoch);
            }
        }
        // A later deadline does not push: the earlier entry will fire and reschedule.
        let later = t0 + Duration::from_millis(90);
        assert!(slot.scheduled.is_some_and(|q| later >= q));
        assert_eq!(t.len(), 2);
        let live = |e: &(Instant, usize, u64), s: &Slot| e.2 == s.epoch && s.scheduled == Some(e.0);
        let first = t.pop_due(t0 + Duration::from_secs(1)).expect("due");
        assert!(live(&first, &slot));
        slot.epoch += 1;
        slot.scheduled = None;
        let second = t.pop_due(t0 + Duration::from_secs(1)).expect("due");
        assert!(!live(&second, &slot), "the 40 ms entry is stale");
    }
}
