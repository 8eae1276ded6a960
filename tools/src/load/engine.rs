//! The controller of a load run: plans the peers, releases them at the ramp rate to a pool of
//! signaling threads (blocking HTTP, off the media path), which negotiate each peer and hand it
//! to a media shard; then measures for the scenario's duration with churn, ticks every second
//! (timeline, process samples, progress), stops the shards, deletes the sessions and builds
//! the [`Report`].
//!
//! Threads: this one (control), `threads` media shards, `signaling_threads` signaling threads
//! (or, for the room protocol, one thread polling every participant's WebSocket, see
//! [`room`](super::room)). Everything the shards learn comes back as [`Notice`]s on one channel.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use rand::Rng;

use super::html;
use super::janus::JanusVideoRoom;
use super::negotiate::{self, PeerId, PeerPlan, PeerRole, SetupConfig};
use super::peer::PeerEnd;
use super::placement::Placements;
use super::progress::{self, Progress, ProgressMode, Snapshot};
use super::protocol::{Protocol, SessionHandle, TokenSource, WhipWhep};
use super::report::{
    Jitter, JoinTimes, Latency, Outcome, Packets, ParticipantFigures, PathPackets, PeerCounts,
    PttFigures, REPORT_VERSION, Report, RoomFigures, Tick, Verdict,
};
use super::room::{self, RoomContext, RoomJob, RoomPtt, RoomSignaling};
use super::sampler::ProcessSampler;
use super::scenario::{Criteria, ProtocolKind, Scenario, ScenarioError};
use super::shard::{Notice, ShardCommand, ShardHandle, ShardSender};
use super::stats::{Counts, Interval, PathFigures, ShardTotals, pct};
use crate::whip::HTTP_TIMEOUT;

/// How a run is carried out (as opposed to what it does, the [`Scenario`]).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Bearer tokens for WHIP/WHEP; default: minted per peer with the dev key pair.
    pub tokens: TokenSource,
    /// A protocol to use instead of the one the scenario names (tests, other servers).
    pub protocol: Option<Arc<dyn Protocol>>,
    /// `(from, to)`: where the server's SDP names candidate `from`, peers send to `to`
    /// instead (an impairment relay between peers and server).
    pub remote_overrides: Vec<(SocketAddr, SocketAddr)>,
    /// Sample this process's CPU and RSS each second.
    pub server_pid: Option<u32>,
    /// Legend in reports; default: protocol and URL.
    pub label: Option<String>,
    pub progress: ProgressMode,
    /// Send video bursts with UDP GSO where the kernel supports it.
    pub gso: bool,
    /// Threads doing the blocking signaling (0: four, or fewer for small runs).
    pub signaling_threads: usize,
    /// Address the peers' sockets bind to.
    pub bind_ip: IpAddr,
    /// Set from outside (e.g. on Ctrl-C) to end the run early; a report is still built.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            tokens: TokenSource::dev(),
            protocol: None,
            remote_overrides: Vec::new(),
            server_pid: None,
            label: None,
            progress: ProgressMode::Off,
            gso: true,
            signaling_threads: 0,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            stop: None,
        }
    }
}

/// Why a run could not be carried out at all (peer failures are not errors: they are
/// counted in the report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("invalid scenario: {0}")]
    Scenario(#[from] ScenarioError),
    #[error("cannot start the generator: {0}")]
    Start(#[from] std::io::Error),
    #[error("cannot make room {room:?} a push-to-talk channel: {reason}")]
    Channel { room: String, reason: String },
}

/// Seconds between ticks (timeline entries, process samples, progress).
const TICK: Duration = Duration::from_secs(1);

/// Longest the controller sleeps between looks at the ramp, churn and stop flag.
const CONTROL_WAIT: Duration = Duration::from_millis(20);

/// Bound on waiting for the shards' final reports.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on deleting the sessions at the end.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a scenario to the end and reports what it measured.
pub fn run(scenario: &Scenario, options: &RunOptions) -> Result<Report, LoadError> {
    scenario.validate()?;
    // The room protocol negotiates on its own WebSocket thread, not through a `Protocol`.
    let protocol: Option<Arc<dyn Protocol>> = match (&options.protocol, scenario.protocol) {
        (_, ProtocolKind::Room) => None,
        (Some(p), _) => Some(p.clone()),
        (None, ProtocolKind::Whip) => Some(Arc::new(
            WhipWhep::new(&scenario.url, options.tokens.clone()).in_regions(
                scenario.publisher_region.clone(),
                scenario.subscriber_region.clone(),
            ),
        )),
        (None, ProtocolKind::Janus) => Some(Arc::new(JanusVideoRoom::new(&scenario.url))),
    };
    if scenario.ptt.is_some() {
        make_channels(scenario, &options.tokens)?;
    }
    Controller::start(scenario, options, protocol)?.run()
}

/// Push-to-talk runs: make every room of the run a channel (`PUT /api/rooms/{room}/settings`
/// with a token for the room's admin; docs/http-api.md). The rooms stay channels after the run.
fn make_channels(scenario: &Scenario, tokens: &TokenSource) -> Result<(), LoadError> {
    let client = crate::whip::SignalingClient::new(&scenario.url);
    let grants = crate::token::Grants {
        admin: true,
        ..crate::token::Grants::PUBLISH_SUBSCRIBE
    };
    for index in 0..scenario.rooms {
        let room = scenario.room_name(index);
        let fail = |reason: String| LoadError::Channel {
            room: room.clone(),
            reason,
        };
        let token = tokens
            .token(&room, "sfu-load-admin", grants)
            .map_err(|e| fail(e.to_string()))?;
        let target = format!("/api/rooms/{room}/settings");
        let response = client
            .request(&crate::whip::HttpRequest {
                method: crate::whip::Method::Put,
                target: &target,
                content_type: Some("application/json"),
                bearer: Some(&token),
                body: br#"{"ptt": true}"#,
            })
            .map_err(|e| fail(e.to_string()))?;
        if response.status != 200 {
            return Err(fail(format!(
                "HTTP {}: {}",
                response.status,
                response.body.trim()
            )));
        }
    }
    Ok(())
}

/// Writes `report.json` and `report.html` into `dir` (created if missing).
pub fn write_report(dir: &Path, report: &Report) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json + "\n")?;
    std::fs::write(
        dir.join("report.html"),
        html::render(std::slice::from_ref(report)),
    )?;
    Ok(())
}

/// Plans every peer: all publishers first (so subscribers find media when they join), then
/// subscribers spread over the rooms in turn. Room participants are spread over the rooms in
/// turn too, participant `k` as two peers: its publisher connection (`2k`) and its
/// subscriber connection (`2k + 1`).
pub fn plan_peers(s: &Scenario) -> Vec<PeerPlan> {
    let mut plans = Vec::with_capacity(s.planned_peers() as usize);
    let mut publisher = 0;
    if s.protocol == ProtocolKind::Room {
        for _ in 0..s.participants {
            for room in 0..s.rooms {
                for role in [PeerRole::Publisher, PeerRole::Subscriber] {
                    plans.push(PeerPlan {
                        id: PeerId(plans.len() as u32),
                        role,
                        room,
                        publisher: if role == PeerRole::Publisher {
                            publisher
                        } else {
                            0
                        },
                        generation: 0,
                    });
                }
                publisher += 1;
            }
        }
        return plans;
    }
    for _ in 0..s.publishers {
        for room in 0..s.rooms {
            plans.push(PeerPlan {
                id: PeerId(plans.len() as u32),
                role: PeerRole::Publisher,
                room,
                publisher,
                generation: 0,
            });
            publisher += 1;
        }
    }
    for _ in 0..s.subscribers {
        for room in 0..s.rooms {
            plans.push(PeerPlan {
                id: PeerId(plans.len() as u32),
                role: PeerRole::Subscriber,
                room,
                publisher: 0,
                generation: 0,
            });
        }
    }
    plans
}

/// Peers released by `elapsed` into the ramp (the first at once).
fn released_by(elapsed: Duration, ramp_per_s: f64, total: usize) -> usize {
    ((elapsed.as_secs_f64() * ramp_per_s).floor() as usize + 1).min(total)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Planned,
    Joining,
    Joined,
    /// Asked to leave (churn); rejoins when its shard confirms.
    Leaving,
    /// Ended after a failure; not retried.
    Failed,
}

#[derive(Debug)]
struct PeerTrack {
    plan: PeerPlan,
    status: Status,
    ever_joined: bool,
    ever_failed: bool,
    /// The first join attempt has an outcome (ramp-up waits for all of them).
    resolved: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ramp,
    Measure,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Ramp => "ramp",
            Phase::Measure => "measure",
        }
    }
}

/// A tick waiting for the shards' intervals.
#[derive(Debug)]
struct PendingTick {
    reported: usize,
    interval: Interval,
    peers_connected: u64,
    joins: u64,
    failures: u64,
}

enum SignalJob {
    Join(PeerPlan),
    Leave(SessionHandle),
}

/// Where signaling jobs go: the HTTP signaling threads, or the room thread.
enum Jobs {
    Http(Sender<SignalJob>),
    Room(Sender<RoomJob>),
}

/// A room participant as the controller follows it: when each of its connections got where
/// its join time needs it (ms after its WebSocket connect began).
#[derive(Debug, Clone, Copy, Default)]
struct ParticipantTrack {
    /// Its publisher connection came up.
    published_ms: Option<f64>,
    /// Its subscriber connection had media from every expected stream.
    complete_ms: Option<f64>,
}

impl ParticipantTrack {
    fn join_ms(&self) -> Option<f64> {
        Some(self.published_ms?.max(self.complete_ms?))
    }
}

struct Controller<'a> {
    scenario: &'a Scenario,
    options: &'a RunOptions,
    /// `None` for the room protocol (its own thread negotiates).
    protocol: Option<Arc<dyn Protocol>>,
    t0: Instant,
    started_unix_ms: u64,
    shards: Vec<ShardHandle>,
    notices: Receiver<Notice>,
    jobs: Option<Jobs>,
    /// Room protocol: its signaling thread's waker and counts (kept past the jobs' end).
    room: Option<RoomSignaling>,
    /// Room protocol: per participant, in plan order.
    participants: Vec<ParticipantTrack>,
    signalers: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    leave_errors: Arc<AtomicU64>,
    /// Where each peer's session landed (the signaling threads record it).
    placements: Arc<Placements>,
    peers: Vec<PeerTrack>,
    released: usize,
    unresolved: usize,
    connected_now: u64,
    join_ms: Vec<f64>,
    failures: BTreeMap<String, u64>,
    /// First detail seen per failure reason, for the operator.
    failure_examples: BTreeMap<String, String>,
    rejoins: u64,
    churn_pool: Vec<PeerId>,
    churn_credit: f64,
    last_churn: Instant,
    phase: Phase,
    ramp_done_at: Option<Instant>,
    next_tick: u64,
    ticks: BTreeMap<u64, PendingTick>,
    timeline: Vec<Tick>,
    tick_joins: u64,
    tick_failures: u64,
    server: Option<ProcessSampler>,
    generator: ProcessSampler,
    progress: Progress,
}

impl<'a> Controller<'a> {
    fn start(
        scenario: &'a Scenario,
        options: &'a RunOptions,
        protocol: Option<Arc<dyn Protocol>>,
    ) -> Result<Self, LoadError> {
        let plans = plan_peers(scenario);
        let threads = match scenario.threads {
            0 => thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        }
        .min(plans.len().max(1));
        let signaling_threads = match options.signaling_threads {
            0 => 4,
            n => n,
        }
        .min(plans.len().max(1));

        let (notice_tx, notices) = crossbeam::channel::unbounded();
        let connect_timeout = Duration::from_secs_f64(scenario.connect_timeout_s);
        let mut shards = Vec::with_capacity(threads);
        for i in 0..threads {
            shards.push(ShardHandle::spawn(
                i,
                options.gso,
                connect_timeout,
                notice_tx.clone(),
            )?);
        }
        let senders: Arc<[ShardSender]> = shards.iter().map(|s| s.sender.clone()).collect();
        let setup = Arc::new(SetupConfig::new(
            scenario,
            options.bind_ip,
            &options.remote_overrides,
        ));
        let rooms: Arc<[String]> = (0..scenario.rooms).map(|r| scenario.room_name(r)).collect();
        let stopping = Arc::new(AtomicBool::new(false));
        let leave_errors = Arc::new(AtomicU64::new(0));
        let mut signalers = Vec::with_capacity(signaling_threads);
        let mut room = None;
        let jobs = match &protocol {
            Some(protocol) => {
                let (jobs, job_rx) = crossbeam::channel::unbounded();
                for i in 0..signaling_threads {
                    let worker = Signaler {
                        jobs: job_rx.clone(),
                        protocol: protocol.clone(),
                        setup: setup.clone(),
                        shards: senders.clone(),
                        notices: notice_tx.clone(),
                        rooms: rooms.clone(),
                        stopping: stopping.clone(),
                        leave_errors: leave_errors.clone(),
                    };
                    signalers.push(
                        thread::Builder::new()
                            .name(format!("sfu-load-signal-{i}"))
                            .spawn(move || worker.run())?,
                    );
                }
                Jobs::Http(jobs)
            }
            None => {
                let (jobs, job_rx) = crossbeam::channel::unbounded();
                let context = RoomContext {
                    url: scenario.url.clone(),
                    rooms: rooms.clone(),
                    tokens: options.tokens.clone(),
                    setup: setup.clone(),
                    shards: senders.clone(),
                    notices: notice_tx.clone(),
                    // Push to talk: a receiving section per talker.
                    others: match &scenario.ptt {
                        Some(ptt) => ptt.talkers as usize,
                        None => scenario.participants.saturating_sub(1) as usize,
                    },
                    connect_timeout,
                    ptt: scenario.ptt.map(|ptt| RoomPtt {
                        talkers: ptt.talkers,
                        participants: scenario.participants,
                        floor_change: Duration::from_secs_f64(ptt.floor_change_s),
                        timeline: Arc::default(),
                    }),
                };
                let (signaling, thread) = RoomSignaling::spawn(context, job_rx)?;
                signalers.push(thread);
                room = Some(signaling);
                Jobs::Room(jobs)
            }
        };
        let mut progress = Progress::new(options.progress);
        let server = options.server_pid.map(|pid| {
            let s = ProcessSampler::new(pid);
            if s.unreadable {
                progress.note(&format!(
                    "warning: cannot read /proc/{pid}: no server CPU/RSS samples"
                ));
            }
            s
        });
        let t0 = Instant::now();
        let unresolved = plans.len();
        Ok(Self {
            scenario,
            options,
            protocol,
            t0,
            started_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            shards,
            notices,
            jobs: Some(jobs),
            room,
            participants: vec![ParticipantTrack::default(); scenario.total_participants() as usize],
            signalers,
            stopping,
            leave_errors,
            placements: setup.placements.clone(),
            peers: plans
                .into_iter()
                .map(|plan| PeerTrack {
                    plan,
                    status: Status::Planned,
                    ever_joined: false,
                    ever_failed: false,
                    resolved: false,
                })
                .collect(),
            released: 0,
            unresolved,
            connected_now: 0,
            join_ms: Vec::new(),
            failures: BTreeMap::new(),
            failure_examples: BTreeMap::new(),
            rejoins: 0,
            churn_pool: Vec::new(),
            churn_credit: 0.0,
            last_churn: t0,
            phase: Phase::Ramp,
            ramp_done_at: None,
            next_tick: 1,
            ticks: BTreeMap::new(),
            timeline: Vec::new(),
            tick_joins: 0,
            tick_failures: 0,
            server,
            generator: ProcessSampler::new(std::process::id()),
            progress,
        })
    }

    fn run(mut self) -> Result<Report, LoadError> {
        let planned = self.peers.len();
        let ramp_s = planned as f64 / self.scenario.ramp_per_s;
        self.progress.note(&format!(
            "sfu-load: {} ({}, {}) in {} against {} ({}), ramp {:.0} s, then {:.0} s measured; {}",
            plural(planned as u64, "peer"),
            plural(self.scenario.total_publishers(), "publisher"),
            plural(self.scenario.total_subscribers(), "subscriber"),
            plural(u64::from(self.scenario.rooms), "room"),
            self.scenario.url,
            self.protocol_name(),
            ramp_s,
            self.scenario.duration_s,
            plural(self.shards.len() as u64, "media thread"),
        ));
        // Bound on the ramp: the last release, plus the connect timeout, plus signaling.
        let ramp_limit = Duration::from_secs_f64(ramp_s + self.scenario.connect_timeout_s)
            + HTTP_TIMEOUT * 2
            + Duration::from_secs(5);
        let duration = Duration::from_secs_f64(self.scenario.duration_s);
        loop {
            let now = Instant::now();
            if self
                .options
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
            {
                self.progress.note("stopping early (asked to)");
                break;
            }
            self.release(now);
            match self.phase {
                Phase::Ramp => {
                    let all_out = self.released == self.peers.len();
                    if (all_out && self.unresolved == 0) || now - self.t0 > ramp_limit {
                        self.phase = Phase::Measure;
                        self.ramp_done_at = Some(now);
                        self.last_churn = now;
                        self.progress.finish_line();
                        self.progress.note(&format!(
                            "t={:.0}s ramp-up done: {} of {} peers connected; measuring for {:.0} s",
                            (now - self.t0).as_secs_f64(),
                            self.connected_now,
                            planned,
                            self.scenario.duration_s
                        ));
                    }
                }
                Phase::Measure => {
                    if self.ramp_done_at.is_some_and(|at| now - at >= duration) {
                        break;
                    }
                    self.churn(now);
                }
            }
            if now >= self.t0 + TICK * self.next_tick as u32 {
                self.tick();
            }
            let next_tick_at = self.t0 + TICK * self.next_tick as u32;
            let wait = next_tick_at
                .saturating_duration_since(Instant::now())
                .min(CONTROL_WAIT);
            match self.notices.recv_timeout(wait) {
                Ok(notice) => {
                    self.handle(notice);
                    // Bounded: stay responsive to the clock under a flood of notices.
                    for _ in 0..1024 {
                        match self.notices.try_recv() {
                            Ok(n) => self.handle(n),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.finish()
    }

    fn protocol_name(&self) -> &'static str {
        self.protocol
            .as_ref()
            .map_or(self.scenario.protocol.as_str(), |p| p.name())
    }

    /// Releases the peers the ramp allows by `now`. Room participants are released whole
    /// (both connections), at the ramp rate in participants.
    fn release(&mut self, now: Instant) {
        if self.room.is_some() {
            let participants = self.peers.len() / 2;
            let due = 2 * released_by(now - self.t0, self.scenario.ramp_per_s, participants);
            while self.released < due {
                let [publisher, subscriber] = [self.released, self.released + 1].map(|i| {
                    let track = &mut self.peers[i];
                    track.status = Status::Joining;
                    track.plan.clone()
                });
                self.released += 2;
                self.submit_room(RoomJob::Join {
                    publisher,
                    subscriber,
                });
            }
            return;
        }
        let due = released_by(now - self.t0, self.scenario.ramp_per_s, self.peers.len());
        while self.released < due {
            let track = &mut self.peers[self.released];
            track.status = Status::Joining;
            let plan = track.plan.clone();
            self.released += 1;
            self.submit(SignalJob::Join(plan));
        }
    }

    fn submit(&self, job: SignalJob) {
        match (&self.jobs, job) {
            (Some(Jobs::Http(jobs)), job) => {
                let _ = jobs.send(job);
            }
            (Some(Jobs::Room(..)), SignalJob::Leave(session)) => {
                self.submit_room(RoomJob::Release(session));
            }
            // Room participants join through `submit_room`, never one connection alone.
            (Some(Jobs::Room(..)), SignalJob::Join(_)) | (None, _) => {}
        }
    }

    fn submit_room(&self, job: RoomJob) {
        if let (Some(Jobs::Room(jobs)), Some(room)) = (&self.jobs, &self.room) {
            let _ = jobs.send(job);
            room.wake();
        }
    }

    /// Sends subscribers away to rejoin at the churn rate.
    fn churn(&mut self, now: Instant) {
        if self.scenario.churn_per_s <= 0.0 {
            return;
        }
        self.churn_credit += (now - self.last_churn).as_secs_f64() * self.scenario.churn_per_s;
        self.last_churn = now;
        let mut rng = rand::rng();
        while self.churn_credit >= 1.0 && !self.churn_pool.is_empty() {
            self.churn_credit -= 1.0;
            let id = self
                .churn_pool
                .swap_remove(rng.random_range(0..self.churn_pool.len()));
            let track = &mut self.peers[id.0 as usize];
            track.status = Status::Leaving;
            let shard = self.shard_of(id);
            let _ = self.shards[shard].sender.send(ShardCommand::Leave(id));
        }
        // Credit does not pile up while no subscriber is there to churn.
        self.churn_credit = self.churn_credit.min(1.0);
    }

    fn shard_of(&self, id: PeerId) -> usize {
        id.0 as usize % self.shards.len()
    }

    fn handle(&mut self, notice: Notice) {
        match notice {
            Notice::Joined { plan, join } => {
                let track = &mut self.peers[plan.id.0 as usize];
                if track.plan.generation != plan.generation {
                    return;
                }
                if !track.resolved {
                    track.resolved = true;
                    self.unresolved -= 1;
                }
                if plan.generation > 0 {
                    self.rejoins += 1;
                }
                track.status = Status::Joined;
                track.ever_joined = true;
                self.connected_now += 1;
                self.tick_joins += 1;
                self.join_ms.push(join.as_secs_f64() * 1000.0);
                if plan.role == PeerRole::Publisher {
                    if let Some(p) = self.participants.get_mut(plan.id.0 as usize / 2) {
                        p.published_ms = Some(join.as_secs_f64() * 1000.0);
                    }
                }
                if plan.role == PeerRole::Subscriber {
                    self.churn_pool.push(plan.id);
                }
            }
            Notice::Complete { plan, after } => {
                if let Some(p) = self.participants.get_mut(plan.id.0 as usize / 2) {
                    p.complete_ms = Some(after.as_secs_f64() * 1000.0);
                }
            }
            Notice::Ended {
                plan,
                session,
                joined,
                end,
            } => self.ended(plan, session, joined, end),
            Notice::Tick { tick, interval, .. } => {
                let shards = self.shards.len();
                if let Some(p) = self.ticks.get_mut(&tick) {
                    p.interval.add(&interval);
                    p.reported += 1;
                    if p.reported == shards {
                        self.close_tick(tick);
                    }
                }
            }
            Notice::Final { .. } => {
                // Only expected while stopping; handled there.
            }
        }
    }

    fn ended(
        &mut self,
        plan: PeerPlan,
        session: Option<SessionHandle>,
        joined: bool,
        end: PeerEnd,
    ) {
        let node = session.as_ref().and_then(|s| s.node.clone());
        if let Some(session) = session {
            self.submit(SignalJob::Leave(session));
        }
        let track = &mut self.peers[plan.id.0 as usize];
        if track.plan.generation != plan.generation {
            return;
        }
        if joined {
            self.connected_now = self.connected_now.saturating_sub(1);
        }
        match end.reason {
            None => {
                // Left on purpose (churn): rejoin as a new generation.
                track.plan.generation += 1;
                track.status = Status::Joining;
                let next = track.plan.clone();
                self.submit(SignalJob::Join(next));
            }
            Some(reason) => {
                track.status = Status::Failed;
                track.ever_failed = true;
                if !track.resolved {
                    track.resolved = true;
                    self.unresolved -= 1;
                }
                if joined && plan.role == PeerRole::Subscriber {
                    self.churn_pool.retain(|id| *id != plan.id);
                }
                self.tick_failures += 1;
                *self.failures.entry(reason.clone()).or_default() += 1;
                self.failure_examples
                    .entry(reason.clone())
                    .or_insert_with(|| {
                        let on = node.map(|n| format!(", node {n}")).unwrap_or_default();
                        let msg = format!(
                            "peer {} ({}, room {}{on}) failed: {reason}: {}",
                            plan.id.0,
                            plan.role.as_str(),
                            plan.room,
                            end.detail
                        );
                        self.progress.note(&msg);
                        msg
                    });
            }
        }
    }

    /// Closes the second that just ended: asks the shards for its interval, samples the
    /// processes, and prints progress for the last complete tick.
    fn tick(&mut self) {
        let tick = self.next_tick;
        self.next_tick += 1;
        for shard in &self.shards {
            let _ = shard.sender.send(ShardCommand::Tick(tick));
        }
        let t_s = tick as f64;
        if let Some(server) = &mut self.server {
            server.sample(t_s);
        }
        self.generator.sample(t_s);
        self.ticks.insert(
            tick,
            PendingTick {
                reported: 0,
                interval: Interval::new(),
                peers_connected: self.connected_now,
                joins: std::mem::take(&mut self.tick_joins),
                failures: std::mem::take(&mut self.tick_failures),
            },
        );
        // A tick a shard never answered (it ended) is closed with what arrived.
        let stale: Vec<u64> = self
            .ticks
            .range(..tick.saturating_sub(2))
            .map(|(k, _)| *k)
            .collect();
        for t in stale {
            self.close_tick(t);
        }
    }

    fn close_tick(&mut self, tick: u64) {
        let Some(p) = self.ticks.remove(&tick) else {
            return;
        };
        let i = &p.interval;
        let entry = Tick {
            t_s: tick as f64,
            peers_connected: p.peers_connected,
            pps_out: i.sent,
            pps_in: i.counts.received,
            p99_us: if i.latency.is_empty() {
                0
            } else {
                i.latency.value_at_quantile(0.99)
            },
            loss_pct: i.loss_pct(),
            joins: p.joins,
            failures: p.failures,
        };
        self.timeline.push(entry);
        let failed = self.peers.iter().filter(|p| p.ever_failed).count() as u64;
        self.progress.tick(&Snapshot {
            t_s: tick,
            phase: self.phase.name(),
            planned: self.peers.len() as u64,
            connected: self.connected_now,
            failed,
            pps_out: entry.pps_out,
            pps_in: entry.pps_in,
            p99_us: entry.p99_us,
            loss_pct: entry.loss_pct,
        });
    }

    /// Stops the shards, deletes every session, and builds the report.
    fn finish(mut self) -> Result<Report, LoadError> {
        self.stopping.store(true, Ordering::Relaxed);
        for shard in &self.shards {
            let _ = shard.sender.send(ShardCommand::Stop);
        }
        let mut totals = ShardTotals::new();
        let mut finals = 0;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while finals < self.shards.len() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.notices.recv_timeout(wait) {
                Ok(Notice::Final {
                    totals: t,
                    sessions,
                    ..
                }) => {
                    finals += 1;
                    totals.add(&t);
                    for s in sessions {
                        self.submit(SignalJob::Leave(s));
                    }
                }
                Ok(other) => self.handle(other),
                Err(_) => break,
            }
        }
        for shard in &mut self.shards {
            shard.join();
        }
        let pending: Vec<u64> = self.ticks.keys().copied().collect();
        for t in pending {
            self.close_tick(t);
        }
        self.progress.finish_line();

        // Delete the sessions: close the job queue and let the signaling threads drain it.
        self.jobs = None;
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        while self.signalers.iter().any(|s| !s.is_finished()) && Instant::now() < deadline {
            // Sessions whose setup was in flight come back as notices.
            while let Ok(notice) = self.notices.try_recv() {
                // (A room participant still out leaves with the room thread's end.)
                if let (
                    Notice::Ended {
                        session: Some(s), ..
                    },
                    Some(protocol),
                ) = (notice, &self.protocol)
                {
                    let _ = protocol.leave(&s);
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        let unfinished = self.signalers.iter().filter(|s| !s.is_finished()).count();
        if unfinished > 0 {
            self.progress.note(&format!(
                "warning: {unfinished} signaling threads still busy after {TEARDOWN_TIMEOUT:?}; the server reaps what is left"
            ));
        }
        for s in std::mem::take(&mut self.signalers) {
            if s.is_finished() {
                let _ = s.join();
            }
        }
        let still_joining = self
            .peers
            .iter()
            .filter(|p| p.status == Status::Joining && !p.ever_joined && !p.ever_failed)
            .count();
        if still_joining > 0 {
            self.progress.note(&format!(
                "note: {still_joining} peers were still joining when the run ended (counted neither connected nor failed)"
            ));
        }
        let leave_errors = self.leave_errors.load(Ordering::Relaxed);
        if leave_errors > 0 {
            self.progress
                .note(&format!("warning: {leave_errors} session deletions failed"));
        }
        if totals.unsendable > 0 {
            self.progress.note(&format!(
                "warning: {} media packets had no send stream (the server refused a simulcast layer?)",
                totals.unsendable
            ));
        }
        if totals.send_errors > 0 || totals.stalls > 0 {
            self.progress.note(&format!(
                "generator: {} datagrams could not be sent, {} loop passes over {} ms",
                totals.send_errors, totals.stalls, 50
            ));
        }
        tracing::info!(
            timer_fires = totals.timer_fires,
            timer_pushes = totals.timer_pushes,
            recv_calls = totals.recv_calls,
            rejected = totals.rejected,
            received = totals.counts.received,
            "generator work"
        );
        if totals.gso_sends > 0 {
            self.progress.note(&format!(
                "generator: {} GSO sends carried {} datagrams ({:.1} per send)",
                totals.gso_sends,
                totals.gso_datagrams,
                totals.gso_datagrams as f64 / totals.gso_sends as f64
            ));
        }
        Ok(self.report(&totals))
    }

    fn report(&self, totals: &ShardTotals) -> Report {
        let s = self.scenario;
        let mut peers = PeerCounts {
            planned: self.peers.len() as u64,
            failures: self.failures.clone(),
            rejoins: self.rejoins,
            ..PeerCounts::default()
        };
        for p in &self.peers {
            if p.ever_joined {
                peers.connected += 1;
                match p.plan.role {
                    PeerRole::Publisher => peers.publishers_connected += 1,
                    PeerRole::Subscriber => peers.subscribers_connected += 1,
                }
            }
            if p.ever_failed {
                peers.failed += 1;
            }
        }
        let c = &totals.counts;
        let packets = Packets {
            sent: totals.sent,
            received: c.received,
            expected: c.expected,
            lost: c.lost(),
            duplicates: c.duplicates,
            reordered: c.reordered,
            corrupt: c.corrupt,
            loss_pct: pct(c.lost(), c.expected),
            bytes_sent: totals.bytes_sent,
            bytes_received: c.bytes,
        };
        let latency = latency_summary(&totals.latency);
        let tally = self
            .placements
            .tally(self.peers.iter().map(|p| (&p.plan, p.ever_failed)));
        // Split only when the server named nodes; packets of unnamed ones are in neither.
        let split = !tally.nodes.is_empty();
        let join_ms = join_summary(&self.join_ms);
        let jitter_ms = jitter_summary(&totals.stream_jitter_us);
        let room = self
            .room
            .as_ref()
            .map(|signaling| self.room_figures(totals, signaling));
        let verdict = verdict(
            &s.criteria,
            &peers,
            &packets,
            &latency,
            s.total_subscribers(),
            room.as_ref(),
        );
        let mut timeline = self.timeline.clone();
        timeline.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
        Report {
            version: REPORT_VERSION,
            tool: format!("sfu-load {}", env!("CARGO_PKG_VERSION")),
            label: self
                .options
                .label
                .clone()
                .unwrap_or_else(|| format!("{} {}", self.protocol_name(), s.url)),
            started_at_unix_ms: self.started_unix_ms,
            elapsed_s: self.t0.elapsed().as_secs_f64(),
            scenario: s.clone(),
            peers,
            join_ms,
            latency_us: latency,
            fanout_spread_us: latency_summary(&totals.spread.histogram()),
            packets,
            jitter_ms,
            latency_local_us: split.then(|| path_latency(&totals.local)),
            latency_relayed_us: split.then(|| path_latency(&totals.relayed)),
            packets_local: split
                .then(|| path_packets(&totals.local.counts, tally.local_subscribers)),
            packets_relayed: split
                .then(|| path_packets(&totals.relayed.counts, tally.relayed_subscribers)),
            nodes: tally.nodes,
            node_unknown: tally.unnamed,
            server: self.server.as_ref().map(ProcessSampler::usage),
            generator: self.generator.usage(),
            timeline,
            room,
            verdict,
        }
    }

    /// What the room participants got: participant `k` is peers `2k` (publisher) and `2k + 1`
    /// (subscriber), see [`plan_peers`].
    fn room_figures(&self, totals: &ShardTotals, signaling: &RoomSignaling) -> RoomFigures {
        let s = self.scenario;
        let each = s.streams_per_participant();
        // What participant `k` (plan order: participant by participant, room by room) should
        // receive: push to talk, a listener gets one talker more than a talker.
        let expected = |k: usize| match &s.ptt {
            Some(ptt) if (k / s.rooms.max(1) as usize) >= ptt.talkers as usize => {
                u64::from(ptt.talkers)
            }
            _ => each,
        };
        let mut streams = vec![0; self.participants.len()];
        for (id, n) in &totals.sources {
            let k = id.0 as usize / 2;
            if let Some(slot) = streams.get_mut(k) {
                *slot = (*n).min(expected(k));
            }
        }
        let per_participant: Vec<ParticipantFigures> = self
            .participants
            .iter()
            .zip(&streams)
            .enumerate()
            .map(|(k, (track, &n))| {
                let plan = &self.peers[2 * k].plan;
                ParticipantFigures {
                    room: plan.room,
                    identity: room::identity(plan),
                    streams: n,
                    join_ms: track.join_ms(),
                }
            })
            .collect();
        let pair = |k: usize| [&self.peers[2 * k], &self.peers[2 * k + 1]];
        let count = |f: &dyn Fn(usize) -> bool| {
            (0..self.participants.len()).filter(|&k| f(k)).count() as u64
        };
        let joins: Vec<f64> = per_participant.iter().filter_map(|p| p.join_ms).collect();
        RoomFigures {
            participants: self.participants.len() as u64,
            participants_connected: count(&|k| pair(k).iter().all(|p| p.ever_joined)),
            participants_complete: streams
                .iter()
                .enumerate()
                .filter(|&(k, &n)| n >= expected(k))
                .count() as u64,
            failed_joins: count(&|k| pair(k).iter().any(|p| p.ever_failed && !p.ever_joined)),
            streams_expected: s.expected_streams(),
            streams_received: streams.iter().sum(),
            streams_per_participant: each,
            min_streams_per_participant: streams.iter().copied().min().unwrap_or(0),
            join_ms: join_summary(&joins),
            signaling: signaling.stats(),
            per_participant,
            ptt: s.ptt.as_ref().map(|plan| {
                let changes = signaling.floor.as_ref().map_or(0, |t| t.changes());
                PttFigures::from_checks(plan, changes, &totals.floor)
            }),
        }
    }
}

/// A signaling thread: negotiates joins and deletes sessions, one job at a time.
struct Signaler {
    jobs: Receiver<SignalJob>,
    protocol: Arc<dyn Protocol>,
    setup: Arc<SetupConfig>,
    shards: Arc<[ShardSender]>,
    notices: Sender<Notice>,
    rooms: Arc<[String]>,
    stopping: Arc<AtomicBool>,
    leave_errors: Arc<AtomicU64>,
}

impl Signaler {
    fn run(self) {
        while let Ok(job) = self.jobs.recv() {
            match job {
                SignalJob::Join(plan) => {
                    if !self.stopping.load(Ordering::Relaxed) {
                        self.join(plan);
                    }
                }
                SignalJob::Leave(session) => {
                    if self.protocol.leave(&session).is_err() {
                        self.leave_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn join(&self, plan: PeerPlan) {
        let room = &self.rooms[plan.room as usize];
        let result = catch_unwind(AssertUnwindSafe(|| {
            negotiate::setup_load(&plan, &self.setup, &*self.protocol, room)
        }));
        let failure = match result {
            Ok(Ok(peer)) => {
                let shard = &self.shards[plan.id.0 as usize % self.shards.len()];
                if let Err(ShardCommand::Add(peer)) = shard.send(ShardCommand::Add(Box::new(peer)))
                {
                    // The run is ending: this session will never carry media.
                    let _ = self.protocol.leave(&peer.session);
                }
                return;
            }
            Ok(Err(f)) => PeerEnd::failed(f.reason(), f.to_string()),
            Err(_) => PeerEnd::failed("panic", "the peer's setup panicked"),
        };
        let _ = self.notices.send(Notice::Ended {
            plan,
            session: None,
            joined: false,
            end: failure,
        });
    }
}

/// `1 room`, `3 rooms`.
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn join_summary(values_ms: &[f64]) -> JoinTimes {
    let mut v = values_ms.to_vec();
    v.sort_by(f64::total_cmp);
    let max = v.last().copied().unwrap_or(0.0);
    let mut histogram = Vec::new();
    let mut lower = f64::NEG_INFINITY;
    for bound in [
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10_000.0,
        20_000.0, 50_000.0,
    ] {
        if bound >= max {
            break;
        }
        let n = v.iter().filter(|x| **x > lower && **x <= bound).count() as u64;
        histogram.push((bound, n));
        lower = bound;
    }
    if !v.is_empty() {
        let n = v.iter().filter(|x| **x > lower).count() as u64;
        histogram.push((max, n));
    }
    JoinTimes {
        count: v.len() as u64,
        p50: percentile(&v, 0.50),
        p90: percentile(&v, 0.90),
        p99: percentile(&v, 0.99),
        max,
        histogram,
    }
}

/// Where the latency CDF is sampled: every 5% of the body, denser in the tail.
const CDF_PERCENTILES: [f64; 31] = [
    0.0, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0, 65.0,
    70.0, 75.0, 80.0, 85.0, 90.0, 92.5, 95.0, 97.5, 98.0, 99.0, 99.5, 99.8, 99.9, 99.99, 100.0,
];

fn latency_summary(h: &hdrhistogram::Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let cdf = CDF_PERCENTILES
        .into_iter()
        .map(|p| (p, h.value_at_quantile(p / 100.0)))
        .collect();
    Latency {
        count: h.len(),
        min: h.min(),
        mean: h.mean(),
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        cdf,
    }
}

fn path_latency(figures: &PathFigures) -> Latency {
    figures
        .latency()
        .map_or_else(Latency::default, latency_summary)
}

fn path_packets(c: &Counts, subscribers: u64) -> PathPackets {
    PathPackets {
        subscribers,
        received: c.received,
        expected: c.expected,
        lost: c.lost(),
        duplicates: c.duplicates,
        reordered: c.reordered,
        loss_pct: pct(c.lost(), c.expected),
    }
}

fn jitter_summary(values_us: &[f64]) -> Jitter {
    let mut v: Vec<f64> = values_us.iter().map(|us| us / 1000.0).collect();
    v.sort_by(f64::total_cmp);
    Jitter {
        mean: if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        },
        p99: percentile(&v, 0.99),
        max: v.last().copied().unwrap_or(0.0),
    }
}

/// Checks the criteria. Without any there is no verdict ([`Outcome::None`]): nothing was
/// asked of the run, so it neither passes nor fails, except that a run where no peer
/// connected fails, criteria or not (it measured nothing).
pub fn verdict(
    criteria: &Criteria,
    peers: &PeerCounts,
    packets: &Packets,
    latency: &Latency,
    planned_subscribers: u64,
    room: Option<&RoomFigures>,
) -> Verdict {
    let mut failures = Vec::new();
    if peers.connected == 0 {
        failures.push(format!("no peer connected (of {})", peers.planned));
    }
    if let Some(max) = criteria.max_loss_pct {
        if packets.loss_pct > max {
            failures.push(format!("loss {:.2}% > max {max:.2}%", packets.loss_pct));
        }
    }
    if let Some(max) = criteria.max_p99_us {
        if latency.count == 0 && planned_subscribers > 0 {
            failures.push("p99 latency unknown: no media was received".into());
        } else if latency.p99 > max {
            failures.push(format!(
                "p99 latency {} > max {}",
                progress::ms(latency.p99 as f64),
                progress::ms(max as f64)
            ));
        }
    }
    if let Some(min) = criteria.min_connected_pct {
        let connected = pct(peers.connected, peers.planned);
        if connected < min {
            failures.push(format!(
                "connected {connected:.1}% ({} of {}) < min {min:.1}%",
                peers.connected, peers.planned
            ));
        }
    }
    // A room run always has a stream criterion: every expected stream unless told fewer.
    if let Some(room) = room {
        let min = criteria.min_streams.unwrap_or(room.streams_expected);
        if room.streams_received < min {
            failures.push(format!(
                "streams {} of {} delivered < min {min} (fewest for one participant: {} of {})",
                room.streams_received,
                room.streams_expected,
                room.min_streams_per_participant,
                room.streams_per_participant
            ));
        }
    }
    if let Some(ptt) = room.and_then(|r| r.ptt.as_ref()) {
        if ptt.violations > 0 {
            failures.push(format!(
                "{} audio packets of talkers not holding the floor reached listeners",
                ptt.violations
            ));
        }
        if ptt.changes == 0 {
            failures.push("the floor never changed hands".into());
        }
    }
    let judged = criteria.max_loss_pct.is_some()
        || criteria.max_p99_us.is_some()
        || criteria.min_connected_pct.is_some()
        || room.is_some();
    let outcome = if !failures.is_empty() {
        Outcome::Fail
    } else if judged {
        Outcome::Pass
    } else {
        Outcome::None
    };
    Verdict { outcome, failures }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::scenario::MediaModel;

    fn small(url: &str) -> Scenario {
        Scenario {
            url: url.into(),
            rooms: 1,
            publishers: 1,
            subscribers: 3,
            media: MediaModel::AudioVideo,
            duration_s: 2.0,
            ramp_per_s: 50.0,
            threads: 1,
            connect_timeout_s: 5.0,
            video_kbps: 300,
            ..Scenario::default()
        }
    }

    #[test]
    fn an_unreachable_server_fails_every_peer_quickly() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        let mut s = small(&url);
        s.duration_s = 0.2;
        let start = Instant::now();
        let report = run(&s, &RunOptions::default()).expect("runs");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(report.peers.failures.get("unreachable"), Some(&4));
        assert_eq!(report.peers.failed, 4);
    }

    #[test]
    fn an_unreachable_room_server_fails_every_participant_and_the_streams_criterion() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        let s = Scenario {
            protocol: ProtocolKind::Room,
            participants: 2,
            publishers: 0,
            subscribers: 0,
            duration_s: 0.2,
            ..small(&url)
        };
        let start = Instant::now();
        let report = run(&s, &RunOptions::default()).expect("runs");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(
            report.peers.failures.get("unreachable"),
            Some(&4),
            "{:?}",
            report.peers
        );
        let room = report.room.as_ref().expect("room figures");
        assert_eq!(
            (room.failed_joins, room.streams_received),
            (2, 0),
            "{room:?}"
        );
        assert!(report.verdict.failed(), "{:?}", report.verdict);
    }

    #[test]
    fn room_participants_are_planned_as_connection_pairs_spread_over_rooms() {
        let s = Scenario {
            protocol: ProtocolKind::Room,
            rooms: 2,
            participants: 3,
            ..Scenario::default()
        };
        let plans = plan_peers(&s);
        assert_eq!(plans.len(), 12);
        for (k, pair) in plans.chunks(2).enumerate() {
            assert_eq!(pair[0].role, PeerRole::Publisher);
            assert_eq!(pair[1].role, PeerRole::Subscriber);
            assert_eq!(pair[0].room, pair[1].room);
            assert_eq!(pair[0].publisher, k as u32, "run-wide publisher numbers");
            assert_eq!(pair[0].room, k as u32 % 2);
        }
    }

    #[test]
    fn publishers_are_planned_first_and_subscribers_spread_over_rooms() {
        let s = Scenario {
            rooms: 3,
            publishers: 2,
            subscribers: 2,
            ..Scenario::default()
        };
        let plans = plan_peers(&s);
        assert_eq!(plans.len(), 12);
        let roles: Vec<PeerRole> = plans.iter().map(|p| p.role).collect();
        assert!(roles[..6].iter().all(|r| *r == PeerRole::Publisher));
        assert!(roles[6..].iter().all(|r| *r == PeerRole::Subscriber));
        let rooms: Vec<u32> = plans[6..].iter().map(|p| p.room).collect();
        assert_eq!(rooms, [0, 1, 2, 0, 1, 2]);
        let publishers: Vec<u32> = plans[..6].iter().map(|p| p.publisher).collect();
        assert_eq!(publishers, [0, 1, 2, 3, 4, 5], "run-wide publisher numbers");
        assert!(plans.iter().enumerate().all(|(i, p)| p.id.0 as usize == i));
    }

    #[test]
    fn the_ramp_releases_at_its_rate() {
        assert_eq!(released_by(Duration::ZERO, 20.0, 100), 1);
        assert_eq!(released_by(Duration::from_millis(49), 20.0, 100), 1);
        assert_eq!(released_by(Duration::from_millis(50), 20.0, 100), 2);
        assert_eq!(released_by(Duration::from_secs(1), 20.0, 100), 21);
        assert_eq!(released_by(Duration::from_secs(60), 20.0, 100), 100);
    }

    #[test]
    fn join_summary_percentiles_and_buckets() {
        let j = join_summary(&[3.0, 8.0, 40.0, 45.0, 120.0]);
        assert_eq!(j.count, 5);
        assert_eq!(j.p50, 40.0);
        assert_eq!(j.max, 120.0);
        assert_eq!(j.p99, 120.0);
        let total: u64 = j.histogram.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 5);
        assert_eq!(j.histogram.last(), Some(&(120.0, 1)));
        assert!(j.histogram.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(join_summary(&[]), JoinTimes::default());
    }

    #[test]
    fn verdict_names_each_missed_criterion() {
        let criteria = Criteria {
            max_loss_pct: Some(1.0),
            max_p99_us: Some(50_000),
            min_connected_pct: Some(99.0),
            min_streams: None,
        };
        let peers = PeerCounts {
            planned: 100,
            connected: 97,
            ..PeerCounts::default()
        };
        let packets = Packets {
            loss_pct: 2.1,
            ..Packets::default()
        };
        let latency = Latency {
            count: 10,
            p99: 62_000,
            ..Latency::default()
        };
        let v = verdict(&criteria, &peers, &packets, &latency, 90, None);
        assert!(v.failed());
        assert_eq!(
            v.failures,
            vec![
                "loss 2.10% > max 1.00%".to_string(),
                "p99 latency 62 ms > max 50 ms".to_string(),
                "connected 97.0% (97 of 100) < min 99.0%".to_string(),
            ]
        );
        let good = PeerCounts {
            planned: 100,
            connected: 100,
            ..PeerCounts::default()
        };
        let ok = verdict(
            &criteria,
            &good,
            &Packets::default(),
            &Latency {
                count: 1,
                p99: 1000,
                ..Latency::default()
            },
            90,
            None,
        );
        assert!(ok.passed(), "{ok:?}");
        // No criteria, but nobody connected: fail.
        let none = verdict(
            &Criteria::default(),
            &PeerCounts {
                planned: 5,
                ..PeerCounts::default()
            },
            &Packets::default(),
            &Latency::default(),
            5,
            None,
        );
        assert!(none.failed(), "{none:?}");
        assert_eq!(none.failures, vec!["no peer connected (of 5)".to_string()]);
        // No criteria and peers connected: no verdict, however much was lost.
        let unjudged = verdict(
            &Criteria::default(),
            &good,
            &Packets {
                loss_pct: 47.0,
                ..Packets::default()
            },
            &Latency::default(),
            90,
            None,
        );
        assert_eq!(unjudged.outcome, Outcome::None, "{unjudged:?}");
        assert!(!unjudged.passed() && !unjudged.failed());
        assert!(unjudged.failures.is_empty());
    }

    #[test]
    fn latency_summary_of_a_histogram() {
        let mut h = super::super::stats::latency_histogram();
        for us in 1..=1000 {
            h.record(us).expect("in range");
        }
        let l = latency_summary(&h);
        assert_eq!(l.count, 1000);
        assert_eq!(l.min, 1);
        assert!((495..=505).contains(&l.p50), "{}", l.p50);
        assert!((985..=1000).contains(&l.p99), "{}", l.p99);
        assert_eq!(l.cdf.first().map(|c| c.0), Some(0.0));
        assert_eq!(l.cdf.last().map(|c| c.0), Some(100.0));
        assert!(l.cdf.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
