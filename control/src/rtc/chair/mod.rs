//! A room's chair: the one place that runs what a room must decide once, not once per
//! participant: a push-to-talk channel's floor ([`super::floor`]) and a hybrid room's media
//! mode ([`super::hybrid`], in [`mode`]).
//!
//! Every control instance with participants in a chaired room ([`RoomSettings::chaired`]) runs
//! a chair task for it; the store's lease (`chair_lease`, renewed every [`TICK`], lasting
//! [`LEASE`]) makes exactly one of them the chair. Participants on any instance reach it
//! through the room's event feed (their requests are [`RoomEvent`]s), and it answers there.
//! The chair also tells the nodes the floor (`SetFloor`): every node of the cluster at each
//! change, so that a node that gets one of the room's sessions later gates it from its first
//! packet; and again to the room's nodes on every tick, for a node that restarted.
//!
//! If the chair's instance dies, another takes the lease once it runs out and starts with a
//! free floor: a turn in progress ends, and the clients hear so (`floor` with no holder).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sfu_core::ids::{NodeId, ParticipantId, RoomId};
use sfu_core::proto::{AudioFloor, NodeRequest, NodeResponse, SetFloor};
use tokio::sync::broadcast::error::RecvError;

mod mode;

pub use mode::{MODE, StoredMode, stored_mode};

use super::floor::{self, Floor, FloorEvent};
use super::hybrid::ModeMachine;
use super::participant::{FloorAnswer, RoomEvent};
use super::settings::{self, RoomSettings};
use crate::http::AppState;

/// How long a chair's lease lasts unless renewed; a dead chair is replaced after this.
pub const LEASE: Duration = Duration::from_secs(6);
/// How often a chair renews its lease, re-reads the room's settings and re-asserts the floor
/// on the room's nodes, and a waiting instance tries to take the lease.
pub const TICK: Duration = Duration::from_secs(2);
/// How often the task of a room that needs no chair re-reads the room's settings. A change
/// is announced on the room's feed ([`RoomEvent::Settings`]) and read at once; this only
/// covers an announcement lost while the store's feed was down.
const IDLE_REREAD: Duration = Duration::from_secs(30);

/// This instance's chair tasks, by room, with how many of its participants each room has;
/// and the chairs' counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Chairs {
    inner: Mutex<HashMap<String, usize>>,
    /// Rooms this instance chairs now.
    chairing: AtomicU64,
    /// Times a floor changed hands (or fell free) in a room chaired here.
    floor_changes: AtomicU64,
    /// Hybrid rooms' switches completed here, and how long they took.
    switches: Mutex<mode::SwitchFigures>,
}

impl Chairs {
    /// `/metrics` series of the chairs on this instance.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP sfu_chaired_rooms Rooms whose chair (push-to-talk floor) runs on this control instance.\n\
             # TYPE sfu_chaired_rooms gauge\nsfu_chaired_rooms {}\n\
             # HELP sfu_floor_changes_total Times a push-to-talk floor changed hands or fell free, in rooms chaired here.\n\
             # TYPE sfu_floor_changes_total counter\nsfu_floor_changes_total {}",
            self.chairing.load(Ordering::Relaxed),
            self.floor_changes.load(Ordering::Relaxed),
        );
        self.switches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render(out);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A participant of `room` started on this instance: start the room's chair task unless
    /// one runs.
    pub fn seat(state: &Arc<AppState>, room: &RoomId) {
        let first = {
            let mut rooms = state.chairs.lock();
            let count = rooms.entry(room.to_string()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            tokio::spawn(run(state.clone(), room.clone()));
        }
    }

    /// A participant of `room` ended on this instance.
    pub fn unseat(&self, room: &RoomId) {
        if let Some(count) = self.lock().get_mut(room.as_str()) {
            *count = count.saturating_sub(1);
        }
    }

    /// Whether the chair task of `room` should go on; if not, it is forgotten here (in the
    /// same step, so a participant arriving meanwhile starts a new one).
    fn keep(&self, room: &RoomId) -> bool {
        let mut rooms = self.lock();
        match rooms.get(room.as_str()) {
            Some(0) | None => {
                rooms.remove(room.as_str());
                false
            }
            Some(_) => true,
        }
    }
}

/// Which nodes [`Chair::tell_nodes`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tell {
    /// The floor changed: every node.
    Change,
    /// A tick: the room's nodes and those not told yet.
    Reassert,
    /// Those not told yet.
    Newcomers,
}

/// The chair of one room while this instance holds its lease.
struct Chair {
    state: Arc<AppState>,
    room: RoomId,
    /// `Some` while the room is a push-to-talk channel.
    floor: Option<Floor<String>>,
    /// The identity and `req` of the floor request being handled.
    asking: Option<(String, u64)>,
    /// `Some` while the room is a hybrid room (peer to peer while small).
    mode: Option<ModeMachine<String>>,
    /// The floor the nodes were last told, and which nodes.
    told: Option<(AudioFloor, Vec<NodeId>)>,
}

/// One room's chair task on this instance: waits for the lease, chairs while it holds it,
/// ends when the instance has no participant left in the room.
async fn run(state: Arc<AppState>, room: RoomId) {
    let holder = format!("{}-{:08x}", instance_name(&state), rand::random::<u32>());
    let mut feed = state.sessions.room_subscribe(room.as_str());
    let mut chair: Option<Chair> = None;
    // Whether the room needed a chair when its settings were last read, and when that was.
    let mut chaired = true;
    let mut read_at: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = chair.as_ref().and_then(Chair::poll_timeout);
        tokio::select! {
            _ = tick.tick() => {
                if !state.chairs.keep(&room) {
                    break;
                }
                // A room without a chair costs no store reads but the occasional re-read.
                if chaired || read_at.is_none_or(|at| at.elapsed() >= IDLE_REREAD) {
                    (chair, chaired) = on_tick(&state, &room, &holder, chair).await;
                    read_at = Some(tokio::time::Instant::now());
                }
            }
            event = feed.recv() => match event {
                Ok(text) => match serde_json::from_str::<RoomEvent>(&text) {
                    Ok(RoomEvent::Settings) => {
                        (chair, chaired) = on_tick(&state, &room, &holder, chair).await;
                        read_at = Some(tokio::time::Instant::now());
                    }
                    Ok(event) => {
                        if let Some(chair) = chair.as_mut() {
                            chair.on_room_event(event).await;
                        }
                    }
                    // Participants report unreadable events; one report is enough.
                    Err(_) => {}
                },
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(%room, missed, "the room's chair missed room events");
                }
                Err(RecvError::Closed) => feed = state.sessions.room_subscribe(room.as_str()),
            },
            _ = sleep_until(wake), if wake.is_some() => {
                if let Some(chair) = chair.as_mut() {
                    let now = now();
                    if let Some(floor) = chair.floor.as_mut() {
                        floor.handle_timeout(now);
                    }
                    if let Some(mode) = chair.mode.as_mut() {
                        mode.handle_timeout(now);
                    }
                    chair.drain().await;
                    chair.act().await;
                }
            }
        }
    }
    if let Some(mut chair) = chair {
        // The room is over if nobody is left on any instance: the nodes forget its floor.
        // Otherwise the next chair takes over where the nodes are.
        let over = state
            .sessions
            .roster(room.as_str())
            .await
            .is_ok_and(|r| r.is_empty());
        if over && chair.floor.take().is_some() {
            chair.tell_nodes(Tell::Change).await;
        }
        // A hybrid room used again starts peer to peer.
        if over && chair.mode.take().is_some() {
            let _ = state
                .sessions
                .set_room_value(room.as_str(), MODE, None)
                .await;
        }
        chair.resign("no participant left on this instance");
    }
    if let Err(e) = state.sessions.chair_release(room.as_str(), &holder).await {
        tracing::debug!(%room, error = %e, "cannot release the chair lease");
    }
}

/// Renew or take the lease and follow the room's settings; returns the chair, if this
/// instance holds it now, and whether the room needs one (or may: the store did not say).
async fn on_tick(
    state: &Arc<AppState>,
    room: &RoomId,
    holder: &str,
    chair: Option<Chair>,
) -> (Option<Chair>, bool) {
    let settings = match settings::load(state, room.as_str()).await {
        Ok(settings) => settings,
        Err(e) => {
            tracing::warn!(%room, error = %e, "the room's chair cannot read its settings");
            return (chair, true);
        }
    };
    (
        on_settings(state, room, holder, chair, &settings).await,
        settings.chaired(&state.hybrid),
    )
}

async fn on_settings(
    state: &Arc<AppState>,
    room: &RoomId,
    holder: &str,
    chair: Option<Chair>,
    settings: &RoomSettings,
) -> Option<Chair> {
    if !settings.chaired(&state.hybrid) {
        if let Some(mut chair) = chair {
            // Open the floor and say so before leaving.
            chair.follow(settings).await;
            chair.tell_nodes(Tell::Change).await;
            chair.resign("the room needs no chair any more");
            let _ = state.sessions.chair_release(room.as_str(), holder).await;
        }
        return None;
    }
    match state
        .sessions
        .chair_lease(room.as_str(), holder, LEASE)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            if let Some(chair) = chair {
                tracing::warn!(%room, "lost the room's chair to another control instance");
                chair.resign("lease lost");
            }
            return None;
        }
        Err(e) => {
            // Keep chairing: the lease lasts a while, and the store may be back at the next
            // tick. If it is not, another instance takes over once the lease runs out.
            tracing::warn!(%room, error = %e, "cannot renew the room's chair lease");
            return chair;
        }
    }
    let mut chair = chair.unwrap_or_else(|| {
        tracing::info!(%room, "chairing the room");
        state.chairs.chairing.fetch_add(1, Ordering::Relaxed);
        Chair {
            state: state.clone(),
            room: room.clone(),
            floor: None,
            asking: None,
            mode: None,
            told: None,
        }
    });
    chair.follow(settings).await;
    // A room without a floor needs nothing from the nodes once they were told it is open.
    if chair.floor.is_some()
        || chair
            .told
            .as_ref()
            .is_none_or(|(f, _)| *f != AudioFloor::Open)
    {
        chair.tell_nodes(Tell::Reassert).await;
    }
    Some(chair)
}

impl Chair {
    /// When the floor or the mode machine next waits on time.
    fn poll_timeout(&self) -> Option<std::time::Instant> {
        let floor = self.floor.as_ref().and_then(Floor::poll_timeout);
        let mode = self.mode.as_ref().and_then(ModeMachine::poll_timeout);
        floor.into_iter().chain(mode).min()
    }

    /// Take up what the settings ask: a floor for a push-to-talk channel, a mode machine for
    /// a hybrid room, neither otherwise.
    async fn follow(&mut self, settings: &RoomSettings) {
        match (settings.hybrid(&self.state.hybrid), self.mode.is_some()) {
            (Some(config), false) => self.start_mode(config).await,
            (None, true) => self.stop_mode().await,
            _ => {}
        }
        match (settings.ptt, self.floor.is_some()) {
            (true, false) => {
                self.floor = Some(Floor::new(self.state.ptt.floor()));
                self.announce_floor().await;
            }
            (false, true) => {
                self.floor = None;
                self.announce_floor().await;
            }
            _ => {}
        }
    }

    /// Stop chairing. The nodes keep the floor last set until the next chair sets it (a
    /// room that stopped being a channel was set open by [`Chair::follow`] already).
    fn resign(self, why: &str) {
        tracing::info!(room = %self.room, why, "leaving the room's chair");
        self.state.chairs.chairing.fetch_sub(1, Ordering::Relaxed);
    }

    async fn on_room_event(&mut self, event: RoomEvent) {
        let now = now();
        let line = self.line();
        match event {
            RoomEvent::FloorRequest {
                identity,
                moderator,
                req,
            } => {
                if let Some(floor) = self.floor.as_mut() {
                    self.asking = req.map(|req| (identity.clone(), req));
                    floor.request(identity, moderator, now);
                }
            }
            RoomEvent::FloorRelease { identity } => {
                if let Some(floor) = self.floor.as_mut() {
                    floor.release(&identity, now);
                }
            }
            // A join replaced by a newer one of the same identity is still in the room.
            RoomEvent::Left {
                identity, reason, ..
            } if reason != "replaced" => {
                if let Some(floor) = self.floor.as_mut() {
                    floor.leave(&identity, now);
                }
                if let Some(mode) = self.mode.as_mut() {
                    mode.leave(&identity, now);
                }
            }
            RoomEvent::Joined { member, .. } => {
                if let Some(mode) = self.mode.as_mut() {
                    mode.join(member.identity, now);
                }
                // The newcomer learns who holds the floor; its node may be new to the room.
                if self.floor.is_some() {
                    self.announce_floor().await;
                    self.tell_nodes(Tell::Newcomers).await;
                }
            }
            RoomEvent::SwitchAck { identity, epoch } => {
                if let Some(mode) = self.mode.as_mut() {
                    mode.acknowledge(&identity, epoch, now);
                }
            }
            _ => return,
        }
        self.act().await;
        // The line may have changed even if the holder did not.
        if !self.drain().await && self.line() != line {
            self.announce_floor().await;
        }
    }

    /// Who waits for the floor, next first.
    fn line(&self) -> Vec<String> {
        self.floor
            .as_ref()
            .map(|f| f.queue().cloned().collect())
            .unwrap_or_default()
    }

    /// Act on what the floor decided: first the nodes (so that a talker's client unmutes no
    /// sooner than its audio goes through), then the answers, then the room. Returns whether
    /// the holder changed (and the room was told).
    async fn drain(&mut self) -> bool {
        let mut changed = false;
        let mut answers = Vec::new();
        while let Some(event) = self.floor.as_mut().and_then(Floor::poll_event) {
            match event {
                FloorEvent::Holder(_) => changed = true,
                FloorEvent::Granted { member, until } => {
                    let ms = until.saturating_duration_since(now()).as_millis();
                    let max_talk_ms = u64::try_from(ms).unwrap_or(u64::MAX);
                    answers.push((member, FloorAnswer::Granted { max_talk_ms }));
                }
                FloorEvent::Queued { member, position } => {
                    answers.push((member, FloorAnswer::Queued { position }));
                }
                FloorEvent::Denied { member, reason } => {
                    let reason = match reason {
                        floor::Denied::QueueFull => "queue_full",
                    };
                    answers.push((
                        member,
                        FloorAnswer::Denied {
                            reason: reason.into(),
                        },
                    ));
                }
                FloorEvent::Revoked { member, reason } => {
                    let reason = match reason {
                        floor::Revoked::TimeUp => "time_up",
                        floor::Revoked::Preempted => "preempted",
                    };
                    answers.push((
                        member,
                        FloorAnswer::Revoked {
                            reason: reason.into(),
                        },
                    ));
                }
            }
        }
        if changed {
            self.tell_nodes(Tell::Change).await;
        }
        // The request being handled gets its answer with its `req`: the first grant, place
        // in line or refusal for its identity.
        let mut asking = self.asking.take();
        for (identity, answer) in answers {
            let req = match &asking {
                Some((who, req))
                    if *who == identity && !matches!(answer, FloorAnswer::Revoked { .. }) =>
                {
                    let req = *req;
                    asking = None;
                    Some(req)
                }
                _ => None,
            };
            self.publish(&RoomEvent::FloorAnswer {
                identity,
                answer,
                req,
            })
            .await;
        }
        if changed {
            self.announce_floor().await;
        }
        changed
    }

    /// What the nodes should do with the room's audio now.
    fn audio_floor(&self) -> AudioFloor {
        match &self.floor {
            None => AudioFloor::Open,
            Some(floor) => match floor.holder() {
                Some(identity) => AudioFloor::Held(ParticipantId::from_identity(identity)),
                None => AudioFloor::Free,
            },
        }
    }

    /// Tell the nodes the floor. A change goes to every node of the cluster, not only the
    /// room's: a node that gets the room's first session later must gate it from its first
    /// packet. `Reassert` (every tick) repeats it to the room's nodes, for one that restarted,
    /// and tells nodes that joined the cluster since; `Newcomers` only the latter.
    async fn tell_nodes(&mut self, tell: Tell) {
        let floor = self.audio_floor();
        let mut targets: Vec<Arc<dyn crate::node_client::NodeClient>> = Vec::new();
        let clients = self.state.nodes.clients();
        let told = match &self.told {
            Some((told, nodes)) if *told == floor && tell != Tell::Change => nodes.clone(),
            _ => Vec::new(),
        };
        let room_nodes: Vec<NodeId> = if tell == Tell::Reassert {
            match self.state.sessions.placement_view(self.room.as_str()).await {
                Ok(view) => view.room_nodes.into_iter().map(|(n, _)| n).collect(),
                Err(e) => {
                    tracing::warn!(room = %self.room, error = %e, "the chair cannot list the room's nodes");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        for client in &clients {
            if !told.contains(client.id()) || room_nodes.contains(client.id()) {
                targets.push(client.clone());
            }
        }
        let request = SetFloor {
            room: self.room.clone(),
            floor,
        };
        let calls = targets.iter().map(|client| {
            let request = NodeRequest::SetFloor(request.clone());
            async move { (client.id(), client.call(request).await) }
        });
        for (node, response) in futures_util::future::join_all(calls).await {
            match response {
                NodeResponse::Done => {}
                NodeResponse::Error(sfu_core::proto::NodeError::Stopped) => {
                    tracing::debug!(room = %self.room, %node, "a stopped node was not told the room's floor");
                }
                other => {
                    tracing::warn!(room = %self.room, %node, response = ?other, "a node did not take the room's floor");
                }
            }
        }
        if tell == Tell::Change {
            self.state
                .chairs
                .floor_changes
                .fetch_add(1, Ordering::Relaxed);
        }
        let nodes = clients.iter().map(|c| c.id().clone()).collect();
        self.told = Some((floor, nodes));
    }

    /// Tell the room who holds the floor and who waits.
    async fn announce_floor(&self) {
        let (holder, queue) = match &self.floor {
            Some(floor) => (floor.holder().cloned(), floor.queue().cloned().collect()),
            None => (None, Vec::new()),
        };
        self.publish(&RoomEvent::Floor {
            ptt: self.floor.is_some(),
            holder,
            queue,
        })
        .await;
    }

    async fn publish(&self, event: &RoomEvent) {
        let text = serde_json::to_string(event).unwrap_or_default();
        if let Err(e) = self
            .state
            .sessions
            .room_publish(self.room.as_str(), &text)
            .await
        {
            tracing::warn!(room = %self.room, error = %e, "the chair cannot publish to the room");
        }
    }
}

fn instance_name(state: &AppState) -> String {
    state
        .sessions
        .redis()
        .map(|r| r.instance().to_string())
        .unwrap_or_else(|| "local".into())
}

/// The clock the floor runs on (tokio's, so that tests with paused time drive it).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
