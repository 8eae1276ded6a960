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
//!
//! - [`room`]: the room as the participant sees it (its own entry, the others, events);
//! - [`media`]: its two connections and what their sections carry;
//! - [`data`]: the data messages its client sends and receives;
//! - [`quality`]: its connection quality, from what the node says of its connections.

mod data;
mod media;
mod quality;
mod room;

use super::hybrid::Mode;
pub use data::data_elsewhere;
use media::{Connection, Slot, Wanted, clamp_layer};
use quality::Qualities;
pub use quality::quality_elsewhere;
pub use room::{FloorAnswer, Member, MemberTrack, RoomEvent, session_ended_elsewhere};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sfu_core::ids::{RoomId, SessionId, TrackId};
use sfu_core::limit::Bucket;
use sfu_core::proto::{EndReason, Quality};
use tokio::sync::{broadcast, mpsc};

use super::protocol::{ClientMessage, ErrorCode, ResumeInfo, ServerMessage, close};
use super::socket::SocketHandle;
use crate::auth::Claims;
use crate::http::AppState;
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
    /// A node passed on a data message of one of its sessions' client.
    Data { reliable: bool, text: String },
    /// A node judged the connection quality of one of its sessions.
    Quality {
        session: SessionId,
        quality: Quality,
    },
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
        quality: None,
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
    let settings = match super::settings::load(&state, room.as_str()).await {
        Ok(settings) => settings,
        Err(e) => {
            tracing::warn!(%room, error = %e, "cannot read the room's settings; using the defaults");
            Default::default()
        }
    };
    // A hybrid room's mode as its chair last recorded it (a new one starts peer to peer);
    // the chair's `mode` follows `joined` and settles it.
    let (mode, epoch) = if settings.hybrid(&state.hybrid).is_some() {
        hybrid_mode(&state, &room, &member.identity).await
    } else {
        (Mode::Sfu, 0)
    };
    super::chair::Chairs::seat(&state, &room);
    let (tx, inbox) = mpsc::channel(INBOX);
    let mut participant = Participant {
        state: state.clone(),
        room,
        pid,
        grants_publish: claims.grants.publish || claims.grants.admin,
        moderator: claims.grants.moderator || claims.grants.admin,
        settings,
        floor: None,
        mode,
        epoch,
        switching: None,
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
        data_budget: Bucket::new(
            state.rtc.data_messages_per_sec,
            state.rtc.data_burst,
            std::time::Instant::now(),
        ),
        qualities: Qualities::default(),
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

/// The mode a participant joining hybrid room `room` starts in: the one its chair recorded;
/// without a record, peer to peer if nobody else is there (a new room: recorded now, so the
/// chair starting next finds it), else the SFU (the room was in use before it became hybrid).
async fn hybrid_mode(state: &AppState, room: &RoomId, me: &str) -> (Mode, u64) {
    if let Ok(Some(s)) = super::chair::stored_mode(state, room.as_str()).await {
        return (s.mode, s.epoch);
    }
    let roster = state
        .sessions
        .roster(room.as_str())
        .await
        .unwrap_or_default();
    if roster.iter().any(|e| e.identity != me) {
        return (Mode::Sfu, 0);
    }
    let record = super::chair::StoredMode {
        mode: Mode::P2p,
        epoch: 0,
    };
    let json = serde_json::to_string(&record).unwrap_or_default();
    if let Err(e) = state
        .sessions
        .set_room_value(room.as_str(), super::chair::MODE, Some(&json))
        .await
    {
        tracing::warn!(%room, error = %e, "cannot record a new hybrid room's mode");
    }
    (Mode::P2p, 0)
}

/// A participant's state; see the module documentation.
struct Participant {
    state: Arc<AppState>,
    room: RoomId,
    /// This join's id: distinguishes it from an earlier or later join of the same identity.
    pid: String,
    grants_publish: bool,
    /// Push to talk: takes the floor at once when asking (token grant `moderator` or `admin`).
    moderator: bool,
    /// The room's options as they were at the join (sent in `joined`).
    settings: super::settings::RoomSettings,
    /// The last `floor` the room's chair announced, for a socket that resumes.
    floor: Option<ServerMessage>,
    /// How my media travels: peer to peer (a hybrid room while small) or through the SFU;
    /// the server subscribes me to nothing while peer to peer.
    mode: Mode,
    /// The switch that brought `mode`.
    epoch: u64,
    /// A switch I was told to make and have not acknowledged: its target and epoch.
    switching: Option<(Mode, u64)>,
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
    /// Data messages the client may still send (`rtc.data_messages_per_sec`).
    data_budget: Bucket,
    /// What the node last said of each connection's quality; `member.quality` is the worse.
    qualities: Qualities,
}

/// Why a participant leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Left,
    Timeout,
    Replaced,
    /// A hybrid room's chair removed the participant (it did not follow a switch).
    Removed,
}

impl Leave {
    fn as_str(self) -> &'static str {
        match self {
            Leave::Left => "left",
            Leave::Timeout => "timeout",
            Leave::Replaced => "replaced",
            Leave::Removed => "removed",
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
                settings: self.settings.clone(),
                mode: self.mode,
                epoch: self.epoch,
            },
            req,
        );
        if let Some((to, epoch)) = self.switching {
            self.send(ServerMessage::Switch { to, epoch }, None);
        }
        if let Some(floor) = self.floor.clone() {
            self.send(floor, None);
        }
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
            Input::Data { reliable, text } => {
                self.client_data(reliable, text).await;
                None
            }
            Input::Quality { session, quality } => {
                self.session_quality(session, quality).await;
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
            ClientMessage::SwitchAck { epoch } => self.switch_ack(epoch).await,
            ClientMessage::P2pSignal { to, data } => {
                if !self.others.contains_key(&to) {
                    self.error(
                        ErrorCode::UnknownParticipant,
                        format!("no participant {to:?} in the room"),
                        req,
                    );
                    return None;
                }
                let from = self.member.identity.clone();
                self.publish_event(RoomEvent::P2pSignal { from, to, data })
                    .await;
            }
            ClientMessage::FloorRequest {} => self.floor_request(req).await,
            ClientMessage::FloorRelease {} => {
                let identity = self.member.identity.clone();
                self.publish_event(RoomEvent::FloorRelease { identity })
                    .await;
            }
            ClientMessage::Leave {} => {
                self.send(ServerMessage::Left {}, req);
                return Some(Leave::Left);
            }
            ClientMessage::Ping {} => self.send(ServerMessage::Pong {}, req),
        }
        None
    }

    /// Ask the room's chair for the floor; it answers through the room's feed
    /// (`floor_granted`, `floor_queued`, `floor_denied`). Refused here if the room is no
    /// push-to-talk channel (its settings as they are now) or the token may not publish.
    async fn floor_request(&mut self, req: Option<u64>) {
        let denied = |reason: &str| ServerMessage::FloorDenied {
            reason: reason.into(),
        };
        if !self.grants_publish {
            self.send(denied("no_publish_grant"), req);
            return;
        }
        match super::settings::load(&self.state, self.room.as_str()).await {
            Ok(settings) if settings.ptt => {}
            Ok(_) => {
                self.send(denied("not_push_to_talk"), req);
                return;
            }
            Err(e) => {
                self.error(ErrorCode::Unavailable, e.to_string(), req);
                return;
            }
        }
        let event = RoomEvent::FloorRequest {
            identity: self.member.identity.clone(),
            moderator: self.moderator,
            req,
        };
        self.publish_event(event).await;
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

    /// Leave the room: end the sessions, drop the roster entry, tell the others.
    async fn end(mut self, leave: Leave) {
        let hub = &self.state.rtc_hub;
        hub.forget_resume(&self.resume_token);
        hub.participant_ended();
        self.state.chairs.unseat(&self.room);
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
