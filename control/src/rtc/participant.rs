//! One participant of a meeting room: a task that owns its two media sessions (publisher and
//! subscriber connection), its subscriptions (which published track each receiving section
//! carries), and its view of the room, kept from the store's roster and event feed. It
//! outlives its socket by `rtc.resume_secs`, so a dropped socket loses no media.
//!
//! The room's state is the store's, written only by each participant for itself: its roster
//! entry ([`Member`] as JSON, leased in Redis and renewed every [`LEASE_RENEW`]) and the
//! [`RoomEvent`]s it publishes when it joins, changes (tracks published, ended, muted) or
//! leaves. Receivers diff what they hear against what they know, so a repeated or reordered
//! update changes nothing, and a receiver that missed events resynchronises from the roster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sfu_core::ids::{Layer, NodeId, RoomId, SessionId, TrackId};
use sfu_core::proto::{EndReason, MediaKind, SetSubscription, Subscribe, SubscribePolicy};
use sfu_core::{NodeError, NodeRequest, NodeResponse, SessionCreated, SessionKind};
use tokio::sync::{broadcast, mpsc};

use super::protocol::{
    ClientMessage, ErrorCode, ParticipantInfo, ResumeInfo, ServerMessage, SlotView, SpeakerView,
    TrackOptions, TrackView, close,
};
use super::socket::SocketHandle;
use crate::auth::Claims;
use crate::http::{AppState, OfferError, create_session};
use crate::store::{RoomFeed, RosterEntry, RosterJoin};

/// How often a participant renews its roster entry's lease.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How soon a subscription the node refused (its track not there yet) is tried again.
pub const SUBSCRIBE_RETRY: Duration = Duration::from_millis(200);
/// Inputs waiting for a participant.
const INBOX: usize = 64;

/// What reaches a participant task.
#[derive(Debug)]
pub enum Input {
    /// A message from its socket.
    Client {
        socket: u64,
        req: Option<u64>,
        message: ClientMessage,
    },
    /// A new socket resumes the participant.
    Attach {
        socket: SocketHandle,
        req: Option<u64>,
    },
    /// Socket `socket` closed.
    Detached { socket: u64 },
    /// A node ended one of its sessions.
    SessionEnded {
        session: SessionId,
        reason: EndReason,
    },
}

/// A participant as the room's roster and events carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub identity: String,
    pub name: String,
    pub tracks: Vec<MemberTrack>,
}

/// A published track as the roster carries it: the client's view plus the node's track id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberTrack {
    pub id: String,
    pub track: TrackId,
    pub kind: MediaKind,
    pub source: String,
    pub layers: u8,
    pub muted: bool,
}

impl MemberTrack {
    fn view(&self, identity: &str) -> TrackView {
        TrackView {
            id: self.id.clone(),
            identity: identity.to_string(),
            kind: self.kind.as_str().to_string(),
            source: self.source.clone(),
            layers: self.layers,
            muted: self.muted,
            mid: None,
        }
    }
}

impl Member {
    fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            identity: self.identity.clone(),
            name: self.name.clone(),
            tracks: self.tracks.iter().map(|t| t.view(&self.identity)).collect(),
        }
    }
}

/// What participants tell each other through the store's room feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RoomEvent {
    /// `pid` joined (a join of an identity already present replaces it).
    Joined { pid: String, member: Member },
    /// `pid`'s tracks changed.
    Updated { pid: String, member: Member },
    Left {
        pid: String,
        identity: String,
        reason: String,
    },
    /// The room's active speakers changed: their audio tracks, loudest first (from the node
    /// that ranks them, through the instance that holds it).
    Speakers { tracks: Vec<TrackId> },
    /// A node ended `session`; told by the control instance holding the node's link, for
    /// the session's participant wherever it is ([`session_ended_elsewhere`]).
    SessionEnded {
        session: SessionId,
        reason: EndReason,
    },
}

/// Tell the participants of `room` on every control instance that a node ended `session`
/// (one of them may hold it; the others ignore it).
pub async fn session_ended_elsewhere(
    state: &AppState,
    room: &RoomId,
    session: SessionId,
    reason: EndReason,
) {
    let event = to_json(&RoomEvent::SessionEnded { session, reason });
    if let Err(e) = state.sessions.room_publish(room.as_str(), &event).await {
        tracing::warn!(%room, %session, error = %e, "cannot pass on an ended session");
    }
}

/// One of the participant's media sessions.
#[derive(Debug, Clone)]
struct Connection {
    session: SessionId,
    node: NodeId,
}

/// A receiving section of the subscriber connection.
#[derive(Debug, Clone)]
struct Slot {
    mid: String,
    kind: MediaKind,
    /// The public id of the track it carries.
    carries: Option<String>,
    max_layer: u8,
    paused: bool,
}

/// A track the participant wants to receive.
#[derive(Debug, Clone)]
struct Wanted {
    track: TrackId,
    kind: MediaKind,
    max_layer: u8,
    paused: bool,
}

/// Start a participant for a socket that joined; `None` when refused (the error is queued).
pub async fn start(
    state: Arc<AppState>,
    room: RoomId,
    claims: Claims,
    name: String,
    auto_subscribe: bool,
    socket: SocketHandle,
    req: Option<u64>,
) -> Option<mpsc::Sender<Input>> {
    let pid = format!("{:016x}", rand::random::<u64>());
    let member = Member {
        identity: claims.sub.clone(),
        name,
        tracks: Vec::new(),
    };
    // Listen before reading the roster, so nothing between the two is missed.
    let feed = state.sessions.room_subscribe(room.as_str());
    let entry = RosterEntry {
        identity: member.identity.clone(),
        pid: pid.clone(),
        data: to_json(&member),
    };
    match state
        .sessions
        .roster_put(room.as_str(), entry, state.rtc.max_participants)
        .await
    {
        Ok(RosterJoin::Joined) => {}
        Ok(RosterJoin::Full) => {
            socket.error(
                ErrorCode::RoomFull,
                format!(
                    "room {room} is full: it has {} participants (rtc.max_participants)",
                    state.rtc.max_participants
                ),
                req,
            );
            socket.close(close::FORBIDDEN, "room full");
            return None;
        }
        Err(e) => {
            socket.error(ErrorCode::Unavailable, e.to_string(), req);
            return None;
        }
    }
    let (tx, inbox) = mpsc::channel(INBOX);
    let mut participant = Participant {
        state: state.clone(),
        room,
        pid,
        grants_publish: claims.grants.publish || claims.grants.admin,
        member,
        auto_subscribe,
        // Attached after the first look at the roster: the participants already in the room
        // come in `joined`, not as events before it.
        socket: None,
        detached_at: None,
        resume_token: String::new(),
        me: tx.clone(),
        publisher: None,
        publisher_mids: Vec::new(),
        subscriber: None,
        slots: Vec::new(),
        others: BTreeMap::new(),
        wanted: BTreeMap::new(),
        requested: None,
        retry: false,
    };
    state.rtc_hub.participant_started();
    participant
        .publish_event(RoomEvent::Joined {
            pid: participant.pid.clone(),
            member: participant.member.clone(),
        })
        .await;
    participant.resync().await;
    participant.socket = Some(socket);
    participant.send_joined(req, false);
    tracing::info!(room = %participant.room, identity = %participant.member.identity, pid = %participant.pid, "participant joined");
    participant.reconcile().await;
    tokio::spawn(participant.run(inbox, feed));
    Some(tx)
}

/// A participant's state; see the module documentation.
struct Participant {
    state: Arc<AppState>,
    room: RoomId,
    /// This join's id: distinguishes it from an earlier or later join of the same identity.
    pid: String,
    grants_publish: bool,
    member: Member,
    auto_subscribe: bool,
    socket: Option<SocketHandle>,
    detached_at: Option<tokio::time::Instant>,
    resume_token: String,
    me: mpsc::Sender<Input>,
    publisher: Option<Connection>,
    /// The publisher section each of my tracks is sent on.
    publisher_mids: Vec<(TrackId, String)>,
    subscriber: Option<Connection>,
    slots: Vec<Slot>,
    /// The other participants: identity → (their join id, what they are).
    others: BTreeMap<String, (String, Member)>,
    /// Tracks to receive, by public id.
    wanted: BTreeMap<String, Wanted>,
    /// The section counts last asked for with `renegotiate` (audio, video).
    requested: Option<(usize, usize)>,
    /// A subscription the node refused for now waits for a retry.
    retry: bool,
}

/// Why a participant leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Left,
    Timeout,
    Replaced,
}

impl Leave {
    fn as_str(self) -> &'static str {
        match self {
            Leave::Left => "left",
            Leave::Timeout => "timeout",
            Leave::Replaced => "replaced",
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

impl Participant {
    async fn run(mut self, mut inbox: mpsc::Receiver<Input>, mut feed: RoomFeed) {
        let mut renew = tokio::time::interval(LEASE_RENEW);
        renew.tick().await;
        let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
        let leave = loop {
            let resume_deadline = self
                .detached_at
                .map(|t| t + Duration::from_secs(self.state.rtc.resume_secs))
                .unwrap_or_else(far);
            let retry_at = if self.retry {
                tokio::time::Instant::now() + SUBSCRIBE_RETRY
            } else {
                far()
            };
            tokio::select! {
                input = inbox.recv() => {
                    let Some(input) = input else { break Leave::Timeout };
                    if let Some(leave) = self.on_input(input).await {
                        break leave;
                    }
                }
                event = feed.recv() => match event {
                    Ok(text) => {
                        if let Some(leave) = self.on_room_event(&text).await {
                            break leave;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(room = %self.room, missed, "room events missed; resynchronising from the roster");
                        self.resync().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        feed = self.state.sessions.room_subscribe(self.room.as_str());
                        self.resync().await;
                    }
                },
                _ = renew.tick() => {
                    if let Some(leave) = self.renew().await {
                        break leave;
                    }
                }
                _ = tokio::time::sleep_until(resume_deadline) => break Leave::Timeout,
                _ = tokio::time::sleep_until(retry_at) => {
                    self.retry = false;
                    self.reconcile().await;
                }
            }
        };
        self.end(leave).await;
    }

    /// Renew the roster entry's lease and, since events can be lost while the store's feed
    /// reconnects, resynchronise with the roster. An entry that is gone (its lease ran out
    /// while the store was away) is written again; one owned by a newer join means this one
    /// was replaced.
    async fn renew(&mut self) -> Option<Leave> {
        let (room, identity) = (self.room.as_str(), self.member.identity.as_str());
        let data = to_json(&self.member);
        match self
            .state
            .sessions
            .roster_update(room, identity, &self.pid, &data)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let roster = self.state.sessions.roster(room).await.unwrap_or_default();
                if roster
                    .iter()
                    .any(|e| e.identity == identity && e.pid != self.pid)
                {
                    return Some(Leave::Replaced);
                }
                let entry = RosterEntry {
                    identity: identity.to_string(),
                    pid: self.pid.clone(),
                    data,
                };
                tracing::info!(%room, %identity, "roster entry lost (store restarted?); writing it again");
                if let Err(e) = self.state.sessions.roster_put(room, entry, 0).await {
                    tracing::warn!(%room, error = %e, "cannot write a roster entry");
                }
            }
            Err(e) => tracing::warn!(%room, error = %e, "cannot renew a roster entry"),
        }
        self.resync().await;
        self.reconcile().await;
        None
    }

    fn send(&self, message: ServerMessage, req: Option<u64>) {
        if let Some(socket) = &self.socket {
            socket.send(message, req);
        }
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>, req: Option<u64>) {
        if let Some(socket) = &self.socket {
            socket.error(code, message, req);
        }
    }

    fn send_joined(&mut self, req: Option<u64>, resumed: bool) {
        let token = format!("{:032x}", rand::random::<u128>());
        let previous = (!self.resume_token.is_empty()).then(|| self.resume_token.clone());
        self.state.rtc_hub.set_resume(
            &token,
            previous.as_deref(),
            (
                self.room.to_string(),
                self.member.identity.clone(),
                self.me.clone(),
            ),
        );
        self.resume_token = token.clone();
        let ice_servers = self
            .state
            .turn
            .as_ref()
            .map(|turn| {
                let c = turn.issue(&self.member.identity, crate::auth::unix_now());
                vec![serde_json::json!({
                    "urls": c.urls,
                    "username": c.username,
                    "credential": c.credential,
                })]
            })
            .unwrap_or_default();
        let mut me = self.member.info();
        for (view, track) in me.tracks.iter_mut().zip(&self.member.tracks) {
            view.mid = self.publisher_mid(&track.track);
        }
        self.send(
            ServerMessage::Joined {
                v: super::protocol::VERSION,
                room: self.room.to_string(),
                me,
                participants: self.others.values().map(|(_, m)| m.info()).collect(),
                resume: ResumeInfo {
                    token,
                    secs: self.state.rtc.resume_secs,
                },
                resumed,
                ice_servers,
            },
            req,
        );
    }

    /// The publisher section a track of mine is sent on (from its index in the offer).
    fn publisher_mid(&self, track: &TrackId) -> Option<String> {
        self.publisher_mids
            .iter()
            .find(|(t, _)| t == track)
            .map(|(_, mid)| mid.clone())
    }

    async fn on_input(&mut self, input: Input) -> Option<Leave> {
        match input {
            Input::Client {
                socket,
                req,
                message,
            } => {
                if self.socket.as_ref().map(|s| s.id) != Some(socket) {
                    return None; // a replaced socket's last words
                }
                self.on_message(req, message).await
            }
            Input::Attach { socket, req } => {
                if let Some(old) = self.socket.take() {
                    old.close(close::REPLACED, "resumed on another socket");
                }
                self.detached_at = None;
                tracing::info!(room = %self.room, identity = %self.member.identity, "participant resumed");
                // The room as it is now comes in `joined`, not as events before it.
                self.resync().await;
                self.socket = Some(socket);
                self.send_joined(req, true);
                // What each section carries now, for a client that lost track of it.
                for slot in &self.slots {
                    if let Some(id) = &slot.carries {
                        self.send(
                            ServerMessage::Subscribed {
                                track: id.clone(),
                                mid: slot.mid.clone(),
                                max_layer: slot.max_layer,
                                paused: slot.paused,
                            },
                            None,
                        );
                    }
                }
                self.requested = None;
                self.reconcile().await;
                None
            }
            Input::Detached { socket } => {
                if self.socket.as_ref().map(|s| s.id) == Some(socket) {
                    self.socket = None;
                    self.detached_at = Some(tokio::time::Instant::now());
                    tracing::info!(room = %self.room, identity = %self.member.identity, resume_secs = self.state.rtc.resume_secs, "participant's socket dropped; waiting for it to resume");
                }
                None
            }
            Input::SessionEnded { session, reason } => {
                self.session_ended(session, reason).await;
                None
            }
        }
    }

    async fn on_message(&mut self, req: Option<u64>, message: ClientMessage) -> Option<Leave> {
        match message {
            ClientMessage::Join { .. } => self.error(
                ErrorCode::AlreadyJoined,
                "this socket has joined already",
                req,
            ),
            ClientMessage::Publish { sdp, tracks } => self.publish(req, sdp, tracks).await,
            ClientMessage::SubscriberOffer { sdp } => self.subscriber_offer(req, sdp).await,
            ClientMessage::Subscribe { track, max_layer } => {
                let Some(found) = self.find_track(&track).map(|t| (t.track, t.kind)) else {
                    self.error(
                        ErrorCode::UnknownTrack,
                        format!("no track {track:?} in the room"),
                        req,
                    );
                    return None;
                };
                let max_layer = clamp_layer(max_layer.unwrap_or(2));
                let entry = self.wanted.entry(track.clone()).or_insert(Wanted {
                    track: found.0,
                    kind: found.1,
                    max_layer,
                    paused: false,
                });
                entry.max_layer = max_layer;
                self.reconcile().await;
                if let Some(slot) = self
                    .slots
                    .iter()
                    .find(|s| s.carries.as_deref() == Some(&track))
                {
                    // Already carried: answer now (a new subscription is answered by reconcile).
                    let (mid, paused) = (slot.mid.clone(), slot.paused);
                    self.send(
                        ServerMessage::Subscribed {
                            track,
                            mid,
                            max_layer,
                            paused,
                        },
                        req,
                    );
                }
            }
            ClientMessage::Unsubscribe { track } => {
                if self.wanted.remove(&track).is_none() {
                    self.error(
                        ErrorCode::UnknownTrack,
                        format!("not subscribed to {track:?}"),
                        req,
                    );
                    return None;
                }
                self.reconcile().await;
            }
            ClientMessage::SetSubscription {
                track,
                max_layer,
                paused,
            } => self.set_subscription(req, track, max_layer, paused).await,
            ClientMessage::Mute { track, muted } => self.mute(req, track, muted).await,
            ClientMessage::Leave {} => {
                self.send(ServerMessage::Left {}, req);
                return Some(Leave::Left);
            }
            ClientMessage::Ping {} => self.send(ServerMessage::Pong {}, req),
        }
        None
    }

    fn find_track(&self, id: &str) -> Option<&MemberTrack> {
        self.others
            .values()
            .flat_map(|(_, m)| m.tracks.iter())
            .find(|t| t.id == id)
    }

    /// `publish`: create the publisher session, or renegotiate it.
    async fn publish(&mut self, req: Option<u64>, sdp: String, options: Vec<TrackOptions>) {
        if !self.grants_publish {
            self.error(
                ErrorCode::Forbidden,
                "the token lacks the publish grant",
                req,
            );
            return;
        }
        let sections = media_sections(&sdp);
        let max = self.state.rtc.max_tracks_per_participant;
        if sections > max {
            self.error(
                ErrorCode::TooManyTracks,
                format!("the offer has {sections} media sections; a participant may publish {max} tracks (rtc.max_tracks_per_participant)"),
                req,
            );
            return;
        }
        let Some(created) = self.offer(SessionKind::Publish, sdp, req).await else {
            return;
        };
        let old = std::mem::take(&mut self.member.tracks);
        self.publisher_mids.clear();
        for (info, mid) in created.tracks.iter().zip(&created.track_mids) {
            let option = options.iter().find(|o| &o.mid == mid);
            let before = old.iter().find(|t| t.track == info.track);
            let source = option
                .and_then(|o| o.source.as_deref())
                .map(|s| super::protocol::truncate(s, super::protocol::MAX_SOURCE_CHARS))
                .or_else(|| before.map(|b| b.source.clone()))
                .unwrap_or_else(|| default_source(info.kind).to_string());
            let muted = option
                .map(|o| o.muted)
                .or_else(|| before.map(|b| b.muted))
                .unwrap_or(false);
            self.member.tracks.push(MemberTrack {
                id: format!("{}-{}", self.pid, info.track.index),
                track: info.track,
                kind: info.kind,
                source,
                layers: info.layers,
                muted,
            });
            self.publisher_mids.push((info.track, mid.clone()));
        }
        let tracks = self
            .member
            .tracks
            .iter()
            .map(|t| {
                let mut view = t.view(&self.member.identity);
                view.mid = self.publisher_mid(&t.track);
                view
            })
            .collect();
        self.send(
            ServerMessage::PublishAnswer {
                sdp: created.answer_sdp,
                tracks,
            },
            req,
        );
        if old != self.member.tracks {
            self.announce().await;
        }
    }

    /// `subscriber_offer`: create the subscriber session, or renegotiate it.
    async fn subscriber_offer(&mut self, req: Option<u64>, sdp: String) {
        let Some(created) = self.offer(SessionKind::Subscribe, sdp, req).await else {
            return;
        };
        let mut slots = Vec::with_capacity(created.slots.len());
        for (kind, mid) in created.slots.iter().zip(&created.slot_mids) {
            let slot = self
                .slots
                .iter()
                .find(|s| &s.mid == mid)
                .cloned()
                .unwrap_or(Slot {
                    mid: mid.clone(),
                    kind: *kind,
                    carries: None,
                    max_layer: 2,
                    paused: false,
                });
            slots.push(slot);
        }
        self.slots = slots;
        let views = self
            .slots
            .iter()
            .map(|s| SlotView {
                mid: s.mid.clone(),
                kind: s.kind.as_str().to_string(),
                track: s.carries.clone(),
            })
            .collect();
        self.send(
            ServerMessage::SubscriberAnswer {
                sdp: created.answer_sdp,
                slots: views,
            },
            req,
        );
        self.requested = None;
        self.reconcile().await;
    }

    /// An offer for one of the participant's connections: a new session on the room's node,
    /// or a renegotiation of the one it has. `None` when refused (the error is sent).
    async fn offer(
        &mut self,
        kind: SessionKind,
        sdp: String,
        req: Option<u64>,
    ) -> Option<SessionCreated> {
        let existing = match kind {
            SessionKind::Publish => self.publisher.clone(),
            SessionKind::Subscribe => self.subscriber.clone(),
        };
        let result = match existing {
            None => self.create(kind, sdp).await,
            Some(c) => renegotiate(&self.state, &c, sdp).await,
        };
        result
            .map_err(|(code, message)| self.error(code, message, req))
            .ok()
    }

    /// Create one of the participant's sessions on the room's node.
    async fn create(
        &mut self,
        kind: SessionKind,
        sdp: String,
    ) -> Result<SessionCreated, (ErrorCode, String)> {
        let policy = match kind {
            SessionKind::Publish => SubscribePolicy::NewestOther,
            SessionKind::Subscribe => SubscribePolicy::Explicit,
        };
        let placed = create_session(
            &self.state,
            &self.room,
            &self.member.identity,
            kind,
            sdp,
            policy,
            None,
        )
        .await
        .map_err(offer_error)?;
        let connection = Connection {
            session: placed.created.session,
            node: placed.node,
        };
        self.state
            .rtc_hub
            .add_session(connection.session, self.me.clone());
        match kind {
            SessionKind::Publish => self.publisher = Some(connection),
            SessionKind::Subscribe => self.subscriber = Some(connection),
        }
        Ok(placed.created)
    }

    async fn set_subscription(
        &mut self,
        req: Option<u64>,
        track: String,
        max_layer: Option<u8>,
        paused: Option<bool>,
    ) {
        let Some(wanted) = self.wanted.get_mut(&track) else {
            self.error(
                ErrorCode::UnknownTrack,
                format!("not subscribed to {track:?}"),
                req,
            );
            return;
        };
        if let Some(layer) = max_layer {
            wanted.max_layer = clamp_layer(layer);
        }
        if let Some(paused) = paused {
            wanted.paused = paused;
        }
        let (max_layer, paused) = (wanted.max_layer, wanted.paused);
        if let (Some(at), Some(c)) = (
            self.slots
                .iter()
                .position(|s| s.carries.as_deref() == Some(&track)),
            self.subscriber.clone(),
        ) {
            let request = NodeRequest::SetSubscription(SetSubscription {
                session: c.session,
                slot: at as u16,
                max_layer: Layer(max_layer),
                paused,
            });
            if let Err((code, message)) = call(&self.state, &c, request).await {
                self.error(code, message, req);
                return;
            }
            self.slots[at].max_layer = max_layer;
            self.slots[at].paused = paused;
        }
        self.send(
            ServerMessage::Subscription {
                track,
                max_layer,
                paused,
            },
            req,
        );
    }

    async fn mute(&mut self, req: Option<u64>, track: String, muted: bool) {
        let Some(mine) = self.member.tracks.iter_mut().find(|t| t.id == track) else {
            self.error(
                ErrorCode::UnknownTrack,
                format!("{track:?} is not one of your tracks"),
                req,
            );
            return;
        };
        let changed = mine.muted != muted;
        mine.muted = muted;
        self.send(
            ServerMessage::TrackMuted {
                track,
                identity: self.member.identity.clone(),
                muted,
            },
            req,
        );
        if changed {
            self.announce().await;
        }
    }

    /// Tell the room what this participant is now.
    async fn announce(&mut self) {
        let data = to_json(&self.member);
        match self
            .state
            .sessions
            .roster_update(self.room.as_str(), &self.member.identity, &self.pid, &data)
            .await
        {
            Ok(_) => {}
            Err(e) => tracing::warn!(room = %self.room, error = %e, "cannot update a roster entry"),
        }
        self.publish_event(RoomEvent::Updated {
            pid: self.pid.clone(),
            member: self.member.clone(),
        })
        .await;
    }

    async fn publish_event(&self, event: RoomEvent) {
        if let Err(e) = self
            .state
            .sessions
            .room_publish(self.room.as_str(), &to_json(&event))
            .await
        {
            tracing::warn!(room = %self.room, error = %e, "cannot publish a room event");
        }
    }

    /// Read the roster and bring the view of the room in line with it.
    async fn resync(&mut self) {
        let roster = match self.state.sessions.roster(self.room.as_str()).await {
            Ok(roster) => roster,
            Err(e) => {
                tracing::warn!(room = %self.room, error = %e, "cannot read the room's roster");
                return;
            }
        };
        let mut present = Vec::new();
        for entry in roster {
            if entry.identity == self.member.identity {
                continue;
            }
            let Ok(member) = serde_json::from_str::<Member>(&entry.data) else {
                tracing::warn!(room = %self.room, identity = %entry.identity, "unreadable roster entry");
                continue;
            };
            present.push(entry.identity.clone());
            self.apply_member(entry.pid, member);
        }
        let gone: Vec<String> = self
            .others
            .keys()
            .filter(|i| !present.contains(i))
            .cloned()
            .collect();
        for identity in gone {
            self.remove_member(&identity, "left");
        }
    }

    async fn on_room_event(&mut self, text: &str) -> Option<Leave> {
        let event = match serde_json::from_str::<RoomEvent>(text) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(room = %self.room, error = %e, "unreadable room event");
                return None;
            }
        };
        match event {
            RoomEvent::Joined { pid, member } | RoomEvent::Updated { pid, member } => {
                if member.identity == self.member.identity {
                    if pid != self.pid {
                        return Some(Leave::Replaced);
                    }
                    return None; // my own
                }
                self.apply_member(pid, member);
            }
            RoomEvent::Left {
                pid,
                identity,
                reason,
            } => {
                if self.others.get(&identity).is_some_and(|(p, _)| *p == pid) {
                    self.remove_member(&identity, &reason);
                }
            }
            RoomEvent::Speakers { tracks } => {
                self.send_speakers(&tracks);
                return None;
            }
            RoomEvent::SessionEnded { session, reason } => {
                // Acts only on one of mine.
                self.session_ended(session, reason).await;
                return None;
            }
        }
        self.reconcile().await;
        None
    }

    /// Someone is (still) in the room as `member`: tell the client what changed.
    fn apply_member(&mut self, pid: String, member: Member) {
        let identity = member.identity.clone();
        let previous = self.others.remove(&identity);
        match previous {
            Some((old_pid, old)) if old_pid == pid => {
                for t in &old.tracks {
                    match member.tracks.iter().find(|n| n.id == t.id) {
                        None => {
                            self.wanted.remove(&t.id);
                            self.send(
                                ServerMessage::TrackUnpublished {
                                    track: t.id.clone(),
                                    identity: identity.clone(),
                                },
                                None,
                            );
                        }
                        Some(n) if n.muted != t.muted => self.send(
                            ServerMessage::TrackMuted {
                                track: n.id.clone(),
                                identity: identity.clone(),
                                muted: n.muted,
                            },
                            None,
                        ),
                        Some(_) => {}
                    }
                }
                for t in &member.tracks {
                    if !old.tracks.iter().any(|o| o.id == t.id) {
                        self.send(
                            ServerMessage::TrackPublished {
                                track: t.view(&identity),
                            },
                            None,
                        );
                        self.auto_want(t);
                    }
                }
                if old.name != member.name {
                    self.send(
                        ServerMessage::ParticipantJoined {
                            participant: member.info(),
                        },
                        None,
                    );
                }
            }
            previous => {
                if let Some((_, old)) = previous {
                    // A new join of the same identity replaced the one we knew.
                    self.others.insert(identity.clone(), (String::new(), old));
                    self.remove_member(&identity, "replaced");
                }
                self.send(
                    ServerMessage::ParticipantJoined {
                        participant: member.info(),
                    },
                    None,
                );
                for t in &member.tracks {
                    self.auto_want(t);
                }
            }
        }
        self.others.insert(identity, (pid, member));
    }

    /// Tell the client who speaks, by participant (a track of no one known is skipped).
    fn send_speakers(&self, tracks: &[TrackId]) {
        let members = std::iter::once(&self.member).chain(self.others.values().map(|(_, m)| m));
        let owners: Vec<(&Member, &MemberTrack)> = members
            .flat_map(|m| m.tracks.iter().map(move |t| (m, t)))
            .collect();
        let mut speakers: Vec<SpeakerView> = Vec::new();
        for track in tracks {
            if let Some((m, t)) = owners.iter().find(|(_, t)| t.track == *track) {
                if !speakers.iter().any(|s| s.identity == m.identity) {
                    speakers.push(SpeakerView {
                        identity: m.identity.clone(),
                        track: t.id.clone(),
                    });
                }
            }
        }
        self.send(ServerMessage::Speakers { speakers }, None);
    }

    fn auto_want(&mut self, track: &MemberTrack) {
        if self.auto_subscribe {
            self.wanted.entry(track.id.clone()).or_insert(Wanted {
                track: track.track,
                kind: track.kind,
                max_layer: 2,
                paused: false,
            });
        }
    }

    fn remove_member(&mut self, identity: &str, reason: &str) {
        let Some((_, member)) = self.others.remove(identity) else {
            return;
        };
        for t in &member.tracks {
            self.wanted.remove(&t.id);
        }
        self.send(
            ServerMessage::ParticipantLeft {
                identity: identity.to_string(),
                reason: reason.to_string(),
            },
            None,
        );
    }

    /// Make the subscriber sessions' sections carry what the participant wants: free the
    /// sections of tracks no longer wanted, put wanted tracks on free sections of their kind,
    /// and ask for more sections when there are too few.
    async fn reconcile(&mut self) {
        let connection = self.subscriber.clone();
        for at in 0..self.slots.len() {
            let Some(id) = self.slots[at].carries.clone() else {
                continue;
            };
            if self.wanted.contains_key(&id) {
                continue;
            }
            if let Some(c) = &connection {
                let request = NodeRequest::Unsubscribe {
                    session: c.session,
                    slot: at as u16,
                };
                // A session gone is unsubscribed anyway.
                let _ = call(&self.state, c, request).await;
            }
            self.slots[at].carries = None;
            let published = self.find_track(&id).is_some();
            self.send(
                ServerMessage::Unsubscribed {
                    track: id,
                    reason: if published {
                        "requested"
                    } else {
                        "unpublished"
                    },
                },
                None,
            );
        }
        let pending: Vec<(String, Wanted)> = self
            .wanted
            .iter()
            .filter(|(id, _)| !self.slots.iter().any(|s| s.carries.as_ref() == Some(*id)))
            .map(|(id, w)| (id.clone(), w.clone()))
            .collect();
        if let Some(c) = &connection {
            for (id, want) in &pending {
                let Some(at) = self
                    .slots
                    .iter()
                    .position(|s| s.carries.is_none() && s.kind == want.kind)
                else {
                    continue;
                };
                let subscribe = NodeRequest::Subscribe(Subscribe {
                    session: c.session,
                    slot: at as u16,
                    track: want.track,
                    max_layer: Layer(want.max_layer),
                });
                let mut result = call(&self.state, c, subscribe).await;
                if result.is_ok() && want.paused {
                    let set = NodeRequest::SetSubscription(SetSubscription {
                        session: c.session,
                        slot: at as u16,
                        max_layer: Layer(want.max_layer),
                        paused: true,
                    });
                    result = call(&self.state, c, set).await;
                }
                match result {
                    Ok(()) => {
                        let slot = &mut self.slots[at];
                        slot.carries = Some(id.clone());
                        slot.max_layer = want.max_layer;
                        slot.paused = want.paused;
                        let mid = slot.mid.clone();
                        self.send(
                            ServerMessage::Subscribed {
                                track: id.clone(),
                                mid,
                                max_layer: want.max_layer,
                                paused: want.paused,
                            },
                            None,
                        );
                    }
                    // The track has not reached the subscriber's worker yet (announcements
                    // between workers and nodes are asynchronous): try again shortly.
                    Err((ErrorCode::UnknownTrack, _)) => self.retry = true,
                    // Anything else (the node is away, the session is going) is not retried
                    // on a timer: the next change of the room or of the connection retries.
                    Err((_, message)) => {
                        tracing::warn!(room = %self.room, identity = %self.member.identity, track = %id, %message, "cannot subscribe");
                    }
                }
            }
        }
        // Sections needed: one per wanted track of each kind.
        let need = |kind: MediaKind| self.wanted.values().filter(|w| w.kind == kind).count();
        let have = |kind: MediaKind| self.slots.iter().filter(|s| s.kind == kind).count();
        let (audio, video) = (need(MediaKind::Audio), need(MediaKind::Video));
        if audio > have(MediaKind::Audio) || video > have(MediaKind::Video) {
            let ask = (
                audio.max(have(MediaKind::Audio)),
                video.max(have(MediaKind::Video)),
            );
            if self.requested != Some(ask) {
                self.requested = Some(ask);
                self.send(
                    ServerMessage::Renegotiate {
                        audio: ask.0,
                        video: ask.1,
                    },
                    None,
                );
            }
        }
    }

    async fn session_ended(&mut self, session: SessionId, reason: EndReason) {
        let mine = [&self.publisher, &self.subscriber]
            .into_iter()
            .flatten()
            .any(|c| c.session == session);
        if mine {
            // Told through the room feed, the hub here still lists it.
            self.state.rtc_hub.remove_session(session);
        }
        if self
            .publisher
            .as_ref()
            .is_some_and(|c| c.session == session)
        {
            self.publisher = None;
            self.publisher_mids.clear();
            self.send(
                ServerMessage::SessionEnded {
                    connection: "publisher",
                    reason: reason.as_str().to_string(),
                },
                None,
            );
            if !self.member.tracks.is_empty() {
                self.member.tracks.clear();
                self.announce().await;
            }
        } else if self
            .subscriber
            .as_ref()
            .is_some_and(|c| c.session == session)
        {
            self.subscriber = None;
            self.slots.clear();
            self.requested = None;
            self.send(
                ServerMessage::SessionEnded {
                    connection: "subscriber",
                    reason: reason.as_str().to_string(),
                },
                None,
            );
            self.reconcile().await;
        }
    }

    /// Leave the room: end the sessions, drop the roster entry, tell the others.
    async fn end(mut self, leave: Leave) {
        let hub = &self.state.rtc_hub;
        hub.forget_resume(&self.resume_token);
        hub.participant_ended();
        for c in [self.publisher.take(), self.subscriber.take()]
            .into_iter()
            .flatten()
        {
            hub.remove_session(c.session);
            crate::admin::end_session(&self.state, c.session, &c.node).await;
        }
        if leave == Leave::Replaced {
            if let Some(socket) = &self.socket {
                socket.error(
                    ErrorCode::Replaced,
                    "the same identity joined the room from another socket",
                    None,
                );
                socket.close(close::REPLACED, "replaced");
            }
        } else {
            match self
                .state
                .sessions
                .roster_remove(self.room.as_str(), &self.member.identity, &self.pid)
                .await
            {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(room = %self.room, error = %e, "cannot remove a roster entry")
                }
            }
            self.publish_event(RoomEvent::Left {
                pid: self.pid.clone(),
                identity: self.member.identity.clone(),
                reason: leave.as_str().to_string(),
            })
            .await;
            if let Some(socket) = &self.socket {
                socket.close(close::NORMAL, leave.as_str());
            }
        }
        tracing::info!(room = %self.room, identity = %self.member.identity, reason = leave.as_str(), "participant left");
    }
}

/// A node call that answers `Done`.
async fn call(
    state: &AppState,
    connection: &Connection,
    request: NodeRequest,
) -> Result<(), (ErrorCode, String)> {
    let Some(client) = state.nodes.client(&connection.node) else {
        return Err((
            ErrorCode::Unavailable,
            format!("media node {} is gone", connection.node),
        ));
    };
    match client.call(request).await {
        NodeResponse::Done => Ok(()),
        NodeResponse::Error(e) => Err(node_error(e)),
        other => Err((
            ErrorCode::Unavailable,
            format!("unexpected node answer {other:?}"),
        )),
    }
}

/// A new offer on an existing session.
async fn renegotiate(
    state: &AppState,
    connection: &Connection,
    sdp: String,
) -> Result<SessionCreated, (ErrorCode, String)> {
    let Some(client) = state.nodes.client(&connection.node) else {
        return Err((
            ErrorCode::Unavailable,
            format!("media node {} is gone", connection.node),
        ));
    };
    let request = NodeRequest::Renegotiate {
        session: connection.session,
        offer_sdp: sdp,
    };
    match client.call(request).await {
        NodeResponse::SessionCreated(created) => Ok(created),
        NodeResponse::Error(e) => Err(node_error(e)),
        other => Err((
            ErrorCode::Unavailable,
            format!("unexpected node answer {other:?}"),
        )),
    }
}

fn node_error(e: NodeError) -> (ErrorCode, String) {
    let code = match &e {
        NodeError::BadOffer(_) => ErrorCode::BadOffer,
        NodeError::NoCapacity => ErrorCode::NoCapacity,
        NodeError::UnknownTrack(_) => ErrorCode::UnknownTrack,
        _ => ErrorCode::Unavailable,
    };
    (code, e.to_string())
}

fn offer_error(e: OfferError) -> (ErrorCode, String) {
    match e {
        OfferError::Node(e) => node_error(e),
        OfferError::Cap(e) => (ErrorCode::NoCapacity, e.to_string()),
        OfferError::NoNode(e) => (ErrorCode::NoCapacity, e),
        OfferError::Store(e) => (ErrorCode::Unavailable, e.to_string()),
    }
}

fn clamp_layer(layer: u8) -> u8 {
    layer.min((Layer::COUNT - 1) as u8)
}

fn default_source(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "microphone",
        MediaKind::Video => "camera",
    }
}

/// Audio and video sections an offer has (`m=audio`, `m=video` lines).
fn media_sections(sdp: &str) -> usize {
    sdp.lines()
        .filter(|l| l.starts_with("m=audio") || l.starts_with("m=video"))
        .count()
}
